//! The user-facing pipeline: a loaded model directory (weights + tokenizer) turning images and a
//! prompt into prompt embeddings, used by the CLI's `run` and `dump`.

use crate::chat::{render_pieces, ChatTokens, TextTokenizer};
use crate::error::{Error, Result};
use crate::models::autoneural::{AutoNeuralConfig, AutoNeuralModel, ImageEncoding};
use crate::observe::Observer;
use crate::preprocess;
use crate::tensor::Tensor;
use std::path::{Path, PathBuf};

/// Where an image comes from.
#[derive(Clone, Debug)]
pub enum ImageInput {
    /// An image file, decoded and resized to the model's `image_size`.
    File(PathBuf),
    /// An already preprocessed `[3, H, W]` float32 `.npy` array, used as is.
    Pixels(PathBuf),
}

/// What the language model is asked.
#[derive(Clone, Debug)]
pub enum PromptInput {
    /// User text, wrapped in the chat template with image placeholders expanded.
    Chat {
        user: String,
        system: Option<String>,
    },
    /// Raw token ids, taken literally (no template). Image features replace, in order, the
    /// positions holding `image_token_id`.
    Tokens(Vec<u32>),
}

pub struct Pipeline {
    pub model: AutoNeuralModel,
    pub tokenizer: TextTokenizer,
}

impl Pipeline {
    pub fn load(dir: &Path) -> Result<Self> {
        let model = AutoNeuralModel::load(dir)?;
        let tokenizer = TextTokenizer::from_file(&dir.join("tokenizer.json"))?;
        Ok(Self { model, tokenizer })
    }

    /// Loads and preprocesses the images.
    pub fn load_pixels(&self, images: &[ImageInput]) -> Result<Vec<Tensor>> {
        load_pixels(&self.model.config, images)
    }

    pub fn encode_images(
        &self,
        pixels: &[Tensor],
        obs: &mut dyn Observer,
    ) -> Result<Vec<ImageEncoding>> {
        pixels
            .iter()
            .map(|p| self.model.encode_image(p, obs))
            .collect()
    }

    /// Token ids of the prompt, with `num_images` image slots.
    pub fn prompt_ids(&self, prompt: &PromptInput, num_images: usize) -> Result<Vec<u32>> {
        prompt_ids(
            &self.model.config,
            &self.tokenizer,
            prompt,
            num_images,
            self.model.tokens_per_image(),
        )
    }

    /// Tokens that end generation: the config's EOS plus `<|im_end|>` if the tokenizer has it.
    pub fn stop_tokens(&self) -> Vec<u32> {
        stop_tokens(&self.model.config, &self.tokenizer)
    }
}

/// Loads and preprocesses images for a model with this config (shared by the float and the
/// integer pipelines).
pub fn load_pixels(config: &AutoNeuralConfig, images: &[ImageInput]) -> Result<Vec<Tensor>> {
    if images.is_empty() {
        return Ok(Vec::new());
    }
    let Some(vcfg) = &config.vision else {
        return Err(Error::input(
            "this is a text-only model: it cannot take images",
        ));
    };
    images
        .iter()
        .map(|img| match img {
            ImageInput::File(p) => preprocess::load_image(p, vcfg.image_size),
            ImageInput::Pixels(p) => preprocess::load_pixels_npy(p),
        })
        .collect()
}

/// Token ids of a prompt with `num_images` image slots of `tokens_per_image` tokens each.
pub fn prompt_ids(
    config: &AutoNeuralConfig,
    tokenizer: &TextTokenizer,
    prompt: &PromptInput,
    num_images: usize,
    tokens_per_image: usize,
) -> Result<Vec<u32>> {
    match prompt {
        PromptInput::Tokens(ids) => Ok(ids.clone()),
        PromptInput::Chat { user, system } => {
            tokenizer.check_fits(
                user.len() + system.as_ref().map_or(0, String::len),
                config.text.max_position_embeddings,
            )?;
            let pieces = render_pieces(
                user,
                system.as_deref(),
                num_images,
                tokens_per_image,
                &ChatTokens::default(),
            )?;
            let ids = tokenizer.encode_pieces(&pieces)?;
            let slots = ids.iter().filter(|&&i| i == config.image_token_id).count();
            if num_images > 0 && slots != num_images * tokens_per_image {
                return Err(Error::input(format!(
                    "the tokenizer does not map `<image>` to image_token_id {} (found {slots} image tokens)",
                    config.image_token_id
                )));
            }
            Ok(ids)
        }
    }
}

/// The config's EOS plus `<|im_end|>` if the tokenizer has it.
pub fn stop_tokens(config: &AutoNeuralConfig, tokenizer: &TextTokenizer) -> Vec<u32> {
    let mut stops = vec![config.text.eos_token_id];
    if let Some(id) = tokenizer.token_to_id("<|im_end|>") {
        if !stops.contains(&id) {
            stops.push(id);
        }
    }
    stops
}
