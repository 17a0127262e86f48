//! Integer token embedding: a `[vocab, dim]` table quantized per row (symmetric int16 / int8 / int4,
//! optionally per group), looked up into `[T, dim]` activations:
//! `y[t, d] = requantize(q[id, d] * group_mult[id, g(d)], mult[id], z_y)` with
//! `mult[id] = row_scale[id] / 2^GROUP_SCALE_BITS / s_y`.

use super::linear::{check_act, QMatrix};
use crate::error::{Error, Result};
use crate::quant::arith::{check_multipliers, check_reduction, requantize, Multiplier};
use crate::quant::params::ActQuant;
use crate::quant::tensor::QTensor;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QEmbedding {
    /// `[vocab, dim]`.
    pub table: QMatrix,
    /// Per row: `row_scale / 2^GROUP_SCALE_BITS / s_y`.
    #[serde(with = "crate::artifact::array")]
    pub mult: Vec<Multiplier>,
    /// Output quantization.
    pub y: ActQuant,
}

impl QEmbedding {
    pub fn new(table: QMatrix, mult: Vec<Multiplier>, y: ActQuant) -> Result<Self> {
        let e = Self { table, mult, y };
        e.validate()?;
        Ok(e)
    }

    /// Checks everything [`Self::forward`] relies on: a valid table, the output activation, and
    /// one valid multiplier per row.
    pub fn validate(&self) -> Result<()> {
        check_act("QEmbedding", "output", &self.y)?;
        self.table
            .validate()
            .map_err(|e| Error::input(format!("QEmbedding: {e}")))?;
        if self.mult.len() != self.table.out {
            return Err(Error::input(format!(
                "QEmbedding: {} multipliers for {} rows",
                self.mult.len(),
                self.table.out
            )));
        }
        check_multipliers("QEmbedding", "multiplier", &self.mult)?;
        check_reduction("QEmbedding", 1, 1, self.table.effective_abs_max(), 0)
    }

    pub fn vocab(&self) -> usize {
        self.table.out
    }

    pub fn dim(&self) -> usize {
        self.table.inp
    }

    /// `[ids.len(), dim]` in [`Self::y`]; an id outside the vocabulary is an input error.
    pub fn forward(&self, ids: &[u32]) -> Result<QTensor> {
        let (vocab, dim) = (self.vocab(), self.dim());
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(Error::input(format!(
                "token id {bad} is outside the embedding table's vocabulary of {vocab}"
            )));
        }
        let mut data = vec![0i16; ids.len() * dim];
        let mut row = vec![0i16; dim];
        let group = self.table.group;
        for (out, &id) in data.chunks_exact_mut(dim.max(1)).zip(ids) {
            let id = id as usize;
            self.table.row_into(id, &mut row);
            let gm = self.table.row_group_mult(id);
            for (d, (o, &q)) in out.iter_mut().zip(&row).enumerate() {
                let acc = q as i64 * gm[d / group] as i64;
                *o = requantize(acc, self.mult[id], self.y.zero_point, self.y.bits) as i16;
            }
        }
        Ok(QTensor::new(&[ids.len(), dim], data, self.y))
    }
}

#[cfg(test)]
#[allow(clippy::float_arithmetic)]
mod tests {
    use super::super::linear::testutil::*;
    use crate::quant::params::{quantize_weight, ActQuant, Granularity, WeightRange};
    use crate::quant::prepare::embedding::embedding;

    #[test]
    fn embedding_within_one_step_of_dequantized_rows() {
        let (vocab, dim) = (50, 24);
        let mut rng = Lcg::new(41);
        let table: Vec<f32> = (0..vocab * dim)
            .map(|i| rng.uniform(-1.0, 1.0) * (1 + i / dim % 5) as f32)
            .collect();
        let ids: Vec<u32> = (0..40)
            .map(|_| rng.int(0, vocab as i64 - 1) as u32)
            .collect();
        let mut worst = 0.0f64;
        for (wbits, gran) in [
            (8, Granularity::PerChannel),
            (4, Granularity::PerChannel),
            (4, Granularity::PerGroup(8)),
            (8, Granularity::PerGroup(5)),
            (16, Granularity::PerChannel),
        ] {
            let qw = quantize_weight(&table, vocab, dim, wbits, gran, WeightRange::MinMax);
            let deq = deq_weight(&qw);
            let r: Vec<f64> = ids
                .iter()
                .flat_map(|&id| deq[id as usize * dim..(id as usize + 1) * dim].to_vec())
                .collect();
            for ybits in [8, 16] {
                // Shrunk: the largest rows saturate.
                let yq = out_quant(&r, ybits, 0.8);
                assert!(ybits == 16 || yq.zero_point != 0);
                let op =
                    embedding(&table, vocab, dim, wbits, gran, WeightRange::MinMax, yq).unwrap();
                let y = op.forward(&ids).unwrap();
                assert_eq!(y.shape, vec![ids.len(), dim]);
                let what = format!("embedding w{wbits} {gran:?} y{ybits}");
                worst = worst.max(assert_within_one_step(&what, &y.data, &r, &yq));
            }
        }
        println!("QEmbedding: largest error {worst:.4} output steps");
    }

    #[test]
    fn out_of_range_ids_are_input_errors() {
        let y = ActQuant::from_range(-1.0, 1.0, 16, true);
        let op = embedding(
            &[0.3; 12],
            3,
            4,
            8,
            Granularity::PerChannel,
            WeightRange::MinMax,
            y,
        )
        .unwrap();
        let err = op.forward(&[0, 3]).unwrap_err();
        assert!(matches!(err, crate::error::Error::Input(_)));
        assert!(err.to_string().contains("token id 3"), "{err}");
        assert_eq!(op.forward(&[]).unwrap().shape, vec![0, 4]);
        assert_eq!(
            op.forward(&[2]).unwrap().data,
            vec![y.quantize(0.3) as i16; 4]
        );
    }
}
