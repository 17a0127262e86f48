//! AVX-512 (F/BW/VL + VNNI) tiles of the integer GEMM: `vpdpwssd` on int16 pairs (32 inputs a
//! block) and `vpdpbusd` on unsigned x signed byte quads (64 inputs a block). See `mod.rs` for the
//! layouts and the exactness argument.

use super::{ptrs, Job, KIND_I4, KIND_I8};
use std::arch::x86_64::*;

/// `acc + sum of int16 pair products` (`vpdpwssd`), in assembly: LLVM otherwise splits it into
/// `vpmaddwd` + `vpaddd` (two instructions for one) when it judges the accumulator chain long.
#[inline]
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn dpwssd(acc: __m512i, x: __m512i, w: __m512i) -> __m512i {
    let mut a = acc;
    std::arch::asm!(
        "vpdpwssd {a}, {x}, {w}",
        a = inout(zmm_reg) a,
        x = in(zmm_reg) x,
        w = in(zmm_reg) w,
        options(pure, nomem, nostack, preserves_flags),
    );
    a
}

/// `acc + sum of unsigned x signed byte quad products` (`vpdpbusd`), in assembly for the same
/// reason as [`dpwssd`].
#[inline]
#[target_feature(enable = "avx512f,avx512vnni")]
unsafe fn dpbusd(acc: __m512i, x: __m512i, w: __m512i) -> __m512i {
    let mut a = acc;
    std::arch::asm!(
        "vpdpbusd {a}, {x}, {w}",
        a = inout(zmm_reg) a,
        x = in(zmm_reg) x,
        w = in(zmm_reg) w,
        options(pure, nomem, nostack, preserves_flags),
    );
    a
}

/// Sum of the 16 int32 lanes, widened first (the lanes may sum past `i32`).
#[inline(always)]
unsafe fn hsum(v: __m512i) -> i64 {
    let lo = _mm512_cvtepi32_epi64(_mm512_castsi512_si256(v));
    let hi = _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64::<1>(v));
    _mm512_reduce_add_epi64(_mm512_add_epi64(lo, hi))
}

/// One pairs block of weights as int16: `(first, second)` 32 inputs each. Int8 and int16 blocks
/// hold 32 inputs (`second` unused). Packed int4 blocks hold 64 inputs in 32 bytes: the bytes
/// widened to 16 bits, the low nibbles (even inputs) then the high nibbles (odd inputs),
/// sign-extended; the activations are laid out to match.
#[inline(always)]
unsafe fn load_pairs<const KIND: u8>(p: *const u8) -> (__m512i, __m512i) {
    match KIND {
        KIND_I4 => {
            let b = _mm512_cvtepu8_epi16(_mm256_loadu_si256(p as *const __m256i));
            let m = _mm512_set1_epi16(0x0f);
            let e = _mm512_set1_epi16(8);
            let lo = _mm512_and_si512(b, m);
            let hi = _mm512_srli_epi16::<4>(b);
            (
                _mm512_sub_epi16(_mm512_xor_si512(lo, e), e),
                _mm512_sub_epi16(_mm512_xor_si512(hi, e), e),
            )
        }
        KIND_I8 => (
            _mm512_cvtepi8_epi16(_mm256_loadu_si256(p as *const __m256i)),
            _mm512_setzero_si512(),
        ),
        _ => (
            _mm512_loadu_si512(p as *const __m512i),
            _mm512_setzero_si512(),
        ),
    }
}

/// Inputs per pairs block: 64 for packed int4 (one 32-byte load), 32 otherwise.
pub(super) const fn pairs_block(kind: u8) -> usize {
    if kind == KIND_I4 {
        64
    } else {
        32
    }
}

/// 64 weights as int8 (int8 or packed int4: 32 bytes, even inputs then odd inputs).
#[inline(always)]
unsafe fn load_w8<const KIND: u8>(p: *const u8) -> __m512i {
    match KIND {
        KIND_I4 => {
            let b = _mm256_loadu_si256(p as *const __m256i);
            let m = _mm256_set1_epi8(0x0f);
            let lo = _mm256_and_si256(b, m);
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(b), m);
            let z = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
            let e = _mm512_set1_epi8(8);
            _mm512_sub_epi8(_mm512_xor_si512(z, e), e)
        }
        _ => _mm512_loadu_si512(p as *const __m512i),
    }
}

/// Weight bytes of one block of `block` inputs.
const fn block_bytes<const KIND: u8>(block: usize) -> usize {
    match KIND {
        KIND_I4 => block / 2,
        KIND_I8 => block,
        _ => block * 2,
    }
}

