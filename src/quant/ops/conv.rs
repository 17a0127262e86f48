//! Integer 2-D convolutions on `[C, H, W]` maps: regular (any kernel, stride, dilation, explicit
//! padding), pointwise (1x1) and depthwise, with the semantics of [`crate::ops::conv::conv2d`].
//!
//! Weights are a [`QMatrix`] `[C_out, K]` with `K = C_in * kH * kW` (regular; flattened in PyTorch
//! order `(ci, ky, kx)`) or `K = kH * kW` (depthwise): symmetric int16 / int8 / int4, per output
//! channel or per group of `K`. Per output channel `o`:
//!
//! ```text
//! acc = sum_g group_mult[o, g] * sum_{taps in g} (x - zp_x) * q  (+ bias_o)               (i64)
//! y   = requantize(acc, mult[o], zp_y, bits_y),   mult[o] = s_x * row_scale[o] / 2^8 / s_y
//! ```
//!
//! Padding is with the input zero point, i.e. real 0: padded taps contribute `(zp_x - zp_x) = 0`
//! and are skipped.

use super::linear::{check_act, check_weighted, linear_rows, QMatrix};
use crate::error::{Error, Result};
use crate::ops::conv::{conv_out_size, Pad2d};
use crate::quant::arith::{requantize, size_product, Multiplier};
use crate::quant::params::ActQuant;
use crate::quant::tensor::QTensor;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Serde mirror of [`Pad2d`].
#[derive(Serialize, Deserialize)]
#[serde(remote = "Pad2d", deny_unknown_fields)]
struct Pad2dDef {
    top: usize,
    bottom: usize,
    left: usize,
    right: usize,
}

/// An integer convolution; see the module docs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QConv2d {
    pub c_in: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub dilation: usize,
    #[serde(with = "Pad2dDef")]
    pub pad: Pad2d,
    /// `groups == C_in == C_out` (one `kH x kW` filter per channel) instead of `groups == 1`.
    pub depthwise: bool,
    /// `[C_out, C_in * kH * kW]` (regular) or `[C, kH * kW]` (depthwise).
    pub weight: QMatrix,
    /// Per output channel, in accumulator units `s_x * row_scale[o] / 2^GROUP_SCALE_BITS`.
    #[serde(with = "crate::artifact::array")]
    pub bias: Option<Vec<i64>>,
    /// Per output channel.
    #[serde(with = "crate::artifact::array")]
    pub mult: Vec<Multiplier>,
    pub x: ActQuant,
    pub y: ActQuant,
}

