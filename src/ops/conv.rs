//! 2-D convolutions (regular, depthwise, pointwise) on `[C, H, W]` maps with PyTorch
//! `F.conv2d` semantics, plus timm's padding rules (`get_padding`, TF "SAME").
//!
//! Weights are PyTorch `[C_out, C_in / groups, kH, kW]`. Padding is explicit (zeros, possibly
//! asymmetric); [`same_padding`] computes what timm's `padding='same'` convolutions use.
//!
//! * pointwise (1x1, stride 1, no padding): one GEMM `W[C_out, C_in] @ X[C_in, HW]`;
//! * regular (groups = 1): im2col into `[C_in*kH*kW, OH*OW]`, then one GEMM;
//! * depthwise (groups = C_in = C_out): direct loops, one rayon task per channel.

use super::gemm::{matmul, MatRef};
use crate::tensor::Tensor;
use rayon::prelude::*;

/// Zero padding of the four borders of a map, in pixels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pad2d {
    pub top: usize,
    pub bottom: usize,
    pub left: usize,
    pub right: usize,
}

impl Pad2d {
    pub const ZERO: Pad2d = Pad2d {
        top: 0,
        bottom: 0,
        left: 0,
        right: 0,
    };

    /// The same padding on every side.
    pub fn symmetric(p: usize) -> Self {
        Pad2d {
            top: p,
            bottom: p,
            left: p,
            right: p,
        }
    }

    pub fn is_zero(&self) -> bool {
        *self == Self::ZERO
    }
}

/// Geometry of a convolution besides the kernel size (which comes from the weight).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dSpec {
    pub stride: usize,
    pub dilation: usize,
    /// 1 (regular conv) or `C_in` (depthwise, `C_out == C_in`).
    pub groups: usize,
    pub pad: Pad2d,
}

impl Conv2dSpec {
    pub fn new(stride: usize, dilation: usize, groups: usize, pad: Pad2d) -> Self {
        Self {
            stride,
            dilation,
            groups,
            pad,
        }
    }
}

/// timm `get_padding`: PyTorch-style symmetric padding `((s - 1) + d (k - 1)) / 2`.
pub fn get_padding(kernel: usize, stride: usize, dilation: usize) -> usize {
    ((stride - 1) + dilation * (kernel - 1)) / 2
}

/// timm `is_static_pad`: whether `padding='same'` can be a fixed symmetric padding.
pub fn is_static_pad(kernel: usize, stride: usize, dilation: usize) -> bool {
    stride == 1 && (dilation * (kernel - 1)).is_multiple_of(2)
}

/// timm `get_same_padding`: total TF "SAME" padding of one dimension,
/// `max((ceil(in / s) - 1) s + (k - 1) d + 1 - in, 0)`.
pub fn get_same_padding(input: usize, kernel: usize, stride: usize, dilation: usize) -> usize {
    let need = (input.div_ceil(stride).max(1) - 1) * stride + (kernel - 1) * dilation + 1;
    need.saturating_sub(input)
}

/// The padding timm's `create_conv2d(..., padding='same')` applies to an `h x w` input:
/// the static symmetric [`get_padding`] when [`is_static_pad`] holds (a plain `nn.Conv2d`),
/// otherwise `Conv2dSame`'s dynamic TF padding with `pad / 2` before and the rest after.
/// (For stride 1 and odd `d (k - 1)` both rules give the same numbers.)
pub fn same_padding(h: usize, w: usize, kernel: usize, stride: usize, dilation: usize) -> Pad2d {
    if is_static_pad(kernel, stride, dilation) {
        Pad2d::symmetric(get_padding(kernel, stride, dilation))
    } else {
        let ph = get_same_padding(h, kernel, stride, dilation);
        let pw = get_same_padding(w, kernel, stride, dilation);
        Pad2d {
            top: ph / 2,
            bottom: ph - ph / 2,
            left: pw / 2,
            right: pw - pw / 2,
        }
    }
}

/// Output length of one dimension: `floor((in + pb + pa - d (k - 1) - 1) / s) + 1`.
/// Panics when the dilated kernel does not fit in the padded input.
pub fn conv_out_size(
    input: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    pad_before: usize,
    pad_after: usize,
) -> usize {
    let span = dilation * (kernel - 1) + 1;
    let padded = input + pad_before + pad_after;
    assert!(
        padded >= span,
        "kernel {kernel} (dilation {dilation}) larger than padded input {padded}"
    );
    (padded - span) / stride + 1
}

