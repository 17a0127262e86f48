//! The integer AutoNeural model: the lowered vision, connector and language-model graphs plus the
//! glue between them (pixels quantized at the edge, image rows requantized into the prompt
//! embeddings). Everything between quantizing the input pixels and choosing a token from the
//! integer logits runs in integer arithmetic.

use crate::artifact::{QuantizedModel, FORMAT_VERSION};
use crate::error::{Error, Result};
use crate::exec::{IntProgram, QVal, SequenceState};
use crate::generate::Decoder;
use crate::models::autoneural::{
    check_image_rows, merge_image_rows, AutoNeuralConfig, AutoNeuralModel,
};
use crate::observe::{NoObserver, Observer};
use crate::quant::calibrate::{CalibrationStats, RangeMethod};
use crate::quant::lower::{lower, lower_with_pixels, PIXELS};
use crate::quant::ops::elementwise::QRequantize;
use crate::quant::params::ActQuant;
use crate::quant::prepare::elementwise::requantize;
use crate::quant::scheme::{Part, Scheme};
use crate::quant::tensor::QTensor;
use crate::tensor::Tensor;
use std::path::Path;

/// Output of the integer vision side for one image.
pub struct QImageEncoding {
    /// `[tokens, C]` in the encoder's output quantization.
    pub features: QTensor,
    /// `[tokens, hidden]` in the connector's output quantization.
    pub embeddings: QTensor,
}

/// The integer vision side: the encoder lowered for one input size, the connector, and the
/// requantization of its rows into the language model's embedding quantization.
pub struct IntVision {
    pub image_size: usize,
    pub encoder: IntProgram,
    pub connector: IntProgram,
    pub to_embed: QRequantize,
}

pub struct IntModel {
    pub scheme: Scheme,
    pub vision: Option<IntVision>,
    /// The language model (ports `ids`, `embeds`, `hidden`, `logits`).
    pub text: IntProgram,
    pub image_token_id: u32,
    /// The most positions a sequence may hold (`max_position_embeddings`).
    pub max_positions: usize,
}

impl IntModel {
    /// Lowers every part of `float` for `scheme` (all parts must be integer: a part kept in
    /// float would need float weights in an integer-only model). `method`: activation range
    /// method (`None`: each part's default).
    pub fn build(
        float: &AutoNeuralModel,
        stats: &CalibrationStats,
        scheme: &Scheme,
        method: Option<RangeMethod>,
    ) -> Result<Self> {
        warn_unmatched_overrides(float, scheme);
        let text = IntProgram::new(lower(&float.text, Part::Text, stats, scheme, method, &[])?);
        let vision = match &float.vision {
            None => None,
            Some(v) => {
                let pixels = float
                    .config
                    .image_norm
                    .as_ref()
                    .map_or(PIXELS, |n| n.range());
                let encoder = IntProgram::new(lower_with_pixels(
                    &v.encoder,
                    Part::Vision,
                    stats,
                    scheme,
                    method,
                    &[],
                    pixels,
                )?);
                let features = encoder.quant(encoder.graph.port("features")?)?;
                let input = [(v.connector.graph.port("features")?, features)];
                let connector = IntProgram::new(lower(
                    &v.connector,
                    Part::Connector,
                    stats,
                    scheme,
                    method,
                    &input,
                )?);
                let out = connector.quant(connector.graph.port("embeddings")?)?;
                let embeds = text.quant(text.graph.port("embeds")?)?;
                Some(IntVision {
                    image_size: v.config.image_size(),
                    encoder,
                    connector,
                    to_embed: requantize(out, embeds)?,
                })
            }
        };
        Ok(Self {
            scheme: scheme.clone(),
            vision,
            text,
            image_token_id: float.config.image_token_id,
            max_positions: float.config.text.max_position_embeddings(),
        })
    }

    /// Writes a self-contained quantized directory (see [`QuantizedModel::save`]); returns the
    /// bytes of integer arrays written.
    pub fn save(&self, dir: &Path, float_dir: &Path) -> Result<usize> {
        let v = self.vision.as_ref();
        QuantizedModel {
            format_version: FORMAT_VERSION,
            scheme: self.scheme.to_string(),
            image_size: v.map(|v| v.image_size),
            vision: v.map(|v| v.encoder.graph.clone()),
            connector: v.map(|v| v.connector.graph.clone()),
            image_to_embed: v.map(|v| v.to_embed.clone()),
            text: self.text.graph.clone(),
        }
        .save(dir, float_dir)
    }

    /// Loads (and validates) a directory written by [`Self::save`]; no float weights are read.
    pub fn load(dir: &Path) -> Result<(Self, AutoNeuralConfig)> {
        let (q, config) = QuantizedModel::load(dir)?;
        let vision = match (q.vision, q.connector, q.image_to_embed, q.image_size) {
            (Some(encoder), Some(connector), Some(to_embed), Some(image_size)) => Some(IntVision {
                image_size,
                encoder: IntProgram::new(encoder),
                connector: IntProgram::new(connector),
                to_embed,
            }),
            _ => None,
        };
        let model = Self {
            scheme: Scheme::parse(&q.scheme)?,
            vision,
            text: IntProgram::new(q.text),
            image_token_id: config.image_token_id,
            max_positions: config.text.max_position_embeddings(),
        };
        Ok((model, config))
    }

    /// The quantization pixels enter the encoder in.
    pub fn pixel_quant(&self) -> Result<ActQuant> {
        let v = self.vision.as_ref().ok_or_else(text_only)?;
        v.encoder.quant(v.encoder.graph.port("pixels")?)
    }

