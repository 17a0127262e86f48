//! Building [`QEmbedding`] from a float embedding table.

use super::linear::{check_quant, multiplier};
use crate::error::{Error, Result};
use crate::quant::ops::embedding::QEmbedding;
use crate::quant::ops::linear::QMatrix;
use crate::quant::params::{
    quantize_weight, ActQuant, Granularity, QuantWeight, WeightRange, GROUP_SCALE_BITS,
};

/// A `[vocab, dim]` table quantized per row (`Granularity::PerChannel`) or per group of a row,
/// `wbits`-wide symmetric, producing activations in `y`.
pub fn embedding(
    table: &[f32],
    vocab: usize,
    dim: usize,
    wbits: u32,
    gran: Granularity,
    range: WeightRange,
    y: ActQuant,
) -> Result<QEmbedding> {
    if table.len() != vocab * dim || dim == 0 {
        return Err(Error::input(format!(
            "embedding: table of {} values for [{vocab}, {dim}]",
            table.len()
        )));
    }
    if !(2..=16).contains(&wbits) {
        return Err(Error::input(format!(
            "embedding: bit width {wbits} not supported (2..=16)"
        )));
    }
    if gran == Granularity::PerTensor {
        return Err(Error::input(
            "embedding: tables are quantized per row (PerChannel) or per group",
        ));
    }
    if table.iter().any(|v| !v.is_finite()) {
        return Err(Error::input("embedding: non-finite table value"));
    }
    let qw = quantize_weight(table, vocab, dim, wbits, gran, range);
    embedding_from_quantized(&qw, y)
}

/// [`QEmbedding`] from an already quantized `[vocab, dim]` table.
pub fn embedding_from_quantized(qw: &QuantWeight, y: ActQuant) -> Result<QEmbedding> {
    check_quant("QEmbedding", "output", &y)?;
    let unit = (1u64 << GROUP_SCALE_BITS) as f64;
    let mult = qw
        .row_scale
        .iter()
        .map(|&s| multiplier("QEmbedding", s as f64 / unit / y.scale as f64))
        .collect::<Result<Vec<_>>>()?;
    QEmbedding::new(QMatrix::from_quant_weight(qw)?, mult, y)
}
