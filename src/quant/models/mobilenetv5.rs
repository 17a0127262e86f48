//! Integer MobileNetV5 encoder + Multi-Scale Fusion Adapter: the integer twin of
//! [`crate::models::mobilenetv5::MobileNetV5Encoder`], one integer op per float op, with the float
//! path's observation names (`conv_stem.conv`, `conv_stem.bn`, `conv_stem`,
//! `blocks.1.0.pw_exp.conv`, `blocks.2.9.attn.key.down_conv`, `blocks.2.9.attn.sdpa`,
//! `blocks.2.9.layer_scale`, `blocks.2.9`, `msfa.concat`, `msfa.pool`, `msfa.norm`, ...).
//!
//! | float op                           | integer op                                   |
//! |------------------------------------|----------------------------------------------|
//! | `Conv2d` (timm dynamic "same" pad) | [`QConv2d`] with the padding resolved for the built input size |
//! | `RmsNorm2d`                        | [`QRmsNorm2d`]                               |
//! | GELU (tanh)                        | [`QLut`]                                     |
//! | `LayerScale2d`                     | [`QChannelScale`]                            |
//! | residual add                       | [`QAdd`] (output range: the block's calibrated output) |
//! | MQA `query/key/value/output.proj`  | [`QLinear`] on token-major `[HW, C]` rows    |
//! | MQA SDPA                           | [`QAttention`] (one shared kv head)          |
//! | MSFA nearest resize, concat, pool  | [`QUpsampleNearest`], [`QConcat`], [`QAvgPool2d`] |
//!
//! Shapes are static: an encoder is built for one square input size
//! ([`QMobileNetV5Encoder::image_size`]); other sizes are rejected. Pixels enter the integer path
//! through [`QMobileNetV5Encoder::input_quant`], a fixed quantization of `[0, 1]`.

use crate::error::{Error, Result};
use crate::observe::Observer;
use crate::ops::attention::Mask;
use crate::quant::ops::attention::QAttention;
use crate::quant::ops::conv::QConv2d;
use crate::quant::ops::elementwise::{QAdd, QChannelScale};
use crate::quant::ops::linear::QLinear;
use crate::quant::ops::lut::QLut;
use crate::quant::ops::norm::QRmsNorm2d;
use crate::quant::ops::pool::{QAvgPool2d, QConcat, QUpsampleNearest};
use crate::quant::params::ActQuant;
use crate::quant::tensor::QTensor;
use crate::tensor::Tensor;
use serde::{Deserialize, Serialize};

/// Reports `t` dequantized under `name` when the observer wants tensors.
pub(crate) fn emit(obs: &mut dyn Observer, name: &str, t: &QTensor) {
    if obs.enabled() {
        obs.observe(name, &t.dequantize());
    }
}

fn emit_sub(obs: &mut dyn Observer, prefix: &str, suffix: &str, t: &QTensor) {
    if obs.enabled() {
        obs.observe(&format!("{prefix}.{suffix}"), &t.dequantize());
    }
}

/// Applies a table in place: the values change quantization from `lut.x` to `lut.y`.
fn lut_inplace(lut: &QLut, mut x: QTensor) -> QTensor {
    debug_assert_eq!(x.q, lut.x, "lut input quantization");
    lut.apply_inplace(&mut x.data);
    x.q = lut.y;
    x
}

/// `[C, H, W]` map -> `[H * W, C]` token rows (an integer copy).
pub fn map_to_tokens(x: &QTensor) -> QTensor {
    assert_eq!(x.shape.len(), 3, "map_to_tokens: {:?}", x.shape);
    let (c, hw) = (x.shape[0], x.shape[1] * x.shape[2]);
    let mut data = vec![0i16; c * hw];
    for (ch, plane) in x.data.chunks_exact(hw.max(1)).enumerate() {
        for (p, &v) in plane.iter().enumerate() {
            data[p * c + ch] = v;
        }
    }
    QTensor::new(&[hw, c], data, x.q)
}

