//! Integer RMS normalisation: over the last dimension of `[T, D]` rows ([`QRmsNorm`], LFM2's
//! `Lfm2RmsNorm` and its per-head q/k norms) and over the channels of a `[C, H, W]` map
//! ([`QRmsNorm2d`], timm `RmsNorm2d`); and integer LayerNorm over the last dimension
//! ([`QLayerNorm`], InternViT and the InternVL projector).
//!
//! With `xc = q - zp_x` (real `x = s_x xc`), `y = w x / sqrt(mean(x^2) + eps)` is, in integers,
//!
//! ```text
//! SS  = sum xc^2                                    (u64: D * 65535^2 < 2^62 for D < 2^30)
//! V   = SS * 2^64 + round(D * eps / s_x^2 * 2^64)   (u128: eps in the squared input domain, Q64)
//! y_c = round(xc * (|w_c| sqrt(D) / s_y) * 2^32 / sqrt(V)) * sign(w_c) + zp_y
//! ```
//!
//! `|w_c| sqrt(D) / s_y` is a per-channel [`Multiplier`] built at conversion; `2^32 / sqrt(V)`
//! is [`rsqrt`] (normalisation to 64 bits, `isqrt`, rounding, then the exact integer
//! [`reciprocal`]) once per row/pixel; the product `xc * m_c * m_r` (< 2^79, in `i128`) gets one
//! rounding. Relative error of the inverse square root <= 1.5 * 2^-31, so the output is within
//! `0.5 + 2^-15` output steps of the exact value (16-bit outputs).
//!
//! LayerNorm, `y = (x - mean) / sqrt(var + eps) * w + b` (biased variance), subtracts the mean
//! exactly by scaling it out: with `S = sum xc` and `SS = sum xc^2` over the `D` values of a row,
//!
//! ```text
//! u_c = D * xc_c - S                                = D^2 (x_c - mean) / (D s_x)   (|u| < 2 D cm)
//! W   = D * SS - S^2 = sum (D xc - S)^2 / D         = D^2 var / s_x^2              (W <= D^2 cm^2)
//! V   = W * 2^64 + round(D^2 * eps / s_x^2 * 2^64)  (u128: W < 2^63 is checked)
//! y_c = round((u_c * (|w_c| / s_y) * 2^32 / sqrt(V) * sign(w_c)) * 2^16 + b16_c) / 2^16) + zp_y
//! ```
//!
//! (`cm` the largest `|xc|`), since `(x - mean) / sqrt(var + eps) = u / sqrt(W + D^2 eps / s_x^2)`.
//! `|w_c| / s_y` is a per-channel [`Multiplier`], `2^32 / sqrt(V)` is [`rsqrt`] once per row, the
//! product `u m_c m_r` (< 2^95, `i128`) is rounded to `2^-16` output steps, the bias `b16_c =
//! round(b_c / s_y * 2^16)` is added there, and the sum is rounded once more to the output
//! ([`requantize_frac`]): within `0.5 + 2^-16 + 2^-29 |t|` output steps of the exact value, `t`
//! the normalised term before the bias in output steps (so `0.5 + 2^-13` for any `|t| <= 2^16`).
//! A row of equal values (`W = 0`) normalises to 0, so its output is the bias, as in torch for
//! `eps > 0` (with `eps = 0` torch divides 0 by 0; here it is the bias too).

use super::linear::{centered_abs_max, check_act};
use super::softmax::reciprocal;
use crate::error::{Error, Result};
use crate::quant::arith::{
    check_multipliers, isqrt, qmax, qmin, requantize_frac, rounding_shift_right, saturate,
    Multiplier, OUT_FRAC_BITS,
};
use crate::quant::params::ActQuant;
use crate::quant::tensor::QTensor;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// `1 / sqrt(v)` as a [`Multiplier`] (`m * 2^(shift - 31)`), relative error <= 1.5 * 2^-31.
///
/// `v` is scaled by an even power of two into `[2^62, 2^64)` (truncating below 2^-62 relative),
/// its square root taken with [`isqrt`] and rounded to nearest (`s` in `[2^31, 2^32]`), and
/// `1/s` is the correctly rounded [`reciprocal`].
pub fn rsqrt(v: u128) -> Multiplier {
    assert!(v > 0, "rsqrt of zero");
    let bits = 128 - v.leading_zeros() as i32;
    // v * 4^j in [2^62, 2^64).
    let j = (64 - bits).div_euclid(2);
    let v64 = if j >= 0 {
        (v << (2 * j)) as u64
    } else {
        (v >> (-2 * j)) as u64
    };
    let mut s = isqrt(v64);
    // Round: sqrt(v64) >= s + 1/2  <=>  v64 - s^2 > s  (integers, no tie).
    if v64 - s * s > s {
        s += 1;
    }
    // sqrt(v) ~ s * 2^-j, so 1/sqrt(v) = 2^j / s.
    let r = reciprocal(s);
    Multiplier {
        m: r.m,
        shift: r.shift + j,
    }
}

