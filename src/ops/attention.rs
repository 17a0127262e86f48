//! Scaled dot-product attention with grouped / multi-query key-value heads.
//!
//! Token-major layouts: `q` is `[tq, n_heads * d]`, `k` is `[tk, n_kv * d]`, `v` is
//! `[tk, n_kv * dv]`; query head `h` reads key/value head `h / (n_heads / n_kv)` (PyTorch's
//! `repeat_kv` order). The result is `[tq, n_heads * dv]`. This serves both the vision MQA
//! (`n_kv = 1`, no mask) and LFM2's causal GQA.

use super::gemm::{matmul, MatRef};
use rayon::prelude::*;

#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub n_heads: usize,
    pub n_kv: usize,
    pub d: usize,
    pub dv: usize,
}

/// Masking rule for the scores.
#[derive(Clone, Copy, Debug)]
pub enum Mask {
    None,
    /// Query `i` sits at absolute position `offset + i` and sees keys `0..=offset + i`.
    Causal {
        offset: usize,
    },
}

#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    tq: usize,
    tk: usize,
    s: AttnShape,
    scale: f32,
    mask: Mask,
) -> Vec<f32> {
    let AttnShape {
        n_heads,
        n_kv,
        d,
        dv,
    } = s;
    assert!(
        n_kv > 0 && n_heads % n_kv == 0,
        "heads {n_heads} not a multiple of kv heads {n_kv}"
    );
    assert_eq!(q.len(), tq * n_heads * d);
    assert_eq!(k.len(), tk * n_kv * d);
    assert_eq!(v.len(), tk * n_kv * dv);
    let group = n_heads / n_kv;
    // Work items are (block of query rows, head): the scores of one item are `Q_BLOCK x tk`, so
    // memory grows linearly with the sequence instead of holding a whole `tq x tk` matrix, and
    // a single decoded token still spreads its heads over the threads.
    let blocks = tq.div_ceil(Q_BLOCK);
    let items: Vec<Vec<f32>> = (0..blocks * n_heads)
        .into_par_iter()
        .map(|item| {
            let (b, h) = (item / n_heads, item % n_heads);
            let kvh = h / group;
            let q0 = b * Q_BLOCK;
            let rows = Q_BLOCK.min(tq - q0);
            // scores[rows, tk] = q_h[q0..q0 + rows] @ k_h^T
            let mut scores = vec![0.0f32; rows * tk];
            matmul(
                MatRef {
                    data: &q[q0 * n_heads * d + h * d..],
                    rows,
                    cols: d,
                    rs: n_heads * d,
                    cs: 1,
                },
                MatRef {
                    data: &k[kvh * d..],
                    rows: d,
                    cols: tk,
                    rs: 1,
                    cs: n_kv * d,
                },
                &mut scores,
            );
            for (i, row) in scores.chunks_exact_mut(tk).enumerate() {
                let visible = match mask {
                    Mask::None => tk,
                    Mask::Causal { offset } => (offset + q0 + i + 1).min(tk),
                };
                softmax_prefix(row, visible, scale);
            }
            let mut out = vec![0.0f32; rows * dv];
            matmul(
                MatRef::row_major(&scores, rows, tk),
                MatRef {
                    data: &v[kvh * dv..],
                    rows: tk,
                    cols: dv,
                    rs: n_kv * dv,
                    cs: 1,
                },
                &mut out,
            );
            out
        })
        .collect();
    let mut out = vec![0.0f32; tq * n_heads * dv];
    for (item, oh) in items.iter().enumerate() {
        let (b, h) = (item / n_heads, item % n_heads);
        for (i, row) in oh.chunks_exact(dv.max(1)).enumerate() {
            let t = b * Q_BLOCK + i;
            out[t * n_heads * dv + h * dv..][..dv].copy_from_slice(row);
        }
    }
    out
}

/// Query rows per work item of [`attention`].
const Q_BLOCK: usize = 64;

/// Softmax of `scale * row[..visible]`; entries from `visible` on are masked to zero.
pub fn softmax_prefix(row: &mut [f32], visible: usize, scale: f32) {
    let (live, masked) = row.split_at_mut(visible);
    masked.fill(0.0);
    let max = live
        .iter()
        .fold(f32::NEG_INFINITY, |m, &x| m.max(x * scale));
    let mut sum = 0.0f32;
    for x in live.iter_mut() {
        *x = (*x * scale - max).exp();
        sum += *x;
    }
    let inv = 1.0 / sum;
    live.iter_mut().for_each(|x| *x *= inv);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct per-element evaluation in f64, used as the reference.
    #[allow(clippy::too_many_arguments)]
    fn naive(
        q: &[f32],
        k: &[f32],
        v: &[f32],
        tq: usize,
        tk: usize,
        s: AttnShape,
        scale: f32,
        offset: Option<usize>,
    ) -> Vec<f32> {
        let mut out = vec![0.0f32; tq * s.n_heads * s.dv];
        for h in 0..s.n_heads {
            let kvh = h / (s.n_heads / s.n_kv);
            for i in 0..tq {
                let vis = offset.map_or(tk, |o| (o + i + 1).min(tk));
                let sc: Vec<f64> = (0..vis)
                    .map(|j| {
                        (0..s.d)
                            .map(|c| {
                                q[i * s.n_heads * s.d + h * s.d + c] as f64
                                    * k[j * s.n_kv * s.d + kvh * s.d + c] as f64
                            })
                            .sum::<f64>()
                            * scale as f64
                    })
                    .collect();
                let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = sc.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for c in 0..s.dv {
                    let acc: f64 = (0..vis)
                        .map(|j| e[j] / z * v[j * s.n_kv * s.dv + kvh * s.dv + c] as f64)
                        .sum();
                    out[i * s.n_heads * s.dv + h * s.dv + c] = acc as f32;
                }
            }
        }
        out
    }

    #[test]
    fn gqa_causal_and_mqa_match_naive() {
        let gen = |n: usize, seed: usize| -> Vec<f32> {
            (0..n)
                .map(|i| (((i * 7919 + seed * 104729) % 1000) as f32 / 500.0) - 1.0)
                .collect()
        };
        for &(tq, tk, s, off) in &[
            (
                5,
                5,
                AttnShape {
                    n_heads: 4,
                    n_kv: 2,
                    d: 8,
                    dv: 8,
                },
                Some(0),
            ),
            (
                1,
                9,
                AttnShape {
                    n_heads: 4,
                    n_kv: 1,
                    d: 8,
                    dv: 8,
                },
                Some(8),
            ),
            (
                12,
                3,
                AttnShape {
                    n_heads: 3,
                    n_kv: 1,
                    d: 4,
                    dv: 6,
                },
                None,
            ),
            // Several query blocks, the last one partial; causal with a past.
            (
                2 * Q_BLOCK + 7,
                2 * Q_BLOCK + 10,
                AttnShape {
                    n_heads: 2,
                    n_kv: 1,
                    d: 4,
                    dv: 3,
                },
                Some(3),
            ),
        ] {
            let q = gen(tq * s.n_heads * s.d, 1);
            let k = gen(tk * s.n_kv * s.d, 2);
            let v = gen(tk * s.n_kv * s.dv, 3);
            let mask = off.map_or(Mask::None, |o| Mask::Causal { offset: o });
            let got = attention(&q, &k, &v, tq, tk, s, 0.35, mask);
            let want = naive(&q, &k, &v, tq, tk, s, 0.35, off);
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() < 1e-5, "{a} vs {b}");
            }
        }
    }
}