/// `[H * W, C]` token rows -> `[C, H, W]` map (an integer copy).
pub fn tokens_to_map(x: &QTensor, h: usize, w: usize) -> QTensor {
    assert_eq!(x.shape.len(), 2, "tokens_to_map: {:?}", x.shape);
    let (hw, c) = (x.shape[0], x.shape[1]);
    assert_eq!(hw, h * w, "tokens_to_map: {hw} tokens for {h}x{w}");
    let mut data = vec![0i16; c * hw];
    for (p, row) in x.data.chunks_exact(c.max(1)).enumerate() {
        for (ch, &v) in row.iter().enumerate() {
            data[ch * hw + p] = v;
        }
    }
    QTensor::new(&[c, h, w], data, x.q)
}

/// timm `ConvNormAct`: conv (`X.conv`) -> RMSNorm (`X.bn`) -> optional GELU (`X`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QConvNormAct {
    pub name: String,
    pub conv: QConv2d,
    pub bn: QRmsNorm2d,
    pub act: Option<QLut>,
}

impl QConvNormAct {
    pub fn forward(&self, x: &QTensor, obs: &mut dyn Observer) -> QTensor {
        let y = self.conv.forward(x);
        emit_sub(obs, &self.name, "conv", &y);
        let y = self.bn.forward(&y);
        emit_sub(obs, &self.name, "bn", &y);
        let y = match &self.act {
            Some(l) => lut_inplace(l, y),
            None => y,
        };
        emit(obs, &self.name, &y);
        y
    }

    /// Output quantization.
    pub fn out_quant(&self) -> ActQuant {
        self.act.as_ref().map_or(self.bn.norm.y, |l| l.y)
    }
}

/// timm `EdgeResidual`: `conv_exp` -> `bn1` -> GELU (`bn1.act`) -> `conv_pwl` -> `bn2`
/// (+ shortcut).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QEdgeResidual {
    pub name: String,
    pub conv_exp: QConv2d,
    pub bn1: QRmsNorm2d,
    pub act1: QLut,
    pub conv_pwl: QConv2d,
    pub bn2: QRmsNorm2d,
    /// The residual add (`a` = `bn2` output, `b` = block input), when the block has a skip.
    pub skip: Option<QAdd>,
}

impl QEdgeResidual {
    pub fn forward(&self, x: &QTensor, obs: &mut dyn Observer) -> QTensor {
        let n = &self.name;
        let h = self.conv_exp.forward(x);
        emit_sub(obs, n, "conv_exp", &h);
        let h = self.bn1.forward(&h);
        emit_sub(obs, n, "bn1", &h);
        let h = lut_inplace(&self.act1, h);
        emit_sub(obs, n, "bn1.act", &h);
        let y = self.conv_pwl.forward(&h);
        drop(h);
        emit_sub(obs, n, "conv_pwl", &y);
        let mut y = self.bn2.forward(&y);
        emit_sub(obs, n, "bn2", &y);
        if let Some(add) = &self.skip {
            y = add.forward(&y, x);
        }
        emit(obs, n, &y);
        y
    }

    pub fn out_quant(&self) -> ActQuant {
        self.skip.as_ref().map_or(self.bn2.norm.y, |a| a.y)
    }
}

/// timm `UniversalInvertedResidual`: [dw_start] -> pw_exp -> [dw_mid] -> pw_proj -> [dw_end]
/// -> [layer_scale] (+ shortcut).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QUniversalInvertedResidual {
    pub name: String,
    pub dw_start: Option<QConvNormAct>,
    pub pw_exp: QConvNormAct,
    pub dw_mid: Option<QConvNormAct>,
    pub pw_proj: QConvNormAct,
    pub dw_end: Option<QConvNormAct>,
    pub layer_scale: Option<QChannelScale>,
    pub skip: Option<QAdd>,
}

