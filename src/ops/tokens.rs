//! Rearrangements of token rows (`[T, D]`, row-major), generic over the element type so the float
//! and the integer executors share one definition: row slices and InternVL's pixel shuffle.

/// Rows `start..start + len` of a `[T, d]` buffer.
pub fn slice_rows<T: Copy>(x: &[T], d: usize, start: usize, len: usize) -> Vec<T> {
    x[start * d..(start + len) * d].to_vec()
}

/// InternVL's pixel shuffle (`ps_version` v2, `downsample_ratio = 1 / scale`) on the `[h * w, c]`
/// tokens of an `h x w` grid (row-major): the result is `[(h / s) * (w / s), s * s * c]`, where
/// output token `(i, j)` is the concatenation of the `s x s` block of input tokens
/// `(s * i + m, s * j + k)` in row-major order of `(m, k)`.
///
/// This is what `InternVLModel.pixel_shuffle` computes with its two views and permutes: the first
/// view packs `s` neighbours along the row into channels, the permute + second view packs `s`
/// neighbours along the column, and the last permute restores row-major order.
pub fn pixel_shuffle<T: Copy>(x: &[T], h: usize, w: usize, c: usize, s: usize) -> Vec<T> {
    assert_eq!(x.len(), h * w * c);
    assert!(s > 0 && h.is_multiple_of(s) && w.is_multiple_of(s));
    let (oh, ow) = (h / s, w / s);
    let mut y = Vec::with_capacity(x.len());
    for i in 0..oh {
        for j in 0..ow {
            for m in 0..s {
                for k in 0..s {
                    let t = (s * i + m) * w + s * j + k;
                    y.extend_from_slice(&x[t * c..(t + 1) * c]);
                }
            }
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference's steps on a `[W, H, C]` array as index arithmetic (view, permute(0, 2, 1,
    /// 3), view, permute(0, 2, 1, 3)), compared with the block form above.
    fn reference(x: &[usize], a: usize, b: usize, c: usize, s: usize) -> Vec<usize> {
        // view (a, b / s, s c)
        let v1 = |i: usize, j: usize, k: usize| x[(i * b + j * s + k / c) * c + k % c];
        // permute -> (b / s, a, s c); view (b / s, a / s, s s c)
        let v3 = |j: usize, i2: usize, k: usize| v1(i2 * s + k / (s * c), j, k % (s * c));
        // permute -> (a / s, b / s, s s c)
        let mut out = Vec::new();
        for i2 in 0..a / s {
            for j in 0..b / s {
                for k in 0..s * s * c {
                    out.push(v3(j, i2, k));
                }
            }
        }
        out
    }

    #[test]
    fn pixel_shuffle_matches_the_reference_views_and_permutes() {
        for (h, w, c, s) in [(4, 4, 3, 2), (6, 4, 2, 2), (6, 6, 1, 3), (2, 2, 5, 1)] {
            let x: Vec<usize> = (0..h * w * c).collect();
            assert_eq!(pixel_shuffle(&x, h, w, c, s), reference(&x, h, w, c, s));
        }
        // 2x2 grid, 1 channel: one token holding the block row-major.
        assert_eq!(pixel_shuffle(&[1, 2, 3, 4], 2, 2, 1, 2), vec![1, 2, 3, 4]);
    }

    #[test]
    fn slices_rows() {
        assert_eq!(slice_rows(&[1, 2, 3, 4, 5, 6], 2, 1, 2), vec![3, 4, 5, 6]);
    }
}
