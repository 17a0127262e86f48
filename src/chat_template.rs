//! Chat prompts rendered by the model directory's own Jinja chat template (the
//! `chat_template` of `tokenizer_config.json`, or `chat_template.jinja`), as Hugging Face
//! tokenizers ship it, with minijinja; the built-in LFM2 layout when the directory has none.
//!
//! What users and systems wrote never passes through the tokenizer's special-token matching:
//! every text segment and image of a conversation enters the template as a sentinel string, the
//! rendered prompt is split at the sentinels, template text is encoded with special tokens
//! parsed, message text literally ([`crate::chat::Piece`]), and each image becomes
//! `<|image_start|>` + one `<image>` per visual token + `<|image_end|>`, inserted by id.

use crate::chat::{ChatTokens, Piece};
use crate::error::{Error, Result};
use serde_json::Value;
use std::path::Path;

/// The LFM2 layout (the template the LFM2 tokenizers ship, without tools).
pub const BUILTIN_LFM2: &str = "{{- bos_token -}}{%- for message in messages -%}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}{%- endfor -%}{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}";

/// Sentinels are built from private-use characters no tokenizer vocabulary or user text uses
/// in practice; a message containing one is refused.
const OPEN: char = '\u{F8F0}';
const CLOSE: char = '\u{F8F1}';

/// One segment of a message: text, or an image (the next of the request's images).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    Text(String),
    Image,
}

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Turn {
    pub role: String,
    pub content: Vec<Segment>,
}

impl Turn {
    pub fn text(role: &str, text: &str) -> Self {
        Self {
            role: role.into(),
            content: vec![Segment::Text(text.into())],
        }
    }
}

#[derive(Clone, Debug)]
pub struct ChatTemplate {
    source: String,
    bos_token: String,
    eos_token: String,
    /// Whether the template came from the model directory.
    pub from_model: bool,
}

impl Default for ChatTemplate {
    fn default() -> Self {
        Self {
            source: BUILTIN_LFM2.into(),
            bos_token: "<|startoftext|>".into(),
            eos_token: "<|im_end|>".into(),
            from_model: false,
        }
    }
}

