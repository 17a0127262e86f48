//! LFM2 (Liquid AI) hybrid language model, mirroring transformers `Lfm2ForCausalLM`
//! (`models/lfm2/modeling_lfm2.py`).
//!
//! ```text
//! x = embed_tokens(ids)                          (or merged image + text embeddings)
//! for each layer:                                (pre-norm, two residuals)
//!     h = x + op(operator_norm(x))               op = Lfm2ShortConv or Lfm2Attention
//!     x = h + feed_forward(ffn_norm(h))          SwiGLU: w2(silu(w1 n) * w3 n)
//! hidden = embedding_norm(x)                     (the *final* norm, despite its name)
//! logits = lm_head(hidden)                       (tied to embed_tokens by default)
//! ```
//!
//! Activations are token-major `[T, D]`. Prefill and decode are one code path: [`Lfm2Model::forward`]
//! consumes `T >= 1` new positions starting at [`Lfm2Cache::len`]. Conv layers keep a constant-size
//! state (the last `conv_L_cache - 1` values of `B * x` per channel), attention layers keep growing
//! post-norm, post-RoPE keys and values.
//!
//! Every op output is reported to the [`Observer`] under checkpoint-style names (without the
//! `model.` / `model.language_model.` prefix): `embed_tokens`, `layers.{i}.operator_norm`,
//! `layers.{i}.conv.{in_proj,bx,conv,y,out_proj}`,
//! `layers.{i}.self_attn.{q_proj,k_proj,v_proj,q_layernorm,k_layernorm,rope_q,rope_k,sdpa,out_proj}`,
//! `layers.{i}.residual1`, `layers.{i}.ffn_norm`, `layers.{i}.feed_forward.{w1,w3,act,w2}`,
//! `layers.{i}` (layer output), `embedding_norm`, and `lm_head` (from [`Lfm2Model::lm_head`]).

pub mod graph;

use crate::error::{Error, Result};
use crate::nn::Linear;
use crate::observe::{Observer, OpInput};
use crate::ops::activation::silu;
use crate::ops::attention::{attention, AttnShape, Mask};
use crate::ops::gemm;
use crate::ops::norm::rms_norm_rows;
use crate::ops::rope::Rope;
use crate::tensor::Tensor;
use crate::weights::Weights;
use rayon::prelude::*;
use std::fmt::Write as _;

mod config;
pub use config::*;

// ---------------------------------------------------------------------------------------------
// Modules
// ---------------------------------------------------------------------------------------------

/// `Lfm2RMSNorm`: `weight * x * rsqrt(mean(x^2) + eps)` over the last dimension (plain weight).
#[derive(Clone, Debug)]
pub struct Lfm2RmsNorm {
    pub weight: Tensor,
    pub eps: f32,
}

impl Lfm2RmsNorm {
    fn load(w: &Weights, dim: usize, eps: f32) -> Result<Self> {
        Ok(Self {
            weight: w.get("weight", &[dim])?,
            eps,
        })
    }
    pub fn dim(&self) -> usize {
        self.weight.numel()
    }
    /// Normalises every `dim`-wide row of `x` in place (so `[T, heads * dim]` normalises per head).
    pub fn forward_inplace(&self, x: &mut [f32]) {
        rms_norm_rows(x, self.dim(), self.weight.data(), self.eps);
    }
}

/// `Lfm2MLP`: `w2(silu(w1 x) * w3 x)`.
pub struct Lfm2MLP {
    pub w1: Linear,
    pub w3: Linear,
    pub w2: Linear,
}

impl Lfm2MLP {
    fn load(w: &Weights, hidden: usize, ff: usize) -> Result<Self> {
        Ok(Self {
            w1: Linear::load(&w.pp("w1"), hidden, ff, false)?,
            w3: Linear::load(&w.pp("w3"), hidden, ff, false)?,
            w2: Linear::load(&w.pp("w2"), ff, hidden, false)?,
        })
    }
    pub fn param_count(&self) -> usize {
        self.w1.param_count() + self.w3.param_count() + self.w2.param_count()
    }
    fn forward(&self, x: &Tensor, obs: &mut dyn Observer, p: &str) -> Tensor {
        emit_input(obs, p, "w1", x);
        let gate = self.w1.forward(x);
        emit(obs, p, "w1", &gate);
        emit_input(obs, p, "w3", x);
        let up = self.w3.forward(x);
        emit(obs, p, "w3", &up);
        let mut act = gate;
        act.data_mut()
            .par_chunks_mut(1 << 14)
            .zip(up.data().par_chunks(1 << 14))
            .for_each(|(a, u)| {
                for (a, &u) in a.iter_mut().zip(u) {
                    *a = silu(*a) * u;
                }
            });
        emit(obs, p, "act", &act);
        emit_input(obs, p, "w2", &act);
        let y = self.w2.forward(&act);
        emit(obs, p, "w2", &y);
        y
    }
}

/// `Lfm2ShortConv`: `out_proj(C * causal_depthwise_conv(B * x))` with `[B, C, x] = in_proj(x)`.
pub struct Lfm2ShortConv {
    pub in_proj: Linear,
    /// Depthwise kernel `[hidden, L]` (the checkpoint's `[hidden, 1, L]` squeezed).
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub out_proj: Linear,
    /// `weight` transposed to `[L, hidden]` for the token-major inner loop.
    weight_lh: Vec<f32>,
}

impl Lfm2ShortConv {
    fn new(in_proj: Linear, weight: Tensor, bias: Option<Tensor>, out_proj: Linear) -> Self {
        let (h, l) = (weight.dim(0), weight.dim(1));
        let mut weight_lh = vec![0.0f32; h * l];
        for c in 0..h {
            for j in 0..l {
                weight_lh[j * h + c] = weight.data()[c * l + j];
            }
        }
        Self {
            in_proj,
            weight,
            bias,
            out_proj,
            weight_lh,
        }
    }

    fn load(w: &Weights, cfg: &Lfm2Config) -> Result<Self> {
        let (h, l, b) = (cfg.hidden_size, cfg.conv_l_cache, cfg.conv_bias);
        let in_proj = Linear::load(&w.pp("in_proj"), h, 3 * h, b)?;
        let out_proj = Linear::load(&w.pp("out_proj"), h, h, b)?;
        let cw = w.pp("conv");
        let weight = match cw.shape("weight") {
            Some([_, 1, _]) => cw.get("weight", &[h, 1, l])?.reshape(&[h, l])?,
            Some([_, _]) => cw.get("weight", &[h, l])?,
            Some(_) => cw.get("weight", &[h, 1, l])?, // reports the shape mismatch
            None => return Err(Error::MissingTensor(cw.key("weight"))),
        };
        let bias = if b { Some(cw.get("bias", &[h])?) } else { None };
        Ok(Self::new(in_proj, weight, bias, out_proj))
    }