/// `F.conv2d(x, weight, bias, stride, 0, dilation, groups)` on `F.pad(x, pad)`.
///
/// `x` is `[C_in, H, W]`, `weight` `[C_out, C_in / groups, kH, kW]`; returns `[C_out, OH, OW]`.
/// Supports `groups == 1` and depthwise (`groups == C_in == C_out`).
pub fn conv2d(x: &Tensor, weight: &Tensor, bias: Option<&[f32]>, spec: Conv2dSpec) -> Tensor {
    assert_eq!(
        x.rank(),
        3,
        "conv2d input must be [C, H, W], got {:?}",
        x.shape()
    );
    assert_eq!(weight.rank(), 4, "conv2d weight must be 4-D");
    let (c_in, h, w) = (x.dim(0), x.dim(1), x.dim(2));
    let (c_out, cpg, kh, kw) = (weight.dim(0), weight.dim(1), weight.dim(2), weight.dim(3));
    assert!(spec.stride >= 1 && spec.dilation >= 1);
    if let Some(b) = bias {
        assert_eq!(b.len(), c_out, "conv2d bias length");
    }
    let geom = Geom::new(c_in, h, w, kh, kw, spec);
    let data = if spec.groups == 1 {
        assert_eq!(cpg, c_in, "conv2d weight in-channels {cpg} vs input {c_in}");
        if kh == 1 && kw == 1 && spec.stride == 1 && spec.pad.is_zero() {
            pointwise(x.data(), c_in, h * w, weight.data(), c_out, bias)
        } else {
            regular(x.data(), weight.data(), c_out, bias, &geom)
        }
    } else {
        assert!(
            spec.groups == c_in && c_out == c_in && cpg == 1,
            "only groups = 1 or depthwise (groups = C_in = C_out) convolutions are supported \
             (groups {}, C_in {c_in}, C_out {c_out}, weight {:?})",
            spec.groups,
            weight.shape()
        );
        depthwise(x.data(), weight.data(), bias, &geom)
    };
    Tensor::from_parts(&[c_out, geom.oh, geom.ow], data)
}

/// The im2col patch matrix of `x` `[C_in, H, W]` as a `kernel` convolution with `spec` reads it:
/// `(rows, positions, data)` with `rows = C_in * kH * kW` ordered `(ci, ky, kx)` like a flattened
/// weight row (depthwise: channel `c` owns rows `c * kH * kW ..`), `positions = OH * OW`, padding
/// as zeros.
pub fn patches(x: &Tensor, kernel: (usize, usize), spec: Conv2dSpec) -> (usize, usize, Vec<f32>) {
    let (c_in, h, w) = (x.dim(0), x.dim(1), x.dim(2));
    let geom = Geom::new(c_in, h, w, kernel.0, kernel.1, spec);
    let (rows, n) = (c_in * kernel.0 * kernel.1, geom.oh * geom.ow);
    let mut col = vec![0.0f32; rows * n];
    if n > 0 {
        im2col(x.data(), &geom, 0, geom.oh, &mut col);
    }
    (rows, n, col)
}

/// Shapes of one convolution, resolved.
#[derive(Clone, Copy, Debug)]
struct Geom {
    c_in: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    oh: usize,
    ow: usize,
    stride: usize,
    dilation: usize,
    pad: Pad2d,
}

impl Geom {
    fn new(c_in: usize, h: usize, w: usize, kh: usize, kw: usize, spec: Conv2dSpec) -> Self {
        let (s, d, p) = (spec.stride, spec.dilation, spec.pad);
        Geom {
            c_in,
            h,
            w,
            kh,
            kw,
            oh: conv_out_size(h, kh, s, d, p.top, p.bottom),
            ow: conv_out_size(w, kw, s, d, p.left, p.right),
            stride: s,
            dilation: d,
            pad: p,
        }
    }

    /// Output columns `ox` whose input column `ox * s + off - pad_left` lies inside `[0, w)`,
    /// where `off = kx * d`.
    fn valid_cols(&self, off: usize) -> (usize, usize) {
        valid_range(self.w, self.ow, self.stride, off, self.pad.left)
    }

