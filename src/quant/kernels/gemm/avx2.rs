//! AVX2 tiles of the integer GEMM: `vpmaddwd` + `vpaddd` on int16 pairs, 16 inputs a block.
//! (`vpmaddubsw` is not used: its int16 pair sums saturate, which would not be exact.)

use super::{ptrs, Job, KIND_I4, KIND_I8};
use std::arch::x86_64::*;

/// Sum of the 8 int32 lanes, widened first.
#[inline(always)]
unsafe fn hsum(v: __m256i) -> i64 {
    let lo = _mm256_cvtepi32_epi64(_mm256_castsi256_si128(v));
    let hi = _mm256_cvtepi32_epi64(_mm256_extracti128_si256::<1>(v));
    let mut s = [0i64; 4];
    _mm256_storeu_si256(s.as_mut_ptr() as *mut __m256i, _mm256_add_epi64(lo, hi));
    s.iter().fold(0i64, |a, &v| a.wrapping_add(v))
}

/// 16 weights as int16. Packed int4: 8 bytes, the low nibbles (even inputs) then the high
/// nibbles (odd inputs), sign-extended.
#[inline(always)]
unsafe fn load_w16<const KIND: u8>(p: *const u8) -> __m256i {
    match KIND {
        KIND_I4 => {
            let b = _mm_loadl_epi64(p as *const __m128i);
            let m = _mm_set1_epi8(0x0f);
            let lo = _mm_and_si128(b, m);
            let hi = _mm_and_si128(_mm_srli_epi16::<4>(b), m);
            let v = _mm_unpacklo_epi64(lo, hi);
            let e = _mm_set1_epi8(8);
            _mm256_cvtepi8_epi16(_mm_sub_epi8(_mm_xor_si128(v, e), e))
        }
        KIND_I8 => _mm256_cvtepi8_epi16(_mm_loadu_si128(p as *const __m128i)),
        _ => _mm256_loadu_si256(p as *const __m256i),
    }
}

const fn block_bytes<const KIND: u8>(block: usize) -> usize {
    match KIND {
        KIND_I4 => block / 2,
        KIND_I8 => block,
        _ => block * 2,
    }
}

/// `out[m * NR + r] += sum_k x[m][k] * w[r][k] * gm` over the job's blocks, int16 pairs.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn pairs<const KIND: u8, const MR: usize, const NR: usize>(
    job: &Job<'_, i16>,
    out: &mut [i64],
) {
    const BLOCK: usize = 16;
    let bb = block_bytes::<KIND>(BLOCK);
    let (xs, ws, tails) = ptrs::<_, MR, NR>(job);
    let mut acc = [[_mm256_setzero_si256(); NR]; MR];
    let mut since_flush = 0;
    // Group multipliers, broadcast once per group (not divided out per block).
    let mut gmv = [_mm256_setzero_si256(); NR];
    let mut group_end = job.blocks.0;
    for b in job.blocks.0..job.blocks.1 {
        if job.group_blocks > 0 && b == group_end {
            let g = b / job.group_blocks;
            for (r, v) in gmv.iter_mut().enumerate() {
                *v = _mm256_set1_epi16(*job.gm[r].add(g) as i16);
            }
            group_end = (g + 1) * job.group_blocks;
        }
        let tail = b == job.tail_block;
        let mut w = [_mm256_setzero_si256(); NR];
        for (r, wr) in w.iter_mut().enumerate() {
            // Prefetches never fault, so the address may lie past the matrix.
            _mm_prefetch::<_MM_HINT_T0>(ws[r].wrapping_add(b * bb + job.prefetch) as *const i8);
            let p = if tail { tails[r] } else { ws[r].add(b * bb) };
            *wr = load_w16::<KIND>(p);
            if job.group_blocks > 0 {
                *wr = _mm256_mullo_epi16(*wr, gmv[r]);
            }
        }
        for (m, accm) in acc.iter_mut().enumerate() {
            let xv = _mm256_loadu_si256(xs[m].add(b * BLOCK) as *const __m256i);
            for (a, wr) in accm.iter_mut().zip(&w) {
                *a = _mm256_add_epi32(*a, _mm256_madd_epi16(xv, *wr));
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
unsafe fn flush<const MR: usize, const NR: usize>(acc: &mut [[__m256i; NR]; MR], out: &mut [i64]) {
    for (m, accm) in acc.iter_mut().enumerate() {
        for (r, a) in accm.iter_mut().enumerate() {
            out[m * NR + r] = out[m * NR + r].wrapping_add(hsum(*a));
            *a = _mm256_setzero_si256();
        }
    }
}
