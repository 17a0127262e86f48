//! The float side of quantization (calibration and conversion time only): choosing scales and
//! zero points, turning real multipliers into [`Multiplier`]s, and quantizing weights per tensor,
//! per output channel or per group. Nothing here runs at inference time.

use super::arith::{qmax, qmin, saturate, Multiplier};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Converts a real multiplier to fixed point: `real = m * 2^(shift - 31)`, `m` in `[2^30, 2^31)`.
pub fn quantize_multiplier(real: f64) -> Multiplier {
    assert!(
        real.is_finite() && real >= 0.0,
        "multiplier {real} must be finite and >= 0"
    );
    if real == 0.0 {
        return Multiplier::ZERO;
    }
    // real = frac * 2^exp with frac in [0.5, 1).
    let mut exp = real.log2().floor() as i32 + 1;
    let mut frac = real / 2f64.powi(exp);
    if frac >= 1.0 {
        frac /= 2.0;
        exp += 1;
    } else if frac < 0.5 {
        frac *= 2.0;
        exp -= 1;
    }
    let mut m = (frac * (1u64 << 31) as f64).round() as i64;
    if m == 1i64 << 31 {
        m /= 2;
        exp += 1;
    }
    Multiplier {
        m: m as i32,
        shift: exp,
    }
}

/// The real value a [`Multiplier`] stands for.
pub fn multiplier_value(m: Multiplier) -> f64 {
    m.m as f64 * 2f64.powi(m.shift - 31)
}

/// Per-tensor activation quantization: `r = scale * (q - zero_point)`, `q` signed `bits`-wide.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActQuant {
    pub scale: f32,
    pub zero_point: i32,
    pub bits: u32,
}

impl ActQuant {
    /// Range `[min, max]` (widened to include 0). Symmetric: `zero_point = 0`, scale from the
    /// larger magnitude over `qmax` (the int16 convention). Asymmetric: the full range is used.
    pub fn from_range(min: f32, max: f32, bits: u32, symmetric: bool) -> Self {
        let (min, max) = (min.min(0.0), max.max(0.0));
        let tiny = f32::MIN_POSITIVE * 1e6;
        if symmetric {
            let amax = min.abs().max(max.abs()).max(tiny);
            ActQuant {
                scale: amax / qmax(bits) as f32,
                zero_point: 0,
                bits,
            }
        } else {
            let (lo, hi) = (qmin(bits) as f32, qmax(bits) as f32);
            let scale = ((max - min) / (hi - lo)).max(tiny);
            let zero_point = (lo - min / scale).round().clamp(lo, hi) as i32;
            ActQuant {
                scale,
                zero_point,
                bits,
            }
        }
    }

    pub fn quantize(&self, x: f32) -> i32 {
        saturate(
            (x / self.scale).round() as i64 + self.zero_point as i64,
            self.bits,
        )
    }

    pub fn dequantize(&self, q: i32) -> f32 {
        self.scale * (q - self.zero_point) as f32
    }
}

/// How weights share scales.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Granularity {
    PerTensor,
    /// One scale per output channel (row of `[out, in]`).
    PerChannel,
    /// One scale per `group` consecutive inputs of each output row (block quantization).
    PerGroup(usize),
}

/// How a weight range is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WeightRange {
    /// The largest magnitude.
    MinMax,
    /// The clipping that minimises the squared quantization error (grid search).
    Mse,
}

/// Bits of the integer group multipliers used to express per-group scales relative to their
/// row's scale (Qualcomm LPBQ-style block expansion), so the runtime stays integer-only.
pub const GROUP_SCALE_BITS: u32 = 8;

/// A symmetric quantized weight matrix `[out, in]` (convolutions flattened to `in = C*k*k`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuantWeight {
    pub out: usize,
    pub inp: usize,
    pub bits: u32,
    /// Inputs per scale group (`inp` for per-channel / per-tensor).
    pub group: usize,
    /// Integer values, row-major, each in `[-qmax, qmax]` (`i16` holds every width up to 16).
    pub q: Vec<i16>,
    /// Real scale of each row: `w ~ row_scale[o] * group_mult[o, g] / 2^GROUP_SCALE_BITS * q`.
    pub row_scale: Vec<f32>,
    /// Integer per-group multipliers in `(0, 2^GROUP_SCALE_BITS]` (all `2^GROUP_SCALE_BITS` unless
    /// per-group).
    pub group_mult: Vec<u16>,
}

impl QuantWeight {
    pub fn groups_per_row(&self) -> usize {
        self.inp.div_ceil(self.group)
    }

