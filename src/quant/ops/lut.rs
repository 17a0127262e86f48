//! Elementwise functions (GELU, SiLU, sigmoid, ...) through integer lookup tables.
//!
//! Two kinds of table, both indexed by `u = q - qmin(bits_x)`:
//! - **direct** (`seg_bits == 0`, the 8-bit case: 256 entries): `y = table[u]`, already the
//!   output integer (zero point included, saturated);
//! - **interpolated** (the 16-bit case, TFLite style): `table[i]` is `f` at the input integer
//!   `qmin + i * 2^seg_bits` in the output's integer domain (`f(x) / s_y + zp_y`) with
//!   `frac_bits = 30 - bits_y` extra fractional bits (`i = 0..=2^bits_x / 2^seg_bits`: 513
//!   entries for `seg_bits = 7`; entries clamped to `+-2^30`, twice the output range), and
//!
//! ```text
//! i = u >> seg_bits,  r = u & (2^seg_bits - 1)
//! y = saturate(round((table[i] * 2^seg_bits + (table[i+1] - table[i]) * r) / 2^(seg_bits + frac_bits)))
//! ```
//!
//!   one rounding. The conversion (`quant::prepare::lut`) measures the worst error over *every*
//!   input integer and refines the table (halving `seg_bits`) until it is within 3/4 of an output
//!   step of the exact function (1/2 of it is the unavoidable final rounding).

use super::linear::check_act;
use crate::error::{Error, Result};
use crate::quant::arith::{qmax, qmin, rounding_shift_right, saturate};
use crate::quant::params::ActQuant;
use crate::quant::tensor::QTensor;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// An elementwise function as an integer table (see the module docs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QLut {
    /// Input quantization.
    pub x: ActQuant,
    /// Output quantization.
    pub y: ActQuant,
    /// log2 of the input integers per interpolation interval; 0 for a direct table.
    pub seg_bits: u32,
    /// Fractional bits of the interpolated table's entries, `30 - bits_y` (0 for a direct table).
    pub frac_bits: u32,
    /// Direct: `2^bits_x` output integers. Interpolated: `2^(bits_x - seg_bits) + 1` values.
    #[serde(with = "crate::artifact::array")]
    pub table: Vec<i32>,
}

/// Elements per parallel task of a lookup.
const LUT_CHUNK: usize = 1 << 14;

impl QLut {
    /// Checks everything [`Self::eval`] relies on: the activations, the interval and fraction
    /// bits, the table length for the input width, and (direct tables) every entry an output
    /// integer.
    pub fn validate(&self) -> Result<()> {
        check_act("QLut", "input", &self.x)?;
        check_act("QLut", "output", &self.y)?;
        let (seg_bits, frac_bits) = (self.seg_bits, self.frac_bits);
        if seg_bits >= self.x.bits {
            return Err(Error::input(format!(
                "QLut: {seg_bits} interval bits for a {}-bit input",
                self.x.bits
            )));
        }
        if (seg_bits == 0 && frac_bits != 0) || frac_bits > 32 {
            return Err(Error::input(format!(
                "QLut: {frac_bits} fraction bits (0 for a direct table, at most 32)"
            )));
        }
        let n = if seg_bits == 0 {
            1usize << self.x.bits
        } else {
            (1usize << (self.x.bits - seg_bits)) + 1
        };
        if self.table.len() != n {
            return Err(Error::input(format!(
                "QLut: table of {} entries, a {}-bit input with {seg_bits} interval bits needs {n}",
                self.table.len(),
                self.x.bits
            )));
        }
        if seg_bits == 0 {
            // A direct table holds output integers.
            check_range(
                "QLut",
                "table",
                &self.table,
                qmin(self.y.bits),
                qmax(self.y.bits),
            )?;
        }
        Ok(())
    }

    /// The output integer for one input integer.
    #[inline]
    pub fn eval(&self, q: i32) -> i32 {
        let u = (q as i64 - qmin(self.x.bits)) as usize;
        if self.seg_bits == 0 {
            return self.table[u];
        }
        let i = u >> self.seg_bits;
        let r = (u & ((1 << self.seg_bits) - 1)) as i64;
        let t0 = self.table[i] as i64;
        let t1 = self.table[i + 1] as i64;
        let v = (t0 << self.seg_bits) + (t1 - t0) * r;
        let y = rounding_shift_right(v as i128, self.seg_bits + self.frac_bits) as i64;
        saturate(y, self.y.bits)
    }

    /// Elementwise over a slice of input integers.
    pub fn apply(&self, xs: &[i16], out: &mut [i16]) {
        assert_eq!(xs.len(), out.len());
        out.par_chunks_mut(LUT_CHUNK)
            .zip(xs.par_chunks(LUT_CHUNK))
            .for_each(|(o, x)| {
                for (o, &v) in o.iter_mut().zip(x) {
                    *o = self.eval(v as i32) as i16;
                }
            });
    }

