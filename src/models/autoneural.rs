//! The AutoNeural vision-language model: MobileNetV5 encoder -> normalization-free MLP connector
//! -> LFM2 language model. Also loads a plain LFM2 checkpoint as a text-only model.
//!
//! Checkpoint layout (Hugging Face composite naming, so real parts drop in):
//! `model.vision_tower.timm_model.<timm keys>`, `model.multi_modal_projector.linear_{1,2}.*`,
//! `model.language_model.<LFM2 keys without "model.">`, optional `lm_head.weight`.

use crate::error::{Error, Result};
use crate::exec::{FloatProgram, SequenceState, Val};
use crate::graph::builder::FromConfig;
use crate::graph::{Graph, WeightSource};
use crate::models::connector;
use crate::models::lfm2::{self, Lfm2Config};
use crate::models::mobilenetv5::{self, VisionConfig};
use crate::observe::Observer;
use crate::ops::activation::Activation;
use crate::tensor::Tensor;
use crate::weights::WeightStore;
use serde_json::Value;
use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;

/// Parsed `config.json` of an AutoNeural (or plain LFM2) model directory.
#[derive(Clone, Debug)]
pub struct AutoNeuralConfig {
    /// `None` for a plain LFM2 (text-only) checkpoint.
    pub vision: Option<VisionConfig>,
    pub text: Lfm2Config,
    pub projector_hidden_size: usize,
    pub projector_hidden_act: Activation,
    pub image_token_id: u32,
    pub image_start_token_id: u32,
    pub image_end_token_id: u32,
}

impl AutoNeuralConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = crate::files::read_text(path, crate::files::limits::JSON)?;
        let json: Value = serde_json::from_str(&text)
            .map_err(|e| Error::corrupt(path, format!("invalid JSON: {e}")))?;
        Self::from_json(&json)
    }

    pub fn from_json(json: &Value) -> Result<Self> {
        let model_type = json.get("model_type").and_then(Value::as_str).unwrap_or("");
        match model_type {
            "lfm2" => Ok(Self {
                vision: None,
                text: Lfm2Config::from_json(json)?,
                projector_hidden_size: 0,
                projector_hidden_act: Activation::GeluErf,
                image_token_id: 396,
                image_start_token_id: 498,
                image_end_token_id: 499,
            }),
            "autoneural" => {
                let vision_json = json
                    .get("vision_config")
                    .ok_or_else(|| Error::config("missing `vision_config`"))?;
                let vision: VisionConfig = serde_json::from_value(vision_json.clone())
                    .map_err(|e| Error::config(format!("vision_config: {e}")))?;
                let text_json = json
                    .get("text_config")
                    .ok_or_else(|| Error::config("missing `text_config`"))?;
                let text = Lfm2Config::from_json(text_json)?;
                let get_u = |key: &str| -> Result<u64> {
                    json.get(key)
                        .and_then(Value::as_u64)
                        .ok_or_else(|| Error::config(format!("missing or non-integer `{key}`")))
                };
                let act_name = json
                    .get("projector_hidden_act")
                    .and_then(Value::as_str)
                    .unwrap_or("gelu");
                let projector_hidden_act = Activation::from_hf_name(act_name).ok_or_else(|| {
                    Error::config(format!("unsupported projector_hidden_act `{act_name}`"))
                })?;
                // Token ids beyond u32 would otherwise wrap to a different, valid id.
                let get_id = |key: &str| -> Result<u32> {
                    let v = get_u(key)?;
                    u32::try_from(v)
                        .map_err(|_| Error::config(format!("`{key}` {v} is not a valid token id")))
                };
                let projector_hidden_size = get_u("projector_hidden_size")?;
                crate::models::limits::check(
                    "projector_hidden_size",
                    usize::try_from(projector_hidden_size).unwrap_or(usize::MAX),
                    crate::models::limits::WIDTH,
                )?;
                let cfg = Self {
                    vision: Some(vision),
                    text,
                    projector_hidden_size: projector_hidden_size as usize,
                    projector_hidden_act,
                    image_token_id: get_id("image_token_id")?,
                    image_start_token_id: get_id("image_start_token_id")?,
                    image_end_token_id: get_id("image_end_token_id")?,
                };
                let vocab = cfg.text.vocab_size as u64;
                for (k, id) in [
                    ("image_token_id", cfg.image_token_id),
                    ("image_start_token_id", cfg.image_start_token_id),
                    ("image_end_token_id", cfg.image_end_token_id),
                ] {
                    if id as u64 >= vocab {
                        return Err(Error::config(format!(
                            "{k} {id} is outside the vocabulary ({vocab})"
                        )));
                    }
                }
                Ok(cfg)
            }
            other => Err(Error::config(format!(
                "unsupported model_type `{other}` (expected `autoneural` or `lfm2`)"
            ))),
        }
    }
}