    /// The real weight value this quantization stands for.
    pub fn dequantize(&self) -> Vec<f32> {
        let gpr = self.groups_per_row();
        let unit = (1u32 << GROUP_SCALE_BITS) as f32;
        (0..self.out * self.inp)
            .map(|i| {
                let (o, c) = (i / self.inp, i % self.inp);
                let gm = self.group_mult[o * gpr + c / self.group] as f32 / unit;
                self.row_scale[o] * gm * self.q[i] as f32
            })
            .collect()
    }
}

/// Symmetric `bits`-wide quantization of `w[out, inp]`.
pub fn quantize_weight(
    w: &[f32],
    out: usize,
    inp: usize,
    bits: u32,
    gran: Granularity,
    range: WeightRange,
) -> QuantWeight {
    assert_eq!(w.len(), out * inp);
    let qm = qmax(bits) as f32;
    let group = match gran {
        Granularity::PerGroup(g) => g.clamp(1, inp.max(1)),
        _ => inp.max(1),
    };
    let gpr = inp.div_ceil(group);
    // Real scale of every group.
    // Rows in parallel: the MSE search dominates the conversion of large models.
    let mut scales = vec![0.0f32; out * gpr];
    scales
        .par_chunks_mut(gpr.max(1))
        .enumerate()
        .for_each(|(o, row)| {
            for (g, sc) in row.iter_mut().enumerate() {
                let vals = &w[o * inp + g * group..o * inp + ((g + 1) * group).min(inp)];
                *sc = choose_scale(vals, qm, range);
            }
        });
    if gran == Granularity::PerTensor {
        let s = scales.iter().fold(0.0f32, |m, &v| m.max(v));
        scales.iter_mut().for_each(|v| *v = s);
    }
    let unit = 1u32 << GROUP_SCALE_BITS;
    let mut row_scale = vec![0.0f32; out];
    let mut group_mult = vec![unit as u16; out * gpr];
    let mut q = vec![0i16; out * inp];
    for o in 0..out {
        let row_max = scales[o * gpr..(o + 1) * gpr]
            .iter()
            .fold(0.0f32, |m, &v| m.max(v));
        row_scale[o] = row_max;
        for g in 0..gpr {
            let s = scales[o * gpr + g];
            // The group's effective scale is row_max * mult / 2^bits, mult rounded up so the
            // group's range is never clipped more than its own choice.
            let mult = if row_max > 0.0 {
                ((s / row_max * unit as f32).ceil() as u32).clamp(1, unit)
            } else {
                unit
            };
            group_mult[o * gpr + g] = mult as u16;
            let eff = row_max * mult as f32 / unit as f32;
            for c in g * group..((g + 1) * group).min(inp) {
                let v = if eff > 0.0 {
                    let r = w[o * inp + c] / eff;
                    if r.abs() < 8_388_608.0 {
                        round_half_away(r)
                    } else {
                        r.round()
                    }
                } else {
                    0.0
                };
                q[o * inp + c] = v.clamp(-qm, qm) as i16;
            }
        }
    }
    QuantWeight {
        out,
        inp,
        bits,
        group,
        q,
        row_scale,
        group_mult,
    }
}

/// `x.round()` (to nearest, ties away from zero) for `|x| < 2^23`, without the libm call the
/// baseline x86-64 target compiles `round` to, and branch-free so loops over it vectorize: the
/// weight search rounds ~80 candidates per weight. Same value as `round` (a zero may come out as
/// `+0.0` where `round` gives `-0.0`).
#[inline(always)]
fn round_half_away(x: f32) -> f32 {
    debug_assert!(x.abs() < 8_388_608.0, "{x}");
    let t = x as i32 as f32; // truncation, exact below 2^23
    let frac = x - t; // exact
    t + (frac >= 0.5) as i32 as f32 - (frac <= -0.5) as i32 as f32
}

/// Squared error of quantizing `vals` with scale `s` to `[-qm, qm]`, summed in `f64` in order
/// (the errors themselves are computed in vectorizable chunks).
fn quant_error(vals: &[f32], s: f32, qm: f32) -> f64 {
    let mut buf = [0f32; 64];
    let mut sum = 0f64;
    for chunk in vals.chunks(64) {
        for (d, &v) in buf.iter_mut().zip(chunk) {
            *d = v - s * round_half_away(v / s).clamp(-qm, qm);
        }
        for &d in &buf[..chunk.len()] {
            sum += (d as f64) * (d as f64);
        }
    }
    sum
}

