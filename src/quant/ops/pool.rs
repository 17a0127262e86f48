//! Integer pooling, resizing and concatenation on `[C, H, W]` maps (the MSFA's ops):
//! [`QAvgPool2d`] (kernel = stride, no padding: sum, then one requantization),
//! [`QUpsampleNearest`] (pure index copy with the float path's index rule, same parameters),
//! [`QResizeBilinear`] (four tabulated taps with fixed-point weights, one requantization) and
//! [`QConcat`] (every input requantized to the output parameters).

use super::elementwise::QRequantize;
use super::linear::{centered_abs_max, check_act};
use crate::error::{Error, Result};
use crate::quant::arith::{check_reduction, requantize, size_product, Multiplier};
use crate::quant::params::ActQuant;
use crate::quant::tensor::QTensor;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

fn chw(x: &QTensor, op: &str) -> (usize, usize, usize) {
    assert_eq!(
        x.shape.len(),
        3,
        "{op}: expected a [C, H, W] map, got {:?}",
        x.shape
    );
    (x.shape[0], x.shape[1], x.shape[2])
}

/// `F.avg_pool2d(x, (kh, kw), stride=(kh, kw))` (floor mode, no padding):
/// `y = requantize(sum_window (x - z_x), s_x / (kh * kw * s_y), z_y)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QAvgPool2d {
    pub kh: usize,
    pub kw: usize,
    /// `s_x / (kh * kw * s_y)`.
    pub mult: Multiplier,
    pub x: ActQuant,
    pub y: ActQuant,
}

impl QAvgPool2d {
    pub fn new(kh: usize, kw: usize, mult: Multiplier, x: ActQuant, y: ActQuant) -> Result<Self> {
        let p = Self { kh, kw, mult, x, y };
        p.validate()?;
        Ok(p)
    }

    /// Checks the activations, a positive kernel, the multiplier and the window sum's bound.
    /// (Whether the kernel fits a given input is a property of the input.)
    pub fn validate(&self) -> Result<()> {
        let (kh, kw) = (self.kh, self.kw);
        check_act("QAvgPool2d", "input", &self.x)?;
        check_act("QAvgPool2d", "output", &self.y)?;
        if kh == 0 || kw == 0 {
            return Err(Error::input("QAvgPool2d: kernel must be positive"));
        }
        self.mult
            .check()
            .map_err(|e| Error::input(format!("QAvgPool2d: multiplier: {e}")))?;
        let window = size_product("QAvgPool2d window", &[kh, kw])?;
        check_reduction("QAvgPool2d", window, centered_abs_max(&self.x), 1, 0)
    }

    pub fn forward(&self, x: &QTensor) -> QTensor {
        let (c, h, w) = chw(x, "QAvgPool2d");
        assert_eq!(x.q, self.x, "QAvgPool2d: input quantization differs");
        let (kh, kw) = (self.kh, self.kw);
        assert!(
            h >= kh && w >= kw,
            "QAvgPool2d: kernel {kh}x{kw} larger than input {h}x{w}"
        );
        let (oh, ow) = (h / kh, w / kw);
        let zp = self.x.zero_point as i64;
        let mut y = vec![0i16; c * oh * ow];
        if oh * ow > 0 {
            y.par_chunks_mut(oh * ow)
                .zip(x.data.par_chunks(h * w))
                .for_each(|(dst, src)| {
                    for oy in 0..oh {
                        for ox in 0..ow {
                            let mut sum = 0i64;
                            for ky in 0..kh {
                                let row = &src[(oy * kh + ky) * w + ox * kw..][..kw];
                                sum += row.iter().map(|&v| v as i64 - zp).sum::<i64>();
                            }
                            dst[oy * ow + ox] =
                                requantize(sum, self.mult, self.y.zero_point, self.y.bits) as i16;
                        }
                    }
                });
        }
        QTensor::new(&[c, oh, ow], y, self.y)
    }
}

/// `F.interpolate(x, size=(oh, ow), mode="nearest")` from `h x w`: the source rows and columns
/// are tabulated at conversion time with the float path's rule
/// ([`crate::ops::pool::nearest_index`], which PyTorch computes in `f32`), so the copy is
/// bit-exact with it. Values and quantization are unchanged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QUpsampleNearest {
    pub h: usize,
    pub w: usize,
    /// Source row of each output row (`oh` entries, each `< h`).
    #[serde(with = "crate::artifact::array")]
    pub ys: Vec<usize>,
    /// Source column of each output column (`ow` entries, each `< w`).
    #[serde(with = "crate::artifact::array")]
    pub xs: Vec<usize>,
}

