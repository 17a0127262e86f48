//! Building the integer pooling, resizing and concatenation ops.

use super::elementwise::requantize;
use super::linear::{check_quant, multiplier};
use crate::error::{Error, Result};
use crate::ops::pool::{linear_coeffs, nearest_index};
use crate::quant::ops::pool::{
    LinearTap, QAvgPool2d, QConcat, QResizeBilinear, QUpsampleNearest, RESIZE_WEIGHT_BITS,
    RESIZE_WEIGHT_ONE,
};
use crate::quant::params::ActQuant;

/// Average pooling with kernel = stride `kh x kw`, input `x`, output `y` (often `y == x`).
pub fn avg_pool2d(kh: usize, kw: usize, x: ActQuant, y: ActQuant) -> Result<QAvgPool2d> {
    check_quant("QAvgPool2d", "input", &x)?;
    check_quant("QAvgPool2d", "output", &y)?;
    if kh == 0 || kw == 0 {
        return Err(Error::input("avg_pool2d: kernel must be positive"));
    }
    let m = x.scale as f64 / ((kh * kw) as f64 * y.scale as f64);
    QAvgPool2d::new(kh, kw, multiplier("QAvgPool2d", m)?, x, y)
}

/// Nearest resize of an `h x w` map to `oh x ow` with PyTorch's (`f32`) index rule.
pub fn upsample_nearest(h: usize, w: usize, oh: usize, ow: usize) -> Result<QUpsampleNearest> {
    if h == 0 || w == 0 || oh == 0 || ow == 0 {
        return Err(Error::input(format!(
            "upsample_nearest: empty size {h}x{w} -> {oh}x{ow}"
        )));
    }
    let ys = (0..oh).map(|i| nearest_index(i, h, oh)).collect();
    let xs = (0..ow).map(|i| nearest_index(i, w, ow)).collect();
    QUpsampleNearest::new(h, w, ys, xs)
}

/// The integer taps of one axis resized from `input` to `output`: the float path's indices, and
/// its `f32` weight of `i1` (the exact fractional part of the source coordinate) rounded to
/// [`RESIZE_WEIGHT_BITS`] bits, `w0` taking the rest so that `w0 + w1 == 2^F` exactly.
pub fn linear_taps(input: usize, output: usize) -> Vec<LinearTap> {
    (0..output)
        .map(|d| {
            let (i0, i1, _, l1) = linear_coeffs(d, input, output);
            // l1 is in [0, 1] (clamped by the float rule), so w1 is in [0, 2^F].
            let w1 = (l1 as f64 * RESIZE_WEIGHT_ONE as f64).round() as u32;
            LinearTap {
                i0,
                i1,
                w0: RESIZE_WEIGHT_ONE - w1,
                w1,
            }
        })
        .collect()
}

/// Bilinear resize (`align_corners=False`) of an `h x w` map quantized as `x` to `oh x ow`
/// quantized as `y`.
pub fn resize_bilinear(
    h: usize,
    w: usize,
    oh: usize,
    ow: usize,
    x: ActQuant,
    y: ActQuant,
) -> Result<QResizeBilinear> {
    check_quant("QResizeBilinear", "input", &x)?;
    check_quant("QResizeBilinear", "output", &y)?;
    if h == 0 || w == 0 || oh == 0 || ow == 0 {
        return Err(Error::input(format!(
            "resize_bilinear: empty size {h}x{w} -> {oh}x{ow}"
        )));
    }
    let m = x.scale as f64 / y.scale as f64 / 2f64.powi(2 * RESIZE_WEIGHT_BITS as i32);
    QResizeBilinear::new(
        h,
        w,
        linear_taps(h, oh),
        linear_taps(w, ow),
        multiplier("QResizeBilinear", m)?,
        x,
        y,
    )
}

/// Channel concatenation of inputs quantized as `inputs[i]` into `y`.
pub fn concat_channels(inputs: &[ActQuant], y: ActQuant) -> Result<QConcat> {
    let parts = inputs
        .iter()
        .map(|&x| requantize(x, y))
        .collect::<Result<Vec<_>>>()?;
    QConcat::new(parts, y)
}
