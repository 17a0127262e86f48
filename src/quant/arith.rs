//! Integer arithmetic of the quantized runtime: the one place for fixed-point multipliers,
//! rounding, saturation, accumulator bounds, int4 packing and integer square roots.
//!
//! Conventions (TFLite / gemmlowp style, see `../shared/research/peers.md` §3.1):
//! - a real value is `r = S * (q - Z)`; weights are symmetric (`Z = 0`);
//! - a real multiplier `M` (e.g. `S_in * S_w / S_out`) is stored as [`Multiplier`] `m * 2^(shift-31)`
//!   with `m` in `[2^30, 2^31)`, and applied to a 64-bit accumulator with one rounding;
//! - rounding is to nearest, ties away from zero, everywhere;
//! - accumulators are `i64`; [`check_reduction`] proves, for each reduction, that the worst case
//!   fits (the int32 accumulators of SIMD kernels block the reduction where this bound says so).
//!
//! No floating point here: this module is part of the integer runtime.
#![deny(clippy::float_arithmetic)]

use crate::error::{Error, Result};

/// Smallest value of a signed `bits`-wide integer.
pub const fn qmin(bits: u32) -> i64 {
    -(1i64 << (bits - 1))
}

/// Largest value of a signed `bits`-wide integer.
pub const fn qmax(bits: u32) -> i64 {
    (1i64 << (bits - 1)) - 1
}

/// Clamps to the signed `bits`-wide range.
#[inline]
pub fn saturate(x: i64, bits: u32) -> i32 {
    x.clamp(qmin(bits), qmax(bits)) as i32
}

/// `x / 2^shift` rounded to nearest, ties away from zero.
#[inline]
pub fn rounding_shift_right(x: i128, shift: u32) -> i128 {
    if shift == 0 {
        return x;
    }
    let half = 1i128 << (shift - 1);
    if x >= 0 {
        (x + half) >> shift
    } else {
        -((-x + half) >> shift)
    }
}

/// A real multiplier `m * 2^(shift - 31)`, `m` in `[2^30, 2^31)` (or `m = 0` for zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Multiplier {
    pub m: i32,
    pub shift: i32,
}

impl Multiplier {
    pub const ZERO: Multiplier = Multiplier { m: 0, shift: 0 };
    /// Exactly 1.0.
    pub const ONE: Multiplier = Multiplier {
        m: 1 << 30,
        shift: 1,
    };

    /// `round(x * m * 2^(shift - 31))`, saturated to `i64`. Exact: the product is formed in
    /// `i128` (|x| < 2^63, m < 2^31, so |x * m| < 2^94).
    #[inline]
    pub fn apply(self, x: i64) -> i64 {
        let right = 31 - self.shift;
        // Fast path, same result: |x| < 2^32 and m < 2^31 keep |x * m| < 2^63, and adding the
        // rounding half (< 2^62) to the magnitude still fits a u64.
        if (1..=63).contains(&right) && x.unsigned_abs() < 1 << 32 {
            let prod = x * self.m as i64;
            let mag = (prod.unsigned_abs() + (1u64 << (right - 1))) >> right;
            return if prod >= 0 { mag as i64 } else { -(mag as i64) };
        }
        let prod = x as i128 * self.m as i128;
        let y = if right >= 0 {
            rounding_shift_right(prod, right as u32)
        } else {
            // Left shift (multipliers >= 2^31 in value): saturate instead of wrapping.
            let left = (-right) as u32;
            if left >= 127 || prod.unsigned_abs() > (i128::MAX >> left) as u128 {
                if prod < 0 {
                    i128::MIN
                } else {
                    i128::MAX
                }
            } else {
                prod << left
            }
        };
        y.clamp(i64::MIN as i128, i64::MAX as i128) as i64
    }
}

/// Smallest multiplier shift [`Multiplier::apply`] handles (a right shift of 127 bits).
pub const MIN_SHIFT: i32 = -96;
/// Largest multiplier shift accepted (anything larger saturates every non-zero product anyway).
pub const MAX_SHIFT: i32 = 127;

impl Multiplier {
    /// Errors unless [`Multiplier::apply`] is defined for this multiplier: `m` in
    /// `[2^30, 2^31)` (or 0) and `shift` in [`MIN_SHIFT`]`..=`[`MAX_SHIFT`].
    pub fn check(self) -> Result<()> {
        if self.m != 0 && self.m < 1 << 30 {
            return Err(Error::input(format!(
                "mantissa {} outside [2^30, 2^31) (or 0)",
                self.m
            )));
        }
        if !(MIN_SHIFT..=MAX_SHIFT).contains(&self.shift) {
            return Err(Error::input(format!(
                "shift {} outside [{MIN_SHIFT}, {MAX_SHIFT}]",
                self.shift
            )));
        }
        Ok(())
    }
}