/// Output of the vision side for one image.
pub struct ImageEncoding {
    /// Encoder + MSFA output as `[tokens, channels]` (row-major over the output grid).
    pub features: Tensor,
    /// After the connector: `[tokens, text hidden]`.
    pub embeddings: Tensor,
}

/// Checkpoint roots of the three parts.
pub const VISION_ROOT: &str = "model.vision_tower.timm_model";
pub const CONNECTOR_ROOT: &str = "model";

/// The checkpoint root of the language model: `model.language_model` inside AutoNeural, `model`
/// in a plain LFM2 checkpoint.
pub fn text_root(config: &AutoNeuralConfig) -> &'static str {
    if config.vision.is_some() {
        "model.language_model"
    } else {
        "model"
    }
}

/// The vision side: the encoder graph at the config's image size (graphs for other sizes are
/// built on demand and share its weights) and the connector.
pub struct FloatVision {
    pub config: VisionConfig,
    pub encoder: FloatProgram,
    pub connector: FloatProgram,
}

/// The float AutoNeural model (or a plain LFM2 one) as graph programs over its weights.
pub struct AutoNeuralModel {
    pub config: AutoNeuralConfig,
    pub store: Arc<WeightStore>,
    /// The language model (ports `ids`, `embeds`, `hidden`, `logits`).
    pub text: FloatProgram,
    pub vision: Option<FloatVision>,
}

impl AutoNeuralModel {
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
        // Weights are decoded to f32: refuse a checkpoint this machine cannot hold before
        // decoding any of it.
        crate::models::limits::check_memory(store.f32_bytes(), "its float32 weights")?;
        Self::from_store(config, store)
    }

    pub fn from_store(config: AutoNeuralConfig, store: Arc<WeightStore>) -> Result<Self> {
        let (text, vision) =
            Self::programs(&config, store.as_ref(), |g| FloatProgram::load(g, &store))?;
        Ok(Self {
            config,
            store,
            text,
            vision,
        })
    }

    /// A model of `config`'s shapes over deterministic pseudo-random weights
    /// ([`FloatProgram::random`]), for benchmarks of real architectures without a checkpoint. It
    /// has no weight store, so it encodes images at the config's size only.
    pub fn random(config: AutoNeuralConfig, seed: u64) -> Result<Self> {
        let (text, vision) =
            Self::programs(&config, &FromConfig, |g| FloatProgram::random(g, seed))?;
        Ok(Self {
            config,
            store: Arc::new(WeightStore::empty()),
            text,
            vision,
        })
    }

    /// The part graphs of `config` (optional weights as `src` says), each made a program by
    /// `program` (loaded from a checkpoint, or generated).
    fn programs(
        config: &AutoNeuralConfig,
        src: &dyn WeightSource,
        program: impl Fn(Graph) -> Result<FloatProgram>,
    ) -> Result<(FloatProgram, Option<FloatVision>)> {
        let text = program(lfm2::graph::build(&config.text, src, text_root(config))?)?;
        let vision = match &config.vision {
            None => None,
            Some(v) => {
                let size = (v.image_size, v.image_size);
                let encoder = program(mobilenetv5::graph::build(v, src, VISION_ROOT, size)?)?;
                let features = encoder.graph.value(encoder.graph.port("features")?);
                let in_dim = features.shape[1].fixed().unwrap_or(0);
                let connector = connector::build(
                    in_dim,
                    config.projector_hidden_size,
                    config.text.hidden_size,
                    config.projector_hidden_act,
                    src,
                    CONNECTOR_ROOT,
                )?;
                Some(FloatVision {
                    config: v.clone(),
                    encoder,
                    connector: program(connector)?,
                })
            }
        };
        Ok((text, vision))
    }

    pub fn has_vision(&self) -> bool {
        self.vision.is_some()
    }

    /// Visual tokens each image turns into (0 for a text-only model).
    pub fn tokens_per_image(&self) -> usize {
        self.config
            .vision
            .as_ref()
            .map_or(0, |v| v.msfa_output_resolution * v.msfa_output_resolution)
    }

    /// The encoder program for `[3, h, w]` pixels: the loaded one at the config's size, a new
    /// graph over the same weights otherwise.
    pub fn encoder_for(&self, h: usize, w: usize) -> Result<Cow<'_, FloatProgram>> {
        let v = self.vision.as_ref().ok_or_else(text_only)?;
        if (h, w) == (v.config.image_size, v.config.image_size) {
            return Ok(Cow::Borrowed(&v.encoder));
        }
        let g = mobilenetv5::graph::build(&v.config, self.store.as_ref(), VISION_ROOT, (h, w))?;
        Ok(Cow::Owned(FloatProgram::with_params_of(g, &v.encoder)?))
    }

    /// Runs encoder + MSFA + connector on one preprocessed `[3, H, W]` image.
    pub fn encode_image(&self, pixels: &Tensor, obs: &mut dyn Observer) -> Result<ImageEncoding> {
        let v = self.vision.as_ref().ok_or_else(text_only)?;
        let in_chans = v.encoder.graph.value(v.encoder.graph.port("pixels")?).shape[0];
        if pixels.rank() != 3 || Some(pixels.dim(0)) != in_chans.fixed() {
            return Err(Error::input(format!(
                "vision encoder input must be [{in_chans}, H, W] pixels, got shape {:?}",
                pixels.shape()
            )));
        }
        let enc = self.encoder_for(pixels.dim(1), pixels.dim(2))?;
        let g = &enc.graph;
        let feed = vec![(g.port("pixels")?, Val::F(pixels.clone()))];
        let features = take_one(enc.run(feed, &[g.port("features")?], None, obs)?);
        let c = &v.connector;
        let feed = vec![(c.graph.port("features")?, Val::F(features.clone()))];
        let out = [c.graph.port("embeddings")?];
        let embeddings = take_one(c.run(feed, &out, None, obs)?);
        Ok(ImageEncoding {
            features,
            embeddings,
        })
    }

    /// Token embeddings of `ids`, with the rows at `image_token_id` positions replaced, in order,
    /// by the rows of `image_embeddings` (one `[tokens, hidden]` tensor per image).
    pub fn embed_prompt(&self, ids: &[u32], image_embeddings: &[Tensor]) -> Result<Tensor> {
        let rows: Vec<&[f32]> = image_embeddings.iter().map(|t| t.data()).collect();
        check_image_rows(
            ids,
            self.config.image_token_id,
            &rows,
            self.config.text.hidden_size,
        )?;
        let mut x = self.embed(ids)?;
        let hidden = x.dim(1);
        merge_image_rows(
            ids,
            self.config.image_token_id,
            x.data_mut(),
            hidden,
            &rows,
            |s, d| d.copy_from_slice(s),
        );
        Ok(x)
    }

    /// `embed_tokens(ids)`: `[T, hidden]`.
    pub fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        self.text.embed(ids)
    }

    /// Teacher-forced logits of every row of the prompt embeddings `x` (`[T, hidden]`) from a
    /// fresh state; the observer sees every op, the head included.
    pub fn prompt_logits(&self, x: Tensor, obs: &mut dyn Observer) -> Result<Tensor> {
        let mut state = self.new_state(x.dim(0));
        self.text.logits(Val::F(x), &mut state, obs)
    }

    /// A fresh decode state for up to `context` positions (at most the model's
    /// `max_position_embeddings`).
    pub fn new_state(&self, context: usize) -> SequenceState {
        self.text
            .new_state(context.min(self.config.text.max_position_embeddings))
    }

    /// Parameter counts per part: (vision, connector, language).
    pub fn param_counts(&self) -> (usize, usize, usize) {
        let v = self.vision.as_ref();
        (
            v.map_or(0, |v| v.encoder.graph.param_count()),
            v.map_or(0, |v| v.connector.graph.param_count()),
            self.text.graph.param_count(),
        )
    }
}