impl QConv2d {
    /// Validates the geometry and shapes and proves no accumulator can overflow.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        c_in: usize,
        (kh, kw): (usize, usize),
        stride: usize,
        dilation: usize,
        pad: Pad2d,
        depthwise: bool,
        weight: QMatrix,
        bias: Option<Vec<i64>>,
        mult: Vec<Multiplier>,
        x: ActQuant,
        y: ActQuant,
    ) -> Result<Self> {
        let conv = Self {
            c_in,
            c_out: weight.out,
            kh,
            kw,
            stride,
            dilation,
            pad,
            depthwise,
            weight,
            bias,
            mult,
            x,
            y,
        };
        conv.validate()?;
        Ok(conv)
    }

    /// Checks everything [`Self::forward`] relies on: positive geometry, a valid weight matrix of
    /// `[C_out, C_in * kH * kW]` (regular) or `[C, kH * kW]` (depthwise), activations, one valid
    /// multiplier (and bias) per output channel, and no accumulator able to overflow. (Whether the
    /// kernel fits a given input is a property of the input: see [`Self::out_size`].)
    pub fn validate(&self) -> Result<()> {
        let (c_in, kh, kw, stride, dilation) =
            (self.c_in, self.kh, self.kw, self.stride, self.dilation);
        let depthwise = self.depthwise;
        check_act("QConv2d", "input", &self.x)?;
        check_act("QConv2d", "output", &self.y)?;
        if kh == 0 || kw == 0 || stride == 0 || dilation == 0 || c_in == 0 {
            return Err(Error::input(format!(
                "QConv2d: kernel {kh}x{kw}, stride {stride}, dilation {dilation}, C_in {c_in} \
                 must all be positive"
            )));
        }
        self.weight
            .validate()
            .map_err(|e| Error::input(format!("QConv2d: {e}")))?;
        let c_out = self.weight.out;
        let k = if depthwise {
            size_product("QConv2d kernel", &[kh, kw])?
        } else {
            size_product("QConv2d kernel", &[c_in, kh, kw])?
        };
        if self.weight.inp != k || (depthwise && c_out != c_in) || self.c_out != c_out {
            return Err(Error::input(format!(
                "QConv2d: weight [{}, {}] does not fit C_in {c_in}, C_out {}, kernel {kh}x{kw} ({})",
                self.weight.out,
                self.weight.inp,
                self.c_out,
                if depthwise { "depthwise" } else { "regular" }
            )));
        }
        check_weighted(
            "QConv2d",
            "output channels",
            &self.weight,
            self.bias.as_deref(),
            &self.mult,
            &self.x,
        )
    }

    /// Output `(OH, OW)` for an `h x w` input (panics if the dilated kernel does not fit).
    pub fn out_size(&self, h: usize, w: usize) -> (usize, usize) {
        let (s, d, p) = (self.stride, self.dilation, self.pad);
        (
            conv_out_size(h, self.kh, s, d, p.top, p.bottom),
            conv_out_size(w, self.kw, s, d, p.left, p.right),
        )
    }

    /// `x`: `[C_in, H, W]` in [`Self::x`]; returns `[C_out, OH, OW]` in [`Self::y`].
    pub fn forward(&self, x: &QTensor) -> QTensor {
        assert!(
            x.shape.len() == 3 && x.shape[0] == self.c_in,
            "QConv2d: input {:?}, expected [{}, H, W]",
            x.shape,
            self.c_in
        );
        assert_eq!(x.q, self.x, "QConv2d: input quantization differs");
        let (h, w) = (x.shape[1], x.shape[2]);
        let (oh, ow) = self.out_size(h, w);
        let zp = self.x.zero_point;
        let data = if self.depthwise {
            let xc: Vec<i32> = x.data.iter().map(|&v| v as i32 - zp).collect();
            self.depthwise_forward(&xc, h, w, oh, ow)
        } else {
            self.regular_forward(&x.data, h, w, oh, ow)
        };
        QTensor::new(&[self.c_out, oh, ow], data, self.y)
    }

    /// Input index of output position `o` and kernel tap `k` along one axis, if not padding.
    #[inline]
    fn src(&self, o: usize, k: usize, pad_before: usize, n: usize) -> Option<usize> {
        (o * self.stride + k * self.dilation)
            .checked_sub(pad_before)
            .filter(|&i| i < n)
    }

    #[inline]
    fn finish(&self, o: usize, acc: i64) -> i16 {
        let acc = acc + self.bias.as_ref().map_or(0, |b| b[o]);
        requantize(acc, self.mult[o], self.y.zero_point, self.y.bits) as i16
    }

    /// groups = 1: im2col (raw values, the zero point where the window reads padding, so the
    /// centered value there is 0) over chunks of output rows, each chunk one integer GEMM
    /// ([`linear_rows`]: the run-time kernel level) of `[positions, K] x [C_out, K]^T`.
    fn regular_forward(&self, x: &[i16], h: usize, w: usize, oh: usize, ow: usize) -> Vec<i16> {
        let (c_in, kh, kw) = (self.c_in, self.kh, self.kw);
        let k = c_in * kh * kw;
        let zp = self.x.zero_point as i16;
        // Output rows per chunk: about 2^18 patch values (512 KiB), at least one row.
        let rows_per_chunk = ((1usize << 18) / (ow * k).max(1)).clamp(1, oh.max(1));
        let chunks: Vec<(usize, Vec<i16>)> = (0..oh)
            .step_by(rows_per_chunk)
            .collect::<Vec<_>>()
            .into_par_iter()
            .map(|oy0| {
                let oy1 = (oy0 + rows_per_chunk).min(oh);
                let n = (oy1 - oy0) * ow;
                let mut col = vec![zp; n * k];
                for (p, patch) in col.chunks_exact_mut(k).enumerate() {
                    let (oy, ox) = (oy0 + p / ow, p % ow);
                    for ci in 0..c_in {
                        for ky in 0..kh {
                            let Some(iy) = self.src(oy, ky, self.pad.top, h) else {
                                continue;
                            };
                            for kx in 0..kw {
                                if let Some(ix) = self.src(ox, kx, self.pad.left, w) {
                                    patch[(ci * kh + ky) * kw + kx] = x[(ci * h + iy) * w + ix];
                                }
                            }
                        }
                    }
                }
                let y = linear_rows(
                    &self.weight,
                    self.bias.as_deref(),
                    &self.mult,
                    (self.x, self.y),
                    &col,
                    n,
                );
                (oy0, y)
            })
            .collect();
        let plane = oh * ow;
        let mut y = vec![0i16; self.c_out * plane];
        for (oy0, part) in chunks {
            let n = part.len() / self.c_out.max(1);
            for (p, row) in part.chunks_exact(self.c_out).enumerate() {
                for (o, &v) in row.iter().enumerate() {
                    y[o * plane + oy0 * ow + p] = v;
                }
            }
            debug_assert!(oy0 * ow + n <= plane);
        }
        y
    }

    /// Depthwise: one task per channel. Per-group multipliers (groups of kernel taps) are
    /// applied per tap: `sum_g gm_g * sum_{t in g} p_t == sum_t gm_{g(t)} p_t` exactly. Each
    /// output row accumulates tap by tap over the columns whose window reads inside the image
    /// (a contiguous range), so the inner loop has no bounds checks and vectorizes.
    fn depthwise_forward(&self, xc: &[i32], h: usize, w: usize, oh: usize, ow: usize) -> Vec<i16> {
        let (kh, kw, stride, dil) = (self.kh, self.kw, self.stride, self.dilation);
        let wv = self.weight.values();
        let group = self.weight.group;
        let mut y = vec![0i16; self.c_out * oh * ow];
        // Columns `ox` whose tap `kx` reads inside `[0, w)`: ix = ox * stride + kx * dil - left.
        let col_range = |kx: usize| -> (usize, usize) {
            let off = kx * dil;
            let left = self.pad.left;
            let lo = if off >= left {
                0
            } else {
                (left - off).div_ceil(stride)
            };
            let hi = if w + left > off {
                ((w + left - off - 1) / stride + 1).min(ow)
            } else {
                0
            };
            (lo.min(hi), hi)
        };
        let ranges: Vec<(usize, usize)> = (0..kw).map(col_range).collect();
        y.par_chunks_mut((oh * ow).max(1))
            .enumerate()
            .for_each(|(c, plane)| {
                let src = &xc[c * h * w..(c + 1) * h * w];
                let wr = &wv[c * kh * kw..(c + 1) * kh * kw];
                let gm = self.weight.row_group_mult(c);
                // Effective per-tap weights q * group_mult (|.| <= 32767 * 256).
                let eff: Vec<i64> = wr
                    .iter()
                    .enumerate()
                    .map(|(t, &q)| q as i64 * gm[t / group] as i64)
                    .collect();
                let mut acc = vec![0i64; ow];
                for (oy, out_row) in plane.chunks_exact_mut(ow.max(1)).enumerate() {
                    acc.fill(0);
                    for ky in 0..kh {
                        let Some(iy) = self.src(oy, ky, self.pad.top, h) else {
                            continue;
                        };
                        let row = &src[iy * w..(iy + 1) * w];
                        for (kx, &(lo, hi)) in ranges.iter().enumerate() {
                            let e = eff[ky * kw + kx];
                            if e == 0 || lo >= hi {
                                continue;
                            }
                            // ix = ox * stride + kx * dil - left, inside the row for ox in [lo, hi).
                            let first = lo * stride + kx * dil - self.pad.left;
                            if stride == 1 {
                                let xs = &row[first..first + (hi - lo)];
                                for (a, &v) in acc[lo..hi].iter_mut().zip(xs) {
                                    *a += v as i64 * e;
                                }
                            } else {
                                for (i, a) in acc[lo..hi].iter_mut().enumerate() {
                                    *a += row[first + i * stride] as i64 * e;
                                }
                            }
                        }
                    }
                    for (v, &a) in out_row.iter_mut().zip(&acc) {
                        *v = self.finish(c, a);
                    }
                }
            });
        y
    }
}

