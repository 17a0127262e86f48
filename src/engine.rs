//! One interface over the float pipeline and the integer pipeline, so `run` and `dump` have a
//! single code path: the engine turns images and prompt ids into generated tokens or into the
//! intermediate tensors `dump` writes (dequantized views for the integer path).

use crate::artifact::is_quantized_dir;
use crate::chat::TextTokenizer;
use crate::chat_template::ChatTemplate;
use crate::error::{Error, Result};
use crate::exec::SequenceState;
use crate::generate::{generate_with, Decoder, FloatDecoder, GenerateOptions, Generation};
use crate::models::autoneural::{AutoNeuralConfig, AutoNeuralModel};
use crate::observe::{NoObserver, Observer};
use crate::pipeline::{self, ImageInput, Pipeline, PromptInput};
use crate::quant::calibrate::{CalibrationObserver, CalibrationStats, RangeMethod, DEFAULT_BINS};
use crate::quant::int_model::{IntModel, QDecoder};
use crate::quant::scheme::{Part, Scheme};
use crate::quant::tensor::QTensor;
use crate::tensor::Tensor;
use std::path::Path;
use std::time::Instant;

/// Answer tokens the float model greedily decodes during request-only calibration
/// ([`Engine::quantize_for`]).
const CALIBRATION_ANSWER_TOKENS: usize = 64;

pub enum Engine {
    Float(Box<Pipeline>),
    Integer(Box<IntegerPipeline>),
}

/// The integer model with what it needs around it (no float weights).
pub struct IntegerPipeline {
    pub model: IntModel,
    pub config: AutoNeuralConfig,
    pub tokenizer: TextTokenizer,
    pub template: ChatTemplate,
}

/// Image embeddings ready for the language model, one `[tokens, hidden]` tensor per image.
pub enum ImageEmbeddings {
    Float(Vec<Tensor>),
    /// In the connector's output quantization.
    Integer(Vec<QTensor>),
}

impl ImageEmbeddings {
    /// The embeddings of several encodings in order, for an engine on the integer path or not.
    pub fn join(
        parts: &[std::sync::Arc<ImageEmbeddings>],
        integer: bool,
    ) -> Result<ImageEmbeddings> {
        let mixed = || Error::input("image embeddings from a float and an integer engine");
        if !integer {
            let mut v = Vec::new();
            for p in parts {
                match p.as_ref() {
                    ImageEmbeddings::Float(t) => v.extend(t.iter().cloned()),
                    ImageEmbeddings::Integer(_) => return Err(mixed()),
                }
            }
            Ok(ImageEmbeddings::Float(v))
        } else {
            let mut v = Vec::new();
            for p in parts {
                match p.as_ref() {
                    ImageEmbeddings::Integer(t) => v.extend(t.iter().cloned()),
                    ImageEmbeddings::Float(_) => return Err(mixed()),
                }
            }
            Ok(ImageEmbeddings::Integer(v))
        }
    }
}

/// Tensors of one forward pass, as `dump` writes them.
pub struct Intermediates {
    pub features: Vec<Tensor>,
    pub embeddings: Vec<Tensor>,
    pub logits: Tensor,
}

/// Calibration statistics from one request: `model` encodes `pixels`, then prefills `ids` and
/// greedily decodes up to `answer_tokens` more (stopping at `stops`), all seen by `obs`.
pub fn calibrate_on_request(
    model: &AutoNeuralModel,
    pixels: &[Tensor],
    ids: &[u32],
    stops: &[u32],
    answer_tokens: usize,
    mut obs: CalibrationObserver,
) -> Result<CalibrationStats> {
    observe_request(model, pixels, ids, stops, answer_tokens, &mut obs)?;
    Ok(obs.into_stats())
}

/// [`calibrate_on_request`] into an observer that keeps accumulating (several requests).
pub fn observe_request(
    model: &AutoNeuralModel,
    pixels: &[Tensor],
    ids: &[u32],
    stops: &[u32],
    answer_tokens: usize,
    obs: &mut CalibrationObserver,
) -> Result<()> {
    obs.set_part(Part::Vision);
    let mut embeds = Vec::new();
    for p in pixels {
        embeds.push(model.encode_image(p, obs)?.embeddings);
    }
    obs.set_part(Part::Text);
    let x = model.embed_prompt(ids, &embeds)?;
    let mut state = model.new_state(ids.len() + answer_tokens);
    let opts = GenerateOptions {
        max_new_tokens: answer_tokens,
        stop_tokens: stops.to_vec(),
        sampling: Default::default(),
        context: model.config.text.max_position_embeddings(),
    };
    let mut dec = FloatDecoder {
        lm: &model.text,
        state: &mut state,
        prompt: Some(x),
        obs,
    };
    generate_with(&mut dec, ids.len(), &opts, &mut |_| Ok(()))?;
    Ok(())
}

