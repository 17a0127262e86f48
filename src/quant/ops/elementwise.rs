//! Integer elementwise ops: [`QAdd`] (residuals), [`QMul`] (gates), [`QChannelScale`] (layer
//! scale), [`QRequantize`] (changing quantization parameters or bit width).
//!
//! Each output is produced by exactly one rounding ([`requantize`]); the inputs are centred
//! (`v - zero_point`) and combined exactly in `i64` first.

use super::linear::{centered_abs_max, check_act};
use crate::error::{Error, Result};
use crate::quant::arith::{check_multipliers, check_reduction, requantize, Multiplier};
use crate::quant::params::ActQuant;
use crate::quant::tensor::QTensor;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Bits of the common high-precision scale of [`QAdd`]: `s_c = max(s_a, s_b) / 2^ADD_SHIFT`.
/// (TFLite's add uses a left shift of 20 for int8 and 15 for int16 and rounds each rescaled input;
/// with `i64` the rescaled inputs are exact integers and only the output is rounded.)
pub const ADD_SHIFT: u32 = 40;

/// Work below this many elements runs on the calling thread.
const PAR_CHUNK: usize = 1 << 14;

fn check_same_shape(op: &str, a: &QTensor, b: &QTensor) {
    assert_eq!(a.shape, b.shape, "{op}: shapes differ");
}

/// `y = a + b` with different input quantizations:
/// `acc = (a - z_a) * a_mult + (b - z_b) * b_mult` (exact, in units of
/// `s_c = max(s_a, s_b) / 2^ADD_SHIFT`, `a_mult = round(s_a / s_c)`), then
/// `y = requantize(acc, s_c / s_y, z_y)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QAdd {
    pub a: ActQuant,
    pub b: ActQuant,
    pub y: ActQuant,
    /// `round(s_a / s_c)`, at most `2^ADD_SHIFT`.
    pub a_mult: i64,
    /// `round(s_b / s_c)`, at most `2^ADD_SHIFT`.
    pub b_mult: i64,
    /// `s_c / s_y`.
    pub out_mult: Multiplier,
}

impl QAdd {
    pub fn new(
        a: ActQuant,
        b: ActQuant,
        y: ActQuant,
        a_mult: i64,
        b_mult: i64,
        out_mult: Multiplier,
    ) -> Result<Self> {
        let add = Self {
            a,
            b,
            y,
            a_mult,
            b_mult,
            out_mult,
        };
        add.validate()?;
        Ok(add)
    }

    /// Checks the activations, the input multipliers (`[0, 2^ADD_SHIFT]`), the output
    /// multiplier, and that the exact sum fits `i64`.
    pub fn validate(&self) -> Result<()> {
        for (what, q) in [
            ("input a", &self.a),
            ("input b", &self.b),
            ("output", &self.y),
        ] {
            check_act("QAdd", what, q)?;
        }
        let lim = 1i64 << ADD_SHIFT;
        let (a_mult, b_mult) = (self.a_mult, self.b_mult);
        if !(0..=lim).contains(&a_mult) || !(0..=lim).contains(&b_mult) {
            return Err(Error::input(format!(
                "QAdd: input multipliers {a_mult}, {b_mult} outside [0, 2^{ADD_SHIFT}]"
            )));
        }
        self.out_mult
            .check()
            .map_err(|e| Error::input(format!("QAdd: output multiplier: {e}")))?;
        let amax = centered_abs_max(&self.a).max(centered_abs_max(&self.b));
        check_reduction("QAdd", 2, amax, lim, 0)
    }

    /// One element.
    #[inline]
    pub fn apply(&self, a: i16, b: i16) -> i16 {
        let acc = (a as i64 - self.a.zero_point as i64) * self.a_mult
            + (b as i64 - self.b.zero_point as i64) * self.b_mult;
        requantize(acc, self.out_mult, self.y.zero_point, self.y.bits) as i16
    }

