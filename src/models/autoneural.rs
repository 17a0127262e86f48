//! The vision-language models the engine runs, as part programs over one checkpoint: a vision
//! tower (MobileNetV5 + MSFA, or InternViT + pixel shuffle), a connector (AutoNeural's MLP, or
//! InternVL's LayerNorm + MLP) and a language model (LFM2 or Llama). `model_type` picks the
//! pairing: `autoneural` (MobileNetV5 + LFM2), `internvl` (InternViT + Llama, the paper's
//! baseline), or a plain `lfm2` / `llama` language model (text only). The parts are independent
//! builders, so other pairings are one config away.
//!
//! Checkpoint layouts (Hugging Face naming, so real parts drop in):
//! - AutoNeural: `model.vision_tower.timm_model.<timm keys>`, `model.multi_modal_projector.*`,
//!   `model.language_model.<LFM2 keys without "model.">`, optional `lm_head.weight`.
//! - InternVL, Hub `-hf` layout: `model.vision_tower.*`, `model.multi_modal_projector.*`,
//!   `model.language_model.*`, `lm_head.weight`; as transformers 5 `save_pretrained` writes it:
//!   `vision_tower.*`, `multi_modal_projector.*`, `language_model.model.*`,
//!   `language_model.lm_head.weight`. [`Roots::detect`] finds which one a checkpoint uses.

use crate::error::{Error, Result};
use crate::exec::{FloatProgram, SequenceState, Val};
use crate::graph::builder::FromConfig;
use crate::graph::{Graph, WeightSource};
use crate::models::connector;
use crate::models::internvl::{self, InternVitConfig};
use crate::models::lfm2::{self, Lfm2Config};
use crate::models::llama::{self, LlamaConfig};
use crate::models::mobilenetv5::{self, VisionConfig};
use crate::observe::Observer;
use crate::ops::activation::Activation;
use crate::preprocess::ImageNorm;
use crate::tensor::Tensor;
use crate::weights::WeightStore;
use serde_json::Value;
use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;

/// A vision tower's config.
#[derive(Clone, Debug)]
pub enum VisionTower {
    /// timm `MobileNetV5Encoder` + MSFA (AutoNeural, Gemma 3n).
    MobileNetV5(VisionConfig),
    /// transformers `InternVLVisionModel` + CLS drop + pixel shuffle (InternVL).
    InternVit(InternVitConfig),
}

impl VisionTower {
    /// The square input size the model was trained at (images are resized to it).
    pub fn image_size(&self) -> usize {
        match self {
            VisionTower::MobileNetV5(v) => v.image_size,
            VisionTower::InternVit(v) => v.image_size,
        }
    }

    /// Visual tokens per image at [`Self::image_size`].
    pub fn tokens_per_image(&self) -> usize {
        match self {
            VisionTower::MobileNetV5(v) => v.msfa_output_resolution * v.msfa_output_resolution,
            VisionTower::InternVit(v) => v.tokens_per_image(),
        }
    }

    /// The input size closest to `size` the tower takes: any size for MobileNetV5; for
    /// InternViT a whole number of pixel-shuffle blocks of patches (256 -> 252 for patch 14).
    pub fn nearest_size(&self, size: usize) -> usize {
        match self {
            VisionTower::MobileNetV5(_) => size,
            VisionTower::InternVit(v) => {
                let step = v.patch_size * v.shuffle;
                ((size + step / 2) / step).max(1) * step
            }
        }
    }

    /// The same tower trained at `size` (InternViT: position embeddings for that grid, as a
    /// model fine-tuned at that size has), for shape studies on random weights.
    pub fn at_size(&self, size: usize) -> Self {
        match self {
            VisionTower::MobileNetV5(v) => VisionTower::MobileNetV5(VisionConfig {
                image_size: size,
                ..v.clone()
            }),
            VisionTower::InternVit(v) => VisionTower::InternVit(InternVitConfig {
                image_size: size,
                ..v.clone()
            }),
        }
    }

    /// The encoder graph (ports `pixels`, `features`) for `[3, h, w]` inputs, weights below
    /// `root`.
    pub fn build(
        &self,
        src: &dyn WeightSource,
        root: &str,
        (h, w): (usize, usize),
    ) -> Result<Graph> {
        match self {
            VisionTower::MobileNetV5(v) => mobilenetv5::graph::build(v, src, root, (h, w)),
            VisionTower::InternVit(v) => {
                if h != w {
                    return Err(Error::input(format!(
                        "InternViT takes square images, got {h}x{w}"
                    )));
                }
                internvl::vision::build(v, src, root, h)
            }
        }
    }

