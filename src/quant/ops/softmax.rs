//! Integer softmax over rows, and the division-free integer reciprocal it (and the integer norms)
//! use.
//!
//! Per row (only the visible prefix; masked entries get probability 0):
//!
//! ```text
//! w_j = round((rowmax - x_j) * in_mult)          base-2 exponent, Q24, >= 0
//!       (in_mult = s_in * log2(e) * 2^24 folds the input scale and any attention scale)
//! e_j = 2^(-w_j)                                 Q30 (e = 2^30 at the row max), from
//!       2^(-frac) on a 513-entry Q30 table over one octave (linear interpolation) and a
//!       rounding right shift by the integer part: one rounding
//! S   = sum_j e_j                                i64 (<= n * 2^30: exact for n < 2^33)
//! p_j = round(e_j * out_one * reciprocal(S)) + zp_out
//! ```
//!
//! Range reduction by powers of two replaces TFLite's `exp` table on `[-10, 0]`: the argument
//! range is unbounded (an exponential below `2^-31` rounds to zero, which is exact at the
//! output's resolution) and the table error is the same everywhere. The reciprocal is exactly
//! rounded (Newton-Raphson plus an exact correction, no division), so it has one bit-exact result.
//!
//! Output formats: int16 probabilities with scale `1/32767`, zero point 0 (`out_one = 32767`:
//! probability 1 is `32767`), or TFLite's int8 format (scale `1/256`, zero point -128).
//!
//! Error (see the tests): `|p_q - (p / scale + zp)| <= 0.5 + 0.01` output steps against the exact
//! softmax of the dequantized inputs (w rounding 2^-25 in log2 units, table interpolation and
//! rounding <= 1.8e-7 relative, reciprocal 2^-31 relative).

use super::linear::check_act;
use super::lut::check_range;
use crate::error::{Error, Result};
use crate::ops::attention::Mask;
use crate::quant::arith::{requantize, rounding_shift_right, Multiplier};
use crate::quant::params::ActQuant;
use crate::quant::tensor::QTensor;
use serde::{Deserialize, Serialize};

/// Fractional bits of the base-2 exponent `w`.
pub const EXP_ARG_FRAC_BITS: u32 = 24;
/// log2 of the number of table intervals over one octave (512 intervals, 513 entries).
pub const EXP_TABLE_BITS: u32 = 9;
/// Fixed-point position of the exponentials: `exp(0) = 2^EXP_ONE_BITS`.
pub const EXP_ONE_BITS: u32 = 30;

/// Bits of the exponent's fraction below the table index (used for the interpolation).
const INTERP_BITS: u32 = EXP_ARG_FRAC_BITS - EXP_TABLE_BITS;

/// Integer softmax (see the module docs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QSoftmax {
    /// Maps `rowmax - x` (input integer units) to the base-2 exponent in Q24:
    /// `s_in * log2(e) * 2^24`, where `s_in` is the real value of one input unit (including any
    /// folded attention scale).
    pub in_mult: Multiplier,
    /// `2^(-j / 512)` in Q30 for `j = 0..=512` (values adjusted by half the midpoint
    /// interpolation error, TFLite style).
    #[serde(with = "crate::artifact::array")]
    pub exp2_table: Vec<i32>,
    /// Output quantization (int16 `1/32767, 0` or int8 `1/256, -128`).
    pub out: ActQuant,
    /// The output integer standing for probability 1 before the zero point: `1 / out.scale`.
    pub out_one: i32,
}