    pub fn hidden(&self) -> usize {
        self.weight.dim(0)
    }
    pub fn kernel_size(&self) -> usize {
        self.weight.dim(1)
    }
    pub fn param_count(&self) -> usize {
        self.in_proj.param_count()
            + self.weight.numel()
            + self.bias.as_ref().map_or(0, |b| b.numel())
            + self.out_proj.param_count()
    }

    /// `x`: `[T, H]` (normed). `state`: `[L-1, H]`, the previous `B * x` rows, updated in place.
    fn forward(&self, x: &Tensor, state: &mut [f32], obs: &mut dyn Observer, p: &str) -> Tensor {
        let (t, h, l) = (x.dim(0), self.hidden(), self.kernel_size());
        let keep = l - 1;
        debug_assert_eq!(state.len(), keep * h);
        emit_input(obs, p, "in_proj", x);
        let bcx = self.in_proj.forward(x);
        emit(obs, p, "in_proj", &bcx);
        // Channel order of in_proj's output: [B | C | x].
        let rows = bcx.data().chunks_exact(3 * h);
        // ext = [state ; B * x]: the causal conv's left context followed by the new rows.
        let mut ext = Vec::with_capacity((keep + t) * h);
        ext.extend_from_slice(state);
        for r in rows.clone() {
            ext.extend(r[..h].iter().zip(&r[2 * h..]).map(|(b, xx)| b * xx));
        }
        if obs.enabled() {
            emit(
                obs,
                p,
                "bx",
                &Tensor::from_parts(&[t, h], ext[keep * h..].to_vec()),
            );
        }
        let mut conv = vec![0.0f32; t * h];
        for (i, out) in conv.chunks_exact_mut(h).enumerate() {
            if let Some(b) = &self.bias {
                out.copy_from_slice(b.data());
            }
            for j in 0..l {
                let src = &ext[(i + j) * h..(i + j + 1) * h];
                let wj = &self.weight_lh[j * h..(j + 1) * h];
                for ((o, &s), &w) in out.iter_mut().zip(src).zip(wj) {
                    *o += w * s;
                }
            }
        }
        state.copy_from_slice(&ext[t * h..]);
        let mut y = Tensor::from_parts(&[t, h], conv);
        emit(obs, p, "conv", &y);
        for (yr, r) in y.data_mut().chunks_exact_mut(h).zip(rows) {
            for (v, c) in yr.iter_mut().zip(&r[h..2 * h]) {
                *v *= c;
            }
        }
        emit(obs, p, "y", &y);
        emit_input(obs, p, "out_proj", &y);
        let out = self.out_proj.forward(&y);
        emit(obs, p, "out_proj", &out);
        out
    }
}

/// `Lfm2Attention`: GQA with per-head RMSNorm on q and k (before RoPE), causal, scale
/// `head_dim^-0.5`.
pub struct Lfm2Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub out_proj: Linear,
    pub q_layernorm: Lfm2RmsNorm,
    pub k_layernorm: Lfm2RmsNorm,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

impl Lfm2Attention {
    fn load(w: &Weights, cfg: &Lfm2Config) -> Result<Self> {
        let (h, nh, nkv, d) = (
            cfg.hidden_size,
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        );
        let eps = cfg.norm_eps as f32;
        Ok(Self {
            q_proj: Linear::load(&w.pp("q_proj"), h, nh * d, false)?,
            k_proj: Linear::load(&w.pp("k_proj"), h, nkv * d, false)?,
            v_proj: Linear::load(&w.pp("v_proj"), h, nkv * d, false)?,
            out_proj: Linear::load(&w.pp("out_proj"), nh * d, h, false)?,
            q_layernorm: Lfm2RmsNorm::load(&w.pp("q_layernorm"), d, eps)?,
            k_layernorm: Lfm2RmsNorm::load(&w.pp("k_layernorm"), d, eps)?,
            num_heads: nh,
            num_kv_heads: nkv,
            head_dim: d,
        })
    }

    pub fn param_count(&self) -> usize {
        self.q_proj.param_count()
            + self.k_proj.param_count()
            + self.v_proj.param_count()
            + self.out_proj.param_count()
            + self.q_layernorm.dim()
            + self.k_layernorm.dim()
    }

    /// `x`: `[T, H]` (normed), at absolute positions `start..start + T`; appends to `k_cache` /
    /// `v_cache` (`[start, kv * d]` on entry).
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        x: &Tensor,
        rope: &Rope,
        start: usize,
        k_cache: &mut Vec<f32>,
        v_cache: &mut Vec<f32>,
        obs: &mut dyn Observer,
        p: &str,
    ) -> Tensor {
        let t = x.dim(0);
        let (nh, nkv, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        emit_input(obs, p, "q_proj", x);
        let mut q = self.q_proj.forward(x);
        emit(obs, p, "q_proj", &q);
        emit_input(obs, p, "k_proj", x);
        let mut k = self.k_proj.forward(x);
        emit(obs, p, "k_proj", &k);
        emit_input(obs, p, "v_proj", x);
        let v = self.v_proj.forward(x);
        emit(obs, p, "v_proj", &v);
        self.q_layernorm.forward_inplace(q.data_mut());
        emit(obs, p, "q_layernorm", &q);
        self.k_layernorm.forward_inplace(k.data_mut());
        emit(obs, p, "k_layernorm", &k);
        rope.apply(q.data_mut(), nh, start);
        emit(obs, p, "rope_q", &q);
        rope.apply(k.data_mut(), nkv, start);
        emit(obs, p, "rope_k", &k);
        k_cache.extend_from_slice(k.data());
        v_cache.extend_from_slice(v.data());
        let tk = start + t;
        debug_assert_eq!(k_cache.len(), tk * nkv * d);
        let o = attention(
            q.data(),
            k_cache,
            v_cache,
            t,
            tk,
            AttnShape {
                n_heads: nh,
                n_kv: nkv,
                d,
                dv: d,
            },
            (d as f64).powf(-0.5) as f32,
            Mask::Causal { offset: start },
        );
        let o = Tensor::from_parts(&[t, nh * d], o);
        emit(obs, p, "sdpa", &o);
        emit_input(obs, p, "out_proj", &o);
        let out = self.out_proj.forward(&o);
        emit(obs, p, "out_proj", &out);
        out
    }
}

/// The token mixer of a decoder layer.
#[allow(clippy::large_enum_variant)] // a handful per model; boxing buys nothing
pub enum Lfm2Op {
    Conv(Lfm2ShortConv),
    Attention(Lfm2Attention),
}

/// `Lfm2DecoderLayer`.
pub struct Lfm2DecoderLayer {
    pub operator_norm: Lfm2RmsNorm,
    pub op: Lfm2Op,
    pub ffn_norm: Lfm2RmsNorm,
    pub feed_forward: Lfm2MLP,
}