    /// A human-readable description for `inspect`.
    pub fn summary(&self) -> Result<String> {
        match self {
            VisionTower::MobileNetV5(v) => Ok(format!(
                "MobileNetV5 + MSFA: input {0}x{0}, MSFA {1:?} -> {2}x{2}x{3}\n{4}",
                v.image_size,
                v.msfa_indices,
                v.msfa_output_resolution,
                v.num_features,
                v.arch()?.summary()
            )),
            VisionTower::InternVit(v) => Ok(v.summary()),
        }
    }
}

/// A language model's config.
#[derive(Clone, Debug)]
pub enum TextConfig {
    Lfm2(Lfm2Config),
    Llama(LlamaConfig),
}

impl TextConfig {
    pub fn hidden_size(&self) -> usize {
        match self {
            TextConfig::Lfm2(c) => c.hidden_size,
            TextConfig::Llama(c) => c.hidden_size,
        }
    }
    pub fn vocab_size(&self) -> usize {
        match self {
            TextConfig::Lfm2(c) => c.vocab_size,
            TextConfig::Llama(c) => c.vocab_size,
        }
    }
    pub fn max_position_embeddings(&self) -> usize {
        match self {
            TextConfig::Lfm2(c) => c.max_position_embeddings,
            TextConfig::Llama(c) => c.max_position_embeddings,
        }
    }
    /// Every end-of-sequence id of the config.
    pub fn eos_token_ids(&self) -> &[u32] {
        match self {
            TextConfig::Lfm2(c) => &c.eos_token_ids,
            TextConfig::Llama(c) => &c.eos_token_ids,
        }
    }
    /// The language-model graph, weights below `roots.text`, an untied head at `roots.head`.
    pub fn build(&self, src: &dyn WeightSource, roots: &Roots) -> Result<Graph> {
        match self {
            TextConfig::Lfm2(c) => lfm2::graph::build_with_head(c, src, &roots.text, &roots.head),
            TextConfig::Llama(c) => llama::graph::build(c, src, &roots.text, &roots.head),
        }
    }
    pub fn summary(&self) -> String {
        match self {
            TextConfig::Lfm2(c) => c.summary(),
            TextConfig::Llama(c) => c.summary(),
        }
    }
    pub fn name(&self) -> &'static str {
        match self {
            TextConfig::Lfm2(_) => "LFM2",
            TextConfig::Llama(_) => "Llama",
        }
    }
}

/// Parsed `config.json` of a model directory.
#[derive(Clone, Debug)]
pub struct AutoNeuralConfig {
    /// `autoneural`, `internvl`, `lfm2` or `llama`.
    pub model_type: String,
    /// `None` for a text-only checkpoint.
    pub vision: Option<VisionTower>,
    pub text: TextConfig,
    pub projector_hidden_size: usize,
    pub projector_hidden_act: Activation,
    /// InternVL's projector starts with a LayerNorm (eps 1e-5); AutoNeural's has none.
    pub projector_norm_eps: Option<f32>,
    pub image_token_id: u32,
    /// The tokens around an image's rows; `None` where the config does not say (InternVL's
    /// `<img>` / `</img>` are then looked up in the tokenizer).
    pub image_start_token_id: Option<u32>,
    pub image_end_token_id: Option<u32>,
    /// Mean/std normalisation of pixels, from `preprocessor_config.json` beside `config.json`.
    pub image_norm: Option<ImageNorm>,
}

/// The image processor's settings, beside `config.json`.
pub const PREPROCESSOR_CONFIG: &str = "preprocessor_config.json";

impl AutoNeuralConfig {
    /// A language model alone (no vision tower, connector or image tokens).
    pub fn text_only(model_type: &str, text: TextConfig) -> Self {
        Self {
            model_type: model_type.to_string(),
            vision: None,
            text,
            projector_hidden_size: 0,
            projector_hidden_act: Activation::GeluErf,
            projector_norm_eps: None,
            image_token_id: 0,
            image_start_token_id: None,
            image_end_token_id: None,
            image_norm: None,
        }
    }