/// `round(p * 2^e)` for a signed exponent (ties away from zero), saturated to `i64`: the final
/// step of a product of several fixed-point factors formed exactly in `i128`.
#[inline]
pub fn scale_pow2(p: i128, e: i32) -> i64 {
    let y = if e <= 0 {
        if -e >= 127 {
            0
        } else {
            rounding_shift_right(p, (-e) as u32)
        }
    } else if e >= 127 || p.unsigned_abs() > (i128::MAX >> e) as u128 {
        if p < 0 {
            i128::MIN
        } else if p > 0 {
            i128::MAX
        } else {
            0
        }
    } else {
        p << e
    };
    y.clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

/// Integer RMSNorm over `dim`-wide rows (see the module docs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QRmsNorm {
    /// Width of the normalised vectors (`D`, or `C` for [`QRmsNorm2d`]).
    pub dim: usize,
    pub x: ActQuant,
    pub y: ActQuant,
    /// `round(dim * eps / s_x^2 * 2^64)`: the epsilon in the units of `SS * 2^64`.
    #[serde(with = "crate::artifact::array::decimal")]
    pub eps_q64: u128,
    /// `|w_c| * sqrt(dim) / s_y` per channel.
    #[serde(with = "crate::artifact::array")]
    pub w_mult: Vec<Multiplier>,
    /// Channels whose weight is negative.
    #[serde(with = "crate::artifact::array")]
    pub w_neg: Vec<bool>,
}

/// What every row norm's per-channel scaling relies on: `eps_q64 <= 2^126` (so `sum * 2^64 +
/// eps` fits a `u128`), one multiplier and one sign per channel, each multiplier valid with its
/// shift in `[-60, 60]` unless it is zero.
fn check_weight_scales(
    op: &str,
    eps_q64: u128,
    w_mult: &[Multiplier],
    w_neg: &[bool],
    dim: usize,
) -> Result<()> {
    if eps_q64 > 1 << 126 {
        return Err(Error::input(format!(
            "{op}: eps_q64 {eps_q64} exceeds 2^126"
        )));
    }
    if w_mult.len() != dim || w_neg.len() != dim {
        return Err(Error::input(format!(
            "{op}: {} multipliers and {} signs for width {dim}",
            w_mult.len(),
            w_neg.len()
        )));
    }
    check_multipliers(op, "w_mult", w_mult)?;
    if let Some(i) = w_mult
        .iter()
        .position(|m| m.m != 0 && !(-60..=60).contains(&m.shift))
    {
        return Err(Error::input(format!(
            "{op}: w_mult[{i}] shift {} outside [-60, 60]",
            w_mult[i].shift
        )));
    }
    Ok(())
}

impl QRmsNorm {
    /// Checks everything the kernels rely on: `dim > 0`, the activations, a sum of `dim` squares
    /// below `2^62` and `eps_q64 <= 2^126` (so `SS * 2^64 + eps` fits a `u128`), and per channel a
    /// valid multiplier (shift in `[-60, 60]` unless zero) and a sign.
    pub fn validate(&self) -> Result<()> {
        let dim = self.dim;
        check_act("QRmsNorm", "input", &self.x)?;
        check_act("QRmsNorm", "output", &self.y)?;
        if dim == 0 {
            return Err(Error::input("QRmsNorm: width must be positive"));
        }
        let cm = centered_abs_max(&self.x) as u128;
        if (dim as u128) * cm * cm >= 1 << 62 {
            return Err(Error::input(format!(
                "QRmsNorm: a sum of {dim} squares of {}-bit values could exceed 2^62",
                self.x.bits
            )));
        }
        check_weight_scales("QRmsNorm", self.eps_q64, &self.w_mult, &self.w_neg, dim)?;
        Ok(())
    }

    /// The row factor `2^32 / sqrt(SS * 2^64 + eps_q64)`, or `None` when that is zero over zero
    /// (an all-zero vector with `eps = 0`: the output is the zero point).
    #[inline]
    fn row_factor(&self, ss: u64) -> Option<Multiplier> {
        let v = ((ss as u128) << 64) + self.eps_q64;
        (v > 0).then(|| rsqrt(v))
    }

