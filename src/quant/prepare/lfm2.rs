//! Building the integer LFM2 language model ([`QLfm2Model`]) from the float one, calibration
//! statistics (keyed by the float path's observed op names) and a precision scheme.
//!
//! Per op `name` (the float observation name, e.g. `layers.3.conv.in_proj`):
//! - precision from `scheme.op_policy(Part::Text, name)`: weight bits and granularity (text: int4
//!   per group of `scheme.group` inputs, int8 per output channel), activation bits and symmetry
//!   (A16 symmetric, A8 asymmetric). A per-op `float` override is an error: the integer LM has no
//!   float islands (leaving the whole text part float is the caller's business).
//! - output quantization from the calibrated range of `name` (`method`; min-max is the right
//!   choice at 16 bits), widened [`A16_HEADROOM`] times for 16-bit outputs, except:
//!   - `embed_tokens`: that range (token and image embeddings) also covers the whole quantized
//!     table, so any generated token embeds without saturating;
//!   - `lm_head`: the min-max range of the calibrated logits widened [`LOGIT_HEADROOM`] times,
//!     whatever `method`: the largest logits are exactly what greedy decoding reads, so they are
//!     never clipped;
//!   - the SiLU table inside `feed_forward.act` (no float counterpart): the exact image of `w1`'s
//!     quantized range under SiLU, at `act`'s width.
//! - weights: 4-bit (and narrower) groups take the MSE-optimal clip ([`WeightRange::Mse`]), 8-bit
//!   rows their min-max.
//!
//! Each op's input quantization is its producer's output quantization, so mixed per-op widths
//! chain without extra requantization (adds and multiplies take any two input quantizations).

use super::attention::attention;
use super::conv1d::causal_conv1d_from_quantized;
use super::elementwise::{add, mul};
use super::embedding::embedding_from_quantized;
use super::linear::{linear_from_quantized, row_requant};
use super::lut::{lut, LutFn};
use super::norm::rms_norm;
use super::rope::rope_from_inv_freq;
use crate::error::{Error, Result};
use crate::models::lfm2::{Lfm2Model, Lfm2Op, Lfm2RmsNorm, LmHead};
use crate::nn::Linear;
use crate::ops::attention::AttnShape;
use crate::quant::arith::{check_reduction, qmax, qmin};
use crate::quant::calibrate::{CalibrationStats, RangeMethod};
use crate::quant::gptq;
use crate::quant::models::lfm2::{
    QLfm2Attention, QLfm2Dims, QLfm2Layer, QLfm2Mlp, QLfm2Model, QLfm2Op, QLfm2ShortConv, QLmHead,
    QTiedHead,
};
use crate::quant::ops::linear::{centered_abs_max, QLinear, QMatrix};
use crate::quant::ops::norm::QRmsNorm;
use crate::quant::params::{
    quantize_weight, ActQuant, Granularity, QuantWeight, WeightRange, GROUP_SCALE_BITS,
};
use crate::quant::scheme::{Part, Precision, Scheme};

/// How many times the calibrated min-max logit range is widened for `lm_head`'s output (at any
/// width).
pub const LOGIT_HEADROOM: f32 = 2.0;

/// How many times every other calibrated 16-bit range is widened: one bit of headroom. A16 steps
/// are fine enough to spare it (the runtime's own error stays near 60 dB on the golden models),
/// while saturation on inputs the calibration set did not cover (decode steps, other prompts, the
/// activations of the weight-quantized model drifting from the float ones) costs far more: with
/// the bare calibrated ranges the W4A16 golden models' logits were only 31-63 dB away from the
/// float model with the same weights (54-62 dB with the headroom).
pub const A16_HEADROOM: f32 = 2.0;

/// Where SiLU is smallest: `x* = -1 - W(1/e) = -1.27846...`, `silu(x*) = x* + 1`.
const SILU_ARGMIN: f64 = -1.278_464_542_761_074;

/// How the builder chooses a weight range at `wbits`: the MSE-optimal clip for 4 bits and below
/// (where clipping the tails of a group pays), min-max above.
pub fn weight_range(wbits: u32) -> WeightRange {
    if wbits <= 4 {
        WeightRange::Mse
    } else {
        WeightRange::MinMax
    }
}