impl Engine {
    /// A float model directory, or a quantized one (written by `autoneural quantize`).
    pub fn load(dir: &Path) -> Result<Self> {
        if is_quantized_dir(dir) {
            let (model, config) = IntModel::load(dir)?;
            let tokenizer = TextTokenizer::from_file(&dir.join("tokenizer.json"))?;
            let template = ChatTemplate::from_dir(dir)?;
            Ok(Engine::Integer(Box::new(IntegerPipeline {
                model,
                config,
                tokenizer,
                template,
            })))
        } else {
            Ok(Engine::Float(Box::new(Pipeline::load(dir)?)))
        }
    }

    /// Switches a float engine to the integer path for `scheme`, calibrating on this request's
    /// own inputs and the float model's greedy answer to it (quick experiments; `autoneural
    /// quantize` calibrates on a proper set). The answer matters: ranges seen on the prompt alone
    /// can be too narrow for the decoded positions (on the trained cockpit model they clipped
    /// "Two." into "Twooparking sign." even with 16-bit weights and activations).
    pub fn quantize_for(self, scheme: &Scheme, pixels: &[Tensor], ids: &[u32]) -> Result<Self> {
        let Engine::Float(pipe) = self else {
            return Ok(self);
        };
        let stops = pipeline::stop_tokens(&pipe.model.config, &pipe.tokenizer);
        let stats = calibrate_on_request(
            &pipe.model,
            pixels,
            ids,
            &stops,
            CALIBRATION_ANSWER_TOKENS,
            CalibrationObserver::new(DEFAULT_BINS)?,
        )?;
        let model = IntModel::build(&pipe.model, &stats, scheme, None::<RangeMethod>)?;
        Ok(Engine::Integer(Box::new(IntegerPipeline {
            model,
            config: pipe.model.config.clone(),
            tokenizer: pipe.tokenizer,
            template: pipe.template,
        })))
    }

    pub fn config(&self) -> &AutoNeuralConfig {
        match self {
            Engine::Float(p) => &p.model.config,
            Engine::Integer(q) => &q.config,
        }
    }

    pub fn tokenizer(&self) -> &TextTokenizer {
        match self {
            Engine::Float(p) => &p.tokenizer,
            Engine::Integer(q) => &q.tokenizer,
        }
    }

    /// The chat template prompts are rendered with.
    pub fn template(&self) -> &ChatTemplate {
        match self {
            Engine::Float(p) => &p.template,
            Engine::Integer(q) => &q.template,
        }
    }

    pub fn is_integer(&self) -> bool {
        matches!(self, Engine::Integer(_))
    }

    pub fn tokens_per_image(&self) -> usize {
        self.config()
            .vision
            .as_ref()
            .map_or(0, |v| v.tokens_per_image())
    }

    pub fn load_pixels(&self, images: &[ImageInput]) -> Result<Vec<Tensor>> {
        pipeline::load_pixels(self.config(), images)
    }

    pub fn prompt_ids(&self, prompt: &PromptInput, num_images: usize) -> Result<Vec<u32>> {
        pipeline::prompt_ids(
            self.config(),
            self.tokenizer(),
            self.template(),
            prompt,
            num_images,
            self.tokens_per_image(),
        )
    }

    pub fn stop_tokens(&self) -> Vec<u32> {
        pipeline::stop_tokens(self.config(), self.tokenizer())
    }

    /// Encodes the images and generates from the prompt. Returns the generation and the seconds
    /// spent on the vision side.
    pub fn generate(
        &self,
        pixels: &[Tensor],
        ids: &[u32],
        opts: &GenerateOptions,
        on_token: &mut dyn FnMut(u32) -> Result<()>,
    ) -> Result<(Generation, f64)> {
        let t = Instant::now();
        let images = self.encode_images(pixels)?;
        let vision_s = t.elapsed().as_secs_f64();
        Ok((self.generate_from(&images, ids, opts, on_token)?, vision_s))
    }

    /// Runs the vision encoder and connector on each image (once; the result can serve several
    /// prompts, as `eval` does for the questions about one image).
    pub fn encode_images(&self, pixels: &[Tensor]) -> Result<ImageEmbeddings> {
        match self {
            Engine::Float(pipe) => {
                let enc = pipe.encode_images(pixels, &mut NoObserver)?;
                Ok(ImageEmbeddings::Float(
                    enc.into_iter().map(|e| e.embeddings).collect(),
                ))
            }
            Engine::Integer(q) => {
                let mut embeds = Vec::with_capacity(pixels.len());
                for p in pixels {
                    embeds.push(q.model.encode_image(p, &mut NoObserver)?.embeddings);
                }
                Ok(ImageEmbeddings::Integer(embeds))
            }
        }
    }

    /// Generates from a prompt whose image slots take `images` (from [`Engine::encode_images`]
    /// of this engine).
    pub fn generate_from(
        &self,
        images: &ImageEmbeddings,
        ids: &[u32],
        opts: &GenerateOptions,
        on_token: &mut dyn FnMut(u32) -> Result<()>,
    ) -> Result<Generation> {
        self.with_decoder(images, ids, opts, |dec| {
            generate_with(dec, ids.len(), opts, on_token)
        })
        .map(|(_, gen)| gen)
    }

