//! Integer scaled dot-product attention with grouped / multi-query key-value heads, mirroring
//! [`crate::ops::attention::attention`] (token-major `q [tq, n_heads * d]`, `k [tk, n_kv * d]`,
//! `v [tk, n_kv * dv]`, query head `h` reads kv head `h / (n_heads / n_kv)`, result
//! `[tq, n_heads * dv]`, optional causal offset).
//!
//! ```text
//! s_ij = sum_c (q_ic - zp_q) (k_jc - zp_k)                       i64 (|s| <= d * 2^32)
//! e_ij = exp(attn_scale * s_q * s_k * (s_ij - max_j s_ij))       QSoftmax::exp_row: the scale
//!        is folded into the softmax multiplier (one rounding from the raw accumulator, no int16
//!        score tensor)
//! ```
//!
//! then, by [`PvMode`]:
//!
//! - `Probabilities` (TFLite / HTP style): `p_ij` = int16 probabilities (scale `1/32767`; or
//!   int8 `1/256`, zero point -128) from [`QSoftmax::forward_row`], and
//!   `o_ic = requantize(sum_j (p_ij - zp_p) (v_jc - zp_v), s_p * s_v / s_o, zp_o)` (i64; the sum
//!   is bounded by `(32767 + tk) * 65535` whatever `tk`). Each probability carries a rounding
//!   error of 1/65534, and those add up over the keys: the output error grows like `sqrt(tk)`.
//! - `Deferred` (normalise after the product; the default of `quant::prepare::attention`):
//!   `e_ij` in Q22,
//!   `o_ic = round(sum_j e_ij (v_jc - zp_v) * reciprocal(sum_j e_ij) * s_v / s_o) + zp_o` with the
//!   three factors multiplied exactly in `i128` and one rounding; the error no longer grows with
//!   the context (`tk < 2^25` keeps the sum inside i64).
//!
//! The score reduction is checked at conversion.

use super::linear::{centered_abs_max, check_act};
use super::norm::scale_pow2;
use super::softmax::{reciprocal, QSoftmax};
use crate::error::{Error, Result};
use crate::ops::attention::{AttnShape, Mask};
use crate::quant::arith::{check_reduction, requantize, saturate, size_product, Multiplier};
use crate::quant::params::ActQuant;
use crate::quant::tensor::QTensor;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Fixed point of the unnormalised exponentials in [`PvMode::Deferred`].
pub const DEFERRED_EXP_BITS: u32 = 22;

/// How the probabilities meet the values (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PvMode {
    /// Quantized probabilities (int16 or int8) times V.
    Probabilities,
    /// Q22 exponentials times V, normalised by the row sum in the output requantization.
    Deferred,
}

/// Integer SDPA (see the module docs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QAttention {
    pub n_heads: usize,
    pub n_kv: usize,
    /// Query/key head size.
    pub d: usize,
    /// Value head size.
    pub dv: usize,
    pub q: ActQuant,
    pub k: ActQuant,
    pub v: ActQuant,
    pub out: ActQuant,
    /// Softmax over raw score accumulators (input unit `s_q * s_k * attn_scale`).
    pub softmax: QSoftmax,
    pub mode: PvMode,
    /// `Probabilities`: `s_p * s_v / s_out`; `Deferred`: `s_v / s_out`.
    pub out_mult: Multiplier,
}

impl QAttention {
    /// Checks everything [`Self::forward_raw`] relies on: positive head sizes with the query
    /// heads a multiple of the kv heads, the activations, the score reduction inside `i64`, the
    /// softmax and the output multiplier.
    pub fn validate(&self) -> Result<()> {
        let (nh, nkv, d, dv) = (self.n_heads, self.n_kv, self.d, self.dv);
        if nkv == 0 || nh == 0 || nh % nkv != 0 || d == 0 || dv == 0 {
            return Err(Error::input(format!(
                "QAttention: {nh} heads, {nkv} kv heads, d {d}, dv {dv} (heads must be a \
                 non-zero multiple of kv heads)"
            )));
        }
        size_product("QAttention", &[nh, d.max(dv)])?;
        for (what, q) in [
            ("q", &self.q),
            ("k", &self.k),
            ("v", &self.v),
            ("output", &self.out),
        ] {
            check_act("QAttention", what, q)?;
        }
        // Scores: d products of centred q and k; the softmax also forms differences of two.
        check_reduction(
            "QAttention scores",
            2 * d,
            centered_abs_max(&self.q),
            centered_abs_max(&self.k),
            0,
        )?;
        self.softmax
            .validate()
            .map_err(|e| Error::input(format!("QAttention: {e}")))?;
        self.out_mult
            .check()
            .map_err(|e| Error::input(format!("QAttention: output multiplier: {e}")))
    }