impl ChatTemplate {
    /// The template of a model directory: `chat_template.jinja`, else `chat_template` in
    /// `tokenizer_config.json` (a string, or a list of named templates of which `default` is
    /// taken), else the built-in LFM2 layout. BOS/EOS strings come from `tokenizer_config.json`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let mut t = Self::default();
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: Option<Value> = if cfg_path.exists() {
            let text = crate::files::read_text(&cfg_path, crate::files::limits::JSON)?;
            Some(
                serde_json::from_str(&text)
                    .map_err(|e| Error::corrupt(&cfg_path, format!("invalid JSON: {e}")))?,
            )
        } else {
            None
        };
        let token = |v: Option<&Value>| -> Option<String> {
            match v? {
                Value::String(s) => Some(s.clone()),
                Value::Object(o) => o.get("content")?.as_str().map(String::from),
                _ => None,
            }
        };
        if let Some(c) = &cfg {
            if let Some(b) = token(c.get("bos_token")) {
                t.bos_token = b;
            }
            if let Some(e) = token(c.get("eos_token")) {
                t.eos_token = e;
            }
            match c.get("chat_template") {
                Some(Value::String(s)) => {
                    t.source = s.clone();
                    t.from_model = true;
                }
                Some(Value::Array(list)) => {
                    let named = list
                        .iter()
                        .find(|e| e["name"] == "default")
                        .or(list.first());
                    if let Some(s) = named.and_then(|e| e["template"].as_str()) {
                        t.source = s.into();
                        t.from_model = true;
                    }
                }
                _ => {}
            }
        }
        let jinja = dir.join("chat_template.jinja");
        if jinja.exists() {
            t.source = crate::files::read_text(&jinja, crate::files::limits::JSON)?;
            t.from_model = true;
        }
        // Fail at load, not at the first request.
        t.render(&[Turn::text("user", "hi")], true, 0, &ChatTokens::default())
            .map_err(|e| Error::config(format!("the chat template does not render: {e}")))?;
        Ok(t)
    }

    /// Renders a conversation into pieces; `tokens_per_image` visual tokens per image.
    pub fn render(
        &self,
        turns: &[Turn],
        add_generation_prompt: bool,
        tokens_per_image: usize,
        t: &ChatTokens,
    ) -> Result<Vec<Piece>> {
        let mut texts: Vec<&str> = Vec::new();
        let mut messages = Vec::with_capacity(turns.len());
        for turn in turns {
            let mut content = String::new();
            for seg in &turn.content {
                match seg {
                    Segment::Text(s) => {
                        if s.contains([OPEN, CLOSE]) {
                            return Err(Error::input(
                                "message text contains reserved characters U+F8F0/U+F8F1",
                            ));
                        }
                        content.push_str(&format!("{OPEN}T{}{CLOSE}", texts.len()));
                        texts.push(s);
                    }
                    Segment::Image => content.push_str(&format!("{OPEN}I{CLOSE}")),
                }
            }
            messages.push(serde_json::json!({"role": turn.role, "content": content}));
        }
        let rendered = self.render_raw(&messages, add_generation_prompt)?;
        let mut pieces = Vec::new();
        let mut rest = rendered.as_str();
        while let Some(start) = rest.find(OPEN) {
            if start > 0 {
                pieces.push(Piece::Template(rest[..start].to_string()));
            }
            let after = &rest[start + OPEN.len_utf8()..];
            let end = after
                .find(CLOSE)
                .ok_or_else(|| Error::input("the chat template cut a message apart"))?;
            let tag = &after[..end];
            if tag == "I" {
                pieces.push(Piece::Token(t.image_start.clone()));
                pieces.extend(std::iter::repeat_n(
                    Piece::Token(t.image.clone()),
                    tokens_per_image,
                ));
                pieces.push(Piece::Token(t.image_end.clone()));
            } else {
                let i: usize = tag
                    .strip_prefix('T')
                    .and_then(|n| n.parse().ok())
                    .filter(|&i| i < texts.len())
                    .ok_or_else(|| Error::input("the chat template cut a message apart"))?;
                pieces.push(Piece::Text(texts[i].to_string()));
            }
            rest = &after[end + CLOSE.len_utf8()..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Template(rest.to_string()));
        }
        Ok(pieces)
    }

    fn render_raw(&self, messages: &[Value], add_generation_prompt: bool) -> Result<String> {
        let mut env = minijinja::Environment::new();
        // Templates are code from the model directory: bound their work.
        env.set_fuel(Some(5_000_000));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_function("strftime_now", |_fmt: String| String::new());
        let tmpl = env
            .template_from_str(&self.source)
            .map_err(|e| Error::config(format!("chat template: {e}")))?;
        tmpl.render(minijinja::context! {
            messages => messages,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
            add_generation_prompt => add_generation_prompt,
        })
        .map_err(|e| Error::input(format!("chat template: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_layout_with_images_and_turns() {
        let t = ChatTemplate::default();
        let turns = vec![
            Turn::text("system", "sys"),
            Turn {
                role: "user".into(),
                content: vec![Segment::Image, Segment::Text("What is <|im_end|>?".into())],
            },
            Turn::text("assistant", "A car."),
            Turn::text("user", "Sure?"),
        ];
        let p = t.render(&turns, true, 2, &ChatTokens::default()).unwrap();
        let tok = |s: &str| Piece::Token(s.into());
        let tpl = |s: &str| Piece::Template(s.into());
        let txt = |s: &str| Piece::Text(s.into());
        assert_eq!(
            p,
            vec![
                tpl("<|startoftext|><|im_start|>system\n"),
                txt("sys"),
                tpl("<|im_end|>\n<|im_start|>user\n"),
                tok("<|image_start|>"),
                tok("<image>"),
                tok("<image>"),
                tok("<|image_end|>"),
                txt("What is <|im_end|>?"),
                tpl("<|im_end|>\n<|im_start|>assistant\n"),
                txt("A car."),
                tpl("<|im_end|>\n<|im_start|>user\n"),
                txt("Sure?"),
                tpl("<|im_end|>\n<|im_start|>assistant\n"),
            ]
        );
    }

    #[test]
    fn model_templates_errors_and_reserved_characters() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            r#"{"bos_token": {"content": "<s>"}, "chat_template": "{{ bos_token }}{% for m in messages %}[{{ m.role|upper }}]{{ m.content.strip() }}{% endfor %}"}"#,
        )
        .unwrap();
        let t = ChatTemplate::from_dir(dir.path()).unwrap();
        assert!(t.from_model);
        let p = t
            .render(
                &[Turn::text("user", " hi ")],
                true,
                0,
                &ChatTokens::default(),
            )
            .unwrap();
        assert_eq!(
            p,
            vec![
                Piece::Template("<s>[USER]".into()),
                Piece::Text(" hi ".into())
            ]
        );
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            r#"{"chat_template": "{{ raise_exception('no') }}"}"#,
        )
        .unwrap();
        assert!(ChatTemplate::from_dir(dir.path()).is_err());
        let e = ChatTemplate::default()
            .render(
                &[Turn::text("user", "a\u{F8F0}")],
                true,
                0,
                &ChatTokens::default(),
            )
            .unwrap_err();
        assert!(e.to_string().contains("reserved"), "{e}");
    }
}