impl Lfm2DecoderLayer {
    pub fn layer_type(&self) -> LayerType {
        match self.op {
            Lfm2Op::Conv(_) => LayerType::Conv,
            Lfm2Op::Attention(_) => LayerType::Attention,
        }
    }
    pub fn param_count(&self) -> usize {
        self.operator_norm.dim()
            + self.ffn_norm.dim()
            + self.feed_forward.param_count()
            + match &self.op {
                Lfm2Op::Conv(c) => c.param_count(),
                Lfm2Op::Attention(a) => a.param_count(),
            }
    }
}

/// The output projection: tied to `embed_tokens` (no copy) or a separate `[vocab, hidden]` weight.
pub enum LmHead {
    Tied,
    Separate(Tensor),
}

/// `Lfm2ForCausalLM` (decoder + lm_head).
pub struct Lfm2Model {
    pub config: Lfm2Config,
    /// `[vocab, hidden]`.
    pub embed_tokens: Tensor,
    pub layers: Vec<Lfm2DecoderLayer>,
    /// The final norm.
    pub embedding_norm: Lfm2RmsNorm,
    pub lm_head: LmHead,
    /// `None` when no layer uses attention.
    rope: Option<Rope>,
}

// ---------------------------------------------------------------------------------------------
// Cache
// ---------------------------------------------------------------------------------------------

/// Per-layer decode state.
#[derive(Clone, Debug)]
pub enum LayerCache {
    /// The last `conv_L_cache - 1` rows of `B * x`, `[L-1, hidden]` token-major (zeros at start).
    Conv { state: Vec<f32> },
    /// Post-norm, post-RoPE keys and values, `[tokens, kv_heads * head_dim]` each.
    Attention { k: Vec<f32>, v: Vec<f32> },
}

/// Decode cache of one sequence: constant-size conv states plus growing KV for attention layers.
#[derive(Clone, Debug)]
pub struct Lfm2Cache {
    pos: usize,
    hidden: usize,
    kv_width: usize,
    layers: Vec<LayerCache>,
}

impl Lfm2Cache {
    /// An empty cache for a model with this config.
    pub fn new(cfg: &Lfm2Config) -> Self {
        let state = (cfg.conv_l_cache - 1) * cfg.hidden_size;
        let layers = cfg
            .layer_types
            .iter()
            .map(|t| match t {
                LayerType::Conv => LayerCache::Conv {
                    state: vec![0.0; state],
                },
                LayerType::Attention => LayerCache::Attention {
                    k: Vec::new(),
                    v: Vec::new(),
                },
            })
            .collect();
        Self {
            pos: 0,
            hidden: cfg.hidden_size,
            kv_width: cfg.num_key_value_heads * cfg.head_dim,
            layers,
        }
    }

    /// Tokens consumed so far (the next token's position).
    pub fn len(&self) -> usize {
        self.pos
    }
    pub fn is_empty(&self) -> bool {
        self.pos == 0
    }
    pub fn layers(&self) -> &[LayerCache] {
        &self.layers
    }

    /// Back to the empty state (keeps the KV allocations).
    pub fn reset(&mut self) {
        self.pos = 0;
        for l in &mut self.layers {
            match l {
                LayerCache::Conv { state } => state.fill(0.0),
                LayerCache::Attention { k, v } => {
                    k.clear();
                    v.clear();
                }
            }
        }
    }

    /// Bytes held by the conv states (f32; independent of the sequence length).
    pub fn state_bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| match l {
                LayerCache::Conv { state } => state.len() * 4,
                LayerCache::Attention { .. } => 0,
            })
            .sum()
    }

    /// Bytes held by the attention KV (f32; grows with the sequence).
    pub fn kv_bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|l| match l {
                LayerCache::Conv { .. } => 0,
                LayerCache::Attention { k, v } => (k.len() + v.len()) * 4,
            })
            .sum()
    }

    /// KV values (keys + values over all attention layers) added per token.
    pub fn kv_elems_per_token(cfg: &Lfm2Config) -> usize {
        2 * cfg.num_attention_layers() * cfg.num_key_value_heads * cfg.head_dim
    }
    /// Conv state values over all conv layers (constant).
    pub fn conv_state_elems(cfg: &Lfm2Config) -> usize {
        cfg.num_conv_layers() * (cfg.conv_l_cache - 1) * cfg.hidden_size
    }
    /// [`Self::kv_elems_per_token`] in f32 bytes (multiply the elems by another size for other
    /// element types).
    pub fn kv_bytes_per_token(cfg: &Lfm2Config) -> usize {
        Self::kv_elems_per_token(cfg) * 4
    }
    /// [`Self::conv_state_elems`] in f32 bytes.
    pub fn conv_state_bytes(cfg: &Lfm2Config) -> usize {
        Self::conv_state_elems(cfg) * 4
    }
}

// ---------------------------------------------------------------------------------------------
// Model
// ---------------------------------------------------------------------------------------------