    /// One output integer: channel `c`, centred input `xc`, row factor `r`.
    #[inline]
    fn out(&self, xc: i64, c: usize, r: Multiplier) -> i16 {
        let w = self.w_mult[c];
        let p = xc as i128 * w.m as i128 * r.m as i128;
        let p = if self.w_neg[c] { -p } else { p };
        // w: 2^(sh_w - 31), r: 2^(sh_r - 31), times 2^32.
        let y = scale_pow2(p, w.shift + r.shift - 30);
        saturate(y.saturating_add(self.y.zero_point as i64), self.y.bits) as i16
    }

    /// Normalises one `dim`-wide vector of input integers.
    pub fn forward_row(&self, x: &[i16], out: &mut [i16]) {
        assert_eq!(x.len(), self.dim);
        assert_eq!(out.len(), self.dim);
        let zp = self.x.zero_point as i64;
        let ss: u64 = x
            .iter()
            .map(|&v| {
                let c = v as i64 - zp;
                (c * c) as u64
            })
            .sum();
        match self.row_factor(ss) {
            None => out.fill(self.y.zero_point as i16),
            Some(r) => {
                for (c, (o, &v)) in out.iter_mut().zip(x).enumerate() {
                    *o = self.out(v as i64 - zp, c, r);
                }
            }
        }
    }

    /// Every `dim`-wide row of `x` (any shape whose size is a multiple of `dim`, e.g. `[T, D]`
    /// or `[T, heads * head_dim]` with `dim = head_dim`).
    pub fn forward(&self, x: &QTensor) -> QTensor {
        debug_assert_eq!(x.q, self.x, "rms_norm input quantization");
        assert!(
            self.dim > 0 && x.numel().is_multiple_of(self.dim),
            "rms_norm: {} values are not rows of {}",
            x.numel(),
            self.dim
        );
        let mut out = vec![0i16; x.numel()];
        for (xr, or) in x
            .data
            .chunks_exact(self.dim)
            .zip(out.chunks_exact_mut(self.dim))
        {
            self.forward_row(xr, or);
        }
        QTensor::new(&x.shape, out, self.y)
    }
}

/// Integer `RmsNorm2d` over the channels of `[C, H, W]` (or `[C, HW]`): the same arithmetic as
/// [`QRmsNorm`] with `dim = C`, per pixel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QRmsNorm2d {
    pub norm: QRmsNorm,
}

impl QRmsNorm2d {
    /// [`QRmsNorm::validate`] of the per-pixel norm.
    pub fn validate(&self) -> Result<()> {
        self.norm.validate()
    }

    pub fn channels(&self) -> usize {
        self.norm.dim
    }

    pub fn forward(&self, x: &QTensor) -> QTensor {
        let n = &self.norm;
        debug_assert_eq!(x.q, n.x, "rms_norm_2d input quantization");
        let c = n.dim;
        assert!(
            c > 0 && x.shape[0] == c && x.numel().is_multiple_of(c),
            "rms_norm_2d: shape {:?} for {c} channels",
            x.shape
        );
        let hw = x.numel() / c;
        let zp = n.x.zero_point as i64;
        // Pixels in parallel chunks for the sums of squares and their factors, channel planes in
        // parallel for the outputs (integer arithmetic: the split changes nothing).
        const PIXELS: usize = 4096;
        let r: Vec<Option<Multiplier>> = (0..hw)
            .into_par_iter()
            .step_by(PIXELS)
            .flat_map_iter(|p0| {
                let p1 = (p0 + PIXELS).min(hw);
                let mut ss = vec![0u64; p1 - p0];
                for plane in x.data.chunks_exact(hw) {
                    for (s, &v) in ss.iter_mut().zip(&plane[p0..p1]) {
                        let d = v as i64 - zp;
                        *s += (d * d) as u64;
                    }
                }
                ss.into_iter().map(|s| n.row_factor(s))
            })
            .collect();
        let mut out = vec![0i16; x.numel()];
        out.par_chunks_mut(hw)
            .zip(x.data.par_chunks(hw))
            .enumerate()
            .for_each(|(ch, (oplane, plane))| {
                for ((o, &v), rf) in oplane.iter_mut().zip(plane).zip(&r) {
                    *o = match rf {
                        Some(rf) => n.out(v as i64 - zp, ch, *rf),
                        None => n.y.zero_point as i16,
                    };
                }
            });
        QTensor::new(&x.shape, out, n.y)
    }
}

/// Integer LayerNorm over `dim`-wide rows (see the module docs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QLayerNorm {
    /// Width of the normalised rows (`D`).
    pub dim: usize,
    pub x: ActQuant,
    pub y: ActQuant,
    /// `round(dim^2 * eps / s_x^2 * 2^64)`: the epsilon in the units of `W * 2^64`.
    #[serde(with = "crate::artifact::array::decimal")]
    pub eps_q64: u128,
    /// `|w_c| / s_y` per channel.
    #[serde(with = "crate::artifact::array")]
    pub w_mult: Vec<Multiplier>,
    /// Channels whose weight is negative.
    #[serde(with = "crate::artifact::array")]
    pub w_neg: Vec<bool>,
    /// `round(b_c / s_y * 2^OUT_FRAC_BITS)` per channel: the bias in output steps with
    /// [`OUT_FRAC_BITS`] fractional bits.
    #[serde(with = "crate::artifact::array")]
    pub bias: Option<Vec<i64>>,
}