impl QUniversalInvertedResidual {
    pub fn forward(&self, x: &QTensor, obs: &mut dyn Observer) -> QTensor {
        let mut h = match &self.dw_start {
            Some(m) => self.pw_exp.forward(&m.forward(x, obs), obs),
            None => self.pw_exp.forward(x, obs),
        };
        if let Some(m) = &self.dw_mid {
            h = m.forward(&h, obs);
        }
        let mut y = self.pw_proj.forward(&h, obs);
        drop(h);
        if let Some(m) = &self.dw_end {
            y = m.forward(&y, obs);
        }
        if let Some(ls) = &self.layer_scale {
            y = ls.forward(&y);
            emit_sub(obs, &self.name, "layer_scale", &y);
        }
        if let Some(add) = &self.skip {
            y = add.forward(&y, x);
        }
        emit(obs, &self.name, &y);
        y
    }

    pub fn out_quant(&self) -> ActQuant {
        if let Some(a) = &self.skip {
            return a.y;
        }
        if let Some(ls) = &self.layer_scale {
            return ls.y;
        }
        self.dw_end
            .as_ref()
            .map_or(self.pw_proj.out_quant(), |m| m.out_quant())
    }
}

/// Key or value branch of the MQA: optional (`down_conv` depthwise strided conv -> `norm`), then
/// `proj` to one head, token-major `[tokens, dim]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QKvProjection {
    pub name: String,
    pub down_conv: Option<QConv2d>,
    pub norm: Option<QRmsNorm2d>,
    /// `[dim, C]` on token rows.
    pub proj: QLinear,
}

impl QKvProjection {
    /// `x`: the normalised block input as a map and as token rows.
    fn forward(&self, x: &QTensor, x_tokens: &QTensor, obs: &mut dyn Observer) -> QTensor {
        let y = match &self.down_conv {
            Some(conv) => {
                let mut d = conv.forward(x);
                emit_sub(obs, &self.name, "down_conv", &d);
                if let Some(n) = &self.norm {
                    d = n.forward(&d);
                    emit_sub(obs, &self.name, "norm", &d);
                }
                self.proj.forward(&map_to_tokens(&d))
            }
            None => self.proj.forward(x_tokens),
        };
        emit_sub(obs, &self.name, "proj", &y);
        y
    }
}

/// timm `MultiQueryAttention2d`: `num_heads` query heads share one key/value head.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QMultiQueryAttention2d {
    pub name: String,
    /// `[heads * key_dim, C]` on token rows.
    pub query_proj: QLinear,
    pub key: QKvProjection,
    pub value: QKvProjection,
    pub sdpa: QAttention,
    /// `[C_out, heads * value_dim]` on token rows.
    pub output_proj: QLinear,
}

impl QMultiQueryAttention2d {
    pub fn forward(&self, x: &QTensor, obs: &mut dyn Observer) -> QTensor {
        let (h, w) = (x.shape[1], x.shape[2]);
        let xt = map_to_tokens(x);
        let q = self.query_proj.forward(&xt);
        emit_sub(obs, &self.name, "query.proj", &q);
        let k = self.key.forward(x, &xt, obs);
        let v = self.value.forward(x, &xt, obs);
        drop(xt);
        let o = self.sdpa.forward(&q, &k, &v, Mask::None);
        drop(q);
        emit_sub(obs, &self.name, "sdpa", &o);
        let y = tokens_to_map(&self.output_proj.forward(&o), h, w);
        emit_sub(obs, &self.name, "output.proj", &y);
        y
    }
}

/// timm `MobileAttention`: `norm` -> `attn` -> [layer_scale] (+ shortcut).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QMobileAttention {
    pub name: String,
    pub norm: QRmsNorm2d,
    pub attn: QMultiQueryAttention2d,
    pub layer_scale: Option<QChannelScale>,
    pub skip: Option<QAdd>,
}

impl QMobileAttention {
    pub fn forward(&self, x: &QTensor, obs: &mut dyn Observer) -> QTensor {
        let n = self.norm.forward(x);
        emit_sub(obs, &self.name, "norm", &n);
        let mut y = self.attn.forward(&n, obs);
        drop(n);
        if let Some(ls) = &self.layer_scale {
            y = ls.forward(&y);
            emit_sub(obs, &self.name, "layer_scale", &y);
        }
        if let Some(add) = &self.skip {
            y = add.forward(&y, x);
        }
        emit(obs, &self.name, &y);
        y
    }

