//! RMS normalisation over the last dimension (LFM2, Llama) and over channels of a `[C, H, W]` map
//! (timm `RmsNorm2d`), and LayerNorm over the last dimension (InternViT, the InternVL projector).
//! Sums accumulate in f64 so the statistics are the correctly rounded f32 of the exact mean,
//! independent of summation order.

/// In place: each `dim`-wide row becomes `w * x / sqrt(mean(x^2) + eps)`.
pub fn rms_norm_rows(x: &mut [f32], dim: usize, weight: &[f32], eps: f32) {
    assert_eq!(weight.len(), dim);
    for row in x.chunks_exact_mut(dim) {
        let ss: f64 = row.iter().map(|&v| (v as f64) * (v as f64)).sum();
        let inv = 1.0 / ((ss / dim as f64) as f32 + eps).sqrt();
        for (v, w) in row.iter_mut().zip(weight) {
            *v = w * (*v * inv);
        }
    }
}

/// In place: each `dim`-wide row becomes `(x - mean) / sqrt(var + eps) * w + b` (biased
/// variance, as `torch.nn.LayerNorm`).
pub fn layer_norm_rows(x: &mut [f32], dim: usize, weight: &[f32], bias: Option<&[f32]>, eps: f32) {
    assert_eq!(weight.len(), dim);
    for row in x.chunks_exact_mut(dim) {
        let mean = row.iter().map(|&v| v as f64).sum::<f64>() / dim as f64;
        let var = row
            .iter()
            .map(|&v| (v as f64 - mean) * (v as f64 - mean))
            .sum::<f64>()
            / dim as f64;
        let inv = 1.0 / (var as f32 + eps).sqrt();
        let mean = mean as f32;
        for (i, v) in row.iter_mut().enumerate() {
            let y = (*v - mean) * inv * weight[i];
            *v = match bias {
                Some(b) => y + b[i],
                None => y,
            };
        }
    }
}

/// In place on `[C, HW]`: every pixel's channel vector is RMS-normalised, then scaled by `w[c]`.
pub fn rms_norm_channels(x: &mut [f32], channels: usize, weight: &[f32], eps: f32) {
    assert_eq!(weight.len(), channels);
    assert_eq!(x.len() % channels, 0);
    let hw = x.len() / channels;
    let mut ss = vec![0.0f64; hw];
    for plane in x.chunks_exact(hw) {
        for (s, &v) in ss.iter_mut().zip(plane) {
            *s += (v as f64) * (v as f64);
        }
    }
    let inv: Vec<f32> = ss
        .iter()
        .map(|&s| 1.0 / ((s / channels as f64) as f32 + eps).sqrt())
        .collect();
    for (plane, &w) in x.chunks_exact_mut(hw).zip(weight) {
        for (v, &r) in plane.iter_mut().zip(&inv) {
            *v = (*v * r) * w;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_and_channels_agree_on_transposed_data() {
        // [2 tokens, 3 dims] vs the same numbers as [3 channels, 2 pixels].
        let mut rows = vec![1.0, 2.0, 3.0, -4.0, 0.5, 2.0];
        let mut chw = vec![1.0, -4.0, 2.0, 0.5, 3.0, 2.0];
        let w = [1.0, 0.5, 2.0];
        rms_norm_rows(&mut rows, 3, &w, 1e-6);
        rms_norm_channels(&mut chw, 3, &w, 1e-6);
        for t in 0..2 {
            for c in 0..3 {
                assert!((rows[t * 3 + c] - chw[c * 2 + t]).abs() < 1e-6);
            }
        }
        let expect0 = 1.0 / ((1.0f32 + 4.0 + 9.0) / 3.0 + 1e-6).sqrt();
        assert!((rows[0] - expect0).abs() < 1e-6);
    }

    #[test]
    fn layer_norm_centres_scales_and_shifts() {
        let mut x = vec![1.0, 2.0, 3.0, 10.0, 10.0, 10.0];
        layer_norm_rows(&mut x, 3, &[1.0, 2.0, 1.0], Some(&[0.0, 0.0, 5.0]), 1e-5);
        // Row 0: mean 2, biased variance 2/3.
        let inv = 1.0 / (2.0f32 / 3.0 + 1e-5).sqrt();
        assert!((x[0] + inv).abs() < 1e-6 && x[1].abs() < 1e-6);
        assert!((x[2] - (inv + 5.0)).abs() < 1e-5);
        // A constant row normalises to the bias.
        assert_eq!(&x[3..], &[0.0, 0.0, 5.0]);
    }
}