impl QUpsampleNearest {
    pub fn new(h: usize, w: usize, ys: Vec<usize>, xs: Vec<usize>) -> Result<Self> {
        let r = Self { h, w, ys, xs };
        r.validate()?;
        Ok(r)
    }

    /// Checks the index tables: non-empty, every source row `< h` and column `< w`.
    pub fn validate(&self) -> Result<()> {
        let (h, w, ys, xs) = (self.h, self.w, &self.ys, &self.xs);
        if ys.iter().any(|&i| i >= h)
            || xs.iter().any(|&i| i >= w)
            || ys.is_empty()
            || xs.is_empty()
        {
            return Err(Error::input(format!(
                "QUpsampleNearest: index tables ({} x {}) do not fit a {h}x{w} input",
                ys.len(),
                xs.len()
            )));
        }
        Ok(())
    }

    pub fn out_size(&self) -> (usize, usize) {
        (self.ys.len(), self.xs.len())
    }

    pub fn forward(&self, x: &QTensor) -> QTensor {
        let (c, h, w) = chw(x, "QUpsampleNearest");
        assert!(
            h == self.h && w == self.w,
            "QUpsampleNearest: input {h}x{w}, prepared for {}x{}",
            self.h,
            self.w
        );
        let (oh, ow) = self.out_size();
        let mut y = vec![0i16; c * oh * ow];
        y.par_chunks_mut(oh * ow)
            .zip(x.data.par_chunks(h * w))
            .for_each(|(dst, src)| {
                for (drow, &iy) in dst.chunks_exact_mut(ow).zip(&self.ys) {
                    let srow = &src[iy * w..(iy + 1) * w];
                    for (o, &ix) in drow.iter_mut().zip(&self.xs) {
                        *o = srow[ix];
                    }
                }
            });
        QTensor::new(&[c, oh, ow], y, x.q)
    }
}

/// Fractional bits `F` of the bilinear weights of [`QResizeBilinear`]: a weight `l` in `[0, 1]` is
/// stored as the integer `round(l * 2^F)`.
///
/// Why 20 and not 15 or 16: rounding a weight to `F` bits moves the output by up to
/// `2^-F * 2^bits_x` input steps (see [`QResizeBilinear`]), a whole output step at `F = 16` for a
/// 16-bit map resized in its own quantization, on top of the final rounding's half step. At
/// `F = 20` that term is at most 1/16 of a step there, and the accumulator stays far inside
/// `i64` (`|acc| <= 65535 * 2^(2F) < 2^56`). Narrower weights would only help a 32-bit kernel,
/// which 16-bit activations rule out anyway (`2^16 * 2^15` already overflows `i32`). Measured on
/// the tests' resizes (16-bit checkerboards, worst output): 1.68 steps at `F = 15`, 0.94 at
/// `F = 16`, 0.52 at `F = 20`.
pub const RESIZE_WEIGHT_BITS: u32 = 20;

/// `2^F`: the sum of the two weights of every [`LinearTap`].
pub const RESIZE_WEIGHT_ONE: u32 = 1 << RESIZE_WEIGHT_BITS;

/// One output row (or column) of a bilinear resize: source indices `i0`, `i1` and their weights,
/// integers of [`RESIZE_WEIGHT_BITS`] fractional bits with `w0 + w1 == 2^F`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinearTap {
    pub i0: usize,
    pub i1: usize,
    pub w0: u32,
    pub w1: u32,
}

impl LinearTap {
    fn check(&self, axis: &str, k: usize, len: usize) -> Result<()> {
        if self.i0 >= len || self.i1 >= len {
            return Err(Error::input(format!(
                "QResizeBilinear: {axis} tap {k} reads indices {} and {}, outside an input of {len}",
                self.i0, self.i1
            )));
        }
        if self.w0 as u64 + self.w1 as u64 != RESIZE_WEIGHT_ONE as u64 {
            return Err(Error::input(format!(
                "QResizeBilinear: {axis} tap {k} has weights {} + {} != 2^{RESIZE_WEIGHT_BITS}",
                self.w0, self.w1
            )));
        }
        Ok(())
    }
}

