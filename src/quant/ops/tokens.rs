//! Integer ops on token rows: [`QClsPosEmbed`] (the ViT embeddings: the CLS row prepended, then
//! absolute position embeddings added). Row slices and InternVL's pixel shuffle move integers
//! without arithmetic and use the generic `crate::ops::tokens` functions directly.
//!
//! With `xc = q - zp_x`, `F =` [`OUT_FRAC_BITS`] and the constants in output steps with `F`
//! fractional bits (`c16 = round((cls + pos[0]) / s_y * 2^F)`, `p16_r = round(pos[r] / s_y *
//! 2^F)`, built at conversion):
//!
//! ```text
//! y[0, j]     = sat(round(c16_j / 2^F) + zp_y)
//! y[1 + n, j] = sat(round((xc[n, j] * (s_x / s_y * 2^F) + p16_{1 + n, j}) / 2^F) + zp_y)
//! ```
//!
//! The input's rescale is one [`Multiplier`] rounded to `2^-F` steps, the sum is rounded once more
//! ([`requantize_frac`]): within `0.5 + 2^-16 + 2^-31 |x / s_y|` output steps of the exact value.

use super::linear::check_act;
use crate::error::{Error, Result};
use crate::quant::arith::{requantize_frac, size_product, Multiplier, OUT_FRAC_BITS};
use crate::quant::params::ActQuant;
use crate::quant::tensor::QTensor;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// The largest `|value|` of a [`QClsPosEmbed`] constant: `2^40` output steps (with
/// [`OUT_FRAC_BITS`] fractional bits), far beyond any output yet far from overflowing `i64`.
pub const EMBED_CONST_MAX: i64 = 1 << (40 + OUT_FRAC_BITS);

/// Integer ViT embeddings on `[tokens, dim]` patch rows: `[tokens + 1, dim]` (see the module
/// docs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QClsPosEmbed {
    /// Patch rows of the input (`N`).
    pub tokens: usize,
    /// Row width (`D`).
    pub dim: usize,
    pub x: ActQuant,
    pub y: ActQuant,
    /// `s_x / s_y * 2^OUT_FRAC_BITS`.
    pub mult: Multiplier,
    /// Output row 0: `round((cls + pos[0]) / s_y * 2^OUT_FRAC_BITS)`, `dim` values.
    #[serde(with = "crate::artifact::array")]
    pub cls: Vec<i64>,
    /// Position embeddings of rows `1..=tokens`: `round(pos / s_y * 2^OUT_FRAC_BITS)`, `tokens *
    /// dim` values (none without position embeddings).
    #[serde(with = "crate::artifact::array")]
    pub pos: Option<Vec<i64>>,
}

impl QClsPosEmbed {
    /// Checks the activations, the multiplier, positive sizes whose output fits `usize`, the
    /// lengths of the constants and their magnitude (at most [`EMBED_CONST_MAX`]; the rescaled
    /// input saturates `i64` only where the output saturates anyway).
    pub fn validate(&self) -> Result<()> {
        check_act("QClsPosEmbed", "input", &self.x)?;
        check_act("QClsPosEmbed", "output", &self.y)?;
        let (n, d) = (self.tokens, self.dim);
        if n == 0 || d == 0 {
            return Err(Error::input(format!(
                "QClsPosEmbed: {n} tokens of width {d}"
            )));
        }
        let rows = n
            .checked_add(1)
            .ok_or_else(|| Error::input("QClsPosEmbed: token count overflows"))?;
        size_product("QClsPosEmbed output", &[rows, d])?;
        if self.cls.len() != d || self.pos.as_ref().is_some_and(|p| p.len() != n * d) {
            return Err(Error::input(format!(
                "QClsPosEmbed: {} class values and {:?} position values for {n} tokens of width {d}",
                self.cls.len(),
                self.pos.as_ref().map(Vec::len)
            )));
        }
        self.mult
            .check()
            .map_err(|e| Error::input(format!("QClsPosEmbed: multiplier: {e}")))?;
        if let Some(v) = self
            .cls
            .iter()
            .chain(self.pos.iter().flatten())
            .find(|v| v.unsigned_abs() > EMBED_CONST_MAX as u64)
        {
            return Err(Error::input(format!(
                "QClsPosEmbed: constant {v} outside +-2^{}",
                40 + OUT_FRAC_BITS
            )));
        }
        Ok(())
    }

    /// `[tokens, dim]` -> `[tokens + 1, dim]`, rows in parallel.
    pub fn forward(&self, x: &QTensor) -> QTensor {
        assert_eq!(x.q, self.x, "QClsPosEmbed: input quantization differs");
        let (n, d) = (self.tokens, self.dim);
        assert_eq!(
            x.shape,
            [n, d],
            "QClsPosEmbed: input {:?}, expected [{n}, {d}]",
            x.shape
        );
        let (zx, zy, by) = (self.x.zero_point as i64, self.y.zero_point, self.y.bits);
        let mut y = vec![0i16; (n + 1) * d];
        let (head, rest) = y.split_at_mut(d);
        for (o, &c) in head.iter_mut().zip(&self.cls) {
            *o = requantize_frac(c, OUT_FRAC_BITS, zy, by) as i16;
        }
        rest.par_chunks_mut(d)
            .zip(x.data.par_chunks(d))
            .enumerate()
            .for_each(|(r, (o, xr))| {
                let pos = self.pos.as_ref().map(|p| &p[r * d..(r + 1) * d]);
                for (j, (o, &q)) in o.iter_mut().zip(xr).enumerate() {
                    let v = self.mult.apply(q as i64 - zx);
                    let v = v.saturating_add(pos.map_or(0, |p| p[j]));
                    *o = requantize_frac(v, OUT_FRAC_BITS, zy, by) as i16;
                }
            });
        QTensor::new(&[n + 1, d], y, self.y)
    }
}

