//! Real architectures known from their config alone (no weights needed): the presets `graph`,
//! `inspect`, `bench`, `npu` and `compare` take.

use crate::error::{Error, Result};
use crate::models::autoneural::{AutoNeuralConfig, TextConfig, VisionTower, VISION_ROOT};
use crate::models::internvl::InternVitConfig;
use crate::models::lfm2::Lfm2Config;
use crate::models::llama::LlamaConfig;
use crate::models::mobilenetv5::VisionConfig;
use crate::ops::activation::Activation;

/// Real architectures known from their config alone (no weights needed).
pub const PRESETS: &[&str] = &[
    "autoneural-1.5b",
    "internvl2-2b",
    "lfm2-1.2b",
    "lfm2-700m",
    "lfm2-350m",
    "internlm2-1.8b",
];

/// Vision encoders alone, presets `graph` and `npu` also accept.
pub const VISION_PRESETS: &[&str] = &["mobilenetv5_300m_enc", "internvit-300m"];

/// The config of a preset: AutoNeural-1.5B (mobilenetv5_300m_enc + connector + LFM2-1.2B),
/// InternVL2-2B (InternViT-300M-448px + pixel shuffle + LayerNorm/MLP projector + InternLM2-1.8B
/// as a Llama), or a language model alone.
pub fn preset_config(name: &str) -> Result<AutoNeuralConfig> {
    let image_ids = |cfg: &mut AutoNeuralConfig| {
        cfg.image_token_id = 396;
        cfg.image_start_token_id = Some(498);
        cfg.image_end_token_id = Some(499);
    };
    let lfm2 = |text, model_type| AutoNeuralConfig::text_only(model_type, TextConfig::Lfm2(text));
    Ok(match name {
        "autoneural-1.5b" => {
            let mut cfg = lfm2(Lfm2Config::lfm2_1_2b(), "autoneural");
            cfg.vision = Some(VisionTower::MobileNetV5(
                VisionConfig::mobilenetv5_300m_enc(),
            ));
            // Connector width is not published; 2048 (= the encoder and LM widths) is assumed.
            cfg.projector_hidden_size = 2048;
            image_ids(&mut cfg);
            cfg
        }
        "lfm2-1.2b" => lfm2(Lfm2Config::lfm2_1_2b(), "lfm2"),
        "lfm2-700m" => lfm2(Lfm2Config::lfm2_700m(), "lfm2"),
        "lfm2-350m" => lfm2(Lfm2Config::lfm2_350m(), "lfm2"),
        "internvl2-2b" | "internlm2-1.8b" => {
            let text = LlamaConfig::internlm2_1_8b();
            let vision = (name == "internvl2-2b")
                .then(|| VisionTower::InternVit(InternVitConfig::internvit_300m()));
            AutoNeuralConfig {
                model_type: if vision.is_some() {
                    "internvl"
                } else {
                    "llama"
                }
                .into(),
                vision,
                projector_hidden_size: text.hidden_size,
                text: TextConfig::Llama(text),
                projector_hidden_act: Activation::GeluErf,
                projector_norm_eps: Some(1e-5),
                // InternVL2's `<IMG_CONTEXT>`, `<img>`, `</img>` (baseline-npu-anchors.md A2).
                image_token_id: 92546,
                image_start_token_id: Some(92544),
                image_end_token_id: Some(92545),
                image_norm: None,
            }
        }
        other => {
            return Err(Error::input(format!(
                "unknown preset `{other}` (known: {})",
                PRESETS.join(", ")
            )))
        }
    })
}

/// A vision-encoder preset and the checkpoint root its keys sit under.
pub fn vision_preset(name: &str) -> Result<(VisionTower, &'static str)> {
    Ok(match name {
        "mobilenetv5_300m_enc" => (
            VisionTower::MobileNetV5(VisionConfig::mobilenetv5_300m_enc()),
            VISION_ROOT,
        ),
        "internvit-300m" => (
            VisionTower::InternVit(InternVitConfig::internvit_300m()),
            "model.vision_tower",
        ),
        other => {
            return Err(Error::input(format!(
                "unknown vision preset `{other}` (known: {})",
                VISION_PRESETS.join(", ")
            )))
        }
    })
}
