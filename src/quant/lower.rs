//! Lowering: a float graph with its weights, calibration statistics (keyed by node name) and a
//! precision scheme become an integer graph ([`QOp`] nodes, every edge quantized).
//!
//! Walking the float graph in order, each edge gets its quantization from the calibrated range of
//! the node producing it ([`QuantPolicy::act`]), and each node becomes one integer op built by
//! the per-op builders in [`crate::quant::prepare`], with the quantization of its inputs (so a
//! producer/consumer mismatch cannot be represented). The rules that are not "the node's own
//! range" are per op kind, never per architecture:
//! - an embedding's range also covers its whole quantized table (any token embeds without
//!   saturating);
//! - the `logits` port takes the min-max range widened [`LOGIT_HEADROOM`] times whatever the range
//!   method (greedy decoding reads exactly the largest logits);
//! - an activation with no name of its own (SwiGLU's SiLU) becomes a table onto the exact image of
//!   its input's range, at the width of the op that consumes it;
//! - a linear layer reading an embedding's table is a tied projection over the same integers;
//! - decode-state slots take the quantization of the edge they store.

use crate::error::{Error, Result};
use crate::exec::float::conv_spec;
use crate::exec::FloatProgram;
use crate::graph::qop::QOp;
use crate::graph::{Elem, Graph, Node, Op, ValueId};
use crate::ops::activation::Activation;
use crate::ops::attention::AttnShape;
use crate::ops::rope::Rope;
use crate::quant::arith::{check_reduction, qmax, qmin};
use crate::quant::calibrate::{CalibrationStats, RangeMethod};
use crate::quant::gptq;
use crate::quant::ops::elementwise::ChannelAxis;
use crate::quant::ops::linear::centered_abs_max;
use crate::quant::ops::linear::QMatrix;
use crate::quant::params::{
    quantize_weight, ActQuant, Granularity, QuantWeight, WeightRange, GROUP_SCALE_BITS,
};
use crate::quant::prepare::attention::attention;
use crate::quant::prepare::conv::conv2d_from_quantized;
use crate::quant::prepare::conv1d::causal_conv1d_from_quantized;
use crate::quant::prepare::elementwise::channel_scale;
use crate::quant::prepare::elementwise::{add, mul};
use crate::quant::prepare::embedding::embedding_from_quantized;
use crate::quant::prepare::linear::{linear_from_quantized, row_requant};
use crate::quant::prepare::lut::{lut, LutFn};
use crate::quant::prepare::norm::rms_norm;
use crate::quant::prepare::norm::{layer_norm, rms_norm_2d};
use crate::quant::prepare::pool::{avg_pool2d, concat_channels, resize_bilinear, upsample_nearest};
use crate::quant::prepare::rope::rope_from_inv_freq;
use crate::quant::prepare::tokens::cls_pos_embed;
use crate::quant::scheme::{Part, Precision, Scheme};

/// How many times the calibrated min-max logit range is widened for the `logits` port (at any
/// width).
pub const LOGIT_HEADROOM: f32 = 2.0;

/// How many times every other calibrated 16-bit range of the language model is widened: one bit
/// of headroom. A16 steps are fine enough to spare it (the runtime's own error stays near 60 dB
/// on the golden models), while saturation on inputs the calibration set did not cover (decode
/// steps, other prompts, the activations of the weight-quantized model drifting from the float
/// ones) costs far more: with the bare calibrated ranges the W4A16 golden models' logits were
/// only 31-63 dB away from the float model with the same weights (54-62 dB with the headroom).
pub const A16_HEADROOM: f32 = 2.0;

/// Where SiLU is smallest: `x* = -1 - W(1/e) = -1.27846...`, `silu(x*) = x* + 1`.
const SILU_ARGMIN: f64 = -1.278_464_542_761_074;

/// The integer precision of one op.
#[derive(Clone, Copy, Debug)]
pub struct OpPrecision {
    pub wbits: u32,
    pub abits: u32,
    pub symmetric: bool,
    pub gran: Granularity,
}

