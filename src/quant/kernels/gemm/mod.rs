//! Integer GEMM / GEMV: `y[t, o] = requantize(sum_g gm[o, g] * sum_{i in g} (x[t, i] - zp) *
//! w[o, i] + bias[o])`, the arithmetic of [`linear_rows_ref`] (the specification), at SIMD
//! speed. Shared by linear layers, the tied output head and (through im2col) the convolutions.
//!
//! # Layouts: the storage layout is the kernel layout
//! Weights are read where they are stored ([`QMatrix`]: row-major int8 / int16, or int4 packed
//! two per byte, even input in the low nibble): no second copy of the model. The activations are
//! rearranged instead, once per call: into blocks of the kernel's width, zero padded, and for
//! int4 weights each block ordered even inputs first, odd inputs second, which is the order the
//! nibbles come out of a byte. The last partial block of each weight row is copied into a zero
//! padded buffer per task. What is computed once per matrix is [`RowSums`].
//!
//! # Arithmetic (exact, whatever the order)
//! - **Pairs** (A16, and grouped A8): raw activations `x` as int16 times int16 weights (widened
//!   from int4 / int8, and multiplied by the group multiplier in-register when a row has several
//!   groups: `|q * gm| <= 127 * 256 < 2^15`). The int32 lanes receive pair sums bounded by `2 *
//!   2^(bits_x - 1) * max|w * gm|`; they are widened to int64 every `flush` blocks, the largest
//!   count the bound allows. Then `acc = gscale * dot - zp * sum_i gm(i) w_i`.
//! - **Quads** (AVX-512 VNNI, A8, one group per row): `x + 128` as unsigned bytes times signed
//!   weight bytes; `acc = gm * (dot - (128 + zp) * sum_i w_i)`.
//!
//! Every intermediate is an exact integer (int64 arithmetic wraps, and the true accumulator is
//! within `i64` by `check_reduction`, so wrapping intermediates cancel), hence results equal the
//! reference bit for bit for any blocking and any number of threads.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;

use super::Level;
use crate::quant::arith::{qmax, requantize, Multiplier};
use crate::quant::ops::linear::{linear_rows_ref, PackedWeights, QMatrix};
use crate::quant::params::{ActQuant, GROUP_SCALE_BITS};
use rayon::prelude::*;
use std::sync::{Arc, OnceLock};

pub(crate) const KIND_I4: u8 = 4;
pub(crate) const KIND_I8: u8 = 8;
pub(crate) const KIND_I16: u8 = 16;

/// Per-row weight sums the zero-point corrections use: `wsum[o] = sum_i w[o, i]` and `wgsum[o] =
/// sum_i gm(o, i) * w[o, i]`. Computed once per matrix (at its first product) and kept with it.
#[derive(Debug, PartialEq, Eq)]
pub struct RowSums {
    pub wsum: Vec<i64>,
    pub wgsum: Vec<i64>,
}

impl RowSums {
    pub fn of(m: &QMatrix) -> Self {
        let gpr = m.groups_per_row();
        let (wsum, wgsum) = (0..m.out)
            .into_par_iter()
            .map_init(
                || vec![0i16; m.inp],
                |buf, o| {
                    m.row_into(o, buf);
                    let gm = &m.group_mult[o * gpr..(o + 1) * gpr];
                    let mut s = 0i64;
                    let mut sg = 0i64;
                    for (ws, &g) in buf.chunks(m.group).zip(gm) {
                        let inner: i64 = ws.iter().map(|&v| v as i64).sum();
                        s += inner;
                        sg += inner * g as i64;
                    }
                    (s, sg)
                },
            )
            .unzip();
        Self { wsum, wgsum }
    }
}

/// The lazily computed [`RowSums`] of a matrix. Not part of the matrix's identity: ignored by
/// equality and serialization, reset by nothing (the matrix is immutable once built).
#[derive(Clone, Default)]
pub struct RowSumsCache(OnceLock<Arc<RowSums>>);

