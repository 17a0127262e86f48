//! Calibration-aware weight rounding (GPTQ, Frantar et al. 2022, on the Optimal Brain Quantizer
//! of Frantar & Alistarh): conversion time only, floats allowed.
//!
//! Nearest rounding makes every weight's error independent of the data. A layer's output error
//! on its calibration inputs `X` is `||(W - Q) X||^2 = sum_o e_o^T H e_o` with `H = X X^T`: when
//! inputs are correlated (neighbouring pixels of an image patch, channels of a feature map) the
//! error of one weight can be cancelled by nudging the weights not yet rounded. GPTQ rounds the
//! columns one by one (in order of decreasing input energy, GPTQ's "act order") and spreads each
//! rounding error over the later columns through the Cholesky factor of `H^-1`. Scales stay those of nearest rounding (chosen from the float
//! weights), so the integer runtime and the artifact do not change; only the integer values do.
//!
//! The calibration run collects `H` per weighted op ([`GramSet`], fed by
//! [`crate::observe::Observer::observe_input`]); [`refine`] re-rounds a [`QuantWeight`] and keeps
//! the result only when it lowers the output error on those inputs.

use crate::error::{Error, Result};
use crate::observe::OpInput;
use crate::ops::conv::patches;
use crate::quant::gram;
use crate::quant::params::{QuantWeight, GROUP_SCALE_BITS};
use rayon::prelude::*;
use std::collections::BTreeMap;

/// Inputs wider than this get no Gram matrix (its `k^2` memory and `k^3` factorisation would
/// dominate conversion); those ops keep nearest rounding.
pub const MAX_GRAM_INPUTS: usize = 4096;

/// Dampening added to the Gram diagonal, relative to its mean (GPTQ's default): keeps the
/// factorisation stable when inputs are (nearly) linearly dependent.
pub const DAMPENING: f64 = 0.01;

/// `sum_n x_n x_n^T` over every input vector an op saw during calibration.
#[derive(Clone, Debug, PartialEq)]
pub enum InputGram {
    /// One `[k, k]` matrix shared by every output row (regular and pointwise convolutions,
    /// linear layers). Row-major, full (both triangles).
    Shared { k: usize, h: Vec<f64>, vectors: u64 },
    /// One `[k, k]` matrix per output row (depthwise convolutions: channel `c` only sees input
    /// channel `c`), `rows * k * k` values.
    PerRow {
        rows: usize,
        k: usize,
        h: Vec<f64>,
        vectors: u64,
    },
}

impl InputGram {
    /// Input vector length.
    pub fn k(&self) -> usize {
        match self {
            InputGram::Shared { k, .. } | InputGram::PerRow { k, .. } => *k,
        }
    }

    fn add(&mut self, other: &InputGram) -> Result<()> {
        match (self, other) {
            (
                InputGram::Shared { k, h, vectors },
                InputGram::Shared {
                    k: k2,
                    h: h2,
                    vectors: v2,
                },
            ) if k == k2 => {
                h.iter_mut().zip(h2).for_each(|(a, b)| *a += b);
                *vectors += v2;
                Ok(())
            }
            (
                InputGram::PerRow {
                    rows,
                    k,
                    h,
                    vectors,
                },
                InputGram::PerRow {
                    rows: r2,
                    k: k2,
                    h: h2,
                    vectors: v2,
                },
            ) if rows == r2 && k == k2 => {
                h.iter_mut().zip(h2).for_each(|(a, b)| *a += b);
                *vectors += v2;
                Ok(())
            }
            _ => Err(Error::input(
                "input Gram matrices of different shapes for one op (calibrate with one model)",
            )),
        }
    }
}

/// The [`InputGram`] of every weighted op that reported its input, by op name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GramSet {
    grams: BTreeMap<String, InputGram>,
}

impl GramSet {
    pub fn get(&self, op: &str) -> Option<&InputGram> {
        self.grams.get(op)
    }

