//! The engine's boundary with the user's filesystem: bounded reads of regular files only
//! ([`input`]) and outputs that never overwrite or half-write what they did not create
//! ([`output`]).

pub mod input;
pub mod output;

pub use input::{limits, open_regular, read_bytes, read_text};
pub use output::{available_space, check_not_input, check_space, write_file, OutputDir, MANIFEST};