#[cfg(test)]
#[allow(clippy::float_arithmetic)]
mod tests {
    use super::super::linear::testutil::*;
    use super::*;
    use crate::quant::arith::{qmax, qmin};
    use crate::quant::prepare::tokens::cls_pos_embed;

    /// The float op (`exec::float`'s `ClsPosEmbed`) on dequantized inputs, in `f64`.
    fn reference(x: &[f64], cls: &[f32], pos: Option<&[f32]>) -> Vec<f64> {
        let mut y: Vec<f64> = cls
            .iter()
            .map(|&v| v as f64)
            .chain(x.iter().copied())
            .collect();
        if let Some(p) = pos {
            y.iter_mut().zip(p).for_each(|(v, &p)| *v += p as f64);
        }
        y
    }

    #[test]
    fn cls_pos_embed_within_half_a_step_and_saturates() {
        let mut rng = Lcg::new(31);
        let mut lines = Vec::new();
        for &(n, d) in &[(16usize, 8usize), (9, 5), (1, 1), (49, 33)] {
            let cls = rng.floats(d, -1.0, 1.0);
            let pos = rng.floats((n + 1) * d, -0.5, 0.5);
            for (xq, with_pos) in [
                (ActQuant::from_range(-3.0, 3.0, 16, true), true),
                (ActQuant::from_range(-2.0, 5.0, 8, false), true),
                (ActQuant::from_range(-0.01, 0.01, 16, true), false),
            ] {
                let mut xi = rng.ints(n * d, &xq);
                xi[0] = qmin(xq.bits) as i16;
                xi[n * d - 1] = qmax(xq.bits) as i16;
                let x = deq(&xi, &xq);
                let p = with_pos.then_some(pos.as_slice());
                let r = reference(&x, &cls, p);
                for ybits in [8, 16] {
                    // Shrunk so the extremes saturate.
                    let yq = out_quant(&r, ybits, 0.8);
                    let op = cls_pos_embed(&cls, p, n, xq, yq).unwrap();
                    let y = op.forward(&QTensor::new(&[n, d], xi.clone(), xq));
                    assert_eq!(y.shape, [n + 1, d]);
                    let what = format!("cls_pos_embed {n}x{d} {xq:?} pos {with_pos} -> A{ybits}");
                    let e = assert_within_one_step(&what, &y.data, &r, &yq);
                    assert!(e <= 0.5 + 1e-4, "{what}: {e}");
                    lines.push(format!("{what}: max error {e:.5} steps"));
                }
            }
        }
        for l in lines {
            println!("{l}");
        }
    }

    #[test]
    fn cls_row_is_exact_and_real_zero_inputs_give_the_embeddings() {
        // Output scale 1/64: every constant a multiple of 1/64 is exact.
        let yq = ActQuant {
            scale: 1.0 / 64.0,
            zero_point: 0,
            bits: 16,
        };
        let xq = ActQuant::from_range(-1.0, 2.0, 8, false);
        let (n, d) = (3, 2);
        let cls = [0.25f32, -1.5];
        let pos: Vec<f32> = (0..(n + 1) * d).map(|i| i as f32 / 8.0 - 0.25).collect();
        let op = cls_pos_embed(&cls, Some(&pos), n, xq, yq).unwrap();
        let x = QTensor::new(&[n, d], vec![xq.zero_point as i16; n * d], xq);
        let y = op.forward(&x);
        let want: Vec<i16> = cls
            .iter()
            .chain(&[0.0; 6])
            .zip(&pos)
            .map(|(&c, &p)| ((c + p) * 64.0) as i16)
            .collect();
        assert_eq!(y.data, want);
    }

    #[test]
    fn bad_sizes_and_constants_are_refused() {
        let q = ActQuant::from_range(-1.0, 1.0, 16, true);
        assert!(cls_pos_embed(&[0.0; 4], None, 0, q, q).is_err());
        assert!(cls_pos_embed(&[0.0; 4], Some(&[0.0; 7]), 1, q, q).is_err());
        assert!(cls_pos_embed(&[f32::NAN; 4], None, 2, q, q).is_err());
        let tiny = ActQuant {
            scale: 1e-30,
            zero_point: 0,
            bits: 16,
        };
        assert!(cls_pos_embed(&[1.0; 4], None, 2, q, tiny).is_err());
        let mut op = cls_pos_embed(&[0.0; 4], None, 2, q, q).unwrap();
        op.pos = Some(vec![0; 7]);
        assert!(op.validate().is_err());
        op.pos = Some(vec![EMBED_CONST_MAX + 1; 8]);
        assert!(op.validate().is_err());
    }
}