impl QSoftmax {
    /// Checks everything the kernels rely on: the input multiplier (a shift in `[-88, 40]` keeps
    /// the exponent arithmetic in `i128`), the output activation and `out_one` in `[1, 2^16]`, and
    /// the table: 513 entries of `2^(-j/512)` in Q30, within `[2^29, 2^30]` and exactly `2^30` at
    /// 0 (the row maximum).
    pub fn validate(&self) -> Result<()> {
        self.in_mult
            .check()
            .map_err(|e| Error::input(format!("QSoftmax: input multiplier: {e}")))?;
        if !(-88..=40).contains(&self.in_mult.shift) {
            return Err(Error::input(format!(
                "QSoftmax: input multiplier shift {} outside [-88, 40]",
                self.in_mult.shift
            )));
        }
        check_act("QSoftmax", "output", &self.out)?;
        if !(1..=1 << 16).contains(&self.out_one) {
            return Err(Error::input(format!(
                "QSoftmax: out_one {} outside [1, 2^16]",
                self.out_one
            )));
        }
        let t = &self.exp2_table;
        let n = (1usize << EXP_TABLE_BITS) + 1;
        if t.len() != n {
            return Err(Error::input(format!(
                "QSoftmax: exp2 table of {} entries, expected {n}",
                t.len()
            )));
        }
        let one = 1i64 << EXP_ONE_BITS;
        check_range("QSoftmax", "exp2_table", t, one / 2, one)?;
        if t[0] as i64 != one {
            return Err(Error::input(format!(
                "QSoftmax: exp2_table[0] = {} is not 2^30",
                t[0]
            )));
        }
        Ok(())
    }

    /// `2^(-w)` in Q30 for a Q24 exponent `w >= 0`.
    #[inline]
    pub fn exp2_neg(&self, w: i64) -> i64 {
        self.exp2_neg_q(w, EXP_ONE_BITS)
    }

    /// `2^(-w)` in Q`one_bits` (`one_bits <= 30`) for a Q24 exponent `w >= 0`: table
    /// interpolation and the shifts by the integer part and by `30 - one_bits` in one rounding.
    #[inline]
    pub fn exp2_neg_q(&self, w: i64, one_bits: u32) -> i64 {
        debug_assert!(w >= 0 && one_bits <= EXP_ONE_BITS);
        let k = w >> EXP_ARG_FRAC_BITS;
        // 2^30 * 2^-32 < 1/2 rounds to zero.
        if k > 32 {
            return 0;
        }
        let r = w & ((1 << EXP_ARG_FRAC_BITS) - 1);
        let idx = (r >> INTERP_BITS) as usize;
        let f = r & ((1 << INTERP_BITS) - 1);
        let t0 = self.exp2_table[idx] as i64;
        let t1 = self.exp2_table[idx + 1] as i64;
        let v = (t0 << INTERP_BITS) + (t1 - t0) * f;
        let shift = INTERP_BITS + k as u32 + (EXP_ONE_BITS - one_bits);
        rounding_shift_right(v as i128, shift) as i64
    }

    /// The unnormalised exponentials `e_j = exp(s_in (x_j - rowmax))` in Q`one_bits` of
    /// `x[..visible]` into `e[..visible]`; returns their sum (`e` at the row max is
    /// `2^one_bits`, so the sum is positive).
    pub fn exp_row<T: Copy + Into<i64>>(
        &self,
        x: &[T],
        visible: usize,
        e: &mut [i64],
        one_bits: u32,
    ) -> i64 {
        assert!(
            visible >= 1 && visible <= x.len() && visible <= e.len(),
            "softmax: {visible} visible of {}",
            x.len()
        );
        let live = &x[..visible];
        let max = live.iter().map(|&v| v.into()).max().expect("visible >= 1");
        let mut sum = 0i64;
        for (ej, &v) in e.iter_mut().zip(live) {
            let d = max - v.into();
            *ej = self.exp2_neg_q(self.in_mult.apply(d).max(0), one_bits);
            sum += *ej;
        }
        sum
    }

