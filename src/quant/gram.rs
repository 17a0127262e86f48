//! Gram matrices `H = X^T X` of calibration inputs for GPTQ ([`super::gptq`]).
//!
//! Every entry `H[i][j] = sum_t x[t][i] * x[t][j]` is one sequential f64 sum over the vectors `t`
//! in order, starting from `-0.0` (what `Iterator::sum` does), each product rounded before it is
//! added. That order is the contract: the result does not depend on the thread count, the
//! instruction set or the tiling, so quantized artifacts are the same on every machine.
//!
//! [`gram_reference`] computes it one dot product at a time: one dependent add chain, latency
//! bound (~1 add per 3-4 cycles). [`gram`] computes a `TI x TJ` tile of entries at once over
//! vector-major rows: `TI * TJ` independent chains, the `TJ` of one row contiguous so the compiler
//! vectorises across entries (never across `t`, which would reorder the sums). Products and sums
//! stay separate IEEE operations (Rust does not contract `a * b + c` into a fused multiply-add), so
//! every variant is bit-identical to the reference; the tests check it.

use rayon::prelude::*;

/// Rows of one tile (entries `i`).
const TI: usize = 4;
/// Columns of one tile (entries `j`, contiguous in a vector's row).
const TJ: usize = 16;
/// Rows per parallel task: their inputs over one chunk of vectors stay in L2 while the task
/// sweeps the columns, so the columns' inputs are read from memory once per task, not per tile.
const ROWS_PER_TASK: usize = 64;
const _: () = assert!(ROWS_PER_TASK.is_multiple_of(TJ) && ROWS_PER_TASK.is_multiple_of(TI));
/// Vectors per chunk. Partial sums are stored and reloaded between chunks, which is exact, so
/// chunking does not change the order of any entry's sum.
const CHUNK: usize = 256;
/// Below this many inputs the tiles are mostly edges: the reference is as fast.
const MIN_TILED: usize = 2 * TJ;

/// `X^T X` of a vector-major `[n, k]` matrix (`n` vectors of `k` inputs), full `[k, k]`.
pub fn gram(x: &[f64], n: usize, k: usize) -> Vec<f64> {
    assert_eq!(x.len(), n * k);
    if k < MIN_TILED {
        return gram_reference_vector_major(x, n, k);
    }
    // Each task computes the entries j <= i of its rows (the lower triangle).
    let lower: Vec<(usize, Vec<f64>)> = (0..k.div_ceil(ROWS_PER_TASK))
        .into_par_iter()
        .map(|b| {
            let (i0, i1) = (b * ROWS_PER_TASK, ((b + 1) * ROWS_PER_TASK).min(k));
            (i0, lower_rows(x, n, k, i0, i1))
        })
        .collect();
    let mut h = vec![0.0f64; k * k];
    for (i0, rows) in &lower {
        // `rows` is [i1 - i0, i1] row-major: row i holds columns 0..i1, of which 0..=i count.
        let w = (i0 + ROWS_PER_TASK).min(k);
        for (r, row) in rows.chunks_exact(w).enumerate() {
            let i = i0 + r;
            for (j, &v) in row[..=i].iter().enumerate() {
                h[i * k + j] = v;
                h[j * k + i] = v;
            }
        }
    }
    h
}

/// Rows `i0..i1`, columns `0..i1`, as `[i1 - i0, i1]` (only `j <= i` is meaningful).
fn lower_rows(x: &[f64], n: usize, k: usize, i0: usize, i1: usize) -> Vec<f64> {
    let (w, rows) = (i1, i1 - i0);
    let mut acc = vec![-0.0f64; rows * w];
    // The chunk's inputs of this task's rows and of one column tile, packed contiguous: read in
    // place they sit k * 8 bytes apart, a power of two for most layers, which maps every vector
    // to the same few cache sets.
    let mut pa = vec![0.0f64; CHUNK * rows];
    let mut pb = vec![0.0f64; CHUNK * TJ];
    // Full tiles of rows ib..ib+TI cover columns 0..(ib+TI)/TJ*TJ (entries above the diagonal
    // included and left unused); the remaining j <= i go one by one.
    let tiled = |ib: usize| {
        if ib + TI <= i1 {
            (ib + TI) / TJ * TJ
        } else {
            0
        }
    };
    for t0 in (0..n).step_by(CHUNK) {
        let xs = &x[t0 * k..(t0 + CHUNK).min(n) * k];
        let tb = xs.len() / k;
        for (t, row) in xs.chunks_exact(k).enumerate() {
            pa[t * rows..(t + 1) * rows].copy_from_slice(&row[i0..i1]);
        }
        for j0 in (0..tiled(i1 - TI.min(rows))).step_by(TJ) {
            for (t, row) in xs.chunks_exact(k).enumerate() {
                pb[t * TJ..(t + 1) * TJ].copy_from_slice(&row[j0..j0 + TJ]);
            }
            for ib in (i0..i1).step_by(TI).filter(|&ib| j0 + TJ <= tiled(ib)) {
                let mut t = [[0.0f64; TJ]; TI];
                for (r, tr) in t.iter_mut().enumerate() {
                    let at = (ib + r - i0) * w + j0;
                    tr.copy_from_slice(&acc[at..at + TJ]);
                }
                tile_dispatch(&pa[..tb * rows], rows, ib - i0, &pb[..tb * TJ], &mut t);
                for (r, tr) in t.iter().enumerate() {
                    let at = (ib + r - i0) * w + j0;
                    acc[at..at + TJ].copy_from_slice(tr);
                }
            }
        }
        // The rest: within this task's own rows (packed) after a full tile row, since i0 is a
        // multiple of TJ; from the start of the row only in the matrix's last, partial block.
        let pa = &pa[..tb * rows];
        for ib in (i0..i1).step_by(TI) {
            for i in ib..(ib + TI).min(i1) {
                for j in tiled(ib)..=i {
                    let a = &mut acc[(i - i0) * w + j];
                    if j >= i0 {
                        for v in pa.chunks_exact(rows) {
                            *a += v[i - i0] * v[j - i0];
                        }
                    } else {
                        for row in xs.chunks_exact(k) {
                            *a += row[i] * row[j];
                        }
                    }
                }
            }
        }
    }
    acc
}

