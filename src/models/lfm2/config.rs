//! `Lfm2Config`: the LFM2 hyperparameters, read from a `config.json` through serde.
//!
//! serde reads every accepted key into the private `Raw`; `Raw::resolve` then applies transformers'
//! defaults and its precedence rules between the current and the original key names.

use crate::error::{Error, Result};
use crate::ops::rope::rope_theta_from_config;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use std::fmt::Write as _;

/// The operator of one decoder layer (`layer_types` entry).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerType {
    /// `"conv"`: gated short convolution ([`super::Lfm2ShortConv`]).
    Conv,
    /// `"full_attention"` (legacy `"attention"`): GQA with QK-norm ([`super::Lfm2Attention`]).
    Attention,
}

impl LayerType {
    /// The `layer_types` string transformers writes.
    pub fn hf_name(self) -> &'static str {
        match self {
            LayerType::Conv => "conv",
            LayerType::Attention => "full_attention",
        }
    }
}

/// `Lfm2Config`, with transformers' defaults for absent keys.
#[derive(Clone, Debug, PartialEq)]
pub struct Lfm2Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    /// `intermediate_size` (old key `block_ff_dim`) *before* the FFN-width rule; see [`Self::ff_dim`].
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    /// `head_dim` if the config gives it, else `hidden_size / num_attention_heads`.
    pub head_dim: usize,
    pub norm_eps: f64,
    pub conv_l_cache: usize,
    pub conv_bias: bool,
    pub block_multiple_of: usize,
    pub block_ffn_dim_multiplier: Option<f64>,
    pub block_auto_adjust_ff_dim: bool,
    pub max_position_embeddings: usize,
    pub rope_theta: f64,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
    /// The first (usually only) end-of-sequence id.
    pub eos_token_id: u32,
    /// All end-of-sequence ids when the config lists several.
    pub eos_token_ids: Vec<u32>,
    pub layer_types: Vec<LayerType>,
}

impl Default for Lfm2Config {
    /// transformers' `Lfm2Config()` (hidden 2560, 32 layers, all attention).
    fn default() -> Self {
        Self::from_json(&Value::Object(Default::default())).expect("defaults are valid")
    }
}

