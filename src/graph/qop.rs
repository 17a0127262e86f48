//! The integer ops of a lowered graph: each float [`super::Op`] becomes one prepared integer op
//! from [`crate::quant::ops`] (multipliers, tables and integer weights computed at conversion
//! time by `quant::lower`), plus the table / requantize steps integer arithmetic needs.

use super::StateId;
use crate::quant::arith::Multiplier;
use crate::quant::ops::attention::QAttention;
use crate::quant::ops::conv1d::QCausalConv1d;
use crate::quant::ops::elementwise::{QAdd, QMul};
use crate::quant::ops::embedding::QEmbedding;
use crate::quant::ops::linear::QLinear;
use crate::quant::ops::lut::QLut;
use crate::quant::ops::norm::QRmsNorm;
use crate::quant::ops::rope::QRope;
use crate::quant::params::ActQuant;
use serde::{Deserialize, Serialize};

#[allow(clippy::large_enum_variant)] // one per node; boxing buys nothing
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QOp {
    Embedding(QEmbedding),
    Linear(QLinear),
    /// A linear layer without bias whose weight is the table of the embedding node `table` (a
    /// tied output projection): per-row multipliers for `x -> y`.
    TiedLinear {
        table: usize,
        mult: Vec<Multiplier>,
        x: ActQuant,
        y: ActQuant,
    },
    RmsNorm(QRmsNorm),
    /// `x[..., start..start + len]`, same quantization.
    Slice {
        start: usize,
        len: usize,
    },
    Add(QAdd),
    Mul(QMul),
    /// An activation as a lookup table.
    Lut(QLut),
    CausalConv1d {
        conv: QCausalConv1d,
        state: StateId,
    },
    Rope {
        rope: QRope,
        heads: usize,
    },
    CachedAttention {
        attn: QAttention,
        k: StateId,
        v: StateId,
    },
}

impl QOp {
    pub fn kind(&self) -> &'static str {
        match self {
            QOp::Embedding(_) => "embedding",
            QOp::Linear(_) => "linear",
            QOp::TiedLinear { .. } => "tied_linear",
            QOp::RmsNorm(_) => "rms_norm",
            QOp::Slice { .. } => "slice",
            QOp::Add(_) => "add",
            QOp::Mul(_) => "mul",
            QOp::Lut(_) => "lut",
            QOp::CausalConv1d { .. } => "causal_conv1d",
            QOp::Rope { .. } => "rope",
            QOp::CachedAttention { .. } => "cached_attention",
        }
    }

    /// Whether the op reads the sequence position (and so advances it).
    pub fn uses_position(&self) -> bool {
        matches!(
            self,
            QOp::CausalConv1d { .. } | QOp::Rope { .. } | QOp::CachedAttention { .. }
        )
    }
}
