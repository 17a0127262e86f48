//! Building the integer MobileNetV5 encoder ([`QMobileNetV5Encoder`]) from the float one, the
//! calibration statistics (keyed by the float path's observed op names) and a [`Scheme`].
//!
//! Quantization choices:
//!
//! - every op's *output* gets its own per-tensor activation quantization from the statistics of
//!   the float op of the same name, at the op's precision ([`Scheme::op_policy`] for
//!   [`Part::Vision`]): A16 symmetric, A8 asymmetric, range chosen by the given
//!   [`RangeMethod`] (default: min-max for A16, MSE for A8, see [`default_range_method`]);
//! - an op's input quantization is its producer's output quantization, so no op requantizes its
//!   input separately: residual adds ([`QAdd`]) take the branch output and the block input as they
//!   are and produce the block's calibrated output range; the MSFA concat ([`QConcat`]) requantizes
//!   each tap into the calibrated `msfa.concat` range; nearest resizes keep their input's;
//! - weights are symmetric per output channel (the scheme's vision policy), min-max at 8 bits
//!   and MSE-clipped below ([`weight_range`]), then re-rounded with GPTQ when the calibration
//!   recorded the op's inputs ([`OpQuantizer::weight`]); the stem bias is kept in accumulator
//!   units;
//! - GELU is a [`crate::quant::ops::lut::QLut`] from the norm's output range to the activation's;
//! - input pixels use a fixed quantization of `[0, 1]` ([`pixel_quant`]) at the stem conv's
//!   activation width.
//!
//! The encoder is built for one input size: timm's dynamic "same" padding and the MSFA's resize
//! and pooling are resolved from it.

use super::attention::attention as prep_attention;
use super::conv::conv2d_from_quantized;
use super::elementwise::{add as prep_add, channel_scale as prep_channel_scale};
use super::linear::linear_from_quantized;
use super::lut::{lut as prep_lut, LutFn};
use super::norm::rms_norm_2d as prep_rms_norm_2d;
use super::pool::{avg_pool2d, concat_channels, upsample_nearest};
use crate::error::{Error, Result};
use crate::models::mobilenetv5::{
    Block, Conv2d, ConvNormAct, EdgeResidual, KvProjection, LayerScale2d, MobileAttention,
    MobileNetV5Encoder, RmsNorm2d, UniversalInvertedResidual,
};
use crate::ops::attention::AttnShape;
use crate::ops::conv::Conv2dSpec;
use crate::quant::calibrate::{CalibrationStats, RangeMethod};
use crate::quant::gptq;
use crate::quant::models::mobilenetv5::{
    QBlock, QConvNormAct, QEdgeResidual, QKvProjection, QMobileAttention, QMobileNetV5Encoder,
    QMultiQueryAttention2d, QMultiScaleFusionAdapter, QUniversalInvertedResidual,
};
use crate::quant::ops::conv::QConv2d;
use crate::quant::ops::elementwise::{ChannelAxis, QAdd, QChannelScale};
use crate::quant::ops::linear::QLinear;
use crate::quant::ops::lut::QLut;
use crate::quant::ops::norm::QRmsNorm2d;
use crate::quant::params::{quantize_weight, ActQuant, Granularity, QuantWeight, WeightRange};
use crate::quant::scheme::{Part, Precision, Scheme};
use crate::tensor::Tensor;

/// The range method used when none is given: min-max for 16-bit activations (plenty of
/// headroom), MSE for 8-bit ones.
pub fn default_range_method(act_bits: u32) -> RangeMethod {
    if act_bits >= 16 {
        RangeMethod::MinMax
    } else {
        RangeMethod::Mse
    }
}

/// How weight ranges are chosen: min-max at 8 bits and above (per-channel int8 / int16 rarely
/// benefits from clipping), MSE below.
pub fn weight_range(wbits: u32) -> WeightRange {
    if wbits >= 8 {
        WeightRange::MinMax
    } else {
        WeightRange::Mse
    }
}

/// The fixed quantization of preprocessed pixels in `[0, 1]`: 16 bits symmetric (scale
/// `1/32767`, zero point 0) or 8 bits asymmetric (scale `1/255`, zero point -128).
pub fn pixel_quant(act_bits: u32) -> ActQuant {
    ActQuant::from_range(0.0, 1.0, act_bits, act_bits >= 16)
}

