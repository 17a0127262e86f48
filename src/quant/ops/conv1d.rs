//! Integer causal depthwise convolution over time (LFM2's `Lfm2ShortConv` conv) on token-major
//! `[T, C]` rows, with the rolling decode state of the last `L - 1` input rows.
//!
//! With `ext = [state; x]` (`L - 1 + T` rows, all in the input's quantization; the initial state
//! is the input zero point, i.e. real 0):
//!
//! ```text
//! acc[t, c] = sum_j (ext[t + j, c] - z_x) * q[c, j] * group_mult[c, g(j)]  (+ bias_c)     (i64)
//! y[t, c]   = requantize(acc, mult[c], z_y),   mult[c] = s_x * row_scale[c] / 2^8 / s_y
//! ```
//!
//! and the new state is the last `L - 1` rows of `ext`. The state holds integers in the input's
//! quantization, so a prefill of `T` rows in one call and `T` single-row calls are bit-exact.

use super::linear::{check_act, check_weighted, QMatrix};
use crate::error::{Error, Result};
use crate::quant::arith::{requantize, Multiplier};
use crate::quant::params::ActQuant;
use crate::quant::tensor::QTensor;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QCausalConv1d {
    /// `[C, L]`: one `L`-tap filter per channel, tap `L - 1` on the current row.
    pub weight: QMatrix,
    /// Per channel, in accumulator units `s_x * row_scale[c] / 2^GROUP_SCALE_BITS`.
    #[serde(with = "crate::artifact::array")]
    pub bias: Option<Vec<i64>>,
    /// Per channel.
    #[serde(with = "crate::artifact::array")]
    pub mult: Vec<Multiplier>,
    pub x: ActQuant,
    pub y: ActQuant,
}

impl QCausalConv1d {
    pub fn new(
        weight: QMatrix,
        bias: Option<Vec<i64>>,
        mult: Vec<Multiplier>,
        x: ActQuant,
        y: ActQuant,
    ) -> Result<Self> {
        let conv = Self {
            weight,
            bias,
            mult,
            x,
            y,
        };
        conv.validate()?;
        Ok(conv)
    }

    /// Checks everything [`Self::forward`] relies on: a valid `[C, L]` weight matrix,
    /// activations, one valid multiplier (and bias) per channel, and no accumulator able to
    /// overflow.
    pub fn validate(&self) -> Result<()> {
        check_act("QCausalConv1d", "input", &self.x)?;
        check_act("QCausalConv1d", "output", &self.y)?;
        self.weight
            .validate()
            .map_err(|e| Error::input(format!("QCausalConv1d: {e}")))?;
        check_weighted(
            "QCausalConv1d",
            "channels",
            &self.weight,
            self.bias.as_deref(),
            &self.mult,
            &self.x,
        )
    }

    pub fn channels(&self) -> usize {
        self.weight.out
    }

    pub fn kernel_size(&self) -> usize {
        self.weight.inp
    }

    /// The state before the first token: `L - 1` rows of the input zero point (real 0).
    pub fn initial_state(&self) -> Vec<i16> {
        vec![self.x.zero_point as i16; (self.kernel_size() - 1) * self.channels()]
    }