impl Lfm2Model {
    /// Loads the weights. `w` is the view holding `embed_tokens.weight`, `layers.{i}.*` and
    /// `embedding_norm.weight` (`model` for a plain LFM2 checkpoint, `model.language_model` for
    /// AutoNeural); `lm_head` is the view where an untied `lm_head.weight` lives (usually the root).
    /// A tied config always uses `embed_tokens` (as transformers does), whatever the file holds.
    pub fn load(cfg: &Lfm2Config, w: &Weights, lm_head: Option<&Weights>) -> Result<Self> {
        cfg.validate()?;
        let (h, v) = (cfg.hidden_size, cfg.vocab_size);
        let eps = cfg.norm_eps as f32;
        let embed_tokens = w.get("embed_tokens.weight", &[v, h])?;
        let layers = cfg
            .layer_types
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let lw = w.pp("layers").pp(i);
                let op = match t {
                    LayerType::Conv => Lfm2Op::Conv(Lfm2ShortConv::load(&lw.pp("conv"), cfg)?),
                    LayerType::Attention => {
                        Lfm2Op::Attention(Lfm2Attention::load(&lw.pp("self_attn"), cfg)?)
                    }
                };
                Ok(Lfm2DecoderLayer {
                    operator_norm: Lfm2RmsNorm::load(&lw.pp("operator_norm"), h, eps)?,
                    op,
                    ffn_norm: Lfm2RmsNorm::load(&lw.pp("ffn_norm"), h, eps)?,
                    feed_forward: Lfm2MLP::load(&lw.pp("feed_forward"), h, cfg.ff_dim())?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let embedding_norm = Lfm2RmsNorm::load(&w.pp("embedding_norm"), h, eps)?;
        let lm_head = if cfg.tie_word_embeddings {
            LmHead::Tied
        } else {
            let root = lm_head.ok_or_else(|| {
                Error::config("tie_word_embeddings is false but no lm_head weights were given")
            })?;
            if !root.contains("lm_head.weight") {
                return Err(Error::MissingTensor(root.key("lm_head.weight")));
            }
            LmHead::Separate(root.get("lm_head.weight", &[v, h])?)
        };
        Ok(Self {
            config: cfg.clone(),
            embed_tokens,
            layers,
            embedding_norm,
            lm_head,
            rope: make_rope(cfg)?,
        })
    }

    /// A model with deterministic pseudo-random weights (for tests and benchmarks): linear
    /// weights uniform in `±1/sqrt(fan_in)`, norms `1 ± 0.1`, embeddings `±0.05`.
    pub fn random(cfg: &Lfm2Config, seed: u64) -> Result<Self> {
        cfg.validate()?;
        let (h, v, ff, l) = (
            cfg.hidden_size,
            cfg.vocab_size,
            cfg.ff_dim(),
            cfg.conv_l_cache,
        );
        let (nh, nkv, d) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        );
        let eps = cfg.norm_eps as f32;
        let mut id = 0u64;
        let mut next = |shape: &[usize], center: f32, half: f32| {
            id += 1;
            random_tensor(shape, center, half, seed, id)
        };
        let mut lin = |out: usize, inp: usize, bias: bool| {
            let a = 1.0 / (inp as f32).sqrt();
            Linear {
                weight: next(&[out, inp], 0.0, a),
                bias: bias.then(|| next(&[out], 0.0, a)),
            }
        };
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for t in &cfg.layer_types {
            let op = match t {
                LayerType::Conv => {
                    let in_proj = lin(3 * h, h, cfg.conv_bias);
                    let out_proj = lin(h, h, cfg.conv_bias);
                    let a = 1.0 / (l as f32).sqrt();
                    let weight =
                        random_tensor(&[h, l], 0.0, a, seed, 1_000_000 + layers.len() as u64);
                    let bias = cfg.conv_bias.then(|| {
                        random_tensor(&[h], 0.0, a, seed, 2_000_000 + layers.len() as u64)
                    });
                    Lfm2Op::Conv(Lfm2ShortConv::new(in_proj, weight, bias, out_proj))
                }
                LayerType::Attention => Lfm2Op::Attention(Lfm2Attention {
                    q_proj: lin(nh * d, h, false),
                    k_proj: lin(nkv * d, h, false),
                    v_proj: lin(nkv * d, h, false),
                    out_proj: lin(h, nh * d, false),
                    q_layernorm: Lfm2RmsNorm {
                        weight: random_tensor(
                            &[d],
                            1.0,
                            0.1,
                            seed,
                            3_000_000 + layers.len() as u64,
                        ),
                        eps,
                    },
                    k_layernorm: Lfm2RmsNorm {
                        weight: random_tensor(
                            &[d],
                            1.0,
                            0.1,
                            seed,
                            4_000_000 + layers.len() as u64,
                        ),
                        eps,
                    },
                    num_heads: nh,
                    num_kv_heads: nkv,
                    head_dim: d,
                }),
            };
            let feed_forward = Lfm2MLP {
                w1: lin(ff, h, false),
                w3: lin(ff, h, false),
                w2: lin(h, ff, false),
            };
            let i = layers.len() as u64;
            layers.push(Lfm2DecoderLayer {
                operator_norm: Lfm2RmsNorm {
                    weight: random_tensor(&[h], 1.0, 0.1, seed, 5_000_000 + i),
                    eps,
                },
                op,
                ffn_norm: Lfm2RmsNorm {
                    weight: random_tensor(&[h], 1.0, 0.1, seed, 6_000_000 + i),
                    eps,
                },
                feed_forward,
            });
        }
        let lm_head = if cfg.tie_word_embeddings {
            LmHead::Tied
        } else {
            LmHead::Separate(random_tensor(&[v, h], 0.0, 0.05, seed, 7_000_001))
        };
        Ok(Self {
            config: cfg.clone(),
            embed_tokens: random_tensor(&[v, h], 0.0, 0.05, seed, 7_000_000),
            layers,
            embedding_norm: Lfm2RmsNorm {
                weight: random_tensor(&[h], 1.0, 0.1, seed, 7_000_002),
                eps,
            },
            lm_head,
            rope: make_rope(cfg)?,
        })
    }

    pub fn new_cache(&self) -> Lfm2Cache {
        Lfm2Cache::new(&self.config)
    }

    /// The rotary embedding (`None` when no layer uses attention).
    pub fn rope(&self) -> Option<&Rope> {
        self.rope.as_ref()
    }

    /// The `[vocab, hidden]` output projection weight (the embedding matrix when tied).
    pub fn lm_head_weight(&self) -> &Tensor {
        match &self.lm_head {
            LmHead::Tied => &self.embed_tokens,
            LmHead::Separate(w) => w,
        }
    }

    /// Parameters actually held (a tied lm_head is not counted twice).
    pub fn param_count(&self) -> usize {
        self.embed_tokens.numel()
            + self.layers.iter().map(|l| l.param_count()).sum::<usize>()
            + self.embedding_norm.dim()
            + match &self.lm_head {
                LmHead::Tied => 0,
                LmHead::Separate(w) => w.numel(),
            }
    }

    /// The config summary plus per-layer operators, for `inspect`.
    pub fn summary(&self) -> String {
        let mut s = self.config.summary();
        let _ = write!(s, "\n  held parameters: {}", self.param_count());
        for (i, l) in self.layers.iter().enumerate() {
            let _ = write!(
                s,
                "\n  layers.{i}: {:<14} {:>12} params",
                l.layer_type().hf_name(),
                l.param_count()
            );
        }
        s
    }

    /// `embed_tokens(ids)`: `[T, hidden]`.
    pub fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        let (v, h) = (self.config.vocab_size, self.config.hidden_size);
        let mut out = Vec::with_capacity(ids.len() * h);
        for (i, &id) in ids.iter().enumerate() {
            if id as usize >= v {
                return Err(Error::input(format!(
                    "token id {id} at position {i} is outside the vocabulary ({v} tokens)"
                )));
            }
            out.extend_from_slice(self.embed_tokens.row(id as usize));
        }
        Ok(Tensor::from_parts(&[ids.len(), h], out))
    }