/// [`Multiplier::check`] on each of `ms`, naming the op, the vector and the index.
pub fn check_multipliers(op: &str, what: &str, ms: &[Multiplier]) -> Result<()> {
    for (i, m) in ms.iter().enumerate() {
        m.check()
            .map_err(|e| Error::input(format!("{op}: {what}[{i}]: {e}")))?;
    }
    Ok(())
}

/// `saturate(round(acc * mult) + zero_point)`: the requantization step of every integer op.
#[inline]
pub fn requantize(acc: i64, mult: Multiplier, zero_point: i32, bits: u32) -> i32 {
    saturate(mult.apply(acc).saturating_add(zero_point as i64), bits)
}

/// Fractional bits of values an op forms in output units before its final rounding (LayerNorm
/// biases, ViT position embeddings): with `2^-16` output steps the intermediate rounding adds at
/// most `2^-17` steps to the final half step.
pub const OUT_FRAC_BITS: u32 = 16;

/// `saturate(round(v / 2^frac) + zero_point)`: the final step of an op whose result `v` is in
/// output units with `frac` fractional bits (rounding to nearest, ties away from zero).
#[inline]
pub fn requantize_frac(v: i64, frac: u32, zero_point: i32, bits: u32) -> i32 {
    let r = rounding_shift_right(v as i128, frac) as i64;
    saturate(r.saturating_add(zero_point as i64), bits)
}

/// Proves a reduction of `k` products `a * w` (|a| <= `a_abs_max`, |w| <= `w_abs_max`, plus an
/// optional bias) cannot overflow an `i64` accumulator; errors otherwise, naming the op.
pub fn check_reduction(
    op: &str,
    k: usize,
    a_abs_max: i64,
    w_abs_max: i64,
    bias_abs_max: i64,
) -> Result<()> {
    let bound = (k as i128) * (a_abs_max as i128) * (w_abs_max as i128) + bias_abs_max as i128;
    if bound > i64::MAX as i128 {
        return Err(Error::input(format!(
            "{op}: a reduction over {k} terms of |a|<={a_abs_max} x |w|<={w_abs_max} could overflow a 64-bit accumulator"
        )));
    }
    Ok(())
}

/// The product of `dims`, or an error naming `what` when it overflows `usize` (sizes read from a
/// file are multiplied through this).
pub fn size_product(what: &str, dims: &[usize]) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| Error::input(format!("{what}: size {dims:?} overflows")))
}

/// How many terms an `i32` accumulator can take before it could overflow: the block length a
/// 32-bit SIMD kernel must flush at.
pub fn i32_block_len(a_abs_max: i64, w_abs_max: i64) -> usize {
    let per = (a_abs_max * w_abs_max).max(1);
    (i32::MAX as i64 / per) as usize
}

/// Packs signed 4-bit values (each in [-8, 7]) two per byte, element `2i` in the low nibble.
pub fn pack_int4(values: &[i8]) -> Vec<u8> {
    values
        .chunks(2)
        .map(|p| {
            let lo = (p[0] as u8) & 0x0f;
            let hi = p.get(1).map_or(0, |&v| (v as u8) & 0x0f);
            lo | (hi << 4)
        })
        .collect()
}

/// Element `i` of a [`pack_int4`] buffer, sign-extended.
#[inline]
pub fn unpack_int4(packed: &[u8], i: usize) -> i8 {
    let byte = packed[i / 2];
    let nib = if i.is_multiple_of(2) {
        byte & 0x0f
    } else {
        byte >> 4
    };
    ((nib << 4) as i8) >> 4
}

