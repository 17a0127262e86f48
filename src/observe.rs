//! Observation hooks: the executors report every named node's output here.
//!
//! The float path uses [`NoObserver`]. Calibration (choosing activation ranges for the integer
//! path), `dump`, and error analysis plug in observers that record the tensors they care about.
//! Names follow checkpoint keys (`blocks.2.9.attn`, `layers.3.conv`, ...) so an observation can be
//! matched to the weights that produced it.

use crate::ops::conv::Conv2dSpec;
use crate::tensor::Tensor;
use std::collections::BTreeMap;

pub trait Observer {
    /// Whether this observer wants tensors at all; lets hot loops skip building names.
    fn enabled(&self) -> bool {
        true
    }
    fn observe(&mut self, name: &str, tensor: &Tensor);
    /// Whether this observer wants the inputs of weighted ops ([`Observer::observe_input`]).
    fn wants_inputs(&self) -> bool {
        false
    }
    /// The input of weighted op `op` (named like the op that reports its output, e.g.
    /// `blocks.1.0.pw_exp.conv`), just before it runs. Calibration uses it for the inputs' Gram
    /// matrices (GPTQ rounding, [`crate::quant::gptq`]).
    fn observe_input(&mut self, _op: &str, _input: OpInput<'_>) {}
}

/// The input of a weighted op, with what is needed to see it the way the weight does.
#[derive(Clone, Copy, Debug)]
pub enum OpInput<'a> {
    /// A convolution's `[C_in, H, W]` input; its weight is `[C_out, C_in / groups, kH, kW]`.
    Conv {
        x: &'a Tensor,
        kernel: (usize, usize),
        spec: Conv2dSpec,
    },
    /// Channel-major `[channels, positions]` input of a 1x1 projection.
    Channels {
        x: &'a [f32],
        channels: usize,
        positions: usize,
    },
    /// Token-major `[tokens, features]` input of a linear layer.
    Tokens {
        x: &'a [f32],
        tokens: usize,
        features: usize,
    },
}

/// Observer that records nothing (the default for plain inference).
pub struct NoObserver;

impl Observer for NoObserver {
    fn enabled(&self) -> bool {
        false
    }
    fn observe(&mut self, _name: &str, _tensor: &Tensor) {}
}

/// Records a copy of every observed tensor whose name passes a filter.
pub struct Recorder<F: Fn(&str) -> bool> {
    filter: F,
    pub tensors: BTreeMap<String, Tensor>,
}

impl<F: Fn(&str) -> bool> Recorder<F> {
    pub fn new(filter: F) -> Self {
        Self {
            filter,
            tensors: BTreeMap::new(),
        }
    }
}

impl<F: Fn(&str) -> bool> Observer for Recorder<F> {
    fn observe(&mut self, name: &str, tensor: &Tensor) {
        if (self.filter)(name) {
            self.tensors.insert(name.to_string(), tensor.clone());
        }
    }
}
