//! Quantization error metrics: SQNR and relative RMS error of an approximation against a float
//! reference (`../shared/research/paper.md` §4: SQNR = -20 log10(relative RMS error)).

/// `10 log10(sum x^2 / sum (x - y)^2)` in dB; infinite when the two are identical.
pub fn sqnr_db(reference: &[f32], approx: &[f32]) -> f64 {
    assert_eq!(reference.len(), approx.len());
    let (sig, err) = power(reference, approx);
    if err == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (sig / err).log10()
    }
}

/// `||x - y|| / ||x||`.
pub fn relative_rms(reference: &[f32], approx: &[f32]) -> f64 {
    let (sig, err) = power(reference, approx);
    (err / sig).sqrt()
}

fn power(x: &[f32], y: &[f32]) -> (f64, f64) {
    x.iter().zip(y).fold((0.0, 0.0), |(s, e), (&a, &b)| {
        let d = (a - b) as f64;
        (s + (a as f64) * (a as f64), e + d * d)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqnr_matches_the_papers_pairs() {
        // 0.562 % relative RMS error is 45 dB; 3.98 % is 28 dB.
        let x: Vec<f32> = (0..1000)
            .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 100.0)
            .collect();
        for (e, db) in [(0.00562f64, 45.0), (0.0398, 28.0)] {
            let y: Vec<f32> = x.iter().map(|v| v * (1.0 + e as f32)).collect();
            assert!((relative_rms(&x, &y) - e).abs() < 1e-6);
            assert!((sqnr_db(&x, &y) - db).abs() < 0.02, "{}", sqnr_db(&x, &y));
        }
        assert!(sqnr_db(&x, &x).is_infinite());
    }
}
