//! Average pooling, resizing (nearest, bilinear) and channel concatenation on `[C, H, W]` maps,
//! following PyTorch's `F.avg_pool2d` and `F.interpolate` CPU kernels.

use crate::tensor::Tensor;
use rayon::prelude::*;

fn chw(x: &Tensor) -> (usize, usize, usize) {
    assert_eq!(x.rank(), 3, "expected a [C, H, W] map, got {:?}", x.shape());
    (x.dim(0), x.dim(1), x.dim(2))
}

/// `F.avg_pool2d(x, kernel_size=(kh, kw), stride=(sh, sw))` with no padding and
/// `ceil_mode=False`: output `floor((in - k) / s) + 1` per dimension.
pub fn avg_pool2d(x: &Tensor, kh: usize, kw: usize, sh: usize, sw: usize) -> Tensor {
    let (c, h, w) = chw(x);
    assert!(kh >= 1 && kw >= 1 && sh >= 1 && sw >= 1);
    assert!(
        h >= kh && w >= kw,
        "avg_pool2d kernel {kh}x{kw} larger than input {h}x{w}"
    );
    let oh = (h - kh) / sh + 1;
    let ow = (w - kw) / sw + 1;
    let inv = 1.0 / (kh * kw) as f32;
    let mut out = vec![0.0f32; c * oh * ow];
    out.par_chunks_mut(oh * ow)
        .zip(x.data().par_chunks(h * w))
        .for_each(|(dst, src)| {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut sum = 0.0f32;
                    for ky in 0..kh {
                        let row = &src[(oy * sh + ky) * w + ox * sw..][..kw];
                        for &v in row {
                            sum += v;
                        }
                    }
                    dst[oy * ow + ox] = sum * inv;
                }
            }
        });
    Tensor::from_parts(&[c, oh, ow], out)
}

/// PyTorch `nearest_idx`: identity for equal sizes, `dst >> 1` for exact 2x upsampling, else
/// `min(floor(dst * (in / out)), in - 1)` computed in f32.
pub fn nearest_index(dst: usize, input: usize, output: usize) -> usize {
    if output == input {
        dst
    } else if output == 2 * input {
        dst >> 1
    } else {
        let scale = input as f32 / output as f32;
        ((dst as f32 * scale).floor() as usize).min(input - 1)
    }
}

/// `F.interpolate(x, size=(oh, ow), mode="nearest")`.
pub fn interpolate_nearest(x: &Tensor, oh: usize, ow: usize) -> Tensor {
    let (c, h, w) = chw(x);
    assert!(h > 0 && w > 0 && oh > 0 && ow > 0);
    let ys: Vec<usize> = (0..oh).map(|i| nearest_index(i, h, oh)).collect();
    let xs: Vec<usize> = (0..ow).map(|i| nearest_index(i, w, ow)).collect();
    let mut out = vec![0.0f32; c * oh * ow];
    out.par_chunks_mut(oh * ow)
        .zip(x.data().par_chunks(h * w))
        .for_each(|(dst, src)| {
            for (oy, &iy) in ys.iter().enumerate() {
                let in_row = &src[iy * w..(iy + 1) * w];
                for (o, &ix) in dst[oy * ow..(oy + 1) * ow].iter_mut().zip(&xs) {
                    *o = in_row[ix];
                }
            }
        });
    Tensor::from_parts(&[c, oh, ow], out)
}

/// Source index and weights of one output position for linear interpolation with
/// `align_corners=False` (PyTorch `area_pixel_compute_source_index` and
/// `compute_indices_weights_linear`): `(i0, i1, w0, w1)`. Also tabulated by the integer resize
/// (`quant::prepare::pool::resize_bilinear`), so both paths sample the same taps.
pub(crate) fn linear_coeffs(dst: usize, input: usize, output: usize) -> (usize, usize, f32, f32) {
    let scale = input as f32 / output as f32;
    let src = (scale * (dst as f32 + 0.5) - 0.5).max(0.0);
    let i0 = (src as usize).min(input - 1);
    let l1 = (src - i0 as f32).clamp(0.0, 1.0);
    let i1 = if i0 < input - 1 { i0 + 1 } else { i0 };
    (i0, i1, 1.0 - l1, l1)
}

/// `F.interpolate(x, size=(oh, ow), mode="bilinear", align_corners=False)` (no antialias).
pub fn interpolate_bilinear(x: &Tensor, oh: usize, ow: usize) -> Tensor {
    let (c, h, w) = chw(x);
    assert!(h > 0 && w > 0 && oh > 0 && ow > 0);
    let ys: Vec<_> = (0..oh).map(|i| linear_coeffs(i, h, oh)).collect();
    let xs: Vec<_> = (0..ow).map(|i| linear_coeffs(i, w, ow)).collect();
    let mut out = vec![0.0f32; c * oh * ow];
    out.par_chunks_mut(oh * ow)
        .zip(x.data().par_chunks(h * w))
        .for_each(|(dst, src)| {
            for (oy, &(y0, y1, wy0, wy1)) in ys.iter().enumerate() {
                let r0 = &src[y0 * w..(y0 + 1) * w];
                let r1 = &src[y1 * w..(y1 + 1) * w];
                for (o, &(x0, x1, wx0, wx1)) in dst[oy * ow..(oy + 1) * ow].iter_mut().zip(&xs) {
                    *o = wy0 * (wx0 * r0[x0] + wx1 * r0[x1]) + wy1 * (wx0 * r1[x0] + wx1 * r1[x1]);
                }
            }
        });
    Tensor::from_parts(&[c, oh, ow], out)
}

