//! Building [`QCausalConv1d`] (LFM2's short convolution) from a float `[C, L]` kernel.

use super::linear::row_requant;
use crate::error::{Error, Result};
use crate::quant::ops::conv1d::QCausalConv1d;
use crate::quant::ops::linear::QMatrix;
use crate::quant::params::{quantize_weight, ActQuant, Granularity, QuantWeight, WeightRange};

/// The depthwise causal conv with kernel `weight[channels, kernel]` (the checkpoint's
/// `[C, 1, L]` squeezed), quantized per channel (or per group of taps), input `x`, output `y`.
#[allow(clippy::too_many_arguments)]
pub fn causal_conv1d(
    weight: &[f32],
    bias: Option<&[f32]>,
    channels: usize,
    kernel: usize,
    wbits: u32,
    gran: Granularity,
    range: WeightRange,
    x: ActQuant,
    y: ActQuant,
) -> Result<QCausalConv1d> {
    if weight.len() != channels * kernel || kernel == 0 {
        return Err(Error::input(format!(
            "causal_conv1d: weight of {} values for [{channels}, {kernel}]",
            weight.len()
        )));
    }
    if !(2..=16).contains(&wbits) {
        return Err(Error::input(format!(
            "causal_conv1d: weight bit width {wbits} not supported (2..=16)"
        )));
    }
    if weight.iter().any(|v| !v.is_finite()) {
        return Err(Error::input("causal_conv1d: non-finite weight"));
    }
    let qw = quantize_weight(weight, channels, kernel, wbits, gran, range);
    causal_conv1d_from_quantized(&qw, bias, x, y)
}

/// [`QCausalConv1d`] from an already quantized `[C, L]` kernel.
pub fn causal_conv1d_from_quantized(
    qw: &QuantWeight,
    bias: Option<&[f32]>,
    x: ActQuant,
    y: ActQuant,
) -> Result<QCausalConv1d> {
    let (mult, qb) = row_requant("QCausalConv1d", qw, bias, &x, &y)?;
    QCausalConv1d::new(QMatrix::from_quant_weight(qw)?, qb, mult, x, y)
}