/// `F.interpolate(x, size=(oh, ow), mode="bilinear", align_corners=False)` (no antialias) of an
/// `h x w` map. The taps of every output row and column are tabulated at conversion time with
/// the float path's rule ([`crate::ops::pool::linear_coeffs`], PyTorch's `f32` source index),
/// so both paths read the same pixels; with `F` = [`RESIZE_WEIGHT_BITS`]:
///
/// `y = requantize(sum_{i, j} (x[y_i, x_j] - z_x) * wy_i * wx_j, s_x / (s_y * 2^(2F)), z_y)`.
///
/// Weights: each axis's fraction `l` (the `f32` weight of `i1`) becomes `w1 = round(l * 2^F)`,
/// `w0 = 2^F - w1`, so the weights sum to one exactly: a constant map stays constant, taps on the
/// same pixel (the clamped edge) copy it exactly, and at the identity size the op is exactly
/// the requantization `s_x / s_y` (the multiplier differs from it by the power of two only).
///
/// Error bound, in output steps, against the exact real interpolation of the dequantized input
/// with the float path's `f32` weights: each integer weight is within `2^-(F+1)` of its `f32`
/// weight (plus the `2^-25` by which `f32` rounds `1 - l`), and the weight errors of one axis
/// cancel up to the difference of two taps (at most `2^bits_x - 1` input steps), so
///
/// `|y - exact| <= 1/2 + (2^-F + 2^-24 + 2^-31) * 2^bits_x * s_x / s_y`
///
/// (final rounding; weight rounding; the float weights' own sum error and the 31-bit
/// multiplier). For `F = 20` this is within one step whenever the input's full range spans at
/// most 2^18 output steps (`<= 0.77`), e.g. any 16-bit map resized in its own quantization
/// (`<= 0.57`).
/// The result does not depend on the thread count: each output is one exact integer sum.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QResizeBilinear {
    pub h: usize,
    pub w: usize,
    /// One per output row (`oh` entries, indices `< h`).
    #[serde(with = "crate::artifact::array")]
    pub rows: Vec<LinearTap>,
    /// One per output column (`ow` entries, indices `< w`).
    #[serde(with = "crate::artifact::array")]
    pub cols: Vec<LinearTap>,
    /// `s_x / (s_y * 2^(2F))`.
    pub mult: Multiplier,
    pub x: ActQuant,
    pub y: ActQuant,
}

impl QResizeBilinear {
    /// Validates the tables (non-empty, indices inside `h x w`, each pair of weights summing to
    /// `2^F`), the quantizations and the multiplier, and proves the accumulator bound.
    pub fn new(
        h: usize,
        w: usize,
        rows: Vec<LinearTap>,
        cols: Vec<LinearTap>,
        mult: Multiplier,
        x: ActQuant,
        y: ActQuant,
    ) -> Result<Self> {
        let r = Self {
            h,
            w,
            rows,
            cols,
            mult,
            x,
            y,
        };
        r.validate()?;
        Ok(r)
    }

    /// Checks the tables (non-empty, indices inside `h x w`, each pair of weights summing to
    /// `2^F`), the quantizations and the multiplier, and proves the accumulator bound.
    pub fn validate(&self) -> Result<()> {
        let (h, w, rows, cols) = (self.h, self.w, &self.rows, &self.cols);
        check_act("QResizeBilinear", "input", &self.x)?;
        check_act("QResizeBilinear", "output", &self.y)?;
        if h == 0 || w == 0 || rows.is_empty() || cols.is_empty() {
            return Err(Error::input(format!(
                "QResizeBilinear: empty size {h}x{w} -> {}x{}",
                rows.len(),
                cols.len()
            )));
        }
        for (k, t) in rows.iter().enumerate() {
            t.check("row", k, h)?;
        }
        for (k, t) in cols.iter().enumerate() {
            t.check("column", k, w)?;
        }
        self.mult
            .check()
            .map_err(|e| Error::input(format!("QResizeBilinear: multiplier: {e}")))?;
        // Four taps of |x - z_x| <= 65535 (any i16 against any 16-bit zero point) times
        // wy * wx <= 2^(2F); the weights summing to 2^F per axis even bound the sum by
        // 65535 * 2^(2F).
        let one = RESIZE_WEIGHT_ONE as i64;
        check_reduction("QResizeBilinear", 4, 65535, one * one, 0)
    }

    pub fn out_size(&self) -> (usize, usize) {
        (self.rows.len(), self.cols.len())
    }