/// One entry, in the contract's order.
fn dot(x: &[f64], n: usize, k: usize, i: usize, j: usize) -> f64 {
    let mut acc = -0.0f64;
    for row in x.chunks_exact(k).take(n) {
        acc += row[i] * row[j];
    }
    acc
}

type Tile = [[f64; TJ]; TI];

/// `pa`: vectors of `ra` inputs, this tile's rows at `ia..ia+TI`; `pb`: vectors of the tile's
/// `TJ` columns; both over the same vectors, in order.
fn tile_dispatch(pa: &[f64], ra: usize, ia: usize, pb: &[f64], acc: &mut Tile) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the feature was detected on this CPU.
            return unsafe { tile_avx512(pa, ra, ia, pb, acc) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the feature was detected on this CPU.
            return unsafe { tile_avx2(pa, ra, ia, pb, acc) };
        }
    }
    tile(pa, ra, ia, pb, acc)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile_avx512(pa: &[f64], ra: usize, ia: usize, pb: &[f64], acc: &mut Tile) {
    tile(pa, ra, ia, pb, acc)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn tile_avx2(pa: &[f64], ra: usize, ia: usize, pb: &[f64], acc: &mut Tile) {
    tile(pa, ra, ia, pb, acc)
}

/// Adds every vector's products to the `TI x TJ` entries, each its own chain, in order.
#[inline(always)]
fn tile(pa: &[f64], ra: usize, ia: usize, pb: &[f64], acc: &mut Tile) {
    let mut t = *acc;
    for (va, vb) in pa.chunks_exact(ra).zip(pb.chunks_exact(TJ)) {
        let a: &[f64; TI] = va[ia..ia + TI].try_into().expect("TI inputs");
        let b: &[f64; TJ] = vb.try_into().expect("TJ inputs");
        for (acc_r, &ar) in t.iter_mut().zip(a) {
            for (c, &bc) in acc_r.iter_mut().zip(b) {
                *c += ar * bc;
            }
        }
    }
    *acc = t;
}

fn gram_reference_vector_major(x: &[f64], n: usize, k: usize) -> Vec<f64> {
    let mut h = vec![0.0f64; k * k];
    for i in 0..k {
        for j in 0..=i {
            let v = dot(x, n, k, i, j);
            h[i * k + j] = v;
            h[j * k + i] = v;
        }
    }
    h
}

/// The reference: `P P^T` of an input-major `[k, n]` matrix, every entry one `Iterator::sum` of
/// two contiguous rows (the original formulation; [`gram`] must match it bit for bit).
pub fn gram_reference(p: &[f64], k: usize, n: usize) -> Vec<f64> {
    assert_eq!(p.len(), k * n);
    let mut h = vec![0.0f64; k * k];
    for i in 0..k {
        let a = &p[i * n..(i + 1) * n];
        for j in 0..=i {
            let b = &p[j * n..(j + 1) * n];
            let v: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
            h[i * k + j] = v;
            h[j * k + i] = v;
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn transpose(p: &[f64], k: usize, n: usize) -> Vec<f64> {
        let mut x = vec![0.0; k * n];
        for i in 0..k {
            for t in 0..n {
                x[t * k + i] = p[i * n + t];
            }
        }
        x
    }

    /// Values with wide exponents and exact zeros of both signs: sums whose rounding depends on
    /// the order, so any reordering shows.
    fn awkward(len: usize, seed: u64) -> Vec<f64> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..len)
            .map(|_| match rng.random_range(0..10) {
                0 => 0.0,
                1 => -0.0,
                _ => {
                    let m: f64 = rng.random_range(-1.0..1.0);
                    m * 2f64.powi(rng.random_range(-30..30))
                }
            })
            .collect()
    }

    #[test]
    fn tiled_gram_is_bit_identical_to_the_reference() {
        for (k, n, seed) in [
            (1, 1, 1),
            (3, 7, 2),
            (31, 5, 3),
            (32, 1, 4),
            (33, 17, 5),
            (64, 64, 6),
            (67, 130, 7),
            (150, 9, 8),
            (257, 33, 9),
            (130, 600, 10),
        ] {
            let p = awkward(k * n, seed);
            let want = gram_reference(&p, k, n);
            let got = gram(&transpose(&p, k, n), n, k);
            let same = want
                .iter()
                .zip(&got)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "k={k} n={n}: tiled Gram differs from the reference");
        }
    }

    #[test]
    fn every_simd_level_matches_the_portable_tile() {
        let (ra, n) = (48, 300);
        let pa = awkward(ra * n, 11);
        let pb = awkward(TJ * n, 12);
        for ia in [0, 4, 44] {
            let start = [[-0.0f64; TJ]; TI];
            let (mut want, mut got) = (start, start);
            tile(&pa, ra, ia, &pb, &mut want);
            tile_dispatch(&pa, ra, ia, &pb, &mut got);
            for (w, g) in want.iter().flatten().zip(got.iter().flatten()) {
                assert_eq!(w.to_bits(), g.to_bits(), "tile at row {ia}");
            }
        }
    }
}