    /// Softmax of `x[..visible]` into `out[..visible]`; `out[visible..]` gets probability 0.
    /// `x` holds integer scores in the input's units (any zero point cancels).
    pub fn forward_row<T: Copy + Into<i64>>(&self, x: &[T], visible: usize, out: &mut [i16]) {
        assert_eq!(x.len(), out.len());
        let zp = self.out.zero_point;
        let mut e = vec![0i64; visible];
        let sum = self.exp_row(x, visible, &mut e, EXP_ONE_BITS);
        out[visible..].fill(zp as i16);
        let inv = reciprocal(sum as u64);
        for (o, &ej) in out.iter_mut().zip(&e) {
            *o = requantize(ej * self.out_one as i64, inv, zp, self.out.bits) as i16;
        }
    }

    /// Softmax over the last dimension of `x` (`[.., rows, n]`). With [`Mask::Causal`], row `i`
    /// (index along the second-to-last dimension) sees columns `0..=offset + i`.
    pub fn forward(&self, x: &QTensor, mask: Mask) -> QTensor {
        let n = *x.shape.last().expect("softmax of a scalar");
        let rows = if x.shape.len() >= 2 {
            x.shape[x.shape.len() - 2]
        } else {
            1
        };
        let mut out = vec![0i16; x.numel()];
        for (r, (xr, or)) in x
            .data
            .chunks_exact(n)
            .zip(out.chunks_exact_mut(n))
            .enumerate()
        {
            let i = r % rows;
            let visible = match mask {
                Mask::None => n,
                Mask::Causal { offset } => (offset + i + 1).min(n),
            };
            self.forward_row(xr, visible, or);
        }
        QTensor::new(&x.shape, out, self.out)
    }
}

/// `1 / x` as a [`Multiplier`] (`m * 2^(shift - 31)`), with `m = round(2^94 / y)` exactly,
/// `y = x * 2^(63 - floor(log2 x))` the normalised input (relative error <= 2^-31).
///
/// Division-free: Newton-Raphson on the normalised value (three steps from the classic
/// `48/17 - 32/17 z` estimate), then an exact correction of the last unit by multiplication, so
/// the result is the correctly rounded quotient and any implementation can reproduce it bit for
/// bit.
pub fn reciprocal(x: u64) -> Multiplier {
    assert!(x > 0, "reciprocal of zero");
    let n = 63 - x.leading_zeros() as i32; // x in [2^n, 2^(n + 1))
    let y = x << (63 - n); // [2^63, 2^64): z = y / 2^64 in [1/2, 1)
    let z = (y >> 32) as i128; // Q32
                               // 1/z in Q32: r0 = 48/17 - 32/17 z has relative error <= 1/17.
    let mut r: i128 = 12_126_836_753 - ((8_084_557_835 * z) >> 32);
    for _ in 0..3 {
        let e = (1i128 << 64) - z * r; // Q64 of 1 - z r
        r += (r * e) >> 64;
    }
    // r ~ 2^96 / y; the wanted mantissa is round(2^94 / y) in (2^30, 2^31].
    let y = y as i128;
    let mut m = r >> 2;
    let mut rem = (1i128 << 94) - m * y;
    while 2 * rem > y {
        m += 1;
        rem -= y;
    }
    while 2 * rem < -y {
        m -= 1;
        rem += y;
    }
    // 1/x = 2^(63 - n) / y = m * 2^(-31 - n).
    if m == 1 << 31 {
        Multiplier {
            m: 1 << 30,
            shift: -n + 1,
        }
    } else {
        Multiplier {
            m: m as i32,
            shift: -n,
        }
    }
}

#[cfg(test)]
#[allow(clippy::float_arithmetic)]
mod tests {
    use super::*;
    use crate::quant::ops::lut::test_rng::Lcg;
    use crate::quant::prepare::softmax::softmax;

