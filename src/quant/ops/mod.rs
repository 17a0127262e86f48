//! Integer operators: one plain scalar reference per operation. Each op is a struct prepared at
//! conversion time (by `quant::prepare`: integer weights, multipliers, tables) whose `forward`
//! uses integer arithmetic only. SIMD variants (a later issue) must be bit-exact to these.
//!
//! Everything below this module is integer runtime: float arithmetic is a compile error
//! (`cargo clippy` in CI), except inside `#[cfg(test)]` modules that compare with float references.
#![deny(clippy::float_arithmetic)]
pub mod attention;
pub mod conv;
pub mod conv1d;
pub mod elementwise;
pub mod embedding;
pub mod linear;
pub mod lut;
pub mod norm;
pub mod pool;
pub mod rope;
pub mod softmax;
pub mod tokens;