/// `torch.cat(xs, dim=0)` of `[C_i, H, W]` maps sharing `H, W`.
pub fn concat_channels(xs: &[&Tensor]) -> Tensor {
    assert!(!xs.is_empty(), "concat of no tensors");
    let (_, h, w) = chw(xs[0]);
    let mut c_total = 0;
    for x in xs {
        let (c, hh, ww) = chw(x);
        assert!(
            hh == h && ww == w,
            "concat_channels: spatial sizes differ ({:?} vs {:?})",
            x.shape(),
            xs[0].shape()
        );
        c_total += c;
    }
    let mut data = Vec::with_capacity(c_total * h * w);
    for x in xs {
        data.extend_from_slice(x.data());
    }
    Tensor::from_parts(&[c_total, h, w], data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(shape: &[usize]) -> Tensor {
        let n: usize = shape.iter().product();
        Tensor::from_parts(shape, (0..n).map(|i| i as f32).collect())
    }

    #[test]
    fn avg_pool_kernel_equals_stride() {
        let x = ramp(&[2, 6, 6]);
        let y = avg_pool2d(&x, 3, 3, 3, 3);
        assert_eq!(y.shape(), &[2, 2, 2]);
        // Window rows 0..3, cols 0..3 of channel 0: mean = 7.
        assert_eq!(y.data()[0], 7.0);
        assert_eq!(y.data()[1], 10.0);
        assert_eq!(y.data()[2], 25.0);
        assert_eq!(y.data()[4], 7.0 + 36.0);
        // Floor mode drops the remainder: 7x5 with k2 -> 3x2.
        let y = avg_pool2d(&ramp(&[1, 7, 5]), 2, 2, 2, 2);
        assert_eq!(y.shape(), &[1, 3, 2]);
        assert_eq!(y.data()[0], (0.0 + 1.0 + 5.0 + 6.0) / 4.0);
    }

    #[test]
    fn nearest_index_rule() {
        // 2x: repeat each pixel.
        let x = ramp(&[1, 2, 2]);
        let y = interpolate_nearest(&x, 4, 4);
        assert_eq!(
            y.data(),
            &[0., 0., 1., 1., 0., 0., 1., 1., 2., 2., 3., 3., 2., 2., 3., 3.]
        );
        // 3 -> 5: floor(dst * 0.6) = 0, 0, 1, 1, 2.
        let idx: Vec<usize> = (0..5).map(|i| nearest_index(i, 3, 5)).collect();
        assert_eq!(idx, vec![0, 0, 1, 1, 2]);
        // 7 -> 14 uses the shift; 7 -> 15: floor(dst * 7 / 15).
        assert_eq!(nearest_index(13, 7, 14), 6);
        assert_eq!(nearest_index(14, 7, 15), 6);
        assert_eq!(nearest_index(8, 7, 15), 3);
        // Downsampling 5 -> 2: floor(dst * 2.5) = 0, 2.
        assert_eq!(nearest_index(1, 5, 2), 2);
    }

    #[test]
    fn bilinear_align_corners_false() {
        // 1-D check along W: [0, 1] -> 4 samples: src = 0.5*(d+0.5)-0.5 = -0.25(0), 0.25, 0.75, 1.25.
        let x = Tensor::from_parts(&[1, 1, 2], vec![0.0, 1.0]);
        let y = interpolate_bilinear(&x, 1, 4);
        assert_eq!(y.data(), &[0.0, 0.25, 0.75, 1.0]);
        // Downsample 4 -> 2: src = 2*(d+0.5)-0.5 = 0.5, 2.5.
        let x = Tensor::from_parts(&[1, 4, 1], vec![0.0, 2.0, 4.0, 6.0]);
        let y = interpolate_bilinear(&x, 2, 1);
        assert_eq!(y.data(), &[1.0, 5.0]);
        // Identity size keeps values.
        let x = ramp(&[2, 3, 5]);
        assert_eq!(interpolate_bilinear(&x, 3, 5).data(), x.data());
    }

    #[test]
    fn concat_channels_order() {
        let a = ramp(&[1, 2, 2]);
        let b = Tensor::from_parts(&[2, 2, 2], vec![9.0; 8]);
        let c = concat_channels(&[&a, &b]);
        assert_eq!(c.shape(), &[3, 2, 2]);
        assert_eq!(&c.data()[..4], a.data());
        assert_eq!(&c.data()[4..], b.data());
    }
}
