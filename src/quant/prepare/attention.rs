//! Building [`QAttention`]: the softmax over raw `Q.K^T` accumulators (scale
//! `s_q * s_k * attn_scale` folded into its multiplier) and the `P.V` requantization.

use super::lut::check_act_quant;
use super::softmax::softmax;
use crate::error::{Error, Result};
use crate::ops::attention::AttnShape;
use crate::quant::arith::check_reduction;
use crate::quant::ops::attention::{PvMode, QAttention};
use crate::quant::ops::norm::centered_max;
use crate::quant::params::{quantize_multiplier, ActQuant};

fn check(what: &str, q: &ActQuant) -> Result<()> {
    check_act_quant("attention", what, q)
}

/// Integer SDPA; `scale` is the attention scale the float path passes (e.g. `d^-0.5`).
/// Normalises after `P.V` ([`PvMode::Deferred`]: Q22 exponentials, the reciprocal of the row sum
/// folded into the output requantization), which keeps the output within about half an output
/// step of the float attention whatever the number of keys; [`attention_with_p_bits`] gives the
/// TFLite / HTP formulation with quantized probabilities.
pub fn attention(
    shape: AttnShape,
    scale: f32,
    q: ActQuant,
    k: ActQuant,
    v: ActQuant,
    out: ActQuant,
) -> Result<QAttention> {
    build(shape, scale, [q, k, v, out], PvMode::Deferred, 16)
}

/// Integer SDPA with quantized probabilities times V ([`PvMode::Probabilities`]): int16
/// (`p_bits = 16`, scale `1/32767`) or TFLite int8 (`8`: scale `1/256`, zero point -128). The
/// rounding of each probability adds up over the keys (int16: 84 dB at 24 keys, 52 dB at 4096).
pub fn attention_with_p_bits(
    shape: AttnShape,
    scale: f32,
    q: ActQuant,
    k: ActQuant,
    v: ActQuant,
    out: ActQuant,
    p_bits: u32,
) -> Result<QAttention> {
    build(shape, scale, [q, k, v, out], PvMode::Probabilities, p_bits)
}

fn build(
    shape: AttnShape,
    scale: f32,
    [q, k, v, out]: [ActQuant; 4],
    mode: PvMode,
    p_bits: u32,
) -> Result<QAttention> {
    check("q", &q)?;
    check("k", &k)?;
    check("v", &v)?;
    check("output", &out)?;
    let AttnShape {
        n_heads,
        n_kv,
        d,
        dv,
    } = shape;
    if n_kv == 0 || n_heads == 0 || !n_heads.is_multiple_of(n_kv) || d == 0 || dv == 0 {
        return Err(Error::input(format!(
            "attention: bad shape {shape:?} (heads must be a non-zero multiple of kv heads)"
        )));
    }
    if !(scale.is_finite() && scale > 0.0) {
        return Err(Error::input(format!(
            "attention: scale {scale} must be finite and positive"
        )));
    }
    // Scores: d products of centred q and k; the softmax also forms differences of two scores.
    check_reduction(
        "attention scores",
        2 * d,
        centered_max(&q),
        centered_max(&k),
        0,
    )?;
    let sm = softmax(q.scale as f64 * k.scale as f64 * scale as f64, p_bits)?;
    let p_scale = match mode {
        PvMode::Probabilities => sm.out.scale as f64,
        PvMode::Deferred => 1.0,
    };
    let out_mult = quantize_multiplier(p_scale * v.scale as f64 / out.scale as f64);
    let a = QAttention {
        n_heads,
        n_kv,
        d,
        dv,
        q,
        k,
        v,
        out,
        softmax: sm,
        mode,
        out_mult,
    };
    a.validate()?;
    Ok(a)
}