    pub fn forward(&self, x: &QTensor) -> QTensor {
        let (c, h, w) = chw(x, "QResizeBilinear");
        assert!(
            h == self.h && w == self.w,
            "QResizeBilinear: input {h}x{w}, prepared for {}x{}",
            self.h,
            self.w
        );
        assert_eq!(x.q, self.x, "QResizeBilinear: input quantization differs");
        let (oh, ow) = self.out_size();
        let zp = self.x.zero_point as i64;
        let mut y = vec![0i16; c * oh * ow];
        y.par_chunks_mut(oh * ow)
            .zip(x.data.par_chunks(h * w))
            .for_each(|(dst, src)| {
                for (drow, ty) in dst.chunks_exact_mut(ow).zip(&self.rows) {
                    let r0 = &src[ty.i0 * w..(ty.i0 + 1) * w];
                    let r1 = &src[ty.i1 * w..(ty.i1 + 1) * w];
                    let (wy0, wy1) = (ty.w0 as i64, ty.w1 as i64);
                    for (o, tx) in drow.iter_mut().zip(&self.cols) {
                        let (wx0, wx1) = (tx.w0 as i64, tx.w1 as i64);
                        let row =
                            |r: &[i16]| wx0 * (r[tx.i0] as i64 - zp) + wx1 * (r[tx.i1] as i64 - zp);
                        let acc = wy0 * row(r0) + wy1 * row(r1);
                        *o = requantize(acc, self.mult, self.y.zero_point, self.y.bits) as i16;
                    }
                }
            });
        QTensor::new(&[c, oh, ow], y, self.y)
    }
}

/// `torch.cat(xs, dim=0)` of `[C_i, ...]` tensors sharing the other dimensions, each input
/// requantized to the output quantization (copied when its parameters already match).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QConcat {
    /// One per input, in order.
    pub parts: Vec<QRequantize>,
    pub y: ActQuant,
}

impl QConcat {
    pub fn new(parts: Vec<QRequantize>, y: ActQuant) -> Result<Self> {
        let c = Self { parts, y };
        c.validate()?;
        Ok(c)
    }

    /// Checks the output activation and one valid requantization per input, each to it.
    pub fn validate(&self) -> Result<()> {
        let y = self.y;
        check_act("QConcat", "output", &y)?;
        if self.parts.is_empty() {
            return Err(Error::input("QConcat: no inputs"));
        }
        for (i, p) in self.parts.iter().enumerate() {
            p.validate()
                .map_err(|e| Error::input(format!("QConcat: input {i}: {e}")))?;
            if p.y != y {
                return Err(Error::input(format!(
                    "QConcat: input {i} requantizes to {:?}, not the output's {y:?}",
                    p.y
                )));
            }
        }
        Ok(())
    }

    pub fn forward(&self, xs: &[&QTensor]) -> QTensor {
        assert_eq!(
            xs.len(),
            self.parts.len(),
            "QConcat: {} inputs, prepared for {}",
            xs.len(),
            self.parts.len()
        );
        let rest = &xs[0].shape[1..];
        let mut c_total = 0;
        for (x, p) in xs.iter().zip(&self.parts) {
            assert!(
                !x.shape.is_empty() && &x.shape[1..] == rest,
                "QConcat: shapes {:?} and {:?} differ beyond dim 0",
                x.shape,
                xs[0].shape
            );
            assert_eq!(x.q, p.x, "QConcat: input quantization differs");
            c_total += x.shape[0];
        }
        let mut data = vec![0i16; xs.iter().map(|x| x.numel()).sum()];
        let mut off = 0;
        for (x, p) in xs.iter().zip(&self.parts) {
            p.apply_slice(&x.data, &mut data[off..off + x.numel()]);
            off += x.numel();
        }
        let mut shape = vec![c_total];
        shape.extend_from_slice(rest);
        QTensor::new(&shape, data, self.y)
    }
}

#[cfg(test)]
#[allow(clippy::float_arithmetic)]
mod tests {
    use super::super::linear::testutil::*;
    use super::*;
    use crate::quant::arith::{qmax, qmin};
    use crate::quant::prepare::pool as prep;
    use crate::tensor::Tensor;

    fn quants() -> [ActQuant; 2] {
        [
            ActQuant::from_range(-0.8, 2.5, 8, false),
            ActQuant::from_range(-3.0, 3.0, 16, true),
        ]
    }