/// Checks that the prompt's `placeholder` positions match the images' rows (`[tokens, hidden]`
/// row-major each); the float and integer models share it.
pub(crate) fn check_image_rows<T>(
    ids: &[u32],
    placeholder: u32,
    images: &[&[T]],
    hidden: usize,
) -> Result<()> {
    let slots = ids.iter().filter(|&&id| id == placeholder).count();
    let rows: usize = images.iter().map(|t| t.len() / hidden.max(1)).sum();
    if slots != rows && (slots > 0 || !images.is_empty()) {
        return Err(Error::input(format!(
            "the prompt has {slots} image tokens (id {placeholder}) but {} image(s) give {rows} \
             visual tokens",
            images.len()
        )));
    }
    Ok(())
}

/// Writes the images' rows, in order, over the prompt embeddings `x` (`[T, hidden]`) at the
/// `placeholder` positions; `put(src, dst)` copies (or requantizes) one row. Counts must have
/// passed [`check_image_rows`].
pub(crate) fn merge_image_rows<T>(
    ids: &[u32],
    placeholder: u32,
    x: &mut [T],
    hidden: usize,
    images: &[&[T]],
    mut put: impl FnMut(&[T], &mut [T]),
) {
    let mut sources = images.iter().flat_map(|t| t.chunks_exact(hidden));
    for (pos, &id) in ids.iter().enumerate() {
        if id == placeholder {
            let row = sources.next().expect("counts checked by check_image_rows");
            put(row, &mut x[pos * hidden..(pos + 1) * hidden]);
        }
    }
}

fn text_only() -> Error {
    Error::input("this is a text-only model: it cannot take images")
}

/// The single output of a run.
pub(crate) fn take_one(mut v: Vec<Tensor>) -> Tensor {
    v.pop().expect("one output requested")
}
