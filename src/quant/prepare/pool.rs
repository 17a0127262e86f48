//! Building the integer pooling, resizing and concatenation ops.

use super::elementwise::requantize;
use super::linear::{check_quant, multiplier};
use crate::error::{Error, Result};
use crate::ops::pool::nearest_index;
use crate::quant::ops::pool::{QAvgPool2d, QConcat, QUpsampleNearest};
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

/// Channel concatenation of inputs quantized as `inputs[i]` into `y`.
pub fn concat_channels(inputs: &[ActQuant], y: ActQuant) -> Result<QConcat> {
    let parts = inputs
        .iter()
        .map(|&x| requantize(x, y))
        .collect::<Result<Vec<_>>>()?;
    QConcat::new(parts, y)
}