/// How many times a calibrated range is widened for an activation `abits` wide:
/// [`A16_HEADROOM`] at 16 bits, none below (8-bit steps are too coarse to spend a bit on).
pub fn headroom(abits: u32) -> f32 {
    if abits >= 16 {
        A16_HEADROOM
    } else {
        1.0
    }
}

/// The integer precision of one text op.
#[derive(Clone, Copy, Debug)]
struct Policy {
    wbits: u32,
    abits: u32,
    symmetric: bool,
    gran: Granularity,
}

struct Ctx<'a> {
    stats: &'a CalibrationStats,
    scheme: &'a Scheme,
    method: RangeMethod,
}

/// Prefixes an op's own error with its name.
fn at(name: &str) -> impl Fn(Error) -> Error + '_ {
    move |e| Error::input(format!("text op `{name}`: {e}"))
}

impl Ctx<'_> {
    fn policy(&self, name: &str) -> Result<Policy> {
        let p = self.scheme.op_policy(Part::Text, name);
        match (p.precision, p.weight_granularity, p.act_symmetric) {
            (Precision::Int { wbits, abits }, Some(gran), Some(symmetric)) => Ok(Policy {
                wbits,
                abits,
                symmetric,
                gran,
            }),
            _ => Err(Error::input(format!(
                "text op `{name}` is {} under this scheme (a per-op override): the integer \
                 language model has no float ops; quantize it, or leave the whole text part float",
                p.precision
            ))),
        }
    }

    /// The calibrated `(lo, hi)` of `name` for `pol`'s activation width.
    fn range(&self, name: &str, pol: Policy, method: RangeMethod) -> Result<(f32, f32)> {
        let s = self.stats.get(name).ok_or_else(|| {
            Error::input(format!(
                "no calibration statistics for text op `{name}` (run the float language model \
                 over the calibration set with a CalibrationObserver{})",
                if name == "lm_head" {
                    ", including Lfm2Model::lm_head on its hidden states"
                } else {
                    ""
                }
            ))
        })?;
        s.range(method, pol.abits, pol.symmetric).ok_or_else(|| {
            Error::input(format!(
                "calibration statistics of text op `{name}` hold no finite value"
            ))
        })
    }

    /// Output quantization of `name` from its calibrated range.
    fn act(&self, name: &str) -> Result<ActQuant> {
        let pol = self.policy(name)?;
        let (lo, hi) = self.range(name, pol, self.method)?;
        let k = headroom(pol.abits);
        Ok(ActQuant::from_range(
            lo * k,
            hi * k,
            pol.abits,
            pol.symmetric,
        ))
    }

    /// `w[out, inp]` quantized with `name`'s weight policy.
    fn weight(&self, name: &str, w: &[f32], out: usize, inp: usize) -> Result<QuantWeight> {
        let pol = self.policy(name)?;
        if !(2..=16).contains(&pol.wbits) {
            return Err(Error::input(format!(
                "text op `{name}`: {}-bit weights are not supported by the integer ops (2..=16)",
                pol.wbits
            )));
        }
        if w.len() != out * inp || inp == 0 {
            return Err(Error::input(format!(
                "text op `{name}`: weight of {} values for [{out}, {inp}]",
                w.len()
            )));
        }
        if w.iter().any(|v| !v.is_finite()) {
            return Err(Error::input(format!("text op `{name}`: non-finite weight")));
        }
        let mut qw = quantize_weight(w, out, inp, pol.wbits, pol.gran, weight_range(pol.wbits));
        gptq::refine_op(name, w, &mut qw, self.stats.inputs.get(name));
        Ok(qw)
    }

    fn linear(&self, name: &str, l: &Linear, x: ActQuant) -> Result<QLinear> {
        let (out, inp) = (l.weight.dim(0), l.weight.dim(1));
        let qw = self.weight(name, l.weight.data(), out, inp)?;
        let y = self.act(name)?;
        linear_from_quantized(&qw, l.bias.as_ref().map(|b| b.data()), x, y).map_err(at(name))
    }

    fn norm(&self, name: &str, n: &Lfm2RmsNorm, x: ActQuant) -> Result<QRmsNorm> {
        let y = self.act(name)?;
        rms_norm(n.weight.data(), n.eps, x, y).map_err(at(name))
    }
}

