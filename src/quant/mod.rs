//! The integer-only path: quantization arithmetic ([`arith`], runtime, no floats), choosing
//! quantization parameters ([`params`], conversion time), quantized tensors ([`tensor`]), integer
//! operators ([`ops`], the scalar references) with their SIMD variants ([`kernels`]) and error
//! metrics ([`metrics`]).

pub mod arith;
pub mod calibrate;
pub mod calibset;
pub mod gptq;
pub mod gram;
pub mod int_model;
pub mod kernels;
pub mod lower;
#[cfg(test)]
mod lower_vit_tests;
pub mod metrics;
pub mod ops;
pub mod params;
pub mod prepare;
pub mod report;
pub mod scheme;
pub mod tensor;
