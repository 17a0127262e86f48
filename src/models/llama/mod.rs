//! Llama (transformers `LlamaForCausalLM`): the baseline's language model. InternLM2-1.8B, the LM
//! of InternVL2-2B, is exactly this architecture once its fused `wqkv` is split (transformers'
//! InternVL converter does that), so one builder covers both.

pub mod graph;

use crate::error::{Error, Result};
use crate::ops::rope::rope_theta_from_config;
use serde::Deserialize;
use serde_json::Value;
use std::fmt::Write;

/// The fields of a `LlamaConfig` the engine uses, with transformers' defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    /// `head_dim` if the config gives it, else `hidden_size / num_attention_heads`.
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub max_position_embeddings: usize,
    pub rope_theta: f64,
    pub attention_bias: bool,
    pub mlp_bias: bool,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    /// The first (usually only) end-of-sequence id.
    pub eos_token_id: u32,
    pub eos_token_ids: Vec<u32>,
}

#[derive(Deserialize)]
struct Raw {
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    hidden_act: Option<String>,
    rms_norm_eps: Option<f64>,
    max_position_embeddings: Option<usize>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    tie_word_embeddings: Option<bool>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<OneOrMany>,
}

#[derive(Deserialize)]
#[serde(untagged, expecting = "expected a token id or a list of token ids")]
enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

impl LlamaConfig {
    /// Parses a plain Llama `config.json` or the `text_config` of an InternVL one
    /// (`model_type: "llama"`), with `LlamaConfig.__init__`'s defaults for absent keys.
    pub fn from_json(v: &Value) -> Result<Self> {
        let raw: Raw = serde_json::from_value(v.clone())
            .map_err(|e| Error::config(format!("llama config: {e}")))?;
        if let Some(act) = raw.hidden_act.as_deref() {
            if act != "silu" {
                return Err(Error::config(format!(
                    "llama hidden_act `{act}` is not supported (SwiGLU with silu only)"
                )));
            }
        }
        let hidden_size = raw.hidden_size.unwrap_or(4096);
        let num_attention_heads = raw.num_attention_heads.unwrap_or(32);
        if num_attention_heads == 0 {
            return Err(Error::config("num_attention_heads must be positive"));
        }
        let eos_token_ids = match raw.eos_token_id {
            None => vec![2],
            Some(OneOrMany::One(id)) => vec![id],
            Some(OneOrMany::Many(ids)) => ids,
        };
        let eos_token_id = *eos_token_ids
            .first()
            .ok_or_else(|| Error::config("eos_token_id is an empty list"))?;
        let cfg = Self {
            vocab_size: raw.vocab_size.unwrap_or(32000),
            hidden_size,
            intermediate_size: raw.intermediate_size.unwrap_or(11008),
            num_hidden_layers: raw.num_hidden_layers.unwrap_or(32),
            num_attention_heads,
            num_key_value_heads: raw.num_key_value_heads.unwrap_or(num_attention_heads),
            head_dim: raw.head_dim.unwrap_or(hidden_size / num_attention_heads),
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-6),
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(2048),
            rope_theta: rope_theta_from_config(v, "full_attention", 10_000.0)?,
            attention_bias: raw.attention_bias.unwrap_or(false),
            mlp_bias: raw.mlp_bias.unwrap_or(false),
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            bos_token_id: raw.bos_token_id,
            eos_token_id,
            eos_token_ids,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// InternLM2-1.8B as a Llama (InternVL2-2B's language model; `baseline-npu-anchors.md` A1).
    pub fn internlm2_1_8b() -> Self {
        Self::from_json(&serde_json::json!({
            "vocab_size": 92553, "hidden_size": 2048, "intermediate_size": 8192,
            "num_hidden_layers": 24, "num_attention_heads": 16, "num_key_value_heads": 8,
            "rms_norm_eps": 1e-5, "max_position_embeddings": 32768, "rope_theta": 1e6,
            "tie_word_embeddings": false, "bos_token_id": 1, "eos_token_id": 2
        }))
        .expect("a valid preset")
    }

    /// Checks the invariants the builder relies on.
    pub fn validate(&self) -> Result<()> {
        use crate::models::limits::{self as max, check};
        check("vocab_size", self.vocab_size, max::VOCAB)?;
        check("hidden_size", self.hidden_size, max::WIDTH)?;
        check("intermediate_size", self.intermediate_size, max::WIDTH)?;
        check("num_hidden_layers", self.num_hidden_layers, max::LAYERS)?;
        check("num_attention_heads", self.num_attention_heads, max::HEADS)?;
        check("num_key_value_heads", self.num_key_value_heads, max::HEADS)?;
        check("head_dim", self.head_dim, max::HEAD_DIM)?;
        check(
            "max_position_embeddings",
            self.max_position_embeddings,
            max::POSITIONS,
        )?;
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(Error::config(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            )));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(Error::config(format!(
                "head_dim {} must be even for rotary embeddings",
                self.head_dim
            )));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps >= 0.0) {
            return Err(Error::config(format!(
                "invalid rms_norm_eps {}",
                self.rms_norm_eps
            )));
        }
        for id in self
            .bos_token_id
            .into_iter()
            .chain(self.eos_token_ids.iter().copied())
        {
            if id as usize >= self.vocab_size {
                return Err(Error::config(format!(
                    "special token id {id} is outside the vocabulary ({})",
                    self.vocab_size
                )));
            }
        }
        Ok(())
    }

    /// A human-readable description for `inspect`.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "Llama: {} layers, hidden {}, vocab {}, {} head",
            self.num_hidden_layers,
            self.hidden_size,
            self.vocab_size,
            if self.tie_word_embeddings {
                "tied"
            } else {
                "untied"
            }
        );
        let _ = writeln!(
            s,
            "  attention: {} heads, {} kv heads, head_dim {}, RoPE theta {}{}",
            self.num_attention_heads,
            self.num_key_value_heads,
            self.head_dim,
            self.rope_theta,
            if self.attention_bias {
                ", qkv bias"
            } else {
                ""
            }
        );
        let _ = writeln!(s, "  feed-forward: SwiGLU width {}", self.intermediate_size);
        s
    }
}