    /// Elementwise in place (the values change quantization from `self.x` to `self.y`).
    pub fn apply_inplace(&self, xs: &mut [i16]) {
        xs.par_chunks_mut(LUT_CHUNK).for_each(|c| {
            for v in c.iter_mut() {
                *v = self.eval(*v as i32) as i16;
            }
        });
    }

    pub fn forward(&self, x: &QTensor) -> QTensor {
        debug_assert_eq!(x.q, self.x, "lut input quantization");
        let mut out = vec![0i16; x.numel()];
        self.apply(&x.data, &mut out);
        QTensor::new(&x.shape, out, self.y)
    }

    /// Entries of the table.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

/// Errors unless every entry of `table` is in `[lo, hi]`, naming the op, the table and the entry.
pub fn check_range(op: &str, what: &str, table: &[i32], lo: i64, hi: i64) -> Result<()> {
    match table
        .iter()
        .enumerate()
        .find(|(_, &v)| (v as i64) < lo || (v as i64) > hi)
    {
        Some((i, v)) => Err(Error::input(format!(
            "{op}: {what}[{i}] = {v} outside [{lo}, {hi}]"
        ))),
        None => Ok(()),
    }
}

/// A small seeded generator for the tests of the integer ops (no dependencies).
#[cfg(test)]
#[allow(clippy::float_arithmetic)]
pub(crate) mod test_rng {
    /// 64-bit LCG with a xorshift-multiply output mix.
    pub struct Lcg(u64);

    impl Lcg {
        pub fn new(seed: u64) -> Self {
            let mut l = Lcg(seed ^ 0x9e37_79b9_7f4a_7c15);
            l.next_u64();
            l
        }

        pub fn next_u64(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let mut z = self.0;
            z ^= z >> 33;
            z = z.wrapping_mul(0xff51_afd7_ed55_8ccd);
            z ^ (z >> 33)
        }

        /// Uniform in `0..n`.
        pub fn below(&mut self, n: u64) -> u64 {
            self.next_u64() % n
        }

        /// Uniform in `lo..=hi`.
        pub fn range_i64(&mut self, lo: i64, hi: i64) -> i64 {
            lo + (self.next_u64() % ((hi - lo) as u64 + 1)) as i64
        }

        /// Uniform in `[0, 1)`.
        pub fn uniform(&mut self) -> f64 {
            (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
        }

        /// Standard normal (Box-Muller).
        pub fn normal(&mut self) -> f64 {
            let u1 = self.uniform().max(1e-300);
            let u2 = self.uniform();
            (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
        }
    }
}

#[cfg(test)]
#[allow(clippy::float_arithmetic)]
mod tests {
    use super::test_rng::Lcg;
    use super::*;
    use crate::ops::activation::{gelu_erf, gelu_tanh, silu};
    use crate::quant::arith::qmax;
    use crate::quant::prepare::lut::{lut, lut_with_segments, max_error_steps, LutFn};

    /// Worst `|y_q - clamp(f(x) / s_y + zp)|` over all inputs, `f` the crate's float function on
    /// the dequantized input.
    fn worst_vs_float(t: &QLut, f: fn(f32) -> f32) -> f64 {
        let (lo, hi) = (qmin(t.y.bits) as f64, qmax(t.y.bits) as f64);
        (qmin(t.x.bits)..=qmax(t.x.bits))
            .map(|q| {
                let x = t.x.dequantize(q as i32);
                let want = (f(x) as f64 / t.y.scale as f64 + t.y.zero_point as f64).clamp(lo, hi);
                (t.eval(q as i32) as f64 - want).abs()
            })
            .fold(0.0, f64::max)
    }

