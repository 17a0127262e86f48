//! The closed set of float operations, with their shape rules.
//!
//! Semantics follow the reference modules (PyTorch layouts): token activations are `[T, D]`,
//! vision maps `[C, H, W]`, linear weights `[out, in]`, conv weights `[C_out, C_in / groups, kH,
//! kW]`. Each variant names the weights it reads ([`ParamId`]) and the decode state it updates
//! ([`StateId`]); attributes are plain data so a graph serializes as it is.

use super::{Dim, Elem, ParamId, ParamInfo, Shape, StateId, StateInfo, ValueInfo};
use crate::error::{Error, Result};
use crate::ops::activation::Activation;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Op {
    /// `ids [T] -> table[ids] [T, H]`.
    Embedding {
        table: ParamId,
    },
    /// `x [T, in] @ weight[out, in]^T (+ bias) -> [T, out]`.
    Linear {
        weight: ParamId,
        bias: Option<ParamId>,
    },
    /// RMSNorm over each `weight.len()`-wide group of the last dimension (per head when the
    /// weight is one head wide): `w * x / sqrt(mean(x^2) + eps)`.
    RmsNorm {
        weight: ParamId,
        eps: f32,
    },
    /// `torch.nn.LayerNorm` over the last dimension: `(x - mean) / sqrt(var + eps) * weight
    /// (+ bias)`.
    LayerNorm {
        weight: ParamId,
        bias: Option<ParamId>,
        eps: f32,
    },
    /// timm `RmsNorm2d` over the channels of a `[C, H, W]` map.
    RmsNorm2d {
        weight: ParamId,
        eps: f32,
    },
    /// `x[..., start..start + len]`.
    Slice {
        start: usize,
        len: usize,
    },
    /// Rows `start..start + len` of `[T, D]` tokens (InternVL drops the CLS row).
    SliceRows {
        start: usize,
        len: usize,
    },
    Add,
    Mul,
    Act(Activation),
    /// `x[c] * gamma[c]` per channel: on a `[C, H, W]` map (timm `LayerScale2d`) or on the last
    /// dimension of `[T, D]` tokens (InternViT's `lambda_1` / `lambda_2`).
    ChannelScale {
        gamma: ParamId,
    },
    /// ViT embeddings on `[N, D]` patch tokens: the learned `cls` token (`[D]` in any `[1, 1,
    /// D]`-like shape) prepended, then absolute position embeddings (`[N + 1, D]` elements)
    /// added when present: `[N + 1, D]`.
    ClsPosEmbed {
        cls: ParamId,
        pos: Option<ParamId>,
    },
    /// InternVL's pixel shuffle on the `[h * w, C]` tokens of an `h x w` grid: `[(h / scale) *
    /// (w / scale), scale^2 * C]` (`ops::tokens::pixel_shuffle`).
    PixelShuffle {
        h: usize,
        w: usize,
        scale: usize,
    },
    /// Depthwise causal conv over time on `[T, H]`, weight `[H, L]` (or `[H, 1, L]`), left
    /// context from `state` (`[L - 1, H]`, updated with the last `L - 1` input rows).
    CausalConv1d {
        weight: ParamId,
        bias: Option<ParamId>,
        state: StateId,
    },
    /// Rotate-half RoPE on `[T, heads * head_dim]` at positions `past..past + T`.
    Rope {
        heads: usize,
        head_dim: usize,
        theta: f64,
    },
    /// Causal GQA over the keys and values in `k` / `v` state slots after appending this call's
    /// rows: inputs `q [T, heads * d]`, `k [T, kv_heads * d]`, `v [T, kv_heads * d]`.
    CachedAttention {
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
        scale: f32,
        k: StateId,
        v: StateId,
    },
    /// Unmasked multi-query / grouped attention: `q [Tq, heads * d]`, `k [Tk, kv_heads * d]`,
    /// `v [Tk, kv_heads * dv]`.
    Attention {
        heads: usize,
        kv_heads: usize,
        d: usize,
        dv: usize,
        scale: f32,
    },
    /// 2-D convolution with explicit zero padding `[top, bottom, left, right]` (timm's static or
    /// TF-"same" padding, resolved for the input size at build time).
    Conv2d {
        weight: ParamId,
        bias: Option<ParamId>,
        stride: usize,
        dilation: usize,
        groups: usize,
        pad: [usize; 4],
    },
    /// 1x1 conv from a `[C, H, W]` map to tokens `[H * W, D]`, weight `[D, C, 1, 1]`.
    PointwiseToTokens {
        weight: ParamId,
    },
    /// 1x1 conv from tokens `[h * w, D]` to a map `[C, h, w]`, weight `[C, D, 1, 1]`.
    PointwiseFromTokens {
        weight: ParamId,
        h: usize,
        w: usize,
    },
    ResizeNearest {
        h: usize,
        w: usize,
    },
    ResizeBilinear {
        h: usize,
        w: usize,
    },
    AvgPool {
        kh: usize,
        kw: usize,
        sh: usize,
        sw: usize,
    },
    /// Channel concatenation of `[C_i, H, W]` maps.
    Concat,
    /// `[C, H, W] -> [H * W, C]` (row-major over the grid).
    ToTokens,
}