    #[test]
    fn avg_pool_within_one_step() {
        let mut rng = Lcg::new(31);
        let mut worst = 0.0f64;
        for xq in quants() {
            assert!(xq.bits == 16 || xq.zero_point != 0);
            for &(c, h, w, kh, kw) in &[(3, 6, 6, 3, 3), (2, 7, 5, 2, 2), (4, 8, 9, 2, 3)] {
                let mut x = rng.ints(c * h * w, &xq);
                // One window entirely at qmax, one at qmin.
                for i in 0..kw {
                    x[i] = qmax(xq.bits) as i16;
                    x[w + i] = qmax(xq.bits) as i16;
                    x[h * w + i] = qmin(xq.bits) as i16;
                    x[h * w + w + i] = qmin(xq.bits) as i16;
                }
                let xd = Tensor::new(&[c, h, w], deq(&x, &xq).iter().map(|&v| v as f32).collect())
                    .unwrap();
                // Reference: the float path's pooling of the dequantized input.
                let r: Vec<f64> = crate::ops::pool::avg_pool2d(&xd, kh, kw, kh, kw)
                    .data()
                    .iter()
                    .map(|&v| v as f64)
                    .collect();
                for yq in [xq, out_quant(&r, 8, 0.7), out_quant(&r, 16, 0.7)] {
                    let op = prep::avg_pool2d(kh, kw, xq, yq).unwrap();
                    let y = op.forward(&QTensor::new(&[c, h, w], x.clone(), xq));
                    assert_eq!(y.shape, vec![c, h / kh, w / kw]);
                    let what = format!("avg_pool {kh}x{kw} {xq:?} -> {yq:?}");
                    worst = worst.max(assert_within_one_step(&what, &y.data, &r, &yq));
                }
                // Pooling in the input's own quantization keeps a constant window exact.
                let op = prep::avg_pool2d(kh, kw, xq, xq).unwrap();
                let y = op.forward(&QTensor::new(&[c, h, w], x.clone(), xq));
                if kh == 2 {
                    assert_eq!(y.data[0] as i64, qmax(xq.bits));
                }
            }
        }
        println!("QAvgPool2d: largest error {worst:.4} output steps");
    }

    #[test]
    fn avg_pool_worst_case_window_is_exact() {
        // A 256x256 window of -32768: |sum| = 2^31, one past i32::MAX.
        let xq = quants()[1];
        let (k, c) = (256, 1);
        let op = prep::avg_pool2d(k, k, xq, xq).unwrap();
        let x = QTensor::new(&[c, k, k], vec![qmin(16) as i16; k * k], xq);
        let y = op.forward(&x);
        assert_eq!(y.data, vec![qmin(16) as i16]);
        let sum = -(k as i128 * k as i128 * 32768);
        assert!(sum < i32::MIN as i128 + 1);
        assert_eq!(apply_i128(sum, op.mult), qmin(16) as i128);
    }

    #[test]
    fn upsample_nearest_is_the_float_index_copy() {
        let xq = quants()[0];
        let mut rng = Lcg::new(32);
        // Exact 2x, non-integer factors, and sizes where floor(dst * in / out) computed exactly
        // differs from PyTorch's f32 rule (2 -> 82: dst 41 maps to 0, not 1).
        for &(h, w, oh, ow) in &[(3, 4, 6, 8), (3, 3, 5, 7), (2, 2, 82, 94), (4, 5, 4, 5)] {
            let x = rng.ints(2 * h * w, &xq);
            let op = prep::upsample_nearest(h, w, oh, ow).unwrap();
            let y = op.forward(&QTensor::new(&[2, h, w], x.clone(), xq));
            assert_eq!(y.q, xq);
            let xd = Tensor::new(&[2, h, w], x.iter().map(|&v| v as f32).collect()).unwrap();
            let r = crate::ops::pool::interpolate_nearest(&xd, oh, ow);
            let yi: Vec<f32> = y.data.iter().map(|&v| v as f32).collect();
            assert_eq!(r.shape(), &y.shape[..]);
            assert_eq!(r.data(), &yi[..], "{h}x{w} -> {oh}x{ow}");
        }
        assert_eq!(prep::upsample_nearest(2, 2, 82, 82).unwrap().ys[41], 0);
        assert!(prep::upsample_nearest(0, 2, 4, 4).is_err());
    }

    /// The exact real bilinear resize (in `f64`) of `[c, h, w]` real values with the float
    /// path's own `f32` coefficients.
    fn bilinear_reference(
        xr: &[f64],
        c: usize,
        h: usize,
        w: usize,
        oh: usize,
        ow: usize,
    ) -> Vec<f64> {
        use crate::ops::pool::linear_coeffs;
        let ys: Vec<_> = (0..oh).map(|i| linear_coeffs(i, h, oh)).collect();
        let xs: Vec<_> = (0..ow).map(|i| linear_coeffs(i, w, ow)).collect();
        let mut out = Vec::with_capacity(c * oh * ow);
        for ch in 0..c {
            let src = &xr[ch * h * w..(ch + 1) * h * w];
            for &(y0, y1, wy0, wy1) in &ys {
                for &(x0, x1, wx0, wx1) in &xs {
                    let (wy0, wy1, wx0, wx1) = (wy0 as f64, wy1 as f64, wx0 as f64, wx1 as f64);
                    out.push(
                        wy0 * (wx0 * src[y0 * w + x0] + wx1 * src[y0 * w + x1])
                            + wy1 * (wx0 * src[y1 * w + x0] + wx1 * src[y1 * w + x1]),
                    );
                }
            }
        }
        out
    }

