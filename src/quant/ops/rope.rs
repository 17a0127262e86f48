//! Integer rotary position embedding (rotate_half / NeoX style) on `[T, heads * head_dim]` token
//! rows at absolute positions `start..start + T`, mirroring [`crate::ops::rope::Rope::apply`].
//!
//! - **Angles as PyTorch computes them.** The float graph uses the f32 angle
//!   `fl32(fl32(pos) * inv_freq)`, whose rounding at large positions (half an ulp: 0.004 rad at
//!   position 128k) is far above one int16 step, so the integer path reproduces it exactly:
//!   `inv_freq` is stored as its f32 mantissa and exponent, the product of two 24-bit mantissas is
//!   formed exactly and rounded to 24 bits (round to nearest even, like the FPU), giving the angle
//!   `A * 2^ea` bit-identical to the f32 one for every position.
//! - **Reduction mod 2 pi in fixed point.** `A * 2^ea / (2 pi)` with a 100-bit `1/(2 pi)`
//!   (`A * INV < 2^122`), keeping the fraction of a turn in Q48 (error < 2^-48 turn). A turn
//!   makes the reduction a mask.
//! - **cos/sin** from a quarter-wave sine table of 1025 Q30 entries (`sin(j pi/2 / 1024)`,
//!   interior entries lowered by half their midpoint interpolation error) with linear
//!   interpolation: |error| <= 2.3e-7 (measured in the tests).
//! - **Rotation** `y1 = x1 cos - x2 sin`, `y2 = x2 cos + x1 sin` on centred integers in i64,
//!   requantized once with `s_x / s_y / 2^30`.
//!
//! For int16 activations the pre-rounding error is below 0.02 output steps at any position up to
//! 2^24 and beyond (the tests check up to 2^24 + 3 against the float path).

use super::linear::check_act;
use super::lut::check_range;
use crate::error::{Error, Result};
use crate::quant::arith::{requantize, Multiplier};
use crate::quant::params::ActQuant;
use crate::quant::tensor::QTensor;
use serde::{Deserialize, Serialize};

/// Fractional bits of an angle in turns.
pub const TURN_BITS: u32 = 48;
/// log2 of the sine table's intervals per quarter turn (1024 intervals, 1025 entries).
pub const SIN_TABLE_BITS: u32 = 10;
/// Fixed point of cos / sin: 1.0 = 2^30.
pub const TRIG_ONE_BITS: u32 = 30;

/// `floor(2^100 / (2 pi))`.
const INV_TWO_PI_Q100: u128 = 0x0002_8be6_0db9_3910_54a7_f09d_5f47;
const QUARTER_BITS: u32 = TURN_BITS - 2;
const INTERP_BITS: u32 = QUARTER_BITS - SIN_TABLE_BITS;

/// `p * 2^e` rounded to 24 significant bits, round to nearest even (the f32 rounding of an exact
/// product), as `(a, ea)` with `a < 2^24`. Zero stays `(0, 0)`.
pub fn round_to_f32(p: u128, e: i32) -> (u64, i32) {
    if p == 0 {
        return (0, 0);
    }
    let bits = 128 - p.leading_zeros();
    if bits <= 24 {
        return (p as u64, e);
    }
    let s = bits - 24;
    let mut a = p >> s;
    let rem = p & ((1u128 << s) - 1);
    let half = 1u128 << (s - 1);
    if rem > half || (rem == half && a & 1 == 1) {
        a += 1;
    }
    let mut ea = e + s as i32;
    if a == 1 << 24 {
        a >>= 1;
        ea += 1;
    }
    (a as u64, ea)
}

/// Integer RoPE (see the module docs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QRope {
    pub head_dim: usize,
    pub x: ActQuant,
    pub y: ActQuant,
    /// `s_x / s_y / 2^30`.
    pub mult: Multiplier,
    /// f32 `inv_freq[i] = inv_freq_m[i] * 2^inv_freq_e[i]` (`inv_freq_m` the 24-bit mantissa).
    #[serde(with = "crate::artifact::array")]
    pub inv_freq_m: Vec<u32>,
    #[serde(with = "crate::artifact::array")]
    pub inv_freq_e: Vec<i32>,
    /// `sin(j * (pi/2) / 1024)` in Q30, `j = 0..=1024`.
    #[serde(with = "crate::artifact::array")]
    pub sin_table: Vec<i32>,
}