    /// `x`: `[T, C]` in [`Self::x`]; returns `[T, C]` in [`Self::y`]. `state` holds the previous
    /// `L - 1` input rows (`[L - 1, C]`, raw integers in [`Self::x`]); an empty `state` is
    /// initialized with [`Self::initial_state`]. It is updated in place.
    pub fn forward(&self, x: &QTensor, state: &mut Vec<i16>) -> QTensor {
        let (c, l) = (self.channels(), self.kernel_size());
        let keep = l - 1;
        assert!(
            x.shape.len() == 2 && x.shape[1] == c,
            "QCausalConv1d: input {:?}, expected [T, {c}]",
            x.shape
        );
        assert_eq!(x.q, self.x, "QCausalConv1d: input quantization differs");
        if state.is_empty() {
            *state = self.initial_state();
        }
        assert_eq!(
            state.len(),
            keep * c,
            "QCausalConv1d: state of {} values, expected [{keep}, {c}]",
            state.len()
        );
        let t = x.shape[0];
        let mut ext = Vec::with_capacity((keep + t) * c);
        ext.extend_from_slice(state);
        ext.extend_from_slice(&x.data);
        let zp = self.x.zero_point as i64;
        // Effective taps q * group_mult, `[C, L]`.
        let q = self.weight.values();
        let eff: Vec<i64> = (0..c * l)
            .map(|i| {
                let gm = self.weight.row_group_mult(i / l);
                q[i] as i64 * gm[(i % l) / self.weight.group] as i64
            })
            .collect();
        let mut y = vec![0i16; t * c];
        for (i, out) in y.chunks_exact_mut(c.max(1)).enumerate() {
            for (ch, o) in out.iter_mut().enumerate() {
                let mut acc = self.bias.as_ref().map_or(0, |b| b[ch]);
                for j in 0..l {
                    acc += (ext[(i + j) * c + ch] as i64 - zp) * eff[ch * l + j];
                }
                *o = requantize(acc, self.mult[ch], self.y.zero_point, self.y.bits) as i16;
            }
        }
        state.copy_from_slice(&ext[t * c..]);
        QTensor::new(&[t, c], y, self.y)
    }
}

#[cfg(test)]
#[allow(clippy::float_arithmetic)]
mod tests {
    use super::super::linear::testutil::*;
    use super::*;
    use crate::quant::arith::{qmax, qmin};
    use crate::quant::params::{quantize_weight, Granularity, QuantWeight, WeightRange};
    use crate::quant::prepare::conv1d::{causal_conv1d, causal_conv1d_from_quantized};

    fn act(bits: u32) -> ActQuant {
        if bits == 8 {
            ActQuant::from_range(-0.5, 2.0, 8, false)
        } else {
            ActQuant::from_range(-3.0, 3.0, 16, true)
        }
    }

    /// Real causal conv with a zero initial state, `x` `[T, C]`, `w` `[C, L]`.
    fn reference(
        x: &[f64],
        t: usize,
        c: usize,
        w: &[f64],
        l: usize,
        b: Option<&[f32]>,
    ) -> Vec<f64> {
        let mut y = vec![0.0; t * c];
        for ti in 0..t {
            for ch in 0..c {
                let mut acc = b.map_or(0.0, |b| b[ch] as f64);
                for j in 0..l {
                    // ext row ti + j is input row ti + j - (l - 1).
                    if let Some(r) = (ti + j).checked_sub(l - 1) {
                        acc += x[r * c + ch] * w[ch * l + j];
                    }
                }
                y[ti * c + ch] = acc;
            }
        }
        y
    }

    #[test]
    fn causal_conv1d_within_one_step() {
        let (t, c, l) = (9, 7, 3);
        let mut rng = Lcg::new(51);
        let mut worst = 0.0f64;
        for xbits in [8, 16] {
            let xq = act(xbits);
            for (wbits, gran) in [
                (8, Granularity::PerChannel),
                (4, Granularity::PerChannel),
                (8, Granularity::PerGroup(2)),
                (16, Granularity::PerChannel),
            ] {
                for with_bias in [false, true] {
                    let w = rng.floats(c * l, -1.0, 1.0);
                    let b = rng.floats(c, -1.0, 1.0);
                    let bias = with_bias.then_some(&b[..]);
                    let mut x = rng.ints(t * c, &xq);
                    // Channel 0 at qmax and channel 1 at qmin throughout: saturating outputs.
                    for ti in 0..t {
                        x[ti * c] = qmax(xbits) as i16;
                        x[ti * c + 1] = qmin(xbits) as i16;
                    }
                    let qw = quantize_weight(&w, c, l, wbits, gran, WeightRange::MinMax);
                    let r = reference(&deq(&x, &xq), t, c, &deq_weight(&qw), l, bias);
                    for ybits in [8, 16] {
                        let yq = out_quant(&r, ybits, 0.8);
                        let op =
                            causal_conv1d(&w, bias, c, l, wbits, gran, WeightRange::MinMax, xq, yq)
                                .unwrap();
                        let mut state = Vec::new();
                        let y = op.forward(&QTensor::new(&[t, c], x.clone(), xq), &mut state);
                        assert_eq!(state, x[(t - l + 1) * c..].to_vec());
                        let what = format!("conv1d x{xbits} w{wbits} {gran:?} y{ybits}");
                        worst = worst.max(assert_within_one_step(&what, &y.data, &r, &yq));
                    }
                }
            }
        }
        println!("QCausalConv1d: largest error {worst:.4} output steps");
    }

