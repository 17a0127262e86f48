//! autoneural: run, quantize and analyse AutoNeural vision-language models.
//!
//! See `docs/ARCHITECTURE.md` for the module map and data flow.

pub mod error;
pub mod models;
pub mod npy;
pub mod observe;
pub mod ops;
pub mod tensor;
pub mod weights;

pub use error::{Error, Result};
pub use tensor::Tensor;
