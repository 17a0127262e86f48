//! Per-kernel throughput: the integer linear product on real layer shapes, for each weight /
//! activation width the schemes use, at the run-time kernel level and the scalar reference, beside
//! the float32 path on the same shape.

use super::time_median;
use crate::error::Result;
use crate::quant::arith::{qmax, qmin, Multiplier};
use crate::quant::kernels::{gemm, Level};
use crate::quant::ops::linear::{QLinear, QMatrix};
use crate::quant::params::{ActQuant, GROUP_SCALE_BITS};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct KernelRow {
    /// `w4a16`, `w8a8`, ..., or `f32`.
    pub kernel: String,
    pub level: String,
    /// `[out, in]`.
    pub shape: [usize; 2],
    pub tokens: usize,
    pub threads: usize,
    pub ms: f64,
    /// Billions of multiply-accumulates per second.
    pub gmacs: f64,
}

/// A random integer linear layer: `wbits` weights in groups of `group` (0: per channel),
/// `xbits` activations (asymmetric at 8 bits, as the schemes do), mid-range multipliers.
pub fn random_linear(
    out: usize,
    inp: usize,
    wbits: u32,
    group: usize,
    xbits: u32,
    seed: u64,
) -> Result<QLinear> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let qm = qmax(wbits) as i16;
    let q: Vec<i16> = (0..out * inp).map(|_| rng.random_range(-qm..=qm)).collect();
    let group = if group == 0 { inp } else { group };
    let unit = 1u16 << GROUP_SCALE_BITS;
    let gm: Vec<u16> = (0..out * inp.div_ceil(group))
        .map(|_| rng.random_range(unit / 2..=unit))
        .collect();
    let weight = QMatrix::new(out, inp, wbits, group, &q, gm)?;
    let x = ActQuant {
        scale: 0.05,
        zero_point: if xbits > 8 { 0 } else { -3 },
        bits: xbits,
    };
    let y = ActQuant {
        scale: 0.05,
        zero_point: 0,
        bits: xbits,
    };
    let mult = vec![
        Multiplier {
            m: 1 << 30,
            shift: -20,
        };
        out
    ];
    QLinear::new(weight, None, mult, x, y)
}

/// Random activations in `q`'s range.
pub fn random_input(q: &ActQuant, n: usize, seed: u64) -> Vec<i16> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| rng.random_range(qmin(q.bits)..=qmax(q.bits)) as i16)
        .collect()
}

/// The schemes' linear kernels: name, weight bits, group (0 = per channel), activation bits.
pub const KERNELS: [(&str, u32, usize, u32); 4] = [
    ("w4a16", 4, 64, 16),
    ("w8a16", 8, 0, 16),
    ("w8a8", 8, 0, 8),
    ("w4a8", 4, 64, 8),
];

/// Times every kernel of [`KERNELS`] and float32 on `[out, inp]` for each token count, at
/// `level` and (for small token counts, where it finishes in reasonable time) the scalar level.
pub fn run(
    shape: [usize; 2],
    tokens: &[usize],
    level: Level,
    threads: usize,
    progress: &dyn Fn(&str),
) -> Result<Vec<KernelRow>> {
    let [out, inp] = shape;
    let mut rows = Vec::new();
    for &(name, wbits, group, xbits) in &KERNELS {
        let lin = random_linear(out, inp, wbits, group, xbits, 1)?;
        for &t in tokens {
            let x = random_input(&lin.x, t * inp, 2);
            let mut levels = vec![level];
            if level != Level::Scalar && t <= 64 {
                levels.push(Level::Scalar);
            }
            for l in levels {
                progress(&format!("{name} [{out}, {inp}] x {t} tokens, {}", l.name()));
                let s = time_median(|| {
                    std::hint::black_box(gemm::linear(
                        l,
                        &lin.weight,
                        None,
                        &lin.mult,
                        (lin.x, lin.y),
                        &x,
                        t,
                    ));
                });
                rows.push(KernelRow {
                    kernel: name.into(),
                    level: l.name().into(),
                    shape,
                    tokens: t,
                    threads,
                    ms: s * 1e3,
                    gmacs: (out * inp * t) as f64 / s / 1e9,
                });
            }
        }
    }
    let w: Vec<f32> = (0..out * inp)
        .map(|i| ((i % 17) as f32 - 8.0) * 0.01)
        .collect();
    for &t in tokens {
        let x: Vec<f32> = (0..t * inp)
            .map(|i| ((i % 13) as f32 - 6.0) * 0.1)
            .collect();
        progress(&format!("f32 [{out}, {inp}] x {t} tokens"));
        let s = time_median(|| {
            std::hint::black_box(crate::ops::gemm::linear(&x, t, &w, out, inp, None));
        });
        rows.push(KernelRow {
            kernel: "f32".into(),
            level: "matrixmultiply / gemv".into(),
            shape,
            tokens: t,
            threads,
            ms: s * 1e3,
            gmacs: (out * inp * t) as f64 / s / 1e9,
        });
    }
    Ok(rows)
}
