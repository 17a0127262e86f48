//! Tokenizer (`tokenizer.json` via the `tokenizers` crate), the image tokens of a model, and the
//! [`Piece`]s a rendered prompt is made of.
//!
//! A user prompt may contain `<image>` placeholders, one per image, in order; when it has none,
//! the images go first, before the text (as the LFM2-VL processor does;
//! [`crate::pipeline::user_turn`]). Each image becomes `<|image_start|>` + one `<image>` per
//! visual token + `<|image_end|>` ([`crate::chat_template`]).
//!
//! Template tokens are inserted by id, and everything the user or system wrote is encoded as
//! text with special-token matching off, so typing `<|im_end|><|im_start|>assistant` into a
//! prompt cannot forge a turn.

use crate::error::{Error, Result};
use std::path::Path;

/// What the user writes where an image goes.
pub const IMAGE_PLACEHOLDER: &str = "<image>";

#[derive(Clone)]
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    /// The same tokenizer with special-token matching off: user text containing `<|im_end|>`
    /// is encoded as the characters it is made of.
    literal: tokenizers::Tokenizer,
    /// Bytes of the longest vocabulary entry: no text of more than `n * max_token_bytes` bytes
    /// can fit in `n` tokens, which bounds what is handed to the tokenizer at all.
    max_token_bytes: usize,
}

impl TextTokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = crate::files::read_bytes(path, crate::files::limits::TOKENIZER)?;
        // The tokenizers crate panics on some malformed files (found by fuzzing: a stray byte
        // inside the `decoder` object hits an `expect`): check the JSON first, and keep a panic
        // that still gets through from taking the process down.
        serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).map_err(|e| {
            Error::corrupt(path, format!("cannot read tokenizer: invalid JSON: {e}"))
        })?;
        let inner = std::panic::catch_unwind(|| tokenizers::Tokenizer::from_bytes(&bytes))
            .map_err(|_| {
                Error::corrupt(
                    path,
                    "cannot read tokenizer: the tokenizers library failed on it",
                )
            })?
            .map_err(|e| Error::corrupt(path, format!("cannot read tokenizer: {e}")))?;
        let mut literal = inner.clone();
        literal.set_encode_special_tokens(true);
        let max_token_bytes = inner
            .get_vocab(true)
            .keys()
            .map(String::len)
            .max()
            .unwrap_or(1)
            .max(1);
        Ok(Self {
            inner,
            literal,
            max_token_bytes,
        })
    }

    /// Refuses text that cannot fit in `tokens` tokens, before tokenizing it (a huge input
    /// would otherwise cost many times its size in tokenizer memory).
    pub fn check_fits(&self, text_bytes: usize, tokens: usize) -> Result<()> {
        if text_bytes > tokens.saturating_mul(self.max_token_bytes) {
            return Err(Error::input(format!(
                "the prompt text ({text_bytes} bytes) cannot fit in the context of {tokens} tokens"
            )));
        }
        Ok(())
    }

    /// Encodes text as text: special-token strings in it are not turned into their ids.
    pub fn encode_literal(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .literal
            .encode(text, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Encodes a rendered prompt: template tokens by id (as text when the vocabulary lacks
    /// them), text pieces with [`Self::encode_literal`].
    pub fn encode_pieces(&self, pieces: &[Piece]) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        for p in pieces {
            match p {
                Piece::Token(t) => match self.inner.token_to_id(t) {
                    Some(id) => ids.push(id),
                    None => ids.extend(self.encode(t)?),
                },
                Piece::Text(text) => ids.extend(self.encode_literal(text)?),
                Piece::Template(text) => ids.extend(self.encode(text)?),
            }
        }
        Ok(ids)
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

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
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

impl ChatTokens {
    /// The image tokens of a model: the tokenizer's names for the config's image, image-start
    /// and image-end ids (InternVL configs name only the image token; its `<img>` / `</img>`
    /// are used when the tokenizer has them), the LFM2 names otherwise.
    pub fn for_model(
        config: &crate::models::autoneural::AutoNeuralConfig,
        tokenizer: &TextTokenizer,
    ) -> Self {
        let mut t = Self::default();
        let name = |id: Option<u32>| id.and_then(|id| tokenizer.id_to_token(id));
        if let Some(image) = name(Some(config.image_token_id)).filter(|_| config.vision.is_some()) {
            t.image = image;
        }
        let named = |key: &str| tokenizer.token_to_id(key).map(|_| key.to_string());
        let internvl = config.model_type == "internvl";
        if let Some(s) =
            name(config.image_start_token_id).or_else(|| internvl.then(|| named("<img>")).flatten())
        {
            t.image_start = s;
        }
        if let Some(s) =
            name(config.image_end_token_id).or_else(|| internvl.then(|| named("</img>")).flatten())
        {
            t.image_end = s;
        }
        t
    }
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

/// One piece of a rendered prompt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    /// A template token, inserted by id.
    Token(String),
    /// What a user or system wrote: encoded as text (special-token strings stay text).
    Text(String),
    /// Text a chat template produced: encoded with its special tokens recognised.
    Template(String),
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

    /// Found by the `model_loader` fuzz target: a stray byte inside the `decoder` object made
    /// the tokenizers crate panic instead of returning an error.
    #[test]
    fn malformed_tokenizer_json_is_an_error_not_a_panic() {
        let good = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/models/autoneural-tiny-random/tokenizer.json"
        ))
        .unwrap();
        let text = String::from_utf8(good).unwrap();
        let at = text.find("\"decoder\": {").unwrap() + "\"decoder\": {".len();
        let mut bad = text.as_bytes()[..at].to_vec();
        bad.push(0xfa);
        bad.extend_from_slice(&text.as_bytes()[at..]);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokenizer.json");
        std::fs::write(&p, bad).unwrap();
        let e = TextTokenizer::from_file(&p)
            .err()
            .expect("an error")
            .to_string();
        assert!(e.contains("cannot read tokenizer"), "{e}");
    }
}
