//! Building [`QRmsNorm`] / [`QRmsNorm2d`]: the weight, `sqrt(D)` and the output scale folded into
//! per-channel multipliers, and `eps` converted to the squared input-integer domain; and
//! [`QLayerNorm`]: the weight over the output scale per channel, `eps` in the units of the
//! integer variance `D^2 var / s_x^2`, the bias in output steps with `OUT_FRAC_BITS` fractional
//! bits.

use super::lut::check_act_quant;
use crate::error::{Error, Result};
use crate::quant::arith::OUT_FRAC_BITS;
use crate::quant::ops::norm::{
    centered_max, QLayerNorm, QRmsNorm, QRmsNorm2d, LAYER_NORM_BIAS_MAX,
};
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

/// `torch.nn.LayerNorm` over the last dimension (`dim = weight.len()`): `y = (x - mean) /
/// sqrt(var + eps) * w + b` (see `quant::ops::norm` for the integer form).
pub fn layer_norm(
    weight: &[f32],
    bias: Option<&[f32]>,
    eps: f32,
    x: ActQuant,
    y: ActQuant,
) -> Result<QLayerNorm> {
    check_act_quant("layer_norm", "input", &x)?;
    check_act_quant("layer_norm", "output", &y)?;
    let d = weight.len();
    if d == 0 {
        return Err(Error::input("layer_norm: empty weight"));
    }
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(Error::input(format!(
            "layer_norm: eps {eps} must be finite and >= 0"
        )));
    }
    // W * 2^64 + eps must fit a u128: W <= D^2 cm^2 < 2^63.
    let dc = d as u128 * centered_max(&x) as u128;
    if dc.saturating_mul(dc) >= 1u128 << 63 {
        return Err(Error::input(format!(
            "layer_norm: the variance of {d} {}-bit values could exceed 2^63",
            x.bits
        )));
    }
    let sx = x.scale as f64;
    let eps_real = (d as f64) * (d as f64) * eps as f64 / (sx * sx) * 2f64.powi(64);
    let eps_q64 = eps_real.round().min(2f64.powi(126)) as u128;
    let sy = y.scale as f64;
    let mut w_mult = Vec::with_capacity(d);
    let mut w_neg = Vec::with_capacity(d);
    for &w in weight {
        if !w.is_finite() {
            return Err(Error::input(format!(
                "layer_norm: weight {w} is not finite"
            )));
        }
        let m = quantize_multiplier((w as f64).abs() / sy);
        if m.m != 0 && !(-60..=60).contains(&m.shift) {
            return Err(Error::input(format!(
                "layer_norm: weight {w} over output scale {} is out of range",
                y.scale
            )));
        }
        w_mult.push(m);
        w_neg.push(w < 0.0);
    }
    let bias = match bias {
        None => None,
        Some(b) if b.len() != d => {
            return Err(Error::input(format!(
                "layer_norm: {} biases for width {d}",
                b.len()
            )))
        }
        Some(b) => Some(
            b.iter()
                .map(|&v| {
                    let q = (v as f64 / sy * 2f64.powi(OUT_FRAC_BITS as i32)).round();
                    if q.is_finite() && q.abs() <= LAYER_NORM_BIAS_MAX as f64 {
                        Ok(q as i64)
                    } else {
                        Err(Error::input(format!(
                            "layer_norm: bias {v} over output scale {} is out of range",
                            y.scale
                        )))
                    }
                })
                .collect::<Result<Vec<_>>>()?,
        ),
    };
    let n = QLayerNorm {
        dim: d,
        x,
        y,
        eps_q64,
        w_mult,
        w_neg,
        bias,
    };
    n.validate()?;
    Ok(n)
}
