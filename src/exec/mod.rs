//! Executors over [`crate::graph::Graph`]: [`float::FloatProgram`] runs the float graph with the
//! kernels in [`crate::ops`]; each sequence owns a [`state::SequenceState`].

pub mod float;
pub mod int;
pub mod profile;
pub mod state;

pub use float::{FloatProgram, Val};
pub use int::{IntProgram, QVal};
pub use state::{SequenceState, SlotData};

use crate::error::{Error, Result};
use crate::graph::{Graph, ValueId};

/// What one call of an executor runs: the scheduled nodes, each value's last reader (values are
/// freed after it; requested outputs never are), and the sequence position stateful nodes start
/// at. Shared by both executors.
pub(crate) struct Plan {
    pub sched: Vec<usize>,
    pub last: Vec<Option<usize>>,
    pub stateful: bool,
    pub start: usize,
}

impl Plan {
    /// Plans computing `outputs` from the values in `given` (`rows` new positions). Errors when a
    /// scheduled node reads a value the call neither feeds nor computes, when stateful nodes run
    /// without a state, or when the state cannot take `rows` more positions.
    pub(crate) fn new<O>(
        g: &Graph<O>,
        given: &[ValueId],
        outputs: &[ValueId],
        state: Option<&SequenceState>,
        rows: usize,
        uses_position: impl Fn(&O) -> bool,
    ) -> Result<Self> {
        let sched = g.schedule(given, outputs);
        let mut ready = vec![false; g.values.len()];
        for v in given {
            ready[v.0 as usize] = true;
        }
        for &i in &sched {
            let node = &g.nodes[i];
            if let Some(v) = node.inputs.iter().find(|v| !ready[v.0 as usize]) {
                return Err(Error::input(format!(
                    "`{}` reads `{}`, which this call neither feeds nor computes",
                    node.name,
                    g.value(*v).name
                )));
            }
            ready[node.output.0 as usize] = true;
        }
        let stateful = sched.iter().any(|&i| uses_position(&g.nodes[i].op));
        let start = match (state, stateful) {
            (Some(s), true) => {
                s.check(&g.states, rows)?;
                s.len()
            }
            (None, true) => {
                return Err(Error::input(
                    "this part of the model keeps decode state: pass a sequence state",
                ))
            }
            _ => 0,
        };
        let mut last = vec![None; g.values.len()];
        for &i in &sched {
            for v in &g.nodes[i].inputs {
                last[v.0 as usize] = Some(i);
            }
        }
        for o in outputs {
            last[o.0 as usize] = Some(usize::MAX);
        }
        Ok(Self {
            sched,
            last,
            stateful,
            start,
        })
    }

    /// Moves the state past the call's rows when stateful nodes ran.
    pub(crate) fn finish(&self, state: Option<&mut SequenceState>, rows: usize) {
        if let (true, Some(s)) = (self.stateful, state) {
            s.advance(rows);
        }
    }
}

/// Prefixes an input error with the node it happened in.
pub(crate) fn at_node(name: &str) -> impl Fn(Error) -> Error + '_ {
    move |e| match e {
        Error::Input(m) => Error::input(format!("`{name}`: {m}")),
        e => e,
    }
}

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
