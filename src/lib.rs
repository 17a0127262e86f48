//! autoneural: run, quantize and analyse AutoNeural vision-language models.
//!
//! See `docs/ARCHITECTURE.md` for the module map and data flow.

pub mod artifact;
pub mod bench;
pub mod chat;
pub mod chat_template;
pub mod dataset;
pub mod engine;
pub mod error;
pub mod eval;
pub mod exec;
pub mod export;
pub mod files;
pub mod generate;
pub mod graph;
pub mod models;
pub mod npu;
pub mod npy;
pub mod observe;
pub mod ops;
pub mod pipeline;
pub mod preprocess;
pub mod quant;
pub mod server;
pub mod tensor;
pub mod weights;

pub use error::{Error, Result};
pub use tensor::Tensor;
