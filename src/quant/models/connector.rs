//! Integer connector: the twin of [`crate::models::autoneural::MultiModalProjector`]
//! (`multi_modal_projector.linear_1` -> `.act` -> `.linear_2`), on `[tokens, C]` rows.

use super::mobilenetv5::emit;
use crate::error::{Error, Result};
use crate::observe::Observer;
use crate::quant::ops::linear::QLinear;
use crate::quant::ops::lut::QLut;
use crate::quant::params::ActQuant;
use crate::quant::tensor::QTensor;
use serde::{Deserialize, Serialize};

/// Observation prefix of the connector (as in the float path).
pub const PROJECTOR_NAME: &str = "multi_modal_projector";

/// `linear_1` (with bias) -> activation table (GELU erf / tanh) -> `linear_2` (with bias).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QProjector {
    pub linear_1: QLinear,
    pub act: QLut,
    pub linear_2: QLinear,
}

impl QProjector {
    /// The quantization the `[tokens, C]` input rows must be in.
    pub fn input_quant(&self) -> ActQuant {
        self.linear_1.x
    }

    /// The quantization of the `[tokens, hidden]` output.
    pub fn output_quant(&self) -> ActQuant {
        self.linear_2.y
    }

    pub fn in_features(&self) -> usize {
        self.linear_1.in_features()
    }

    pub fn out_features(&self) -> usize {
        self.linear_2.out_features()
    }

    /// `[tokens, C]` in [`Self::input_quant`] -> `[tokens, hidden]` in [`Self::output_quant`];
    /// reports `multi_modal_projector.{linear_1, act, linear_2}` dequantized.
    pub fn forward(&self, x: &QTensor, obs: &mut dyn Observer) -> Result<QTensor> {
        if x.shape.len() != 2 || x.shape[1] != self.in_features() {
            return Err(Error::input(format!(
                "connector input must be [tokens, {}], got {:?}",
                self.in_features(),
                x.shape
            )));
        }
        if x.q != self.input_quant() {
            return Err(Error::input(format!(
                "connector input is quantized as {:?}, expected {:?}",
                x.q,
                self.input_quant()
            )));
        }
        let mut h = self.linear_1.forward(x);
        emit(obs, &format!("{PROJECTOR_NAME}.linear_1"), &h);
        self.act.apply_inplace(&mut h.data);
        h.q = self.act.y;
        emit(obs, &format!("{PROJECTOR_NAME}.act"), &h);
        let y = self.linear_2.forward(&h);
        emit(obs, &format!("{PROJECTOR_NAME}.linear_2"), &y);
        Ok(y)
    }
}
