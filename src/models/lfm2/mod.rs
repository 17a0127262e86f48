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
//! The config ([`Lfm2Config`], in `config.rs`) and the graph builder ([`graph`]). Activations are
//! token-major `[T, D]`. Prefill and decode are one graph: a call consumes `T >= 1` new positions
//! after those in its sequence state. Conv layers keep a constant-size state (the last
//! `conv_L_cache - 1` values of `B * x` per channel), attention layers keep growing post-norm,
//! post-RoPE keys and values.
//!
//! Every op output is reported to the observer under checkpoint-style names (without the
//! `model.` / `model.language_model.` prefix): `embed_tokens`, `layers.{i}.operator_norm`,
//! `layers.{i}.conv.{in_proj,bx,conv,y,out_proj}`,
//! `layers.{i}.self_attn.{q_proj,k_proj,v_proj,q_layernorm,k_layernorm,rope_q,rope_k,sdpa,out_proj}`,
//! `layers.{i}.residual1`, `layers.{i}.ffn_norm`, `layers.{i}.feed_forward.{w1,w3,act,w2}`,
//! `layers.{i}` (layer output), `embedding_norm`, and `lm_head`.

pub mod graph;

mod config;
pub use config::*;