/// The smallest and largest value a quantized weight stands for (without dequantizing it all).
fn value_range(qw: &QuantWeight) -> (f32, f32) {
    let unit = (1u32 << GROUP_SCALE_BITS) as f32;
    let gpr = qw.groups_per_row();
    let (mut lo, mut hi) = (0.0f32, 0.0f32);
    for (i, &q) in qw.q.iter().enumerate() {
        let (o, c) = (i / qw.inp, i % qw.inp);
        let v = qw.row_scale[o] * (qw.group_mult[o * gpr + c / qw.group] as f32 / unit) * q as f32;
        lo = lo.min(v);
        hi = hi.max(v);
    }
    (lo, hi)
}

/// The quantization covering `silu` over every value `x` can represent, `bits` wide.
fn silu_quant(x: &ActQuant, bits: u32, symmetric: bool) -> ActQuant {
    let silu = |v: f64| v / (1.0 + (-v).exp());
    let lo = x.scale as f64 * (qmin(x.bits) - x.zero_point as i64) as f64;
    let hi = x.scale as f64 * (qmax(x.bits) - x.zero_point as i64) as f64;
    let min = if (lo..=hi).contains(&SILU_ARGMIN) {
        silu(SILU_ARGMIN)
    } else {
        silu(lo).min(silu(hi))
    };
    let max = silu(lo).max(silu(hi));
    ActQuant::from_range(min as f32, max as f32, bits, symmetric)
}