impl QRope {
    /// Checks everything the kernels rely on: an even positive head size, the activations and
    /// the multiplier, `head_dim / 2` inverse frequencies as the mantissas (`[2^23, 2^24)`) and
    /// exponents (`[-149, 104]`) of positive normal f32 numbers, and a quarter-sine table of 1025
    /// Q30 entries in `[0, 2^30]`, rising by at most `2^22` per entry (which keeps the
    /// interpolation product inside `i64`).
    pub fn validate(&self) -> Result<()> {
        let d = self.head_dim;
        if d == 0 || !d.is_multiple_of(2) {
            return Err(Error::input(format!(
                "QRope: head size {d} must be even and positive"
            )));
        }
        check_act("QRope", "input", &self.x)?;
        check_act("QRope", "output", &self.y)?;
        self.mult
            .check()
            .map_err(|e| Error::input(format!("QRope: multiplier: {e}")))?;
        if self.inv_freq_m.len() != d / 2 || self.inv_freq_e.len() != d / 2 {
            return Err(Error::input(format!(
                "QRope: {} mantissas and {} exponents for head size {d}",
                self.inv_freq_m.len(),
                self.inv_freq_e.len()
            )));
        }
        if let Some((i, m)) = self
            .inv_freq_m
            .iter()
            .enumerate()
            .find(|(_, &m)| !(1 << 23..1 << 24).contains(&m))
        {
            return Err(Error::input(format!(
                "QRope: inv_freq_m[{i}] = {m} is not a 24-bit mantissa"
            )));
        }
        check_range("QRope", "inv_freq_e", &self.inv_freq_e, -149, 104)?;
        let t = &self.sin_table;
        let n = (1usize << SIN_TABLE_BITS) + 1;
        if t.len() != n {
            return Err(Error::input(format!(
                "QRope: sine table of {} entries, expected {n}",
                t.len()
            )));
        }
        check_range("QRope", "sin_table", t, 0, 1 << TRIG_ONE_BITS)?;
        if let Some(j) = t
            .windows(2)
            .position(|p| !(0..=1 << 22).contains(&(p[1] as i64 - p[0] as i64)))
        {
            return Err(Error::input(format!(
                "QRope: sin_table is not a quarter sine: entries {j} and {} differ by {}",
                j + 1,
                t[j + 1] as i64 - t[j] as i64
            )));
        }
        Ok(())
    }

    /// The f32 angle `fl32(fl32(pos) * inv_freq[i])` as `(a, ea)`: `a * 2^ea` exactly.
    pub fn angle_parts(&self, pos: usize, i: usize) -> (u64, i32) {
        let (pm, pe) = round_to_f32(pos as u128, 0);
        round_to_f32(
            pm as u128 * self.inv_freq_m[i] as u128,
            pe + self.inv_freq_e[i],
        )
    }

    /// The angle of `(pos, i)` in turns, Q48, reduced modulo one turn.
    pub fn angle_turns(&self, pos: usize, i: usize) -> u64 {
        let (a, ea) = self.angle_parts(pos, i);
        let p = a as u128 * INV_TWO_PI_Q100; // turns * 2^(100 - ea)
        let shift = 100 - TURN_BITS as i32 - ea;
        let t = if shift >= 128 {
            0
        } else if shift >= 0 {
            p >> shift
        } else {
            p << (-shift).min(127)
        };
        (t as u64) & ((1u64 << TURN_BITS) - 1)
    }