    pub fn is_empty(&self) -> bool {
        self.grams.is_empty()
    }

    /// Accumulates one input of op `op`.
    pub fn observe(&mut self, op: &str, input: OpInput<'_>) {
        let Some(gram) = gram_of(input) else {
            return;
        };
        match self.grams.get_mut(op) {
            Some(g) => {
                if g.add(&gram).is_err() {
                    // An op seen at two different input widths cannot be one weight: drop it
                    // (it falls back to nearest rounding) rather than mix them.
                    tracing::warn!("op `{op}` reported inputs of different widths; no GPTQ for it");
                    self.grams.remove(op);
                }
            }
            None => {
                self.grams.insert(op.to_string(), gram);
            }
        }
    }

    /// Adds the Gram matrices of another calibration run.
    pub fn merge(&mut self, other: &GramSet) -> Result<()> {
        for (op, g) in &other.grams {
            match self.grams.get_mut(op) {
                Some(mine) => mine
                    .add(g)
                    .map_err(|e| Error::input(format!("`{op}`: {e}")))?,
                None => {
                    self.grams.insert(op.clone(), g.clone());
                }
            }
        }
        Ok(())
    }
}

/// The Gram matrix of one input, `None` when it is too wide (see [`MAX_GRAM_INPUTS`]) or empty.
fn gram_of(input: OpInput<'_>) -> Option<InputGram> {
    match input {
        OpInput::Conv { x, kernel, spec } => {
            let (kh, kw) = kernel;
            let c = x.dim(0);
            let depthwise = spec.groups != 1;
            let k = if depthwise { kh * kw } else { c * kh * kw };
            if k > MAX_GRAM_INPUTS || k == 0 {
                return None;
            }
            let pointwise_direct = kh == 1 && kw == 1 && spec.stride == 1 && spec.pad.is_zero();
            let patches_of;
            let (rows, n, p): (usize, usize, &[f32]) = if pointwise_direct {
                (c, x.dim(1) * x.dim(2), x.data())
            } else {
                let (rows, n, col) = patches(x, kernel, spec);
                patches_of = col;
                (rows, n, &patches_of)
            };
            if n == 0 {
                return None;
            }
            if depthwise {
                // Rows are ordered (channel, ky, kx): channel c owns rows c*k .. (c+1)*k; k is a
                // kernel's size (9, 25), small enough for the reference.
                let h: Vec<f64> = (0..c)
                    .into_par_iter()
                    .flat_map_iter(|ch| {
                        let rows: Vec<f64> = p[ch * k * n..(ch + 1) * k * n]
                            .iter()
                            .map(|&v| v as f64)
                            .collect();
                        gram::gram_reference(&rows, k, n)
                    })
                    .collect();
                Some(InputGram::PerRow {
                    rows: c,
                    k,
                    h,
                    vectors: n as u64,
                })
            } else {
                debug_assert_eq!(rows, k);
                Some(InputGram::Shared {
                    k,
                    h: gram::gram(&vector_major(p, k, n), n, k),
                    vectors: n as u64,
                })
            }
        }
        OpInput::Channels {
            x,
            channels,
            positions,
        } => {
            if channels > MAX_GRAM_INPUTS || channels == 0 || positions == 0 {
                return None;
            }
            Some(InputGram::Shared {
                k: channels,
                h: gram::gram(&vector_major(x, channels, positions), positions, channels),
                vectors: positions as u64,
            })
        }
        OpInput::Tokens {
            x,
            tokens,
            features,
        } => {
            if features > MAX_GRAM_INPUTS || features == 0 || tokens == 0 {
                return None;
            }
            // Token-major rows are already one vector each.
            let x: Vec<f64> = x[..tokens * features].iter().map(|&v| v as f64).collect();
            Some(InputGram::Shared {
                k: features,
                h: gram::gram(&x, tokens, features),
                vectors: tokens as u64,
            })
        }
    }
}

