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
/// freed after it; requested outputs never are), and the sequence position each bound state
/// starts at. Shared by both executors.
pub(crate) struct Plan {
    pub sched: Vec<usize>,
    pub last: Vec<Option<usize>>,
    pub stateful: bool,
    /// The position of each bound state before the call (empty when no stateful node runs).
    pub starts: Vec<usize>,
}

impl Plan {
    /// Plans computing `outputs` from the values in `given`, whose `rows` rows are split evenly
    /// over `states` in order (see [`rows_per_state`]). Errors when a scheduled node reads a value
    /// the call neither feeds nor computes, when stateful nodes run without a state, or when a
    /// state cannot take its rows.
    pub(crate) fn new<O>(
        g: &Graph<O>,
        given: &[ValueId],
        outputs: &[ValueId],
        states: &[&mut SequenceState],
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
        let starts = match (states.is_empty(), stateful) {
            (false, true) => {
                let per = rows_per_state(rows, states.len())?;
                for s in states {
                    s.check(&g.states, per)?;
                }
                states.iter().map(|s| s.len()).collect()
            }
            (true, true) => {
                return Err(Error::input(
                    "this part of the model keeps decode state: pass a sequence state",
                ))
            }
            _ => Vec::new(),
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
            starts,
        })
    }

    /// Moves each state past its rows when stateful nodes ran.
    pub(crate) fn finish(&self, states: &mut [&mut SequenceState], rows: usize) {
        if self.stateful {
            let per = rows / states.len().max(1);
            for s in states {
                s.advance(per);
            }
        }
    }
}

/// Rows per state when a call's `rows` belong to `states` sequences: consecutive blocks of equal
/// size, block `r` to state `r`. One state takes every row (a prompt, a prefill chunk, one
/// decode step); a batched decode step gives one row to each of its states.
pub(crate) fn rows_per_state(rows: usize, states: usize) -> Result<usize> {
    if states == 0 || !rows.is_multiple_of(states) {
        return Err(Error::input(format!(
            "{rows} rows cannot be split evenly over {states} sequence states"
        )));
    }
    Ok(rows / states)
}

/// The checks of a batched decode step: one row per state, at least one state.
pub(crate) fn check_batch(rows: usize, states: usize) -> Result<()> {
    if states == 0 || rows != states {
        return Err(Error::input(format!(
            "a batched decode step takes one row per sequence: {rows} rows for {states} states"
        )));
    }
    Ok(())
}

/// Joins the per-state outputs of a stateful op back into the call's rows (moves a single part).
pub(crate) fn join_rows<T: Clone>(mut parts: Vec<Vec<T>>) -> Vec<T> {
    if parts.len() == 1 {
        return parts.pop().expect("one part");
    }
    parts.concat()
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
