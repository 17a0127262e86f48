//! Integer LFM2 language model: the twin of [`crate::models::lfm2::Lfm2Model`], one integer op per
//! float op (built by `crate::quant::prepare::lfm2::lfm2`).
//!
//! ```text
//! x = embed_tokens(ids)                     QEmbedding (int4/int8 rows) -> A16 (or image rows
//!                                           requantized into embed_params() by the caller)
//! for each layer:
//!     n = operator_norm(x)                  QRmsNorm
//!     conv:  [B|C|x] = in_proj(n)           QLinear
//!            bx = B * x                     QMul
//!            c  = conv(bx)                  QCausalConv1d (rolling i16 state of bx rows)
//!            y  = C * c                     QMul
//!            o  = out_proj(y)               QLinear
//!     attn:  q, k, v = q/k/v_proj(n)        QLinear
//!            q, k = q/k_layernorm(q, k)     QRmsNorm per head
//!            q, k = rope_q/rope_k(q, k)     QRope (absolute positions)
//!            o = sdpa(q, K, V)              QAttention (GQA, causal offset; K, V: i16 cache)
//!            o = out_proj(o)                QLinear
//!     r = residual1(x + o)                  QAdd
//!     n = ffn_norm(r)                       QRmsNorm
//!     a = act(silu(w1 n) * w3 n)            QLinear x2, QLut (SiLU), QMul
//!     x = layers.{i}(r + w2 a)              QLinear, QAdd
//! hidden = embedding_norm(x)                QRmsNorm
//! logits = lm_head(hidden)                  QLinear, or the embedding table itself when tied
//! ```
//!
//! Every op output is an `i16` tensor with fixed (calibrated) per-tensor parameters. The decode
//! state is integer too: per conv layer the last `L - 1` rows of `bx` (in `bx`'s quantization),
//! per attention layer the post-norm, post-RoPE keys (in `rope_k`'s quantization) and the values
//! (in `v_proj`'s). Prefill and decode are the same code path, and because every op is row-wise
//! or causal with exact integer state, a prompt run in one call and token by token gives
//! bit-identical integers; no op depends on the number of threads.
//!
//! With an enabled [`Observer`], each op reports its output dequantized under the float path's
//! name (`layers.{i}.conv.in_proj`, `layers.{i}.self_attn.sdpa`, `embedding_norm`, `lm_head`, ...),
//! so the two observation streams can be compared op by op.

use crate::error::{Error, Result};
use crate::observe::{NoObserver, Observer};
use crate::ops::attention::Mask;
use crate::quant::arith::Multiplier;
use crate::quant::ops::attention::QAttention;
use crate::quant::ops::conv1d::QCausalConv1d;
use crate::quant::ops::elementwise::{QAdd, QMul};
use crate::quant::ops::embedding::QEmbedding;
use crate::quant::ops::linear::{linear_rows, QLinear, QMatrix};
use crate::quant::ops::lut::QLut;
use crate::quant::ops::norm::QRmsNorm;
use crate::quant::ops::rope::QRope;
use crate::quant::params::ActQuant;
use crate::quant::tensor::QTensor;
use serde::{Deserialize, Serialize};

/// The shape facts of the float config the runtime needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QLfm2Dims {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    /// `conv_L_cache`: taps of the short convolution.
    pub conv_l_cache: usize,
    pub max_position_embeddings: usize,
}

impl QLfm2Dims {
    pub fn kv_width(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }
}

/// `Lfm2ShortConv` in integers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QLfm2ShortConv {
    /// `[B | C | x]`, one output quantization for the three chunks.
    pub in_proj: QLinear,
    /// `B * x`.
    pub bx: QMul,
    /// Depthwise causal conv over `bx` (its state holds `bx` integers).
    pub conv: QCausalConv1d,
    /// `C * conv`.
    pub y: QMul,
    pub out_proj: QLinear,
}

impl QLfm2ShortConv {
    pub fn hidden(&self) -> usize {
        self.conv.channels()
    }