/// An input-major `[k, n]` f32 matrix as vector-major `[n, k]` f64 (what [`gram::gram`] reads).
fn vector_major(p: &[f32], k: usize, n: usize) -> Vec<f64> {
    let mut x = vec![0.0f64; n * k];
    for (i, row) in p[..k * n].chunks_exact(n).enumerate() {
        for (t, &v) in row.iter().enumerate() {
            x[t * k + i] = v as f64;
        }
    }
    x
}

/// What [`refine`] did to one weight.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Refinement {
    /// Output error power on the calibration inputs, `sum_o e_o^T H e_o`, with nearest rounding.
    pub nearest_error: f64,
    /// The same with GPTQ rounding.
    pub gptq_error: f64,
    /// Whether the GPTQ values were kept (only when they lower the error).
    pub applied: bool,
}

/// Re-rounds `qw` (quantized from `w[out, inp]` with nearest rounding) with GPTQ on `gram`,
/// keeping its scales; the new values replace the old only if they lower the output error on the
/// calibration inputs. Fails when `gram` does not match the weight's shape.
pub fn refine(w: &[f32], qw: &mut QuantWeight, gram: &InputGram) -> Result<Refinement> {
    let (out, inp) = (qw.out, qw.inp);
    if w.len() != out * inp || gram.k() != inp {
        return Err(Error::input(format!(
            "GPTQ: a [{out}, {inp}] weight ({} values) with a Gram matrix of {} inputs",
            w.len(),
            gram.k()
        )));
    }
    if let InputGram::PerRow { rows, .. } = gram {
        if *rows != out {
            return Err(Error::input(format!(
                "GPTQ: {rows} per-row Gram matrices for {out} output rows"
            )));
        }
    }
    let qm = ((1i32 << (qw.bits - 1)) - 1) as f64;
    let gpr = qw.groups_per_row();
    let unit = (1u32 << GROUP_SCALE_BITS) as f64;
    let scale = |o: usize, c: usize| -> f64 {
        qw.row_scale[o] as f64 * qw.group_mult[o * gpr + c / qw.group] as f64 / unit
    };
    // The rows' column orders and upper Cholesky factors of H^-1 in that order (one shared,
    // or one per row).
    let factors: Vec<(Vec<usize>, Vec<f64>)> = match gram {
        InputGram::Shared { k, h, .. } => vec![ordered_factor(h, *k)?],
        InputGram::PerRow { rows, k, h, .. } => (0..*rows)
            .into_par_iter()
            .map(|r| ordered_factor(&h[r * k * k..(r + 1) * k * k], *k))
            .collect::<Result<_>>()?,
    };
    let hessian = |o: usize| -> &[f64] {
        match gram {
            InputGram::Shared { h, .. } => h,
            InputGram::PerRow { k, h, .. } => &h[o * k * k..(o + 1) * k * k],
        }
    };
    let rows: Vec<(Vec<i16>, f64, f64)> = (0..out)
        .into_par_iter()
        .map(|o| {
            let (perm, u) = if factors.len() == 1 {
                &factors[0]
            } else {
                &factors[o]
            };
            // The row in processing order: position i holds column perm[i].
            let mut row: Vec<f64> = perm.iter().map(|&c| w[o * inp + c] as f64).collect();
            let mut q = vec![0i16; inp];
            for i in 0..inp {
                let s = scale(o, perm[i]);
                let v = if s > 0.0 {
                    (row[i] / s).round().clamp(-qm, qm)
                } else {
                    0.0
                };
                q[perm[i]] = v as i16;
                let err = (row[i] - v * s) / u[i * inp + i];
                for j in i + 1..inp {
                    row[j] -= err * u[i * inp + j];
                }
            }
            let h = hessian(o);
            let orig = &w[o * inp..(o + 1) * inp];
            let err_of = |vals: &[i16]| -> f64 {
                let e: Vec<f64> = (0..inp)
                    .map(|c| orig[c] as f64 - vals[c] as f64 * scale(o, c))
                    .collect();
                quadratic_form(h, &e)
            };
            let nearest = err_of(&qw.q[o * inp..(o + 1) * inp]);
            let gptq = err_of(&q);
            (q, nearest, gptq)
        })
        .collect();
    let nearest_error: f64 = rows.iter().map(|r| r.1).sum();
    let gptq_error: f64 = rows.iter().map(|r| r.2).sum();
    let applied = gptq_error < nearest_error;
    if applied {
        for (o, (q, _, _)) in rows.into_iter().enumerate() {
            qw.q[o * inp..(o + 1) * inp].copy_from_slice(&q);
        }
    }
    Ok(Refinement {
        nearest_error,
        gptq_error,
        applied,
    })
}