    #[test]
    fn gelu_silu_within_one_step_a16_and_a8() {
        type Case = (LutFn, fn(f32) -> f32, &'static str);
        let fns: [Case; 3] = [
            (LutFn::GeluTanh, gelu_tanh, "gelu_tanh"),
            (LutFn::GeluErf, gelu_erf, "gelu_erf"),
            (LutFn::Silu, silu, "silu"),
        ];
        for (f, ff, name) in fns {
            for &(xr, yr, bits) in &[
                ((-4.0f32, 4.0f32), (-0.2f32, 4.0f32), 16u32),
                ((-10.0, 10.0), (-0.3, 10.0), 16),
                ((-30.0, 60.0), (-0.3, 60.0), 16),
                ((-8.0, 3.0), (-1.0, 1.0), 16), // output saturates
                ((-5.0, 5.0), (-0.3, 5.0), 8),
                ((-2.0, 12.0), (-0.3, 12.0), 8),
            ] {
                let sym = bits == 16;
                let x = ActQuant::from_range(xr.0, xr.1, bits, sym);
                let y = ActQuant::from_range(yr.0, yr.1, bits, sym);
                let t = lut(f, x, y).unwrap();
                let exact = max_error_steps(&t, f);
                let vs_float = worst_vs_float(&t, ff);
                println!(
                    "{name} A{bits} x[{}, {}] -> y[{}, {}]: {} entries, max error {exact:.4} steps (exact fn), {vs_float:.4} (crate f32 fn)",
                    xr.0, xr.1, yr.0, yr.1, t.len()
                );
                assert!(exact <= 0.75, "{name} {bits}: {exact}");
                assert!(vs_float <= 1.0, "{name} {bits}: {vs_float}");
                if bits == 8 {
                    assert_eq!(t.len(), 256);
                    assert!(exact <= 0.5 + 1e-9);
                }
                // Saturation: the extremes of the input range.
                let lo = t.eval(qmin(bits) as i32);
                let hi = t.eval(qmax(bits) as i32);
                assert!(lo >= qmin(bits) as i32 && hi <= qmax(bits) as i32);
            }
        }
    }

    #[test]
    fn the_tflite_513_entry_table_and_its_error_bound() {
        // The 513-entry table alone (no refinement): error = final rounding + interpolation,
        // the latter <= h^2/16 max|f''| / s_y with the midpoint bias (h = 128 s_x).
        for &(amax, want_max) in &[(4.0f32, 0.6), (8.0, 0.75)] {
            let x = ActQuant::from_range(-amax, amax, 16, true);
            let y = ActQuant::from_range(-amax, amax, 16, true);
            let t = lut_with_segments(LutFn::GeluTanh, x, y, 7).unwrap();
            assert_eq!(t.len(), 513);
            let e = max_error_steps(&t, LutFn::GeluTanh);
            let h = 128.0 * x.scale as f64;
            let bound = 0.5 + h * h / 16.0 * 0.8 / y.scale as f64;
            println!("gelu_tanh 513 entries +-{amax}: {e:.4} steps (bound {bound:.4})");
            assert!(e <= bound + 0.01 && e <= want_max, "{amax}: {e} vs {bound}");
        }
        // A wide range needs a finer table: the builder refines it.
        let x = ActQuant::from_range(-60.0, 60.0, 16, true);
        let coarse = lut_with_segments(LutFn::GeluErf, x, x, 7).unwrap();
        let fine = lut(LutFn::GeluErf, x, x).unwrap();
        let (ec, ef) = (
            max_error_steps(&coarse, LutFn::GeluErf),
            max_error_steps(&fine, LutFn::GeluErf),
        );
        println!(
            "gelu_erf +-60: 513 entries {ec:.3} steps, refined {} entries {ef:.3} steps",
            fine.len()
        );
        assert!(ec > 0.75 && ef <= 0.75);
    }

    #[test]
    fn sigmoid_exp_and_asymmetric_16bit() {
        let mut rng = Lcg::new(5);
        let x = ActQuant::from_range(-12.0, 12.0, 16, true);
        let y = ActQuant {
            scale: 1.0 / 65535.0,
            zero_point: -32768,
            bits: 16,
        };
        let t = lut(LutFn::Sigmoid, x, y).unwrap();
        let e = max_error_steps(&t, LutFn::Sigmoid);
        println!("sigmoid A16 -> asym A16: {} entries, {e:.4} steps", t.len());
        assert!(e <= 0.75 && t.len() <= 2049);
        assert_eq!(t.eval(qmin(16) as i32), -32768);
        assert_eq!(t.eval(qmax(16) as i32), 32767);
        let xe = ActQuant::from_range(-10.0, 0.0, 16, false);
        let ye = ActQuant::from_range(0.0, 1.0, 16, false);
        let te = lut(LutFn::Exp, xe, ye).unwrap();
        let e = max_error_steps(&te, LutFn::Exp);
        println!("exp asym A16 [-10,0]: {} entries, {e:.4} steps", te.len());
        assert!(e <= 0.75 && te.len() <= 2049);
        // Random tensors through forward.
        let data: Vec<i16> = (0..1000)
            .map(|_| rng.range_i64(-32768, 32767) as i16)
            .collect();
        let xt = QTensor::new(&[10, 100], data, x);
        let yt = t.forward(&xt);
        assert_eq!(yt.q, y);
        for (&a, &b) in xt.data.iter().zip(&yt.data) {
            assert_eq!(t.eval(a as i32), b as i32);
        }
    }
}