    fn forward(
        &self,
        x: &QTensor,
        state: &mut Vec<i16>,
        obs: &mut dyn Observer,
        p: &str,
    ) -> QTensor {
        let (t, h) = (x.dim(0), self.hidden());
        let bcx = self.in_proj.forward(x);
        emit(obs, p, "in_proj", &bcx);
        let (mut b, mut c, mut xx) = (
            Vec::with_capacity(t * h),
            Vec::with_capacity(t * h),
            Vec::with_capacity(t * h),
        );
        for r in bcx.data.chunks_exact(3 * h) {
            b.extend_from_slice(&r[..h]);
            c.extend_from_slice(&r[h..2 * h]);
            xx.extend_from_slice(&r[2 * h..]);
        }
        let q = bcx.q;
        let bx = self
            .bx
            .forward(&QTensor::new(&[t, h], b, q), &QTensor::new(&[t, h], xx, q));
        emit(obs, p, "bx", &bx);
        let conv = self.conv.forward(&bx, state);
        emit(obs, p, "conv", &conv);
        let y = self.y.forward(&QTensor::new(&[t, h], c, q), &conv);
        emit(obs, p, "y", &y);
        let out = self.out_proj.forward(&y);
        emit(obs, p, "out_proj", &out);
        out
    }
}

/// `Lfm2Attention` in integers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QLfm2Attention {
    pub q_proj: QLinear,
    pub k_proj: QLinear,
    pub v_proj: QLinear,
    /// Per-head RMSNorm (`dim = head_dim`).
    pub q_layernorm: QRmsNorm,
    pub k_layernorm: QRmsNorm,
    pub rope_q: QRope,
    pub rope_k: QRope,
    pub sdpa: QAttention,
    pub out_proj: QLinear,
}

impl QLfm2Attention {
    /// `x`: `[T, H]` at positions `start..start + T`; appends the new keys (post-norm,
    /// post-RoPE) and values to the integer cache.
    fn forward(
        &self,
        x: &QTensor,
        start: usize,
        k_cache: &mut Vec<i16>,
        v_cache: &mut Vec<i16>,
        obs: &mut dyn Observer,
        p: &str,
    ) -> QTensor {
        let t = x.dim(0);
        let (nh, nkv) = (self.sdpa.n_heads, self.sdpa.n_kv);
        let q = self.q_proj.forward(x);
        emit(obs, p, "q_proj", &q);
        let k = self.k_proj.forward(x);
        emit(obs, p, "k_proj", &k);
        let v = self.v_proj.forward(x);
        emit(obs, p, "v_proj", &v);
        let q = self.q_layernorm.forward(&q);
        emit(obs, p, "q_layernorm", &q);
        let k = self.k_layernorm.forward(&k);
        emit(obs, p, "k_layernorm", &k);
        let q = self.rope_q.forward(&q, nh, start);
        emit(obs, p, "rope_q", &q);
        let k = self.rope_k.forward(&k, nkv, start);
        emit(obs, p, "rope_k", &k);
        k_cache.extend_from_slice(&k.data);
        v_cache.extend_from_slice(&v.data);
        let tk = start + t;
        let o = self.sdpa.forward_raw(
            &q.data,
            k_cache,
            v_cache,
            t,
            tk,
            Mask::Causal { offset: start },
        );
        let o = QTensor::new(&[t, nh * self.sdpa.dv], o, self.sdpa.out);
        emit(obs, p, "sdpa", &o);
        let out = self.out_proj.forward(&o);
        emit(obs, p, "out_proj", &out);
        out
    }
}

/// `Lfm2MLP` (SwiGLU) in integers: `act = silu(w1 x) * w3 x` is a table then a multiply (the
/// table's output has no float counterpart and is not observed).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QLfm2Mlp {
    pub w1: QLinear,
    pub w3: QLinear,
    /// SiLU from `w1`'s quantization to an intermediate one covering `silu` of `w1`'s range.
    pub silu: QLut,
    /// `silu(w1) * w3`, observed as `act`.
    pub act: QMul,
    pub w2: QLinear,
}

