//! Building [`QLut`] tables from float functions (f64 definitions), with an exhaustive check of
//! the integer result against the exact function over every input integer.

use crate::error::{Error, Result};
use crate::ops::activation::Activation;
use crate::quant::arith::{qmax, qmin};
use crate::quant::ops::lut::QLut;
use crate::quant::params::ActQuant;

/// The functions a table can hold (evaluated in f64 at conversion time).
#[derive(Clone, Copy, Debug)]
pub enum LutFn {
    /// `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`.
    GeluTanh,
    /// `0.5 x (1 + erf(x / sqrt(2)))`.
    GeluErf,
    /// `x * sigmoid(x)`.
    Silu,
    Sigmoid,
    Tanh,
    Exp,
    Custom(fn(f64) -> f64),
}

impl LutFn {
    pub fn eval(self, x: f64) -> f64 {
        match self {
            LutFn::GeluTanh => {
                let u = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x);
                0.5 * x * (1.0 + u.tanh())
            }
            LutFn::GeluErf => 0.5 * x * (1.0 + libm::erf(x * std::f64::consts::FRAC_1_SQRT_2)),
            LutFn::Silu => x / (1.0 + (-x).exp()),
            LutFn::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            LutFn::Tanh => x.tanh(),
            LutFn::Exp => x.exp(),
            LutFn::Custom(f) => f(x),
        }
    }
}

impl From<Activation> for LutFn {
    fn from(a: Activation) -> Self {
        match a {
            Activation::GeluTanh => LutFn::GeluTanh,
            Activation::GeluErf => LutFn::GeluErf,
            Activation::Silu => LutFn::Silu,
            Activation::Relu => LutFn::Custom(|x| x.max(0.0)),
            Activation::Relu6 => LutFn::Custom(|x| x.clamp(0.0, 6.0)),
        }
    }
}

/// Worst error (in output steps) [`lut`] accepts before refining the table: 1/2 step of final
/// rounding plus at most 1/4 step of interpolation error.
pub const MAX_TABLE_ERROR_STEPS: f64 = 0.75;

/// Interpolation intervals of the default (TFLite) table: 512, i.e. 513 entries.
pub const DEFAULT_INTERVAL_BITS: u32 = 9;

/// Checks an activation quantization the ops of this family support: 2..=16 bits, a finite
/// positive scale, the zero point inside the integer range.
pub(crate) fn check_act_quant(op: &str, what: &str, q: &ActQuant) -> Result<()> {
    if !((2..=16).contains(&q.bits) && q.scale.is_finite() && q.scale > 0.0) {
        return Err(Error::input(format!(
            "{op}: {what} quantization {q:?} not supported (2..=16 bits, finite positive scale)"
        )));
    }
    let zp = q.zero_point as i64;
    if zp < qmin(q.bits) || zp > qmax(q.bits) {
        return Err(Error::input(format!(
            "{op}: {what} zero point {zp} outside the {}-bit range",
            q.bits
        )));
    }
    Ok(())
}

fn check(what: &str, q: &ActQuant) -> Result<()> {
    check_act_quant("lut", what, q)
}

/// `f` as an integer table from `x` to `y`: a direct table for inputs of up to 9 bits (256
/// entries for int8), otherwise the 513-entry interpolated table, refined (1025, 2049, ...
/// entries, up to a direct table) while its worst error over all inputs exceeds
/// [`MAX_TABLE_ERROR_STEPS`].
pub fn lut(f: LutFn, x: ActQuant, y: ActQuant) -> Result<QLut> {
    check("input", &x)?;
    check("output", &y)?;
    let mut seg = x.bits.saturating_sub(DEFAULT_INTERVAL_BITS);
    loop {
        let t = lut_with_segments(f, x, y, seg)?;
        if seg == 0 || max_error_steps(&t, f) <= MAX_TABLE_ERROR_STEPS {
            return Ok(t);
        }
        seg -= 1;
    }
}

/// `f` as a table with `2^seg_bits` input integers per interval (`seg_bits = 0`: direct table).
pub fn lut_with_segments(f: LutFn, x: ActQuant, y: ActQuant, seg_bits: u32) -> Result<QLut> {
    check("input", &x)?;
    check("output", &y)?;
    if seg_bits >= x.bits {
        return Err(Error::input(format!(
            "lut: {seg_bits} interval bits for a {}-bit input",
            x.bits
        )));
    }
    let lo = qmin(x.bits);
    // Real input of an input integer, and f there in output integer units (no zero point).
    let at = |q: f64| f.eval(x.scale as f64 * (q - x.zero_point as f64)) / y.scale as f64;
    if seg_bits == 0 {
        let (ylo, yhi) = (qmin(y.bits) as f64, qmax(y.bits) as f64);
        let table = (lo..=qmax(x.bits))
            .map(|q| (at(q as f64).round() + y.zero_point as f64).clamp(ylo, yhi) as i32)
            .collect();
        let t = QLut {
            x,
            y,
            seg_bits: 0,
            frac_bits: 0,
            table,
        };
        t.validate()?;
        return Ok(t);
    }
    let frac_bits = 30 - y.bits;
    let n = 1usize << (x.bits - seg_bits); // intervals
    let h = (1u64 << seg_bits) as f64;
    let node = |i: usize| at(lo as f64 + i as f64 * h);
    // How far the chord of interval k lies above f at its midpoint.
    let mid_err = |k: usize| (node(k) + node(k + 1)) / 2.0 - at(lo as f64 + (k as f64 + 0.5) * h);
    let unit = (1u64 << frac_bits) as f64;
    let limit = (1u64 << 30) as f64;
    let table = (0..=n)
        .map(|i| {
            let bias = match i {
                0 => mid_err(0) / 2.0,
                i if i == n => mid_err(n - 1) / 2.0,
                i => (mid_err(i - 1) + mid_err(i)) / 4.0,
            };
            let v = node(i) - bias + y.zero_point as f64;
            let v = if v.is_nan() { 0.0 } else { v };
            (v * unit).round().clamp(-limit, limit) as i32
        })
        .collect();
    let t = QLut {
        x,
        y,
        seg_bits,
        frac_bits,
        table,
    };
    t.validate()?;
    Ok(t)
}

/// The worst `|lut(q) - clamp(f(x(q)) / s_y + zp_y)|` over every input integer `q`, in output
/// steps (`f` in f64).
pub fn max_error_steps(t: &QLut, f: LutFn) -> f64 {
    let (ylo, yhi) = (qmin(t.y.bits) as f64, qmax(t.y.bits) as f64);
    (qmin(t.x.bits)..=qmax(t.x.bits))
        .map(|q| {
            let real = t.x.scale as f64 * (q - t.x.zero_point as i64) as f64;
            let want = (f.eval(real) / t.y.scale as f64 + t.y.zero_point as f64).clamp(ylo, yhi);
            (t.eval(q as i32) as f64 - want).abs()
        })
        .fold(0.0, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ReLU and ReLU6 tables come from the float function like every other activation.
    #[test]
    fn relu_tables_within_tolerance() {
        for act in [Activation::Relu, Activation::Relu6] {
            for bits in [8u32, 16] {
                let sym = bits == 16;
                let x = ActQuant::from_range(-8.0, 8.0, bits, sym);
                let y = ActQuant::from_range(0.0, 8.0, bits, sym);
                let t = lut(LutFn::from(act), x, y).unwrap();
                let e = max_error_steps(&t, LutFn::from(act));
                assert!(e <= MAX_TABLE_ERROR_STEPS, "{act:?} A{bits}: {e}");
            }
        }
    }
}
