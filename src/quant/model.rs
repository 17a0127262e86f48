//! The integer AutoNeural pipeline: integer encoder + connector + LFM2, built from a float model,
//! calibration statistics and a scheme. Everything between quantizing the input pixels and
//! choosing a token from the integer logits runs in integer arithmetic.

#![deny(clippy::float_arithmetic)]

use crate::error::{Error, Result};
use crate::generate::{generate_with, Decoder, GenerateOptions, Generation};
use crate::models::autoneural::AutoNeuralModel;
use crate::models::legacy::LegacyModel;
use crate::observe::{NoObserver, Observer};
use crate::quant::calibrate::{CalibrationStats, RangeMethod};
use crate::quant::models::connector::QProjector;
use crate::quant::models::lfm2::{QLfm2Cache, QLfm2Model};
use crate::quant::models::mobilenetv5::{map_to_tokens, QMobileNetV5Encoder};
use crate::quant::ops::elementwise::QRequantize;
use crate::quant::prepare;
use crate::quant::scheme::Scheme;
use crate::quant::tensor::QTensor;
use crate::tensor::Tensor;

/// Output of the integer vision side for one image.
pub struct QImageEncoding {
    /// `[tokens, C]` in the encoder's output params.
    pub features: QTensor,
    /// `[tokens, hidden]` in the connector's output params.
    pub embeddings: QTensor,
}

pub struct QAutoNeural {
    pub scheme: Scheme,
    pub vision: Option<(QMobileNetV5Encoder, QProjector)>,
    /// Connector output -> the LM's embedding params (merging image rows into the prompt).
    pub image_to_embed: Option<QRequantize>,
    pub text: QLfm2Model,
    pub image_token_id: u32,
}

impl QAutoNeural {
    /// Builds the integer model. Every part must be integer in `scheme` (a part kept in float
    /// would need float weights in the artifact, which an integer-only model does not carry).
    pub fn build(
        float: &AutoNeuralModel,
        stats: &CalibrationStats,
        scheme: &Scheme,
        method: Option<RangeMethod>,
    ) -> Result<Self> {
        // The hand-written twins are built from the hand-written float modules (until they go).
        let mut legacy = LegacyModel::from_store(float.config.clone(), float.store.clone())?;
        if float.vision.is_none() {
            legacy.vision_tower = None;
            legacy.multi_modal_projector = None;
        }
        let float = &legacy;
        let text_method = method.unwrap_or(RangeMethod::MinMax);
        let text = prepare::lfm2::lfm2(&float.language_model, stats, scheme, text_method)?;
        let (vision, image_to_embed) = match (
            &float.vision_tower,
            &float.multi_modal_projector,
            &float.config.vision,
        ) {
            (Some(enc), Some(proj), Some(vcfg)) => {
                let qenc =
                    prepare::mobilenetv5::encoder(enc, vcfg.image_size, stats, scheme, method)?;
                let qproj = prepare::connector::projector(
                    proj,
                    qenc.output_quant(),
                    stats,
                    scheme,
                    method,
                )?;
                let to_embed =
                    prepare::elementwise::requantize(qproj.output_quant(), text.embed_params())?;
                (Some((qenc, qproj)), Some(to_embed))
            }
            _ => (None, None),
        };
        Ok(Self {
            scheme: scheme.clone(),
            vision,
            image_to_embed,
            text,
            image_token_id: float.config.image_token_id,
        })
    }

    /// Quantizes preprocessed pixels at the edge and runs the integer encoder + connector.
    pub fn encode_image(&self, pixels: &Tensor, obs: &mut dyn Observer) -> Result<QImageEncoding> {
        let Some((enc, proj)) = &self.vision else {
            return Err(Error::input(
                "this is a text-only model: it cannot take images",
            ));
        };
        let x = enc.quantize_pixels(pixels)?;
        let map = enc.forward(&x, obs)?;
        let features = map_to_tokens(&map);
        let embeddings = proj.forward(&features, obs)?;
        Ok(QImageEncoding {
            features,
            embeddings,
        })
    }

    /// Integer token embeddings of `ids` with the `image_token_id` rows replaced, in order, by the
    /// image embeddings (requantized into the embedding params).
    pub fn embed_prompt(&self, ids: &[u32], images: &[QTensor]) -> Result<QTensor> {
        let slots = ids.iter().filter(|&&i| i == self.image_token_id).count();
        let rows: usize = images.iter().map(|t| t.dim(0)).sum();
        if slots != rows && (slots > 0 || !images.is_empty()) {
            return Err(Error::input(format!(
                "the prompt has {slots} image tokens (id {}) but the images give {rows} visual tokens",
                self.image_token_id
            )));
        }
        let mut x = self.text.embed(ids)?;
        if rows == 0 {
            return Ok(x);
        }
        let requant = self
            .image_to_embed
            .as_ref()
            .ok_or_else(|| Error::input("this is a text-only model: it cannot take images"))?;
        let hidden = x.dim(1);
        let mut sources = images.iter().flat_map(|t| t.data.chunks_exact(hidden));
        for (pos, &id) in ids.iter().enumerate() {
            if id == self.image_token_id {
                let row = sources.next().expect("counts checked above");
                requant.apply_slice(row, &mut x.data[pos * hidden..(pos + 1) * hidden]);
            }
        }
        Ok(x)
    }

    pub fn new_cache(&self) -> QLfm2Cache {
        self.text.new_cache()
    }
}

/// The integer LM as a [`Decoder`]: everything runs in integers; only the final logits are
/// dequantized to pick a token (the edge of the integer path; argmax is unaffected).
pub struct QDecoder<'a> {
    pub lm: &'a QLfm2Model,
    pub cache: &'a mut QLfm2Cache,
    pub prompt: Option<QTensor>,
}

impl Decoder for QDecoder<'_> {
    fn cache_len(&self) -> usize {
        self.cache.len()
    }
    fn prefill(&mut self) -> Result<Vec<f32>> {
        let prompt = self
            .prompt
            .take()
            .ok_or_else(|| Error::input("the prompt was already consumed"))?;
        let hidden = self.lm.forward(&prompt, self.cache, &mut NoObserver)?;
        Ok(self.lm.logits_last(&hidden).dequantize().into_data())
    }
    fn step(&mut self, token: u32) -> Result<Vec<f32>> {
        let x = self.lm.embed(&[token])?;
        let hidden = self.lm.forward(&x, self.cache, &mut NoObserver)?;
        Ok(self.lm.logits_last(&hidden).dequantize().into_data())
    }
}

/// Prefill + incremental decode on the integer LM (see [`generate_with`]).
pub fn generate(
    model: &QLfm2Model,
    cache: &mut QLfm2Cache,
    prompt: QTensor,
    opts: &GenerateOptions,
    on_token: &mut dyn FnMut(u32) -> Result<()>,
) -> Result<Generation> {
    let prompt_len = prompt.dim(0);
    let mut dec = QDecoder {
        lm: model,
        cache,
        prompt: Some(prompt),
    };
    generate_with(&mut dec, prompt_len, opts, on_token)
}