impl Lfm2Config {
    /// Parses the `text_config` of an AutoNeural `config.json` or a plain LFM2 `config.json`.
    ///
    /// Accepts the current keys (`layer_types`, `intermediate_size`, `tie_word_embeddings`,
    /// `rope_theta` / `rope_parameters`) and the original ones (`full_attn_idxs`, `block_ff_dim`,
    /// `tie_embedding`, `theta`, `block_dim`). As in `Lfm2Config.__post_init__`, `block_ff_dim`
    /// and `tie_embedding` win over the new keys, and `layer_types` wins over `full_attn_idxs`;
    /// with neither, every layer is attention.
    pub fn from_json(v: &Value) -> Result<Self> {
        let obj = v
            .as_object()
            .ok_or_else(|| Error::config("the LFM2 config must be a JSON object"))?;
        let raw = Raw::deserialize(v).map_err(|e| {
            // serde_json's messages do not name the key: find the key that fails on its own.
            let alone = |(k, x): &(&String, &Value)| {
                Value::Object([((*k).clone(), (*x).clone())].into_iter().collect())
            };
            match obj.iter().find(|kv| Raw::deserialize(&alone(kv)).is_err()) {
                Some((k, _)) => Error::config(format!("`{k}`: {e}")),
                None => Error::config(e.to_string()),
            }
        })?;
        let cfg = raw.resolve(v)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the invariants the model relies on.
    pub fn validate(&self) -> Result<()> {
        use crate::models::limits::{self as max, check};
        let pos = |v: usize, k: &str| check(k, v, usize::MAX);
        check("vocab_size", self.vocab_size, max::VOCAB)?;
        check("hidden_size", self.hidden_size, max::WIDTH)?;
        check("intermediate_size", self.intermediate_size, max::WIDTH)?;
        check("num_hidden_layers", self.num_hidden_layers, max::LAYERS)?;
        check("num_attention_heads", self.num_attention_heads, max::HEADS)?;
        check("num_key_value_heads", self.num_key_value_heads, max::HEADS)?;
        check("head_dim", self.head_dim, max::HEAD_DIM)?;
        check("conv_L_cache", self.conv_l_cache, max::CONV_CACHE)?;
        check(
            "max_position_embeddings",
            self.max_position_embeddings,
            max::POSITIONS,
        )?;
        if self.layer_types.len() != self.num_hidden_layers {
            return Err(Error::config(format!(
                "layer_types has {} entries but num_hidden_layers is {}",
                self.layer_types.len(),
                self.num_hidden_layers
            )));
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return Err(Error::config(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            )));
        }
        if self.has_attention() && !self.head_dim.is_multiple_of(2) {
            return Err(Error::config(format!(
                "head_dim {} must be even for rotary embeddings",
                self.head_dim
            )));
        }
        if !(self.norm_eps.is_finite() && self.norm_eps >= 0.0) {
            return Err(Error::config(format!("invalid norm_eps {}", self.norm_eps)));
        }
        if self.block_auto_adjust_ff_dim {
            if let Some(m) = self.block_ffn_dim_multiplier {
                if !(m.is_finite() && m > 0.0) {
                    return Err(Error::config(format!(
                        "block_ffn_dim_multiplier must be positive, got {m}"
                    )));
                }
                pos(self.block_multiple_of, "block_multiple_of")?;
            }
        }
        if self.ff_dim() == 0 || self.ff_dim() > max::WIDTH {
            return Err(Error::config(format!(
                "intermediate_size {} gives an empty feed-forward layer",
                self.intermediate_size
            )));
        }
        for id in [
            self.bos_token_id,
            self.pad_token_id,
            Some(self.eos_token_id),
        ]
        .into_iter()
        .flatten()
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

    /// The effective FFN width (`Lfm2MLP.__init__`): with `block_auto_adjust_ff_dim`,
    /// `ff = int(2 * ff / 3)`, then (if a multiplier is set) `ff = int(multiplier * ff)` rounded up
    /// to a multiple of `block_multiple_of`. 6656 -> 4608, 10240 -> 6912, 12288 -> 8192.
    pub fn ff_dim(&self) -> usize {
        let mut ff = self.intermediate_size;
        if self.block_auto_adjust_ff_dim {
            ff = ((2 * ff) as f64 / 3.0) as usize;
            if let Some(m) = self.block_ffn_dim_multiplier {
                ff = (m * ff as f64) as usize;
                let k = self.block_multiple_of.max(1);
                ff = k * ff.div_ceil(k);
            }
        }
        ff
    }

    pub fn has_attention(&self) -> bool {
        self.layer_types.contains(&LayerType::Attention)
    }
    pub fn num_attention_layers(&self) -> usize {
        self.layer_types
            .iter()
            .filter(|&&t| t == LayerType::Attention)
            .count()
    }
    pub fn num_conv_layers(&self) -> usize {
        self.num_hidden_layers - self.num_attention_layers()
    }

    /// Layer layout as one letter per layer: `C` conv, `A` attention.
    pub fn layout(&self) -> String {
        self.layer_types
            .iter()
            .map(|t| match t {
                LayerType::Conv => 'C',
                LayerType::Attention => 'A',
            })
            .collect()
    }

    /// A human-readable description for `inspect`.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "LFM2: {} layers ({} conv + {} attention), hidden {}, vocab {}",
            self.num_hidden_layers,
            self.num_conv_layers(),
            self.num_attention_layers(),
            self.hidden_size,
            self.vocab_size
        );
        let _ = writeln!(s, "  layout: {}", self.layout());
        let _ = writeln!(
            s,
            "  attention: {} heads, {} kv heads, head_dim {}, QK-norm, RoPE theta {}",
            self.num_attention_heads, self.num_key_value_heads, self.head_dim, self.rope_theta
        );
        let _ = writeln!(
            s,
            "  short conv: L_cache {}, bias {}",
            self.conv_l_cache, self.conv_bias
        );
        let _ = writeln!(
            s,
            "  feed-forward: SwiGLU width {} (intermediate_size {})",
            self.ff_dim(),
            self.intermediate_size
        );
        let _ = write!(
            s,
            "  context {}, norm_eps {:e}, lm_head {}, {} parameters",
            self.max_position_embeddings,
            self.norm_eps,
            if self.tie_word_embeddings {
                "tied"
            } else {
                "untied"
            },
            self.graph_param_count()
        );
        s
    }

    /// Parameters of `Lfm2ForCausalLM` built from this config (lm_head counted only if untied),
    /// counted from its graph; 0 for a config the graph builder rejects.
    fn graph_param_count(&self) -> usize {
        super::graph::build(self, &crate::graph::builder::FromConfig, "model")
            .map_or(0, |g| g.param_count())
    }

    fn real(hidden: usize, heads: usize, ff: usize) -> Self {
        Self::from_json(&serde_json::json!({
            "vocab_size": 65536,
            "hidden_size": hidden,
            "intermediate_size": ff,
            "num_hidden_layers": 16,
            "num_attention_heads": heads,
            "num_key_value_heads": 8,
            "max_position_embeddings": 128000,
            "norm_eps": 1e-5,
            "rope_theta": 1e6,
            "full_attn_idxs": [2, 5, 8, 10, 12, 14],
            "eos_token_id": 7,
            "bos_token_id": 1,
            "pad_token_id": 0,
            "tie_word_embeddings": true,
        }))
        .expect("valid built-in config")
    }

    /// LiquidAI/LFM2-350M.
    pub fn lfm2_350m() -> Self {
        Self::real(1024, 16, 6656)
    }
    /// LiquidAI/LFM2-700M.
    pub fn lfm2_700m() -> Self {
        Self::real(1536, 24, 10240)
    }
    /// LiquidAI/LFM2-1.2B.
    pub fn lfm2_1_2b() -> Self {
        Self::real(2048, 32, 12288)
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

/// Every key [`Lfm2Config::from_json`] reads, current and original names; unknown keys are
/// ignored. `null` is the same as absent, except for the `Option<Option<_>>` fields ([`explicit`]),
/// where it means "none". The rope keys (`rope_theta`, old `theta`, `rope_parameters`, legacy
/// `rope_scaling`) are read by [`rope_theta_from_config`], shared with the other models.
#[derive(Deserialize)]
struct Raw {
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    /// Old name of `hidden_size`; must agree with it.
    block_dim: Option<usize>,
    /// Typed only when `block_ff_dim` is absent ([`late`]).
    intermediate_size: Option<Value>,
    /// Old name of `intermediate_size`; wins over it.
    block_ff_dim: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    norm_eps: Option<f64>,
    #[serde(rename = "conv_L_cache")]
    conv_l_cache: Option<usize>,
    conv_bias: Option<bool>,
    block_multiple_of: Option<usize>,
    #[serde(default, deserialize_with = "explicit")]
    block_ffn_dim_multiplier: Option<Option<f64>>,
    block_auto_adjust_ff_dim: Option<bool>,
    max_position_embeddings: Option<usize>,
    /// Typed only when `tie_embedding` is absent ([`late`]).
    tie_word_embeddings: Option<Value>,
    /// Old name of `tie_word_embeddings`; wins over it.
    tie_embedding: Option<bool>,
    #[serde(default, deserialize_with = "explicit")]
    bos_token_id: Option<Option<u32>>,
    #[serde(default, deserialize_with = "explicit")]
    pad_token_id: Option<Option<u32>>,
    eos_token_id: Option<OneOrMany>,
    /// Entries are checked in [`Raw::resolve`], which names the bad index.
    layer_types: Option<Vec<Value>>,
    /// Old form of `layer_types`: the attention layers' indices. Typed only when `layer_types`
    /// is absent ([`late`]).
    full_attn_idxs: Option<Value>,
}

#[derive(Deserialize)]
#[serde(untagged, expecting = "expected a token id or a list of token ids")]
enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

/// Types a key that another key shadows: as in transformers, a shadowed value is never looked at.
fn late<T: DeserializeOwned>(x: Option<Value>, k: &str) -> Result<Option<T>> {
    x.map(|x| serde_json::from_value(x).map_err(|e| Error::config(format!("`{k}`: {e}"))))
        .transpose()
}

/// For the `Option<Option<_>>` fields: a key that is present, even as `null`, is `Some`.
fn explicit<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

impl Raw {
    /// transformers' defaults and precedence rules (`Lfm2Config.__init__` / `__post_init__`).
    /// `v` is the JSON `self` was read from, for the rope keys.
    fn resolve(self, v: &Value) -> Result<Lfm2Config> {
        let hidden_size = match (self.hidden_size, self.block_dim) {
            (Some(h), Some(b)) if h != b => {
                return Err(Error::config(format!(
                    "hidden_size {h} disagrees with the old key block_dim {b}"
                )))
            }
            (h, b) => h.or(b).unwrap_or(2560),
        };
        let num_hidden_layers = self.num_hidden_layers.unwrap_or(32);
        let num_attention_heads = self.num_attention_heads.unwrap_or(32);
        if num_attention_heads == 0 {
            return Err(Error::config("num_attention_heads must be positive"));
        }
        let intermediate_size = match self.block_ff_dim {
            Some(ff) => ff,
            None => late(self.intermediate_size, "intermediate_size")?.unwrap_or(12288),
        };
        let tie_word_embeddings = match self.tie_embedding {
            Some(t) => t,
            None => late(self.tie_word_embeddings, "tie_word_embeddings")?.unwrap_or(true),
        };
        let layer_types = match self.layer_types {
            Some(lt) => lt
                .iter()
                .enumerate()
                .map(|(i, t)| match t.as_str() {
                    Some("conv") => Ok(LayerType::Conv),
                    Some("full_attention" | "attention") => Ok(LayerType::Attention),
                    _ => Err(Error::config(format!(
                        "layer_types[{i}] is {t}; LFM2 layers are \"conv\" or \"full_attention\""
                    ))),
                })
                .collect::<Result<Vec<_>>>()?,
            None => {
                // With neither key every layer is attention.
                let idxs: Vec<usize> = late(self.full_attn_idxs, "full_attn_idxs")?
                    .unwrap_or_else(|| (0..num_hidden_layers).collect());
                if let Some(&bad) = idxs.iter().find(|&&i| i >= num_hidden_layers) {
                    return Err(Error::config(format!(
                        "full_attn_idxs contains {bad} but there are only {num_hidden_layers} layers"
                    )));
                }
                (0..num_hidden_layers)
                    .map(|i| match idxs.contains(&i) {
                        true => LayerType::Attention,
                        false => LayerType::Conv,
                    })
                    .collect()
            }
        };
        let eos_token_ids = match self.eos_token_id {
            None => vec![2],
            Some(OneOrMany::One(id)) => vec![id],
            Some(OneOrMany::Many(ids)) => ids,
        };
        let eos_token_id = *eos_token_ids
            .first()
            .ok_or_else(|| Error::config("eos_token_id is an empty list"))?;
        Ok(Lfm2Config {
            vocab_size: self.vocab_size.unwrap_or(65536),
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads: self.num_key_value_heads.unwrap_or(8),
            head_dim: self.head_dim.unwrap_or(hidden_size / num_attention_heads),
            norm_eps: self.norm_eps.unwrap_or(1e-5),
            conv_l_cache: self.conv_l_cache.unwrap_or(3),
            conv_bias: self.conv_bias.unwrap_or(false),
            block_multiple_of: self.block_multiple_of.unwrap_or(256),
            block_ffn_dim_multiplier: self.block_ffn_dim_multiplier.unwrap_or(Some(1.0)),
            block_auto_adjust_ff_dim: self.block_auto_adjust_ff_dim.unwrap_or(true),
            max_position_embeddings: self.max_position_embeddings.unwrap_or(128_000),
            rope_theta: rope_theta_from_config(v, "full_attention", 1e6)?,
            tie_word_embeddings,
            bos_token_id: self.bos_token_id.unwrap_or(Some(1)),
            pad_token_id: self.pad_token_id.unwrap_or(Some(0)),
            eos_token_id,
            eos_token_ids,
            layer_types,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn config_new_and_old_keys_agree() {
        let new = json!({
            "hidden_size": 1024, "intermediate_size": 6656, "num_hidden_layers": 4,
            "num_attention_heads": 16, "num_key_value_heads": 8,
            "layer_types": ["conv", "conv", "full_attention", "conv"],
            "tie_word_embeddings": false,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
            "eos_token_id": 7,
        });
        let old = json!({
            "block_dim": 1024, "block_ff_dim": 6656, "num_hidden_layers": 4,
            "num_attention_heads": 16, "num_key_value_heads": 8,
            "full_attn_idxs": [2], "tie_embedding": false, "theta": 1000000.0,
            "eos_token_id": 7,
        });
        let a = Lfm2Config::from_json(&new).unwrap();
        let b = Lfm2Config::from_json(&old).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.ff_dim(), 4608);
        assert_eq!(a.head_dim, 64);
        assert_eq!(a.layout(), "CCAC");
        assert!(!a.tie_word_embeddings);
        assert_eq!(a.rope_theta, 1e6);
        // Old keys win over new ones, as in `Lfm2Config.__post_init__`.
        let both = json!({"intermediate_size": 1, "block_ff_dim": 10240, "tie_word_embeddings": true,
                          "tie_embedding": false, "num_hidden_layers": 2, "hidden_size": 64,
                          "num_attention_heads": 2, "num_key_value_heads": 1});
        let c = Lfm2Config::from_json(&both).unwrap();
        assert_eq!(
            (c.intermediate_size, c.ff_dim(), c.tie_word_embeddings),
            (10240, 6912, false)
        );
        // No layer_types and no full_attn_idxs: every layer is attention (transformers' default).
        assert_eq!(c.layer_types, vec![LayerType::Attention; 2]);
    }

    #[test]
    fn config_defaults_follow_transformers() {
        let c = Lfm2Config::default();
        assert_eq!(c.vocab_size, 65536);
        assert_eq!(c.hidden_size, 2560);
        assert_eq!(c.intermediate_size, 12288);
        assert_eq!(c.num_hidden_layers, 32);
        assert_eq!(
            (c.num_attention_heads, c.num_key_value_heads, c.head_dim),
            (32, 8, 80)
        );
        assert_eq!(c.max_position_embeddings, 128_000);
        assert_eq!(c.norm_eps, 1e-5);
        assert_eq!((c.conv_l_cache, c.conv_bias), (3, false));
        assert_eq!(c.rope_theta, 1e6);
        assert!(c.tie_word_embeddings);
        assert_eq!(
            (c.bos_token_id, c.pad_token_id, c.eos_token_id),
            (Some(1), Some(0), 2)
        );
        let c = Lfm2Config::from_json(&json!({
            "head_dim": 48, "eos_token_id": [7, 2], "bos_token_id": null,
            "block_ffn_dim_multiplier": null, "num_hidden_layers": 1,
        }))
        .unwrap();
        assert_eq!(c.head_dim, 48);
        assert_eq!((c.eos_token_id, c.eos_token_ids.clone()), (7, vec![7, 2]));
        assert_eq!(c.bos_token_id, None);
        // Without a multiplier the width is int(2/3 * ff), not rounded to a multiple.
        assert_eq!(c.ff_dim(), 8192);
        let c = Lfm2Config::from_json(&json!({"intermediate_size": 1000, "num_hidden_layers": 1,
                                              "block_ffn_dim_multiplier": null}))
        .unwrap();
        assert_eq!(c.ff_dim(), 666);
        let c = Lfm2Config::from_json(&json!({"intermediate_size": 1000, "num_hidden_layers": 1,
                                              "block_auto_adjust_ff_dim": false}))
        .unwrap();
        assert_eq!(c.ff_dim(), 1000);
    }

    #[test]
    fn ff_rule_for_the_real_models() {
        for (ff, want) in [(6656, 4608), (10240, 6912), (12288, 8192)] {
            let c =
                Lfm2Config::from_json(&json!({"intermediate_size": ff, "num_hidden_layers": 1}))
                    .unwrap();
            assert_eq!(c.ff_dim(), want, "{ff}");
        }
    }

    #[test]
    fn invalid_configs_are_rejected_clearly() {
        let base = json!({"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
                          "num_key_value_heads": 2});
        let bad = |patch: Value| {
            let mut v = base.clone();
            for (k, x) in patch.as_object().unwrap() {
                v[k] = x.clone();
            }
            match Lfm2Config::from_json(&v) {
                Err(Error::Config(msg)) => msg,
                other => panic!("{patch}: expected a config error, got {other:?}"),
            }
        };
        assert!(bad(json!({"layer_types": ["conv"]})).contains("layer_types has 1"));
        assert!(bad(json!({"layer_types": ["conv", "mamba"]})).contains("layer_types[1]"));
        assert!(bad(json!({"num_key_value_heads": 3})).contains("multiple"));
        assert!(bad(json!({"full_attn_idxs": [5]})).contains("full_attn_idxs"));
        assert!(
            bad(json!({"rope_parameters": {"rope_type": "yarn", "factor": 2.0}})).contains("yarn")
        );
        assert!(bad(json!({"hidden_size": "big"})).contains("hidden_size"));
        assert!(bad(json!({"block_dim": 32})).contains("block_dim"));
        assert!(bad(json!({"eos_token_id": 70000})).contains("vocabulary"));
        assert!(bad(json!({"conv_L_cache": 0})).contains("conv_L_cache"));
        assert!(Lfm2Config::from_json(&json!([1, 2])).is_err());
    }

    /// A small valid config with `patch` applied.
    fn with(patch: Value) -> Result<Lfm2Config> {
        let mut v = json!({"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
                           "num_key_value_heads": 2});
        for (k, x) in patch.as_object().unwrap() {
            v[k] = x.clone();
        }
        Lfm2Config::from_json(&v)
    }

    fn err(patch: Value) -> String {
        match with(patch.clone()) {
            Err(Error::Config(msg)) => msg,
            other => panic!("{patch}: expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn old_keys_win_over_new_ones_and_layer_types_over_full_attn_idxs() {
        let c = with(json!({"intermediate_size": 96, "block_ff_dim": 192,
                            "tie_word_embeddings": true, "tie_embedding": false,
                            "layer_types": ["conv", "full_attention"], "full_attn_idxs": [0]}))
        .unwrap();
        assert_eq!((c.intermediate_size, c.tie_word_embeddings), (192, false));
        assert_eq!(c.layer_types, [LayerType::Conv, LayerType::Attention]);
        // A shadowed key is never read, so its type does not matter (as in transformers)...
        let c = with(json!({"intermediate_size": "x", "block_ff_dim": 192,
                            "tie_word_embeddings": 3, "tie_embedding": true,
                            "layer_types": ["conv", "conv"], "full_attn_idxs": "x"}))
        .unwrap();
        assert_eq!((c.intermediate_size, c.tie_word_embeddings), (192, true));
        assert_eq!(c.layout(), "CC");
        // ...but it is when it is read.
        assert_eq!(
            err(json!({"intermediate_size": "x"})),
            "`intermediate_size`: invalid type: string \"x\", expected usize"
        );
        // `null` counts as absent: the other key is used.
        let c = with(json!({"intermediate_size": 96, "block_ff_dim": null,
                            "tie_word_embeddings": false, "tie_embedding": null,
                            "layer_types": null, "full_attn_idxs": [1]}))
        .unwrap();
        assert_eq!((c.intermediate_size, c.tie_word_embeddings), (96, false));
        assert_eq!(c.layout(), "CA");
    }

    #[test]
    fn hidden_size_and_block_dim_must_agree() {
        assert_eq!(
            err(json!({"block_dim": 32})),
            "hidden_size 64 disagrees with the old key block_dim 32"
        );
        assert_eq!(with(json!({"block_dim": 64})).unwrap().hidden_size, 64);
        let c = with(json!({"hidden_size": null, "block_dim": 128})).unwrap();
        assert_eq!((c.hidden_size, c.head_dim), (128, 32));
    }

    #[test]
    fn wrong_types_are_errors_naming_the_key() {
        for (patch, msg) in [
            (
                json!({"num_hidden_layers": -3}),
                "`num_hidden_layers`: invalid value: integer `-3`, expected usize",
            ),
            (
                json!({"conv_L_cache": 2.5}),
                "`conv_L_cache`: invalid type: floating point `2.5`, expected usize",
            ),
            (
                json!({"norm_eps": "small"}),
                "`norm_eps`: invalid type: string \"small\", expected f64",
            ),
            (
                json!({"conv_bias": 1}),
                "`conv_bias`: invalid type: integer `1`, expected a boolean",
            ),
            (
                json!({"bos_token_id": 4294967296u64}),
                "`bos_token_id`: invalid value: integer `4294967296`, expected u32",
            ),
            (
                json!({"eos_token_id": "</s>"}),
                "`eos_token_id`: expected a token id or a list of token ids",
            ),
            (
                json!({"layer_types": "conv"}),
                "`layer_types`: invalid type: string \"conv\", expected a sequence",
            ),
            (
                json!({"full_attn_idxs": [1, -1]}),
                "`full_attn_idxs`: invalid value: integer `-1`, expected usize",
            ),
        ] {
            assert_eq!(err(patch), msg);
        }
        // Keys LFM2 does not read are fine, whatever they hold.
        let c = with(
            json!({"model_type": "lfm2", "architectures": ["Lfm2ForCausalLM"],
                            "conv_dim": "x", "use_cache": null}),
        );
        assert_eq!(c.unwrap(), with(json!({})).unwrap());
    }

    #[test]
    fn null_token_ids_differ_from_absent_ones() {
        let c = with(json!({})).unwrap();
        assert_eq!((c.bos_token_id, c.pad_token_id), (Some(1), Some(0)));
        assert_eq!(c.block_ffn_dim_multiplier, Some(1.0));
        let c = with(json!({"bos_token_id": null, "pad_token_id": null,
                            "block_ffn_dim_multiplier": null}))
        .unwrap();
        assert_eq!((c.bos_token_id, c.pad_token_id), (None, None));
        assert_eq!(c.block_ffn_dim_multiplier, None);
        // eos is required: `null` means the default.
        let c = with(json!({"eos_token_id": null})).unwrap();
        assert_eq!((c.eos_token_id, c.eos_token_ids), (2, vec![2]));
    }

    #[test]
    fn eos_is_one_id_or_a_list() {
        let c = with(json!({"eos_token_id": 5})).unwrap();
        assert_eq!((c.eos_token_id, c.eos_token_ids), (5, vec![5]));
        let c = with(json!({"eos_token_id": [7, 2, 9]})).unwrap();
        assert_eq!((c.eos_token_id, c.eos_token_ids), (7, vec![7, 2, 9]));
        assert_eq!(
            err(json!({"eos_token_id": []})),
            "eos_token_id is an empty list"
        );
        assert!(
            err(json!({"eos_token_id": [7, 70000]})).contains("70000 is outside the vocabulary")
        );
        assert!(err(json!({"eos_token_id": [7, "x"]})).starts_with("`eos_token_id`: "));
    }
}