    /// The sizes the MSFA meets at non-dividing resolutions: downsizing by non-integer and
    /// integer-ish factors, and upsizing.
    const RESIZES: [(usize, usize, usize, usize); 4] = [
        (20, 20, 16, 16),
        (13, 9, 8, 8),
        (10, 10, 3, 3),
        (5, 7, 12, 11),
    ];

    #[test]
    fn resize_bilinear_within_one_step() {
        let mut rng = Lcg::new(34);
        let mut worst = 0.0f64;
        let c = 3;
        for xq in quants() {
            for &(h, w, oh, ow) in &RESIZES {
                let mut x = rng.ints(c * h * w, &xq);
                // Channel 0 is a qmin/qmax checkerboard: every tap pair differs by the full
                // range, the worst case for the rounding of the weights.
                for (i, v) in x[..h * w].iter_mut().enumerate() {
                    let b = if (i / w + i % w) % 2 == 0 {
                        qmax(xq.bits)
                    } else {
                        qmin(xq.bits)
                    };
                    *v = b as i16;
                }
                let xr = deq(&x, &xq);
                let r = bilinear_reference(&xr, c, h, w, oh, ow);
                // The reference is the float op (up to its f32 rounding).
                let xd = Tensor::new(&[c, h, w], xr.iter().map(|&v| v as f32).collect()).unwrap();
                let f = crate::ops::pool::interpolate_bilinear(&xd, oh, ow);
                assert_eq!(f.shape(), &[c, oh, ow]);
                let amax = xr.iter().fold(0.0f64, |m, v| m.max(v.abs()));
                for (&fv, &rv) in f.data().iter().zip(&r) {
                    assert!(
                        (fv as f64 - rv).abs() <= 1e-6 * amax,
                        "float op {fv} vs {rv}"
                    );
                }
                for yq in [xq, out_quant(&r, 8, 0.7), out_quant(&r, 16, 0.7)] {
                    let op = prep::resize_bilinear(h, w, oh, ow, xq, yq).unwrap();
                    assert_eq!(op.out_size(), (oh, ow));
                    let y = op.forward(&QTensor::new(&[c, h, w], x.clone(), xq));
                    assert_eq!(y.shape, vec![c, oh, ow]);
                    assert_eq!(y.q, yq);
                    let what = format!("resize {h}x{w} -> {oh}x{ow} {xq:?} -> {yq:?}");
                    let e = assert_within_one_step(&what, &y.data, &r, &yq);
                    // The documented bound.
                    let f = RESIZE_WEIGHT_BITS as i32;
                    let bound = 0.5
                        + (2f64.powi(-f) + 2f64.powi(-24) + 2f64.powi(-31))
                            * 2f64.powi(xq.bits as i32)
                            * xq.scale as f64
                            / yq.scale as f64;
                    assert!(e <= bound, "{what}: error {e} above the bound {bound}");
                    worst = worst.max(e);
                }
            }
        }
        println!("QResizeBilinear: largest error {worst:.4} output steps");
    }

    #[test]
    fn resize_bilinear_identity_size_is_a_requantization() {
        let mut rng = Lcg::new(35);
        let (c, h, w) = (2, 6, 7);
        let other = ActQuant::from_range(-1.5, 2.0, 8, false);
        for xq in quants() {
            let x = QTensor::new(&[c, h, w], rng.ints(c * h * w, &xq), xq);
            // In its own quantization: a bit-exact copy.
            let op = prep::resize_bilinear(h, w, h, w, xq, xq).unwrap();
            assert!(op
                .rows
                .iter()
                .chain(&op.cols)
                .all(|t| t.w0 == RESIZE_WEIGHT_ONE));
            assert_eq!(op.forward(&x).data, x.data);
            // Into other parameters: exactly QRequantize (same multiplier up to 2^(2F)).
            for yq in [other, quants()[1], quants()[0]] {
                let op = prep::resize_bilinear(h, w, h, w, xq, yq).unwrap();
                let rq = crate::quant::prepare::elementwise::requantize(xq, yq).unwrap();
                assert_eq!(op.mult.m, rq.mult.m);
                assert_eq!(op.mult.shift, rq.mult.shift - 2 * RESIZE_WEIGHT_BITS as i32);
                let want: Vec<i16> = x.data.iter().map(|&v| rq.apply(v)).collect();
                assert_eq!(op.forward(&x).data, want, "{xq:?} -> {yq:?}");
            }
        }
    }

