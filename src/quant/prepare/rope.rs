//! Building [`QRope`]: the f32 inverse frequencies of the float path as integer mantissa/exponent
//! pairs, the Q30 quarter-wave sine table and the requantization multiplier.

use super::lut::check_act_quant;
use crate::error::{Error, Result};
use crate::ops::rope::Rope;
use crate::quant::ops::rope::{QRope, SIN_TABLE_BITS, TRIG_ONE_BITS};
use crate::quant::params::{quantize_multiplier, ActQuant};

fn check(what: &str, q: &ActQuant) -> Result<()> {
    check_act_quant("rope", what, q)
}

/// `sin(j * (pi/2) / 2^SIN_TABLE_BITS)` in Q30, `j = 0..=2^SIN_TABLE_BITS`; the interior entries
/// are raised by half the chord's midpoint error (sine is concave on the quarter), the two ends
/// stay exact (0 and 1, so position 0 is the identity).
pub fn sin_table() -> Vec<i32> {
    let n = 1usize << SIN_TABLE_BITS;
    let one = (1u64 << TRIG_ONE_BITS) as f64;
    let f = |j: f64| (j * std::f64::consts::FRAC_PI_2 / n as f64).sin();
    let mid_err = |k: usize| (f(k as f64) + f(k as f64 + 1.0)) / 2.0 - f(k as f64 + 0.5);
    (0..=n)
        .map(|j| {
            let bias = if j == 0 || j == n {
                0.0
            } else {
                (mid_err(j - 1) + mid_err(j)) / 4.0
            };
            ((f(j as f64) - bias) * one).round() as i32
        })
        .collect()
}

/// RoPE with the float path's inverse frequencies (transformers' `default` rope type).
pub fn rope(head_dim: usize, theta: f64, x: ActQuant, y: ActQuant) -> Result<QRope> {
    let r = Rope::new(head_dim, theta)?;
    rope_from_inv_freq(r.inv_freq(), x, y)
}

/// RoPE with given f32 inverse frequencies (`head_dim = 2 * inv_freq.len()`).
pub fn rope_from_inv_freq(inv_freq: &[f32], x: ActQuant, y: ActQuant) -> Result<QRope> {
    check("input", &x)?;
    check("output", &y)?;
    if inv_freq.is_empty() {
        return Err(Error::input("rope: no frequencies"));
    }
    let mut inv_freq_m = Vec::with_capacity(inv_freq.len());
    let mut inv_freq_e = Vec::with_capacity(inv_freq.len());
    for &f in inv_freq {
        if !(f.is_normal() && f > 0.0) {
            return Err(Error::input(format!(
                "rope: inverse frequency {f} must be a positive normal f32"
            )));
        }
        let bits = f.to_bits();
        inv_freq_m.push((bits & 0x007f_ffff) | 0x0080_0000);
        inv_freq_e.push(((bits >> 23) & 0xff) as i32 - 127 - 23);
    }
    let mult =
        quantize_multiplier(x.scale as f64 / y.scale as f64 / (1u64 << TRIG_ONE_BITS) as f64);
    let rope = QRope {
        head_dim: 2 * inv_freq.len(),
        x,
        y,
        mult,
        inv_freq_m,
        inv_freq_e,
        sin_table: sin_table(),
    };
    rope.validate()?;
    Ok(rope)
}
