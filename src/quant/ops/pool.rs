//! Integer pooling, resizing and concatenation on `[C, H, W]` maps (the MSFA's ops):
//! [`QAvgPool2d`] (kernel = stride, no padding: sum, then one requantization),
//! [`QUpsampleNearest`] (pure index copy with the float path's index rule, same parameters) and
//! [`QConcat`] (every input requantized to the output parameters).

use super::elementwise::QRequantize;
use super::linear::{centered_abs_max, check_act};
use crate::error::{Error, Result};
use crate::quant::arith::{check_reduction, requantize, Multiplier};
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
        check_act("QAvgPool2d", "input", &x)?;
        check_act("QAvgPool2d", "output", &y)?;
        if kh == 0 || kw == 0 {
            return Err(Error::input("QAvgPool2d: kernel must be positive"));
        }
        check_reduction("QAvgPool2d", kh * kw, centered_abs_max(&x), 1, 0)?;
        Ok(Self { kh, kw, mult, x, y })
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
pub struct QUpsampleNearest {
    pub h: usize,
    pub w: usize,
    /// Source row of each output row (`oh` entries, each `< h`).
    pub ys: Vec<usize>,
    /// Source column of each output column (`ow` entries, each `< w`).
    pub xs: Vec<usize>,
}

impl QUpsampleNearest {
    pub fn new(h: usize, w: usize, ys: Vec<usize>, xs: Vec<usize>) -> Result<Self> {
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
        Ok(Self { h, w, ys, xs })
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

/// `torch.cat(xs, dim=0)` of `[C_i, ...]` tensors sharing the other dimensions, each input
/// requantized to the output quantization (copied when its parameters already match).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QConcat {
    /// One per input, in order.
    pub parts: Vec<QRequantize>,
    pub y: ActQuant,
}

impl QConcat {
    pub fn new(parts: Vec<QRequantize>, y: ActQuant) -> Result<Self> {
        check_act("QConcat", "output", &y)?;
        if parts.is_empty() {
            return Err(Error::input("QConcat: no inputs"));
        }
        if let Some(p) = parts.iter().find(|p| p.y != y) {
            return Err(Error::input(format!(
                "QConcat: an input requantizes to {:?}, not the output's {y:?}",
                p.y
            )));
        }
        Ok(Self { parts, y })
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