/// Per-op quantization decisions of one model part: precision from the scheme, activation
/// ranges from the calibration statistics.
pub struct OpQuantizer<'a> {
    pub stats: &'a CalibrationStats,
    pub scheme: &'a Scheme,
    pub part: Part,
    /// `None`: [`default_range_method`] of each op's activation width.
    pub method: Option<RangeMethod>,
}

impl OpQuantizer<'_> {
    /// The integer precision of op `op` (`(wbits, abits)`); per-op float overrides are errors.
    pub fn precision(&self, op: &str) -> Result<(u32, u32)> {
        match self.scheme.precision_for(self.part, op) {
            Precision::Float => Err(Error::input(format!(
                "op `{op}`: a per-op float override inside the integer {} part is not supported \
                 (a whole part may be float; individual ops may not)",
                self.part
            ))),
            Precision::Int { wbits, abits } => Ok((wbits, abits)),
        }
    }

    /// The output quantization of op `op` at its precision.
    pub fn act(&self, op: &str) -> Result<ActQuant> {
        let (_, bits) = self.precision(op)?;
        let symmetric = bits >= 16;
        let method = self.method.unwrap_or_else(|| default_range_method(bits));
        let stats = self.stats.get(op).ok_or_else(|| {
            Error::input(format!(
                "no calibration statistics for op `{op}` ({} part): calibrate with the same \
                 model (and input size) that is being converted",
                self.part
            ))
        })?;
        let (lo, hi) = stats.range(method, bits, symmetric).ok_or_else(|| {
            Error::input(format!(
                "calibration statistics of op `{op}` hold no finite value (range method {method})"
            ))
        })?;
        Ok(ActQuant::from_range(lo, hi, bits, symmetric))
    }

    /// Weight width, granularity and range method of weighted op `op`.
    pub fn weights(&self, op: &str) -> Result<(u32, Granularity, WeightRange)> {
        let (wbits, _) = self.precision(op)?;
        if !(2..=16).contains(&wbits) {
            return Err(Error::input(format!(
                "op `{op}`: {wbits}-bit weights are not supported by the integer ops (2..=16 bits)"
            )));
        }
        Ok((
            wbits,
            self.scheme.weight_granularity(self.part, wbits),
            weight_range(wbits),
        ))
    }

    /// Op `op`'s weight `w[out, inp]` (row-major; convolutions flattened) at its precision:
    /// nearest rounding, then GPTQ on the op's calibration inputs when the calibration recorded
    /// them ([`gptq::refine`] keeps the GPTQ values only where they lower the output error).
    pub fn weight(&self, op: &str, w: &[f32], (out, inp): (usize, usize)) -> Result<QuantWeight> {
        let (wbits, gran, range) = self.weights(op)?;
        if w.len() != out * inp || inp == 0 {
            return Err(Error::input(format!(
                "converting `{op}`: a weight of {} values for [{out}, {inp}]",
                w.len()
            )));
        }
        if w.iter().any(|v| !v.is_finite()) {
            return Err(Error::input(format!(
                "converting `{op}`: non-finite weight"
            )));
        }
        let mut qw = quantize_weight(w, out, inp, wbits, gran, range);
        gptq::refine_op(op, w, &mut qw, self.stats.inputs.get(op));
        Ok(qw)
    }

    /// `y = x W^T (+ b)` for the op `op` (weight `[out, inp]` row-major).
    pub fn linear(
        &self,
        op: &str,
        w: &[f32],
        bias: Option<&[f32]>,
        (out, inp): (usize, usize),
        x: ActQuant,
    ) -> Result<QLinear> {
        let qw = self.weight(op, w, (out, inp))?;
        let y = self.act(op)?;
        linear_from_quantized(&qw, bias, x, y).map_err(|e| ctx(op, e))
    }

    /// An elementwise function table from `x` to op `op`'s output quantization.
    pub fn lut(&self, op: &str, f: LutFn, x: ActQuant) -> Result<QLut> {
        let y = self.act(op)?;
        prep_lut(f, x, y).map_err(|e| ctx(op, e))
    }
}

/// Prefixes an error with the op it concerns.
pub(crate) fn ctx(op: &str, e: Error) -> Error {
    Error::input(format!("converting `{op}`: {e}"))
}