#[cfg(test)]
#[allow(clippy::float_arithmetic)]
mod tests {
    use super::super::linear::testutil::*;
    use super::*;
    use crate::ops::conv::{conv2d, same_padding, Conv2dSpec};
    use crate::quant::arith::{qmax, qmin};
    use crate::quant::params::{quantize_weight, Granularity, QuantWeight, WeightRange};
    use crate::quant::prepare::conv::{conv2d as qconv2d, conv2d_from_quantized};
    use crate::tensor::Tensor;

    fn f32s(v: &[f64]) -> Vec<f32> {
        v.iter().map(|&x| x as f32).collect()
    }

    /// Integer conv vs the float path's `conv2d` on the dequantized input and weights.
    #[allow(clippy::too_many_arguments)]
    fn check_case(
        rng: &mut Lcg,
        (c_in, c_out, h, w): (usize, usize, usize, usize),
        k: usize,
        spec: Conv2dSpec,
        xq: ActQuant,
        (wbits, gran): (u32, Granularity),
        with_bias: bool,
        worst: &mut f64,
    ) {
        let cpg = if spec.groups == 1 { c_in } else { 1 };
        let wf = Tensor::new(
            &[c_out, cpg, k, k],
            rng.floats(c_out * cpg * k * k, -1.0, 1.0),
        )
        .unwrap();
        let b = rng.floats(c_out, -2.0, 2.0);
        let bias = with_bias.then_some(&b[..]);
        let xi = rng.ints(c_in * h * w, &xq);
        let qw = quantize_weight(
            wf.data(),
            c_out,
            cpg * k * k,
            wbits,
            gran,
            WeightRange::MinMax,
        );
        let xd = Tensor::new(&[c_in, h, w], f32s(&deq(&xi, &xq))).unwrap();
        let wd = Tensor::new(&[c_out, cpg, k, k], f32s(&deq_weight(&qw))).unwrap();
        let r = conv2d(&xd, &wd, bias, spec);
        let r: Vec<f64> = r.data().iter().map(|&v| v as f64).collect();
        for ybits in [8, 16] {
            let yq = out_quant(&r, ybits, 0.8);
            let op = qconv2d(&wf, bias, spec, wbits, gran, WeightRange::MinMax, xq, yq).unwrap();
            let y = op.forward(&QTensor::new(&[c_in, h, w], xi.clone(), xq));
            let (oh, ow) = op.out_size(h, w);
            assert_eq!(y.shape, vec![c_out, oh, ow]);
            let what = format!(
                "conv {c_in}->{c_out} {h}x{w} k{k} {spec:?} x{} w{wbits} {gran:?} y{ybits}",
                xq.bits
            );
            *worst = worst.max(assert_within_one_step(&what, &y.data, &r, &yq));
        }
    }