    /// Runs `T >= 1` new positions (input embeddings `[T, hidden]`) starting at `cache.len()`,
    /// updating `cache`; returns the hidden states after `embedding_norm`, `[T, hidden]`.
    /// The input is observed as `embed_tokens`.
    pub fn forward(
        &self,
        x: Tensor,
        cache: &mut Lfm2Cache,
        obs: &mut dyn Observer,
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let h = cfg.hidden_size;
        if x.rank() != 2 || x.dim(1) != h || x.dim(0) == 0 {
            return Err(Error::input(format!(
                "LFM2 input embeddings must be [T >= 1, {h}], got {:?}",
                x.shape()
            )));
        }
        if cache.layers.len() != self.layers.len()
            || cache.hidden != h
            || cache.kv_width != cfg.num_key_value_heads * cfg.head_dim
            || cache
                .layers
                .iter()
                .zip(&self.layers)
                .any(|(c, l)| match (c, &l.op) {
                    (LayerCache::Conv { state }, Lfm2Op::Conv(_)) => {
                        state.len() != (cfg.conv_l_cache - 1) * h
                    }
                    (LayerCache::Attention { .. }, Lfm2Op::Attention(_)) => false,
                    _ => true,
                })
        {
            return Err(Error::input(
                "the cache was not made for this model (use Lfm2Model::new_cache)",
            ));
        }
        let t = x.dim(0);
        let start = cache.pos;
        if start + t > cfg.max_position_embeddings {
            return Err(Error::ContextOverflow {
                tokens: start + t,
                max_new: 0,
                context: cfg.max_position_embeddings,
            });
        }
        emit(obs, "", "embed_tokens", &x);
        let mut hs = x;
        for (i, (layer, lc)) in self.layers.iter().zip(cache.layers.iter_mut()).enumerate() {
            let p = name(obs, || format!("layers.{i}"));
            let mut normed = hs.clone();
            layer.operator_norm.forward_inplace(normed.data_mut());
            emit(obs, &p, "operator_norm", &normed);
            let mixed = match (&layer.op, lc) {
                (Lfm2Op::Conv(conv), LayerCache::Conv { state }) => {
                    let pc = name(obs, || format!("{p}.conv"));
                    conv.forward(&normed, state, obs, &pc)
                }
                (Lfm2Op::Attention(attn), LayerCache::Attention { k, v }) => {
                    let pa = name(obs, || format!("{p}.self_attn"));
                    let rope = self.rope.as_ref().expect("attention layers imply a rope");
                    attn.forward(&normed, rope, start, k, v, obs, &pa)
                }
                _ => unreachable!("cache layout checked above"),
            };
            add_inplace(hs.data_mut(), mixed.data());
            emit(obs, &p, "residual1", &hs);
            let mut normed = hs.clone();
            layer.ffn_norm.forward_inplace(normed.data_mut());
            emit(obs, &p, "ffn_norm", &normed);
            let pf = name(obs, || format!("{p}.feed_forward"));
            let ff = layer.feed_forward.forward(&normed, obs, &pf);
            add_inplace(hs.data_mut(), ff.data());
            if obs.enabled() {
                obs.observe(&p, &hs);
            }
        }
        cache.pos = start + t;
        self.embedding_norm.forward_inplace(hs.data_mut());
        emit(obs, "", "embedding_norm", &hs);
        Ok(hs)
    }

    /// `lm_head(hidden)`: `[T, hidden] -> [T, vocab]`, observed as `lm_head`.
    pub fn lm_head(&self, hidden: &Tensor, obs: &mut dyn Observer) -> Tensor {
        let (v, h) = (self.config.vocab_size, self.config.hidden_size);
        assert_eq!(hidden.dim(hidden.rank() - 1), h, "lm_head input width");
        let t = hidden.numel() / h;
        let y = gemm::linear(hidden.data(), t, self.lm_head_weight().data(), v, h, None);
        let y = Tensor::from_parts(&[t, v], y);
        emit(obs, "", "lm_head", &y);
        y
    }

    /// Logits of every row: `[T, vocab]`.
    pub fn logits(&self, hidden: &Tensor) -> Tensor {
        self.lm_head(hidden, &mut crate::observe::NoObserver)
    }

    /// Logits of the last row only: `[1, vocab]` (what generation needs after a prefill).
    pub fn logits_last(&self, hidden: &Tensor) -> Tensor {
        let h = self.config.hidden_size;
        let t = hidden.numel() / h;
        assert!(t > 0, "logits_last of an empty tensor");
        let last = Tensor::from_parts(&[1, h], hidden.data()[(t - 1) * h..].to_vec());
        self.logits(&last)
    }
}

fn make_rope(cfg: &Lfm2Config) -> Result<Option<Rope>> {
    if cfg.has_attention() {
        Rope::new(cfg.head_dim, cfg.rope_theta).map(Some)
    } else {
        Ok(None)
    }
}

fn add_inplace(a: &mut [f32], b: &[f32]) {
    debug_assert_eq!(a.len(), b.len());
    for (x, y) in a.iter_mut().zip(b) {
        *x += y;
    }
}

/// A name built only when the observer wants tensors (no allocation otherwise).
fn name(obs: &dyn Observer, f: impl FnOnce() -> String) -> String {
    if obs.enabled() {
        f()
    } else {
        String::new()
    }
}

/// Reports `t` as `prefix.suffix` (or `suffix` when the prefix is empty) if enabled.
fn emit(obs: &mut dyn Observer, prefix: &str, suffix: &str, t: &Tensor) {
    crate::observe::observe(obs, prefix, suffix, t);
}

/// Reports the `[T, features]` input of linear op `prefix.suffix` to observers that want inputs.
fn emit_input(obs: &mut dyn Observer, prefix: &str, suffix: &str, x: &Tensor) {
    if obs.wants_inputs() {
        let op = if prefix.is_empty() {
            suffix.to_string()
        } else {
            format!("{prefix}.{suffix}")
        };
        obs.observe_input(
            &op,
            OpInput::Tokens {
                x: x.data(),
                tokens: x.dim(0),
                features: x.dim(1),
            },
        );
    }
}