impl RowSumsCache {
    pub fn get_or_compute(&self, m: &QMatrix) -> Arc<RowSums> {
        self.0.get_or_init(|| Arc::new(RowSums::of(m))).clone()
    }
}

impl PartialEq for RowSumsCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for RowSumsCache {}
impl std::fmt::Debug for RowSumsCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RowSumsCache")
    }
}

/// One tile's work: `MR` activation rows, `NR` weight rows, a range of blocks.
pub(crate) struct Job<'a, X> {
    /// Start of each prepared activation row (`kpad` entries).
    pub x: &'a [*const X],
    /// Start of each weight row in the matrix's storage.
    pub w: &'a [*const u8],
    /// Zero-padded copy of each row's last partial block (used for block `tail_block`).
    pub tail: &'a [*const u8],
    /// Each row's group multipliers (read when `group_blocks > 0`).
    pub gm: &'a [*const u16],
    pub tail_block: usize,
    pub blocks: (usize, usize),
    /// Blocks per group when the multipliers are applied in-register, else 0.
    pub group_blocks: usize,
    /// Blocks the int32 lanes can take before they must be widened.
    pub flush: usize,
    /// Bytes from a weight being read to the one to prefetch (the same offset in the next tile's
    /// rows: a decode step streams the weights from DRAM once, in short rows).
    pub prefetch: usize,
}

