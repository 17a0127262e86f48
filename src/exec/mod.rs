//! Executors over [`crate::graph::Graph`]: [`float::FloatProgram`] runs the float graph with the
//! kernels in [`crate::ops`]; each sequence owns a [`state::SequenceState`].

pub mod float;
pub mod int;
pub mod state;

pub use float::{FloatProgram, Val};
pub use int::{IntProgram, QVal};
pub use state::{SequenceState, SlotData};

#[cfg(test)]
mod tests {
    /// One program serves concurrent requests: it must be shareable across threads.
    #[test]
    fn programs_are_shareable_across_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<super::FloatProgram>();
        shared::<super::IntProgram>();
        shared::<crate::quant::int_model::IntModel>();
        shared::<crate::models::autoneural::AutoNeuralModel>();
    }
}