    pub fn forward(&self, a: &QTensor, b: &QTensor) -> QTensor {
        check_same_shape("QAdd", a, b);
        assert_eq!(a.q, self.a, "QAdd: input a quantization differs");
        assert_eq!(b.q, self.b, "QAdd: input b quantization differs");
        let mut y = vec![0i16; a.numel()];
        y.par_chunks_mut(PAR_CHUNK)
            .zip(
                a.data
                    .par_chunks(PAR_CHUNK)
                    .zip(b.data.par_chunks(PAR_CHUNK)),
            )
            .for_each(|(o, (x, z))| {
                for ((o, &x), &z) in o.iter_mut().zip(x).zip(z) {
                    *o = self.apply(x, z);
                }
            });
        QTensor::new(&a.shape, y, self.y)
    }
}

/// `y = a * b`: `requantize((a - z_a) * (b - z_b), s_a * s_b / s_y, z_y)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QMul {
    pub a: ActQuant,
    pub b: ActQuant,
    pub y: ActQuant,
    /// `s_a * s_b / s_y`.
    pub mult: Multiplier,
}

impl QMul {
    pub fn new(a: ActQuant, b: ActQuant, y: ActQuant, mult: Multiplier) -> Result<Self> {
        let mul = Self { a, b, y, mult };
        mul.validate()?;
        Ok(mul)
    }

    /// Checks the activations, the multiplier, and that the product fits `i64`.
    pub fn validate(&self) -> Result<()> {
        for (what, q) in [
            ("input a", &self.a),
            ("input b", &self.b),
            ("output", &self.y),
        ] {
            check_act("QMul", what, q)?;
        }
        self.mult
            .check()
            .map_err(|e| Error::input(format!("QMul: multiplier: {e}")))?;
        check_reduction(
            "QMul",
            1,
            centered_abs_max(&self.a),
            centered_abs_max(&self.b),
            0,
        )
    }

    /// One element.
    #[inline]
    pub fn apply(&self, a: i16, b: i16) -> i16 {
        let p = (a as i64 - self.a.zero_point as i64) * (b as i64 - self.b.zero_point as i64);
        requantize(p, self.mult, self.y.zero_point, self.y.bits) as i16
    }

    pub fn forward(&self, a: &QTensor, b: &QTensor) -> QTensor {
        check_same_shape("QMul", a, b);
        assert_eq!(a.q, self.a, "QMul: input a quantization differs");
        assert_eq!(b.q, self.b, "QMul: input b quantization differs");
        let mut y = vec![0i16; a.numel()];
        y.par_chunks_mut(PAR_CHUNK)
            .zip(
                a.data
                    .par_chunks(PAR_CHUNK)
                    .zip(b.data.par_chunks(PAR_CHUNK)),
            )
            .for_each(|(o, (x, z))| {
                for ((o, &x), &z) in o.iter_mut().zip(x).zip(z) {
                    *o = self.apply(x, z);
                }
            });
        QTensor::new(&a.shape, y, self.y)
    }
}

/// Which dimension of a tensor is the channel of a per-channel constant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChannelAxis {
    /// Dimension 0: `[C, H, W]` maps.
    First,
    /// The last dimension: `[T, D]` token rows.
    Last,
}

/// `y[.., c, ..] = gamma[c] * x[.., c, ..]` for a constant vector `gamma` (timm `LayerScale2d`),
/// folded into per-channel multipliers `|gamma[c]| * s_x / s_y`; a negative `gamma[c]` negates the
/// centred input first (exact: the rounding is symmetric, so `round(-v) = -round(v)`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QChannelScale {
    pub axis: ChannelAxis,
    /// Per channel `|gamma[c]| * s_x / s_y`.
    #[serde(with = "crate::artifact::array")]
    pub mult: Vec<Multiplier>,
    /// Per channel: `gamma[c] < 0`.
    #[serde(with = "crate::artifact::array")]
    pub negate: Vec<bool>,
    pub x: ActQuant,
    pub y: ActQuant,
}

impl QChannelScale {
    pub fn new(
        axis: ChannelAxis,
        mult: Vec<Multiplier>,
        negate: Vec<bool>,
        x: ActQuant,
        y: ActQuant,
    ) -> Result<Self> {
        let cs = Self {
            axis,
            mult,
            negate,
            x,
            y,
        };
        cs.validate()?;
        Ok(cs)
    }