    /// Reads `config.json` and, if present, `preprocessor_config.json` beside it.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = crate::files::read_text(path, crate::files::limits::JSON)?;
        let json: Value = serde_json::from_str(&text)
            .map_err(|e| Error::corrupt(path, format!("invalid JSON: {e}")))?;
        let mut cfg = Self::from_json(&json)?;
        if cfg.vision.is_some() {
            let dir = path.parent().unwrap_or(Path::new("."));
            cfg.image_norm = ImageNorm::from_file(&dir.join(PREPROCESSOR_CONFIG))?;
        }
        Ok(cfg)
    }

    pub fn from_json(json: &Value) -> Result<Self> {
        let model_type = json.get("model_type").and_then(Value::as_str).unwrap_or("");
        let text_only = |text| Self::text_only(model_type, text);
        let get_u = |key: &str| -> Result<u64> {
            json.get(key)
                .and_then(Value::as_u64)
                .ok_or_else(|| Error::config(format!("missing or non-integer `{key}`")))
        };
        // Token ids beyond u32 would otherwise wrap to a different, valid id.
        let get_id = |key: &str| -> Result<u32> {
            let v = get_u(key)?;
            u32::try_from(v)
                .map_err(|_| Error::config(format!("`{key}` {v} is not a valid token id")))
        };
        let opt_id = |key: &str| -> Result<Option<u32>> {
            match json.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(_) => get_id(key).map(Some),
            }
        };
        let sub = |key: &str| -> Result<&Value> {
            json.get(key)
                .ok_or_else(|| Error::config(format!("missing `{key}`")))
        };
        let act = |default: &str| -> Result<Activation> {
            let name = json
                .get("projector_hidden_act")
                .and_then(Value::as_str)
                .unwrap_or(default);
            Activation::from_hf_name(name)
                .ok_or_else(|| Error::config(format!("unsupported projector_hidden_act `{name}`")))
        };
        let cfg = match model_type {
            "lfm2" => return Ok(text_only(TextConfig::Lfm2(Lfm2Config::from_json(json)?))),
            "llama" => return Ok(text_only(TextConfig::Llama(LlamaConfig::from_json(json)?))),
            "autoneural" => {
                let vision: VisionConfig = serde_json::from_value(sub("vision_config")?.clone())
                    .map_err(|e| Error::config(format!("vision_config: {e}")))?;
                let text = text_config(sub("text_config")?, None)?;
                let projector_hidden_size = get_u("projector_hidden_size")?;
                crate::models::limits::check(
                    "projector_hidden_size",
                    usize::try_from(projector_hidden_size).unwrap_or(usize::MAX),
                    crate::models::limits::WIDTH,
                )?;
                Self {
                    model_type: model_type.to_string(),
                    vision: Some(VisionTower::MobileNetV5(vision)),
                    text,
                    projector_hidden_size: projector_hidden_size as usize,
                    projector_hidden_act: act("gelu")?,
                    projector_norm_eps: None,
                    image_token_id: get_id("image_token_id")?,
                    image_start_token_id: Some(get_id("image_start_token_id")?),
                    image_end_token_id: Some(get_id("image_end_token_id")?),
                    image_norm: None,
                }
            }
            "internvl" => {
                let vision = InternVitConfig::from_json(sub("vision_config")?, json)?;
                // The composite's own flag ties `lm_head` to the LM's embeddings (transformers
                // ties by the top-level config; its default is true).
                let tie = json
                    .get("tie_word_embeddings")
                    .and_then(Value::as_bool)
                    .unwrap_or(true);
                let text = text_config(sub("text_config")?, Some(tie))?;
                let hidden = text.hidden_size();
                Self {
                    model_type: model_type.to_string(),
                    vision: Some(VisionTower::InternVit(vision)),
                    text,
                    projector_hidden_size: hidden,
                    projector_hidden_act: act("gelu")?,
                    projector_norm_eps: Some(1e-5),
                    image_token_id: match json.get("image_token_id") {
                        None => 151_667,
                        Some(_) => get_id("image_token_id")?,
                    },
                    image_start_token_id: opt_id("image_start_token_id")?,
                    image_end_token_id: opt_id("image_end_token_id")?,
                    image_norm: None,
                }
            }
            other => {
                return Err(Error::config(format!(
                "unsupported model_type `{other}` (expected autoneural, internvl, lfm2 or llama)"
            )))
            }
        };
        let vocab = cfg.text.vocab_size() as u64;
        for (k, id) in [
            ("image_token_id", Some(cfg.image_token_id)),
            ("image_start_token_id", cfg.image_start_token_id),
            ("image_end_token_id", cfg.image_end_token_id),
        ] {
            if let Some(id) = id.filter(|&id| id as u64 >= vocab) {
                return Err(Error::config(format!(
                    "{k} {id} is outside the vocabulary ({vocab})"
                )));
            }
        }
        Ok(cfg)
    }

    /// The width of the vision features the connector reads.
    pub fn feature_dim(&self, vision: &Graph) -> Result<usize> {
        let features = vision.value(vision.port("features")?);
        Ok(features.shape[1].fixed().unwrap_or(0))
    }

    /// The part graphs of this config at the vision config's image size; `src` answers which
    /// optional weights exist (a checkpoint, or [`FromConfig`]).
    pub fn part_graphs(&self, src: &dyn WeightSource) -> Result<PartGraphs> {
        let roots = Roots::detect(self, src);
        let text = self.text.build(src, &roots)?;
        let vision = match &self.vision {
            None => None,
            Some(v) => {
                let s = v.image_size();
                let encoder = v.build(src, &roots.vision, (s, s))?;
                let connector = connector::build(
                    self.feature_dim(&encoder)?,
                    self.projector_hidden_size,
                    self.text.hidden_size(),
                    self.projector_hidden_act,
                    self.projector_norm_eps,
                    src,
                    &roots.projector,
                )?;
                Some((encoder, connector))
            }
        };
        Ok(PartGraphs {
            roots,
            text,
            vision,
        })
    }
}

