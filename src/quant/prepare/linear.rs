//! Building [`QLinear`] (and the weight part of other weighted ops) from float weights.

use crate::error::{Error, Result};
use crate::quant::arith::Multiplier;
use crate::quant::ops::linear::{check_act, QLinear, QMatrix};
use crate::quant::params::{
    quantize_multiplier, quantize_weight, ActQuant, Granularity, QuantWeight, WeightRange,
    GROUP_SCALE_BITS,
};

/// Checks an activation quantization is usable: finite positive scale, supported bits, zero point
/// in range ([`check_act`]).
pub fn check_quant(op: &str, what: &str, q: &ActQuant) -> Result<()> {
    check_act(op, what, q)
}

/// A real multiplier as fixed point, with a clear error for non-finite or negative values.
pub fn multiplier(op: &str, real: f64) -> Result<Multiplier> {
    if !(real.is_finite() && real >= 0.0) {
        return Err(Error::input(format!(
            "{op}: requantization multiplier {real} must be finite and >= 0"
        )));
    }
    Ok(quantize_multiplier(real))
}

/// Per output row of a quantized weight consumed by an input in `x` and producing `y`: the real
/// size of one accumulator unit (`s_x * row_scale / 2^GROUP_SCALE_BITS`), the multiplier
/// `unit / s_y`, and the bias in accumulator units.
///
/// A row whose scale is 0 (all-zero weights) gets the unit `s_y` (multiplier 1), so its bias still
/// reaches the output.
pub fn row_requant(
    op: &str,
    qw: &QuantWeight,
    bias: Option<&[f32]>,
    x: &ActQuant,
    y: &ActQuant,
) -> Result<(Vec<Multiplier>, Option<Vec<i64>>)> {
    check_quant(op, "input", x)?;
    check_quant(op, "output", y)?;
    if let Some(b) = bias {
        if b.len() != qw.out {
            return Err(Error::input(format!(
                "{op}: bias of {} for {} output channels",
                b.len(),
                qw.out
            )));
        }
    }
    let gunit = (1u64 << GROUP_SCALE_BITS) as f64;
    let (sx, sy) = (x.scale as f64, y.scale as f64);
    let mut mult = Vec::with_capacity(qw.out);
    let mut qb = bias.map(|_| Vec::with_capacity(qw.out));
    for o in 0..qw.out {
        let rs = qw.row_scale[o] as f64;
        if !rs.is_finite() {
            return Err(Error::input(format!(
                "{op}: row {o} has a non-finite scale"
            )));
        }
        let unit = if rs > 0.0 { sx * rs / gunit } else { sy };
        mult.push(multiplier(op, unit / sy)?);
        if let (Some(b), Some(qb)) = (bias, qb.as_mut()) {
            let v = (b[o] as f64 / unit).round();
            if !(v.is_finite() && v.abs() < (1u64 << 62) as f64) {
                return Err(Error::input(format!(
                    "{op}: bias {} of row {o} is not representable in accumulator units {unit:e}",
                    b[o]
                )));
            }
            qb.push(v as i64);
        }
    }
    Ok((mult, qb))
}

/// [`QLinear`] from an already quantized weight (`[out, in]`) and a float bias.
pub fn linear_from_quantized(
    qw: &QuantWeight,
    bias: Option<&[f32]>,
    x: ActQuant,
    y: ActQuant,
) -> Result<QLinear> {
    let (mult, qb) = row_requant("QLinear", qw, bias, &x, &y)?;
    QLinear::new(QMatrix::from_quant_weight(qw)?, qb, mult, x, y)
}

/// `y[T, out] = x[T, inp] w[out, inp]^T + bias` with `wbits`-wide symmetric weights at granularity
/// `gran` (range chosen by `range`), input in `x`, output in `y`.
#[allow(clippy::too_many_arguments)]
pub fn linear(
    w: &[f32],
    bias: Option<&[f32]>,
    out: usize,
    inp: usize,
    wbits: u32,
    gran: Granularity,
    range: WeightRange,
    x: ActQuant,
    y: ActQuant,
) -> Result<QLinear> {
    if w.len() != out * inp || inp == 0 {
        return Err(Error::input(format!(
            "linear: weight of {} values for [{out}, {inp}]",
            w.len()
        )));
    }
    if !(2..=16).contains(&wbits) {
        return Err(Error::input(format!(
            "linear: weight bit width {wbits} not supported (2..=16)"
        )));
    }
    if w.iter().any(|v| !v.is_finite()) {
        return Err(Error::input("linear: non-finite weight"));
    }
    let qw = quantize_weight(w, out, inp, wbits, gran, range);
    linear_from_quantized(&qw, bias, x, y)
}