    fn act(bits: u32) -> ActQuant {
        if bits == 8 {
            ActQuant::from_range(-1.3, 0.6, 8, false)
        } else {
            ActQuant::from_range(-1.5, 1.5, 16, true)
        }
    }

    const WEIGHTS: [(u32, Granularity); 5] = [
        (8, Granularity::PerChannel),
        (4, Granularity::PerChannel),
        (8, Granularity::PerGroup(4)),
        (4, Granularity::PerGroup(5)),
        (16, Granularity::PerChannel),
    ];

    #[test]
    fn regular_and_pointwise_conv_within_one_step() {
        let mut rng = Lcg::new(11);
        let mut worst = 0.0f64;
        let asym = Pad2d {
            top: 2,
            bottom: 0,
            left: 1,
            right: 3,
        };
        for &((c_in, c_out, h, w), k, s, d) in &[
            ((3, 8, 9, 11), 3, 2, 1),
            ((4, 5, 8, 8), 3, 1, 2),
            ((2, 3, 10, 7), 5, 2, 1),
            ((2, 2, 6, 6), 2, 1, 1),
            ((7, 5, 4, 6), 1, 1, 1),
            ((5, 6, 7, 7), 1, 2, 1),
        ] {
            for pad in [same_padding(h, w, k, s, d), asym, Pad2d::ZERO] {
                let spec = Conv2dSpec::new(s, d, 1, pad);
                for xbits in [8, 16] {
                    for (i, &wq) in WEIGHTS.iter().enumerate() {
                        let dims = (c_in, c_out, h, w);
                        check_case(
                            &mut rng,
                            dims,
                            k,
                            spec,
                            act(xbits),
                            wq,
                            i % 2 == 0,
                            &mut worst,
                        );
                    }
                }
            }
        }
        assert!(act(8).zero_point != 0);
        println!("QConv2d regular: largest error {worst:.4} output steps");
    }