/// GPTQ's "act order": columns by decreasing input energy (the Gram diagonal, ties by index), so
/// the weights that matter most are rounded first, while the most weights remain to absorb their
/// error; and the upper Cholesky factor of `H^-1` in that order.
fn ordered_factor(h: &[f64], k: usize) -> Result<(Vec<usize>, Vec<f64>)> {
    let mut perm: Vec<usize> = (0..k).collect();
    perm.sort_by(|&a, &b| h[b * k + b].total_cmp(&h[a * k + a]).then(a.cmp(&b)));
    let mut hp = vec![0.0f64; k * k];
    for (i, &pi) in perm.iter().enumerate() {
        for (j, &pj) in perm.iter().enumerate() {
            hp[i * k + j] = h[pi * k + pj];
        }
    }
    Ok((perm, inverse_cholesky_upper(&hp, k)?))
}

/// [`refine`] for op `op` when the calibration recorded its inputs (`gram`), logging the output
/// errors; a failure keeps nearest rounding with a warning instead of failing the conversion.
pub fn refine_op(op: &str, w: &[f32], qw: &mut QuantWeight, gram: Option<&InputGram>) {
    let Some(gram) = gram else {
        return;
    };
    match refine(w, qw, gram) {
        Ok(r) => tracing::debug!(
            op,
            nearest = r.nearest_error,
            gptq = r.gptq_error,
            applied = r.applied,
            "GPTQ rounding"
        ),
        Err(e) => tracing::warn!("`{op}`: {e}; nearest rounding kept"),
    }
}

/// `e^T H e` for a row-major `[k, k]` `H`.
fn quadratic_form(h: &[f64], e: &[f64]) -> f64 {
    let k = e.len();
    (0..k)
        .map(|i| {
            let row = &h[i * k..(i + 1) * k];
            e[i] * row.iter().zip(e).map(|(a, b)| a * b).sum::<f64>()
        })
        .sum()
}

/// The upper-triangular `U` with `U^T U = (H + damp I)^-1`, `damp` = [`DAMPENING`] x mean
/// diagonal; inputs that never fired (zero diagonal) get a unit diagonal so they decouple.
/// Retries with 10x and 100x the dampening when `H` is numerically not positive definite.
fn inverse_cholesky_upper(h: &[f64], k: usize) -> Result<Vec<f64>> {
    let mean_diag = (0..k).map(|i| h[i * k + i]).sum::<f64>() / k.max(1) as f64;
    let mean_diag = if mean_diag > 0.0 { mean_diag } else { 1.0 };
    for boost in [1.0, 10.0, 100.0] {
        let mut a = h.to_vec();
        for i in 0..k {
            if a[i * k + i] <= 0.0 {
                for j in 0..k {
                    a[i * k + j] = 0.0;
                    a[j * k + i] = 0.0;
                }
                a[i * k + i] = 1.0;
            }
            a[i * k + i] += DAMPENING * boost * mean_diag;
        }
        let Some(l) = cholesky_lower(&a, k) else {
            continue;
        };
        let hinv = inverse_from_cholesky(&l, k);
        if let Some(m) = cholesky_lower(&hinv, k) {
            // U = M^T.
            let mut u = vec![0.0f64; k * k];
            for i in 0..k {
                for j in 0..=i {
                    u[j * k + i] = m[i * k + j];
                }
            }
            return Ok(u);
        }
    }
    Err(Error::input(
        "GPTQ: the input Gram matrix is not positive definite even with dampening",
    ))
}

