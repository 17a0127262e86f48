//! The hand-written float AutoNeural modules, kept only while the integer twins that are built
//! from them still exist (`quant::prepare::{lfm2, mobilenetv5, connector}`); the engine runs the
//! graph-backed [`super::autoneural::AutoNeuralModel`]. Deleted with the twins.

use crate::error::{Error, Result};
use crate::models::autoneural::{AutoNeuralConfig, ImageEncoding};
use crate::models::lfm2::{Lfm2Cache, Lfm2Model};
use crate::models::mobilenetv5::MobileNetV5Encoder;
use crate::nn::Linear;
use crate::observe::{observe, Observer, OpInput};
use crate::ops::activation::Activation;
use crate::tensor::Tensor;
use crate::weights::{WeightStore, Weights};
use std::path::Path;
use std::sync::Arc;

/// `model.multi_modal_projector`: linear_1 -> activation -> linear_2, with biases and no norm.
pub struct MultiModalProjector {
    pub linear_1: Linear,
    pub act: Activation,
    pub linear_2: Linear,
}

impl MultiModalProjector {
    pub fn load(
        w: &Weights,
        in_dim: usize,
        hidden: usize,
        out_dim: usize,
        act: Activation,
    ) -> Result<Self> {
        Ok(Self {
            linear_1: Linear::load(&w.pp("linear_1"), in_dim, hidden, true)?,
            act,
            linear_2: Linear::load(&w.pp("linear_2"), hidden, out_dim, true)?,
        })
    }

    pub fn param_count(&self) -> usize {
        self.linear_1.param_count() + self.linear_2.param_count()
    }

    /// `[tokens, vision channels] -> [tokens, text hidden]`.
    pub fn forward(&self, x: &Tensor, obs: &mut dyn Observer) -> Tensor {
        observe_rows(obs, "multi_modal_projector.linear_1", x);
        let mut h = self.linear_1.forward(x);
        observe(obs, "multi_modal_projector", "linear_1", &h);
        self.act.apply_inplace(h.data_mut());
        observe(obs, "multi_modal_projector", "act", &h);
        observe_rows(obs, "multi_modal_projector.linear_2", &h);
        let y = self.linear_2.forward(&h);
        observe(obs, "multi_modal_projector", "linear_2", &y);
        y
    }
}

/// Reports the `[tokens, features]` input of linear op `op` to observers that want inputs.
fn observe_rows(obs: &mut dyn Observer, op: &str, x: &Tensor) {
    if obs.wants_inputs() {
        obs.observe_input(
            op,
            OpInput::Tokens {
                x: x.data(),
                tokens: x.dim(0),
                features: x.dim(1),
            },
        );
    }
}

pub struct LegacyModel {
    pub config: AutoNeuralConfig,
    pub vision_tower: Option<MobileNetV5Encoder>,
    pub multi_modal_projector: Option<MultiModalProjector>,
    pub language_model: Lfm2Model,
    pub store: Arc<WeightStore>,
}

impl LegacyModel {
    /// Loads `config.json` and the safetensors weights of a model directory.
    pub fn load(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::io(
                dir,
                std::io::Error::new(std::io::ErrorKind::NotFound, "model directory not found"),
            ));
        }
        let config = AutoNeuralConfig::from_file(&dir.join("config.json"))?;
        let store = Arc::new(WeightStore::open_dir(dir)?);
        Self::from_store(config, store)
    }

    pub fn from_store(config: AutoNeuralConfig, store: Arc<WeightStore>) -> Result<Self> {
        let root = Weights::new(store.clone());
        let (vision_tower, multi_modal_projector, language_model) = match &config.vision {
            None => {
                let lm = Lfm2Model::load(&config.text, &root.pp("model"), Some(&root))?;
                (None, None, lm)
            }
            Some(vcfg) => {
                let encoder =
                    MobileNetV5Encoder::load(vcfg, &root.pp("model.vision_tower.timm_model"))?;
                let projector = MultiModalProjector::load(
                    &root.pp("model.multi_modal_projector"),
                    encoder.out_channels(),
                    config.projector_hidden_size,
                    config.text.hidden_size,
                    config.projector_hidden_act,
                )?;
                let lm =
                    Lfm2Model::load(&config.text, &root.pp("model.language_model"), Some(&root))?;
                (Some(encoder), Some(projector), lm)
            }
        };
        Ok(Self {
            config,
            vision_tower,
            multi_modal_projector,
            language_model,
            store,
        })
    }

    pub fn has_vision(&self) -> bool {
        self.vision_tower.is_some()
    }

    /// Visual tokens each image turns into (0 for a text-only model).
    pub fn tokens_per_image(&self) -> usize {
        self.vision_tower
            .as_ref()
            .map_or(0, |v| v.tokens_per_image())
    }

    /// Runs encoder + MSFA + connector on one preprocessed `[3, H, W]` image.
    pub fn encode_image(&self, pixels: &Tensor, obs: &mut dyn Observer) -> Result<ImageEncoding> {
        let (Some(encoder), Some(projector)) = (&self.vision_tower, &self.multi_modal_projector)
        else {
            return Err(Error::input(
                "this is a text-only model: it cannot take images",
            ));
        };
        let map = encoder.forward(pixels, obs)?; // [C, R, R]
        let (c, hw) = (map.dim(0), map.dim(1) * map.dim(2));
        let features = map.reshape(&[c, hw])?.transpose2d();
        let embeddings = projector.forward(&features, obs);
        Ok(ImageEncoding {
            features,
            embeddings,
        })
    }

    /// Token embeddings of `ids`, with the rows at `image_token_id` positions replaced, in order,
    /// by the rows of `image_embeddings` (one `[tokens, hidden]` tensor per image).
    pub fn embed_prompt(&self, ids: &[u32], image_embeddings: &[Tensor]) -> Result<Tensor> {
        let placeholder = self.config.image_token_id;
        let slots = ids.iter().filter(|&&id| id == placeholder).count();
        let rows: usize = image_embeddings.iter().map(|t| t.dim(0)).sum();
        if slots != rows && (slots > 0 || !image_embeddings.is_empty()) {
            return Err(Error::input(format!(
                "the prompt has {slots} image tokens (id {placeholder}) but {} image(s) give {rows} visual tokens ({} per image)",
                image_embeddings.len(),
                self.tokens_per_image()
            )));
        }
        let mut x = self.language_model.embed(ids)?;
        let hidden = x.dim(1);
        let mut sources = image_embeddings
            .iter()
            .flat_map(|t| t.data().chunks_exact(hidden));
        for (pos, &id) in ids.iter().enumerate() {
            if id == placeholder {
                let row = sources.next().expect("counts checked above");
                x.data_mut()[pos * hidden..(pos + 1) * hidden].copy_from_slice(row);
            }
        }
        Ok(x)
    }

    pub fn new_cache(&self) -> Lfm2Cache {
        self.language_model.new_cache()
    }

    /// Parameter counts per part: (vision, connector, language).
    pub fn param_counts(&self) -> (usize, usize, usize) {
        (
            self.vision_tower.as_ref().map_or(0, |v| v.param_count()),
            self.multi_modal_projector
                .as_ref()
                .map_or(0, |p| p.param_count()),
            self.language_model.param_count(),
        )
    }
}