/// The language model of a composite config: `text_config.model_type` picks LFM2 (the default,
/// as AutoNeural configs written before the baseline carry none) or Llama, so either vision tower
/// pairs with either LM (the paper's ablations); `tie` overrides the LM's own head tying.
fn text_config(v: &Value, tie: Option<bool>) -> Result<TextConfig> {
    match v.get("model_type").and_then(Value::as_str) {
        None | Some("lfm2") => {
            let mut c = Lfm2Config::from_json(v)?;
            if let Some(t) = tie {
                c.tie_word_embeddings = t;
            }
            Ok(TextConfig::Lfm2(c))
        }
        Some("llama") => {
            let mut c = LlamaConfig::from_json(v)?;
            if let Some(t) = tie {
                c.tie_word_embeddings = t;
            }
            Ok(TextConfig::Llama(c))
        }
        Some(other) => Err(Error::config(format!(
            "text_config model_type \"{other}\" is not supported (lfm2 or llama)"
        ))),
    }
}

/// The part graphs of a config (no weights).
pub struct PartGraphs {
    pub roots: Roots,
    pub text: Graph,
    /// Encoder and connector.
    pub vision: Option<(Graph, Graph)>,
}

/// Where each part's weights sit in a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Roots {
    pub vision: String,
    /// The root under which `multi_modal_projector.*` lies.
    pub projector: String,
    pub text: String,
    /// The full key of an untied output head.
    pub head: String,
}

impl Roots {
    fn new(vision: &str, projector: &str, text: &str, head: &str) -> Self {
        Self {
            vision: vision.into(),
            projector: projector.into(),
            text: text.into(),
            head: head.into(),
        }
    }