    /// `sin(2 pi r / 2^46)` for `r` in `[0, 2^46]` (a quarter turn), Q30.
    #[inline]
    fn quarter_sin(&self, r: u64) -> i64 {
        let idx = (r >> INTERP_BITS) as usize;
        if idx >= 1 << SIN_TABLE_BITS {
            return self.sin_table[1 << SIN_TABLE_BITS] as i64;
        }
        let f = (r & ((1 << INTERP_BITS) - 1)) as i64;
        let t0 = self.sin_table[idx] as i64;
        let t1 = self.sin_table[idx + 1] as i64;
        let d = crate::quant::arith::rounding_shift_right(((t1 - t0) * f) as i128, INTERP_BITS);
        t0 + d as i64
    }

    /// `sin(2 pi t / 2^48)` in Q30.
    pub fn sin_turns(&self, t: u64) -> i64 {
        let t = t & ((1u64 << TURN_BITS) - 1);
        let quadrant = t >> QUARTER_BITS;
        let r = t & ((1u64 << QUARTER_BITS) - 1);
        let quarter = 1u64 << QUARTER_BITS;
        match quadrant {
            0 => self.quarter_sin(r),
            1 => self.quarter_sin(quarter - r),
            2 => -self.quarter_sin(r),
            _ => -self.quarter_sin(quarter - r),
        }
    }

    /// `cos(2 pi t / 2^48)` in Q30.
    pub fn cos_turns(&self, t: u64) -> i64 {
        self.sin_turns(t.wrapping_add(1 << QUARTER_BITS))
    }

    /// Q30 `(cos, sin)` of the `head_dim / 2` angles at `pos`.
    pub fn cos_sin(&self, pos: usize) -> (Vec<i64>, Vec<i64>) {
        (0..self.head_dim / 2)
            .map(|i| {
                let t = self.angle_turns(pos, i);
                (self.cos_turns(t), self.sin_turns(t))
            })
            .unzip()
    }

    /// Rotates `x` (`[T, n_heads * head_dim]`, token `t` at position `start + t`) into the output
    /// quantization.
    pub fn forward(&self, x: &QTensor, n_heads: usize, start: usize) -> QTensor {
        debug_assert_eq!(x.q, self.x, "rope input quantization");
        let d = self.head_dim;
        let half = d / 2;
        let row = n_heads * d;
        assert!(
            row > 0 && x.numel().is_multiple_of(row),
            "rope: {} values are not rows of {n_heads} heads x {d}",
            x.numel()
        );
        let (zx, zy, bits) = (self.x.zero_point as i64, self.y.zero_point, self.y.bits);
        let mut out = vec![0i16; x.numel()];
        for (t, (xr, or)) in x
            .data
            .chunks_exact(row)
            .zip(out.chunks_exact_mut(row))
            .enumerate()
        {
            let (cos, sin) = self.cos_sin(start + t);
            for (xh, oh) in xr.chunks_exact(d).zip(or.chunks_exact_mut(d)) {
                for j in 0..half {
                    let a = xh[j] as i64 - zx;
                    let b = xh[j + half] as i64 - zx;
                    let y1 = a * cos[j] - b * sin[j];
                    let y2 = b * cos[j] + a * sin[j];
                    oh[j] = requantize(y1, self.mult, zy, bits) as i16;
                    oh[j + half] = requantize(y2, self.mult, zy, bits) as i16;
                }
            }
        }
        QTensor::new(&x.shape, out, self.y)
    }
}

#[cfg(test)]
#[allow(clippy::float_arithmetic)]
mod tests {
    use super::*;
    use crate::ops::rope::Rope;
    use crate::quant::arith::{qmax, qmin};
    use crate::quant::ops::lut::test_rng::Lcg;
    use crate::quant::prepare::rope::rope;

    const POSITIONS: [usize; 12] = [
        0,
        1,
        7,
        4095,
        32767,
        65_536,
        131_071,
        131_072,
        200_003,
        1 << 20,
        (1 << 24) + 1,
        (1 << 24) + 3,
    ];