impl QLfm2Mlp {
    fn forward(&self, x: &QTensor, obs: &mut dyn Observer, p: &str) -> QTensor {
        let g = self.w1.forward(x);
        emit(obs, p, "w1", &g);
        let u = self.w3.forward(x);
        emit(obs, p, "w3", &u);
        let s = self.silu.forward(&g);
        let a = self.act.forward(&s, &u);
        emit(obs, p, "act", &a);
        let y = self.w2.forward(&a);
        emit(obs, p, "w2", &y);
        y
    }
}

/// The token mixer of a decoder layer.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum QLfm2Op {
    Conv(QLfm2ShortConv),
    Attention(QLfm2Attention),
}

/// `Lfm2DecoderLayer` in integers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QLfm2Layer {
    pub operator_norm: QRmsNorm,
    pub op: QLfm2Op,
    /// `x + op(operator_norm(x))`.
    pub residual1: QAdd,
    pub ffn_norm: QRmsNorm,
    pub feed_forward: QLfm2Mlp,
    /// `residual1 + feed_forward(...)`: the layer output, observed as `layers.{i}`.
    pub residual2: QAdd,
}

/// A tied output projection: the quantized embedding table read as `[vocab, hidden]` weights
/// (no copy), with per-row multipliers `s_x * row_scale / 2^GROUP_SCALE_BITS / s_y`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QTiedHead {
    pub mult: Vec<Multiplier>,
    pub x: ActQuant,
    pub y: ActQuant,
}

impl QTiedHead {
    /// [`linear_rows`] (no bias) over `table`.
    fn forward(&self, table: &QMatrix, x: &QTensor) -> QTensor {
        let inp = table.inp;
        assert_eq!(
            x.shape.last().copied(),
            Some(inp),
            "lm_head: input shape {:?}, expected [..., {inp}]",
            x.shape
        );
        assert_eq!(x.q, self.x, "lm_head: input quantization differs");
        let t = x.numel() / inp;
        let y = linear_rows(table, None, &self.mult, (self.x, self.y), &x.data, t);
        let mut shape = x.shape.clone();
        *shape.last_mut().expect("checked above") = table.out;
        QTensor::new(&shape, y, self.y)
    }
}

/// The integer output projection.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum QLmHead {
    /// Tied to `embed_tokens`: the embedding's integer table is the weight.
    Tied(QTiedHead),
    Separate(QLinear),
}

/// Integer `Lfm2ForCausalLM`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QLfm2Model {
    pub dims: QLfm2Dims,
    pub embed_tokens: QEmbedding,
    pub layers: Vec<QLfm2Layer>,
    /// The final norm.
    pub embedding_norm: QRmsNorm,
    pub lm_head: QLmHead,
}

/// Per-layer integer decode state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QLayerCache {
    /// The last `L - 1` rows of `bx`, `[L-1, hidden]`, in the conv input's quantization.
    Conv { state: Vec<i16> },
    /// Keys after `rope_k` and values after `v_proj`, `[tokens, kv_heads * head_dim]` each, in
    /// those ops' quantizations.
    Attention { k: Vec<i16>, v: Vec<i16> },
}

/// Decode cache of one sequence for a [`QLfm2Model`] (made by [`QLfm2Model::new_cache`]: the
/// initial conv state is the conv input's zero point).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QLfm2Cache {
    pos: usize,
    layers: Vec<QLayerCache>,
}

impl QLfm2Cache {
    /// An empty cache for `model`.
    pub fn new(model: &QLfm2Model) -> Self {
        let layers = model.layers.iter().map(|l| fresh_layer(&l.op)).collect();
        Self { pos: 0, layers }
    }

    /// Tokens consumed so far (the next token's position).
    pub fn len(&self) -> usize {
        self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.pos == 0
    }

    pub fn layers(&self) -> &[QLayerCache] {
        &self.layers
    }

