//! The integer-only path: quantization arithmetic ([`arith`], runtime, no floats), choosing
//! quantization parameters ([`params`], conversion time) and error metrics ([`metrics`]).

pub mod arith;
pub mod metrics;
pub mod params;
