//! Building [`QRmsNorm`] / [`QRmsNorm2d`]: the weight, `sqrt(D)` and the output scale folded into
//! per-channel multipliers, and `eps` converted to the squared input-integer domain.

use super::lut::check_act_quant;
use crate::error::{Error, Result};
use crate::quant::ops::norm::{centered_max, QRmsNorm, QRmsNorm2d};
use crate::quant::params::{quantize_multiplier, ActQuant};

fn check(what: &str, q: &ActQuant) -> Result<()> {
    check_act_quant("rms_norm", what, q)
}

/// RMSNorm over the last dimension (`dim = weight.len()`): `y = w x / sqrt(mean(x^2) + eps)`.
pub fn rms_norm(weight: &[f32], eps: f32, x: ActQuant, y: ActQuant) -> Result<QRmsNorm> {
    check("input", &x)?;
    check("output", &y)?;
    let d = weight.len();
    if d == 0 {
        return Err(Error::input("rms_norm: empty weight"));
    }
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(Error::input(format!(
            "rms_norm: eps {eps} must be finite and >= 0"
        )));
    }
    // SS * 2^64 + eps must fit a u128 with room: SS < 2^62.
    let cm = centered_max(&x) as u128;
    if (d as u128) * cm * cm >= 1u128 << 62 {
        return Err(Error::input(format!(
            "rms_norm: a sum of {d} squares of {}-bit values could exceed 2^62",
            x.bits
        )));
    }
    let sx = x.scale as f64;
    let eps_real = d as f64 * eps as f64 / (sx * sx) * 2f64.powi(64);
    let eps_q64 = eps_real.round().min(2f64.powi(126)) as u128;
    let sqrt_d = (d as f64).sqrt();
    let mut w_mult = Vec::with_capacity(d);
    let mut w_neg = Vec::with_capacity(d);
    for &w in weight {
        if !w.is_finite() {
            return Err(Error::input(format!("rms_norm: weight {w} is not finite")));
        }
        let real = (w as f64).abs() * sqrt_d / y.scale as f64;
        let m = quantize_multiplier(real);
        if m.m != 0 && !(-60..=60).contains(&m.shift) {
            return Err(Error::input(format!(
                "rms_norm: weight {w} over output scale {} is out of range",
                y.scale
            )));
        }
        w_mult.push(m);
        w_neg.push(w < 0.0);
    }
    let n = QRmsNorm {
        dim: d,
        x,
        y,
        eps_q64,
        w_mult,
        w_neg,
    };
    n.validate()?;
    Ok(n)
}

/// timm `RmsNorm2d` over the `weight.len()` channels of a `[C, H, W]` map.
pub fn rms_norm_2d(weight: &[f32], eps: f32, x: ActQuant, y: ActQuant) -> Result<QRmsNorm2d> {
    Ok(QRmsNorm2d {
        norm: rms_norm(weight, eps, x, y)?,
    })
}
