//! InternVL (transformers `InternVLForConditionalGeneration`): the paper's baseline, an
//! InternViT vision tower, pixel shuffle and a LayerNorm + MLP projector in front of a Llama
//! (InternLM2) language model. This module reads the vision side of the config; the language
//! model is [`crate::models::llama`], the projector [`crate::models::connector`] with its norm.

pub mod vision;

use crate::error::{Error, Result};
use crate::models::limits::{self as max, check};
use serde::Deserialize;
use serde_json::Value;
use std::fmt::Write;

/// Which normalization the vision layers use (`norm_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormType {
    LayerNorm,
    RmsNorm,
}

/// `InternVLVisionConfig` plus the top-level fields that shape the vision side
/// (`downsample_ratio`, `vision_feature_layer`).
#[derive(Clone, Debug, PartialEq)]
pub struct InternVitConfig {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub attention_bias: bool,
    pub use_qk_norm: bool,
    pub norm_type: NormType,
    pub layer_norm_eps: f64,
    /// Square input side (transformers keeps `(h, w)`; the pixel shuffle needs a square grid).
    pub image_size: usize,
    pub patch_size: usize,
    pub num_channels: usize,
    pub use_absolute_position_embeddings: bool,
    /// `false`: a final `layernorm` after the last layer (`use_mean_pooling: false`).
    pub use_mean_pooling: bool,
    /// `1 / downsample_ratio`: the pixel shuffle's block side (2 for InternVL2).
    pub shuffle: usize,
    /// Layers run: all of them for `vision_feature_layer = -1`, fewer for an earlier layer.
    pub feature_layers: usize,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Side {
    One(usize),
    Pair(Vec<usize>),
}

impl Side {
    fn square(self, key: &str) -> Result<usize> {
        match self {
            Side::One(n) => Ok(n),
            Side::Pair(v) if v.len() == 2 && v[0] == v[1] => Ok(v[0]),
            Side::Pair(v) => Err(Error::config(format!(
                "{key} {v:?}: only square images and patches are supported"
            ))),
        }
    }
}

#[derive(Deserialize)]
struct RawVision {
    hidden_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    intermediate_size: Option<usize>,
    attention_bias: Option<bool>,
    use_qk_norm: Option<bool>,
    hidden_act: Option<String>,
    norm_type: Option<String>,
    layer_norm_eps: Option<f64>,
    image_size: Option<Side>,
    patch_size: Option<Side>,
    num_channels: Option<usize>,
    use_absolute_position_embeddings: Option<bool>,
    use_mean_pooling: Option<bool>,
}

impl InternVitConfig {
    /// Parses `vision_config` of an InternVL `config.json` (transformers' defaults for absent
    /// keys, which are InternViT-300M's except `attention_bias`) with the top-level `top` keys.
    pub fn from_json(v: &Value, top: &Value) -> Result<Self> {
        let raw: RawVision = serde_json::from_value(v.clone())
            .map_err(|e| Error::config(format!("vision_config: {e}")))?;
        if let Some(act) = raw.hidden_act.as_deref() {
            if act != "gelu" {
                return Err(Error::config(format!(
                    "vision_config.hidden_act `{act}` is not supported (gelu)"
                )));
            }
        }
        let norm_type = match raw.norm_type.as_deref().unwrap_or("layer_norm") {
            "layer_norm" => NormType::LayerNorm,
            "rms_norm" => NormType::RmsNorm,
            other => {
                return Err(Error::config(format!(
                    "vision_config.norm_type `{other}` (expected layer_norm or rms_norm)"
                )))
            }
        };
        let ratio = top
            .get("downsample_ratio")
            .and_then(Value::as_f64)
            .unwrap_or(0.5);
        let shuffle = (1.0 / ratio).round();
        if !(ratio > 0.0 && ratio <= 1.0) || (1.0 / ratio - shuffle).abs() > 1e-9 {
            return Err(Error::config(format!(
                "downsample_ratio {ratio}: the pixel shuffle needs 1 / ratio to be an integer"
            )));
        }
        let strategy = top
            .get("vision_feature_select_strategy")
            .and_then(Value::as_str)
            .unwrap_or("default");
        if strategy != "default" {
            return Err(Error::config(format!(
                "vision_feature_select_strategy `{strategy}` is not supported (default: the CLS token dropped)"
            )));
        }
        let num_hidden_layers = raw.num_hidden_layers.unwrap_or(24);
        let feature_layers = match top.get("vision_feature_layer") {
            None | Some(Value::Null) => num_hidden_layers,
            Some(Value::Number(n)) if n.as_i64() == Some(-1) => num_hidden_layers,
            Some(Value::Number(n)) => {
                // `hidden_states[k]`: the embeddings are entry 0, layer i's output entry i + 1.
                let k = n.as_i64().unwrap_or(i64::MAX);
                let l = num_hidden_layers as i64;
                let idx = if k < 0 { l + 1 + k } else { k };
                if !(1..=l).contains(&idx) {
                    return Err(Error::config(format!(
                        "vision_feature_layer {k} is outside the {l} layers"
                    )));
                }
                idx as usize
            }
            Some(other) => {
                return Err(Error::config(format!(
                    "vision_feature_layer {other}: one layer index is supported"
                )))
            }
        };
        let cfg = Self {
            hidden_size: raw.hidden_size.unwrap_or(1024),
            num_hidden_layers,
            num_attention_heads: raw.num_attention_heads.unwrap_or(16),
            intermediate_size: raw.intermediate_size.unwrap_or(4096),
            attention_bias: raw.attention_bias.unwrap_or(false),
            use_qk_norm: raw.use_qk_norm.unwrap_or(false),
            norm_type,
            layer_norm_eps: raw.layer_norm_eps.unwrap_or(1e-6),
            image_size: raw.image_size.map_or(Ok(448), |s| s.square("image_size"))?,
            patch_size: raw.patch_size.map_or(Ok(14), |s| s.square("patch_size"))?,
            num_channels: raw.num_channels.unwrap_or(3),
            use_absolute_position_embeddings: raw.use_absolute_position_embeddings.unwrap_or(true),
            use_mean_pooling: raw.use_mean_pooling.unwrap_or(true),
            shuffle: shuffle as usize,
            feature_layers,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// InternViT-300M-448px as InternVL2-2B uses it (`baseline-npu-anchors.md` A1).
    pub fn internvit_300m() -> Self {
        Self::from_json(
            &serde_json::json!({"attention_bias": true}),
            &serde_json::json!({}),
        )
        .expect("a valid preset")
    }

    pub fn validate(&self) -> Result<()> {
        check("vision hidden_size", self.hidden_size, max::WIDTH)?;
        check(
            "vision num_hidden_layers",
            self.num_hidden_layers,
            max::LAYERS,
        )?;
        check(
            "vision num_attention_heads",
            self.num_attention_heads,
            max::HEADS,
        )?;
        check(
            "vision intermediate_size",
            self.intermediate_size,
            max::WIDTH,
        )?;
        check("image_size", self.image_size, max::IMAGE_SIZE)?;
        check("patch_size", self.patch_size, max::IMAGE_SIZE)?;
        check("num_channels", self.num_channels, max::CHANNELS)?;
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(Error::config(format!(
                "vision hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            )));
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps >= 0.0) {
            return Err(Error::config(format!(
                "invalid layer_norm_eps {}",
                self.layer_norm_eps
            )));
        }
        self.grid(self.image_size).map(|_| ())
    }

    /// The patch grid side for a square `image_size` input, checked to tile the image and to
    /// divide into pixel-shuffle blocks.
    pub fn grid(&self, image_size: usize) -> Result<usize> {
        let (p, s) = (self.patch_size, self.shuffle);
        if !image_size.is_multiple_of(p) {
            return Err(Error::input(format!(
                "image size {image_size} is not a multiple of the patch size {p}"
            )));
        }
        let g = image_size / p;
        if g == 0 || !g.is_multiple_of(s) {
            return Err(Error::input(format!(
                "the {g}x{g} patch grid of a {image_size} px image does not divide into the \
                 pixel shuffle's {s}x{s} blocks"
            )));
        }
        Ok(g)
    }

    /// Visual tokens per image at the config's size.
    pub fn tokens_per_image(&self) -> usize {
        let g = self.image_size / self.patch_size / self.shuffle;
        g * g
    }

    /// Width of a visual token after the pixel shuffle (the projector's input).
    pub fn feature_dim(&self) -> usize {
        self.hidden_size * self.shuffle * self.shuffle
    }

    pub fn summary(&self) -> String {
        let mut s = String::new();
        let g = self.image_size / self.patch_size;
        let _ =
            writeln!(
            s,
            "InternViT: {} layers (features after layer {}), width {}, {} heads, MLP {}, {}{}{}",
            self.num_hidden_layers,
            self.feature_layers,
            self.hidden_size,
            self.num_attention_heads,
            self.intermediate_size,
            match self.norm_type {
                NormType::LayerNorm => "LayerNorm",
                NormType::RmsNorm => "RMSNorm",
            },
            if self.use_qk_norm { ", q/k norm" } else { "" },
            if self.attention_bias { ", qkv bias" } else { "" },
        );
        let _ = writeln!(
            s,
            "  {} px, patch {} ({g}x{g} grid + CLS), pixel shuffle {} -> {} tokens of width {}",
            self.image_size,
            self.patch_size,
            self.shuffle,
            self.tokens_per_image(),
            self.feature_dim()
        );
        s
    }
}