/// The largest `|b16|` a [`QLayerNorm`] bias may hold: `2^31` output steps.
pub const LAYER_NORM_BIAS_MAX: i64 = 1 << (31 + OUT_FRAC_BITS);

impl QLayerNorm {
    /// Checks everything the kernel relies on: `dim > 0`, the activations, `W <= dim^2 cm^2 <
    /// 2^63` (so `W * 2^64 + eps_q64` fits a `u128`, and `D * xc - S`, `D * SS` fit `i64`),
    /// `eps_q64 <= 2^126`, per channel a valid multiplier (shift in `[-60, 60]` unless zero) and
    /// a sign, and biases of at most [`LAYER_NORM_BIAS_MAX`].
    pub fn validate(&self) -> Result<()> {
        let dim = self.dim;
        check_act("QLayerNorm", "input", &self.x)?;
        check_act("QLayerNorm", "output", &self.y)?;
        if dim == 0 {
            return Err(Error::input("QLayerNorm: width must be positive"));
        }
        let dc = (dim as u128).saturating_mul(centered_abs_max(&self.x) as u128);
        if dc.saturating_mul(dc) >= 1 << 63 {
            return Err(Error::input(format!(
                "QLayerNorm: the variance of {dim} {}-bit values could exceed 2^63",
                self.x.bits
            )));
        }
        check_weight_scales("QLayerNorm", self.eps_q64, &self.w_mult, &self.w_neg, dim)?;
        let nb = self.bias.as_ref().map_or(dim, Vec::len);
        if nb != dim {
            return Err(Error::input(format!(
                "QLayerNorm: {nb} biases for width {dim}"
            )));
        }
        if let Some(i) = self
            .bias
            .iter()
            .flatten()
            .position(|b| b.unsigned_abs() > LAYER_NORM_BIAS_MAX as u64)
        {
            return Err(Error::input(format!(
                "QLayerNorm: bias[{i}] outside +-2^{}",
                31 + OUT_FRAC_BITS
            )));
        }
        Ok(())
    }

    /// Normalises one `dim`-wide row of input integers.
    pub fn forward_row(&self, x: &[i16], out: &mut [i16]) {
        assert_eq!(x.len(), self.dim);
        assert_eq!(out.len(), self.dim);
        let zp = self.x.zero_point as i64;
        let d = self.dim as i64;
        // |S| <= D cm and SS <= D cm^2 < 2^63 / D (validated).
        let (s, ss) = x.iter().fold((0i64, 0i64), |(s, ss), &v| {
            let c = v as i64 - zp;
            (s + c, ss + c * c)
        });
        // W = D SS - S^2 >= 0 (Cauchy-Schwarz), exact.
        let w = d as i128 * ss as i128 - s as i128 * s as i128;
        let v = ((w as u128) << 64) + self.eps_q64;
        let bias = |c: usize| self.bias.as_ref().map_or(0, |b| b[c]);
        let (zy, by) = (self.y.zero_point, self.y.bits);
        if v == 0 {
            // Equal values with eps = 0: 0 / 0, taken as a normalised 0.
            for (c, o) in out.iter_mut().enumerate() {
                *o = requantize_frac(bias(c), OUT_FRAC_BITS, zy, by) as i16;
            }
            return;
        }
        let r = rsqrt(v);
        for (c, (o, &q)) in out.iter_mut().zip(x).enumerate() {
            let u = d * (q as i64 - zp) - s;
            let m = self.w_mult[c];
            let p = u as i128 * m.m as i128 * r.m as i128;
            let p = if self.w_neg[c] { -p } else { p };
            // m: 2^(sh_m - 31), r: 2^(sh_r - 31), times 2^32, in 2^-OUT_FRAC_BITS steps.
            let y16 = scale_pow2(p, m.shift + r.shift - 30 + OUT_FRAC_BITS as i32);
            *o = requantize_frac(y16.saturating_add(bias(c)), OUT_FRAC_BITS, zy, by) as i16;
        }
    }

    /// Every `dim`-wide row of `x` (`[T, D]`), rows in parallel.
    pub fn forward(&self, x: &QTensor) -> QTensor {
        debug_assert_eq!(x.q, self.x, "layer_norm input quantization");
        assert!(
            self.dim > 0 && x.numel().is_multiple_of(self.dim),
            "layer_norm: {} values are not rows of {}",
            x.numel(),
            self.dim
        );
        let mut out = vec![0i16; x.numel()];
        out.par_chunks_exact_mut(self.dim)
            .zip(x.data.par_chunks_exact(self.dim))
            .for_each(|(or, xr)| self.forward_row(xr, or));
        QTensor::new(&x.shape, out, self.y)
    }
}

