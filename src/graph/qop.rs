//! The integer ops of a lowered graph: each float [`super::Op`] becomes one prepared integer op
//! from [`crate::quant::ops`] (multipliers, tables and integer weights computed at conversion
//! time by `quant::lower`), plus the table / requantize steps integer arithmetic needs.

use super::StateId;
use crate::quant::arith::Multiplier;
use crate::quant::ops::attention::QAttention;
use crate::quant::ops::conv::QConv2d;
use crate::quant::ops::conv1d::QCausalConv1d;
use crate::quant::ops::elementwise::{QAdd, QChannelScale, QMul};
use crate::quant::ops::embedding::QEmbedding;
use crate::quant::ops::linear::QLinear;
use crate::quant::ops::lut::QLut;
use crate::quant::ops::norm::{QLayerNorm, QRmsNorm, QRmsNorm2d};
use crate::quant::ops::pool::{QAvgPool2d, QConcat, QResizeBilinear, QUpsampleNearest};
use crate::quant::ops::rope::QRope;
use crate::quant::ops::tokens::QClsPosEmbed;
use crate::quant::params::ActQuant;
use serde::{Deserialize, Serialize};

#[allow(clippy::large_enum_variant)] // one per node; boxing buys nothing
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum QOp {
    Embedding(QEmbedding),
    Linear(QLinear),
    /// A linear layer without bias whose weight is the table of the embedding node `table` (a
    /// tied output projection): per-row multipliers for `x -> y`.
    TiedLinear {
        table: usize,
        #[serde(with = "crate::artifact::array")]
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
    /// Unmasked attention on token rows (the vision MQA).
    Attention(QAttention),
    Conv2d(QConv2d),
    RmsNorm2d(QRmsNorm2d),
    ChannelScale(QChannelScale),
    /// A 1x1 conv from a `[C, H, W]` map to `[H * W, D]` tokens: the map's tokens through a
    /// linear layer.
    PointwiseToTokens(QLinear),
    /// A 1x1 conv from `[h * w, D]` tokens to a `[C, h, w]` map.
    PointwiseFromTokens {
        linear: QLinear,
        h: usize,
        w: usize,
    },
    ResizeNearest(QUpsampleNearest),
    ResizeBilinear(QResizeBilinear),
    AvgPool(QAvgPool2d),
    Concat(QConcat),
    /// `[C, H, W] -> [H * W, C]`, same quantization.
    ToTokens,
    /// `torch.nn.LayerNorm` over the last dimension.
    LayerNorm(QLayerNorm),
    /// Rows `start..start + len` of `[T, D]` tokens, same quantization.
    SliceRows {
        start: usize,
        len: usize,
    },
    /// The class row prepended and position embeddings added: `[N, D] -> [N + 1, D]`.
    ClsPosEmbed(QClsPosEmbed),
    /// InternVL's pixel shuffle on the `[h * w, C]` tokens of an `h x w` grid: `[(h / scale) *
    /// (w / scale), scale^2 * C]`, same quantization (`crate::ops::tokens::pixel_shuffle`).
    PixelShuffle {
        h: usize,
        w: usize,
        scale: usize,
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
            QOp::Attention(_) => "attention",
            QOp::Conv2d(_) => "conv2d",
            QOp::RmsNorm2d(_) => "rms_norm_2d",
            QOp::ChannelScale(_) => "channel_scale",
            QOp::PointwiseToTokens(_) => "pointwise_to_tokens",
            QOp::PointwiseFromTokens { .. } => "pointwise_from_tokens",
            QOp::ResizeNearest(_) => "resize_nearest",
            QOp::ResizeBilinear(_) => "resize_bilinear",
            QOp::AvgPool(_) => "avg_pool",
            QOp::Concat(_) => "concat",
            QOp::ToTokens => "to_tokens",
            QOp::LayerNorm(_) => "layer_norm",
            QOp::SliceRows { .. } => "slice_rows",
            QOp::ClsPosEmbed(_) => "cls_pos_embed",
            QOp::PixelShuffle { .. } => "pixel_shuffle",
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