    pub fn out_quant(&self) -> ActQuant {
        if let Some(a) = &self.skip {
            return a.y;
        }
        if let Some(ls) = &self.layer_scale {
            return ls.y;
        }
        self.attn.output_proj.y
    }
}

/// One trunk block.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)]
pub enum QBlock {
    EdgeResidual(QEdgeResidual),
    UniversalInvertedResidual(QUniversalInvertedResidual),
    MobileAttention(QMobileAttention),
}

impl QBlock {
    pub fn forward(&self, x: &QTensor, obs: &mut dyn Observer) -> QTensor {
        match self {
            QBlock::EdgeResidual(b) => b.forward(x, obs),
            QBlock::UniversalInvertedResidual(b) => b.forward(x, obs),
            QBlock::MobileAttention(b) => b.forward(x, obs),
        }
    }

    pub fn name(&self) -> &str {
        match self {
            QBlock::EdgeResidual(b) => &b.name,
            QBlock::UniversalInvertedResidual(b) => &b.name,
            QBlock::MobileAttention(b) => &b.name,
        }
    }

    pub fn out_quant(&self) -> ActQuant {
        match self {
            QBlock::EdgeResidual(b) => b.out_quant(),
            QBlock::UniversalInvertedResidual(b) => b.out_quant(),
            QBlock::MobileAttention(b) => b.out_quant(),
        }
    }
}

/// timm `MobileNetV5MultiScaleFusionAdapter` for fixed input sizes: nearest-resize the smaller
/// taps (`resize.{i}`), `concat`, the UIR `ffn`, `pool` to the output grid, `norm`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QMultiScaleFusionAdapter {
    pub name: String,
    /// Per input: the nearest resize to the first input's size, if it is smaller.
    pub resize: Vec<Option<QUpsampleNearest>>,
    pub concat: QConcat,
    pub ffn: QUniversalInvertedResidual,
    /// Average pooling to the output grid (absent when the map already has that size).
    pub pool: Option<QAvgPool2d>,
    pub norm: QRmsNorm2d,
}

impl QMultiScaleFusionAdapter {
    pub fn forward(&self, inputs: &[QTensor], obs: &mut dyn Observer) -> QTensor {
        assert_eq!(inputs.len(), self.resize.len(), "msfa inputs");
        let mut resized: Vec<Option<QTensor>> = Vec::with_capacity(inputs.len());
        for (i, (x, r)) in inputs.iter().zip(&self.resize).enumerate() {
            resized.push(r.as_ref().map(|r| {
                let y = r.forward(x);
                emit_sub(obs, &self.name, &format!("resize.{i}"), &y);
                y
            }));
        }
        let parts: Vec<&QTensor> = inputs
            .iter()
            .zip(&resized)
            .map(|(x, r)| r.as_ref().unwrap_or(x))
            .collect();
        let cat = self.concat.forward(&parts);
        drop(parts);
        drop(resized);
        emit_sub(obs, &self.name, "concat", &cat);
        let mut y = self.ffn.forward(&cat, obs);
        drop(cat);
        if let Some(p) = &self.pool {
            y = p.forward(&y);
            emit_sub(obs, &self.name, "pool", &y);
        }
        let y = self.norm.forward(&y);
        emit_sub(obs, &self.name, "norm", &y);
        y
    }
}

/// The integer encoder: stem -> stages (up to the last MSFA tap) -> MSFA; see the module docs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QMobileNetV5Encoder {
    /// Side of the square input this encoder was built for.
    pub image_size: usize,
    pub in_chans: usize,
    /// Quantization of the input pixels (a fixed range `[0, 1]`).
    pub input: ActQuant,
    pub conv_stem: QConvNormAct,
    /// The stages that reach the MSFA (later stages are not built: their output is unused).
    pub blocks: Vec<Vec<QBlock>>,
    /// Forward taps feeding the MSFA, ascending: 0 = stem output, `s + 1` = output of stage `s`.
    pub msfa_taps: Vec<usize>,
    pub msfa: QMultiScaleFusionAdapter,
    pub num_features: usize,
    pub output_resolution: usize,
}

