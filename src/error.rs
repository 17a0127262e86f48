//! The library's error type. Every failure a user can cause (bad files, bad shapes, bad
//! arguments) maps to one variant with a message that names the problem.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // The io::Error is part of the message, not a `source`: a chain printer (anyhow `{:#}`)
    // would otherwise print it twice.
    #[error("{}: {err}", path.display())]
    Io { path: PathBuf, err: std::io::Error },
    #[error("{}: {msg}", path.display())]
    CorruptFile { path: PathBuf, msg: String },
    #[error("missing tensor `{0}` in the checkpoint")]
    MissingTensor(String),
    #[error("tensor `{name}` has shape {actual:?}, expected {expected:?}")]
    TensorShape {
        name: String,
        actual: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("tensor `{name}` has unsupported dtype {dtype} (supported: F32, F16, BF16, F64)")]
    TensorDtype { name: String, dtype: String },
    #[error("invalid config: {0}")]
    Config(String),
    #[error("unknown block string `{block}`: {msg}")]
    BlockString { block: String, msg: String },
    #[error("image {}: {msg}", path.display())]
    Image { path: PathBuf, msg: String },
    #[error("prompt of {tokens} tokens (plus {max_new} to generate) exceeds the context length {context}")]
    ContextOverflow {
        tokens: usize,
        max_new: usize,
        context: usize,
    },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("{0}")]
    Input(String),
    /// Returned by a generation callback to stop generating (a stop sequence was produced, or
    /// the client went away); `generate_with` then ends with `StopReason::Stopped`.
    #[error("generation stopped by the caller")]
    Stopped,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, err: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            err,
        }
    }
    pub fn corrupt(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::CorruptFile {
            path: path.into(),
            msg: msg.into(),
        }
    }
    pub fn config(msg: impl Into<String>) -> Self {
        Error::Config(msg.into())
    }
    pub fn input(msg: impl Into<String>) -> Self {
        Error::Input(msg.into())
    }
}