/// Deterministic uniform values in `center ± half` (SplitMix64 streams, filled in parallel).
fn random_tensor(shape: &[usize], center: f32, half: f32, seed: u64, id: u64) -> Tensor {
    const CHUNK: usize = 1 << 16;
    let n: usize = shape.iter().product();
    let mut data = vec![0.0f32; n];
    let base = splitmix(seed ^ splitmix(id.wrapping_mul(0x9E37_79B9_7F4A_7C15)));
    data.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(c, chunk)| {
            let mut s = splitmix(base ^ (c as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
            for x in chunk.iter_mut() {
                s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
                let r = splitmix(s);
                // 24 random bits -> [0, 1).
                let u = (r >> 40) as f32 * (1.0 / (1u64 << 24) as f32);
                *x = center + half * (2.0 * u - 1.0);
            }
        });
    Tensor::from_parts(shape, data)
}

fn splitmix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::{NoObserver, Recorder};
    use crate::weights::WeightStore;
    use serde_json::json;
    use std::sync::Arc;

    /// A tiny config exercising GQA (4 heads / 2 kv), both layer kinds and an untied head.
    fn tiny(tied: bool) -> Lfm2Config {
        Lfm2Config::from_json(&json!({
            "model_type": "lfm2",
            "vocab_size": 97,
            "hidden_size": 32,
            "intermediate_size": 96,
            "num_hidden_layers": 5,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "layer_types": ["conv", "full_attention", "conv", "conv", "full_attention"],
            "max_position_embeddings": 64,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
            "block_multiple_of": 16,
            "tie_word_embeddings": tied,
            "eos_token_id": 7,
        }))
        .unwrap()
    }

    fn rel_err(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        a.iter()
            .zip(b)
            .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
            / scale
    }

    #[test]
    fn real_configs_have_the_model_card_parameter_counts() {
        let c = Lfm2Config::lfm2_1_2b();
        assert_eq!(c.layout(), "CCACCACCACACACAC");
        assert_eq!((c.ff_dim(), c.head_dim, c.eos_token_id), (8192, 64, 7));
        // 6 attention layers x 8 kv heads x 64 x (k + v) x 4 bytes.
        assert_eq!(Lfm2Cache::kv_bytes_per_token(&c), 6 * 8 * 64 * 2 * 4);
        assert_eq!(Lfm2Cache::conv_state_bytes(&c), 10 * 2 * 2048 * 4);
        assert!(c.summary().contains("1170340608"));
    }

    fn graph_params(cfg: &Lfm2Config) -> usize {
        let src = crate::graph::builder::FromConfig;
        graph::build(cfg, &src, "model").unwrap().param_count()
    }

    #[test]
    fn model_param_count_matches_config() {
        for tied in [true, false] {
            let cfg = tiny(tied);
            let m = Lfm2Model::random(&cfg, 1).unwrap();
            assert_eq!(m.param_count(), graph_params(&cfg));
            assert!(m.summary().contains("layers.4: full_attention"));
        }
        let mut cfg = tiny(true);
        cfg.conv_bias = true;
        let m = Lfm2Model::random(&cfg, 1).unwrap();
        assert_eq!(m.param_count(), graph_params(&cfg));
    }

    fn run_chunks(m: &Lfm2Model, ids: &[u32], chunks: &[usize]) -> (Vec<f32>, Lfm2Cache) {
        let mut cache = m.new_cache();
        let mut logits = Vec::new();
        let mut at = 0;
        for &n in chunks {
            let x = m.embed(&ids[at..at + n]).unwrap();
            let h = m.forward(x, &mut cache, &mut NoObserver).unwrap();
            logits.extend_from_slice(m.logits(&h).data());
            at += n;
        }
        assert_eq!(at, ids.len());
        (logits, cache)
    }

    #[test]
    fn prefill_and_token_by_token_decode_agree() {
        for conv_bias in [false, true] {
            let mut cfg = tiny(false);
            cfg.conv_bias = conv_bias;
            let m = Lfm2Model::random(&cfg, 7).unwrap();
            let ids: Vec<u32> = (0..13).map(|i| (i * 31 + 5) % 97).collect();
            let (whole, c1) = run_chunks(&m, &ids, &[13]);
            let (single, c2) = run_chunks(&m, &ids, &[1; 13]);
            let (mixed, c3) = run_chunks(&m, &ids, &[2, 1, 5, 1, 4]);
            assert!(
                rel_err(&single, &whole) < 1e-5,
                "{}",
                rel_err(&single, &whole)
            );
            assert!(
                rel_err(&mixed, &whole) < 1e-5,
                "{}",
                rel_err(&mixed, &whole)
            );
            assert_eq!((c1.len(), c2.len(), c3.len()), (13, 13, 13));
            // The caches hold the same state whichever way the prompt was fed.
            for (a, b) in c1.layers().iter().zip(c2.layers()) {
                match (a, b) {
                    (LayerCache::Conv { state: s1 }, LayerCache::Conv { state: s2 }) => {
                        assert!(rel_err(s1, s2) < 1e-5)
                    }
                    (
                        LayerCache::Attention { k: k1, v: v1 },
                        LayerCache::Attention { k: k2, v: v2 },
                    ) => {
                        assert!(rel_err(k1, k2) < 1e-5 && rel_err(v1, v2) < 1e-5)
                    }
                    _ => panic!("cache layout differs"),
                }
            }
        }
    }

    #[test]
    fn cache_sizes_conv_constant_kv_growing() {
        let cfg = tiny(true);
        let m = Lfm2Model::random(&cfg, 3).unwrap();
        let mut cache = m.new_cache();
        assert!(cache.is_empty());
        let state = cache.state_bytes();
        assert_eq!(state, Lfm2Cache::conv_state_bytes(&cfg));
        assert_eq!(state, 3 * 2 * 32 * 4);
        assert_eq!(cache.kv_bytes(), 0);
        let per_token = Lfm2Cache::kv_bytes_per_token(&cfg);
        assert_eq!(per_token, 2 * 2 * 2 * 8 * 4);
        for step in 1..=10 {
            let x = m.embed(&[step as u32]).unwrap();
            m.forward(x, &mut cache, &mut NoObserver).unwrap();
            assert_eq!(cache.len(), step);
            assert_eq!(cache.state_bytes(), state);
            assert_eq!(cache.kv_bytes(), step * per_token);
            for (l, t) in cache.layers().iter().zip(&cfg.layer_types) {
                match (l, t) {
                    (LayerCache::Conv { state }, LayerType::Conv) => {
                        assert_eq!(state.len(), 2 * 32)
                    }
                    (LayerCache::Attention { k, v }, LayerType::Attention) => {
                        assert_eq!((k.len(), v.len()), (step * 16, step * 16))
                    }
                    _ => panic!("layout"),
                }
            }
        }
        cache.reset();
        assert_eq!(
            (cache.len(), cache.kv_bytes(), cache.state_bytes()),
            (0, 0, state)
        );
    }

    #[test]
    fn context_and_id_errors() {
        let cfg = tiny(true);
        let m = Lfm2Model::random(&cfg, 3).unwrap();
        assert!(matches!(m.embed(&[97]), Err(Error::Input(_))));
        let mut cache = m.new_cache();
        let x = m.embed(&vec![1; 60]).unwrap();
        m.forward(x, &mut cache, &mut NoObserver).unwrap();
        let x = m.embed(&[1; 5]).unwrap();
        match m.forward(x, &mut cache, &mut NoObserver) {
            Err(Error::ContextOverflow {
                tokens, context, ..
            }) => {
                assert_eq!((tokens, context), (65, 64))
            }
            other => panic!("{:?}", other.map(|t| t.shape().to_vec())),
        }
        assert_eq!(
            cache.len(),
            60,
            "a rejected call leaves the cache untouched"
        );
        let x = m.embed(&[1; 4]).unwrap();
        assert!(m.forward(x, &mut cache, &mut NoObserver).is_ok());
        let empty = Tensor::zeros(&[0, 32]);
        assert!(m
            .forward(empty, &mut m.new_cache(), &mut NoObserver)
            .is_err());
        let wrong = Tensor::zeros(&[2, 31]);
        assert!(m
            .forward(wrong, &mut m.new_cache(), &mut NoObserver)
            .is_err());
        let other = Lfm2Model::random(&Lfm2Config::reversed_layout_of_tiny(), 1).unwrap();
        let x = m.embed(&[1]).unwrap();
        assert!(m
            .forward(x, &mut other.new_cache(), &mut NoObserver)
            .is_err());
    }

    impl Lfm2Config {
        /// Same hidden size as `tiny`, different layer layout (for cache-mismatch tests).
        fn reversed_layout_of_tiny() -> Self {
            let mut c = tiny(true);
            c.layer_types.reverse();
            c
        }
    }

    #[test]
    fn observer_sees_every_op_with_checkpoint_names() {
        let cfg = tiny(true);
        let m = Lfm2Model::random(&cfg, 5).unwrap();
        let mut rec = Recorder::new(|_: &str| true);
        let x = m.embed(&[1, 2, 3]).unwrap();
        let h = m.forward(x, &mut m.new_cache(), &mut rec).unwrap();
        m.lm_head(&h, &mut rec);
        let names: Vec<&str> = rec.tensors.keys().map(|s| s.as_str()).collect();
        let mut want = vec![
            "embed_tokens".to_string(),
            "embedding_norm".into(),
            "lm_head".into(),
        ];
        for (i, t) in cfg.layer_types.iter().enumerate() {
            let p = format!("layers.{i}");
            want.push(p.clone());
            for s in ["operator_norm", "residual1", "ffn_norm"] {
                want.push(format!("{p}.{s}"));
            }
            for s in ["w1", "w3", "act", "w2"] {
                want.push(format!("{p}.feed_forward.{s}"));
            }
            let (op, subs): (&str, &[&str]) = match t {
                LayerType::Conv => ("conv", &["in_proj", "bx", "conv", "y", "out_proj"]),
                LayerType::Attention => (
                    "self_attn",
                    &[
                        "q_proj",
                        "k_proj",
                        "v_proj",
                        "q_layernorm",
                        "k_layernorm",
                        "rope_q",
                        "rope_k",
                        "sdpa",
                        "out_proj",
                    ],
                ),
            };
            for s in subs {
                want.push(format!("{p}.{op}.{s}"));
            }
        }
        want.sort();
        assert_eq!(names, want);
        assert_eq!(rec.tensors["layers.0.conv.in_proj"].shape(), &[3, 96]);
        assert_eq!(rec.tensors["layers.1.self_attn.k_proj"].shape(), &[3, 16]);
        assert_eq!(
            rec.tensors["layers.4.feed_forward.act"].shape(),
            &[3, cfg.ff_dim()]
        );
        assert_eq!(rec.tensors["embedding_norm"], h);
        assert_eq!(rec.tensors["layers.4"].shape(), &[3, 32]);
        // bx is B * x of in_proj's chunks.
        let bcx = &rec.tensors["layers.0.conv.in_proj"];
        let bx = &rec.tensors["layers.0.conv.bx"];
        assert_eq!(bx.row(2)[5], bcx.row(2)[5] * bcx.row(2)[64 + 5]);
    }

    /// Writes `m`'s weights as a Hugging Face checkpoint under `prefix` (conv kernels `[H, 1, L]`).
    fn save(m: &Lfm2Model, prefix: &str, path: &std::path::Path) {
        let mut named: Vec<(String, Tensor)> = vec![
            (
                format!("{prefix}embed_tokens.weight"),
                m.embed_tokens.clone(),
            ),
            (
                format!("{prefix}embedding_norm.weight"),
                m.embedding_norm.weight.clone(),
            ),
        ];
        if let LmHead::Separate(w) = &m.lm_head {
            named.push(("lm_head.weight".into(), w.clone()));
        }
        let lin = |named: &mut Vec<(String, Tensor)>, n: String, l: &Linear| {
            named.push((format!("{n}.weight"), l.weight.clone()));
            if let Some(b) = &l.bias {
                named.push((format!("{n}.bias"), b.clone()));
            }
        };
        for (i, l) in m.layers.iter().enumerate() {
            let p = format!("{prefix}layers.{i}");
            named.push((
                format!("{p}.operator_norm.weight"),
                l.operator_norm.weight.clone(),
            ));
            named.push((format!("{p}.ffn_norm.weight"), l.ffn_norm.weight.clone()));
            lin(
                &mut named,
                format!("{p}.feed_forward.w1"),
                &l.feed_forward.w1,
            );
            lin(
                &mut named,
                format!("{p}.feed_forward.w2"),
                &l.feed_forward.w2,
            );
            lin(
                &mut named,
                format!("{p}.feed_forward.w3"),
                &l.feed_forward.w3,
            );
            match &l.op {
                Lfm2Op::Conv(c) => {
                    lin(&mut named, format!("{p}.conv.in_proj"), &c.in_proj);
                    lin(&mut named, format!("{p}.conv.out_proj"), &c.out_proj);
                    let (h, k) = (c.weight.dim(0), c.weight.dim(1));
                    let w3 = c.weight.clone().reshape(&[h, 1, k]).unwrap();
                    named.push((format!("{p}.conv.conv.weight"), w3));
                    if let Some(b) = &c.bias {
                        named.push((format!("{p}.conv.conv.bias"), b.clone()));
                    }
                }
                Lfm2Op::Attention(a) => {
                    let s = format!("{p}.self_attn");
                    lin(&mut named, format!("{s}.q_proj"), &a.q_proj);
                    lin(&mut named, format!("{s}.k_proj"), &a.k_proj);
                    lin(&mut named, format!("{s}.v_proj"), &a.v_proj);
                    lin(&mut named, format!("{s}.out_proj"), &a.out_proj);
                    named.push((
                        format!("{s}.q_layernorm.weight"),
                        a.q_layernorm.weight.clone(),
                    ));
                    named.push((
                        format!("{s}.k_layernorm.weight"),
                        a.k_layernorm.weight.clone(),
                    ));
                }
            }
        }
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = named
            .into_iter()
            .map(|(n, t)| {
                let b = t.data().iter().flat_map(|v| v.to_le_bytes()).collect();
                (n, t.shape().to_vec(), b)
            })
            .collect();
        let views = bytes.iter().map(|(n, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .unwrap(),
            )
        });
        safetensors::tensor::serialize_to_file(views, None, path).unwrap();
    }

    #[test]
    fn load_from_safetensors_reproduces_the_model() {
        let dir = tempfile::tempdir().unwrap();
        for (tied, prefix) in [(true, "model."), (false, "model.language_model.")] {
            let mut cfg = tiny(tied);
            cfg.conv_bias = !tied;
            let m = Lfm2Model::random(&cfg, 11).unwrap();
            let path = dir.path().join("model.safetensors");
            save(&m, prefix, &path);
            let store = Arc::new(WeightStore::open_dir(dir.path()).unwrap());
            let root = Weights::new(store);
            let view = root.pp(prefix.trim_end_matches('.'));
            let loaded = Lfm2Model::load(&cfg, &view, Some(&root)).unwrap();
            assert_eq!(loaded.param_count(), m.param_count());
            let ids = [3u32, 1, 4, 1, 5, 9, 2, 6];
            let (a, _) = run_chunks(&m, &ids, &[8]);
            let (b, _) = run_chunks(&loaded, &ids, &[8]);
            assert_eq!(a, b);
            if !tied {
                // Untied without lm_head.weight: a clear error naming the tensor.
                let mut no_head = cfg.clone();
                no_head.tie_word_embeddings = false;
                assert!(Lfm2Model::load(&no_head, &view, None).is_err());
                let sub = root.pp("model");
                match Lfm2Model::load(&no_head, &view, Some(&sub)) {
                    Err(Error::MissingTensor(n)) => assert_eq!(n, "model.lm_head.weight"),
                    Err(e) => panic!("{e}"),
                    Ok(_) => panic!("loaded without lm_head"),
                }
            }
            // A wrong layout is reported with the checkpoint key.
            let mut wrong = cfg.clone();
            wrong.layer_types.swap(0, 1);
            match Lfm2Model::load(&wrong, &view, Some(&root)) {
                Err(Error::MissingTensor(n)) => {
                    assert_eq!(n, format!("{prefix}layers.0.self_attn.q_proj.weight"))
                }
                Err(e) => panic!("{e}"),
                Ok(_) => panic!("loaded a wrong layout"),
            }
        }
    }

    /// A direct, cache-free evaluation of the LFM2 equations in f64 (zero-padded causal conv,
    /// explicit causal softmax attention, RoPE from the definition).
    fn reference_logits(m: &Lfm2Model, ids: &[u32]) -> Vec<f32> {
        let cfg = &m.config;
        let (h, t) = (cfg.hidden_size, ids.len());
        let lin = |x: &[f64], l: &Linear| -> Vec<f64> {
            let (o, i) = (l.out_features(), l.in_features());
            let rows = x.len() / i;
            let mut y = vec![0.0; rows * o];
            for r in 0..rows {
                for j in 0..o {
                    let w = &l.weight.data()[j * i..(j + 1) * i];
                    let mut s: f64 = l.bias.as_ref().map_or(0.0, |b| b.data()[j] as f64);
                    for k in 0..i {
                        s += x[r * i + k] * w[k] as f64;
                    }
                    y[r * o + j] = s;
                }
            }
            y
        };
        let norm = |x: &[f64], n: &Lfm2RmsNorm| -> Vec<f64> {
            let d = n.dim();
            let mut y = x.to_vec();
            for row in y.chunks_exact_mut(d) {
                let ms = row.iter().map(|v| v * v).sum::<f64>() / d as f64;
                let inv = 1.0 / (ms + n.eps as f64).sqrt();
                for (v, w) in row.iter_mut().zip(n.weight.data()) {
                    *v = *v * inv * *w as f64;
                }
            }
            y
        };
        let mut x: Vec<f64> = ids
            .iter()
            .flat_map(|&i| m.embed_tokens.row(i as usize).iter().map(|&v| v as f64))
            .collect();
        for layer in &m.layers {
            let n = norm(&x, &layer.operator_norm);
            let mixed = match &layer.op {
                Lfm2Op::Conv(c) => {
                    let bcx = lin(&n, &c.in_proj);
                    let l = c.kernel_size();
                    let bx =
                        |s: usize, ch: usize| bcx[s * 3 * h + ch] * bcx[s * 3 * h + 2 * h + ch];
                    let mut y = vec![0.0; t * h];
                    for s in 0..t {
                        for ch in 0..h {
                            let mut acc = c.bias.as_ref().map_or(0.0, |b| b.data()[ch] as f64);
                            for j in 0..l {
                                // out[s] = sum_j w[j] * bx[s - (L-1) + j], zeros before 0.
                                if s + j + 1 >= l {
                                    acc +=
                                        c.weight.data()[ch * l + j] as f64 * bx(s + j + 1 - l, ch);
                                }
                            }
                            y[s * h + ch] = acc * bcx[s * 3 * h + h + ch];
                        }
                    }
                    lin(&y, &c.out_proj)
                }
                Lfm2Op::Attention(a) => {
                    let (nh, nkv, d) = (a.num_heads, a.num_kv_heads, a.head_dim);
                    let mut q = norm(&lin(&n, &a.q_proj), &a.q_layernorm);
                    let mut k = norm(&lin(&n, &a.k_proj), &a.k_layernorm);
                    let v = lin(&n, &a.v_proj);
                    let rot = |x: &mut [f64], heads: usize| {
                        for s in 0..t {
                            for hh in 0..heads {
                                let b = s * heads * d + hh * d;
                                for j in 0..d / 2 {
                                    let f = cfg.rope_theta.powf(-(2.0 * j as f64) / d as f64);
                                    let (sn, cs) = (s as f64 * f).sin_cos();
                                    let (x1, x2) = (x[b + j], x[b + j + d / 2]);
                                    x[b + j] = x1 * cs - x2 * sn;
                                    x[b + j + d / 2] = x2 * cs + x1 * sn;
                                }
                            }
                        }
                    };
                    rot(&mut q, nh);
                    rot(&mut k, nkv);
                    let mut o = vec![0.0; t * nh * d];
                    for hh in 0..nh {
                        let kh = hh / (nh / nkv);
                        for i in 0..t {
                            let sc: Vec<f64> = (0..=i)
                                .map(|j| {
                                    (0..d)
                                        .map(|c| {
                                            q[i * nh * d + hh * d + c] * k[j * nkv * d + kh * d + c]
                                        })
                                        .sum::<f64>()
                                        / (d as f64).sqrt()
                                })
                                .collect();
                            let mx = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                            let e: Vec<f64> = sc.iter().map(|s| (s - mx).exp()).collect();
                            let z: f64 = e.iter().sum();
                            for c in 0..d {
                                o[i * nh * d + hh * d + c] = (0..=i)
                                    .map(|j| e[j] / z * v[j * nkv * d + kh * d + c])
                                    .sum();
                            }
                        }
                    }
                    lin(&o, &a.out_proj)
                }
            };
            for (a, b) in x.iter_mut().zip(&mixed) {
                *a += b;
            }
            let n = norm(&x, &layer.ffn_norm);
            let g = lin(&n, &layer.feed_forward.w1);
            let u = lin(&n, &layer.feed_forward.w3);
            let act: Vec<f64> = g
                .iter()
                .zip(&u)
                .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                .collect();
            let f = lin(&act, &layer.feed_forward.w2);
            for (a, b) in x.iter_mut().zip(&f) {
                *a += b;
            }
        }
        let x = norm(&x, &m.embedding_norm);
        let head = Linear {
            weight: m.lm_head_weight().clone(),
            bias: None,
        };
        lin(&x, &head).into_iter().map(|v| v as f32).collect()
    }

    #[test]
    fn matches_a_direct_f64_evaluation_of_the_equations() {
        for tied in [true, false] {
            let mut cfg = tiny(tied);
            cfg.conv_bias = !tied;
            let m = Lfm2Model::random(&cfg, 21).unwrap();
            let ids: Vec<u32> = (0..11).map(|i| (i * 17 + 3) % 97).collect();
            let (got, _) = run_chunks(&m, &ids, &[6, 1, 4]);
            let want = reference_logits(&m, &ids);
            let e = rel_err(&got, &want);
            assert!(e < 1e-5, "max rel err {e}");
        }
    }
}