    /// Checks the activations and one valid multiplier and sign per channel (at least one).
    pub fn validate(&self) -> Result<()> {
        check_act("QChannelScale", "input", &self.x)?;
        check_act("QChannelScale", "output", &self.y)?;
        if self.mult.len() != self.negate.len() || self.mult.is_empty() {
            return Err(Error::input(format!(
                "QChannelScale: {} multipliers and {} signs",
                self.mult.len(),
                self.negate.len()
            )));
        }
        check_multipliers("QChannelScale", "multiplier", &self.mult)
    }

    pub fn channels(&self) -> usize {
        self.mult.len()
    }

    #[inline]
    fn apply(&self, c: usize, v: i16) -> i16 {
        let mut d = v as i64 - self.x.zero_point as i64;
        if self.negate[c] {
            d = -d;
        }
        requantize(d, self.mult[c], self.y.zero_point, self.y.bits) as i16
    }

    pub fn forward(&self, x: &QTensor) -> QTensor {
        assert_eq!(x.q, self.x, "QChannelScale: input quantization differs");
        let c = self.channels();
        let mut y = vec![0i16; x.numel()];
        match self.axis {
            ChannelAxis::First => {
                assert_eq!(
                    x.shape.first().copied(),
                    Some(c),
                    "QChannelScale: input {:?}, expected [{c}, ...]",
                    x.shape
                );
                let plane = x.numel() / c;
                if plane > 0 {
                    y.par_chunks_mut(plane)
                        .zip(x.data.par_chunks(plane))
                        .enumerate()
                        .for_each(|(ch, (o, v))| {
                            for (o, &v) in o.iter_mut().zip(v) {
                                *o = self.apply(ch, v);
                            }
                        });
                }
            }
            ChannelAxis::Last => {
                assert_eq!(
                    x.shape.last().copied(),
                    Some(c),
                    "QChannelScale: input {:?}, expected [..., {c}]",
                    x.shape
                );
                y.par_chunks_mut(c)
                    .zip(x.data.par_chunks(c))
                    .for_each(|(o, v)| {
                        for (ch, (o, &v)) in o.iter_mut().zip(v).enumerate() {
                            *o = self.apply(ch, v);
                        }
                    });
            }
        }
        QTensor::new(&x.shape, y, self.y)
    }
}

/// `y = requantize(x - z_x, s_x / s_y, z_y, bits_y)`: new scale, zero point or bit width.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QRequantize {
    pub x: ActQuant,
    pub y: ActQuant,
    /// `s_x / s_y`.
    pub mult: Multiplier,
}

impl QRequantize {
    pub fn new(x: ActQuant, y: ActQuant, mult: Multiplier) -> Result<Self> {
        let r = Self { x, y, mult };
        r.validate()?;
        Ok(r)
    }

    /// Checks the activations and the multiplier.
    pub fn validate(&self) -> Result<()> {
        check_act("QRequantize", "input", &self.x)?;
        check_act("QRequantize", "output", &self.y)?;
        self.mult
            .check()
            .map_err(|e| Error::input(format!("QRequantize: multiplier: {e}")))
    }

    /// Whether this is the identity (same parameters, multiplier exactly 1).
    pub fn is_identity(&self) -> bool {
        self.x == self.y && self.mult == Multiplier::ONE
    }

    #[inline]
    pub fn apply(&self, v: i16) -> i16 {
        let d = v as i64 - self.x.zero_point as i64;
        requantize(d, self.mult, self.y.zero_point, self.y.bits) as i16
    }

    /// Requantizes `src` into `dst` (same length).
    pub fn apply_slice(&self, src: &[i16], dst: &mut [i16]) {
        assert_eq!(src.len(), dst.len());
        if self.is_identity() {
            dst.copy_from_slice(src);
            return;
        }
        dst.par_chunks_mut(PAR_CHUNK)
            .zip(src.par_chunks(PAR_CHUNK))
            .for_each(|(o, v)| {
                for (o, &v) in o.iter_mut().zip(v) {
                    *o = self.apply(v);
                }
            });
    }

