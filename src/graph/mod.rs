//! The model as data: one graph per model part, built once by an architecture builder
//! (`models/<arch>/graph.rs`) and then run, calibrated, quantized, costed and saved generically.
//!
//! A [`Graph`] is a list of [`Node`]s in execution order. Every node applies one [`Op`] (a closed
//! enum: adding a variant makes the compiler list every pass that must handle it) to input values
//! and produces one output value. Values carry a [`Shape`] whose sequence dimensions may be
//! symbolic ([`Dim::Seq`]: the rows of this call; [`Dim::Past`]: the positions already in the
//! decode state) and an element type ([`Elem`]: float, token ids, or integers with a scale and a
//! zero point). Weights are [`ParamInfo`]s named by checkpoint key; their data lives beside the
//! graph (`exec::FloatProgram`), so a graph can be built, listed and costed without any weights.
//! Decode state is declared as [`StateInfo`] slots (the LFM2 conv windows, attention K/V) that a
//! per-sequence `exec::SequenceState` holds.
//!
//! Node names are the observation names the float path has always reported (they follow
//! checkpoint keys without the part's root prefix: `blocks.2.3.attn.query.proj`,
//! `layers.3.conv.in_proj`), so calibration files, scheme override globs and report rows keep
//! working across the two paths.
//!
//! Non-goals: no autodiff, no general optimizer, no control flow, no shape algebra beyond the two
//! sequence symbols.
//!
//! [`cost`] prices every node (MACs, weight, activation and state bytes) at given bindings.

pub mod builder;
pub mod cost;
pub mod op;
pub mod qcheck;
pub mod qop;

pub use builder::{GraphBuilder, WeightSource};
pub use op::Op;

use crate::error::{Error, Result};
use crate::quant::params::ActQuant;
use serde::{Deserialize, Serialize};

/// Index of a value in [`Graph::values`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ValueId(pub u32);

/// Index of a weight in [`Graph::params`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ParamId(pub u32);

/// Index of a decode-state slot in [`Graph::states`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StateId(pub u32);

/// One dimension of a value's shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dim {
    Fixed(usize),
    /// The rows of the current call (prompt length, a prefill chunk, or 1 when decoding).
    Seq,
    /// Positions already held by the sequence's state.
    Past,
    /// `Past + Seq`: the keys an attention call sees.
    PastPlusSeq,
}

/// What the symbolic dimensions stand for in one call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bindings {
    pub seq: usize,
    pub past: usize,
}

impl Dim {
    pub fn bind(self, b: Bindings) -> usize {
        match self {
            Dim::Fixed(n) => n,
            Dim::Seq => b.seq,
            Dim::Past => b.past,
            Dim::PastPlusSeq => b.past + b.seq,
        }
    }

    pub fn fixed(self) -> Option<usize> {
        match self {
            Dim::Fixed(n) => Some(n),
            _ => None,
        }
    }
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Fixed(n) => write!(f, "{n}"),
            Dim::Seq => f.write_str("T"),
            Dim::Past => f.write_str("P"),
            Dim::PastPlusSeq => f.write_str("P+T"),
        }
    }
}

pub type Shape = Vec<Dim>;

/// Fixed dimensions as a shape.
pub fn fixed(dims: &[usize]) -> Shape {
    dims.iter().map(|&d| Dim::Fixed(d)).collect()
}

/// `[2, T, 64]`-style text of a shape.
pub fn shape_text(s: &[Dim]) -> String {
    let parts: Vec<String> = s.iter().map(|d| d.to_string()).collect();
    format!("[{}]", parts.join(", "))
}

/// Concrete dimensions of `s` under `b`.
pub fn bind_shape(s: &[Dim], b: Bindings) -> Vec<usize> {
    s.iter().map(|d| d.bind(b)).collect()
}

/// The element type of a value.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Elem {
    F32,
    /// Token ids (`u32`).
    Token,
    /// Signed integers `bits` wide standing for `scale * (q - zero_point)`.
    Q(ActQuant),
}