    #[test]
    fn resize_bilinear_keeps_constants_and_extremes_exact() {
        // Weights summing to 2^F exactly: a constant map (even all qmin / qmax, the largest
        // accumulators) resized in its own quantization is unchanged, at every size.
        for xq in quants() {
            for &(h, w, oh, ow) in &RESIZES {
                let op = prep::resize_bilinear(h, w, oh, ow, xq, xq).unwrap();
                for v in [qmin(xq.bits), qmax(xq.bits), xq.zero_point as i64 + 1] {
                    let x = QTensor::new(&[2, h, w], vec![v as i16; 2 * h * w], xq);
                    assert_eq!(op.forward(&x).data, vec![v as i16; 2 * oh * ow]);
                }
            }
        }
    }

    #[test]
    fn resize_bilinear_taps_follow_the_float_rule() {
        let half_unit = 0.5 / RESIZE_WEIGHT_ONE as f64;
        for &(h, w, oh, ow) in &RESIZES {
            let op = prep::resize_bilinear(h, w, oh, ow, quants()[0], quants()[1]).unwrap();
            for (taps, n, out) in [(&op.rows, h, oh), (&op.cols, w, ow)] {
                assert_eq!(taps.len(), out);
                for (d, t) in taps.iter().enumerate() {
                    let (i0, i1, w0, w1) = crate::ops::pool::linear_coeffs(d, n, out);
                    assert_eq!((t.i0, t.i1), (i0, i1));
                    assert_eq!(t.w0 + t.w1, RESIZE_WEIGHT_ONE);
                    let unit = RESIZE_WEIGHT_ONE as f64;
                    assert!((t.w1 as f64 / unit - w1 as f64).abs() <= half_unit);
                    // w0 = 1 - l1 is itself rounded in f32 (by at most 2^-25).
                    assert!((t.w0 as f64 / unit - w0 as f64).abs() <= half_unit + 2f64.powi(-25));
                }
            }
        }
        // 2 -> 4: source coordinates -0.25 (clamped), 0.25, 0.75, 1.25 (clamped edge: i0 == i1).
        let op = prep::resize_bilinear(1, 2, 1, 4, quants()[0], quants()[0]).unwrap();
        let one = RESIZE_WEIGHT_ONE;
        let c: Vec<_> = op.cols.iter().map(|t| (t.i0, t.i1, t.w0, t.w1)).collect();
        assert_eq!(
            c,
            vec![
                (0, 1, one, 0),
                (0, 1, one / 4 * 3, one / 4),
                (0, 1, one / 4, one / 4 * 3),
                (1, 1, one * 3 / 4, one / 4)
            ]
        );
    }

    /// Runs a (possibly hand-edited) op's fields through the constructor again, as loading does.
    fn renew(op: QResizeBilinear) -> Result<QResizeBilinear> {
        QResizeBilinear::new(op.h, op.w, op.rows, op.cols, op.mult, op.x, op.y)
    }