    #[test]
    fn angles_are_the_f32_angles_and_trig_is_accurate() {
        let mut rng = Lcg::new(9);
        let q = ActQuant::from_range(-1.0, 1.0, 16, true);
        for &(d, theta) in &[(64usize, 1e6f64), (128, 1e4), (16, 5e5)] {
            let op = rope(d, theta, q, q).unwrap();
            let fl = Rope::new(d, theta).unwrap();
            let mut positions: Vec<usize> = POSITIONS.to_vec();
            positions.extend((0..300).map(|_| rng.below(1 << 17) as usize));
            positions.extend((0..50).map(|_| rng.below(1 << 26) as usize));
            let mut worst = 0.0f64;
            for &p in &positions {
                for (i, &f) in fl.inv_freq().iter().enumerate() {
                    let (a, ea) = op.angle_parts(p, i);
                    let angle = p as f32 * f;
                    assert_eq!(a as f64 * 2f64.powi(ea), angle as f64, "pos {p} i {i}");
                    let t = op.angle_turns(p, i);
                    let c = op.cos_turns(t) as f64 / (1u64 << 30) as f64;
                    let s = op.sin_turns(t) as f64 / (1u64 << 30) as f64;
                    let ad = angle as f64;
                    worst = worst.max((c - ad.cos()).abs()).max((s - ad.sin()).abs());
                }
            }
            println!("rope d={d} theta={theta}: max |cos/sin error| {worst:.3e}");
            assert!(worst < 2.5e-7, "{worst}");
        }
        // Exact values at the quadrant boundaries.
        let op = rope(8, 1e4, q, q).unwrap();
        for (t, c, s) in [
            (0u64, 1i64 << 30, 0i64),
            (1 << 46, 0, 1 << 30),
            (2 << 46, -(1 << 30), 0),
            (3 << 46, 0, -(1 << 30)),
        ] {
            assert_eq!((op.cos_turns(t), op.sin_turns(t)), (c, s), "{t}");
        }
    }

    #[test]
    fn rotation_within_one_step_of_the_float_path() {
        let mut rng = Lcg::new(13);
        let mut lines = Vec::new();
        for &(bits, d, heads, theta, amax) in &[
            (16u32, 64usize, 3usize, 1e6f64, 6.0f32),
            (16, 128, 2, 1e4, 30.0),
            (8, 64, 2, 1e6, 4.0),
        ] {
            let sym = bits == 16;
            let xq = ActQuant::from_range(-amax, amax * if sym { 1.0 } else { 0.7 }, bits, sym);
            let yq = ActQuant::from_range(-amax * 1.2, amax * 1.2, bits, sym);
            let op = rope(d, theta, xq, yq).unwrap();
            let fl = Rope::new(d, theta).unwrap();
            let t = 3;
            let mut worst = 0.0f64;
            for &start in &POSITIONS {
                let mut data: Vec<i16> = (0..t * heads * d)
                    .map(|_| rng.range_i64(qmin(bits), qmax(bits)) as i16)
                    .collect();
                data[0] = qmin(bits) as i16;
                data[d / 2] = qmax(bits) as i16;
                let x = QTensor::new(&[t, heads * d], data, xq);
                let y = op.forward(&x, heads, start);
                let mut want = x.dequantize().data().to_vec();
                fl.apply(&mut want, heads, start);
                let (lo, hi) = (qmin(bits) as f64, qmax(bits) as f64);
                for (&q, &w) in y.data.iter().zip(&want) {
                    let r = (w as f64 / yq.scale as f64 + yq.zero_point as f64).clamp(lo, hi);
                    worst = worst.max((q as f64 - r).abs());
                }
            }
            lines.push(format!(
                "rope A{bits} d={d} theta={theta}: max error {worst:.4} steps over positions up to 2^24+5"
            ));
            assert!(worst <= 0.52, "A{bits} d={d}: {worst}");
        }
        for l in lines {
            println!("{l}");
        }
    }

    #[test]
    fn position_zero_is_the_identity() {
        let q = ActQuant::from_range(-3.0, 3.0, 16, true);
        let op = rope(32, 1e6, q, q).unwrap();
        let x = QTensor::new(
            &[1, 64],
            (0..64).map(|i| (i * 1000 - 32000) as i16).collect(),
            q,
        );
        assert_eq!(op.forward(&x, 2, 0).data, x.data);
    }
}
