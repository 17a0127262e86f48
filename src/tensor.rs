//! A minimal owned float32 tensor: a shape plus a row-major buffer.
//!
//! Layout conventions used across the crate (batch size is always 1):
//! - vision activations are `[C, H, W]` (NCHW without the N);
//! - token activations are `[T, D]` (sequence-major, one row per token).

use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Vec<f32>,
}

impl Tensor {
    /// Builds a tensor, checking that the buffer length matches the shape.
    pub fn new(shape: &[usize], data: Vec<f32>) -> Result<Self> {
        let numel: usize = shape.iter().product();
        if numel != data.len() {
            return Err(Error::input(format!(
                "tensor of shape {shape:?} needs {numel} values, got {}",
                data.len()
            )));
        }
        Ok(Self {
            shape: shape.to_vec(),
            data,
        })
    }

    /// Builds a tensor whose shape is known to match by construction (internal use).
    pub(crate) fn from_parts(shape: &[usize], data: Vec<f32>) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len(), "{shape:?}");
        Self {
            shape: shape.to_vec(),
            data,
        }
    }

    pub fn zeros(shape: &[usize]) -> Self {
        Self::from_parts(shape, vec![0.0; shape.iter().product()])
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn dim(&self, i: usize) -> usize {
        self.shape[i]
    }
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
    pub fn numel(&self) -> usize {
        self.data.len()
    }
    pub fn data(&self) -> &[f32] {
        &self.data
    }
    pub fn data_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }
    pub fn into_data(self) -> Vec<f32> {
        self.data
    }

    /// Same data, new shape with the same number of elements.
    pub fn reshape(mut self, shape: &[usize]) -> Result<Self> {
        let numel: usize = shape.iter().product();
        if numel != self.data.len() {
            return Err(Error::input(format!(
                "cannot reshape {:?} into {shape:?}",
                self.shape
            )));
        }
        self.shape = shape.to_vec();
        Ok(self)
    }

    /// Row `i` of a tensor viewed as `[rows, last_dim]`.
    pub fn row(&self, i: usize) -> &[f32] {
        let d = *self.shape.last().unwrap_or(&1);
        &self.data[i * d..(i + 1) * d]
    }

    /// Transposes a 2-D tensor `[a, b]` into `[b, a]`. Used to turn `[C, H*W]` vision maps into
    /// `[tokens, C]` rows and back.
    pub fn transpose2d(&self) -> Tensor {
        assert_eq!(self.rank(), 2, "transpose2d on {:?}", self.shape);
        let (a, b) = (self.shape[0], self.shape[1]);
        let mut out = vec![0.0f32; a * b];
        for i in 0..a {
            for j in 0..b {
                out[j * a + i] = self.data[i * b + j];
            }
        }
        Tensor::from_parts(&[b, a], out)
    }
}