    #[test]
    fn depthwise_conv_within_one_step() {
        let mut rng = Lcg::new(12);
        let mut worst = 0.0f64;
        for &(c, h, w, k, s, d) in &[
            (6, 9, 11, 3, 2, 1),
            (4, 8, 8, 5, 1, 1),
            (3, 10, 7, 5, 2, 1),
            (5, 12, 13, 3, 1, 2),
            (2, 3, 3, 5, 2, 1),
        ] {
            for pad in [
                same_padding(h, w, k, s, d),
                Pad2d {
                    top: 0,
                    bottom: 3,
                    left: 2,
                    right: 0,
                },
            ] {
                if h + pad.top + pad.bottom < d * (k - 1) + 1
                    || w + pad.left + pad.right < d * (k - 1) + 1
                {
                    continue;
                }
                let spec = Conv2dSpec::new(s, d, c, pad);
                for xbits in [8, 16] {
                    for (i, &wq) in WEIGHTS.iter().enumerate() {
                        let dims = (c, c, h, w);
                        check_case(
                            &mut rng,
                            dims,
                            k,
                            spec,
                            act(xbits),
                            wq,
                            i % 2 == 1,
                            &mut worst,
                        );
                    }
                }
            }
        }
        println!("QConv2d depthwise: largest error {worst:.4} output steps");
    }

    #[test]
    fn conv_worst_case_long_reduction_is_exact() {
        // 3x3 over 8192 channels: K = 73728 terms of (-32768) x (-127) x 256 ~ 2^46, and with
        // 16-bit weights (-32768) x (-32767) x 256 ~ 2^54 (still inside i64).
        let (c_in, k) = (8192, 3);
        let kk = c_in * k * k;
        for (wbits, wval) in [(8u32, -127i16), (16, -32767)] {
            let qw = QuantWeight {
                out: 1,
                inp: kk,
                bits: wbits,
                group: kk,
                q: vec![wval; kk],
                row_scale: vec![0.01],
                group_mult: vec![256],
            };
            let xq = ActQuant {
                scale: 1e-3,
                zero_point: 0,
                bits: 16,
            };
            let w_abs = -(wval as i128);
            let real = 32768.0 * w_abs as f64 * kk as f64 * 1e-3 * 0.01;
            let yq = ActQuant::from_range(0.0, 1.1 * real as f32, 16, true);
            let spec = Conv2dSpec::new(1, 1, 1, Pad2d::ZERO);
            let op = conv2d_from_quantized(&qw, c_in, (k, k), Some(&[0.5]), spec, xq, yq).unwrap();
            let x = QTensor::new(&[c_in, k, k], vec![qmin(16) as i16; kk], xq);
            let y = op.forward(&x);
            assert_eq!(y.shape, vec![1, 1, 1]);
            let acc = kk as i128 * 32768 * w_abs * 256 + op.bias.as_ref().unwrap()[0] as i128;
            assert!(acc > 1i128 << 45);
            let expect = apply_i128(acc, op.mult[0]).clamp(qmin(16) as i128, qmax(16) as i128);
            assert_eq!(y.data[0] as i128, expect, "w{wbits}");
            assert!(expect < qmax(16) as i128);
        }
    }

    #[test]
    fn invalid_geometry_is_rejected() {
        let xq = act(16);
        let w = Tensor::new(&[4, 2, 3, 3], vec![0.1; 72]).unwrap();
        let spec = Conv2dSpec::new(1, 1, 2, Pad2d::ZERO);
        let r = qconv2d(
            &w,
            None,
            spec,
            8,
            Granularity::PerChannel,
            WeightRange::MinMax,
            xq,
            xq,
        );
        assert!(
            r.is_err(),
            "grouped (non-depthwise) convolutions are not supported"
        );
        let w = Tensor::new(&[4, 1, 3, 3], vec![0.1; 36]).unwrap();
        let spec = Conv2dSpec::new(2, 1, 4, Pad2d::symmetric(1));
        let op = qconv2d(
            &w,
            None,
            spec,
            8,
            Granularity::PerChannel,
            WeightRange::MinMax,
            xq,
            xq,
        )
        .unwrap();
        assert!(op.depthwise);
        assert_eq!(op.out_size(7, 8), (4, 4));
    }
}