    pub fn shape(&self) -> AttnShape {
        AttnShape {
            n_heads: self.n_heads,
            n_kv: self.n_kv,
            d: self.d,
            dv: self.dv,
        }
    }

    /// Attention on raw integer slices (`tq` query rows, `tk` key/value rows).
    pub fn forward_raw(
        &self,
        q: &[i16],
        k: &[i16],
        v: &[i16],
        tq: usize,
        tk: usize,
        mask: Mask,
    ) -> Vec<i16> {
        let (nh, nkv, d, dv) = (self.n_heads, self.n_kv, self.d, self.dv);
        assert!(
            nkv > 0 && nh.is_multiple_of(nkv),
            "heads {nh} not a multiple of kv heads {nkv}"
        );
        assert_eq!(q.len(), tq * nh * d, "attention q");
        assert_eq!(k.len(), tk * nkv * d, "attention k");
        assert_eq!(v.len(), tk * nkv * dv, "attention v");
        let group = nh / nkv;
        let centre = |xs: &[i16], zp: i32| -> Vec<i64> {
            xs.iter().map(|&x| x as i64 - zp as i64).collect()
        };
        let (qc, kc, vc) = (
            centre(q, self.q.zero_point),
            centre(k, self.k.zero_point),
            centre(v, self.v.zero_point),
        );
        let zp_p = self.softmax.out.zero_point as i64;
        let (zo, bits) = (self.out.zero_point, self.out.bits);
        let mut out = vec![0i16; tq * nh * dv];
        if self.mode == PvMode::Deferred {
            // e <= 2^22, |v - zp| < 2^16: the P.V sum stays inside i64.
            assert!(
                tk < 1 << 25,
                "attention: {tk} keys exceed the deferred mode's 2^25"
            );
        }
        // (query row, head) pairs in parallel: `out` is `[tq, nh, dv]`, so chunk `c` is row
        // `c / nh`, head `c % nh` (a decode step still has every head to share out). P.V
        // accumulates key by key into `dv` sums (contiguous reads of V). Integer sums: any
        // order gives the same.
        out.par_chunks_mut(dv.max(1)).enumerate().for_each_init(
            || {
                (
                    vec![0i64; tk],
                    vec![0i16; tk],
                    vec![0i64; tk],
                    vec![0i64; dv],
                )
            },
            |(scores, p, e, acc), (c, oi)| {
                let (i, h) = (c / nh, c % nh);
                let visible = match mask {
                    Mask::None => tk,
                    Mask::Causal { offset } => (offset + i + 1).min(tk),
                };
                let kvh = h / group;
                let qi = &qc[i * nh * d + h * d..][..d];
                for (j, s) in scores[..visible].iter_mut().enumerate() {
                    let kj = &kc[j * nkv * d + kvh * d..][..d];
                    *s = qi.iter().zip(kj).map(|(a, b)| a * b).sum();
                }
                scores[visible..].fill(0);
                acc.fill(0);
                let vrow = |j: usize| &vc[j * nkv * dv + kvh * dv..][..dv];
                match self.mode {
                    PvMode::Probabilities => {
                        self.softmax.forward_row(scores, visible, p);
                        for (j, &pj) in p[..visible].iter().enumerate() {
                            let w = pj as i64 - zp_p;
                            for (a, &vv) in acc.iter_mut().zip(vrow(j)) {
                                *a += w * vv;
                            }
                        }
                        for (o, &a) in oi.iter_mut().zip(acc.iter()) {
                            *o = requantize(a, self.out_mult, zo, bits) as i16;
                        }
                    }
                    PvMode::Deferred => {
                        let sum = self.softmax.exp_row(scores, visible, e, DEFERRED_EXP_BITS);
                        let r = reciprocal(sum as u64);
                        let m = self.out_mult;
                        for (j, &ej) in e[..visible].iter().enumerate() {
                            for (a, &vv) in acc.iter_mut().zip(vrow(j)) {
                                *a += ej * vv;
                            }
                        }
                        for (o, &a) in oi.iter_mut().zip(acc.iter()) {
                            let prod = a as i128 * r.m as i128 * m.m as i128;
                            let y = scale_pow2(prod, r.shift + m.shift - 62);
                            *o = saturate(y.saturating_add(zo as i64), bits) as i16;
                        }
                    }
                }
            },
        );
        out
    }

    /// `q [tq, n_heads * d]`, `k [tk, n_kv * d]`, `v [tk, n_kv * dv]` -> `[tq, n_heads * dv]`.
    pub fn forward(&self, q: &QTensor, k: &QTensor, v: &QTensor, mask: Mask) -> QTensor {
        debug_assert_eq!(q.q, self.q, "attention q quantization");
        debug_assert_eq!(k.q, self.k, "attention k quantization");
        debug_assert_eq!(v.q, self.v, "attention v quantization");
        let tq = q.numel() / (self.n_heads * self.d);
        let tk = k.numel() / (self.n_kv * self.d);
        let out = self.forward_raw(&q.data, &k.data, &v.data, tq, tk, mask);
        QTensor::new(&[tq, self.n_heads * self.dv], out, self.out)
    }
}

