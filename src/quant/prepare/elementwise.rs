//! Building the integer elementwise ops from activation quantizations (and constants).

use super::linear::{check_quant, multiplier};
use crate::error::{Error, Result};
use crate::quant::ops::elementwise::{
    ChannelAxis, QAdd, QChannelScale, QMul, QRequantize, ADD_SHIFT,
};
use crate::quant::params::ActQuant;

/// `y = a + b`: both inputs rescaled to the common scale `max(s_a, s_b) / 2^ADD_SHIFT` by integer
/// factors, then one requantization to `y`.
pub fn add(a: ActQuant, b: ActQuant, y: ActQuant) -> Result<QAdd> {
    for (what, q) in [("input a", &a), ("input b", &b), ("output", &y)] {
        check_quant("QAdd", what, q)?;
    }
    let (sa, sb, sy) = (a.scale as f64, b.scale as f64, y.scale as f64);
    let sc = sa.max(sb) / (1u64 << ADD_SHIFT) as f64;
    let a_mult = (sa / sc).round() as i64;
    let b_mult = (sb / sc).round() as i64;
    QAdd::new(a, b, y, a_mult, b_mult, multiplier("QAdd", sc / sy)?)
}

/// `y = a * b`.
pub fn mul(a: ActQuant, b: ActQuant, y: ActQuant) -> Result<QMul> {
    for (what, q) in [("input a", &a), ("input b", &b), ("output", &y)] {
        check_quant("QMul", what, q)?;
    }
    let m = a.scale as f64 * b.scale as f64 / y.scale as f64;
    QMul::new(a, b, y, multiplier("QMul", m)?)
}

/// `y[.., c, ..] = gamma[c] * x[.., c, ..]` along `axis` (negative and zero constants allowed).
pub fn channel_scale(
    gamma: &[f32],
    axis: ChannelAxis,
    x: ActQuant,
    y: ActQuant,
) -> Result<QChannelScale> {
    check_quant("QChannelScale", "input", &x)?;
    check_quant("QChannelScale", "output", &y)?;
    if let Some(g) = gamma.iter().find(|g| !g.is_finite()) {
        return Err(Error::input(format!(
            "QChannelScale: non-finite constant {g}"
        )));
    }
    let r = x.scale as f64 / y.scale as f64;
    let mult = gamma
        .iter()
        .map(|&g| multiplier("QChannelScale", (g as f64).abs() * r))
        .collect::<Result<Vec<_>>>()?;
    let negate = gamma.iter().map(|&g| g < 0.0).collect();
    QChannelScale::new(axis, mult, negate, x, y)
}

/// Re-expresses values quantized as `x` in `y`'s quantization.
pub fn requantize(x: ActQuant, y: ActQuant) -> Result<QRequantize> {
    check_quant("QRequantize", "input", &x)?;
    check_quant("QRequantize", "output", &y)?;
    let m = multiplier("QRequantize", x.scale as f64 / y.scale as f64)?;
    QRequantize::new(x, y, m)
}
