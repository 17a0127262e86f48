//! Building the integer connector ([`QProjector`]) from the float
//! [`MultiModalProjector`], calibration statistics and the scheme's connector precision
//! (weights per output channel at 8 bits, per group below; see [`Scheme::weight_granularity`]).

use super::lut::LutFn;
use super::mobilenetv5::OpQuantizer;
use crate::error::{Error, Result};
use crate::models::legacy::MultiModalProjector;
use crate::nn::Linear;
use crate::quant::calibrate::{CalibrationStats, RangeMethod};
use crate::quant::models::connector::{QProjector, PROJECTOR_NAME};
use crate::quant::ops::linear::QLinear;
use crate::quant::params::ActQuant;
use crate::quant::scheme::{Part, Scheme};

fn linear(q: &OpQuantizer, op: &str, l: &Linear, x: ActQuant) -> Result<QLinear> {
    let (out, inp) = (l.weight.dim(0), l.weight.dim(1));
    q.linear(
        op,
        l.weight.data(),
        l.bias.as_ref().map(|b| b.data()),
        (out, inp),
        x,
    )
}

/// Builds the integer connector. `input` is the quantization of the `[tokens, C]` rows it will
/// be fed: the integer encoder's [`output_quant`](crate::quant::models::mobilenetv5::QMobileNetV5Encoder::output_quant)
/// (or, when the vision part stays float, the `msfa.norm` statistics at the connector's
/// activation width). `method`: activation range method (`None`: the default per width,
/// [`super::mobilenetv5::default_range_method`]).
pub fn projector(
    float: &MultiModalProjector,
    input: ActQuant,
    stats: &CalibrationStats,
    scheme: &Scheme,
    method: Option<RangeMethod>,
) -> Result<QProjector> {
    if scheme.connector.is_float() {
        return Err(Error::input(
            "the scheme keeps the connector in float: there is no integer connector to build",
        ));
    }
    let q = OpQuantizer {
        stats,
        scheme,
        part: Part::Connector,
        method,
    };
    let linear_1 = linear(
        &q,
        &format!("{PROJECTOR_NAME}.linear_1"),
        &float.linear_1,
        input,
    )?;
    let act = q.lut(
        &format!("{PROJECTOR_NAME}.act"),
        LutFn::from(float.act),
        linear_1.y,
    )?;
    let linear_2 = linear(
        &q,
        &format!("{PROJECTOR_NAME}.linear_2"),
        &float.linear_2,
        act.y,
    )?;
    Ok(QProjector {
        linear_1,
        act,
        linear_2,
    })
}