impl Elem {
    /// Bytes per element as the runtime stores it (integers are held in `i16`).
    pub fn bytes(self) -> usize {
        match self {
            Elem::F32 | Elem::Token => 4,
            Elem::Q(_) => 2,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValueInfo {
    pub name: String,
    pub shape: Shape,
    pub elem: Elem,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node<O = Op> {
    /// The observation name (also the name of the output value).
    pub name: String,
    pub op: O,
    pub inputs: Vec<ValueId>,
    pub output: ValueId,
    /// Whether executors report the output to observers (internal steps such as the chunks of a
    /// split or the SiLU inside SwiGLU's `act` have no name of their own in the reference).
    pub observed: bool,
    /// Further names the output is reported under (a block without a residual reports its last
    /// op's output as the block's output too).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

/// A weight, by its full checkpoint key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParamInfo {
    pub key: String,
    pub shape: Vec<usize>,
}

impl ParamInfo {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// A decode-state slot: a fixed window (`[L - 1, channels]` rows of a causal conv's input) or a
/// growing row store (`[Past, width]` attention keys or values).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateInfo {
    pub name: String,
    pub shape: Shape,
    pub elem: Elem,
}

impl StateInfo {
    /// Whether the slot grows with the sequence (K/V) rather than holding a fixed window.
    pub fn grows(&self) -> bool {
        self.shape.first() == Some(&Dim::Past)
    }
    /// Values per row (the last dimension).
    pub fn width(&self) -> usize {
        self.shape.last().and_then(|d| d.fixed()).unwrap_or(0)
    }
    /// Elements held at `past` positions.
    pub fn numel(&self, past: usize) -> usize {
        bind_shape(&self.shape, Bindings { seq: 0, past })
            .iter()
            .product()
    }
}

/// A model part as data. `O` is the op type: [`Op`] for the float graph; the integer graph
/// carries prepared integer ops instead.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Graph<O = Op> {
    pub inputs: Vec<ValueId>,
    pub values: Vec<ValueInfo>,
    pub nodes: Vec<Node<O>>,
    pub params: Vec<ParamInfo>,
    pub states: Vec<StateInfo>,
    /// Values the code around a part reads or feeds by role (`ids`, `embeds`, `hidden`,
    /// `logits` for a language model; `pixels`, `features` for a vision encoder), so generic
    /// code does not depend on an architecture's node names.
    pub ports: Vec<(String, ValueId)>,
}

impl<O> Graph<O> {
    /// The value playing `role` (see [`Graph::ports`]).
    pub fn port(&self, role: &str) -> Result<ValueId> {
        self.ports
            .iter()
            .find(|(r, _)| r == role)
            .map(|(_, v)| *v)
            .ok_or_else(|| Error::input(format!("the graph has no `{role}` port")))
    }

    pub fn value(&self, v: ValueId) -> &ValueInfo {
        &self.values[v.0 as usize]
    }

    /// The value named `name` (node outputs are named like their node; inputs by their own name).
    pub fn find(&self, name: &str) -> Option<ValueId> {
        self.values
            .iter()
            .position(|v| v.name == name)
            .map(|i| ValueId(i as u32))
    }

    /// The node producing `v`, if any (inputs have none).
    pub fn producer(&self, v: ValueId) -> Option<usize> {
        self.nodes.iter().position(|n| n.output == v)
    }

    pub fn param_count(&self) -> usize {
        self.params.iter().map(|p| p.numel()).sum()
    }

    /// The nodes needed to compute `outputs` when the values in `given` are supplied (a given
    /// value's producer and everything only it needs are skipped), in execution order.
    pub fn schedule(&self, given: &[ValueId], outputs: &[ValueId]) -> Vec<usize> {
        let mut need = vec![false; self.values.len()];
        for o in outputs {
            need[o.0 as usize] = true;
        }
        let mut run = vec![false; self.nodes.len()];
        for (i, n) in self.nodes.iter().enumerate().rev() {
            let out = n.output.0 as usize;
            if need[out] && !given.contains(&n.output) {
                run[i] = true;
                for v in &n.inputs {
                    need[v.0 as usize] = true;
                }
            }
        }
        (0..self.nodes.len()).filter(|&i| run[i]).collect()
    }
}
