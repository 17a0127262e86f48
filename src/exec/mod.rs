//! Executors over [`crate::graph::Graph`]: [`float::FloatProgram`] runs the float graph with the
//! kernels in [`crate::ops`]; each sequence owns a [`state::SequenceState`].

pub mod float;
pub mod int;
pub mod state;

pub use float::{FloatProgram, Val};
pub use int::{IntProgram, QVal};
pub use state::{SequenceState, SlotData};
