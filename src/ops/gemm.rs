//! Float matrix multiply: the one f32 GEMM entry point of the float reference path.
//!
//! Wraps `matrixmultiply::sgemm` (blocked, FMA) and splits the output into independent row or
//! column panels for rayon. Every panel computes exactly the same sums as the unsplit product
//! would, so results do not depend on the thread count.

use rayon::prelude::*;

/// A read-only strided matrix view: element (i, j) is at `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> MatRef<'a> {
    /// A row-major `[rows, cols]` matrix.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        assert!(data.len() >= rows * cols);
        Self {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }
    /// The transpose of a row-major `[cols, rows]` matrix (e.g. a `[out, in]` weight seen as
    /// `[in, out]`).
    pub fn transposed(data: &'a [f32], rows: usize, cols: usize) -> Self {
        assert!(data.len() >= rows * cols);
        Self {
            data,
            rows,
            cols,
            rs: 1,
            cs: rows,
        }
    }
    fn max_index(&self) -> usize {
        if self.rows == 0 || self.cols == 0 {
            0
        } else {
            (self.rows - 1) * self.rs + (self.cols - 1) * self.cs
        }
    }
}

/// Work below this many multiply-adds runs on the calling thread.
const PAR_THRESHOLD: usize = 1 << 18;

/// `c[m, n] = a[m, k] @ b[k, n]` with `c` row-major, overwriting `c`.
pub fn matmul(a: MatRef, b: MatRef, c: &mut [f32]) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(a.cols, b.rows, "matmul inner dimensions");
    assert_eq!(c.len(), m * n, "matmul output size");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        c.fill(0.0);
        return;
    }
    assert!(a.max_index() < a.data.len() && b.max_index() < b.data.len());
    let threads = rayon::current_num_threads();
    if m * n * k < PAR_THRESHOLD || threads == 1 {
        sgemm_block(a, b, 0, m, 0, n, c, n);
        return;
    }
    if m >= n {
        // Row panels: each task owns whole output rows.
        let panel = m.div_ceil(threads * 4).max(16);
        c.par_chunks_mut(panel * n)
            .enumerate()
            .for_each(|(i, chunk)| {
                let r0 = i * panel;
                let rows = chunk.len() / n;
                sgemm_block(a, b, r0, rows, 0, n, chunk, n);
            });
    } else {
        // Column panels: split the output columns; each task writes a strided panel.
        let panel = n.div_ceil(threads * 4).max(16);
        let panels: Vec<(usize, usize)> = (0..n)
            .step_by(panel)
            .map(|c0| (c0, panel.min(n - c0)))
            .collect();
        let c_ptr = SendPtr(c.as_mut_ptr());
        panels.par_iter().for_each(|&(c0, cols)| {
            let c_base = c_ptr.get();
            // SAFETY: panels cover disjoint column ranges of `c`, so no two tasks write the
            // same element; `c` outlives the parallel loop.
            unsafe {
                matrixmultiply::sgemm(
                    m,
                    k,
                    cols,
                    1.0,
                    a.data.as_ptr(),
                    a.rs as isize,
                    a.cs as isize,
                    b.data.as_ptr().add(c0 * b.cs),
                    b.rs as isize,
                    b.cs as isize,
                    0.0,
                    c_base.add(c0),
                    n as isize,
                    1,
                );
            }
        });
    }
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);

impl SendPtr {
    /// Taking `self` by value makes closures capture the whole (Send) wrapper.
    fn get(self) -> *mut f32 {
        self.0
    }
}
// SAFETY: used only to hand disjoint output panels to rayon tasks (see `matmul`).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

#[allow(clippy::too_many_arguments)]
fn sgemm_block(
    a: MatRef,
    b: MatRef,
    r0: usize,
    rows: usize,
    c0: usize,
    cols: usize,
    c: &mut [f32],
    ldc: usize,
) {
    assert!(c.len() >= (rows.saturating_sub(1)) * ldc + cols);
    // SAFETY: bounds of a, b were checked by the caller (max_index), and c holds rows x cols
    // with row stride ldc as asserted above.
    unsafe {
        matrixmultiply::sgemm(
            rows,
            a.cols,
            cols,
            1.0,
            a.data.as_ptr().add(r0 * a.rs),
            a.rs as isize,
            a.cs as isize,
            b.data.as_ptr().add(c0 * b.cs),
            b.rs as isize,
            b.cs as isize,
            0.0,
            c.as_mut_ptr(),
            ldc as isize,
            1,
        );
    }
}

/// `y[t, out] = x[t, in] @ w[out, in]^T (+ bias)`: a PyTorch `nn.Linear` on row-major tokens.
pub fn linear(
    x: &[f32],
    tokens: usize,
    w: &[f32],
    out: usize,
    inp: usize,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    assert_eq!(x.len(), tokens * inp);
    assert_eq!(w.len(), out * inp);
    if tokens <= GEMV_MAX_TOKENS {
        return linear_rowwise(x, tokens, w, out, inp, bias);
    }
    let mut y = vec![0.0f32; tokens * out];
    matmul(
        MatRef::row_major(x, tokens, inp),
        MatRef::transposed(w, inp, out),
        &mut y,
    );
    add_bias(&mut y, out, bias);
    y
}