impl QMobileNetV5Encoder {
    /// The quantization input pixels must be in ([`Self::quantize_pixels`] applies it).
    pub fn input_quant(&self) -> ActQuant {
        self.input
    }

    /// The quantization of the `[C, R, R]` output.
    pub fn output_quant(&self) -> ActQuant {
        self.msfa.norm.norm.y
    }

    /// Visual tokens per image: `R * R`.
    pub fn tokens_per_image(&self) -> usize {
        self.output_resolution * self.output_resolution
    }

    pub fn out_channels(&self) -> usize {
        self.num_features
    }

    pub fn num_blocks(&self) -> usize {
        self.blocks.iter().map(|s| s.len()).sum()
    }

    fn check_shape(&self, shape: &[usize]) -> Result<()> {
        let s = self.image_size;
        if shape != [self.in_chans, s, s] {
            return Err(Error::input(format!(
                "the integer vision encoder was built for [{}, {s}, {s}] pixels (static shapes), \
                 got {shape:?}; resize the image to {s}x{s} or convert the model for this size",
                self.in_chans
            )));
        }
        Ok(())
    }

    /// Quantizes preprocessed float pixels (`[3, S, S]`, values in `[0, 1]`; values outside
    /// saturate) with [`Self::input_quant`].
    pub fn quantize_pixels(&self, pixels: &Tensor) -> Result<QTensor> {
        self.check_shape(pixels.shape())?;
        Ok(QTensor::quantize(pixels, self.input))
    }

    /// `[3, S, S]` pixels in [`Self::input_quant`] -> `[num_features, R, R]` in
    /// [`Self::output_quant`]. With an enabled observer, every op's output is reported
    /// dequantized under the float path's name.
    pub fn forward(&self, pixels: &QTensor, obs: &mut dyn Observer) -> Result<QTensor> {
        self.check_shape(&pixels.shape)?;
        if pixels.q != self.input {
            return Err(Error::input(format!(
                "input pixels are quantized as {:?}, the encoder expects {:?} (use quantize_pixels)",
                pixels.q, self.input
            )));
        }
        let taps = &self.msfa_taps;
        let last_tap = *taps.last().expect("at least one msfa tap");
        let mut feats: Vec<QTensor> = Vec::with_capacity(taps.len());
        let mut x = self.conv_stem.forward(pixels, obs);
        if taps.contains(&0) {
            feats.push(x.clone());
        }
        for (si, stage) in self.blocks.iter().enumerate() {
            if si + 1 > last_tap {
                break;
            }
            for b in stage {
                x = b.forward(&x, obs);
            }
            if taps.contains(&(si + 1)) {
                feats.push(x.clone());
            }
        }
        drop(x);
        Ok(self.msfa.forward(&feats, obs))
    }

    /// `[C, R, R]` encoder output -> `[R * R, C]` token rows (what the connector takes).
    pub fn feature_tokens(&self, features: &QTensor) -> Result<QTensor> {
        let r = self.output_resolution;
        if features.shape != [self.num_features, r, r] {
            return Err(Error::input(format!(
                "expected integer encoder features [{}, {r}, {r}], got {:?}",
                self.num_features, features.shape
            )));
        }
        Ok(map_to_tokens(features))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_transposes_round_trip() {
        let q = ActQuant {
            scale: 0.5,
            zero_point: 0,
            bits: 16,
        };
        let x = QTensor::new(&[3, 2, 4], (0..24).collect(), q);
        let t = map_to_tokens(&x);
        assert_eq!(t.shape, vec![8, 3]);
        // Token p, channel c = x[c, p].
        assert_eq!(t.data[5 * 3 + 2], x.data[2 * 8 + 5]);
        assert_eq!(tokens_to_map(&t, 2, 4), x);
    }
}