    /// The first half of [`Self::generate_from`] for a caller that steps sequences itself (the
    /// server's batching scheduler): a fresh state sized as `generate_from` sizes it, the prompt
    /// run into it, and the logits of its last position.
    pub fn prefill(
        &self,
        images: &ImageEmbeddings,
        ids: &[u32],
        opts: &GenerateOptions,
    ) -> Result<(SequenceState, Vec<f32>)> {
        self.with_decoder(images, ids, opts, |dec| dec.prefill())
    }

    /// A fresh state for the request (sized by [`request_context`]) and a decoder over it holding
    /// the prompt's embeddings; returns the state after `f` has run the decoder.
    fn with_decoder<R>(
        &self,
        images: &ImageEmbeddings,
        ids: &[u32],
        opts: &GenerateOptions,
        f: impl FnOnce(&mut dyn Decoder) -> Result<R>,
    ) -> Result<(SequenceState, R)> {
        match (self, images) {
            (Engine::Float(pipe), ImageEmbeddings::Float(embeds)) => {
                let x = pipe.model.embed_prompt(ids, embeds)?;
                let mut state = pipe.model.new_state(request_context(ids, opts));
                let r = f(&mut FloatDecoder {
                    lm: &pipe.model.text,
                    state: &mut state,
                    prompt: Some(x),
                    obs: &mut NoObserver,
                })?;
                Ok((state, r))
            }
            (Engine::Integer(q), ImageEmbeddings::Integer(embeds)) => {
                let x = q.model.embed_prompt(ids, embeds)?;
                let mut state = q.model.new_state(request_context(ids, opts));
                let r = f(&mut QDecoder {
                    lm: &q.model.text,
                    state: &mut state,
                    prompt: Some(x),
                })?;
                Ok((state, r))
            }
            _ => Err(Error::input(
                "image embeddings from a float engine cannot feed an integer one (or the reverse)",
            )),
        }
    }

    /// One batched decode step: `tokens[i]` runs as the next position of `states[i]` (states from
    /// [`Self::prefill`]), all in one forward pass; returns each sequence's logits, equal bit for
    /// bit to what a one-sequence step would give it.
    pub fn decode_batch(
        &self,
        tokens: &[u32],
        states: &mut [&mut SequenceState],
    ) -> Result<Vec<Vec<f32>>> {
        let logits = match self {
            Engine::Float(pipe) => pipe
                .model
                .text
                .decode_batch(tokens, states, &mut NoObserver)?,
            Engine::Integer(q) => q
                .model
                .text
                .decode_batch(tokens, states, &mut NoObserver)?
                .dequantize(),
        };
        let vocab = logits.numel() / tokens.len().max(1);
        Ok(logits
            .data()
            .chunks_exact(vocab)
            .map(<[f32]>::to_vec)
            .collect())
    }

    /// Vision features, image embeddings and prompt logits (dequantized on the integer path).
    pub fn intermediates(&self, pixels: &[Tensor], ids: &[u32]) -> Result<Intermediates> {
        self.intermediates_observed(pixels, ids, &mut NoObserver)
    }

    /// [`Self::intermediates`], reporting every node's output to `obs` (dequantized on the
    /// integer path).
    pub fn intermediates_observed(
        &self,
        pixels: &[Tensor],
        ids: &[u32],
        obs: &mut dyn Observer,
    ) -> Result<Intermediates> {
        match self {
            Engine::Float(pipe) => {
                let enc = pipe.encode_images(pixels, obs)?;
                let features = enc.iter().map(|e| e.features.clone()).collect();
                let embeddings: Vec<Tensor> = enc.into_iter().map(|e| e.embeddings).collect();
                let x = pipe.model.embed_prompt(ids, &embeddings)?;
                Ok(Intermediates {
                    features,
                    embeddings,
                    logits: pipe.model.prompt_logits(x, obs)?,
                })
            }
            Engine::Integer(q) => {
                let model = &q.model;
                let mut qe = Vec::new();
                let mut features = Vec::new();
                for p in pixels {
                    let e = model.encode_image(p, obs)?;
                    features.push(e.features.dequantize());
                    qe.push(e.embeddings);
                }
                let embeddings = qe.iter().map(|e| e.dequantize()).collect();
                let x = model.embed_prompt(ids, &qe)?;
                Ok(Intermediates {
                    features,
                    embeddings,
                    logits: model.prompt_logits(x, obs)?.dequantize(),
                })
            }
        }
    }
}

/// The positions one generation request can reach: its prompt and answer, within the context.
fn request_context(ids: &[u32], opts: &GenerateOptions) -> usize {
    opts.context.min(ids.len() + opts.max_new_tokens)
}
