//! Small layers shared by the model files: a PyTorch-style `Linear` loaded from checkpoint keys.

use crate::error::Result;
use crate::ops::gemm;
use crate::tensor::Tensor;
use crate::weights::Weights;

/// `nn.Linear(in_features, out_features)`: weight `[out, in]`, optional bias `[out]`.
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    /// Loads `{w}.weight` (and `{w}.bias` when `bias`), checking shapes.
    pub fn load(w: &Weights, in_features: usize, out_features: usize, bias: bool) -> Result<Self> {
        let weight = w.get("weight", &[out_features, in_features])?;
        let bias = if bias {
            Some(w.get("bias", &[out_features])?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }

    pub fn in_features(&self) -> usize {
        self.weight.dim(1)
    }
    pub fn out_features(&self) -> usize {
        self.weight.dim(0)
    }
    pub fn param_count(&self) -> usize {
        self.weight.numel() + self.bias.as_ref().map_or(0, |b| b.numel())
    }

    /// `x[T, in] -> [T, out]`.
    pub fn forward(&self, x: &Tensor) -> Tensor {
        let (t, i, o) = (x.dim(0), self.in_features(), self.out_features());
        assert_eq!(x.dim(1), i, "Linear input width");
        let y = gemm::linear(
            x.data(),
            t,
            self.weight.data(),
            o,
            i,
            self.bias.as_ref().map(|b| b.data()),
        );
        Tensor::from_parts(&[t, o], y)
    }
}
