//! Quantized activation tensors: integer values plus the per-tensor quantization they are in.

use super::params::ActQuant;
use crate::tensor::Tensor;

/// Integer activations. Values are stored in `i16` whatever the bit width (8 or 16), always inside
/// `[qmin(bits), qmax(bits)]`; `q` says what they mean (`r = scale * (v - zero_point)`).
/// Layouts follow the float path: `[C, H, W]` maps, `[T, D]` token rows.
#[derive(Clone, Debug, PartialEq)]
pub struct QTensor {
    pub shape: Vec<usize>,
    pub data: Vec<i16>,
    pub q: ActQuant,
}

impl QTensor {
    pub fn new(shape: &[usize], data: Vec<i16>, q: ActQuant) -> Self {
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "QTensor {shape:?}"
        );
        Self {
            shape: shape.to_vec(),
            data,
            q,
        }
    }

    pub fn numel(&self) -> usize {
        self.data.len()
    }

    pub fn dim(&self, i: usize) -> usize {
        self.shape[i]
    }

    /// Quantizes a float tensor (at the edges of the integer path: input pixels, tests).
    pub fn quantize(t: &Tensor, q: ActQuant) -> Self {
        let data = t.data().iter().map(|&x| q.quantize(x) as i16).collect();
        Self::new(t.shape(), data, q)
    }

    /// The real values these integers stand for (for comparison with the float path).
    pub fn dequantize(&self) -> Tensor {
        let data = self
            .data
            .iter()
            .map(|&v| self.q.dequantize(v as i32))
            .collect();
        Tensor::new(&self.shape, data).expect("shape checked at construction")
    }
}