    fn valid_rows(&self, off: usize) -> (usize, usize) {
        valid_range(self.h, self.oh, self.stride, off, self.pad.top)
    }
}

/// `[lo, hi)` of output positions `o` with `0 <= o * s + off - pad < n`.
fn valid_range(n: usize, out: usize, s: usize, off: usize, pad: usize) -> (usize, usize) {
    // o * s + off >= pad  <=>  o >= ceil((pad - off) / s)
    let lo = if pad > off {
        (pad - off).div_ceil(s)
    } else {
        0
    };
    // o * s + off - pad <= n - 1  <=>  o <= (n - 1 + pad - off) / s
    let hi = if n + pad > off {
        ((n - 1 + pad - off) / s + 1).min(out)
    } else {
        0
    };
    (lo.min(hi), hi)
}

/// 1x1 convolution: `y[C_out, HW] = W[C_out, C_in] @ x[C_in, HW] (+ b)`.
pub fn pointwise(
    x: &[f32],
    c_in: usize,
    hw: usize,
    weight: &[f32],
    c_out: usize,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    assert_eq!(x.len(), c_in * hw);
    assert_eq!(weight.len(), c_out * c_in);
    let mut y = vec![0.0f32; c_out * hw];
    matmul(
        MatRef::row_major(weight, c_out, c_in),
        MatRef::row_major(x, c_in, hw),
        &mut y,
    );
    if let Some(b) = bias {
        add_channel_bias(&mut y, hw, b);
    }
    y
}

/// 1x1 convolution producing token-major output: `y[HW, C_out] = x[C_in, HW]^T @ W[C_out, C_in]^T`.
/// The same sums as [`pointwise`], transposed (used for attention projections).
pub fn pointwise_to_tokens(
    x: &[f32],
    c_in: usize,
    hw: usize,
    weight: &[f32],
    c_out: usize,
) -> Vec<f32> {
    assert_eq!(x.len(), c_in * hw);
    assert_eq!(weight.len(), c_out * c_in);
    let mut y = vec![0.0f32; hw * c_out];
    matmul(
        MatRef::transposed(x, hw, c_in),
        MatRef::transposed(weight, c_in, c_out),
        &mut y,
    );
    y
}

/// 1x1 convolution of a token-major input: `y[C_out, T] = W[C_out, C_in] @ x[T, C_in]^T`,
/// i.e. the channel-major map of the projected tokens.
pub fn pointwise_from_tokens(
    x: &[f32],
    tokens: usize,
    c_in: usize,
    weight: &[f32],
    c_out: usize,
) -> Vec<f32> {
    assert_eq!(x.len(), tokens * c_in);
    assert_eq!(weight.len(), c_out * c_in);
    let mut y = vec![0.0f32; c_out * tokens];
    matmul(
        MatRef::row_major(weight, c_out, c_in),
        MatRef::transposed(x, c_in, tokens),
        &mut y,
    );
    y
}

fn add_channel_bias(y: &mut [f32], hw: usize, bias: &[f32]) {
    if hw == 0 {
        return;
    }
    y.par_chunks_mut(hw).zip(bias).for_each(|(plane, &b)| {
        plane.iter_mut().for_each(|v| *v += b);
    });
}