/// `floor(sqrt(x))` for `u64`, by Newton's method on integers.
pub fn isqrt(x: u64) -> u64 {
    if x < 2 {
        return x;
    }
    // Start above the root: 2^ceil(bits/2).
    let mut r = 1u64 << (64 - x.leading_zeros()).div_ceil(2);
    loop {
        let next = (r + x / r) / 2;
        if next >= r {
            return r;
        }
        r = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`Multiplier::apply`] without its fast path.
    fn apply_wide(m: Multiplier, x: i64) -> i64 {
        let prod = x as i128 * m.m as i128;
        let right = 31 - m.shift;
        if right < 0 {
            return m.apply(x); // left shifts never take the fast path
        }
        rounding_shift_right(prod, right as u32).clamp(i64::MIN as i128, i64::MAX as i128) as i64
    }

    #[test]
    fn multiplier_fast_path_equals_the_wide_product() {
        let mut s = 0x1234_5678_9abc_def0u64;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let edges = [
            0i64,
            1,
            -1,
            (1 << 32) - 1,
            -(1 << 32) + 1,
            1 << 32,
            -(1 << 32),
            i64::MAX,
            i64::MIN,
        ];
        for i in 0..200_000 {
            let m = Multiplier {
                m: ((1u64 << 30) + next() % (1 << 30)) as i32,
                shift: (next() % 100) as i32 - 70,
            };
            let x = if i < edges.len() * 100 {
                edges[i % edges.len()]
            } else {
                (next() as i64) >> (next() % 64)
            };
            assert_eq!(m.apply(x), apply_wide(m, x), "{m:?} x {x}");
        }
    }

    #[test]
    fn rounding_is_to_nearest_ties_away_from_zero() {
        assert_eq!(rounding_shift_right(5, 1), 3); // 2.5 -> 3
        assert_eq!(rounding_shift_right(-5, 1), -3); // -2.5 -> -3
        assert_eq!(rounding_shift_right(7, 2), 2); // 1.75 -> 2
        assert_eq!(rounding_shift_right(-6, 2), -2); // -1.5 -> -2
        assert_eq!(rounding_shift_right(-5, 2), -1); // -1.25 -> -1
    }

    #[test]
    fn multiplier_apply_is_exact_rounding() {
        // 0.75 = (3 * 2^29) * 2^(0 - 31)
        let m = Multiplier {
            m: 3 << 29,
            shift: 0,
        };
        assert_eq!(m.apply(4), 3);
        assert_eq!(m.apply(2), 2); // 1.5 -> 2
        assert_eq!(m.apply(-2), -2);
        assert_eq!(Multiplier::ONE.apply(-123_456_789_012), -123_456_789_012);
        // Large accumulators do not overflow: i64::MAX * ~1.0 saturates cleanly.
        assert_eq!(
            Multiplier {
                m: i32::MAX,
                shift: 1
            }
            .apply(i64::MAX),
            i64::MAX
        );
        // Left shifts (multipliers >= 2).
        assert_eq!(
            Multiplier {
                m: 1 << 30,
                shift: 3
            }
            .apply(5),
            20
        );
        assert_eq!(
            requantize(
                1000,
                Multiplier {
                    m: 1 << 30,
                    shift: 0
                },
                3,
                8
            ),
            127
        );
        assert_eq!(
            requantize(
                -1000,
                Multiplier {
                    m: 1 << 30,
                    shift: 0
                },
                3,
                8
            ),
            -128
        );
        assert_eq!(
            requantize(
                10,
                Multiplier {
                    m: 1 << 30,
                    shift: 0
                },
                3,
                8
            ),
            8
        );
    }

    #[test]
    fn requantize_frac_rounds_once_and_saturates() {
        // 2.5 steps (ties away from zero), -2.5, 1.25 with zero point 3.
        assert_eq!(requantize_frac(5 << 15, 16, 0, 16), 3);
        assert_eq!(requantize_frac(-(5 << 15), 16, 0, 16), -3);
        assert_eq!(requantize_frac(5 << 14, 16, 3, 8), 4);
        assert_eq!(requantize_frac(i64::MAX, 16, 0, 8), 127);
        assert_eq!(requantize_frac(i64::MIN, 16, 5, 16), -32768);
        assert_eq!(requantize_frac(-7, 0, -128, 8), -128);
    }

    #[test]
    fn large_multipliers_saturate_instead_of_wrapping() {
        let big = Multiplier {
            m: i32::MAX,
            shift: 60,
        };
        assert_eq!(big.apply(i64::MAX / 3), i64::MAX);
        assert_eq!(big.apply(-(1 << 40)), i64::MIN);
        assert_eq!(big.apply(0), 0);
    }

    #[test]
    fn accumulator_bounds() {
        // 16-bit activations x 8-bit weights: an int32 accumulator overflows after 2^16 terms of
        // worst-case products (32768 * 127 ~ 2^22), an i64 never does for any realistic width.
        assert_eq!(i32_block_len(32768, 127), 516);
        assert!(check_reduction("fc", 1 << 20, 32768, 127, 1 << 40).is_ok());
        assert!(check_reduction("fc", usize::MAX / 4, 32768, 32768, 0).is_err());
        // A worst-case reduction computed in i64 equals the exact i128 sum.
        let k = 4096;
        let acc: i64 = (0..k).map(|_| qmin(16) * qmin(8)).sum();
        assert_eq!(acc as i128, k as i128 * 32768 * 128);
        assert!(acc > i32::MAX as i64);
    }

    #[test]
    fn int4_round_trip_and_isqrt() {
        let v: Vec<i8> = vec![-8, 7, 0, -1, 3, -5, 1];
        let p = pack_int4(&v);
        assert_eq!(p.len(), 4);
        for (i, &x) in v.iter().enumerate() {
            assert_eq!(unpack_int4(&p, i), x);
        }
        for x in [
            0u64,
            1,
            2,
            3,
            4,
            15,
            16,
            17,
            1 << 40,
            (1 << 40) - 1,
            u64::MAX,
        ] {
            let r = isqrt(x);
            assert!(
                r as u128 * r as u128 <= x as u128 && (r as u128 + 1) * (r as u128 + 1) > x as u128,
                "{x}"
            );
        }
    }
}