    /// Quantizes preprocessed `[3, S, S]` pixels at the edge and runs encoder + connector.
    pub fn encode_image(&self, pixels: &Tensor, obs: &mut dyn Observer) -> Result<QImageEncoding> {
        let v = self.vision.as_ref().ok_or_else(text_only)?;
        let g = &v.encoder.graph;
        let px = g.port("pixels")?;
        let want: Vec<usize> = g.value(px).shape.iter().filter_map(|d| d.fixed()).collect();
        if pixels.shape() != want.as_slice() {
            let s = v.image_size;
            return Err(Error::input(format!(
                "the integer encoder was converted for {want:?} pixels, got {:?}; resize the \
                 image to {s}x{s} or convert the model for this size",
                pixels.shape()
            )));
        }
        let x = QTensor::quantize(pixels, self.pixel_quant()?);
        let features =
            one(v
                .encoder
                .run(vec![(px, QVal::Q(x))], &[g.port("features")?], None, obs)?);
        let c = &v.connector.graph;
        let embeddings = one(v.connector.run(
            vec![(c.port("features")?, QVal::Q(features.clone()))],
            &[c.port("embeddings")?],
            None,
            obs,
        )?);
        Ok(QImageEncoding {
            features,
            embeddings,
        })
    }

    /// Integer token embeddings of `ids` with the `image_token_id` rows replaced, in order, by
    /// the image embeddings (requantized into the embedding quantization).
    pub fn embed_prompt(&self, ids: &[u32], images: &[QTensor]) -> Result<QTensor> {
        let rows: Vec<&[i16]> = images.iter().map(|t| t.data.as_slice()).collect();
        let hidden = self.text.graph.value(self.text.graph.port("embeds")?).shape[1];
        let hidden = hidden.fixed().unwrap_or(1);
        check_image_rows(ids, self.image_token_id, &rows, hidden)?;
        let mut x = self.embed(ids)?;
        if images.is_empty() {
            return Ok(x);
        }
        let requant = &self.vision.as_ref().ok_or_else(text_only)?.to_embed;
        merge_image_rows(
            ids,
            self.image_token_id,
            &mut x.data,
            hidden,
            &rows,
            |s, d| requant.apply_slice(s, d),
        );
        Ok(x)
    }

    /// `embed_tokens(ids)` in the embedding quantization.
    pub fn embed(&self, ids: &[u32]) -> Result<QTensor> {
        self.text.embed(ids)
    }

    /// Teacher-forced integer logits of every row of the prompt embeddings `x` from a fresh
    /// state; the observer sees every op, the head included.
    pub fn prompt_logits(&self, x: QTensor, obs: &mut dyn Observer) -> Result<QTensor> {
        let mut state = self.new_state(x.dim(0));
        self.text.logits(QVal::Q(x), &mut state, obs)
    }

    /// A fresh decode state for up to `context` positions (at most `max_positions`).
    pub fn new_state(&self, context: usize) -> SequenceState {
        self.text.new_state(context.min(self.max_positions))
    }
}

/// The integer LM as a [`Decoder`]: everything runs in integers; only the final logits are
/// dequantized to pick a token (the edge of the integer path; argmax is unaffected).
pub struct QDecoder<'a> {
    pub lm: &'a IntProgram,
    pub state: &'a mut SequenceState,
    pub prompt: Option<QTensor>,
}

impl Decoder for QDecoder<'_> {
    fn cache_len(&self) -> usize {
        self.state.len()
    }
    fn prefill(&mut self) -> Result<Vec<f32>> {
        let prompt = self
            .prompt
            .take()
            .ok_or_else(|| Error::input("the prompt was already consumed"))?;
        let g = &self.lm.graph;
        let hidden = g.port("hidden")?;
        let h = one(self.lm.run(
            vec![(g.port("embeds")?, QVal::Q(prompt))],
            &[hidden],
            Some(self.state),
            &mut NoObserver,
        )?);
        let t = h.dim(0);
        let d = h.numel() / t.max(1);
        let last = QTensor::new(&[1, d], h.data[(t - 1) * d..].to_vec(), h.q);
        let logits = one(self.lm.run(
            vec![(hidden, QVal::Q(last))],
            &[g.port("logits")?],
            None,
            &mut NoObserver,
        )?);
        Ok(logits.dequantize().into_data())
    }
    fn step(&mut self, token: u32) -> Result<Vec<f32>> {
        let g = &self.lm.graph;
        let logits = one(self.lm.run(
            vec![(g.port("ids")?, QVal::Ids(vec![token]))],
            &[g.port("logits")?],
            Some(self.state),
            &mut NoObserver,
        )?);
        Ok(logits.dequantize().into_data())
    }
}

fn text_only() -> Error {
    Error::input("this is a text-only model: it cannot take images")
}

fn one(mut v: Vec<QTensor>) -> QTensor {
    v.pop().expect("one output requested")
}

/// An override whose pattern matches no op of the model is almost always a typo: say so.
fn warn_unmatched_overrides(float: &AutoNeuralModel, scheme: &Scheme) {
    let mut ops: Vec<(Part, &str)> = float
        .text
        .graph
        .nodes
        .iter()
        .map(|n| (Part::Text, n.name.as_str()))
        .collect();
    if let Some(v) = &float.vision {
        ops.extend(
            v.encoder
                .graph
                .nodes
                .iter()
                .map(|n| (Part::Vision, n.name.as_str())),
        );
        ops.extend(
            v.connector
                .graph
                .nodes
                .iter()
                .map(|n| (Part::Connector, n.name.as_str())),
        );
    }
    for o in &scheme.overrides {
        if !ops.iter().any(|(p, name)| o.matches(*p, name)) {
            tracing::warn!(
                "override pattern `{}`{} matches no op of the model; it has no effect",
                o.pattern,
                o.part.map(|p| format!(" (part {p})")).unwrap_or_default()
            );
        }
    }
}