/// Every per-op quantization decision of one model part: precision from the scheme (with its
/// overrides), activation ranges from the calibration statistics, weight rounding (nearest, then
/// GPTQ where calibration recorded the op's inputs).
///
/// The language model and the vision side were tuned separately and keep their measured rules:
/// the text part widens 16-bit ranges by [`A16_HEADROOM`], defaults to min-max ranges and clips
/// weights of 4 bits and below by MSE; vision and connector use their calibrated ranges as they
/// are, default to min-max at 16 bits and MSE at 8, and clip weights below 8 bits by MSE.
pub struct QuantPolicy<'a> {
    pub stats: &'a CalibrationStats,
    pub scheme: &'a Scheme,
    pub part: Part,
    /// `None`: the part's default per activation width.
    pub method: Option<RangeMethod>,
}

impl QuantPolicy<'_> {
    /// Prefixes an op's own error with its name.
    pub fn at<'n>(&self, name: &'n str) -> impl Fn(Error) -> Error + 'n {
        let part = self.part;
        move |e| Error::input(format!("{part} op `{name}`: {e}"))
    }

    pub fn precision(&self, name: &str) -> Result<OpPrecision> {
        let p = self.scheme.op_policy(self.part, name);
        match (p.precision, p.weight_granularity, p.act_symmetric) {
            (Precision::Int { wbits, abits }, Some(gran), Some(symmetric)) => Ok(OpPrecision {
                wbits,
                abits,
                symmetric: if self.part == Part::Text {
                    symmetric
                } else {
                    abits >= 16
                },
                gran,
            }),
            _ => Err(Error::input(format!(
                "{} op `{name}` is {} under this scheme (a per-op override): an integer part \
                 has no float ops; quantize it, or leave the whole {} part float",
                self.part, p.precision, self.part
            ))),
        }
    }

    fn method_for(&self, abits: u32) -> RangeMethod {
        self.method
            .unwrap_or(if self.part == Part::Text || abits >= 16 {
                RangeMethod::MinMax
            } else {
                RangeMethod::Mse
            })
    }

    fn headroom(&self, abits: u32) -> f32 {
        if self.part == Part::Text && abits >= 16 {
            A16_HEADROOM
        } else {
            1.0
        }
    }

    fn weight_range(&self, wbits: u32) -> WeightRange {
        let mse = if self.part == Part::Text {
            wbits <= 4
        } else {
            wbits < 8
        };
        if mse {
            WeightRange::Mse
        } else {
            WeightRange::MinMax
        }
    }

    /// The calibrated `(lo, hi)` of `name` for `pol`'s activation width.
    pub fn range(&self, name: &str, pol: OpPrecision, method: RangeMethod) -> Result<(f32, f32)> {
        let s = self.stats.get(name).ok_or_else(|| {
            Error::input(format!(
                "no calibration statistics for {} op `{name}`: calibrate with the same model \
                 (and input size) that is being converted",
                self.part
            ))
        })?;
        s.range(method, pol.abits, pol.symmetric).ok_or_else(|| {
            Error::input(format!(
                "calibration statistics of {} op `{name}` hold no finite value (range method \
                 {method})",
                self.part
            ))
        })
    }

    /// Output quantization of `name` from its calibrated range.
    pub fn act(&self, name: &str) -> Result<ActQuant> {
        let pol = self.precision(name)?;
        let (lo, hi) = self.range(name, pol, self.method_for(pol.abits))?;
        let k = self.headroom(pol.abits);
        Ok(ActQuant::from_range(
            lo * k,
            hi * k,
            pol.abits,
            pol.symmetric,
        ))
    }

    /// `w[out, inp]` (row-major; convolutions flattened) quantized with `name`'s weight policy.
    pub fn weight(&self, name: &str, w: &[f32], out: usize, inp: usize) -> Result<QuantWeight> {
        let pol = self.precision(name)?;
        if !(2..=16).contains(&pol.wbits) {
            return Err(Error::input(format!(
                "{} op `{name}`: {}-bit weights are not supported by the integer ops (2..=16)",
                self.part, pol.wbits
            )));
        }
        if w.len() != out * inp || inp == 0 {
            return Err(Error::input(format!(
                "{} op `{name}`: weight of {} values for [{out}, {inp}]",
                self.part,
                w.len()
            )));
        }
        if w.iter().any(|v| !v.is_finite()) {
            return Err(Error::input(format!(
                "{} op `{name}`: non-finite weight",
                self.part
            )));
        }
        let mut qw = quantize_weight(
            w,
            out,
            inp,
            pol.wbits,
            pol.gran,
            self.weight_range(pol.wbits),
        );
        gptq::refine_op(name, w, &mut qw, self.stats.inputs.get(name));
        Ok(qw)
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
pub fn silu_quant(x: &ActQuant, bits: u32, symmetric: bool) -> ActQuant {
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

/// The fixed quantization of preprocessed pixels in `[0, 1]`: 16 bits symmetric (scale
/// `1/32767`, zero point 0) or 8 bits asymmetric (scale `1/255`, zero point -128).
pub fn pixel_quant(act_bits: u32) -> ActQuant {
    pixel_quant_in(act_bits, PIXELS)
}

/// Preprocessed pixels without mean/std normalisation.
pub const PIXELS: (f32, f32) = (0.0, 1.0);

/// The fixed quantization of pixels in `range` (the image of `[0, 1]` under the model's
/// mean/std normalisation): 16 bits symmetric or 8 bits asymmetric.
pub fn pixel_quant_in(act_bits: u32, (lo, hi): (f32, f32)) -> ActQuant {
    ActQuant::from_range(lo, hi, act_bits, act_bits >= 16)
}

/// Lowers the float graph of `part` (its weights in `prog`) to an integer graph. `inputs` gives
/// the quantization of float inputs (pixels, or the rows a connector is fed); token inputs need
/// none.
pub fn lower(
    prog: &FloatProgram,
    part: Part,
    stats: &CalibrationStats,
    scheme: &Scheme,
    method: Option<RangeMethod>,
    inputs: &[(ValueId, ActQuant)],
) -> Result<Graph<QOp>> {
    lower_with_pixels(prog, part, stats, scheme, method, inputs, PIXELS)
}

/// [`lower`] for a model whose pixels arrive in `pixels` (normalised by its image processor's
/// mean and std; [`PIXELS`] otherwise).
pub fn lower_with_pixels(
    prog: &FloatProgram,
    part: Part,
    stats: &CalibrationStats,
    scheme: &Scheme,
    method: Option<RangeMethod>,
    inputs: &[(ValueId, ActQuant)],
    pixels: (f32, f32),
) -> Result<Graph<QOp>> {
    if scheme.part(part).is_float() {
        return Err(Error::input(format!(
            "the scheme leaves the {part} part in float: there is no integer {part} part to build"
        )));
    }
    let c = QuantPolicy {
        stats,
        scheme,
        part,
        method,
    };
    let g = &prog.graph;
    let mut values = g.values.clone();
    for (v, q) in inputs {
        values[v.0 as usize].elem = Elem::Q(*q);
    }
    if let Ok(px) = g.port("pixels") {
        if !inputs.iter().any(|(v, _)| *v == px) {
            // Pixels in their fixed range at the edge, at the width of the first op reading them.
            let first = g.nodes.iter().find(|n| n.inputs.contains(&px));
            let abits = match first {
                Some(n) => c.precision(&n.name)?.abits,
                None => return Err(Error::input("no op reads the pixels")),
            };
            values[px.0 as usize].elem = Elem::Q(pixel_quant_in(abits, pixels));
        }
    }
    if let Some(v) = g
        .inputs
        .iter()
        .find(|v| values[v.0 as usize].elem == Elem::F32)
    {
        return Err(Error::input(format!(
            "{part} input `{}` needs a quantization",
            values[v.0 as usize].name
        )));
    }
    let mut states = g.states.clone();
    let logits = g.port("logits").ok();
    // Embedding nodes by table, for tied projections: (node index, quantized table).
    let mut tables: Vec<(crate::graph::ParamId, usize, QuantWeight)> = Vec::new();
    let mut nodes: Vec<Node<QOp>> = Vec::with_capacity(g.nodes.len());
    for (i, node) in g.nodes.iter().enumerate() {
        let name = node.name.as_str();
        let at = c.at(name);
        let q = |k: usize| -> Result<ActQuant> {
            match values[node.inputs[k].0 as usize].elem {
                Elem::Q(q) => Ok(q),
                _ => Err(Error::input(format!(
                    "{part} op `{name}`: input `{}` has no quantization",
                    values[node.inputs[k].0 as usize].name
                ))),
            }
        };
        let p = |id: crate::graph::ParamId| &prog.params()[id.0 as usize];
        let (op, y) = match &node.op {
            Op::Embedding { table } => {
                let t = p(*table);
                let (v, h) = (t.dim(0), t.dim(1));
                let qw = c.weight(name, t.data(), v, h)?;
                let pol = c.precision(name)?;
                let (lo, hi) = c.range(name, pol, c.method_for(pol.abits))?;
                let k = c.headroom(pol.abits);
                let (tlo, thi) = value_range(&qw);
                let y = ActQuant::from_range(
                    (lo * k).min(tlo),
                    (hi * k).max(thi),
                    pol.abits,
                    pol.symmetric,
                );
                let e = embedding_from_quantized(&qw, y).map_err(&at)?;
                tables.push((*table, i, qw));
                (QOp::Embedding(e), y)
            }
            Op::Linear { weight, bias } => {
                let w = p(*weight);
                let (out, inp) = (w.dim(0), w.dim(1));
                let x = q(0)?;
                let y = if Some(node.output) == logits {
                    let pol = c.precision(name)?;
                    let (lo, hi) = c.range(name, pol, RangeMethod::MinMax)?;
                    ActQuant::from_range(
                        lo * LOGIT_HEADROOM,
                        hi * LOGIT_HEADROOM,
                        pol.abits,
                        pol.symmetric,
                    )
                } else {
                    c.act(name)?
                };
                match tables.iter().find(|(t, _, _)| t == weight) {
                    Some((_, table, qw)) => {
                        let QOp::Embedding(e) = &nodes[*table].op else {
                            unreachable!("tables lists embedding nodes")
                        };
                        let head = tied(&c, name, &g.nodes[*table], *table, (qw, &e.table), x, y)?;
                        (head, y)
                    }
                    None => {
                        let qw = c.weight(name, w.data(), out, inp)?;
                        let b = bias.map(|b| p(b).data());
                        let l = linear_from_quantized(&qw, b, x, y).map_err(&at)?;
                        (QOp::Linear(l), y)
                    }
                }
            }
            Op::RmsNorm { weight, eps } => {
                let y = c.act(name)?;
                let n = rms_norm(p(*weight).data(), *eps, q(0)?, y).map_err(&at)?;
                (QOp::RmsNorm(n), y)
            }
            Op::Slice { start, len } => (
                QOp::Slice {
                    start: *start,
                    len: *len,
                },
                q(0)?,
            ),
            Op::Add => {
                let y = c.act(name)?;
                (QOp::Add(add(q(0)?, q(1)?, y).map_err(&at)?), y)
            }
            Op::Mul => {
                let y = c.act(name)?;
                (QOp::Mul(mul(q(0)?, q(1)?, y).map_err(&at)?), y)
            }
            Op::Act(f) => {
                let x = q(0)?;
                let y = if node.observed {
                    c.act(name)?
                } else {
                    internal_act_quant(&c, g, node, *f, &x)?
                };
                (QOp::Lut(lut(LutFn::from(*f), x, y).map_err(&at)?), y)
            }
            Op::CausalConv1d {
                weight,
                bias,
                state,
            } => {
                let w = p(*weight);
                let ch = w.dim(0);
                let qw = c.weight(name, w.data(), ch, w.numel() / ch)?;
                let x = q(0)?;
                let y = c.act(name)?;
                let conv = causal_conv1d_from_quantized(&qw, bias.map(|b| p(b).data()), x, y)
                    .map_err(&at)?;
                states[state.0 as usize].elem = Elem::Q(x);
                (
                    QOp::CausalConv1d {
                        conv,
                        state: *state,
                    },
                    y,
                )
            }
            Op::Rope {
                heads,
                head_dim,
                theta,
            } => {
                let y = c.act(name)?;
                let inv_freq = Rope::new(*head_dim, *theta)?;
                let rope = rope_from_inv_freq(inv_freq.inv_freq(), q(0)?, y).map_err(&at)?;
                (
                    QOp::Rope {
                        rope,
                        heads: *heads,
                    },
                    y,
                )
            }
            Op::CachedAttention {
                heads,
                kv_heads,
                head_dim,
                scale,
                k,
                v,
            } => {
                let y = c.act(name)?;
                let shape = AttnShape {
                    n_heads: *heads,
                    n_kv: *kv_heads,
                    d: *head_dim,
                    dv: *head_dim,
                };
                let (qq, qk, qv) = (q(0)?, q(1)?, q(2)?);
                let attn = attention(shape, *scale, qq, qk, qv, y).map_err(&at)?;
                states[k.0 as usize].elem = Elem::Q(qk);
                states[v.0 as usize].elem = Elem::Q(qv);
                (QOp::CachedAttention { attn, k: *k, v: *v }, y)
            }
            Op::Attention {
                heads,
                kv_heads,
                d,
                dv,
                scale,
            } => {
                let y = c.act(name)?;
                let shape = AttnShape {
                    n_heads: *heads,
                    n_kv: *kv_heads,
                    d: *d,
                    dv: *dv,
                };
                let a = attention(shape, *scale, q(0)?, q(1)?, q(2)?, y).map_err(&at)?;
                (QOp::Attention(a), y)
            }
            Op::Conv2d {
                weight,
                bias,
                stride,
                dilation,
                groups,
                pad,
            } => {
                let w = p(*weight);
                let (c_out, cpg, kh, kw) = (w.dim(0), w.dim(1), w.dim(2), w.dim(3));
                let qw = c.weight(name, w.data(), c_out, cpg * kh * kw)?;
                let y = c.act(name)?;
                let spec = conv_spec(*stride, *dilation, *groups, pad);
                let b = bias.map(|b| p(b).data());
                let conv =
                    conv2d_from_quantized(&qw, cpg, (kh, kw), b, spec, q(0)?, y).map_err(&at)?;
                (QOp::Conv2d(conv), y)
            }
            Op::RmsNorm2d { weight, eps } => {
                let y = c.act(name)?;
                let n = rms_norm_2d(p(*weight).data(), *eps, q(0)?, y).map_err(&at)?;
                (QOp::RmsNorm2d(n), y)
            }
            Op::ChannelScale { gamma } => {
                let y = c.act(name)?;
                // `[C, H, W]` maps scale dimension 0, `[T, D]` tokens their last dimension.
                let axis = match values[node.inputs[0].0 as usize].shape.len() {
                    2 => ChannelAxis::Last,
                    _ => ChannelAxis::First,
                };
                let s = channel_scale(p(*gamma).data(), axis, q(0)?, y).map_err(&at)?;
                (QOp::ChannelScale(s), y)
            }
            Op::PointwiseToTokens { weight } | Op::PointwiseFromTokens { weight, .. } => {
                let w = p(*weight);
                let qw = c.weight(name, w.data(), w.dim(0), w.dim(1))?;
                let y = c.act(name)?;
                let l = linear_from_quantized(&qw, None, q(0)?, y).map_err(&at)?;
                match &node.op {
                    Op::PointwiseFromTokens { h, w, .. } => (
                        QOp::PointwiseFromTokens {
                            linear: l,
                            h: *h,
                            w: *w,
                        },
                        y,
                    ),
                    _ => (QOp::PointwiseToTokens(l), y),
                }
            }
            Op::ResizeNearest { h, w } => {
                let s = &values[node.inputs[0].0 as usize].shape;
                let (ih, iw) = (dim(s, 1)?, dim(s, 2)?);
                let r = upsample_nearest(ih, iw, *h, *w).map_err(&at)?;
                (QOp::ResizeNearest(r), q(0)?)
            }
            Op::ResizeBilinear { h, w } => {
                let s = &values[node.inputs[0].0 as usize].shape;
                let (ih, iw) = (dim(s, 1)?, dim(s, 2)?);
                let y = c.act(name)?;
                let r = resize_bilinear(ih, iw, *h, *w, q(0)?, y).map_err(&at)?;
                (QOp::ResizeBilinear(r), y)
            }
            Op::AvgPool { kh, kw, sh, sw } => {
                if (kh, kw) != (sh, sw) {
                    return Err(at(Error::input(
                        "the integer average pool needs stride = kernel",
                    )));
                }
                let y = c.act(name)?;
                (
                    QOp::AvgPool(avg_pool2d(*kh, *kw, q(0)?, y).map_err(&at)?),
                    y,
                )
            }
            Op::Concat => {
                let y = c.act(name)?;
                let ins = (0..node.inputs.len()).map(q).collect::<Result<Vec<_>>>()?;
                (QOp::Concat(concat_channels(&ins, y).map_err(&at)?), y)
            }
            Op::ToTokens => (QOp::ToTokens, q(0)?),
            Op::LayerNorm { weight, bias, eps } => {
                let y = c.act(name)?;
                let b = bias.map(|b| p(b).data());
                let n = layer_norm(p(*weight).data(), b, *eps, q(0)?, y).map_err(&at)?;
                (QOp::LayerNorm(n), y)
            }
            Op::SliceRows { start, len } => (
                QOp::SliceRows {
                    start: *start,
                    len: *len,
                },
                q(0)?,
            ),
            Op::ClsPosEmbed { cls, pos } => {
                let y = c.act(name)?;
                let tokens = dim(&values[node.inputs[0].0 as usize].shape, 0)?;
                let e = cls_pos_embed(p(*cls).data(), pos.map(|id| p(id).data()), tokens, q(0)?, y)
                    .map_err(&at)?;
                (QOp::ClsPosEmbed(e), y)
            }
            Op::PixelShuffle { h, w, scale } => (
                QOp::PixelShuffle {
                    h: *h,
                    w: *w,
                    scale: *scale,
                },
                q(0)?,
            ),
        };
        values[node.output.0 as usize].elem = Elem::Q(y);
        nodes.push(Node {
            name: node.name.clone(),
            op,
            inputs: node.inputs.clone(),
            output: node.output,
            observed: node.observed,
            aliases: node.aliases.clone(),
        });
    }
    Ok(Graph {
        inputs: g.inputs.clone(),
        values,
        nodes,
        params: Vec::new(),
        states,
        ports: g.ports.clone(),
    })
}

/// The fixed size of axis `i` of a shape.
fn dim(s: &[crate::graph::Dim], i: usize) -> Result<usize> {
    s.get(i).and_then(|d| d.fixed()).ok_or_else(|| {
        Error::input(format!(
            "axis {i} of {} is not fixed",
            crate::graph::shape_text(s)
        ))
    })
}

/// The output quantization of an activation without a name of its own: the exact image of its
/// input's range, at the precision of the op consuming it.
fn internal_act_quant(
    c: &QuantPolicy,
    g: &Graph,
    node: &Node,
    f: Activation,
    x: &ActQuant,
) -> Result<ActQuant> {
    let consumers: Vec<&Node> = g
        .nodes
        .iter()
        .filter(|n| n.inputs.contains(&node.output))
        .collect();
    let [consumer] = consumers.as_slice() else {
        return Err(Error::input(format!(
            "{} op `{}`: an unnamed activation needs exactly one consumer",
            c.part, node.name
        )));
    };
    let pol = c.precision(&consumer.name)?;
    match f {
        Activation::Silu => Ok(silu_quant(x, pol.abits, pol.symmetric)),
        other => Err(Error::input(format!(
            "{} op `{}`: an unnamed {other:?} has no derived range (give it a name)",
            c.part, node.name
        ))),
    }
}

/// A linear layer over an embedding's integer table (tied output projection): the table's rows
/// are the weight rows, so both need the same weight precision.
fn tied(
    c: &QuantPolicy,
    name: &str,
    table_node: &Node,
    table: usize,
    (qw, m): (&QuantWeight, &QMatrix),
    x: ActQuant,
    y: ActQuant,
) -> Result<QOp> {
    let emb = c.precision(&table_node.name)?;
    let pol = c.precision(name)?;
    if (emb.wbits, emb.gran) != (pol.wbits, pol.gran) {
        return Err(Error::input(format!(
            "`{name}` is tied to `{}`, so both need the same weight precision ({}: {}-bit {:?}, \
             {name}: {}-bit {:?})",
            table_node.name, table_node.name, emb.wbits, emb.gran, pol.wbits, pol.gran
        )));
    }
    let (mult, _) = row_requant(name, qw, None, &x, &y)?;
    check_reduction(name, m.inp, centered_abs_max(&x), m.effective_abs_max(), 0)?;
    Ok(QOp::TiedLinear { table, mult, x, y })
}