/// Scale for one group: `amax / qmax` (min-max) or the clipped `amax` minimising the squared
/// error over a grid of 100 clip ratios in [0.2, 1].
fn choose_scale(vals: &[f32], qm: f32, range: WeightRange) -> f32 {
    let amax = vals.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    if amax == 0.0 {
        return 0.0;
    }
    match range {
        WeightRange::MinMax => amax / qm,
        WeightRange::Mse => {
            // Every candidate scale is >= 0.2 * amax / qm, so |v / s| <= 5 * qm < 2^23.
            let err = |s: f32| quant_error(vals, s, qm);
            let mut best = (err(amax / qm), amax / qm);
            for i in 20..100 {
                let s = amax * i as f32 / 100.0 / qm;
                let e = err(s);
                if e < best.0 {
                    best = (e, s);
                }
            }
            best.1
        }
    }
}

#[cfg(test)]
mod round_tests {
    use super::round_half_away;

    #[test]
    fn round_half_away_equals_round() {
        let mut v = vec![
            0.5f32,
            -0.5,
            1.5,
            -1.5,
            2.5,
            0.49999997,
            -0.49999997,
            8388607.5,
            -8388607.5,
            0.0,
            -0.0,
            f32::MIN_POSITIVE,
        ];
        let mut s = 0x9e37_79b9u32;
        for _ in 0..1_000_000 {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            let x = f32::from_bits(s);
            if x.abs() < 8_388_608.0 {
                v.push(x);
            }
            v.push((s as i32) as f32 / 4096.0 + 0.5);
        }
        for x in v {
            assert_eq!(round_half_away(x), x.round(), "{x}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipliers_round_trip() {
        for &r in &[
            1.0,
            0.5,
            0.75,
            1e-6,
            3.3e-3,
            0.999_999_999,
            1.5,
            17.25,
            123456.0,
        ] {
            let m = quantize_multiplier(r);
            assert!((1 << 30..=i32::MAX).contains(&m.m), "{r}: {m:?}");
            assert!((multiplier_value(m) / r - 1.0).abs() < 1e-9, "{r}: {m:?}");
        }
        assert_eq!(quantize_multiplier(1.0), Multiplier::ONE);
        assert_eq!(quantize_multiplier(0.0), Multiplier::ZERO);
        // Applying it matches the real product within rounding.
        let m = quantize_multiplier(0.0123);
        for x in [-1_000_000i64, -7, 0, 5, 123_456_789] {
            assert!((m.apply(x) as f64 - x as f64 * 0.0123).abs() <= 0.5 + 1e-6 * x.abs() as f64);
        }
    }

    #[test]
    fn activation_params() {
        let s = ActQuant::from_range(-2.0, 1.0, 16, true);
        assert_eq!(s.zero_point, 0);
        assert_eq!(s.quantize(2.0), 32767);
        assert_eq!(s.quantize(-2.0), -32767);
        assert_eq!(s.quantize(100.0), 32767); // saturates
        let a = ActQuant::from_range(0.5, 6.0, 8, false); // widened to include 0
        assert_eq!(a.quantize(0.0), -128);
        assert!((a.dequantize(a.quantize(6.0)) - 6.0).abs() <= a.scale / 2.0 + 1e-6);
        assert!((a.dequantize(a.quantize(3.3)) - 3.3).abs() <= a.scale / 2.0 + 1e-6);
    }

    #[test]
    fn weights_per_channel_and_group_within_half_a_step() {
        let (out, inp) = (3, 64);
        let w: Vec<f32> = (0..out * inp)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0 * (1 + i / inp) as f32)
            .collect();
        for (bits, gran) in [
            (8, Granularity::PerChannel),
            (4, Granularity::PerGroup(16)),
            (8, Granularity::PerTensor),
            (16, Granularity::PerChannel),
        ] {
            let qw = quantize_weight(&w, out, inp, bits, gran, WeightRange::MinMax);
            let deq = qw.dequantize();
            let gpr = qw.groups_per_row();
            for i in 0..out * inp {
                let (o, c) = (i / inp, i % inp);
                let step = qw.row_scale[o] * qw.group_mult[o * gpr + c / qw.group] as f32 / 256.0;
                assert!(
                    (deq[i] - w[i]).abs() <= step / 2.0 + 1e-6,
                    "{bits} {gran:?} {i}"
                );
                assert!(qw.q[i].unsigned_abs() as i64 <= qmax(bits));
            }
        }
        // MSE never has a larger squared error than min-max.
        let e = |qw: &QuantWeight| {
            qw.dequantize()
                .iter()
                .zip(&w)
                .map(|(a, b)| (a - b) * (a - b))
                .sum::<f32>()
        };
        let mm = quantize_weight(
            &w,
            out,
            inp,
            4,
            Granularity::PerChannel,
            WeightRange::MinMax,
        );
        let ms = quantize_weight(&w, out, inp, 4, Granularity::PerChannel, WeightRange::Mse);
        assert!(e(&ms) <= e(&mm) + 1e-6);
    }
}
