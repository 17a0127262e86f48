//! The integer-only path: quantization arithmetic ([`arith`], runtime, no floats), choosing
//! quantization parameters ([`params`], conversion time), quantized tensors ([`tensor`]), integer
//! operators ([`ops`]) and error metrics ([`metrics`]).

pub mod arith;
pub mod artifact;
pub mod metrics;
pub mod ops;
pub mod params;
pub mod prepare;
pub mod tensor;
pub mod calibrate;
pub mod calibset;
pub mod scheme;
pub mod models;
pub mod persist;