type Size = (usize, usize);

struct Builder<'a> {
    q: OpQuantizer<'a>,
}

impl Builder<'_> {
    fn conv(&self, op: &str, c: &Conv2d, x: ActQuant, (h, w): Size) -> Result<(QConv2d, Size)> {
        let y = self.q.act(op)?;
        let k = c.kernel_size();
        let pad = c.padding(h, w);
        let span = c.dilation * (k - 1) + 1;
        if h + pad.top + pad.bottom < span || w + pad.left + pad.right < span {
            return Err(Error::input(format!(
                "converting `{op}`: a {h}x{w} input is too small for kernel {k}"
            )));
        }
        let spec = Conv2dSpec::new(c.stride, c.dilation, c.groups, pad);
        let (c_out, cpg, kh, kw) = (
            c.weight.dim(0),
            c.weight.dim(1),
            c.weight.dim(2),
            c.weight.dim(3),
        );
        let qw = self.q.weight(op, c.weight.data(), (c_out, cpg * kh * kw))?;
        let qc = conv2d_from_quantized(&qw, cpg, (kh, kw), c.bias.as_deref(), spec, x, y)
            .map_err(|e| ctx(op, e))?;
        let size = qc.out_size(h, w);
        Ok((qc, size))
    }

    fn norm(&self, op: &str, n: &RmsNorm2d, x: ActQuant) -> Result<QRmsNorm2d> {
        self.q.precision(op)?;
        let y = self.q.act(op)?;
        prep_rms_norm_2d(&n.weight, n.eps, x, y).map_err(|e| ctx(op, e))
    }

    fn gelu(&self, op: &str, x: ActQuant) -> Result<QLut> {
        self.q.lut(op, LutFn::GeluTanh, x)
    }

    fn add(&self, op: &str, a: ActQuant, b: ActQuant) -> Result<QAdd> {
        let y = self.q.act(op)?;
        prep_add(a, b, y).map_err(|e| ctx(op, e))
    }

    fn layer_scale(&self, op: &str, ls: &LayerScale2d, x: ActQuant) -> Result<QChannelScale> {
        let y = self.q.act(op)?;
        prep_channel_scale(&ls.gamma, ChannelAxis::First, x, y).map_err(|e| ctx(op, e))
    }

    /// A 1x1 conv weight `[out, in, 1, 1]` as a linear layer on token rows.
    fn proj(&self, op: &str, w: &Tensor, x: ActQuant) -> Result<QLinear> {
        if w.rank() != 4 || w.dim(2) != 1 || w.dim(3) != 1 {
            return Err(Error::input(format!(
                "converting `{op}`: expected a [out, in, 1, 1] weight, got {:?}",
                w.shape()
            )));
        }
        self.q.linear(op, w.data(), None, (w.dim(0), w.dim(1)), x)
    }

    fn conv_norm_act(
        &self,
        m: &ConvNormAct,
        x: ActQuant,
        hw: Size,
    ) -> Result<(QConvNormAct, Size)> {
        let n = &m.name;
        let (conv, hw) = self.conv(&format!("{n}.conv"), &m.conv, x, hw)?;
        let bn = self.norm(&format!("{n}.bn"), &m.bn, conv.y)?;
        let act = if m.apply_act {
            Some(self.gelu(n, bn.norm.y)?)
        } else {
            None
        };
        Ok((
            QConvNormAct {
                name: n.clone(),
                conv,
                bn,
                act,
            },
            hw,
        ))
    }

    fn edge_residual(
        &self,
        b: &EdgeResidual,
        x: ActQuant,
        hw: Size,
    ) -> Result<(QEdgeResidual, Size)> {
        let n = &b.name;
        let (conv_exp, hw) = self.conv(&format!("{n}.conv_exp"), &b.conv_exp, x, hw)?;
        let bn1 = self.norm(&format!("{n}.bn1"), &b.bn1, conv_exp.y)?;
        let act1 = self.gelu(&format!("{n}.bn1.act"), bn1.norm.y)?;
        let (conv_pwl, hw) = self.conv(&format!("{n}.conv_pwl"), &b.conv_pwl, act1.y, hw)?;
        let bn2 = self.norm(&format!("{n}.bn2"), &b.bn2, conv_pwl.y)?;
        let skip = if b.has_skip {
            Some(self.add(n, bn2.norm.y, x)?)
        } else {
            None
        };
        Ok((
            QEdgeResidual {
                name: n.clone(),
                conv_exp,
                bn1,
                act1,
                conv_pwl,
                bn2,
                skip,
            },
            hw,
        ))
    }

    fn uir(
        &self,
        b: &UniversalInvertedResidual,
        x: ActQuant,
        hw: Size,
    ) -> Result<(QUniversalInvertedResidual, Size)> {
        let mut cur = x;
        let mut hw = hw;
        let opt = |m: &Option<ConvNormAct>, cur: &mut ActQuant, hw: &mut Size| {
            m.as_ref()
                .map(|m| {
                    let (qm, s) = self.conv_norm_act(m, *cur, *hw)?;
                    *cur = qm.out_quant();
                    *hw = s;
                    Ok::<_, Error>(qm)
                })
                .transpose()
        };
        let dw_start = opt(&b.dw_start, &mut cur, &mut hw)?;
        let (pw_exp, s) = self.conv_norm_act(&b.pw_exp, cur, hw)?;
        cur = pw_exp.out_quant();
        hw = s;
        let dw_mid = opt(&b.dw_mid, &mut cur, &mut hw)?;
        let (pw_proj, s) = self.conv_norm_act(&b.pw_proj, cur, hw)?;
        cur = pw_proj.out_quant();
        hw = s;
        let dw_end = opt(&b.dw_end, &mut cur, &mut hw)?;
        let layer_scale = match &b.layer_scale {
            Some(ls) => {
                let op = self.layer_scale(&format!("{}.layer_scale", b.name), ls, cur)?;
                cur = op.y;
                Some(op)
            }
            None => None,
        };
        let skip = if b.has_skip {
            Some(self.add(&b.name, cur, x)?)
        } else {
            None
        };
        Ok((
            QUniversalInvertedResidual {
                name: b.name.clone(),
                dw_start,
                pw_exp,
                dw_mid,
                pw_proj,
                dw_end,
                layer_scale,
                skip,
            },
            hw,
        ))
    }

    fn kv(&self, kv: &KvProjection, x: ActQuant, hw: Size) -> Result<QKvProjection> {
        let n = &kv.name;
        let mut cur = x;
        let down_conv = match &kv.down_conv {
            Some(c) => {
                let (qc, _) = self.conv(&format!("{n}.down_conv"), c, cur, hw)?;
                cur = qc.y;
                Some(qc)
            }
            None => None,
        };
        let norm = match (&kv.down_conv, &kv.norm) {
            (Some(_), Some(nm)) => {
                let qn = self.norm(&format!("{n}.norm"), nm, cur)?;
                cur = qn.norm.y;
                Some(qn)
            }
            (None, Some(_)) => {
                return Err(Error::input(format!(
                    "converting `{n}`: a norm without a down_conv is not a timm layout"
                )))
            }
            _ => None,
        };
        let proj = self.proj(&format!("{n}.proj"), &kv.proj, cur)?;
        Ok(QKvProjection {
            name: n.clone(),
            down_conv,
            norm,
            proj,
        })
    }

    fn mobile_attention(
        &self,
        b: &MobileAttention,
        x: ActQuant,
        hw: Size,
    ) -> Result<(QMobileAttention, Size)> {
        let n = &b.name;
        let norm = self.norm(&format!("{n}.norm"), &b.norm, x)?;
        let xn = norm.norm.y;
        let a = &b.attn;
        let an = &a.name;
        let query_proj = self.proj(&format!("{an}.query.proj"), &a.query_proj, xn)?;
        let key = self.kv(&a.key, xn, hw)?;
        let value = self.kv(&a.value, xn, hw)?;
        let sdpa_name = format!("{an}.sdpa");
        self.q.precision(&sdpa_name)?;
        let out = self.q.act(&sdpa_name)?;
        let shape = AttnShape {
            n_heads: a.num_heads,
            n_kv: 1,
            d: a.key_dim,
            dv: a.value_dim,
        };
        // The float path's scale, bit for bit.
        let scale = (a.key_dim as f32).powf(-0.5);
        let sdpa = prep_attention(shape, scale, query_proj.y, key.proj.y, value.proj.y, out)
            .map_err(|e| ctx(&sdpa_name, e))?;
        let output_proj = self.proj(&format!("{an}.output.proj"), &a.output_proj, sdpa.out)?;
        let mut cur = output_proj.y;
        let layer_scale = match &b.layer_scale {
            Some(ls) => {
                let op = self.layer_scale(&format!("{n}.layer_scale"), ls, cur)?;
                cur = op.y;
                Some(op)
            }
            None => None,
        };
        let skip = if b.has_skip {
            Some(self.add(n, cur, x)?)
        } else {
            None
        };
        Ok((
            QMobileAttention {
                name: n.clone(),
                norm,
                attn: QMultiQueryAttention2d {
                    name: an.clone(),
                    query_proj,
                    key,
                    value,
                    sdpa,
                    output_proj,
                },
                layer_scale,
                skip,
            },
            hw,
        ))
    }

    fn block(&self, b: &Block, x: ActQuant, hw: Size) -> Result<(QBlock, Size)> {
        Ok(match b {
            Block::EdgeResidual(b) => {
                let (q, s) = self.edge_residual(b, x, hw)?;
                (QBlock::EdgeResidual(q), s)
            }
            Block::UniversalInvertedResidual(b) => {
                let (q, s) = self.uir(b, x, hw)?;
                (QBlock::UniversalInvertedResidual(q), s)
            }
            Block::MobileAttention(b) => {
                let (q, s) = self.mobile_attention(b, x, hw)?;
                (QBlock::MobileAttention(q), s)
            }
        })
    }
}