/// `out[m * NR + r] += sum_k x[m][k] * w[r][k] * gm` over the job's blocks, int16 pairs.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn pairs<const KIND: u8, const MR: usize, const NR: usize>(
    job: &Job<'_, i16>,
    out: &mut [i64],
) {
    let block = pairs_block(KIND);
    let two = KIND == KIND_I4;
    let bb = block_bytes::<KIND>(block);
    let (xs, ws, tails) = ptrs::<_, MR, NR>(job);
    let mut acc = [[_mm512_setzero_si512(); NR]; MR];
    let mut since_flush = 0;
    // Group multipliers, broadcast once per group (not divided out per block).
    let mut gmv = [_mm512_setzero_si512(); NR];
    let mut group_end = job.blocks.0;
    for b in job.blocks.0..job.blocks.1 {
        if job.group_blocks > 0 && b == group_end {
            let g = b / job.group_blocks;
            for (r, v) in gmv.iter_mut().enumerate() {
                *v = _mm512_set1_epi16(*job.gm[r].add(g) as i16);
            }
            group_end = (g + 1) * job.group_blocks;
        }
        let tail = b == job.tail_block;
        let mut w = [(_mm512_setzero_si512(), _mm512_setzero_si512()); NR];
        for (r, wr) in w.iter_mut().enumerate() {
            // Prefetches never fault, so the address may lie past the matrix.
            _mm_prefetch::<_MM_HINT_T0>(ws[r].wrapping_add(b * bb + job.prefetch) as *const i8);
            let p = if tail { tails[r] } else { ws[r].add(b * bb) };
            *wr = load_pairs::<KIND>(p);
            if job.group_blocks > 0 {
                wr.0 = _mm512_mullo_epi16(wr.0, gmv[r]);
                if two {
                    wr.1 = _mm512_mullo_epi16(wr.1, gmv[r]);
                }
            }
        }
        for (m, accm) in acc.iter_mut().enumerate() {
            let xp = xs[m].add(b * block);
            let x0 = _mm512_loadu_si512(xp as *const __m512i);
            for (a, wr) in accm.iter_mut().zip(&w) {
                *a = dpwssd(*a, x0, wr.0);
            }
            if two {
                let x1 = _mm512_loadu_si512(xp.add(32) as *const __m512i);
                for (a, wr) in accm.iter_mut().zip(&w) {
                    *a = dpwssd(*a, x1, wr.1);
                }
            }
        }
        since_flush += 1;
        if since_flush == job.flush {
            flush(&mut acc, out);
            since_flush = 0;
        }
    }
    flush(&mut acc, out);
}

/// `out[m * NR + r] += sum_k xu[m][k] * w[r][k]` over the job's blocks, unsigned x signed bytes.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
pub(super) unsafe fn quads<const KIND: u8, const MR: usize, const NR: usize>(
    job: &Job<'_, u8>,
    out: &mut [i64],
) {
    const BLOCK: usize = 64;
    let bb = block_bytes::<KIND>(BLOCK);
    let (xs, ws, tails) = ptrs::<_, MR, NR>(job);
    let mut acc = [[_mm512_setzero_si512(); NR]; MR];
    let mut since_flush = 0;
    for b in job.blocks.0..job.blocks.1 {
        let tail = b == job.tail_block;
        let mut w = [_mm512_setzero_si512(); NR];
        for (r, wr) in w.iter_mut().enumerate() {
            // Prefetches never fault, so the address may lie past the matrix.
            _mm_prefetch::<_MM_HINT_T0>(ws[r].wrapping_add(b * bb + job.prefetch) as *const i8);
            let p = if tail { tails[r] } else { ws[r].add(b * bb) };
            *wr = load_w8::<KIND>(p);
        }
        for (m, accm) in acc.iter_mut().enumerate() {
            let xv = _mm512_loadu_si512(xs[m].add(b * BLOCK) as *const __m512i);
            for (a, wr) in accm.iter_mut().zip(&w) {
                *a = dpbusd(*a, xv, *wr);
            }
        }
        since_flush += 1;
        if since_flush == job.flush {
            flush(&mut acc, out);
            since_flush = 0;
        }
    }
    flush(&mut acc, out);
}

#[inline(always)]
unsafe fn flush<const MR: usize, const NR: usize>(acc: &mut [[__m512i; NR]; MR], out: &mut [i64]) {
    for (m, accm) in acc.iter_mut().enumerate() {
        for (r, a) in accm.iter_mut().enumerate() {
            out[m * NR + r] = out[m * NR + r].wrapping_add(hsum(*a));
            *a = _mm512_setzero_si512();
        }
    }
}