/// [`linear`] on the row-dot-product path whatever the row count: every output is one [`dot`]
/// of its input row with a weight row, so a row's result does not depend on which other rows
/// share the call (a batched decode step equals the sequences' one-row steps bit for bit, which
/// the blocked GEMM above 4 rows would not guarantee). The weight is still streamed once per
/// call, each weight row reused from cache for every input row.
pub fn linear_rowwise(
    x: &[f32],
    tokens: usize,
    w: &[f32],
    out: usize,
    inp: usize,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    assert_eq!(x.len(), tokens * inp);
    assert_eq!(w.len(), out * inp);
    let mut y = vec![0.0f32; tokens * out];
    gemv_rows(x, tokens, w, out, inp, &mut y);
    add_bias(&mut y, out, bias);
    y
}

fn add_bias(y: &mut [f32], out: usize, bias: Option<&[f32]>) {
    if let Some(b) = bias {
        assert_eq!(b.len(), out);
        for row in y.chunks_exact_mut(out) {
            for (v, bb) in row.iter_mut().zip(b) {
                *v += bb;
            }
        }
    }
}

/// Up to this many tokens (decode), `linear` streams the weight once with row dot products
/// instead of packing it for a GEMM: decode is bound by reading the weights.
const GEMV_MAX_TOKENS: usize = 4;

/// `y[t, o] = dot(x[t, :], w[o, :])` for few tokens, parallel over blocks of output rows. Each
/// dot product is computed the same way whatever the split, so results do not depend on the
/// thread count.
fn gemv_rows(x: &[f32], tokens: usize, w: &[f32], out: usize, inp: usize, y: &mut [f32]) {
    const ROWS_PER_TASK: usize = 64;
    let mut yt = vec![0.0f32; out * tokens]; // [out, tokens], transposed into y below
    let work = |(blk, chunk): (usize, &mut [f32])| {
        for (r, dst) in chunk.chunks_exact_mut(tokens).enumerate() {
            let o = blk * ROWS_PER_TASK + r;
            let wrow = &w[o * inp..(o + 1) * inp];
            for (t, d) in dst.iter_mut().enumerate() {
                *d = dot(&x[t * inp..(t + 1) * inp], wrow);
            }
        }
    };
    if out * inp < PAR_THRESHOLD {
        yt.chunks_mut(ROWS_PER_TASK * tokens)
            .enumerate()
            .for_each(work);
    } else {
        yt.par_chunks_mut(ROWS_PER_TASK * tokens)
            .enumerate()
            .for_each(work);
    }
    for o in 0..out {
        for t in 0..tokens {
            y[t * out + o] = yt[o * tokens + t];
        }
    }
}

/// Dot product with 16 independent partial sums, using FMA where the CPU has it (chosen at run
/// time; the result is the same for every call on a given machine).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the required CPU features were detected just above.
            return unsafe { dot_avx2_fma(a, b) };
        }
    }
    dot_body::<false>(a, b)
}

/// [`dot_body`]`::<true>` with its 16 partial sums held in two 8-lane registers: the same fused
/// multiply-add per lane in the same order and the same reduction, so the same bits, but 8
/// lanes per instruction (the compiler vectorized the generic body 2 lanes wide, which made
/// decode compute-bound instead of bound by reading the weights).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2_fma(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    const L: usize = 16;
    let split = a.len() / L * L;
    let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut i = 0;
    while i < split {
        // SAFETY: i + 16 <= split <= a.len() == b.len(); unaligned loads.
        unsafe {
            lo = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), lo);
            hi = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i + 8)),
                _mm256_loadu_ps(pb.add(i + 8)),
                hi,
            );
        }
        i += L;
    }
    let mut acc = [0.0f32; L];
    // SAFETY: `acc` holds 16 floats; unaligned stores.
    unsafe {
        _mm256_storeu_ps(acc.as_mut_ptr(), lo);
        _mm256_storeu_ps(acc.as_mut_ptr().add(8), hi);
    }
    let mut tail = 0.0f32;
    for (x, y) in a[split..].iter().zip(&b[split..]) {
        tail = x.mul_add(*y, tail);
    }
    reduce(acc) + tail
}

/// `FUSED` selects `mul_add`, which is only fast when compiled with FMA enabled (otherwise it is
/// a libm call), hence the two instantiations above.
#[inline(always)]
fn dot_body<const FUSED: bool>(a: &[f32], b: &[f32]) -> f32 {
    const L: usize = 16;
    let madd = |x: f32, y: f32, acc: f32| {
        if FUSED {
            x.mul_add(y, acc)
        } else {
            acc + x * y
        }
    };
    let mut acc = [0.0f32; L];
    let split = a.len() / L * L;
    for (ca, cb) in a[..split].chunks_exact(L).zip(b[..split].chunks_exact(L)) {
        for i in 0..L {
            acc[i] = madd(ca[i], cb[i], acc[i]);
        }
    }
    let mut tail = 0.0f32;
    for (x, y) in a[split..].iter().zip(&b[split..]) {
        tail = madd(*x, *y, tail);
    }
    reduce(acc) + tail
}