#[cfg(test)]
#[allow(clippy::float_arithmetic)]
mod tests {
    use super::*;
    use crate::ops::attention::attention;
    use crate::quant::arith::{qmax, qmin};
    use crate::quant::metrics::sqnr_db;
    use crate::quant::ops::lut::test_rng::Lcg;
    use crate::quant::prepare::attention::{attention as prepare_attention, attention_with_p_bits};

    fn quantize(rng: &mut Lcg, n: usize, sigma: f64, bits: u32) -> QTensor {
        let vals: Vec<f32> = (0..n).map(|_| (rng.normal() * sigma) as f32).collect();
        let amax = vals.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let q = if bits == 16 {
            ActQuant::from_range(-amax, amax, 16, true)
        } else {
            let (lo, hi) = vals
                .iter()
                .fold((0.0f32, 0.0f32), |(a, b), &v| (a.min(v), b.max(v)));
            ActQuant::from_range(lo, hi, bits, false)
        };
        let data = vals.iter().map(|&v| q.quantize(v) as i16).collect();
        QTensor::new(&[n], data, q)
    }

    struct Case {
        tq: usize,
        tk: usize,
        s: AttnShape,
        mask: Mask,
        sigma_qk: f64,
    }

    /// (SQNR dB, max error in output steps) of the integer attention against the float one on the
    /// dequantized inputs.
    /// `p_bits` 16 / 8: quantized probabilities; 0: deferred normalisation (the default).
    fn run(rng: &mut Lcg, c: &Case, bits: u32, p_bits: u32) -> (f64, f64) {
        let s = c.s;
        let q = quantize(rng, c.tq * s.n_heads * s.d, c.sigma_qk, bits);
        let k = quantize(rng, c.tk * s.n_kv * s.d, c.sigma_qk, bits);
        let v = quantize(rng, c.tk * s.n_kv * s.dv, 1.0, bits);
        let scale = (s.d as f64).powf(-0.5) as f32;
        let want = attention(
            q.dequantize().data(),
            k.dequantize().data(),
            v.dequantize().data(),
            c.tq,
            c.tk,
            s,
            scale,
            c.mask,
        );
        // Output range calibrated on the reference (as calibration would).
        let amax = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let out = if bits == 16 {
            ActQuant::from_range(-amax, amax, 16, true)
        } else {
            let (lo, hi) = want
                .iter()
                .fold((0.0f32, 0.0f32), |(a, b), &v| (a.min(v), b.max(v)));
            ActQuant::from_range(lo, hi, bits, false)
        };
        let op = if p_bits == 0 {
            prepare_attention(s, scale, q.q, k.q, v.q, out).unwrap()
        } else {
            attention_with_p_bits(s, scale, q.q, k.q, v.q, out, p_bits).unwrap()
        };
        let got = op
            .forward_raw(&q.data, &k.data, &v.data, c.tq, c.tk, c.mask)
            .iter()
            .map(|&x| out.dequantize(x as i32))
            .collect::<Vec<f32>>();
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| ((a - b) / out.scale).abs() as f64)
            .fold(0.0, f64::max);
        (sqnr_db(&want, &got), worst)
    }

    fn cases() -> Vec<(&'static str, Case)> {
        vec![
            (
                "lfm2 gqa prefill causal",
                Case {
                    tq: 24,
                    tk: 24,
                    s: AttnShape {
                        n_heads: 8,
                        n_kv: 2,
                        d: 64,
                        dv: 64,
                    },
                    mask: Mask::Causal { offset: 0 },
                    sigma_qk: 1.5,
                },
            ),
            (
                "lfm2 gqa decode offset 299",
                Case {
                    tq: 1,
                    tk: 300,
                    s: AttnShape {
                        n_heads: 8,
                        n_kv: 2,
                        d: 64,
                        dv: 64,
                    },
                    mask: Mask::Causal { offset: 299 },
                    sigma_qk: 1.5,
                },
            ),
            (
                "lfm2 gqa decode offset 4095",
                Case {
                    tq: 1,
                    tk: 4096,
                    s: AttnShape {
                        n_heads: 4,
                        n_kv: 1,
                        d: 64,
                        dv: 64,
                    },
                    mask: Mask::Causal { offset: 4095 },
                    sigma_qk: 1.5,
                },
            ),
            (
                "lfm2 chunk offset 40",
                Case {
                    tq: 6,
                    tk: 46,
                    s: AttnShape {
                        n_heads: 4,
                        n_kv: 4,
                        d: 32,
                        dv: 32,
                    },
                    mask: Mask::Causal { offset: 40 },
                    sigma_qk: 2.5,
                },
            ),
            (
                "mobilenetv5 mqa",
                Case {
                    tq: 64,
                    tk: 16,
                    s: AttnShape {
                        n_heads: 4,
                        n_kv: 1,
                        d: 64,
                        dv: 48,
                    },
                    mask: Mask::None,
                    sigma_qk: 1.0,
                },
            ),
        ]
    }

    #[test]
    fn attention_sqnr_a16_and_a8() {
        let mut lines = Vec::new();
        for (ci, (name, c)) in cases().into_iter().enumerate() {
            // The same inputs for every mode: reseed per run.
            let go = |bits, p_bits| run(&mut Lcg::new(100 + ci as u64), &c, bits, p_bits);
            let (db16, e16) = go(16, 16);
            let (db16d, e16d) = go(16, 0);
            let (db8, e8) = go(8, 16);
            let (db8d, e8d) = go(8, 0);
            let (db8p8, e8p8) = go(8, 8);
            lines.push(format!(
                "attention {name}: A16 P16 {db16:.1} dB (max {e16:.2} steps) | A16 deferred {db16d:.1} dB (max {e16d:.2}) | A8 P16 {db8:.1} dB (max {e8:.2}) | A8 deferred {db8d:.1} dB (max {e8d:.2}) | A8 P8 {db8p8:.1} dB (max {e8p8:.2})"
            ));
            // Quantized probabilities: the error grows like sqrt(tk) (52 dB at 4096 keys).
            assert!(db16 > 50.0, "{name}: A16 {db16} dB");
            assert!(
                db16d > 80.0 && e16d <= 1.0,
                "{name}: A16 deferred {db16d} dB {e16d}"
            );
            assert!(db8 > 38.0 && e8 <= 1.0, "{name}: A8 {db8} dB {e8}");
            assert!(
                db8d > 38.0 && e8d <= 1.0,
                "{name}: A8 deferred {db8d} dB {e8d}"
            );
            assert!(db8p8 > 20.0, "{name}: A8/P8 {db8p8} dB");
        }
        for l in lines {
            println!("{l}");
        }
    }

    #[test]
    fn long_scores_beyond_i32_stay_exact() {
        // d = 4096 of int16 extremes: |q.k| = 4096 * 2^30 = 2^42 per score. Keys alternate
        // between +-extreme so the scores are +-2^42 (an i32 accumulator would have overflowed
        // after 2 terms); the softmax is then one-hot on the matching keys.
        let d = 4096;
        let q16 = ActQuant {
            scale: 1e-4,
            zero_point: 0,
            bits: 16,
        };
        let s = AttnShape {
            n_heads: 1,
            n_kv: 1,
            d,
            dv: 2,
        };
        let out = ActQuant {
            scale: 1.0 / 32767.0,
            zero_point: 0,
            bits: 16,
        };
        let deferred = prepare_attention(s, 1.0 / 64.0, q16, q16, q16, out).unwrap();
        let p16 = attention_with_p_bits(s, 1.0 / 64.0, q16, q16, q16, out, 16).unwrap();
        assert_eq!(
            (deferred.mode, p16.mode),
            (PvMode::Deferred, PvMode::Probabilities)
        );
        let q = vec![qmin(16) as i16; d];
        let mut k = Vec::new();
        for j in 0..4 {
            let v = if j % 2 == 0 { qmin(16) } else { qmax(16) };
            k.extend(std::iter::repeat_n(v as i16, d));
        }
        // Values: key 0 -> (1000, -1000), key 2 -> (3000, 5000): the two keys with score +2^42
        // share the probability.
        let v: Vec<i16> = vec![1000, -1000, 7, 7, 3000, 5000, -9, -9];
        // Deferred: o = 1e-4 * (v0 + v2) / 2 / (1/32767) exactly rounded.
        let y = deferred.forward_raw(&q, &k, &v, 1, 4, Mask::None);
        let want = |a: f64, b: f64| ((a + b) / 2.0 * 1e-4 * 32767.0).round() as i16;
        assert_eq!(y, vec![want(1000.0, 3000.0), want(-1000.0, 5000.0)]);
        // Probabilities: each p is round(32767 / 2) = 16384.
        let y = p16.forward_raw(&q, &k, &v, 1, 4, Mask::None);
        let want = |a: f64, b: f64| (16384.0 * (a + b) * 1e-4).round() as i16;
        assert_eq!(y, vec![want(1000.0, 3000.0), want(-1000.0, 5000.0)]);
    }
}