/// The largest `|q - zero_point|` of a quantization.
pub fn centered_max(q: &ActQuant) -> i64 {
    let zp = q.zero_point as i64;
    (qmin(q.bits) - zp).abs().max((qmax(q.bits) - zp).abs())
}

#[cfg(test)]
#[allow(clippy::float_arithmetic)]
mod tests {
    use super::*;
    use crate::ops::norm::{layer_norm_rows, rms_norm_channels, rms_norm_rows};
    use crate::quant::ops::linear::testutil::deq;
    use crate::quant::ops::lut::test_rng::Lcg;
    use crate::quant::prepare::norm::{layer_norm, rms_norm, rms_norm_2d};

    #[test]
    fn rsqrt_relative_error() {
        let mut rng = Lcg::new(1);
        let mut worst = 0.0f64;
        let mut vs: Vec<u128> = vec![1, 2, 3, 4, 5, u64::MAX as u128, u128::MAX >> 1, 1 << 64];
        for _ in 0..100_000 {
            let hi = rng.next_u64() as u128;
            let lo = rng.next_u64() as u128;
            let v = ((hi << 64) | lo) >> rng.below(127);
            vs.push(v.max(1));
        }
        for v in vs {
            let r = rsqrt(v);
            let got = r.m as f64 * 2f64.powi(r.shift - 31);
            let want = 1.0 / (v as f64).sqrt();
            worst = worst.max((got / want - 1.0).abs());
        }
        println!("rsqrt: max relative error {worst:.3e}");
        assert!(worst <= 1.5 * 2f64.powi(-31) + 1e-15, "{worst}");
    }

    /// Worst `|y_q - clamp(y / s_y + zp)|` in output steps.
    fn worst(y: &QTensor, want: &[f32]) -> f64 {
        let (lo, hi) = (qmin(y.q.bits) as f64, qmax(y.q.bits) as f64);
        y.data
            .iter()
            .zip(want)
            .map(|(&q, &w)| {
                let t = (w as f64 / y.q.scale as f64 + y.q.zero_point as f64).clamp(lo, hi);
                (q as f64 - t).abs()
            })
            .fold(0.0, f64::max)
    }

