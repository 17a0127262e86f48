//! Observation hooks: every named op in a forward pass reports its output here.
//!
//! The float path uses [`NoObserver`]. Calibration (choosing activation ranges for the integer
//! path), `dump`, and error analysis plug in observers that record the tensors they care about.
//! Names follow checkpoint keys (`blocks.2.9.attn`, `layers.3.conv`, ...) so an observation can be
//! matched to the weights that produced it.

use crate::tensor::Tensor;
use std::collections::BTreeMap;

pub trait Observer {
    /// Whether this observer wants tensors at all; lets hot loops skip building names.
    fn enabled(&self) -> bool {
        true
    }
    fn observe(&mut self, name: &str, tensor: &Tensor);
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

/// Reports `tensor` under `prefix.suffix` if the observer is enabled.
pub fn observe(obs: &mut dyn Observer, prefix: &str, suffix: &str, tensor: &Tensor) {
    if obs.enabled() {
        if prefix.is_empty() {
            obs.observe(suffix, tensor);
        } else {
            obs.observe(&format!("{prefix}.{suffix}"), tensor);
        }
    }
}