impl Op {
    /// Short name for listings.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Embedding { .. } => "embedding",
            Op::Linear { .. } => "linear",
            Op::RmsNorm { .. } => "rms_norm",
            Op::LayerNorm { .. } => "layer_norm",
            Op::RmsNorm2d { .. } => "rms_norm_2d",
            Op::Slice { .. } => "slice",
            Op::SliceRows { .. } => "slice_rows",
            Op::ClsPosEmbed { .. } => "cls_pos_embed",
            Op::PixelShuffle { .. } => "pixel_shuffle",
            Op::Add => "add",
            Op::Mul => "mul",
            Op::Act(Activation::GeluTanh) => "gelu_tanh",
            Op::Act(Activation::GeluErf) => "gelu_erf",
            Op::Act(Activation::Silu) => "silu",
            Op::Act(Activation::Relu) => "relu",
            Op::Act(Activation::Relu6) => "relu6",
            Op::ChannelScale { .. } => "channel_scale",
            Op::CausalConv1d { .. } => "causal_conv1d",
            Op::Rope { .. } => "rope",
            Op::CachedAttention { .. } => "cached_attention",
            Op::Attention { .. } => "attention",
            Op::Conv2d { .. } => "conv2d",
            Op::PointwiseToTokens { .. } => "pointwise_to_tokens",
            Op::PointwiseFromTokens { .. } => "pointwise_from_tokens",
            Op::ResizeNearest { .. } => "resize_nearest",
            Op::ResizeBilinear { .. } => "resize_bilinear",
            Op::AvgPool { .. } => "avg_pool",
            Op::Concat => "concat",
            Op::ToTokens => "to_tokens",
        }
    }

    /// The weights this op reads.
    pub fn params(&self) -> Vec<ParamId> {
        match self {
            Op::Embedding { table: p }
            | Op::RmsNorm { weight: p, .. }
            | Op::RmsNorm2d { weight: p, .. }
            | Op::ChannelScale { gamma: p }
            | Op::PointwiseToTokens { weight: p }
            | Op::PointwiseFromTokens { weight: p, .. } => vec![*p],
            Op::Linear { weight, bias }
            | Op::LayerNorm { weight, bias, .. }
            | Op::CausalConv1d { weight, bias, .. }
            | Op::Conv2d { weight, bias, .. } => std::iter::once(*weight).chain(*bias).collect(),
            Op::ClsPosEmbed { cls, pos } => std::iter::once(*cls).chain(*pos).collect(),
            _ => Vec::new(),
        }
    }

    /// The decode-state slots this op reads and writes.
    pub fn states(&self) -> Vec<StateId> {
        match self {
            Op::CausalConv1d { state, .. } => vec![*state],
            Op::CachedAttention { k, v, .. } => vec![*k, *v],
            _ => Vec::new(),
        }
    }

    /// Whether the op reads the sequence position (and so advances it).
    pub fn uses_position(&self) -> bool {
        matches!(
            self,
            Op::CausalConv1d { .. } | Op::Rope { .. } | Op::CachedAttention { .. }
        )
    }

    /// The output shape and element type for `inputs`, checking everything the kernels assume.
    pub fn infer(
        &self,
        inputs: &[&ValueInfo],
        params: &[ParamInfo],
        states: &[StateInfo],
    ) -> Result<(Shape, Elem)> {
        let p = |id: &ParamId| -> &[usize] { &params[id.0 as usize].shape };
        let arity = |n: usize| -> Result<()> {
            if inputs.len() == n {
                Ok(())
            } else {
                Err(Error::input(format!(
                    "{} takes {n} input(s), got {}",
                    self.kind(),
                    inputs.len()
                )))
            }
        };
        let x = inputs.first().map(|v| v.shape.as_slice()).unwrap_or(&[]);
        let last = || -> Result<usize> {
            x.last().and_then(|d| d.fixed()).ok_or_else(|| {
                Error::input(format!("{}: input has no fixed last dim", self.kind()))
            })
        };
        let chw = || -> Result<(usize, usize, usize)> {
            match x {
                [Dim::Fixed(c), Dim::Fixed(h), Dim::Fixed(w)] => Ok((*c, *h, *w)),
                _ => Err(Error::input(format!(
                    "{}: expected a fixed [C, H, W] map, got {}",
                    self.kind(),
                    super::shape_text(x)
                ))),
            }
        };
        let fail = |what: String| Error::input(format!("{}: {what}", self.kind()));
        let with_last = |n: usize| -> Shape {
            let mut s = x.to_vec();
            if let Some(l) = s.last_mut() {
                *l = Dim::Fixed(n);
            }
            s
        };
        let f32 = Elem::F32;
        match self {
            Op::Embedding { table } => {
                arity(1)?;
                let t = p(table);
                if t.len() != 2 || x.len() != 1 || inputs[0].elem != Elem::Token {
                    return Err(fail("token ids [T] and a [vocab, hidden] table".into()));
                }
                Ok((vec![x[0], Dim::Fixed(t[1])], f32))
            }
            Op::Linear { weight, bias } => {
                arity(1)?;
                let w = p(weight);
                if w.len() != 2 || w[1] != last()? {
                    return Err(fail(format!(
                        "weight {w:?} for input {}",
                        super::shape_text(x)
                    )));
                }
                if let Some(b) = bias {
                    if p(b) != [w[0]] {
                        return Err(fail(format!("bias {:?} for {} outputs", p(b), w[0])));
                    }
                }
                Ok((with_last(w[0]), f32))
            }
            Op::RmsNorm { weight, .. } => {
                arity(1)?;
                let d = p(weight).iter().product::<usize>();
                if d == 0 || last()? % d != 0 {
                    return Err(fail(format!("width {} is not a multiple of {d}", last()?)));
                }
                Ok((x.to_vec(), f32))
            }
            Op::LayerNorm { weight, bias, .. } => {
                arity(1)?;
                let d = last()?;
                if p(weight) != [d] || bias.is_some_and(|b| p(&b) != [d]) {
                    return Err(fail(format!("weight {:?} for width {d}", p(weight))));
                }
                Ok((x.to_vec(), f32))
            }
            Op::RmsNorm2d { weight: g, .. } => {
                arity(1)?;
                let (c, _, _) = chw()?;
                if p(g) != [c] {
                    return Err(fail(format!("weight {:?} for {c} channels", p(g))));
                }
                Ok((x.to_vec(), f32))
            }
            Op::ChannelScale { gamma: g } => {
                arity(1)?;
                let c = match x.len() {
                    3 => chw()?.0,
                    2 => last()?,
                    _ => return Err(fail(format!("input {}", super::shape_text(x)))),
                };
                if p(g) != [c] {
                    return Err(fail(format!("weight {:?} for {c} channels", p(g))));
                }
                Ok((x.to_vec(), f32))
            }
            Op::SliceRows { start, len } => {
                arity(1)?;
                match x {
                    [Dim::Fixed(t), d] if *len > 0 && start + len <= *t => {
                        Ok((vec![Dim::Fixed(*len), *d], inputs[0].elem))
                    }
                    _ => Err(fail(format!(
                        "rows {start}..{} of {}",
                        start + len,
                        super::shape_text(x)
                    ))),
                }
            }
            Op::ClsPosEmbed { cls, pos } => {
                arity(1)?;
                let d = last()?;
                let n = match x {
                    [Dim::Fixed(n), _] => *n,
                    _ => return Err(fail(format!("input {}", super::shape_text(x)))),
                };
                let numel = |id: &ParamId| p(id).iter().product::<usize>();
                if numel(cls) != d || pos.is_some_and(|q| numel(&q) != (n + 1) * d) {
                    return Err(fail(format!(
                        "cls {:?} and position embeddings {:?} for {n} tokens of width {d}",
                        p(cls),
                        pos.map(|q| p(&q).to_vec())
                    )));
                }
                Ok((super::fixed(&[n + 1, d]), f32))
            }
            Op::PixelShuffle { h, w, scale } => {
                arity(1)?;
                let s = *scale;
                let ok = s > 0 && h % s == 0 && w % s == 0;
                match x {
                    [Dim::Fixed(t), Dim::Fixed(c)] if ok && *t == h * w => Ok((
                        super::fixed(&[(h / s) * (w / s), s * s * c]),
                        inputs[0].elem,
                    )),
                    _ => Err(fail(format!(
                        "scale {s} on a {h}x{w} grid, input {}",
                        super::shape_text(x)
                    ))),
                }
            }
            Op::Slice { start, len } => {
                arity(1)?;
                if *len == 0 || start + len > last()? {
                    return Err(fail(format!("{start}..{} of {}", start + len, last()?)));
                }
                Ok((with_last(*len), inputs[0].elem))
            }
            Op::Add | Op::Mul => {
                arity(2)?;
                if inputs[0].shape != inputs[1].shape {
                    return Err(fail(format!(
                        "shapes {} and {} differ",
                        super::shape_text(&inputs[0].shape),
                        super::shape_text(&inputs[1].shape)
                    )));
                }
                Ok((x.to_vec(), f32))
            }
            Op::Act(_) => {
                arity(1)?;
                Ok((x.to_vec(), f32))
            }
            Op::CausalConv1d {
                weight,
                bias,
                state,
            } => {
                arity(1)?;
                let h = last()?;
                let w = p(weight);
                let l = *w.last().unwrap_or(&0);
                let ok_w = w == [h, l] || w == [h, 1, l];
                let st = &states[state.0 as usize];
                if !ok_w || l < 2 || st.shape != super::fixed(&[l - 1, h]) {
                    return Err(fail(format!(
                        "weight {w:?} and state {} for width {h}",
                        super::shape_text(&st.shape)
                    )));
                }
                if let Some(b) = bias {
                    if p(b) != [h] {
                        return Err(fail(format!("bias {:?} for {h} channels", p(b))));
                    }
                }
                Ok((x.to_vec(), f32))
            }
            Op::Rope {
                heads, head_dim, ..
            } => {
                arity(1)?;
                if last()? != heads * head_dim || head_dim % 2 != 0 {
                    return Err(fail(format!("{heads} heads x {head_dim} on {}", last()?)));
                }
                Ok((x.to_vec(), f32))
            }
            Op::CachedAttention {
                heads,
                kv_heads,
                head_dim,
                k,
                v,
                ..
            } => {
                arity(3)?;
                let d = *head_dim;
                let kvw = kv_heads * d;
                let rows = x.first().copied();
                let ok = *kv_heads > 0
                    && heads % kv_heads == 0
                    && x.len() == 2
                    && last()? == heads * d
                    && inputs[1].shape == vec![rows.unwrap(), Dim::Fixed(kvw)]
                    && inputs[2].shape == inputs[1].shape
                    && [k, v]
                        .iter()
                        .all(|s| states[s.0 as usize].shape == vec![Dim::Past, Dim::Fixed(kvw)]);
                if !ok {
                    return Err(fail(format!(
                        "{heads} heads / {kv_heads} kv heads of {d}: q {}, k {}, v {}",
                        super::shape_text(x),
                        super::shape_text(&inputs[1].shape),
                        super::shape_text(&inputs[2].shape)
                    )));
                }
                Ok((x.to_vec(), f32))
            }
            Op::Attention {
                heads,
                kv_heads,
                d,
                dv,
                ..
            } => {
                arity(3)?;
                let (k, v) = (&inputs[1].shape, &inputs[2].shape);
                let ok = *kv_heads > 0
                    && heads % kv_heads == 0
                    && x.len() == 2
                    && last()? == heads * d
                    && k.len() == 2
                    && v.len() == 2
                    && k[0] == v[0]
                    && k[1] == Dim::Fixed(kv_heads * d)
                    && v[1] == Dim::Fixed(kv_heads * dv);
                if !ok {
                    return Err(fail(format!(
                        "q {}, k {}, v {}",
                        super::shape_text(x),
                        super::shape_text(k),
                        super::shape_text(v)
                    )));
                }
                Ok((vec![x[0], Dim::Fixed(heads * dv)], f32))
            }
            Op::Conv2d {
                weight,
                bias,
                stride,
                dilation,
                groups,
                pad,
            } => {
                arity(1)?;
                let (c, h, w) = chw()?;
                let wt = p(weight);
                let ok = wt.len() == 4
                    && *groups > 0
                    && c % groups == 0
                    && wt[0] % groups == 0
                    && wt[1] * groups == c
                    && (*groups == 1 || (*groups == c && wt[0] == c))
                    && *stride > 0
                    && *dilation > 0;
                if !ok {
                    return Err(fail(format!(
                        "weight {wt:?}, groups {groups}, input {c} channels"
                    )));
                }
                if let Some(b) = bias {
                    if p(b) != [wt[0]] {
                        return Err(fail(format!("bias {:?} for {} outputs", p(b), wt[0])));
                    }
                }
                let out = |n: usize, k: usize, pads: usize| {
                    let span = dilation * (k.max(1) - 1) + 1;
                    (n + pads >= span).then(|| (n + pads - span) / stride + 1)
                };
                match (
                    out(h, wt[2], pad[0] + pad[1]),
                    out(w, wt[3], pad[2] + pad[3]),
                ) {
                    (Some(ho), Some(wo)) => Ok((super::fixed(&[wt[0], ho, wo]), f32)),
                    _ => Err(fail(format!("{h}x{w} input is smaller than the kernel"))),
                }
            }
            Op::PointwiseToTokens { weight } => {
                arity(1)?;
                let (c, h, w) = chw()?;
                let wt = p(weight);
                if wt.len() != 4 || wt[1] != c || wt[2] * wt[3] != 1 {
                    return Err(fail(format!("weight {wt:?} for {c} channels")));
                }
                Ok((super::fixed(&[h * w, wt[0]]), f32))
            }
            Op::PointwiseFromTokens { weight, h, w } => {
                arity(1)?;
                let wt = p(weight);
                let ok = wt.len() == 4
                    && wt[2] * wt[3] == 1
                    && x == super::fixed(&[h * w, wt[1]]).as_slice();
                if !ok {
                    return Err(fail(format!(
                        "weight {wt:?} for tokens {} on a {h}x{w} grid",
                        super::shape_text(x)
                    )));
                }
                Ok((super::fixed(&[wt[0], *h, *w]), f32))
            }
            Op::ResizeNearest { h, w } | Op::ResizeBilinear { h, w } => {
                arity(1)?;
                let (c, _, _) = chw()?;
                if *h == 0 || *w == 0 {
                    return Err(fail("empty output size".into()));
                }
                Ok((super::fixed(&[c, *h, *w]), f32))
            }
            Op::AvgPool { kh, kw, sh, sw } => {
                arity(1)?;
                let (c, h, w) = chw()?;
                if *kh == 0 || *kw == 0 || *sh == 0 || *sw == 0 || h < *kh || w < *kw {
                    return Err(fail(format!("{kh}x{kw} / {sh}x{sw} on {h}x{w}")));
                }
                Ok((
                    super::fixed(&[c, (h - kh) / sh + 1, (w - kw) / sw + 1]),
                    f32,
                ))
            }
            Op::Concat => {
                if inputs.is_empty() {
                    return Err(fail("no inputs".into()));
                }
                let (_, h, w) = chw()?;
                let mut c = 0;
                for v in inputs {
                    match v.shape.as_slice() {
                        [Dim::Fixed(ci), hh, ww]
                            if *hh == Dim::Fixed(h) && *ww == Dim::Fixed(w) =>
                        {
                            c += ci
                        }
                        s => {
                            return Err(fail(format!(
                                "input {} does not match {h}x{w}",
                                super::shape_text(s)
                            )))
                        }
                    }
                }
                Ok((super::fixed(&[c, h, w]), f32))
            }
            Op::ToTokens => {
                arity(1)?;
                let (c, h, w) = chw()?;
                Ok((super::fixed(&[h * w, c]), f32))
            }
        }
    }
}