/// Regular (groups = 1) convolution by im2col + GEMM.
fn regular(x: &[f32], weight: &[f32], c_out: usize, bias: Option<&[f32]>, g: &Geom) -> Vec<f32> {
    let (c_in, kh, kw) = (g.c_in, g.kh, g.kw);
    let ohw = g.oh * g.ow;
    let k = c_in * kh * kw;
    assert_eq!(x.len(), c_in * g.h * g.w);
    assert_eq!(weight.len(), c_out * k);
    let mut y = vec![0.0f32; c_out * ohw];
    if ohw == 0 {
        return y;
    }
    // Bound the column buffer: process the output in bands of rows.
    const MAX_COL: usize = 1 << 24; // floats (64 MiB)
    let band_rows = (MAX_COL / (k * g.ow).max(1)).clamp(1, g.oh);
    if band_rows == g.oh {
        let mut col = vec![0.0f32; k * ohw];
        im2col(x, g, 0, g.oh, &mut col);
        matmul(
            MatRef::row_major(weight, c_out, k),
            MatRef::row_major(&col, k, ohw),
            &mut y,
        );
    } else {
        let mut col = vec![0.0f32; k * band_rows * g.ow];
        let mut tmp = vec![0.0f32; c_out * band_rows * g.ow];
        let mut oy0 = 0;
        while oy0 < g.oh {
            let rows = band_rows.min(g.oh - oy0);
            let n = rows * g.ow;
            im2col(x, g, oy0, rows, &mut col[..k * n]);
            matmul(
                MatRef::row_major(weight, c_out, k),
                MatRef::row_major(&col[..k * n], k, n),
                &mut tmp[..c_out * n],
            );
            y.par_chunks_mut(ohw)
                .zip(tmp.par_chunks(n))
                .for_each(|(dst, src)| {
                    dst[oy0 * g.ow..oy0 * g.ow + n].copy_from_slice(src);
                });
            oy0 += rows;
        }
    }
    if let Some(b) = bias {
        add_channel_bias(&mut y, ohw, b);
    }
    y
}

/// Fills `col[(ci, ky, kx), (oy - oy0) * OW + ox]` for output rows `oy0 .. oy0 + rows`.
fn im2col(x: &[f32], g: &Geom, oy0: usize, rows: usize, col: &mut [f32]) {
    let (kh, kw, ow, s, d) = (g.kh, g.kw, g.ow, g.stride, g.dilation);
    let n = rows * ow;
    let plane = g.h * g.w;
    col.par_chunks_mut(n).enumerate().for_each(|(r, dst)| {
        let ci = r / (kh * kw);
        let ky = (r / kw) % kh;
        let kx = r % kw;
        let src = &x[ci * plane..(ci + 1) * plane];
        let (ylo, yhi) = g.valid_rows(ky * d);
        let (xlo, xhi) = g.valid_cols(kx * d);
        for (i, out_row) in dst.chunks_exact_mut(ow).enumerate() {
            let oy = oy0 + i;
            if oy < ylo || oy >= yhi || xlo >= xhi {
                out_row.fill(0.0);
                continue;
            }
            let iy = oy * s + ky * d - g.pad.top;
            let in_row = &src[iy * g.w..(iy + 1) * g.w];
            out_row[..xlo].fill(0.0);
            out_row[xhi..].fill(0.0);
            let ix0 = xlo * s + kx * d - g.pad.left;
            if s == 1 {
                out_row[xlo..xhi].copy_from_slice(&in_row[ix0..ix0 + (xhi - xlo)]);
            } else {
                for (j, v) in out_row[xlo..xhi].iter_mut().enumerate() {
                    *v = in_row[ix0 + j * s];
                }
            }
        }
    });
}

