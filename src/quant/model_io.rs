//! Saving and loading a whole integer model ([`QAutoNeural`]) as a self-contained directory.

use super::model::QAutoNeural;
use crate::error::{Error, Result};
use crate::models::autoneural::AutoNeuralConfig;
use crate::quant::artifact::{ArtifactReader, ArtifactWriter};
use crate::quant::models::connector::QProjector;
use crate::quant::models::lfm2::QLfm2Model;
use crate::quant::models::mobilenetv5::QMobileNetV5Encoder;
use crate::quant::ops::elementwise::QRequantize;
use crate::quant::persist::Persist;
use crate::quant::scheme::Scheme;
use std::path::Path;

/// File stem of the integer arrays (`quantized.safetensors`) and their metadata (`quantized.json`).
pub const QUANT_STEM: &str = "quantized";

impl QAutoNeural {
    /// Whether `dir` holds a quantized model (as written by [`QAutoNeural::save`]).
    pub fn is_quantized_dir(dir: &Path) -> bool {
        dir.join(format!("{QUANT_STEM}.safetensors")).is_file()
    }

    /// Writes a self-contained quantized directory: `config.json` (the float config plus a
    /// `quantization` section), the tokenizer files, and the integer arrays + metadata. Returns
    /// the bytes of integer data written.
    pub fn save(&self, dir: &Path, float_dir: &Path) -> Result<usize> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let cfg_path = float_dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
        let mut cfg: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::corrupt(&cfg_path, format!("invalid JSON: {e}")))?;
        cfg["quantization"] = serde_json::json!({
            "scheme": self.scheme.to_string(),
            "format": QUANT_STEM,
            "integer_only": true,
        });
        let out_cfg = dir.join("config.json");
        let pretty = serde_json::to_string_pretty(&cfg).map_err(|e| Error::input(e.to_string()))?;
        std::fs::write(&out_cfg, pretty).map_err(|e| Error::io(&out_cfg, e))?;
        for name in ["tokenizer.json", "tokenizer_config.json"] {
            let src = float_dir.join(name);
            if src.is_file() {
                std::fs::copy(&src, dir.join(name)).map_err(|e| Error::io(&src, e))?;
            }
        }
        let mut w = ArtifactWriter::new();
        if let Some((enc, proj)) = &self.vision {
            enc.save(&mut w, "vision.encoder")?;
            proj.save(&mut w, "vision.connector")?;
        }
        if let Some(r) = &self.image_to_embed {
            r.save(&mut w, "vision.to_embed")?;
        }
        self.text.save(&mut w, "text")?;
        w.meta.insert(
            "model".into(),
            serde_json::json!({"scheme": self.scheme.to_string(), "image_token_id": self.image_token_id, "has_vision": self.vision.is_some()}),
        );
        w.write(dir, QUANT_STEM)?;
        Ok(w.data_bytes())
    }

    /// Loads a directory written by [`QAutoNeural::save`]; no float weights are read. Also
    /// returns the model's config (context length, token ids, image size).
    pub fn load(dir: &Path) -> Result<(Self, AutoNeuralConfig)> {
        let config = AutoNeuralConfig::from_file(&dir.join("config.json"))?;
        let r = ArtifactReader::open(dir, QUANT_STEM)?;
        let meta = r.meta("model")?;
        let scheme_text = meta["scheme"].as_str().ok_or_else(|| {
            Error::corrupt(
                dir.join(format!("{QUANT_STEM}.json")),
                "`model.scheme` missing",
            )
        })?;
        let scheme = Scheme::parse(scheme_text)?;
        let has_vision = meta["has_vision"].as_bool().unwrap_or(false);
        let vision = if has_vision {
            Some((
                QMobileNetV5Encoder::load(&r, "vision.encoder")?,
                QProjector::load(&r, "vision.connector")?,
            ))
        } else {
            None
        };
        let image_to_embed = if has_vision {
            Some(QRequantize::load(&r, "vision.to_embed")?)
        } else {
            None
        };
        let text = QLfm2Model::load(&r, "text")?;
        Ok((
            Self {
                scheme,
                vision,
                image_to_embed,
                text,
                image_token_id: config.image_token_id,
            },
            config,
        ))
    }
}
