//! Building [`QSoftmax`]: the input multiplier (input scale, attention scale and `log2(e)` folded
//! into one fixed-point number) and the Q30 `2^-x` table.

use crate::error::{Error, Result};
use crate::quant::ops::softmax::{QSoftmax, EXP_ARG_FRAC_BITS, EXP_ONE_BITS, EXP_TABLE_BITS};
use crate::quant::params::{quantize_multiplier, ActQuant};

/// The output quantization of softmax probabilities: int16 `(1/32767, 0)` or int8
/// `(1/256, -128)`; returns it with the integer standing for probability 1.
pub fn softmax_output(bits: u32) -> Result<(ActQuant, i32)> {
    match bits {
        16 => Ok((
            ActQuant {
                scale: 1.0 / 32767.0,
                zero_point: 0,
                bits: 16,
            },
            32767,
        )),
        8 => Ok((
            ActQuant {
                scale: 1.0 / 256.0,
                zero_point: -128,
                bits: 8,
            },
            256,
        )),
        _ => Err(Error::input(format!(
            "softmax: output bit width {bits} not supported (8 or 16)"
        ))),
    }
}

/// `2^(-j / 2^EXP_TABLE_BITS)` in Q30 for `j = 0..=2^EXP_TABLE_BITS`, each entry lowered by half
/// the interpolation error at the midpoints of its neighbouring intervals (the chord of a convex
/// function lies above it), which halves the interpolation error (to 1.15e-7 relative; 1.7e-7
/// in the two end intervals: the ends stay exact).
pub fn exp2_table() -> Vec<i32> {
    let n = 1usize << EXP_TABLE_BITS;
    let one = (1u64 << EXP_ONE_BITS) as f64;
    let f = |t: f64| one * (-t / n as f64).exp2();
    let mid_err = |k: usize| (f(k as f64) + f(k as f64 + 1.0)) / 2.0 - f(k as f64 + 0.5);
    (0..=n)
        .map(|j| {
            // The ends stay exact: exp(0) is exactly 2^30 (the row max), and octaves join.
            let bias = if j == 0 || j == n {
                0.0
            } else {
                (mid_err(j - 1) + mid_err(j)) / 4.0
            };
            (f(j as f64) - bias).round() as i32
        })
        .collect()
}

/// Softmax whose input integers are worth `input_scale` each (for attention scores: the
/// accumulator scale `s_q * s_k` times the attention scale), with `out_bits` 16 or 8
/// (see [`softmax_output`]).
pub fn softmax(input_scale: f64, out_bits: u32) -> Result<QSoftmax> {
    if !(input_scale.is_finite() && input_scale > 0.0) {
        return Err(Error::input(format!(
            "softmax: input scale {input_scale} must be finite and positive"
        )));
    }
    let real = input_scale * std::f64::consts::LOG2_E * (1u64 << EXP_ARG_FRAC_BITS) as f64;
    let in_mult = quantize_multiplier(real);
    // Keep the fixed-point multiply inside i128 with valid shifts: inputs worth less than 2^-120
    // of a nat per unit would need more than 127 bits of right shift, and a multiplier above 2^40
    // (one input unit > 2^16 nats) could shift products out of i128.
    if !(-88..=40).contains(&in_mult.shift) {
        return Err(Error::input(format!(
            "softmax: input scale {input_scale} outside the supported range"
        )));
    }
    let (out, out_one) = softmax_output(out_bits)?;
    let sm = QSoftmax {
        in_mult,
        exp2_table: exp2_table(),
        out,
        out_one,
    };
    sm.validate()?;
    Ok(sm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_accurate_and_inputs_are_checked() {
        let t = exp2_table();
        assert_eq!(t.len(), 513);
        assert_eq!((t[0], t[512]), (1 << 30, 1 << 29));
        // Interpolated values within 1.8e-7 relative everywhere (checked densely; 1.15e-7 except in
        // the two end intervals, whose exact ends keep 3/4 of the chord error).
        let sm = softmax(1.0, 16).unwrap();
        let mut worst = 0.0f64;
        for i in 0..(1 << 20) {
            let w = (i as i64) * 37 % (3i64 << EXP_ARG_FRAC_BITS);
            let got = sm.exp2_neg(w) as f64;
            let want = (1u64 << 30) as f64 * (-(w as f64) / (1u64 << 24) as f64).exp2();
            if want > 1e3 {
                worst = worst.max((got / want - 1.0).abs());
            } else {
                assert!((got - want).abs() <= 0.5 + 1e-6);
            }
        }
        println!("exp2 table: max relative error {worst:.3e}");
        assert!(worst < 1.8e-7, "{worst}");
        assert!(softmax(0.0, 16).is_err());
        assert!(softmax(f64::NAN, 16).is_err());
        assert!(softmax(1.0, 12).is_err());
        assert!(softmax(1e-40, 16).is_err());
    }
}