/// Lower-triangular `L` with `L L^T = a` (row-major `[k, k]`), `None` if `a` is not positive
/// definite.
fn cholesky_lower(a: &[f64], k: usize) -> Option<Vec<f64>> {
    let mut l = vec![0.0f64; k * k];
    for i in 0..k {
        for j in 0..=i {
            let dot: f64 = (0..j).map(|p| l[i * k + p] * l[j * k + p]).sum();
            let v = a[i * k + j] - dot;
            if i == j {
                if !(v > 0.0 && v.is_finite()) {
                    return None;
                }
                l[i * k + i] = v.sqrt();
            } else {
                l[i * k + j] = v / l[j * k + j];
            }
        }
    }
    Some(l)
}

/// `(L L^T)^-1 = L^-T L^-1` from the lower Cholesky factor.
fn inverse_from_cholesky(l: &[f64], k: usize) -> Vec<f64> {
    // L^-1 by forward substitution, column by column.
    let mut li = vec![0.0f64; k * k];
    for c in 0..k {
        for i in c..k {
            let mut v = if i == c { 1.0 } else { 0.0 };
            for p in c..i {
                v -= l[i * k + p] * li[p * k + c];
            }
            li[i * k + c] = v / l[i * k + i];
        }
    }
    let mut inv = vec![0.0f64; k * k];
    for i in 0..k {
        for j in 0..=i {
            // (L^-T L^-1)[i, j] = sum_p L^-1[p, i] L^-1[p, j], p >= max(i, j) = i.
            let v: f64 = (i..k).map(|p| li[p * k + i] * li[p * k + j]).sum();
            inv[i * k + j] = v;
            inv[j * k + i] = v;
        }
    }
    inv
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::conv::{conv2d, Conv2dSpec, Pad2d};
    use crate::quant::params::{quantize_weight, Granularity, WeightRange};
    use crate::tensor::Tensor;
    use rand::{Rng, SeedableRng};

    fn rng(seed: u64) -> rand_chacha::ChaCha8Rng {
        rand_chacha::ChaCha8Rng::seed_from_u64(seed)
    }

    /// Smooth, correlated "image" inputs: neighbouring values close, like pixels.
    fn smooth(c: usize, h: usize, w: usize, seed: u64) -> Tensor {
        let mut r = rng(seed);
        let base: Vec<f32> = (0..c).map(|_| r.random_range(-1.0..1.0)).collect();
        let (fx, fy) = (r.random_range(0.05..0.3), r.random_range(0.05..0.3));
        let data = (0..c * h * w)
            .map(|i| {
                let (ch, y, x) = (i / (h * w), (i / w) % h, i % w);
                base[ch]
                    + (fx * x as f32 + ch as f32).sin() * (fy * y as f32).cos()
                    + 0.05 * r.random_range(-1.0f32..1.0)
            })
            .collect();
        Tensor::from_parts(&[c, h, w], data)
    }

    fn random_weight(out: usize, inp: usize, seed: u64) -> Vec<f32> {
        let mut r = rng(seed);
        (0..out * inp).map(|_| r.random_range(-1.0..1.0)).collect()
    }

    #[test]
    fn conv_gram_is_the_patch_products() {
        let x = smooth(2, 5, 6, 1);
        let spec = Conv2dSpec::new(2, 1, 1, Pad2d::symmetric(1));
        let mut set = GramSet::default();
        set.observe(
            "c",
            OpInput::Conv {
                x: &x,
                kernel: (3, 3),
                spec,
            },
        );
        let InputGram::Shared { k, h, vectors } = set.get("c").unwrap() else {
            panic!("a regular conv has one shared Gram matrix");
        };
        assert_eq!((*k, *vectors), (18, 3 * 3));
        // Entry (i, j) = sum over output positions of input (i) * input (j), read directly.
        let at = |ch: usize, y: isize, xx: isize| -> f64 {
            if y < 0 || xx < 0 || y >= 5 || xx >= 6 {
                0.0
            } else {
                x.data()[ch * 30 + y as usize * 6 + xx as usize] as f64
            }
        };
        for i in 0..18 {
            for j in 0..18 {
                let (ci, ki) = (i / 9, i % 9);
                let (cj, kj) = (j / 9, j % 9);
                let mut want = 0.0;
                for oy in 0..3isize {
                    for ox in 0..3isize {
                        let a = at(
                            ci,
                            oy * 2 - 1 + (ki / 3) as isize,
                            ox * 2 - 1 + (ki % 3) as isize,
                        );
                        let b = at(
                            cj,
                            oy * 2 - 1 + (kj / 3) as isize,
                            ox * 2 - 1 + (kj % 3) as isize,
                        );
                        want += a * b;
                    }
                }
                assert!((h[i * 18 + j] - want).abs() < 1e-9, "({i}, {j})");
            }
        }
    }

    #[test]
    fn gptq_lowers_conv_output_error_on_held_out_inputs() {
        let (c_in, c_out, k) = (3, 8, 3);
        let spec = Conv2dSpec::new(1, 1, 1, Pad2d::symmetric(1));
        let weight = random_weight(c_out, c_in * k * k, 7);
        let wt = Tensor::from_parts(&[c_out, c_in, k, k], weight.clone());
        let mut set = GramSet::default();
        for s in 0..4 {
            let x = smooth(c_in, 16, 16, 100 + s);
            set.observe(
                "c",
                OpInput::Conv {
                    x: &x,
                    kernel: (k, k),
                    spec,
                },
            );
        }
        let nearest = quantize_weight(
            &weight,
            c_out,
            c_in * k * k,
            4,
            Granularity::PerChannel,
            WeightRange::MinMax,
        );
        let mut refined = nearest.clone();
        let r = refine(&weight, &mut refined, set.get("c").unwrap()).unwrap();
        assert!(r.applied && r.gptq_error < r.nearest_error, "{r:?}");
        assert!(refined.q.iter().all(|&v| (-7..=7).contains(&v)));
        // The gain carries over to inputs the Gram matrix never saw.
        let x = smooth(c_in, 16, 16, 999);
        let want = conv2d(&x, &wt, None, spec);
        let err = |q: &QuantWeight| -> f64 {
            let wq = Tensor::from_parts(&[c_out, c_in, k, k], q.dequantize());
            let y = conv2d(&x, &wq, None, spec);
            y.data()
                .iter()
                .zip(want.data())
                .map(|(a, b)| ((a - b) as f64).powi(2))
                .sum()
        };
        let (e_near, e_gptq) = (err(&nearest), err(&refined));
        println!("held-out output error: nearest {e_near:.4e}, GPTQ {e_gptq:.4e}");
        assert!(e_gptq < 0.7 * e_near, "nearest {e_near}, GPTQ {e_gptq}");
    }

    #[test]
    fn uncorrelated_inputs_give_nearest_rounding() {
        // A diagonal Gram matrix couples no columns: GPTQ is nearest rounding.
        let (out, inp) = (5, 12);
        let w = random_weight(out, inp, 3);
        let mut h = vec![0.0f64; inp * inp];
        for i in 0..inp {
            h[i * inp + i] = 1.0 + i as f64;
        }
        let gram = InputGram::Shared {
            k: inp,
            h,
            vectors: 1,
        };
        let nearest = quantize_weight(
            &w,
            out,
            inp,
            8,
            Granularity::PerChannel,
            WeightRange::MinMax,
        );
        let mut refined = nearest.clone();
        let r = refine(&w, &mut refined, &gram).unwrap();
        assert_eq!(refined.q, nearest.q);
        assert!(!r.applied);
    }

    #[test]
    fn depthwise_grams_are_per_channel_and_refine_per_row() {
        let c = 4;
        let spec = Conv2dSpec::new(1, 1, c, Pad2d::symmetric(1));
        let x = smooth(c, 10, 10, 5);
        let mut set = GramSet::default();
        set.observe(
            "dw",
            OpInput::Conv {
                x: &x,
                kernel: (3, 3),
                spec,
            },
        );
        let gram = set.get("dw").unwrap();
        let InputGram::PerRow { rows, k, .. } = gram else {
            panic!("depthwise grams are per row");
        };
        assert_eq!((*rows, *k), (c, 9));
        let w = random_weight(c, 9, 11);
        let mut qw = quantize_weight(&w, c, 9, 4, Granularity::PerChannel, WeightRange::MinMax);
        let r = refine(&w, &mut qw, gram).unwrap();
        assert!(r.gptq_error <= r.nearest_error);
        // Shape mismatches are errors, not panics.
        let mut wrong = quantize_weight(
            &w[..8 * 4],
            4,
            8,
            4,
            Granularity::PerChannel,
            WeightRange::MinMax,
        );
        assert!(refine(&w[..32], &mut wrong, gram).is_err());
    }

    #[test]
    fn token_and_channel_inputs_agree() {
        // The same vectors given token-major or channel-major give the same Gram matrix.
        let (t, f) = (7, 5);
        let tokens: Vec<f32> = random_weight(t, f, 21);
        let mut channels = vec![0.0f32; f * t];
        for i in 0..t {
            for j in 0..f {
                channels[j * t + i] = tokens[i * f + j];
            }
        }
        let mut a = GramSet::default();
        a.observe(
            "l",
            OpInput::Tokens {
                x: &tokens,
                tokens: t,
                features: f,
            },
        );
        let mut b = GramSet::default();
        b.observe(
            "l",
            OpInput::Channels {
                x: &channels,
                channels: f,
                positions: t,
            },
        );
        assert_eq!(a, b);
        // Merging adds.
        let mut m = a.clone();
        m.merge(&b).unwrap();
        let (InputGram::Shared { h: hm, vectors, .. }, InputGram::Shared { h: ha, .. }) =
            (m.get("l").unwrap(), a.get("l").unwrap())
        else {
            panic!("shared");
        };
        assert_eq!(*vectors, 2 * t as u64);
        assert!(hm.iter().zip(ha).all(|(x, y)| (x - 2.0 * y).abs() < 1e-12));
    }

    #[test]
    fn inverse_cholesky_factor_inverts() {
        let k = 6;
        let mut r = rng(9);
        let a: Vec<f64> = (0..k * 10).map(|_| r.random_range(-1.0..1.0)).collect();
        let h = gram::gram_reference(&a, k, 10);
        let u = inverse_cholesky_upper(&h, k).unwrap();
        // (U^T U) (H + damp I) = I.
        let damp = DAMPENING * (0..k).map(|i| h[i * k + i]).sum::<f64>() / k as f64;
        for i in 0..k {
            for j in 0..k {
                let v: f64 = (0..k)
                    .map(|p| {
                        let utu: f64 = (0..k).map(|q| u[q * k + i] * u[q * k + p]).sum();
                        utu * (h[p * k + j] + if p == j { damp } else { 0.0 })
                    })
                    .sum();
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((v - want).abs() < 1e-9, "({i}, {j}) = {v}");
            }
        }
    }
}
