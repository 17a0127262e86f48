//! Tokenizer (`tokenizer.json` via the `tokenizers` crate) and the LFM2 ChatML prompt with image
//! placeholders.
//!
//! A user prompt may contain `<image>` placeholders, one per image, in order; when it has none,
//! the images go first, before the text (as the LFM2-VL processor does). Each placeholder becomes
//! `<|image_start|>` + one `<image>` per visual token + `<|image_end|>`.

use crate::error::{Error, Result};
use std::path::Path;

/// What the user writes where an image goes.
pub const IMAGE_PLACEHOLDER: &str = "<image>";

#[derive(Clone)]
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
}

impl TextTokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "tokenizer.json not found"),
            ));
        }
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| Error::corrupt(path, format!("cannot read tokenizer: {e}")))?;
        Ok(Self { inner })
    }

    /// Encodes text literally: special-token strings in it become their ids, and nothing (no BOS)
    /// is added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Decodes ids to text, dropping special tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| Error::Tokenizer(e.to_string()))
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

/// Token strings the chat layout is built from.
#[derive(Clone, Debug)]
pub struct ChatTokens {
    pub bos: String,
    pub image: String,
    pub image_start: String,
    pub image_end: String,
}

impl Default for ChatTokens {
    fn default() -> Self {
        Self {
            bos: "<|startoftext|>".into(),
            image: "<image>".into(),
            image_start: "<|image_start|>".into(),
            image_end: "<|image_end|>".into(),
        }
    }
}

/// Renders a single-turn LFM2 chat prompt, expanding image placeholders.
///
/// `<|startoftext|>[<|im_start|>system\n{system}<|im_end|>\n]<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n`
pub fn render_prompt(
    user: &str,
    system: Option<&str>,
    num_images: usize,
    tokens_per_image: usize,
    t: &ChatTokens,
) -> Result<String> {
    let placeholders = user.matches(IMAGE_PLACEHOLDER).count();
    let content = if placeholders == 0 {
        format!("{}{user}", IMAGE_PLACEHOLDER.repeat(num_images))
    } else if placeholders == num_images {
        user.to_string()
    } else {
        return Err(Error::input(format!(
            "the prompt has {placeholders} {IMAGE_PLACEHOLDER} placeholder(s) but {num_images} image(s) were given"
        )));
    };
    let expanded_image = format!(
        "{}{}{}",
        t.image_start,
        t.image.repeat(tokens_per_image),
        t.image_end
    );
    let content = content.replace(IMAGE_PLACEHOLDER, &expanded_image);
    let mut out = t.bos.clone();
    if let Some(sys) = system {
        out.push_str(&format!("<|im_start|>system\n{sys}<|im_end|>\n"));
    }
    out.push_str(&format!(
        "<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n"
    ));
    Ok(out)
}

/// Turns generated token ids into text incrementally, emitting only complete UTF-8 text (a
/// multi-byte character split across tokens is held back until it is whole).
pub struct StreamDecoder<'a> {
    tokenizer: &'a TextTokenizer,
    ids: Vec<u32>,
    emitted: usize,
}

impl<'a> StreamDecoder<'a> {
    pub fn new(tokenizer: &'a TextTokenizer) -> Self {
        Self {
            tokenizer,
            ids: Vec::new(),
            emitted: 0,
        }
    }

    /// Adds a token; returns the newly completed text, if any.
    pub fn push(&mut self, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        self.take(true)
    }

    /// Call once generation has ended: the text still held back (an incomplete character at the
    /// end, decoded lossily as U+FFFD), so the streamed pieces add up to the full decode.
    pub fn finish(&mut self) -> Result<Option<String>> {
        self.take(false)
    }

    /// The decoded text past what was already emitted; with `hold_incomplete`, nothing while it
    /// ends in a partial character.
    fn take(&mut self, hold_incomplete: bool) -> Result<Option<String>> {
        let text = self.tokenizer.decode(&self.ids)?;
        if (hold_incomplete && text.ends_with('\u{FFFD}'))
            || text.len() <= self.emitted
            || !text.is_char_boundary(self.emitted)
        {
            return Ok(None);
        }
        let new = text[self.emitted..].to_string();
        self.emitted = text.len();
        Ok(Some(new))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_expand_in_order_or_go_first() {
        let t = ChatTokens::default();
        let p = render_prompt("Describe.", None, 1, 2, &t).unwrap();
        assert_eq!(
            p,
            "<|startoftext|><|im_start|>user\n<|image_start|><image><image><|image_end|>Describe.<|im_end|>\n<|im_start|>assistant\n"
        );
        let p = render_prompt("A <image> and B <image>?", Some("sys"), 2, 1, &t).unwrap();
        assert!(p.contains("<|im_start|>system\nsys<|im_end|>\n"));
        assert!(p.contains(
            "A <|image_start|><image><|image_end|> and B <|image_start|><image><|image_end|>?"
        ));
        let err = render_prompt("one <image>", None, 2, 1, &t).unwrap_err();
        assert!(err
            .to_string()
            .contains("1 <image> placeholder(s) but 2 image(s)"));
    }
}
