//! Float reference operators. Each is a plain function over slices with PyTorch semantics; model
//! code composes them and reports every op's output to an [`crate::observe::Observer`].

pub mod activation;
pub mod attention;
pub mod conv;
pub mod gemm;
pub mod norm;
pub mod pool;
pub mod rope;
pub mod tokens;