/// Depthwise convolution (one filter per channel), direct loops parallel over channels.
fn depthwise(x: &[f32], weight: &[f32], bias: Option<&[f32]>, g: &Geom) -> Vec<f32> {
    let (c, h, w, kh, kw, oh, ow) = (g.c_in, g.h, g.w, g.kh, g.kw, g.oh, g.ow);
    let (s, d) = (g.stride, g.dilation);
    assert_eq!(x.len(), c * h * w);
    assert_eq!(weight.len(), c * kh * kw);
    let mut y = vec![0.0f32; c * oh * ow];
    if oh * ow == 0 {
        return y;
    }
    y.par_chunks_mut(oh * ow).enumerate().for_each(|(ch, out)| {
        let src = &x[ch * h * w..(ch + 1) * h * w];
        let wk = &weight[ch * kh * kw..(ch + 1) * kh * kw];
        if let Some(b) = bias {
            out.fill(b[ch]);
        }
        // Column ranges per kx do not depend on the row.
        let cols: Vec<(usize, usize)> = (0..kw).map(|kx| g.valid_cols(kx * d)).collect();
        for ky in 0..kh {
            let (ylo, yhi) = g.valid_rows(ky * d);
            for oy in ylo..yhi {
                let iy = oy * s + ky * d - g.pad.top;
                let in_row = &src[iy * w..(iy + 1) * w];
                let out_row = &mut out[oy * ow..(oy + 1) * ow];
                for (kx, &(xlo, xhi)) in cols.iter().enumerate() {
                    if xlo >= xhi {
                        continue;
                    }
                    let wv = wk[ky * kw + kx];
                    let ix0 = xlo * s + kx * d - g.pad.left;
                    let dst = &mut out_row[xlo..xhi];
                    if s == 1 {
                        let n = dst.len();
                        for (o, &i) in dst.iter_mut().zip(&in_row[ix0..ix0 + n]) {
                            *o += wv * i;
                        }
                    } else {
                        for (j, o) in dst.iter_mut().enumerate() {
                            *o += wv * in_row[ix0 + j * s];
                        }
                    }
                }
            }
        }
    });
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct 7-loop convolution in f64 with explicit zero padding.
    fn naive(x: &Tensor, wt: &Tensor, bias: Option<&[f32]>, spec: Conv2dSpec) -> Tensor {
        let (c_in, h, w) = (x.dim(0), x.dim(1), x.dim(2));
        let (c_out, cpg, kh, kw) = (wt.dim(0), wt.dim(1), wt.dim(2), wt.dim(3));
        let (s, d, p) = (spec.stride, spec.dilation, spec.pad);
        let oh = (h + p.top + p.bottom - d * (kh - 1) - 1) / s + 1;
        let ow = (w + p.left + p.right - d * (kw - 1) - 1) / s + 1;
        let opg = c_out / spec.groups;
        let mut out = vec![0.0f32; c_out * oh * ow];
        for co in 0..c_out {
            let grp = co / opg;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = bias.map_or(0.0, |b| b[co] as f64);
                    for cj in 0..cpg {
                        let ci = grp * cpg + cj;
                        for ky in 0..kh {
                            for kx in 0..kw {
                                let iy = (oy * s + ky * d) as isize - p.top as isize;
                                let ix = (ox * s + kx * d) as isize - p.left as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= w as isize {
                                    continue;
                                }
                                let xv = x.data()[(ci * h + iy as usize) * w + ix as usize];
                                let wv = wt.data()[((co * cpg + cj) * kh + ky) * kw + kx];
                                acc += xv as f64 * wv as f64;
                            }
                        }
                    }
                    out[(co * oh + oy) * ow + ox] = acc as f32;
                }
            }
        }
        let _ = c_in;
        Tensor::from_parts(&[c_out, oh, ow], out)
    }

    fn gen(shape: &[usize], seed: usize) -> Tensor {
        let n: usize = shape.iter().product();
        let data = (0..n)
            .map(|i| (((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.5) - 1.0)
            .collect();
        Tensor::from_parts(shape, data)
    }

    fn assert_close(a: &Tensor, b: &Tensor) {
        assert_eq!(a.shape(), b.shape());
        for (x, y) in a.data().iter().zip(b.data()) {
            assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{x} vs {y}");
        }
    }

    #[test]
    fn same_padding_matches_timm() {
        // Static (stride 1, odd kernel): symmetric get_padding.
        assert_eq!(same_padding(48, 48, 3, 1, 1), Pad2d::symmetric(1));
        assert_eq!(same_padding(48, 48, 5, 1, 1), Pad2d::symmetric(2));
        assert_eq!(same_padding(7, 9, 5, 1, 2), Pad2d::symmetric(4));
        assert_eq!(same_padding(7, 7, 1, 1, 1), Pad2d::ZERO);
        // Dynamic TF SAME (stride 2): before = pad / 2, after = rest.
        let p = same_padding(768, 768, 3, 2, 1);
        assert_eq!((p.top, p.bottom, p.left, p.right), (0, 1, 0, 1));
        let p = same_padding(96, 96, 5, 2, 1);
        assert_eq!((p.top, p.bottom, p.left, p.right), (1, 2, 1, 2));
        // Odd input with stride 2, k3: pad = (ceil(7/2)-1)*2 + 3 - 7 = 2 -> (1, 1).
        let p = same_padding(7, 8, 3, 2, 1);
        assert_eq!((p.top, p.bottom, p.left, p.right), (1, 1, 0, 1));
        // Even kernel at stride 1 is dynamic: pad 1 -> (0, 1).
        let p = same_padding(10, 10, 2, 1, 1);
        assert_eq!((p.top, p.bottom), (0, 1));
        assert_eq!(get_same_padding(1, 3, 2, 1), 2);
        assert_eq!(get_same_padding(10, 1, 2, 1), 0);
        assert_eq!(conv_out_size(768, 3, 2, 1, 0, 1), 384);
        assert_eq!(conv_out_size(7, 3, 2, 1, 1, 1), 4);
    }

    #[test]
    fn regular_conv_matches_naive() {
        for &(c_in, c_out, h, w, k, s, d) in &[
            (3, 8, 9, 11, 3, 2, 1),
            (4, 5, 8, 8, 3, 1, 1),
            (2, 3, 10, 7, 5, 2, 1),
            (3, 4, 12, 12, 3, 1, 2),
            (2, 2, 6, 6, 2, 1, 1),
            (5, 6, 7, 7, 1, 2, 1),
            (4, 3, 5, 6, 1, 1, 1),
        ] {
            let x = gen(&[c_in, h, w], 1);
            let wt = gen(&[c_out, c_in, k, k], 2);
            let b: Vec<f32> = (0..c_out).map(|i| i as f32 * 0.1 - 0.2).collect();
            for pad in [
                same_padding(h, w, k, s, d),
                Pad2d::ZERO,
                Pad2d {
                    top: 2,
                    bottom: 0,
                    left: 1,
                    right: 3,
                },
            ] {
                if h + pad.top + pad.bottom < d * (k - 1) + 1 {
                    continue;
                }
                let spec = Conv2dSpec::new(s, d, 1, pad);
                assert_close(
                    &conv2d(&x, &wt, Some(&b), spec),
                    &naive(&x, &wt, Some(&b), spec),
                );
                assert_close(&conv2d(&x, &wt, None, spec), &naive(&x, &wt, None, spec));
            }
        }
    }

    #[test]
    fn banded_im2col_matches_naive() {
        // Large enough that the column buffer is split into row bands.
        let (c_in, c_out, h, w) = (200, 4, 120, 100);
        let x = gen(&[c_in, h, w], 3);
        let wt = gen(&[c_out, c_in, 3, 3], 4);
        let spec = Conv2dSpec::new(1, 1, 1, same_padding(h, w, 3, 1, 1));
        assert!(c_in * 9 * h * w > 1 << 24);
        assert_close(&conv2d(&x, &wt, None, spec), &naive(&x, &wt, None, spec));
    }

    #[test]
    fn depthwise_conv_matches_naive() {
        for &(c, h, w, k, s, d) in &[
            (6, 9, 11, 3, 2, 1),
            (4, 8, 8, 5, 1, 1),
            (3, 10, 7, 5, 2, 1),
            (5, 12, 13, 3, 1, 2),
            (2, 6, 6, 2, 1, 1),
            (2, 3, 3, 5, 2, 1),
        ] {
            let x = gen(&[c, h, w], 5);
            let wt = gen(&[c, 1, k, k], 6);
            let b: Vec<f32> = (0..c).map(|i| 0.3 - i as f32 * 0.05).collect();
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
                assert_close(
                    &conv2d(&x, &wt, Some(&b), spec),
                    &naive(&x, &wt, Some(&b), spec),
                );
                assert_close(&conv2d(&x, &wt, None, spec), &naive(&x, &wt, None, spec));
            }
        }
    }

    #[test]
    fn pointwise_variants_agree() {
        let (c_in, c_out, h, w) = (7, 5, 4, 6);
        let x = gen(&[c_in, h, w], 7);
        let wt = gen(&[c_out, c_in, 1, 1], 8);
        let spec = Conv2dSpec::new(1, 1, 1, Pad2d::ZERO);
        let y = conv2d(&x, &wt, None, spec);
        assert_close(&y, &naive(&x, &wt, None, spec));
        let tok = pointwise_to_tokens(x.data(), c_in, h * w, wt.data(), c_out);
        let tok = Tensor::from_parts(&[h * w, c_out], tok);
        let back = tok.transpose2d().reshape(&[c_out, h, w]).unwrap();
        assert_close(&back, &y);
        // from_tokens(tokens(x)) with a square weight equals pointwise twice.
        let w2 = gen(&[c_out, c_out, 1, 1], 9);
        let z = pointwise_from_tokens(tok.data(), h * w, c_out, w2.data(), c_out);
        let z = Tensor::from_parts(&[c_out, h, w], z);
        assert_close(&z, &naive(&y, &w2, None, spec));
    }
}