    /// Back to the empty state of `model` (keeps the KV allocations).
    pub fn reset(&mut self, model: &QLfm2Model) {
        if self.layers.len() != model.layers.len() {
            *self = Self::new(model);
            return;
        }
        self.pos = 0;
        for (l, ml) in self.layers.iter_mut().zip(&model.layers) {
            match (l, &ml.op) {
                (QLayerCache::Attention { k, v }, QLfm2Op::Attention(_)) => {
                    k.clear();
                    v.clear();
                }
                (l, op) => *l = fresh_layer(op),
            }
        }
    }

    /// Bytes held by the conv states (i16; independent of the sequence length).
    pub fn state_bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| match l {
                QLayerCache::Conv { state } => state.len() * 2,
                QLayerCache::Attention { .. } => 0,
            })
            .sum()
    }

    /// Bytes held by the attention keys and values (i16; grows with the sequence).
    pub fn kv_bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| match l {
                QLayerCache::Conv { .. } => 0,
                QLayerCache::Attention { k, v } => (k.len() + v.len()) * 2,
            })
            .sum()
    }
}

fn fresh_layer(op: &QLfm2Op) -> QLayerCache {
    match op {
        QLfm2Op::Conv(c) => QLayerCache::Conv {
            state: c.conv.initial_state(),
        },
        QLfm2Op::Attention(_) => QLayerCache::Attention {
            k: Vec::new(),
            v: Vec::new(),
        },
    }
}

impl QLfm2Model {
    pub fn new_cache(&self) -> QLfm2Cache {
        QLfm2Cache::new(self)
    }

    /// The quantization of [`Self::forward`]'s input rows (`embed_tokens`' output): image
    /// embeddings must be requantized into it before they are merged with token embeddings.
    pub fn embed_params(&self) -> ActQuant {
        self.embed_tokens.y
    }

    /// The quantization of the logits.
    pub fn logits_params(&self) -> ActQuant {
        match &self.lm_head {
            QLmHead::Tied(t) => t.y,
            QLmHead::Separate(l) => l.y,
        }
    }

    /// `embed_tokens(ids)`: `[T, hidden]` in [`Self::embed_params`]; ids outside the vocabulary
    /// are input errors.
    pub fn embed(&self, ids: &[u32]) -> Result<QTensor> {
        self.embed_tokens.forward(ids)
    }

    fn check_cache(&self, cache: &QLfm2Cache) -> Result<()> {
        let d = &self.dims;
        let keep = d.conv_l_cache.saturating_sub(1) * d.hidden_size;
        let ok = cache.layers.len() == self.layers.len()
            && cache
                .layers
                .iter()
                .zip(&self.layers)
                .all(|(c, l)| match (c, &l.op) {
                    (QLayerCache::Conv { state }, QLfm2Op::Conv(_)) => state.len() == keep,
                    (QLayerCache::Attention { k, v }, QLfm2Op::Attention(_)) => {
                        k.len() == cache.pos * d.kv_width() && v.len() == k.len()
                    }
                    _ => false,
                });
        if ok {
            Ok(())
        } else {
            Err(Error::input(
                "the cache was not made for this integer model (use QLfm2Model::new_cache)",
            ))
        }
    }