/// Pairwise reduction of the 16 lanes of [`dot`].
#[inline(always)]
fn reduce(mut acc: [f32; 16]) -> f32 {
    let mut width = acc.len();
    while width > 1 {
        width /= 2;
        for i in 0..width {
            acc[i] += acc[i + width];
        }
    }
    acc[0]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], m: usize, k: usize, b: &[f32], n: usize) -> Vec<f32> {
        let mut c = vec![0.0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                for p in 0..k {
                    c[i * n + j] += a[i * k + p] as f64 * b[p * n + j] as f64;
                }
            }
        }
        c.into_iter().map(|v| v as f32).collect()
    }

    #[test]
    fn matmul_matches_naive_in_both_split_directions() {
        for &(m, k, n) in &[(3, 5, 7), (300, 64, 40), (40, 64, 300), (1, 512, 1000)] {
            let a: Vec<f32> = (0..m * k)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
                .collect();
            let b: Vec<f32> = (0..k * n)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 48.0)
                .collect();
            let mut c = vec![0.0; m * n];
            matmul(
                MatRef::row_major(&a, m, k),
                MatRef::row_major(&b, k, n),
                &mut c,
            );
            let r = naive(&a, m, k, &b, n);
            for (x, y) in c.iter().zip(&r) {
                assert!(
                    (x - y).abs() <= 1e-4 * (1.0 + y.abs()),
                    "{m}x{k}x{n}: {x} vs {y}"
                );
            }
        }
    }

    #[test]
    fn linear_gemv_path_matches_gemm_path() {
        let (inp, out) = (300, 70);
        let w: Vec<f32> = (0..out * inp)
            .map(|i| ((i * 31 % 89) as f32 - 44.0) / 44.0)
            .collect();
        let x: Vec<f32> = (0..5 * inp)
            .map(|i| ((i * 17 % 83) as f32 - 41.0) / 41.0)
            .collect();
        let all = linear(&x, 5, &w, out, inp, None); // GEMM path
        for t in [1, 3] {
            let few = linear(&x[..t * inp], t, &w, out, inp, None); // GEMV path
            for (a, b) in few.iter().zip(&all[..t * out]) {
                assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
            }
        }
    }

    /// The 8-lane AVX2 dot product is the generic fused body, bit for bit, at every length
    /// (multiples of 16, tails) and with values that make the rounding order matter.
    #[test]
    fn avx2_dot_is_the_fused_body_bit_for_bit() {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            let mut z = 0x9E37_79B9_7F4A_7C15u64;
            let mut next = || {
                z = z
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((z >> 40) as f32 / (1u64 << 23) as f32 - 1.0) * 1e3f32.powi((z % 5) as i32 - 2)
            };
            for n in [0, 1, 7, 15, 16, 17, 31, 64, 100, 128, 333, 2048] {
                let a: Vec<f32> = (0..n).map(|_| next()).collect();
                let b: Vec<f32> = (0..n).map(|_| next()).collect();
                // SAFETY: the features were detected above.
                let fast = unsafe { dot_avx2_fma(&a, &b) };
                assert_eq!(
                    fast.to_bits(),
                    dot_body::<true>(&a, &b).to_bits(),
                    "n = {n}"
                );
            }
        }
    }

    /// Each row of the row-dot-product path is the same bits whatever rows share the call,
    /// above the 4-row GEMV limit too (batched decode steps rely on it).
    #[test]
    fn rowwise_linear_rows_do_not_depend_on_the_other_rows() {
        let (inp, out) = (300, 70);
        let w: Vec<f32> = (0..out * inp)
            .map(|i| ((i * 31 % 89) as f32 - 44.0) / 44.0)
            .collect();
        let b: Vec<f32> = (0..out).map(|i| i as f32 * 0.01 - 0.3).collect();
        let x: Vec<f32> = (0..9 * inp)
            .map(|i| ((i * 17 % 83) as f32 - 41.0) / 41.0)
            .collect();
        let all = linear_rowwise(&x, 9, &w, out, inp, Some(&b));
        for t in 0..9 {
            let one = linear(&x[t * inp..(t + 1) * inp], 1, &w, out, inp, Some(&b));
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&one), bits(&all[t * out..(t + 1) * out]), "row {t}");
        }
    }

    #[test]
    fn linear_uses_out_in_weights_and_bias() {
        // x = [1, 2], w = [[1, 0], [0, 1], [1, 1]], b = [0.5, 0, -1]
        let y = linear(
            &[1.0, 2.0],
            1,
            &[1.0, 0.0, 0.0, 1.0, 1.0, 1.0],
            3,
            2,
            Some(&[0.5, 0.0, -1.0]),
        );
        assert_eq!(y, vec![1.5, 2.0, 2.0]);
    }
}