/// Builds the integer encoder for `image_size x image_size` inputs (usually the config's
/// `image_size`) from the float encoder, calibration statistics of the float path (every op name
/// it observes for that input size) and the scheme's vision precision and per-op overrides.
/// `method`: activation range method (`None`: [`default_range_method`] per op).
///
/// Errors: the vision part is float, an op is overridden to float or to weights wider than 8 bits,
/// an op has no statistics, or the MSFA needs a bilinear resize (output grid not dividing the
/// fused map), which has no integer op.
pub fn encoder(
    float: &MobileNetV5Encoder,
    image_size: usize,
    stats: &CalibrationStats,
    scheme: &Scheme,
    method: Option<RangeMethod>,
) -> Result<QMobileNetV5Encoder> {
    if scheme.vision.is_float() {
        return Err(Error::input(
            "the scheme keeps the vision part in float: there is no integer encoder to build",
        ));
    }
    if image_size == 0 {
        return Err(Error::input("integer encoder: image size must be positive"));
    }
    let b = Builder {
        q: OpQuantizer {
            stats,
            scheme,
            part: Part::Vision,
            method,
        },
    };
    let arch = &float.arch;
    let stem_op = format!("{}.conv", float.conv_stem.name);
    let (_, abits) = b.q.precision(&stem_op)?;
    let input = pixel_quant(abits);
    let (conv_stem, mut hw) = b.conv_norm_act(&float.conv_stem, input, (image_size, image_size))?;
    let mut cur = conv_stem.out_quant();
    let taps = arch.msfa_taps.clone();
    let last_tap = *taps
        .last()
        .ok_or_else(|| Error::config("the encoder has no msfa taps"))?;
    let mut tapped: Vec<(ActQuant, Size)> = Vec::new();
    if taps.contains(&0) {
        tapped.push((cur, hw));
    }
    let mut blocks = Vec::new();
    for (si, stage) in float.blocks.iter().enumerate() {
        if si + 1 > last_tap {
            break;
        }
        let mut qs = Vec::with_capacity(stage.len());
        for blk in stage {
            let (qb, s) = b.block(blk, cur, hw)?;
            cur = qb.out_quant();
            hw = s;
            qs.push(qb);
        }
        blocks.push(qs);
        if taps.contains(&(si + 1)) {
            tapped.push((cur, hw));
        }
    }
    if tapped.len() != taps.len() {
        return Err(Error::config(format!(
            "msfa taps {taps:?} do not match the encoder's {} stages",
            float.blocks.len()
        )));
    }

    // MSFA.
    let m = &float.msfa;
    let mn = &m.name;
    let (hh, hw0) = tapped[0].1;
    let mut resize = Vec::with_capacity(tapped.len());
    for (i, &(_, (h, w))) in tapped.iter().enumerate() {
        if h < hh || w < hw0 {
            resize.push(Some(
                upsample_nearest(h, w, hh, hw0).map_err(|e| ctx(&format!("{mn}.resize.{i}"), e))?,
            ));
        } else if h != hh || w != hw0 {
            return Err(Error::input(format!(
                "msfa input {i} is {h}x{w}, larger than the first input {hh}x{hw0}"
            )));
        } else {
            resize.push(None);
        }
    }
    let concat_op = format!("{mn}.concat");
    b.q.precision(&concat_op)?;
    let cat_q = b.q.act(&concat_op)?;
    let ins: Vec<ActQuant> = tapped.iter().map(|t| t.0).collect();
    let concat = concat_channels(&ins, cat_q).map_err(|e| ctx(&concat_op, e))?;
    let (ffn, _) = b.uir(&m.ffn, cat_q, (hh, hw0))?;
    let mut cur = ffn.out_quant();
    let r = m.output_resolution;
    let pool = if (hh, hw0) != (r, r) {
        if hh % r != 0 || hw0 % r != 0 {
            return Err(Error::input(format!(
                "integer encoder for {image_size}x{image_size}: the MSFA would resize its \
                 {hh}x{hw0} map to {r}x{r} bilinearly (`{mn}.interpolate`), which has no integer \
                 op; choose an input size whose fused map is a multiple of {r}"
            )));
        }
        let op = format!("{mn}.pool");
        b.q.precision(&op)?;
        let p = avg_pool2d(hh / r, hw0 / r, cur, b.q.act(&op)?).map_err(|e| ctx(&op, e))?;
        cur = p.y;
        Some(p)
    } else {
        None
    };
    let norm = b.norm(&format!("{mn}.norm"), &m.norm, cur)?;
    Ok(QMobileNetV5Encoder {
        image_size,
        in_chans: arch.in_chans,
        input,
        conv_stem,
        blocks,
        msfa_taps: taps,
        msfa: QMultiScaleFusionAdapter {
            name: mn.clone(),
            resize,
            concat,
            ffn,
            pool,
            norm,
        },
        num_features: arch.num_features,
        output_resolution: r,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pixel_quantization_and_defaults() {
        let a16 = pixel_quant(16);
        assert_eq!((a16.zero_point, a16.bits), (0, 16));
        assert_eq!(a16.quantize(1.0), 32767);
        assert_eq!(a16.quantize(0.0), 0);
        let a8 = pixel_quant(8);
        assert_eq!((a8.zero_point, a8.bits), (-128, 8));
        assert_eq!((a8.quantize(0.0), a8.quantize(1.0)), (-128, 127));
        assert_eq!(default_range_method(16), RangeMethod::MinMax);
        assert_eq!(default_range_method(8), RangeMethod::Mse);
        assert_eq!(weight_range(8), WeightRange::MinMax);
        assert_eq!(weight_range(4), WeightRange::Mse);
    }

    #[test]
    fn op_quantizer_errors_name_the_op() {
        let stats = CalibrationStats::new(64).unwrap();
        let scheme = Scheme::default();
        let q = OpQuantizer {
            stats: &stats,
            scheme: &scheme,
            part: Part::Vision,
            method: None,
        };
        let e = q.act("blocks.0.0.conv_exp").unwrap_err().to_string();
        assert!(
            e.contains("no calibration statistics for op `blocks.0.0.conv_exp`"),
            "{e}"
        );
        let mut s = stats.clone();
        s.observe(Part::Vision, "x", &[f32::NAN]);
        let q = OpQuantizer {
            stats: &s,
            scheme: &scheme,
            part: Part::Vision,
            method: None,
        };
        let e = q.act("x").unwrap_err().to_string();
        assert!(e.contains("no finite value"), "{e}");
        let mut s = stats.clone();
        s.observe(Part::Vision, "x", &[-1.0, 3.0]);
        let q = OpQuantizer {
            stats: &s,
            scheme: &scheme,
            part: Part::Vision,
            method: None,
        };
        let a = q.act("x").unwrap();
        assert_eq!(a, ActQuant::from_range(-1.0, 3.0, 16, true));
    }
}