    pub fn forward(&self, x: &QTensor) -> QTensor {
        assert_eq!(x.q, self.x, "QRequantize: input quantization differs");
        let mut y = vec![0i16; x.numel()];
        self.apply_slice(&x.data, &mut y);
        QTensor::new(&x.shape, y, self.y)
    }
}

#[cfg(test)]
#[allow(clippy::float_arithmetic)]
mod tests {
    use super::super::linear::testutil::*;
    use super::*;
    use crate::quant::arith::{qmax, qmin};
    use crate::quant::prepare::elementwise as prep;

    fn a8(lo: f32, hi: f32) -> ActQuant {
        ActQuant::from_range(lo, hi, 8, false)
    }
    fn a16(amax: f32) -> ActQuant {
        ActQuant::from_range(-amax, amax, 16, true)
    }

    /// Input quantization pairs: A8/A8 (different scales and zero points), A16/A16, mixed, and a
    /// very lopsided pair of scales.
    fn pairs() -> Vec<(ActQuant, ActQuant)> {
        vec![
            (a8(-1.0, 3.0), a8(-0.2, 0.5)),
            (a16(2.0), a16(0.37)),
            (a8(-4.0, 1.0), a16(1.5)),
            (a16(1000.0), a8(-0.01, 0.02)),
        ]
    }

    /// Random values over the full integer range, plus the four extreme corners first.
    fn inputs(rng: &mut Lcg, n: usize, a: &ActQuant, b: &ActQuant) -> (Vec<i16>, Vec<i16>) {
        let mut x = rng.ints(n, a);
        let mut y = rng.ints(n, b);
        let (al, ah) = (qmin(a.bits) as i16, qmax(a.bits) as i16);
        let (bl, bh) = (qmin(b.bits) as i16, qmax(b.bits) as i16);
        for (i, (u, v)) in [(al, bl), (ah, bh), (al, bh), (ah, bl)]
            .into_iter()
            .enumerate()
        {
            x[i] = u;
            y[i] = v;
        }
        (x, y)
    }

    #[test]
    fn add_within_one_step_and_saturates() {
        let mut rng = Lcg::new(21);
        let n = 4000;
        let mut worst = 0.0f64;
        for (qa, qb) in pairs() {
            let (x, z) = inputs(&mut rng, n, &qa, &qb);
            let r: Vec<f64> = deq(&x, &qa)
                .iter()
                .zip(deq(&z, &qb))
                .map(|(u, v)| u + v)
                .collect();
            for ybits in [8, 16] {
                let yq = out_quant(&r, ybits, 0.8);
                let op = prep::add(qa, qb, yq).unwrap();
                let y = op.forward(
                    &QTensor::new(&[n / 2, 2], x.clone(), qa),
                    &QTensor::new(&[n / 2, 2], z.clone(), qb),
                );
                let what = format!("add {qa:?} + {qb:?} -> {ybits}");
                worst = worst.max(assert_within_one_step(&what, &y.data, &r, &yq));
            }
        }
        println!("QAdd: largest error {worst:.4} output steps");
    }

    #[test]
    fn add_of_real_zero_is_exact() {
        // a + (real 0) in a's own quantization returns a bit for bit: the rescale factors are
        // exact powers of two.
        let (qa, qb) = (a8(-1.0, 3.0), a8(-0.2, 0.5));
        let op = prep::add(qa, qb, qa).unwrap();
        let x: Vec<i16> = (-128..=127).collect();
        let z = vec![qb.zero_point as i16; x.len()];
        let y = op.forward(
            &QTensor::new(&[x.len()], x.clone(), qa),
            &QTensor::new(&[x.len()], z, qb),
        );
        assert_eq!(y.data, x);
    }

