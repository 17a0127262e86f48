//! Building [`QClsPosEmbed`]: the class token and the position embeddings in output steps with
//! `OUT_FRAC_BITS` fractional bits, the input's rescale as one multiplier.

use super::linear::{check_quant, multiplier};
use crate::error::{Error, Result};
use crate::quant::arith::OUT_FRAC_BITS;
use crate::quant::ops::tokens::{QClsPosEmbed, EMBED_CONST_MAX};
use crate::quant::params::ActQuant;

/// ViT embeddings for `tokens` patch rows of width `cls.len()`: `cls` prepended, then `pos`
/// (`(tokens + 1) * width` values, row-major) added when given.
pub fn cls_pos_embed(
    cls: &[f32],
    pos: Option<&[f32]>,
    tokens: usize,
    x: ActQuant,
    y: ActQuant,
) -> Result<QClsPosEmbed> {
    check_quant("QClsPosEmbed", "input", &x)?;
    check_quant("QClsPosEmbed", "output", &y)?;
    let d = cls.len();
    let rows = tokens.checked_add(1).and_then(|r| r.checked_mul(d));
    if tokens == 0 || d == 0 || pos.is_some_and(|p| Some(p.len()) != rows) {
        return Err(Error::input(format!(
            "QClsPosEmbed: {d} class values and {:?} position values for {tokens} tokens",
            pos.map(<[f32]>::len)
        )));
    }
    let unit = 2f64.powi(OUT_FRAC_BITS as i32) / y.scale as f64;
    let steps = |v: f64| -> Result<i64> {
        let q = (v * unit).round();
        if q.is_finite() && q.abs() <= EMBED_CONST_MAX as f64 {
            Ok(q as i64)
        } else {
            Err(Error::input(format!(
                "QClsPosEmbed: embedding value {v} over output scale {} is out of range",
                y.scale
            )))
        }
    };
    let pos0 = |j: usize| pos.map_or(0.0, |p| p[j] as f64);
    let cls_q = cls
        .iter()
        .enumerate()
        .map(|(j, &c)| steps(c as f64 + pos0(j)))
        .collect::<Result<Vec<_>>>()?;
    let pos_q = pos
        .map(|p| p[d..].iter().map(|&v| steps(v as f64)).collect())
        .transpose()?;
    let m = multiplier(
        "QClsPosEmbed",
        x.scale as f64 / y.scale as f64 * 2f64.powi(OUT_FRAC_BITS as i32),
    )?;
    let op = QClsPosEmbed {
        tokens,
        dim: d,
        x,
        y,
        mult: m,
        cls: cls_q,
        pos: pos_q,
    };
    op.validate()?;
    Ok(op)
}