    /// Runs `T >= 1` new positions (`x`: `[T, hidden]` in [`Self::embed_params`]) starting at
    /// `cache.len()`, updating `cache`; returns the integer hidden states after
    /// `embedding_norm`, `[T, hidden]`. The input is observed as `embed_tokens`.
    pub fn forward(
        &self,
        x: &QTensor,
        cache: &mut QLfm2Cache,
        obs: &mut dyn Observer,
    ) -> Result<QTensor> {
        let d = &self.dims;
        let h = d.hidden_size;
        if x.shape.len() != 2 || x.shape[1] != h || x.shape[0] == 0 {
            return Err(Error::input(format!(
                "LFM2 input embeddings must be [T >= 1, {h}], got {:?}",
                x.shape
            )));
        }
        if x.q != self.embed_params() {
            return Err(Error::input(format!(
                "LFM2 input embeddings are quantized as {:?}, expected embed_tokens' {:?} \
                 (requantize them into QLfm2Model::embed_params)",
                x.q,
                self.embed_params()
            )));
        }
        self.check_cache(cache)?;
        let t = x.shape[0];
        let start = cache.pos;
        if start + t > d.max_position_embeddings {
            return Err(Error::ContextOverflow {
                tokens: start + t,
                max_new: 0,
                context: d.max_position_embeddings,
            });
        }
        emit(obs, "", "embed_tokens", x);
        let mut hs = x.clone();
        for (i, (layer, lc)) in self.layers.iter().zip(cache.layers.iter_mut()).enumerate() {
            let p = name(obs, || format!("layers.{i}"));
            let normed = layer.operator_norm.forward(&hs);
            emit(obs, &p, "operator_norm", &normed);
            let mixed = match (&layer.op, lc) {
                (QLfm2Op::Conv(conv), QLayerCache::Conv { state }) => {
                    let pc = name(obs, || format!("{p}.conv"));
                    conv.forward(&normed, state, obs, &pc)
                }
                (QLfm2Op::Attention(attn), QLayerCache::Attention { k, v }) => {
                    let pa = name(obs, || format!("{p}.self_attn"));
                    attn.forward(&normed, start, k, v, obs, &pa)
                }
                _ => unreachable!("cache layout checked above"),
            };
            let r1 = layer.residual1.forward(&hs, &mixed);
            emit(obs, &p, "residual1", &r1);
            let normed = layer.ffn_norm.forward(&r1);
            emit(obs, &p, "ffn_norm", &normed);
            let pf = name(obs, || format!("{p}.feed_forward"));
            let ff = layer.feed_forward.forward(&normed, obs, &pf);
            hs = layer.residual2.forward(&r1, &ff);
            emit(obs, &p, "", &hs);
        }
        cache.pos = start + t;
        let out = self.embedding_norm.forward(&hs);
        emit(obs, "", "embedding_norm", &out);
        Ok(out)
    }

    /// `lm_head(hidden)`: `[T, hidden] -> [T, vocab]` integer logits in
    /// [`Self::logits_params`], observed as `lm_head`.
    pub fn lm_head(&self, hidden: &QTensor, obs: &mut dyn Observer) -> QTensor {
        let y = match &self.lm_head {
            QLmHead::Tied(t) => t.forward(&self.embed_tokens.table, hidden),
            QLmHead::Separate(l) => l.forward(hidden),
        };
        emit(obs, "", "lm_head", &y);
        y
    }

    /// Integer logits of every row: `[T, vocab]`.
    pub fn logits(&self, hidden: &QTensor) -> QTensor {
        self.lm_head(hidden, &mut NoObserver)
    }

    /// Integer logits of the last row only: `[1, vocab]`.
    pub fn logits_last(&self, hidden: &QTensor) -> QTensor {
        let h = self.dims.hidden_size;
        let t = hidden.numel() / h;
        assert!(t > 0, "logits_last of an empty tensor");
        let last = QTensor::new(&[1, h], hidden.data[(t - 1) * h..].to_vec(), hidden.q);
        self.logits(&last)
    }
}

/// Index of the largest integer (the lowest index on ties, like `torch.argmax`): greedy decoding
/// straight from integer logits (one per-tensor scale, so the order is the real order).
pub fn argmax_i16(xs: &[i16]) -> u32 {
    let mut best = 0usize;
    for (i, &v) in xs.iter().enumerate() {
        if v > xs[best] {
            best = i;
        }
    }
    best as u32
}

/// A name built only when the observer wants tensors.
fn name(obs: &dyn Observer, f: impl FnOnce() -> String) -> String {
    if obs.enabled() {
        f()
    } else {
        String::new()
    }
}

/// Reports `t` dequantized as `prefix.suffix` (`suffix` alone when the prefix is empty, `prefix`
/// alone when the suffix is) if the observer is enabled.
fn emit(obs: &mut dyn Observer, prefix: &str, suffix: &str, t: &QTensor) {
    if obs.enabled() {
        let f = t.dequantize();
        if suffix.is_empty() {
            obs.observe(prefix, &f);
        } else {
            crate::observe::observe(obs, prefix, suffix, &f);
        }
    }
}