/// The job's pointers as fixed-size arrays (registers in the tile loop, no bounds checks).
#[inline(always)]
pub(crate) fn ptrs<X, const MR: usize, const NR: usize>(
    job: &Job<'_, X>,
) -> ([*const X; MR], [*const u8; NR], [*const u8; NR]) {
    let mut x = [std::ptr::null(); MR];
    x.copy_from_slice(&job.x[..MR]);
    let mut w = [std::ptr::null(); NR];
    w.copy_from_slice(&job.w[..NR]);
    let mut t = [std::ptr::null(); NR];
    t.copy_from_slice(&job.tail[..NR]);
    (x, w, t)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Arith {
    Pairs,
    Quads,
}

/// How one product runs: level, arithmetic, block width, tiles.
#[derive(Clone, Copy, Debug)]
struct Plan {
    level: Level,
    arith: Arith,
    kind: u8,
    /// Inputs per block.
    block: usize,
    /// Activation rows per tile.
    mr: usize,
    group_blocks: usize,
    flush: usize,
}

impl Plan {
    /// The plan at `level`, or at the highest lower level that can run this product; `None`
    /// means the reference (e.g. int16 weights with several groups per row).
    fn choose(level: Level, w: &QMatrix, x: &ActQuant) -> Option<Plan> {
        match level {
            Level::Scalar => None,
            Level::Avx2 => Self::at(Level::Avx2, w, x),
            Level::Avx512 => Self::at(Level::Avx512, w, x).or_else(|| Self::at(Level::Avx2, w, x)),
        }
    }

    fn at(level: Level, w: &QMatrix, x: &ActQuant) -> Option<Plan> {
        if !cfg!(target_arch = "x86_64") {
            return None;
        }
        let kind = match w.data {
            PackedWeights::I4(_) => KIND_I4,
            PackedWeights::I8(_) => KIND_I8,
            PackedWeights::I16(_) => KIND_I16,
        };
        let single = w.groups_per_row() == 1;
        let wmax = qmax(w.bits) as i128;
        let lane_cap = i32::MAX as i128;
        if level == Level::Avx512 && x.bits <= 8 && single && kind != KIND_I16 {
            // Four products of (x + 128) <= 255 and |w| per lane and block.
            let flush = lane_cap / (4 * 255 * wmax);
            return Some(Plan {
                level,
                arith: Arith::Quads,
                kind,
                block: 64,
                mr: 4,
                group_blocks: 0,
                flush: flush as usize,
            });
        }
        let (block, mr) = match level {
            #[cfg(target_arch = "x86_64")]
            Level::Avx512 => (avx512::pairs_block(kind), 4),
            _ => (16, 2),
        };
        // Products a lane takes per block (int4 blocks on AVX-512 are two 32-input halves).
        let dps_per_block = if level == Level::Avx512 {
            block / 32
        } else {
            1
        } as i128;
        let group_blocks = if single {
            0
        } else if kind != KIND_I16 && w.group.is_multiple_of(block) {
            w.group / block
        } else {
            return None;
        };
        let gmax = if single { 1 } else { 1i128 << GROUP_SCALE_BITS };
        // Two products of raw |x| <= 2^(bits-1) and |w * gm| per lane and block.
        let flush = lane_cap / (dps_per_block * 2 * (1i128 << (x.bits - 1)) * wmax * gmax);
        if flush < 1 {
            return None;
        }
        Some(Plan {
            level,
            arith: Arith::Pairs,
            kind,
            block,
            mr,
            group_blocks,
            flush: flush.min(1 << 20) as usize,
        })
    }

    fn block_bytes(&self) -> usize {
        match self.kind {
            KIND_I4 => self.block / 2,
            KIND_I8 => self.block,
            _ => self.block * 2,
        }
    }
}

/// Activation rows rearranged for a plan: `[t, kpad]`, each block of an int4 product ordered
/// even inputs first, odd second; padding is 0 (its weights are 0 too).
fn prepare<X: Copy + Default>(
    p: &Plan,
    x: &[i16],
    t: usize,
    inp: usize,
    f: impl Fn(i16) -> X,
) -> Vec<X> {
    let kpad = inp.div_ceil(p.block) * p.block;
    let mut out = vec![X::default(); t * kpad];
    let half = p.block / 2;
    for (src, dst) in x.chunks_exact(inp).zip(out.chunks_exact_mut(kpad)) {
        if p.kind == KIND_I4 {
            for (i, &v) in src.iter().enumerate() {
                let (b, j) = (i / p.block, i % p.block);
                dst[b * p.block + (j % 2) * half + j / 2] = f(v);
            }
        } else {
            for (d, &v) in dst.iter_mut().zip(src) {
                *d = f(v);
            }
        }
    }
    out
}

/// [`linear_rows_ref`] at `level` (see the module docs).
pub fn linear(
    level: Level,
    weight: &QMatrix,
    bias: Option<&[i64]>,
    mult: &[Multiplier],
    q: (ActQuant, ActQuant),
    x: &[i16],
    t: usize,
) -> Vec<i16> {
    let Some(plan) = Plan::choose(level, weight, &q.0) else {
        return linear_rows_ref(weight, bias, mult, q, x, t);
    };
    assert_eq!(x.len(), t * weight.inp, "linear: input length");
    let sums = weight.row_sums();
    let zp = q.0.zero_point as i64;
    let gpr = weight.groups_per_row();
    // acc = gscale * dot - corr * wgsum[o]
    let (corr, gscale_from_row) = match plan.arith {
        Arith::Pairs => (zp, gpr == 1),
        Arith::Quads => (128 + zp, true),
    };
    let epilogue = |o: usize, dot: i64| -> i16 {
        let gscale = if gscale_from_row {
            weight.group_mult[o] as i64
        } else {
            1
        };
        let acc = gscale
            .wrapping_mul(dot)
            .wrapping_sub(corr.wrapping_mul(sums.wgsum[o]))
            .wrapping_add(bias.map_or(0, |b| b[o]));
        requantize(acc, mult[o], q.1.zero_point, q.1.bits) as i16
    };
    let dots = match plan.arith {
        Arith::Pairs => {
            let xp = prepare(&plan, x, t, weight.inp, |v| v);
            run(&plan, weight, &xp, t, pairs_tile)
        }
        Arith::Quads => {
            // x is within [-128, 127] (at most 8 bits), so x + 128 is a byte.
            let xp = prepare(&plan, x, t, weight.inp, |v| (v as i32 + 128) as u8);
            run(&plan, weight, &xp, t, quads_tile)
        }
    };
    let out = weight.out;
    let mut y = vec![0i16; t * out];
    for (c, chunk) in dots.iter().enumerate() {
        let r0 = c * ROWS_PER_TASK;
        let rows = chunk.len() / t.max(1);
        for ti in 0..t {
            for (r, &d) in chunk[ti * rows..(ti + 1) * rows].iter().enumerate() {
                y[ti * out + r0 + r] = epilogue(r0 + r, d);
            }
        }
    }
    y
}

/// Weight rows per parallel task.
const ROWS_PER_TASK: usize = 64;
/// Activation rows per cache block.
const TOKENS_PER_BLOCK: usize = 64;
/// Inputs per cache block.
const INPUTS_PER_BLOCK: usize = 4096;
/// Weight rows per tile.
const NR: usize = 4;
/// The most activation rows per tile of any level.
const MAX_MR: usize = 4;

/// The raw dot products, one `[t, rows]` buffer per task of [`ROWS_PER_TASK`] rows.
fn run<X: Sync>(
    p: &Plan,
    w: &QMatrix,
    xp: &[X],
    t: usize,
    tile: unsafe fn(&Plan, usize, usize, &Job<'_, X>, &mut [i64]),
) -> Vec<Vec<i64>> {
    let (inp, out) = (w.inp, w.out);
    let kpad = inp.div_ceil(p.block) * p.block;
    let nblocks = kpad / p.block;
    let bb = p.block_bytes();
    let (data, row_bytes): (*const u8, usize) = match &w.data {
        PackedWeights::I4(v) => (v.as_ptr(), inp.div_ceil(2)),
        PackedWeights::I8(v) => (v.as_ptr() as *const u8, inp),
        PackedWeights::I16(v) => (v.as_ptr() as *const u8, inp * 2),
    };
    let data = data as usize; // shared across tasks; read only
    let gpr = w.groups_per_row();
    let has_tail = inp % p.block != 0;
    let tail_block = if has_tail { nblocks - 1 } else { usize::MAX };
    let kcb = (INPUTS_PER_BLOCK / p.block).max(1);
    (0..out.div_ceil(ROWS_PER_TASK))
        .into_par_iter()
        .map(|c| {
            let r0 = c * ROWS_PER_TASK;
            let rows = ROWS_PER_TASK.min(out - r0);
            let data = data as *const u8;
            // Zero-padded last partial block of each row.
            let mut tails = vec![0u8; if has_tail { rows * bb } else { 0 }];
            if has_tail {
                let start = tail_block * bb;
                for r in 0..rows {
                    let n = row_bytes - start;
                    // SAFETY: row r0 + r exists; bytes [start, row_bytes) are inside it.
                    let src = unsafe {
                        std::slice::from_raw_parts(data.add((r0 + r) * row_bytes + start), n)
                    };
                    tails[r * bb..r * bb + n].copy_from_slice(src);
                }
            }
            let mut acc = vec![0i64; t * rows];
            let mut tile_out = [0i64; MAX_MR * NR];
            for t0 in (0..t).step_by(TOKENS_PER_BLOCK) {
                let t1 = (t0 + TOKENS_PER_BLOCK).min(t);
                for k0 in (0..nblocks).step_by(kcb) {
                    let k1 = (k0 + kcb).min(nblocks);
                    let mut r = 0;
                    while r < rows {
                        let nr = if rows - r >= NR { NR } else { 1 };
                        let mut wptr = [std::ptr::null(); NR];
                        let mut tptr = [std::ptr::null(); NR];
                        let mut gptr = [std::ptr::null(); NR];
                        for i in 0..nr {
                            let row = r0 + r + i;
                            // SAFETY: `row < out`, so its first byte is inside the storage.
                            wptr[i] = unsafe { data.add(row * row_bytes) };
                            if has_tail {
                                tptr[i] = tails[(r + i) * bb..].as_ptr();
                            }
                            gptr[i] = w.group_mult[row * gpr..].as_ptr();
                        }
                        let mut m = t0;
                        while m < t1 {
                            let mr = if t1 - m >= p.mr { p.mr } else { 1 };
                            let mut xptr = [std::ptr::null(); MAX_MR];
                            for (i, xr) in xptr.iter_mut().enumerate().take(mr) {
                                *xr = xp[(m + i) * kpad..].as_ptr();
                            }
                            let job = Job {
                                x: &xptr[..mr],
                                w: &wptr[..nr],
                                tail: &tptr[..nr],
                                gm: &gptr[..nr],
                                tail_block,
                                blocks: (k0, k1),
                                group_blocks: p.group_blocks,
                                flush: p.flush,
                                prefetch: 2 * NR * row_bytes,
                            };
                            let o = &mut tile_out[..mr * nr];
                            o.fill(0);
                            // SAFETY: the plan's level is supported (`Plan::choose` is only
                            // called with supported levels), and every pointer covers blocks
                            // [k0, k1): activation rows have kpad entries, weight rows hold every
                            // full block, the tail buffer the partial one.
                            unsafe { tile(p, mr, nr, &job, o) };
                            for mm in 0..mr {
                                for rr in 0..nr {
                                    let a = &mut acc[(m + mm) * rows + r + rr];
                                    *a = a.wrapping_add(o[mm * nr + rr]);
                                }
                            }
                            m += mr;
                        }
                        r += nr;
                    }
                }
            }
            acc
        })
        .collect()
}

macro_rules! tiles {
    ($md:ident :: $f:ident, $j:expr, $out:expr, $k:expr, $mr:literal, $m:expr, $n:expr) => {
        match ($k, $m, $n) {
            (KIND_I4, $mr, NR) => $md::$f::<KIND_I4, $mr, NR>($j, $out),
            (KIND_I4, 1, NR) => $md::$f::<KIND_I4, 1, NR>($j, $out),
            (KIND_I4, $mr, 1) => $md::$f::<KIND_I4, $mr, 1>($j, $out),
            (KIND_I4, _, _) => $md::$f::<KIND_I4, 1, 1>($j, $out),
            (KIND_I8, $mr, NR) => $md::$f::<KIND_I8, $mr, NR>($j, $out),
            (KIND_I8, 1, NR) => $md::$f::<KIND_I8, 1, NR>($j, $out),
            (KIND_I8, $mr, 1) => $md::$f::<KIND_I8, $mr, 1>($j, $out),
            (KIND_I8, _, _) => $md::$f::<KIND_I8, 1, 1>($j, $out),
            (_, $mr, NR) => $md::$f::<KIND_I16, $mr, NR>($j, $out),
            (_, 1, NR) => $md::$f::<KIND_I16, 1, NR>($j, $out),
            (_, $mr, 1) => $md::$f::<KIND_I16, $mr, 1>($j, $out),
            (_, _, _) => $md::$f::<KIND_I16, 1, 1>($j, $out),
        }
    };
}

/// Calls the pairs tile for the plan's level, weight kind and tile shape.
///
/// # Safety
/// The CPU supports `p.level`, and `job`'s pointers are valid for its blocks (see [`run`]).
#[allow(unused_variables)]
unsafe fn pairs_tile(p: &Plan, mr: usize, nr: usize, job: &Job<'_, i16>, out: &mut [i64]) {
    #[cfg(target_arch = "x86_64")]
    match p.level {
        Level::Avx512 => tiles!(avx512::pairs, job, out, p.kind, 4, mr, nr),
        Level::Avx2 => tiles!(avx2::pairs, job, out, p.kind, 2, mr, nr),
        Level::Scalar => unreachable!("no plan is made at the scalar level"),
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("no SIMD plans off x86-64");
}

/// Calls the quads tile (AVX-512 VNNI only) for the weight kind and tile shape.
///
/// # Safety
/// As [`pairs_tile`].
#[allow(unused_variables)]
unsafe fn quads_tile(p: &Plan, mr: usize, nr: usize, job: &Job<'_, u8>, out: &mut [i64]) {
    #[cfg(target_arch = "x86_64")]
    tiles!(avx512::quads, job, out, p.kind, 4, mr, nr);
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("no SIMD plans off x86-64");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::arith::qmin;
    use crate::quant::ops::linear::testutil::Lcg;
    use crate::quant::ops::linear::QLinear;

    /// A random valid linear op: weights of `wbits` with `group`, activations of `xbits` with a
    /// zero point (0 when `sym`), multipliers scaled so that outputs span the output range (plus
    /// some that saturate), optional bias. `extreme` puts every value at its limit.
    #[allow(clippy::too_many_arguments)]
    fn case(
        rng: &mut Lcg,
        out: usize,
        inp: usize,
        wbits: u32,
        group: usize,
        xbits: u32,
        sym: bool,
        extreme: bool,
    ) -> Option<(QLinear, Vec<i16>, usize)> {
        let qm = qmax(wbits);
        let q: Vec<i16> = (0..out * inp)
            .map(|_| {
                if extreme {
                    if rng.next_u32().is_multiple_of(2) {
                        qm as i16
                    } else {
                        -qm as i16
                    }
                } else {
                    rng.int(-qm, qm) as i16
                }
            })
            .collect();
        let gpr = inp.div_ceil(group);
        let unit = 1i64 << GROUP_SCALE_BITS;
        let gm: Vec<u16> = (0..out * gpr)
            .map(|_| if extreme { unit } else { rng.int(0, unit) } as u16)
            .collect();
        let weight = QMatrix::new(out, inp, wbits, group, &q, gm).ok()?;
        let zp = if sym {
            0
        } else {
            rng.int(qmin(xbits), qmax(xbits)) as i32
        };
        let x = ActQuant {
            scale: 0.1,
            zero_point: zp,
            bits: xbits,
        };
        let y = ActQuant {
            scale: 0.1,
            zero_point: rng.int(-3, 3) as i32,
            bits: if rng.next_u32().is_multiple_of(2) {
                8
            } else {
                16
            },
        };
        // Typical |acc| ~ sqrt(inp) * |x| * |w| * gm; aim the multiplier at the output range.
        let typical = (inp as f64).sqrt() * (1u64 << (xbits - 1)) as f64 * qm as f64 * 128.0;
        let base = y.bits as i32 - 1 - typical.log2().round() as i32 + 1;
        let mult: Vec<Multiplier> = (0..out)
            .map(|_| Multiplier {
                m: rng.int(1 << 30, (1i64 << 31) - 1) as i32,
                shift: base + rng.int(-3, 3) as i32,
            })
            .collect();
        let bias = rng.next_u32().is_multiple_of(2).then(|| {
            (0..out)
                .map(|_| rng.int(-(1 << 40), 1 << 40))
                .collect::<Vec<i64>>()
        });
        let lin = QLinear::new(weight, bias, mult, x, y).ok()?;
        let t = [1usize, 2, 3, 4, 5, 9, 70][rng.int(0, 6) as usize];
        let xs: Vec<i16> = (0..t * inp)
            .map(|_| {
                if extreme {
                    if rng.next_u32().is_multiple_of(2) {
                        qmin(xbits) as i16
                    } else {
                        qmax(xbits) as i16
                    }
                } else {
                    rng.int(qmin(xbits), qmax(xbits)) as i16
                }
            })
            .collect();
        Some((lin, xs, t))
    }

    fn check(lin: &QLinear, x: &[i16], t: usize, what: &str) {
        let want = linear_rows_ref(
            &lin.weight,
            lin.bias.as_deref(),
            &lin.mult,
            (lin.x, lin.y),
            x,
            t,
        );
        for level in crate::quant::kernels::available() {
            let got = linear(
                level,
                &lin.weight,
                lin.bias.as_deref(),
                &lin.mult,
                (lin.x, lin.y),
                x,
                t,
            );
            assert!(
                got == want,
                "{what} at {level:?} differs from the reference"
            );
        }
    }

    #[test]
    fn every_level_equals_the_reference_on_random_shapes() {
        let mut rng = Lcg::new(15);
        let inps = [1usize, 7, 31, 32, 33, 64, 100, 129, 256, 1000, 2061];
        let mut ran = 0;
        for i in 0..400 {
            let inp = inps[rng.int(0, inps.len() as i64 - 1) as usize];
            let out = [1usize, 3, 4, 5, 67, 130][rng.int(0, 5) as usize];
            let wbits = [2u32, 4, 3, 5, 8, 12, 16][rng.int(0, 6) as usize];
            let group = match rng.int(0, 4) {
                0 | 1 => inp,
                2 => 32,
                3 => 64,
                _ => 48,
            }
            .min(inp);
            let xbits = [16u32, 8, 4][rng.int(0, 2) as usize];
            let sym = rng.next_u32().is_multiple_of(3);
            let extreme = i % 7 == 0;
            if let Some((lin, x, t)) = case(&mut rng, out, inp, wbits, group, xbits, sym, extreme) {
                let what = format!(
                    "case {i}: [{out}, {inp}] w{wbits} group {group} a{xbits} zp {} t {t}",
                    lin.x.zero_point
                );
                check(&lin, &x, t, &what);
                ran += 1;
            }
        }
        assert!(ran > 300, "only {ran} valid cases");
    }

    #[test]
    fn largest_accumulations_the_bounds_allow_are_exact() {
        // Long rows at the limits: int32 lanes must be widened before they overflow.
        let mut rng = Lcg::new(16);
        for (wbits, group, xbits, inp) in [
            (8, 8192, 16, 8192),
            (16, 4096, 16, 4096),
            (4, 32, 16, 4096),
            (8, 64, 16, 4096),
            (8, 8192, 8, 8192),
            (4, 4160, 8, 4160),
        ] {
            let (lin, x, t) = case(&mut rng, 9, inp, wbits, group, xbits, false, true)
                .expect("valid extreme case");
            check(
                &lin,
                &x,
                t,
                &format!("extreme w{wbits} g{group} a{xbits} k{inp}"),
            );
        }
    }

    #[test]
    fn plans_cover_the_schemes() {
        let lin = |wbits, group, xbits| {
            let mut rng = Lcg::new(1);
            case(&mut rng, 8, 256, wbits, group, xbits, xbits > 8, false)
                .unwrap()
                .0
        };
        if !Level::Avx512.supported() {
            return;
        }
        let p =
            |l: &QLinear| Plan::choose(Level::Avx512, &l.weight, &l.x).map(|p| (p.level, p.arith));
        let q = Some((Level::Avx512, Arith::Quads));
        let w = Some((Level::Avx512, Arith::Pairs));
        assert_eq!(p(&lin(8, 256, 16)), w, "w8a16");
        assert_eq!(p(&lin(4, 64, 16)), w, "w4a16 grouped");
        assert_eq!(p(&lin(8, 256, 8)), q, "w8a8");
        assert_eq!(p(&lin(4, 256, 8)), q, "w4a8 per channel");
        assert_eq!(p(&lin(4, 64, 8)), w, "w4a8 grouped");
        assert_eq!(
            p(&lin(4, 32, 16)),
            Some((Level::Avx2, Arith::Pairs)),
            "int4 groups of 32: AVX2's 16-input blocks"
        );
        assert_eq!(p(&lin(16, 256, 16)), w, "w16a16");
        assert_eq!(p(&lin(16, 64, 16)), None, "w16a16 grouped: reference");
    }
}
