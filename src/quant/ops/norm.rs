//! Integer RMS normalisation: over the last dimension of `[T, D]` rows ([`QRmsNorm`], LFM2's
//! `Lfm2RmsNorm` and its per-head q/k norms) and over the channels of a `[C, H, W]` map
//! ([`QRmsNorm2d`], timm `RmsNorm2d`).
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

use super::linear::{centered_abs_max, check_act};
use super::softmax::reciprocal;
use crate::error::{Error, Result};
use crate::quant::arith::{
    check_multipliers, isqrt, qmax, qmin, rounding_shift_right, saturate, Multiplier,
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
        if self.eps_q64 > 1 << 126 {
            return Err(Error::input(format!(
                "QRmsNorm: eps_q64 {} exceeds 2^126",
                self.eps_q64
            )));
        }
        if self.w_mult.len() != dim || self.w_neg.len() != dim {
            return Err(Error::input(format!(
                "QRmsNorm: {} multipliers and {} signs for width {dim}",
                self.w_mult.len(),
                self.w_neg.len()
            )));
        }
        check_multipliers("QRmsNorm", "w_mult", &self.w_mult)?;
        if let Some(i) = self
            .w_mult
            .iter()
            .position(|m| m.m != 0 && !(-60..=60).contains(&m.shift))
        {
            return Err(Error::input(format!(
                "QRmsNorm: w_mult[{i}] shift {} outside [-60, 60]",
                self.w_mult[i].shift
            )));
        }
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

/// The largest `|q - zero_point|` of a quantization.
pub fn centered_max(q: &ActQuant) -> i64 {
    let zp = q.zero_point as i64;
    (qmin(q.bits) - zp).abs().max((qmax(q.bits) - zp).abs())
}

#[cfg(test)]
#[allow(clippy::float_arithmetic)]
mod tests {
    use super::*;
    use crate::ops::norm::{rms_norm_channels, rms_norm_rows};
    use crate::quant::ops::lut::test_rng::Lcg;
    use crate::quant::prepare::norm::{rms_norm, rms_norm_2d};

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
}