    #[test]
    fn mul_within_one_step_and_saturates() {
        let mut rng = Lcg::new(22);
        let n = 4000;
        let mut worst = 0.0f64;
        for (qa, qb) in pairs() {
            let (x, z) = inputs(&mut rng, n, &qa, &qb);
            let r: Vec<f64> = deq(&x, &qa)
                .iter()
                .zip(deq(&z, &qb))
                .map(|(u, v)| u * v)
                .collect();
            for ybits in [8, 16] {
                let yq = out_quant(&r, ybits, 0.8);
                let op = prep::mul(qa, qb, yq).unwrap();
                let y = op.forward(
                    &QTensor::new(&[n], x.clone(), qa),
                    &QTensor::new(&[n], z.clone(), qb),
                );
                let what = format!("mul {qa:?} * {qb:?} -> {ybits}");
                worst = worst.max(assert_within_one_step(&what, &y.data, &r, &yq));
            }
        }
        println!("QMul: largest error {worst:.4} output steps");
    }

    #[test]
    fn channel_scale_within_one_step_with_negative_and_zero_constants() {
        let mut rng = Lcg::new(23);
        let mut worst = 0.0f64;
        let gamma = [1e-5f32, -0.5, 0.0, 2.0, -3.0e-2, 1.0];
        let c = gamma.len();
        for xq in [a8(-2.0, 1.0), a16(4.0)] {
            for axis in [ChannelAxis::First, ChannelAxis::Last] {
                let (shape, n) = match axis {
                    ChannelAxis::First => (vec![c, 5, 7], c * 35),
                    ChannelAxis::Last => (vec![9, c], 9 * c),
                };
                let mut x = rng.ints(n, &xq);
                x[0] = qmin(xq.bits) as i16;
                x[n - 1] = qmax(xq.bits) as i16;
                let xd = deq(&x, &xq);
                let ch = |i: usize| match axis {
                    ChannelAxis::First => i / (n / c),
                    ChannelAxis::Last => i % c,
                };
                let r: Vec<f64> = xd
                    .iter()
                    .enumerate()
                    .map(|(i, v)| v * gamma[ch(i)] as f64)
                    .collect();
                for ybits in [8, 16] {
                    let yq = out_quant(&r, ybits, 0.8);
                    let op = prep::channel_scale(&gamma, axis, xq, yq).unwrap();
                    let y = op.forward(&QTensor::new(&shape, x.clone(), xq));
                    let what = format!("scale {xq:?} {axis:?} -> {ybits}");
                    worst = worst.max(assert_within_one_step(&what, &y.data, &r, &yq));
                    // gamma = 0 gives exactly real 0.
                    for (i, &v) in y.data.iter().enumerate() {
                        if ch(i) == 2 {
                            assert_eq!(v as i32, yq.zero_point);
                        }
                    }
                }
            }
        }
        println!("QChannelScale: largest error {worst:.4} output steps");
    }

    #[test]
    fn requantize_within_one_step_and_identity_is_exact() {
        let mut rng = Lcg::new(24);
        let mut worst = 0.0f64;
        for xq in [a8(-1.0, 3.0), a16(2.0)] {
            let mut x = rng.ints(3000, &xq);
            x[0] = qmin(xq.bits) as i16;
            x[1] = qmax(xq.bits) as i16;
            let r = deq(&x, &xq);
            for yq in [a8(-0.5, 1.5), a8(-2.0, 5.0), a16(1.0), a16(7.0)] {
                let op = prep::requantize(xq, yq).unwrap();
                let y = op.forward(&QTensor::new(&[3000], x.clone(), xq));
                let what = format!("requantize {xq:?} -> {yq:?}");
                worst = worst.max(assert_within_one_step(&what, &y.data, &r, &yq));
            }
            let id = prep::requantize(xq, xq).unwrap();
            assert!(id.is_identity());
            assert_eq!(id.forward(&QTensor::new(&[3000], x.clone(), xq)).data, x);
            // Changing only the zero point (same scale) is exact too.
            if xq.bits == 8 {
                let shifted = ActQuant {
                    zero_point: xq.zero_point - 3,
                    ..xq
                };
                let y = prep::requantize(xq, shifted)
                    .unwrap()
                    .forward(&QTensor::new(&[3000], x.clone(), xq));
                for (&u, &v) in x.iter().zip(&y.data) {
                    assert_eq!(v as i64, (u as i64 - 3).max(-128));
                }
            }
        }
        println!("QRequantize: largest error {worst:.4} output steps");
    }
}
