//! Building [`QConv2d`] from a float convolution weight (PyTorch `[C_out, C_in / groups, kH, kW]`).

use super::linear::row_requant;
use crate::error::{Error, Result};
use crate::ops::conv::Conv2dSpec;
use crate::quant::ops::conv::QConv2d;
use crate::quant::ops::linear::QMatrix;
use crate::quant::params::{quantize_weight, ActQuant, Granularity, QuantWeight, WeightRange};
use crate::tensor::Tensor;

/// An integer convolution with the float path's semantics ([`crate::ops::conv::conv2d`] with
/// `spec`): `groups` must be 1 or `C_in == C_out` (depthwise). Weights are quantized per output
/// channel flattened as `[C_out, C_in / groups * kH * kW]` (or per group along that axis).
#[allow(clippy::too_many_arguments)]
pub fn conv2d(
    weight: &Tensor,
    bias: Option<&[f32]>,
    spec: Conv2dSpec,
    wbits: u32,
    gran: Granularity,
    range: WeightRange,
    x: ActQuant,
    y: ActQuant,
) -> Result<QConv2d> {
    if weight.rank() != 4 {
        return Err(Error::input(format!(
            "conv2d: weight must be [C_out, C_in / groups, kH, kW], got {:?}",
            weight.shape()
        )));
    }
    if !(2..=16).contains(&wbits) {
        return Err(Error::input(format!(
            "conv2d: weight bit width {wbits} not supported (2..=16)"
        )));
    }
    if weight.data().iter().any(|v| !v.is_finite()) {
        return Err(Error::input("conv2d: non-finite weight"));
    }
    let (c_out, cpg, kh, kw) = (weight.dim(0), weight.dim(1), weight.dim(2), weight.dim(3));
    let k = cpg * kh * kw;
    let qw = quantize_weight(weight.data(), c_out, k, wbits, gran, range);
    conv2d_from_quantized(&qw, cpg, (kh, kw), bias, spec, x, y)
}

/// [`QConv2d`] from an already quantized weight `[C_out, cpg * kH * kW]` (`cpg` = input channels
/// per group: `C_in` for a regular convolution, 1 for depthwise).
pub fn conv2d_from_quantized(
    qw: &QuantWeight,
    cpg: usize,
    kernel: (usize, usize),
    bias: Option<&[f32]>,
    spec: Conv2dSpec,
    x: ActQuant,
    y: ActQuant,
) -> Result<QConv2d> {
    let c_out = qw.out;
    let depthwise = match spec.groups {
        1 => false,
        g if g == c_out && cpg == 1 => true,
        g => {
            return Err(Error::input(format!(
                "conv2d: only groups = 1 or depthwise (groups = C_in = C_out) are supported \
                 (groups {g}, C_out {c_out}, {cpg} input channels per group)"
            )))
        }
    };
    let c_in = if depthwise { c_out } else { cpg };
    let (mult, qb) = row_requant("QConv2d", qw, bias, &x, &y)?;
    QConv2d::new(
        c_in,
        kernel,
        spec.stride,
        spec.dilation,
        spec.pad,
        depthwise,
        QMatrix::from_quant_weight(qw)?,
        qb,
        mult,
        x,
        y,
    )
}