/// Builds the integer language model; see the module docs for how each op is quantized.
pub fn lfm2(
    float: &Lfm2Model,
    stats: &CalibrationStats,
    scheme: &Scheme,
    method: RangeMethod,
) -> Result<QLfm2Model> {
    if scheme.part(Part::Text).is_float() {
        return Err(Error::input(
            "the scheme leaves the text part in float: there is no integer language model to build",
        ));
    }
    let cfg = &float.config;
    let c = Ctx {
        stats,
        scheme,
        method,
    };
    let (v, h) = (cfg.vocab_size, cfg.hidden_size);
    let dims = QLfm2Dims {
        vocab_size: v,
        hidden_size: h,
        num_attention_heads: cfg.num_attention_heads,
        num_key_value_heads: cfg.num_key_value_heads,
        head_dim: cfg.head_dim,
        conv_l_cache: cfg.conv_l_cache,
        max_position_embeddings: cfg.max_position_embeddings,
    };

    // embed_tokens: the table's own range joins the calibrated one.
    let name = "embed_tokens";
    let table_qw = c.weight(name, float.embed_tokens.data(), v, h)?;
    let embed_y = {
        let pol = c.policy(name)?;
        let (lo, hi) = c.range(name, pol, method)?;
        let k = headroom(pol.abits);
        let (tlo, thi) = value_range(&table_qw);
        ActQuant::from_range(
            (lo * k).min(tlo),
            (hi * k).max(thi),
            pol.abits,
            pol.symmetric,
        )
    };
    let embed_tokens = embedding_from_quantized(&table_qw, embed_y).map_err(at(name))?;

    let mut layers = Vec::with_capacity(float.layers.len());
    let mut x = embed_y;
    for (i, layer) in float.layers.iter().enumerate() {
        let p = format!("layers.{i}");
        let operator_norm = c.norm(&format!("{p}.operator_norm"), &layer.operator_norm, x)?;
        let n = operator_norm.y;
        let op = match &layer.op {
            Lfm2Op::Conv(conv) => {
                let pc = format!("{p}.conv");
                let in_proj = c.linear(&format!("{pc}.in_proj"), &conv.in_proj, n)?;
                let bcx = in_proj.y;
                let name = format!("{pc}.bx");
                let bx = mul(bcx, bcx, c.act(&name)?).map_err(at(&name))?;
                let name = format!("{pc}.conv");
                let (ch, l) = (conv.hidden(), conv.kernel_size());
                let qw = c.weight(&name, conv.weight.data(), ch, l)?;
                let qconv = causal_conv1d_from_quantized(
                    &qw,
                    conv.bias.as_ref().map(|b| b.data()),
                    bx.y,
                    c.act(&name)?,
                )
                .map_err(at(&name))?;
                let name = format!("{pc}.y");
                let y = mul(bcx, qconv.y, c.act(&name)?).map_err(at(&name))?;
                let out_proj = c.linear(&format!("{pc}.out_proj"), &conv.out_proj, y.y)?;
                QLfm2Op::Conv(QLfm2ShortConv {
                    in_proj,
                    bx,
                    conv: qconv,
                    y,
                    out_proj,
                })
            }
            Lfm2Op::Attention(a) => {
                let pa = format!("{p}.self_attn");
                let q_proj = c.linear(&format!("{pa}.q_proj"), &a.q_proj, n)?;
                let k_proj = c.linear(&format!("{pa}.k_proj"), &a.k_proj, n)?;
                let v_proj = c.linear(&format!("{pa}.v_proj"), &a.v_proj, n)?;
                let q_layernorm = c.norm(&format!("{pa}.q_layernorm"), &a.q_layernorm, q_proj.y)?;
                let k_layernorm = c.norm(&format!("{pa}.k_layernorm"), &a.k_layernorm, k_proj.y)?;
                let inv_freq = float
                    .rope()
                    .ok_or_else(|| Error::input("attention layer without rotary embedding"))?
                    .inv_freq();
                let name = format!("{pa}.rope_q");
                let rope_q = rope_from_inv_freq(inv_freq, q_layernorm.y, c.act(&name)?)
                    .map_err(at(&name))?;
                let name = format!("{pa}.rope_k");
                let rope_k = rope_from_inv_freq(inv_freq, k_layernorm.y, c.act(&name)?)
                    .map_err(at(&name))?;
                let name = format!("{pa}.sdpa");
                let d = a.head_dim;
                let sdpa = attention(
                    AttnShape {
                        n_heads: a.num_heads,
                        n_kv: a.num_kv_heads,
                        d,
                        dv: d,
                    },
                    (d as f64).powf(-0.5) as f32,
                    rope_q.y,
                    rope_k.y,
                    v_proj.y,
                    c.act(&name)?,
                )
                .map_err(at(&name))?;
                let out_proj = c.linear(&format!("{pa}.out_proj"), &a.out_proj, sdpa.out)?;
                QLfm2Op::Attention(QLfm2Attention {
                    q_proj,
                    k_proj,
                    v_proj,
                    q_layernorm,
                    k_layernorm,
                    rope_q,
                    rope_k,
                    sdpa,
                    out_proj,
                })
            }
        };
        let mixed = match &op {
            QLfm2Op::Conv(conv) => conv.out_proj.y,
            QLfm2Op::Attention(a) => a.out_proj.y,
        };
        let name = format!("{p}.residual1");
        let residual1 = add(x, mixed, c.act(&name)?).map_err(at(&name))?;
        let ffn_norm = c.norm(&format!("{p}.ffn_norm"), &layer.ffn_norm, residual1.y)?;
        let pf = format!("{p}.feed_forward");
        let ff = &layer.feed_forward;
        let w1 = c.linear(&format!("{pf}.w1"), &ff.w1, ffn_norm.y)?;
        let w3 = c.linear(&format!("{pf}.w3"), &ff.w3, ffn_norm.y)?;
        let name = format!("{pf}.act");
        let act_pol = c.policy(&name)?;
        let silu_y = silu_quant(&w1.y, act_pol.abits, act_pol.symmetric);
        let silu = lut(LutFn::Silu, w1.y, silu_y).map_err(at(&name))?;
        let act = mul(silu_y, w3.y, c.act(&name)?).map_err(at(&name))?;
        let w2 = c.linear(&format!("{pf}.w2"), &ff.w2, act.y)?;
        let residual2 = add(residual1.y, w2.y, c.act(&p)?).map_err(at(&p))?;
        x = residual2.y;
        layers.push(QLfm2Layer {
            operator_norm,
            op,
            residual1,
            ffn_norm,
            feed_forward: QLfm2Mlp {
                w1,
                w3,
                silu,
                act,
                w2,
            },
            residual2,
        });
    }
    let embedding_norm = c.norm("embedding_norm", &float.embedding_norm, x)?;
    let hidden = embedding_norm.y;

    // lm_head: min-max logits with headroom.
    let name = "lm_head";
    let pol = c.policy(name)?;
    let (lo, hi) = c.range(name, pol, RangeMethod::MinMax)?;
    let logits_y = ActQuant::from_range(
        lo * LOGIT_HEADROOM,
        hi * LOGIT_HEADROOM,
        pol.abits,
        pol.symmetric,
    );
    let lm_head = match &float.lm_head {
        LmHead::Tied => {
            let emb = c.policy("embed_tokens")?;
            if (emb.wbits, emb.gran) != (pol.wbits, pol.gran) {
                return Err(Error::input(format!(
                    "lm_head is tied to embed_tokens, so both need the same weight precision \
                     (embed_tokens: {}-bit {:?}, lm_head: {}-bit {:?})",
                    emb.wbits, emb.gran, pol.wbits, pol.gran
                )));
            }
            let (mult, _) = row_requant(name, &table_qw, None, &hidden, &logits_y)?;
            let table: &QMatrix = &embed_tokens.table;
            check_reduction(
                name,
                table.inp,
                centered_abs_max(&hidden),
                table.effective_abs_max(),
                0,
            )?;
            QLmHead::Tied(QTiedHead {
                mult,
                x: hidden,
                y: logits_y,
            })
        }
        LmHead::Separate(w) => {
            let qw = c.weight(name, w.data(), v, h)?;
            QLmHead::Separate(linear_from_quantized(&qw, None, hidden, logits_y).map_err(at(name))?)
        }
    };

    Ok(QLfm2Model {
        dims,
        embed_tokens,
        layers,
        embedding_norm,
        lm_head,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::lfm2::Lfm2Config;
    use crate::observe::{NoObserver, Recorder};
    use crate::quant::calibrate::{CalibrationObserver, DEFAULT_BINS};
    use crate::quant::metrics::sqnr_db;
    use crate::quant::models::lfm2::{argmax_i16, QLayerCache};
    use crate::quant::scheme::Override;
    use crate::quant::tensor::QTensor;
    use serde_json::json;

    /// Conv and attention layers, GQA (4 heads / 2 kv heads), tied or untied, conv bias on/off.
    fn tiny(tied: bool) -> Lfm2Config {
        let mut c = Lfm2Config::from_json(&json!({
            "vocab_size": 97,
            "hidden_size": 32,
            "intermediate_size": 96,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "layer_types": ["conv", "full_attention", "conv", "full_attention"],
            "max_position_embeddings": 40,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
            "block_multiple_of": 16,
            "tie_word_embeddings": tied,
            "eos_token_id": 7,
        }))
        .unwrap();
        c.conv_bias = !tied;
        c
    }

    fn ids(n: usize, seed: u32) -> Vec<u32> {
        (0..n as u32)
            .map(|i| (i * 31 + seed * 7 + 5) % 97)
            .collect()
    }

    fn calibrated(m: &Lfm2Model) -> CalibrationStats {
        let mut obs = CalibrationObserver::new(DEFAULT_BINS).unwrap();
        obs.set_part(Part::Text);
        for s in 0..3 {
            let x = m.embed(&ids(12, s)).unwrap();
            let h = m.forward(x, &mut m.new_cache(), &mut obs).unwrap();
            m.lm_head(&h, &mut obs);
        }
        obs.into_stats()
    }

    fn run_chunks(q: &QLfm2Model, ids: &[u32], chunks: &[usize]) -> Vec<i16> {
        let mut cache = q.new_cache();
        let mut out = Vec::new();
        let mut at = 0;
        for &n in chunks {
            let x = q.embed(&ids[at..at + n]).unwrap();
            let h = q.forward(&x, &mut cache, &mut NoObserver).unwrap();
            out.extend_from_slice(&q.logits(&h).data);
            at += n;
        }
        out
    }

    #[test]
    fn mirrors_the_float_model_op_for_op() {
        for tied in [true, false] {
            let m = Lfm2Model::random(&tiny(tied), 3).unwrap();
            let stats = calibrated(&m);
            let q = lfm2(
                &m,
                &stats,
                &Scheme::parse("text=w8a16").unwrap(),
                RangeMethod::MinMax,
            )
            .unwrap();
            assert_eq!(matches!(q.lm_head, QLmHead::Tied(_)), tied);
            let prompt = ids(9, 1);
            let mut fr = Recorder::new(|_: &str| true);
            let h = m
                .forward(m.embed(&prompt).unwrap(), &mut m.new_cache(), &mut fr)
                .unwrap();
            m.lm_head(&h, &mut fr);
            let mut qr = Recorder::new(|_: &str| true);
            let mut cache = q.new_cache();
            let qh = q
                .forward(&q.embed(&prompt).unwrap(), &mut cache, &mut qr)
                .unwrap();
            q.lm_head(&qh, &mut qr);
            let fnames: Vec<&String> = fr.tensors.keys().collect();
            let qnames: Vec<&String> = qr.tensors.keys().collect();
            assert_eq!(fnames, qnames);
            for (n, t) in &fr.tensors {
                assert_eq!(t.shape(), qr.tensors[n].shape(), "{n}");
                let db = sqnr_db(t.data(), qr.tensors[n].data());
                assert!(db > 25.0, "{n}: {db:.1} dB");
            }
            // Caches: i16 conv states of (L - 1) rows, i16 K and V per token.
            let cfg = &m.config;
            assert_eq!(cache.len(), 9);
            assert_eq!(
                cache.state_bytes(),
                cfg.num_conv_layers() * (cfg.conv_l_cache - 1) * cfg.hidden_size * 2
            );
            assert_eq!(
                cache.kv_bytes(),
                9 * cfg.num_attention_layers() * 2 * cfg.num_key_value_heads * cfg.head_dim * 2
            );
            cache.reset(&q);
            assert!(cache.is_empty() && cache.kv_bytes() == 0);
            assert_eq!(cache, q.new_cache());
            assert!(cache.layers().iter().all(
                |l| !matches!(l, QLayerCache::Conv { state } if state.iter().any(|&v| v != 0))
            ));
        }
    }

    #[test]
    fn prefill_chunks_and_decode_are_bit_identical() {
        let m = Lfm2Model::random(&tiny(false), 5).unwrap();
        let stats = calibrated(&m);
        for scheme in ["text=w4a16", "text=w8a16", "text=w8a8", "text=w16a16"] {
            let q = lfm2(
                &m,
                &stats,
                &Scheme::parse(scheme).unwrap(),
                RangeMethod::MinMax,
            )
            .unwrap();
            let p = ids(13, 2);
            let whole = run_chunks(&q, &p, &[13]);
            assert_eq!(run_chunks(&q, &p, &[1; 13]), whole, "{scheme}");
            assert_eq!(run_chunks(&q, &p, &[2, 1, 5, 1, 4]), whole, "{scheme}");
            let v = m.config.vocab_size;
            assert_eq!(
                argmax_i16(&whole[12 * v..]),
                argmax_i16(
                    &q.logits_last(&{
                        let x = q.embed(&p).unwrap();
                        q.forward(&x, &mut q.new_cache(), &mut NoObserver).unwrap()
                    })
                    .data
                )
            );
        }
    }

    #[test]
    fn clear_errors() {
        let m = Lfm2Model::random(&tiny(true), 9).unwrap();
        let stats = calibrated(&m);
        let mm = RangeMethod::MinMax;
        let w4 = Scheme::parse("text=w4a16").unwrap();
        let err = |s: &Scheme, st: &CalibrationStats| lfm2(&m, st, s, mm).unwrap_err().to_string();

        // Missing statistics name the op (and how to get lm_head's).
        for name in ["layers.1.self_attn.rope_k", "layers.0.conv.bx", "lm_head"] {
            let mut st = stats.clone();
            st.tensors.remove(name);
            let e = err(&w4, &st);
            assert!(e.contains(&format!("`{name}`")), "{e}");
            assert_eq!(e.contains("Lfm2Model::lm_head"), name == "lm_head", "{e}");
        }
        // Per-op float override, float text part, tied precision mismatch (16-bit weights are
        // supported: see `prefill_chunks_and_decode_are_bit_identical`).
        let mut s = w4.clone();
        s.overrides.push(Override {
            pattern: "layers.2.feed_forward.*".into(),
            precision: Precision::Float,
            part: None,
        });
        let e = err(&s, &stats);
        assert!(
            e.contains("`layers.2.feed_forward.w1`") && e.contains("float"),
            "{e}"
        );
        assert!(err(&Scheme::parse("text=float").unwrap(), &stats).contains("text part"));
        let mut s = w4.clone();
        s.overrides.push(Override {
            pattern: "lm_head".into(),
            precision: Precision::W8A16,
            part: None,
        });
        assert!(err(&s, &stats).contains("tied"));

        // Runtime input errors.
        let q = lfm2(&m, &stats, &w4, mm).unwrap();
        assert!(q.embed(&[3, 97]).is_err());
        let mut cache = q.new_cache();
        let x = q.embed(&ids(41, 0)).unwrap();
        assert!(matches!(
            q.forward(&x, &mut cache, &mut NoObserver),
            Err(Error::ContextOverflow {
                tokens: 41,
                context: 40,
                ..
            })
        ));
        assert!(cache.is_empty(), "a failed call leaves the cache alone");
        let x = q.embed(&ids(40, 0)).unwrap();
        q.forward(&x, &mut cache, &mut NoObserver).unwrap();
        let one = q.embed(&[1]).unwrap();
        assert!(matches!(
            q.forward(&one, &mut cache, &mut NoObserver),
            Err(Error::ContextOverflow { tokens: 41, .. })
        ));
        let mut wrong_q = one.clone();
        wrong_q.q.scale *= 2.0;
        let e = q
            .forward(&wrong_q, &mut q.new_cache(), &mut NoObserver)
            .unwrap_err()
            .to_string();
        assert!(e.contains("embed_params"), "{e}");
        let e = q
            .forward(
                &QTensor::new(&[0, 32], vec![], q.embed_params()),
                &mut q.new_cache(),
                &mut NoObserver,
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("[T >= 1, 32]"), "{e}");
        // A cache of another model (different layout).
        let mut other_cfg = tiny(true);
        other_cfg.layer_types.reverse();
        let other = Lfm2Model::random(&other_cfg, 9).unwrap();
        let oq = lfm2(&other, &calibrated(&other), &w4, mm).unwrap();
        let e = q
            .forward(&one, &mut oq.new_cache(), &mut NoObserver)
            .unwrap_err()
            .to_string();
        assert!(e.contains("new_cache"), "{e}");
    }

    #[test]
    fn embedding_range_covers_the_table_and_silu_range_is_exact() {
        let m = Lfm2Model::random(&tiny(true), 4).unwrap();
        let q = lfm2(
            &m,
            &calibrated(&m),
            &Scheme::parse("text=w8a16").unwrap(),
            RangeMethod::MinMax,
        )
        .unwrap();
        // Every row embeds without saturating.
        let all: Vec<u32> = (0..97).collect();
        let e = q.embed(&all).unwrap();
        assert!(e.data.iter().all(|&v| v > i16::MIN + 1 && v < i16::MAX));
        let x = ActQuant::from_range(-8.0, 2.0, 16, true);
        let s = silu_quant(&x, 16, true);
        // silu(-8) is tiny, silu(8) ~ 8 is the largest magnitude.
        assert!(
            (s.scale * 32767.0 - 8.0 / (1.0 + (-8f32).exp())).abs() < 1e-4,
            "{s:?}"
        );
        let x = ActQuant::from_range(-0.5, 0.5, 16, true);
        let s = silu_quant(&x, 16, true);
        assert!((s.scale * 32767.0 - 0.5 / (1.0 + (-0.5f32).exp())).abs() < 1e-5);
        let x = ActQuant::from_range(-6.0, 0.2, 8, false);
        let s = silu_quant(&x, 8, false);
        assert!((s.dequantize(-128) - (SILU_ARGMIN + 1.0) as f32).abs() < s.scale);
    }
}