    #[test]
    fn prefill_equals_token_by_token() {
        let (t, c, l) = (11, 5, 4);
        let mut rng = Lcg::new(52);
        for xbits in [8, 16] {
            let xq = act(xbits);
            let yq = act(16);
            let w = rng.floats(c * l, -1.0, 1.0);
            let b = rng.floats(c, -0.5, 0.5);
            let op = causal_conv1d(
                &w,
                Some(&b),
                c,
                l,
                4,
                Granularity::PerChannel,
                WeightRange::MinMax,
                xq,
                yq,
            )
            .unwrap();
            let x = rng.ints(t * c, &xq);
            let rows =
                |a: usize, n: usize| QTensor::new(&[n, c], x[a * c..(a + n) * c].to_vec(), xq);
            let mut s_full = Vec::new();
            let full = op.forward(&rows(0, t), &mut s_full);
            // One token at a time.
            let mut s_tok = op.initial_state();
            let mut tok = Vec::new();
            for i in 0..t {
                tok.extend(op.forward(&rows(i, 1), &mut s_tok).data);
            }
            assert_eq!(tok, full.data);
            assert_eq!(s_tok, s_full);
            // Uneven chunks (prefill, decode, prefill again).
            let mut s_chunk = Vec::new();
            let mut chunked = Vec::new();
            let mut a = 0;
            for n in [4, 1, 6] {
                chunked.extend(op.forward(&rows(a, n), &mut s_chunk).data);
                a += n;
            }
            assert_eq!(chunked, full.data);
            assert_eq!(s_chunk, s_full);
        }
    }

    #[test]
    fn causal_conv1d_worst_case_is_exact() {
        // 16-bit inputs at qmin against -127 (8-bit) or -32767 (16-bit) taps: every accumulator
        // term at its extreme.
        let (c, l) = (2, 4);
        let xq = act(16);
        for (wbits, wval) in [(8u32, -127i16), (16, -32767)] {
            let qw = QuantWeight {
                out: c,
                inp: l,
                bits: wbits,
                group: l,
                q: vec![wval; c * l],
                row_scale: vec![0.01, 0.02],
                group_mult: vec![256; c],
            };
            let real = 32768.0 * -(wval as f64) * l as f64 * xq.scale as f64 * 0.02;
            let yq = ActQuant::from_range(0.0, 1.1 * real as f32, 16, true);
            let op = causal_conv1d_from_quantized(&qw, Some(&[0.25, -0.25]), xq, yq).unwrap();
            let mut state = vec![qmin(16) as i16; (l - 1) * c];
            let y = op.forward(
                &QTensor::new(&[1, c], vec![qmin(16) as i16; c], xq),
                &mut state,
            );
            for ch in 0..c {
                let acc = l as i128 * 32768 * -(wval as i128) * 256
                    + op.bias.as_ref().unwrap()[ch] as i128;
                let expect = apply_i128(acc, op.mult[ch]).clamp(qmin(16) as i128, qmax(16) as i128);
                assert_eq!(y.data[ch] as i128, expect, "w{wbits} channel {ch}");
            }
        }
    }
}