    #[test]
    fn reciprocal_is_correctly_rounded() {
        let mut rng = Lcg::new(7);
        let mut xs: Vec<u64> = vec![1, 2, 3, 5, 7, 255, 256, 257, 32767, u64::MAX, u64::MAX - 1];
        xs.extend((0..64).map(|b| 1u64 << b));
        xs.extend((1..64).map(|b| (1u64 << b) - 1));
        xs.extend((1..63).map(|b| (1u64 << b) + 1));
        for _ in 0..200_000 {
            let b = rng.below(64) as u32;
            xs.push((rng.next_u64() >> b).max(1));
        }
        for &x in &xs {
            let r = reciprocal(x);
            assert!((1 << 30..=i32::MAX).contains(&r.m), "{x}: {r:?}");
            let n = 63 - x.leading_zeros();
            let y = (x as u128) << (63 - n);
            let want = ((1u128 << 95) / y).div_ceil(2); // round(2^94 / y), no ties
            let got = if r.shift == -(n as i32) {
                r.m as u128
            } else {
                2 * r.m as u128
            };
            assert_eq!(got, want, "{x}");
            let rel = (r.m as f64 * 2f64.powi(r.shift - 31)) * x as f64 - 1.0;
            assert!(rel.abs() <= 2f64.powi(-31) + 1e-15, "{x}: {rel}");
        }
    }

    /// Exact softmax (f64) of `scale * x[..visible]`.
    fn reference(x: &[f64], visible: usize) -> Vec<f64> {
        let m = x[..visible]
            .iter()
            .cloned()
            .fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = x[..visible].iter().map(|v| (v - m).exp()).collect();
        let s: f64 = e.iter().sum();
        let mut p: Vec<f64> = e.iter().map(|v| v / s).collect();
        p.resize(x.len(), 0.0);
        p
    }

    /// Largest `|p_q - clamp(p / scale + zp)|` in output steps over every row.
    fn worst_error(sm: &QSoftmax, x: &QTensor, mask: Mask) -> f64 {
        let y = sm.forward(x, mask);
        let n = *x.shape.last().unwrap();
        let rows = x.shape[x.shape.len() - 2];
        let (lo, hi) = (
            crate::quant::arith::qmin(sm.out.bits) as f64,
            crate::quant::arith::qmax(sm.out.bits) as f64,
        );
        let mut worst = 0.0f64;
        for (r, (xr, yr)) in x
            .data
            .chunks_exact(n)
            .zip(y.data.chunks_exact(n))
            .enumerate()
        {
            let visible = match mask {
                Mask::None => n,
                Mask::Causal { offset } => (offset + r % rows + 1).min(n),
            };
            let xf: Vec<f64> = xr
                .iter()
                .map(|&v| x.q.dequantize(v as i32) as f64)
                .collect();
            let p = reference(&xf, visible);
            for (&q, &pr) in yr.iter().zip(&p) {
                let want = (pr * sm.out_one as f64 + sm.out.zero_point as f64).clamp(lo, hi);
                worst = worst.max((q as f64 - want).abs());
            }
        }
        worst
    }

    fn random_scores(rng: &mut Lcg, shape: &[usize], q: ActQuant) -> QTensor {
        let (lo, hi) = (
            crate::quant::arith::qmin(q.bits),
            crate::quant::arith::qmax(q.bits),
        );
        let n: usize = shape.iter().product();
        let data = (0..n)
            .map(|_| rng.range_i64(lo, hi) as i16)
            .collect::<Vec<_>>();
        QTensor::new(shape, data, q)
    }