    #[test]
    fn resize_bilinear_rejects_inconsistent_tables() {
        let [xq, yq] = quants();
        let good = prep::resize_bilinear(5, 7, 12, 11, xq, yq).unwrap();
        assert_eq!(renew(good.clone()).unwrap(), good);
        let tap = |i0, i1, w0, w1| LinearTap { i0, i1, w0, w1 };
        let one = RESIZE_WEIGHT_ONE;
        let mut rows_out = good.rows.clone();
        rows_out[3].i1 = 5; // h = 5
        let mut cols_out = good.cols.clone();
        cols_out[10].i0 = 7; // w = 7
        let mut rows_sum = good.rows.clone();
        rows_sum[0].w1 += 1;
        let mut cols_wrap = good.cols.clone();
        cols_wrap[1] = tap(0, 1, u32::MAX, one + 1); // sums to 2^F only modulo 2^32
        let bad: Vec<(&str, QResizeBilinear)> = vec![
            (
                "row index",
                QResizeBilinear {
                    rows: rows_out,
                    ..good.clone()
                },
            ),
            (
                "column index",
                QResizeBilinear {
                    cols: cols_out,
                    ..good.clone()
                },
            ),
            (
                "row weights",
                QResizeBilinear {
                    rows: rows_sum,
                    ..good.clone()
                },
            ),
            (
                "column weights",
                QResizeBilinear {
                    cols: cols_wrap,
                    ..good.clone()
                },
            ),
            (
                "weight above one",
                QResizeBilinear {
                    cols: vec![tap(0, 1, one + 1, 0)],
                    ..good.clone()
                },
            ),
            (
                "no rows",
                QResizeBilinear {
                    rows: vec![],
                    ..good.clone()
                },
            ),
            (
                "no columns",
                QResizeBilinear {
                    cols: vec![],
                    ..good.clone()
                },
            ),
            (
                "zero height",
                QResizeBilinear {
                    h: 0,
                    ..good.clone()
                },
            ),
            (
                "smaller input",
                QResizeBilinear {
                    w: 4,
                    ..good.clone()
                },
            ),
            (
                "multiplier mantissa",
                QResizeBilinear {
                    mult: Multiplier { m: 5, shift: 0 },
                    ..good.clone()
                },
            ),
            (
                "negative mantissa",
                QResizeBilinear {
                    mult: Multiplier {
                        m: -(1 << 30),
                        shift: 0,
                    },
                    ..good.clone()
                },
            ),
            (
                "multiplier shift",
                QResizeBilinear {
                    mult: Multiplier {
                        m: 1 << 30,
                        shift: i32::MIN,
                    },
                    ..good.clone()
                },
            ),
            (
                "input bits",
                QResizeBilinear {
                    x: ActQuant { bits: 17, ..xq },
                    ..good.clone()
                },
            ),
            (
                "output zero point",
                QResizeBilinear {
                    y: ActQuant {
                        zero_point: 40_000,
                        ..yq
                    },
                    ..good.clone()
                },
            ),
        ];
        for (what, op) in bad {
            let e = renew(op).expect_err(what);
            assert!(e.to_string().contains("QResizeBilinear"), "{what}: {e}");
        }
        // A bad table survives deserialization (serde does not validate): loading must go
        // through `new`.
        let mut v = serde_json::to_value(&good).unwrap();
        v["rows"][0]["i0"] = serde_json::json!(99);
        let parsed: QResizeBilinear = serde_json::from_value(v).unwrap();
        assert!(renew(parsed).is_err());
        // The builder's own errors.
        assert!(prep::resize_bilinear(0, 2, 4, 4, xq, yq).is_err());
        assert!(prep::resize_bilinear(2, 2, 4, 0, xq, yq).is_err());
        assert!(prep::resize_bilinear(2, 2, 4, 4, ActQuant { scale: 0.0, ..xq }, yq).is_err());
        assert!(prep::resize_bilinear(
            2,
            2,
            4,
            4,
            xq,
            ActQuant {
                scale: f32::NAN,
                ..yq
            }
        )
        .is_err());
    }

    #[test]
    fn resize_bilinear_does_not_depend_on_the_thread_count() {
        let mut rng = Lcg::new(36);
        let xq = quants()[1];
        let (c, h, w, oh, ow) = (24, 40, 37, 27, 53);
        let x = QTensor::new(&[c, h, w], rng.ints(c * h * w, &xq), xq);
        let yq = ActQuant::from_range(-2.0, 2.5, 8, false);
        let op = prep::resize_bilinear(h, w, oh, ow, xq, yq).unwrap();
        let many = op.forward(&x);
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(|| op.forward(&x));
        assert_eq!(one, many);
    }

    #[test]
    fn concat_requantizes_each_input() {
        let mut rng = Lcg::new(33);
        let [a, b] = quants();
        let c = ActQuant::from_range(-0.1, 0.3, 8, false);
        let y = ActQuant::from_range(-2.0, 2.0, 16, true);
        let (h, w) = (3, 4);
        let xs: Vec<QTensor> = [(a, 2), (b, 1), (c, 3), (y, 2)]
            .iter()
            .map(|&(q, ch)| QTensor::new(&[ch, h, w], rng.ints(ch * h * w, &q), q))
            .collect();
        let op = prep::concat_channels(&[a, b, c, y], y).unwrap();
        let refs: Vec<&QTensor> = xs.iter().collect();
        let out = op.forward(&refs);
        assert_eq!(out.shape, vec![8, h, w]);
        let r: Vec<f64> = xs.iter().flat_map(|x| deq(&x.data, &x.q)).collect();
        let worst = assert_within_one_step("concat", &out.data, &r, &y);
        // The input already in the output quantization is copied bit for bit.
        assert_eq!(&out.data[6 * h * w..], &xs[3].data[..]);
        assert!(op.parts[3].is_identity());
        println!("QConcat: largest error {worst:.4} output steps");
    }
}
