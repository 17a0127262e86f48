//! The user-facing pipeline: a loaded model directory (weights + tokenizer) turning images and a
//! prompt into prompt embeddings, used by the CLI's `run` and `dump`.

use crate::chat::{ChatTokens, TextTokenizer, IMAGE_PLACEHOLDER};
use crate::chat_template::{ChatTemplate, Segment, Turn};
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
    /// The directory's chat template (or the built-in LFM2 layout).
    pub template: ChatTemplate,
}

impl Pipeline {
    pub fn load(dir: &Path) -> Result<Self> {
        let model = AutoNeuralModel::load(dir)?;
        let tokenizer = TextTokenizer::from_file(&dir.join("tokenizer.json"))?;
        let template = ChatTemplate::from_dir(dir)?;
        Ok(Self {
            model,
            tokenizer,
            template,
        })
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
            &self.template,
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
            ImageInput::File(p) => {
                let mut t = preprocess::load_image(p, vcfg.image_size())?;
                if let Some(n) = &config.image_norm {
                    n.apply(&mut t);
                }
                Ok(t)
            }
            ImageInput::Pixels(p) => preprocess::load_pixels_npy(p),
        })
        .collect()
}

/// Token ids of a prompt with `num_images` image slots of `tokens_per_image` tokens each.
pub fn prompt_ids(
    config: &AutoNeuralConfig,
    tokenizer: &TextTokenizer,
    template: &ChatTemplate,
    prompt: &PromptInput,
    num_images: usize,
    tokens_per_image: usize,
) -> Result<Vec<u32>> {
    match prompt {
        PromptInput::Tokens(ids) => Ok(ids.clone()),
        PromptInput::Chat { user, system } => {
            tokenizer.check_fits(
                user.len() + system.as_ref().map_or(0, String::len),
                config.text.max_position_embeddings(),
            )?;
            let mut turns = Vec::with_capacity(2);
            if let Some(sys) = system {
                turns.push(Turn::text("system", sys));
            }
            turns.push(user_turn(user, num_images)?);
            let chat_tokens = ChatTokens::for_model(config, tokenizer);
            let pieces = template.render(&turns, true, tokens_per_image, &chat_tokens)?;
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

/// A user message with `num_images` images: at its `<image>` placeholders, one per image in
/// order, or (with none) before the text, as the LFM2-VL processor puts them.
pub fn user_turn(user: &str, num_images: usize) -> Result<Turn> {
    let placeholders = user.matches(IMAGE_PLACEHOLDER).count();
    let mut content = Vec::new();
    if placeholders == 0 {
        content.extend(std::iter::repeat_n(Segment::Image, num_images));
        content.push(Segment::Text(user.to_string()));
    } else if placeholders == num_images {
        for (i, part) in user.split(IMAGE_PLACEHOLDER).enumerate() {
            if i > 0 {
                content.push(Segment::Image);
            }
            if !part.is_empty() {
                content.push(Segment::Text(part.to_string()));
            }
        }
    } else {
        return Err(Error::input(format!(
            "the prompt has {placeholders} {IMAGE_PLACEHOLDER} placeholder(s) but {num_images} image(s) were given"
        )));
    }
    Ok(Turn {
        role: "user".into(),
        content,
    })
}

/// The config's EOS ids plus `<|im_end|>` if the tokenizer has it.
pub fn stop_tokens(config: &AutoNeuralConfig, tokenizer: &TextTokenizer) -> Vec<u32> {
    let mut stops = config.text.eos_token_ids().to_vec();
    if let Some(id) = tokenizer.token_to_id("<|im_end|>") {
        if !stops.contains(&id) {
            stops.push(id);
        }
    }
    stops
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::Piece;

    /// A single-turn prompt as one string (template tokens, template text and message text).
    fn rendered(user: &str, system: Option<&str>, images: usize, per_image: usize) -> String {
        let mut turns = Vec::new();
        if let Some(s) = system {
            turns.push(Turn::text("system", s));
        }
        turns.push(user_turn(user, images).unwrap());
        ChatTemplate::default()
            .render(&turns, true, per_image, &ChatTokens::default())
            .unwrap()
            .into_iter()
            .map(|p| match p {
                Piece::Token(s) | Piece::Text(s) | Piece::Template(s) => s,
            })
            .collect()
    }

    #[test]
    fn placeholders_expand_in_order_or_go_first() {
        assert_eq!(
            rendered("Describe.", None, 1, 2),
            "<|startoftext|><|im_start|>user\n<|image_start|><image><image><|image_end|>Describe.<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(
            rendered("A <image> and B <image>?", Some("sys"), 2, 1),
            "<|startoftext|><|im_start|>system\nsys<|im_end|>\n<|im_start|>user\n\
             A <|image_start|><image><|image_end|> and B <|image_start|><image><|image_end|>?\
             <|im_end|>\n<|im_start|>assistant\n"
        );
        let err = user_turn("one <image>", 2).unwrap_err();
        assert!(err
            .to_string()
            .contains("1 <image> placeholder(s) but 2 image(s)"));
    }
}