    #[test]
    fn softmax_within_one_step_a16_a8_masks_and_extremes() {
        let mut rng = Lcg::new(11);
        let mut report = Vec::new();
        // (input bits, input zero point, input scale, out bits): spans of 1e-3 .. 40 nats
        // across the int range.
        for &(bits, zp, scale, out_bits) in &[
            (16u32, 0i32, 3e-4f32, 16u32),
            (16, 0, 1.2e-3, 16),
            (16, 0, 2e-5, 16),
            (8, -20, 0.08, 16),
            (8, 5, 0.15, 8),
            (16, 0, 3e-4, 8),
        ] {
            let q = ActQuant {
                scale,
                zero_point: zp,
                bits,
            };
            let sm = softmax(scale as f64, out_bits).unwrap();
            for (shape, mask) in [
                (vec![7usize, 33usize], Mask::None),
                (vec![2, 5, 9], Mask::Causal { offset: 2 }),
                (vec![4, 300], Mask::Causal { offset: 0 }),
                (vec![1, 2000], Mask::None),
            ] {
                let x = random_scores(&mut rng, &shape, q);
                let w = worst_error(&sm, &x, mask);
                report.push((bits, out_bits, scale, shape.clone(), w));
                assert!(w <= 0.52, "bits {bits} scale {scale} {shape:?}: {w} steps");
            }
            // All-equal rows: exactly round(out_one / n).
            for n in [1usize, 2, 3, 7, 100, 4096] {
                let x = QTensor::new(&[1, n], vec![zp as i16 + 3; n], q);
                let y = sm.forward(&x, Mask::None);
                let want = ((sm.out_one as f64 / n as f64).round() as i32 + sm.out.zero_point)
                    .min(crate::quant::arith::qmax(out_bits) as i32);
                assert!(
                    y.data.iter().all(|&v| v as i32 == want),
                    "{n}: {:?}",
                    &y.data[..1]
                );
            }
            // Saturated extremes: one qmax among qmin, and the reverse.
            let (lo, hi) = (
                crate::quant::arith::qmin(bits) as i16,
                crate::quant::arith::qmax(bits) as i16,
            );
            let mut d = vec![lo; 64];
            d[17] = hi;
            let x = QTensor::new(&[1, 64], d, q);
            let w = worst_error(&sm, &x, Mask::None);
            assert!(w <= 0.52, "extreme: {w}");
            let mut d = vec![hi; 64];
            d[0] = lo;
            let x = QTensor::new(&[1, 64], d, q);
            assert!(worst_error(&sm, &x, Mask::None) <= 0.52);
        }
        for r in &report {
            println!(
                "softmax bits {} -> {} scale {} {:?}: max error {:.4} steps",
                r.0, r.1, r.2, r.3, r.4
            );
        }
    }

    #[test]
    fn causal_mask_zeroes_hidden_columns() {
        let sm = softmax(1e-3, 16).unwrap();
        let q = ActQuant {
            scale: 1e-3,
            zero_point: 0,
            bits: 16,
        };
        let x = QTensor::new(&[3, 4], (0..12).map(|i| i * 100).collect(), q);
        let y = sm.forward(&x, Mask::Causal { offset: 1 });
        // Row 0 sees 2 columns, row 1 three, row 2 all four.
        assert_eq!(&y.data[2..4], &[0, 0]);
        assert_eq!(y.data[7], 0);
        assert!(y.data[8..12].iter().all(|&v| v > 0));
        for row in y.data.chunks(4) {
            let s: i32 = row.iter().map(|&v| v as i32).sum();
            assert!((s - 32767).abs() <= 2, "{s}");
        }
    }

    #[test]
    fn wide_scores_from_an_i64_accumulator() {
        // Raw Q.K^T accumulators (int16 x int16 over d = 256) with the attention scale folded in.
        let mut rng = Lcg::new(3);
        let s_in = 3e-4f64 * 2e-4 / 16.0;
        let sm = softmax(s_in, 16).unwrap();
        let mut worst = 0.0f64;
        for _ in 0..50 {
            let x: Vec<i64> = (0..500)
                .map(|_| rng.range_i64(-(1 << 36), 1 << 36))
                .collect();
            let mut out = vec![0i16; 500];
            sm.forward_row(&x, 500, &mut out);
            let xf: Vec<f64> = x.iter().map(|&v| v as f64 * s_in).collect();
            let p = reference(&xf, 500);
            for (&o, &pr) in out.iter().zip(&p) {
                worst = worst.max((o as f64 - pr * 32767.0).abs());
            }
        }
        println!("softmax i64 scores: max error {worst:.4} steps");
        assert!(worst <= 0.52, "{worst}");
    }
}