    /// The layout of `src` for `config`: for InternVL, the one whose embedding table `src`
    /// holds (the Hub layout when it holds neither, or describes no checkpoint).
    pub fn detect(config: &AutoNeuralConfig, src: &dyn WeightSource) -> Self {
        match (config.model_type.as_str(), config.vision.is_some()) {
            ("internvl", _) => {
                let saved = Self::new(
                    "vision_tower",
                    "",
                    "language_model.model",
                    "language_model.lm_head.weight",
                );
                if src
                    .shape("language_model.model.embed_tokens.weight")
                    .is_some()
                {
                    saved
                } else {
                    Self::new(
                        "model.vision_tower",
                        "model",
                        "model.language_model",
                        "lm_head.weight",
                    )
                }
            }
            (_, true) => Self::new(
                VISION_ROOT,
                CONNECTOR_ROOT,
                "model.language_model",
                "lm_head.weight",
            ),
            (_, false) => Self::new("", "", "model", "lm_head.weight"),
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

/// Checkpoint roots of AutoNeural's vision tower and connector.
pub const VISION_ROOT: &str = "model.vision_tower.timm_model";
pub const CONNECTOR_ROOT: &str = "model";

/// The vision side: the encoder graph at the config's image size (graphs for other sizes are
/// built on demand and share its weights) and the connector.
pub struct FloatVision {
    pub config: VisionTower,
    /// The checkpoint root of the encoder's weights.
    pub root: String,
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
        let parts = config.part_graphs(src)?;
        let text = program(parts.text)?;
        let vision = match (parts.vision, &config.vision) {
            (Some((encoder, connector)), Some(v)) => Some(FloatVision {
                config: v.clone(),
                root: parts.roots.vision,
                encoder: program(encoder)?,
                connector: program(connector)?,
            }),
            _ => None,
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
            .map_or(0, VisionTower::tokens_per_image)
    }

    /// The encoder program for `[3, h, w]` pixels: the loaded one at the config's size, a new
    /// graph over the same weights otherwise.
    pub fn encoder_for(&self, h: usize, w: usize) -> Result<Cow<'_, FloatProgram>> {
        let v = self.vision.as_ref().ok_or_else(text_only)?;
        let s = v.config.image_size();
        if (h, w) == (s, s) {
            return Ok(Cow::Borrowed(&v.encoder));
        }
        let g = v.config.build(self.store.as_ref(), &v.root, (h, w))?;
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
            self.config.text.hidden_size(),
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
            .new_state(context.min(self.config.text.max_position_embeddings()))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::NoObserver;

    fn json(path: &str) -> Value {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    }

    /// Runs one image and a prompt through a random model of `cfg`: logits for every row.
    fn runs_end_to_end(cfg: AutoNeuralConfig) {
        let (tokens, vocab) = (
            cfg.vision.as_ref().unwrap().tokens_per_image(),
            cfg.text.vocab_size(),
        );
        let s = cfg.vision.as_ref().unwrap().image_size();
        let model = AutoNeuralModel::random(cfg.clone(), 3).unwrap();
        let pixels = Tensor::from_parts(&[3, s, s], vec![0.5; 3 * s * s]);
        let e = model.encode_image(&pixels, &mut NoObserver).unwrap();
        assert_eq!(e.embeddings.shape(), [tokens, cfg.text.hidden_size()]);
        let mut ids = vec![cfg.image_token_id; tokens];
        ids.extend([1, 2, 3]);
        let x = model.embed_prompt(&ids, &[e.embeddings]).unwrap();
        let logits = model.prompt_logits(x, &mut NoObserver).unwrap();
        assert_eq!(logits.shape(), [tokens + 3, vocab]);
        assert!(logits.data().iter().all(|v| v.is_finite()));
    }

    /// The paper's ablations: MobileNetV5 + Llama and InternViT + LFM2, assembled from the same
    /// builders by `text_config.model_type`.
    #[test]
    fn either_vision_tower_pairs_with_either_language_model() {
        let autoneural = json("models/autoneural-cockpit-tiny/config.json");
        let internvl = json("tests/golden/internvl_layernorm_p8/model/config.json");

        let mut mnv5_llama = autoneural.clone();
        mnv5_llama["text_config"] = internvl["text_config"].clone();
        mnv5_llama["image_token_id"] = 5.into();
        mnv5_llama["image_start_token_id"] = 6.into();
        mnv5_llama["image_end_token_id"] = 7.into();
        let cfg = AutoNeuralConfig::from_json(&mnv5_llama).unwrap();
        assert!(matches!(
            (&cfg.vision, &cfg.text),
            (Some(VisionTower::MobileNetV5(_)), TextConfig::Llama(_))
        ));
        runs_end_to_end(cfg);

        let mut vit_lfm2 = internvl.clone();
        vit_lfm2["text_config"] = autoneural["text_config"].clone();
        vit_lfm2["image_token_id"] = 5.into();
        vit_lfm2["image_start_token_id"] = 6.into();
        vit_lfm2["image_end_token_id"] = 7.into();
        let cfg = AutoNeuralConfig::from_json(&vit_lfm2).unwrap();
        assert!(matches!(
            (&cfg.vision, &cfg.text),
            (Some(VisionTower::InternVit(_)), TextConfig::Lfm2(_))
        ));
        runs_end_to_end(cfg);
    }

    #[test]
    fn internvl_layouts_are_detected_by_their_keys() {
        let cfg = AutoNeuralConfig::from_json(&json(
            "tests/golden/internvl_layernorm_p8/model/config.json",
        ))
        .unwrap();
        let saved = WeightStore::open_dir(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/internvl_layernorm_p8/model"),
        )
        .unwrap();
        let hub = WeightStore::open_dir(
            &Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/golden/internvl_rms_qknorm_p14/model"),
        )
        .unwrap();
        assert_eq!(Roots::detect(&cfg, &saved).text, "language_model.model");
        assert_eq!(
            Roots::detect(&cfg, &saved).head,
            "language_model.lm_head.weight"
        );
        assert_eq!(Roots::detect(&cfg, &hub).text, "model.language_model");
        assert_eq!(Roots::detect(&cfg, &hub).vision, "model.vision_tower");
    }
}
