//! Integer-only model runtimes: the float models of `crate::models` mirrored op for op with the
//! integer operators of [`crate::quant::ops`], built at conversion time by the builders of
//! `crate::quant::prepare` from the float weights, calibration statistics and a precision
//! scheme.
//!
//! Every integer op carries the name of the float op it replaces and, when the observer is
//! enabled, reports its output *dequantized* under that name, so the two observation streams can
//! be compared op by op (per-op SQNR).
//!
//! Everything below this module is integer runtime: float arithmetic is a compile error
//! (`cargo clippy`), except inside `#[cfg(test)]` modules.
#![deny(clippy::float_arithmetic)]
pub mod connector;
pub mod lfm2;
pub mod mobilenetv5;