    fn random_weight(rng: &mut Lcg, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| match i % 17 {
                0 => 0.0,
                1 => -0.7,
                _ => (0.2 + 1.5 * rng.uniform()) as f32,
            })
            .collect()
    }

    fn random_q(rng: &mut Lcg, n: usize, q: ActQuant, spread: f64) -> Vec<i16> {
        (0..n)
            .map(|_| {
                let v = rng.normal() * spread / q.scale as f64 + q.zero_point as f64;
                v.round().clamp(qmin(q.bits) as f64, qmax(q.bits) as f64) as i16
            })
            .collect()
    }

    #[test]
    fn rms_norm_rows_within_one_step() {
        let mut rng = Lcg::new(21);
        let mut lines = Vec::new();
        for &(bits, d, eps, xr, yr) in &[
            (16u32, 64usize, 1e-5f32, 8.0f32, 6.0f32),
            (16, 2048, 1e-5, 40.0, 12.0),
            (16, 256, 1e-6, 0.05, 8.0),
            (8, 128, 1e-5, 4.0, 6.0),
            (8, 32, 1e-2, 2.0, 3.0),
        ] {
            let sym = bits == 16;
            let xq = ActQuant::from_range(-xr, if sym { xr } else { xr * 0.5 }, bits, sym);
            let yq = ActQuant::from_range(-yr, yr, bits, sym);
            let w = random_weight(&mut rng, d);
            let op = rms_norm(&w, eps, xq, yq).unwrap();
            let t = 9;
            let mut data = random_q(&mut rng, t * d, xq, xr as f64 / 4.0);
            // Extremes: a saturated row, an all-zero row (eps only), a tiny row.
            let (lo, hi) = (qmin(bits) as i16, qmax(bits) as i16);
            for (i, v) in data[..d].iter_mut().enumerate() {
                *v = if i % 3 == 0 { lo } else { hi };
            }
            data[d..2 * d].fill(xq.zero_point as i16);
            for (i, v) in data[2 * d..3 * d].iter_mut().enumerate() {
                *v = xq.zero_point as i16 + (i % 3) as i16 - 1;
            }
            let x = QTensor::new(&[t, d], data, xq);
            let y = op.forward(&x);
            let mut want = x.dequantize().data().to_vec();
            rms_norm_rows(&mut want, d, &w, eps);
            let e = worst(&y, &want);
            lines.push(format!(
                "rms_norm A{bits} D={d} eps={eps}: max error {e:.4} steps"
            ));
            assert!(e <= 0.51, "A{bits} D={d}: {e}");
            // The all-zero row maps to the zero point.
            assert!(y.data[d..2 * d].iter().all(|&v| v as i32 == yq.zero_point));
        }
        for l in lines {
            println!("{l}");
        }
    }

    #[test]
    fn rms_norm_2d_matches_channels_reference() {
        let mut rng = Lcg::new(4);
        for &(bits, c, hw) in &[(16u32, 96usize, 35usize), (8, 40, 49)] {
            let sym = bits == 16;
            let xq = ActQuant::from_range(-5.0, 5.0, bits, sym);
            let yq = ActQuant::from_range(-4.0, 4.0, bits, sym);
            let w = random_weight(&mut rng, c);
            let op = rms_norm_2d(&w, 1e-6, xq, yq).unwrap();
            let mut data = random_q(&mut rng, c * hw, xq, 1.5);
            // Pixel 0 all zero, pixel 1 saturated.
            for ch in 0..c {
                data[ch * hw] = xq.zero_point as i16;
                data[ch * hw + 1] = qmax(bits) as i16;
            }
            let x = QTensor::new(&[c, hw / 7, 7], data, xq);
            let y = op.forward(&x);
            let mut want = x.dequantize().data().to_vec();
            rms_norm_channels(&mut want, c, &w, 1e-6);
            let e = worst(&y, &want);
            println!("rms_norm_2d A{bits} C={c} HW={hw}: max error {e:.4} steps");
            assert!(e <= 0.51, "{e}");
            // Rows and channels agree on transposed data.
            let rows = rms_norm(&w, 1e-6, xq, yq).unwrap();
            let xt: Vec<i16> = (0..hw)
                .flat_map(|p| (0..c).map(move |ch| (p, ch)))
                .map(|(p, ch)| x.data[ch * hw + p])
                .collect();
            let yr = rows.forward(&QTensor::new(&[hw, c], xt, xq));
            for p in 0..hw {
                for ch in 0..c {
                    assert_eq!(yr.data[p * c + ch], y.data[ch * hw + p]);
                }
            }
        }
    }

    #[test]
    fn sum_of_squares_beyond_i32_is_exact() {
        // D = 8192 int16 extremes: SS = 8192 * 2^30 = 2^43 (an i32 accumulator would overflow
        // after 2 terms); the output is exactly w * sqrt(D) * xc / sqrt(SS) = +-w.
        let d = 8192;
        let xq = ActQuant {
            scale: 1e-3,
            zero_point: 0,
            bits: 16,
        };
        let yq = ActQuant {
            scale: 1.0 / 16384.0,
            zero_point: 0,
            bits: 16,
        };
        let w: Vec<f32> = (0..d)
            .map(|i| if i % 2 == 0 { 1.0 } else { -0.5 })
            .collect();
        let op = rms_norm(&w, 0.0, xq, yq).unwrap();
        let x = QTensor::new(&[1, d], vec![-32768; d], xq);
        let y = op.forward(&x);
        for (i, &v) in y.data.iter().enumerate() {
            assert_eq!(v, if i % 2 == 0 { -16384 } else { 8192 }, "{i}");
        }
        // Mixed extremes with eps: compare against the float path.
        let data: Vec<i16> = (0..d)
            .map(|i| if i % 5 == 0 { -32768 } else { 32767 })
            .collect();
        let op = rms_norm(&w, 1e-5, xq, yq).unwrap();
        let x = QTensor::new(&[1, d], data, xq);
        let y = op.forward(&x);
        let mut want = x.dequantize().data().to_vec();
        rms_norm_rows(&mut want, d, &w, 1e-5);
        let e = worst(&y, &want);
        println!("rms_norm D=8192 int16 extremes: max error {e:.4} steps");
        assert!(e <= 0.51);
    }

    /// `torch.nn.LayerNorm` on the dequantized input in `f64` (the exact value the integer op
    /// approximates; `ops::norm::layer_norm_rows` rounds in `f32` and cancels badly on rows with
    /// a large mean).
    fn layer_norm_f64(x: &QTensor, w: &[f32], b: Option<&[f32]>, eps: f32) -> Vec<f64> {
        let d = w.len();
        let x = deq(&x.data, &x.q);
        let mut y = Vec::with_capacity(x.len());
        for row in x.chunks_exact(d) {
            let mean = row.iter().sum::<f64>() / d as f64;
            let var = row.iter().map(|&v| (v - mean).powi(2)).sum::<f64>() / d as f64;
            let inv = 1.0 / (var + eps as f64).sqrt();
            for (i, &v) in row.iter().enumerate() {
                let t = (v - mean) * inv * w[i] as f64;
                y.push(t + b.map_or(0.0, |b| b[i] as f64));
            }
        }
        y
    }

    /// Worst error in output steps against an `f64` reference.
    fn worst64(y: &QTensor, want: &[f64]) -> f64 {
        let (lo, hi) = (qmin(y.q.bits) as f64, qmax(y.q.bits) as f64);
        y.data
            .iter()
            .zip(want)
            .map(|(&q, &w)| {
                let t = (w / y.q.scale as f64 + y.q.zero_point as f64).clamp(lo, hi);
                (q as f64 - t).abs()
            })
            .fold(0.0, f64::max)
    }

    #[test]
    fn layer_norm_rows_within_half_a_step() {
        let mut rng = Lcg::new(41);
        let mut lines = Vec::new();
        // (bits, D, eps, input half-range, input mean, output half-range, bias)
        for &(bits, d, eps, xr, mean, yr, with_bias) in &[
            (16u32, 64usize, 1e-6f32, 8.0f32, 2.0f32, 6.0f32, true),
            (16, 1024, 1e-6, 40.0, -5.0, 12.0, true),
            (16, 4096, 1e-5, 3.0, 0.0, 8.0, true),
            (16, 33, 1e-5, 0.05, 0.01, 8.0, false),
            (16, 7, 1e-6, 4.0, 1.0, 4.0, true),
            (8, 128, 1e-5, 4.0, 1.0, 6.0, true),
            (8, 3, 1e-2, 2.0, -0.5, 3.0, false),
            (8, 1025, 1e-6, 6.0, 2.5, 5.0, true),
        ] {
            let sym = bits == 16;
            let xq = ActQuant::from_range(mean - xr, mean + xr, bits, sym);
            let yq = ActQuant::from_range(-yr, yr, bits, sym);
            let w = random_weight(&mut rng, d);
            let b: Vec<f32> = (0..d).map(|_| (rng.normal() * 0.3) as f32).collect();
            let b = with_bias.then_some(b.as_slice());
            let op = layer_norm(&w, b, eps, xq, yq).unwrap();
            let t = 9;
            let mut data: Vec<i16> = random_q(&mut rng, t * d, xq, xr as f64 / 3.0)
                .into_iter()
                .map(|v| {
                    let m = (mean / xq.scale) as i64;
                    (v as i64 + m).clamp(qmin(bits), qmax(bits)) as i16
                })
                .collect();
            let (lo, hi) = (qmin(bits) as i16, qmax(bits) as i16);
            // Extremes: a saturated row, a constant row, a row of two values at the extremes, a
            // tiny row around a large offset.
            for (i, v) in data[..d].iter_mut().enumerate() {
                *v = if i % 3 == 0 { lo } else { hi };
            }
            data[d..2 * d].fill(hi - 3);
            for (i, v) in data[2 * d..3 * d].iter_mut().enumerate() {
                *v = if i % 2 == 0 { lo } else { hi };
            }
            for (i, v) in data[3 * d..4 * d].iter_mut().enumerate() {
                *v = hi - 5 + (i % 3) as i16;
            }
            let x = QTensor::new(&[t, d], data, xq);
            let y = op.forward(&x);
            let xf = x.dequantize();
            let want = layer_norm_f64(&x, &w, b, eps);
            let e = worst64(&y, &want);
            // The float op agrees where it does not cancel (the random rows).
            let mut f32_ref = xf.data()[4 * d..].to_vec();
            layer_norm_rows(&mut f32_ref, d, &w, b, eps);
            let tail = QTensor::new(&[t - 4, d], y.data[4 * d..].to_vec(), yq);
            let ef = worst(&tail, &f32_ref);
            lines.push(format!(
                "layer_norm A{bits} D={d} eps={eps} bias={with_bias}: max error {e:.4} steps \
                 (f64 reference), {ef:.4} (f32 op, random rows)"
            ));
            assert!(e <= 0.5 + 1e-3, "A{bits} D={d}: {e}");
            assert!(ef <= 0.51, "A{bits} D={d}: {ef} against the f32 op");
            // The constant row is the bias (rounded to the output).
            for (c, &v) in y.data[d..2 * d].iter().enumerate() {
                assert_bias(v, b.map_or(0.0, |b| b[c]), &yq);
            }
        }
        for l in lines {
            println!("{l}");
        }
    }

    #[test]
    fn layer_norm_exact_values_and_wide_rows() {
        // Rows of +-a: the normalised values are exactly +-1, so the outputs are +-w / s_y.
        let d = 12800; // InternVL-6B's projector LayerNorm width (3200 * 4)
        let xq = ActQuant {
            scale: 1e-3,
            zero_point: 0,
            bits: 16,
        };
        let yq = ActQuant {
            scale: 1.0 / 8192.0,
            zero_point: 0,
            bits: 16,
        };
        let w: Vec<f32> = (0..d)
            .map(|i| match i % 4 {
                0 => 1.0,
                1 => -0.5,
                2 => 0.0,
                _ => 2.0,
            })
            .collect();
        let op = layer_norm(&w, None, 0.0, xq, yq).unwrap();
        let data: Vec<i16> = (0..d)
            .map(|i| if i % 8 < 4 { -32768 } else { 32766 })
            .collect();
        let y = op.forward(&QTensor::new(&[1, d], data.clone(), xq));
        for (i, &v) in y.data.iter().enumerate() {
            let sign = if i % 8 < 4 { -1.0 } else { 1.0 };
            assert_eq!(v as f32, sign * w[i] * 8192.0, "{i}");
        }
        // With eps and a bias: against the f64 reference.
        let b: Vec<f32> = (0..d).map(|i| (i % 5) as f32 * 0.25 - 0.5).collect();
        let op = layer_norm(&w, Some(&b), 1e-6, xq, yq).unwrap();
        let x = QTensor::new(&[1, d], data, xq);
        let y = op.forward(&x);
        let want = layer_norm_f64(&x, &w, Some(&b), 1e-6);
        let e = worst64(&y, &want);
        println!("layer_norm D={d} int16 extremes: max error {e:.4} steps");
        assert!(e <= 0.5 + 1e-3, "{e}");
        // A row of one value normalises to the bias; eps = 0 included (0 / 0 taken as 0).
        for eps in [0.0, 1e-5] {
            let op = layer_norm(&w[..5], Some(&b[..5]), eps, xq, yq).unwrap();
            let y = op.forward(&QTensor::new(&[2, 5], vec![1234; 10], xq));
            for (c, &v) in y.data.iter().enumerate() {
                assert_bias(v, b[c % 5], &yq);
            }
        }
        // Width 1: every row is constant.
        let op = layer_norm(&[3.0], Some(&[0.75]), 1e-5, xq, yq).unwrap();
        let y = op.forward(&QTensor::new(&[3, 1], vec![-32768, 0, 32767], xq));
        assert!(y.data.iter().all(|&v| v as i32 == yq.quantize(0.75)));
    }

    /// `v` is the output integer of `bias`, within the rounding of a bias held to `2^-16` steps.
    fn assert_bias(v: i16, bias: f32, yq: &ActQuant) {
        let (lo, hi) = (qmin(yq.bits) as f64, qmax(yq.bits) as f64);
        let exact = (bias as f64 / yq.scale as f64 + yq.zero_point as f64).clamp(lo, hi);
        assert!(
            (v as f64 - exact).abs() <= 0.5 + 2f64.powi(-16),
            "{v} for the bias {bias} ({exact} steps)"
        );
    }

    #[test]
    fn layer_norm_saturates_and_refuses_what_it_cannot_represent() {
        let xq = ActQuant::from_range(-4.0, 4.0, 16, true);
        // A narrow output range: every |y| > 0.5 saturates.
        let yq = ActQuant::from_range(-0.5, 0.5, 8, false);
        let w = vec![1.0f32; 16];
        let op = layer_norm(&w, None, 1e-5, xq, yq).unwrap();
        let data: Vec<i16> = (0..16).map(|i| (i * 4000 - 30000) as i16).collect();
        let y = op.forward(&QTensor::new(&[1, 16], data, xq));
        assert_eq!(y.data[0], -128);
        assert_eq!(y.data[15], 127);
        // Too wide for the variance bound, non-finite values, mismatched bias.
        assert!(layer_norm(&vec![1.0; 1 << 17], None, 1e-5, xq, yq).is_err());
        assert!(layer_norm(&[f32::NAN], None, 1e-5, xq, yq).is_err());
        assert!(layer_norm(&w, Some(&[0.0; 3]), 1e-5, xq, yq).is_err());
        assert!(layer_norm(&w, None, -1.0, xq, yq).is_err());
        assert!(layer_norm(&w, Some(&[1e30; 16]), 1e-5, xq, yq).is_err());
        // validate catches what a file could hold.
        let mut bad = op.clone();
        bad.bias = Some(vec![LAYER_NORM_BIAS_MAX + 1; 16]);
        assert!(bad.validate().is_err());
        let mut bad = op.clone();
        bad.w_neg.pop();
        assert!(bad.validate().is_err());
        let mut bad = op;
        bad.dim = 1 << 20;
        assert!(bad.validate().is_err());
    }
}
