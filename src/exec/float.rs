//! The float executor: runs a [`Graph`] node by node with the float kernels in [`crate::ops`],
//! reporting every observed value (and every weighted node's input) to the [`Observer`].
//!
//! A [`FloatProgram`] is the graph plus its weights and per-node prepared data; it is immutable,
//! so one program serves any number of sequences, each with its own [`SequenceState`]. Values
//! are freed after their last use, and a node whose input dies with it works in place on it.

use super::state::{SequenceState, SlotData};
use super::{at_node, check_batch, join_rows, Plan};
use crate::error::{Error, Result};
use crate::graph::{bind_shape, Bindings, Dim, Elem, Graph, Node, Op, ValueId};
use crate::observe::{NoObserver, Observer, OpInput};
use crate::ops::attention::{attention, AttnShape, Mask};
use crate::ops::conv::{conv2d, pointwise_from_tokens, pointwise_to_tokens, Conv2dSpec, Pad2d};
use crate::ops::gemm;
use crate::ops::norm::{layer_norm_rows, rms_norm_channels, rms_norm_rows};
use crate::ops::pool::{avg_pool2d, concat_channels, interpolate_bilinear, interpolate_nearest};
use crate::ops::rope::Rope;
use crate::ops::tokens::{pixel_shuffle, slice_rows};
use crate::tensor::Tensor;
use crate::weights::WeightStore;
use rayon::prelude::*;
use std::sync::Arc;

/// A value at run time.
#[derive(Clone, Debug)]
pub enum Val {
    F(Tensor),
    Ids(Vec<u32>),
}

impl Val {
    fn dims(&self) -> Vec<usize> {
        match self {
            Val::F(t) => t.shape().to_vec(),
            Val::Ids(ids) => vec![ids.len()],
        }
    }
}

/// Per-node data derived once from the weights.
#[derive(Clone)]
enum Prep {
    None,
    /// A causal conv's `[H, L]` kernel transposed to `[L, H]` for the token-major loop.
    ConvLh(Vec<f32>),
    Rope(Rope),
}

#[derive(Clone)]
pub struct FloatProgram {
    pub graph: Graph,
    /// Shared by programs of the same weights (vision graphs of other input sizes).
    params: Arc<Vec<Tensor>>,
    prep: Vec<Prep>,
}

impl FloatProgram {
    /// A program over `params` (one tensor per [`Graph::params`] entry, in order).
    pub fn new(graph: Graph, params: Vec<Tensor>) -> Result<Self> {
        Self::with_shared(graph, Arc::new(params))
    }

    fn with_shared(graph: Graph, params: Arc<Vec<Tensor>>) -> Result<Self> {
        if params.len() != graph.params.len() {
            return Err(Error::input(format!(
                "{} weights for a graph of {}",
                params.len(),
                graph.params.len()
            )));
        }
        for (p, t) in graph.params.iter().zip(params.iter()) {
            if t.shape() != p.shape {
                return Err(Error::TensorShape {
                    name: p.key.clone(),
                    actual: t.shape().to_vec(),
                    expected: p.shape.clone(),
                });
            }
        }
        let prep = graph
            .nodes
            .iter()
            .map(|n| prepare(n, &params))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            graph,
            params,
            prep,
        })
    }

    /// Loads every weight of `graph` from a checkpoint, by key, checking shapes.
    pub fn load(graph: Graph, store: &WeightStore) -> Result<Self> {
        let params = graph
            .params
            .iter()
            .map(|p| store.load_shaped(&p.key, &p.shape))
            .collect::<Result<Vec<_>>>()?;
        Self::new(graph, params)
    }

    /// Loads `graph` with the weights of another program built from the same checkpoint (a
    /// vision graph for another input size shares every weight).
    pub fn with_params_of(graph: Graph, other: &FloatProgram) -> Result<Self> {
        if graph.params != other.graph.params {
            return Err(Error::input(
                "the graphs do not declare the same weights, so they cannot share them",
            ));
        }
        Self::with_shared(graph, other.params.clone())
    }

    /// A program over deterministic pseudo-random weights, for benchmarks and tests of real-shaped
    /// models without a checkpoint. Every weight depends only on `seed`, its key and its shape
    /// (SplitMix64 over a hash of the key, filled in parallel chunks), and follows its role in
    /// the graph so activations stay sane: norm weights and layer scales `1 ± 0.1`, biases
    /// `± 0.01`, embedding tables `± 0.05`, matrices and kernels uniform `± 1 / sqrt(fan_in)`.
    pub fn random(graph: Graph, seed: u64) -> Result<Self> {
        let roles = param_roles(&graph);
        let params = graph
            .params
            .iter()
            .zip(roles)
            .map(|(p, role)| {
                let (center, half) = match role {
                    Role::Scale => (1.0, 0.1),
                    Role::Bias => (0.0, 0.01),
                    Role::Table => (0.0, 0.05),
                    Role::Matrix { fan_in } => (0.0, 1.0 / (fan_in.max(1) as f32).sqrt()),
                };
                random_tensor(&p.key, &p.shape, seed, center, half)
            })
            .collect();
        Self::new(graph, params)
    }

    pub fn param(&self, key: &str) -> Option<&Tensor> {
        let i = self.graph.params.iter().position(|p| p.key == key)?;
        Some(&self.params[i])
    }

    pub fn params(&self) -> &[Tensor] {
        &self.params
    }

    /// A fresh decode state for up to `context` positions.
    pub fn new_state(&self, context: usize) -> SequenceState {
        SequenceState::new(&self.graph.states, context)
    }

    /// The same graph over other weights: every weight a node multiplies its input by (embedding
    /// tables; linear, causal-conv, conv and pointwise kernels; not biases, norm weights or
    /// channel scales) becomes `f(node name, weight)`, each once, under the first node reading it
    /// (a tied head's table under the embedding); every other weight is shared. What
    /// weight-only references (weights quantized and dequantized, float compute) are built with.
    pub fn map_weights(
        &self,
        mut f: impl FnMut(&str, &Tensor) -> Result<Tensor>,
    ) -> Result<FloatProgram> {
        let mut params = self.params.as_ref().clone();
        let mut done = vec![false; params.len()];
        for node in &self.graph.nodes {
            let w = match &node.op {
                Op::Embedding { table: w }
                | Op::Linear { weight: w, .. }
                | Op::CausalConv1d { weight: w, .. }
                | Op::Conv2d { weight: w, .. }
                | Op::PointwiseToTokens { weight: w }
                | Op::PointwiseFromTokens { weight: w, .. } => w.0 as usize,
                _ => continue,
            };
            if !std::mem::replace(&mut done[w], true) {
                params[w] = f(&node.name, &self.params[w])?;
            }
        }
        Self::new(self.graph.clone(), params)
    }

    /// For a language-model graph (ports `ids`, `embeds`, `logits`): `embed_tokens(ids)`,
    /// `[T, hidden]`.
    pub fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        let g = &self.graph;
        let feed = vec![(g.port("ids")?, Val::Ids(ids.to_vec()))];
        let out = self.run(feed, &[g.port("embeds")?], None, &mut NoObserver)?;
        Ok(out.into_iter().next().expect("one output requested"))
    }

    /// For a language-model graph: the logits of every row of `x`, token ids (`Val::Ids`, fed at
    /// the `ids` port) or input embeddings (`Val::F`, `[T, hidden]`, fed at `embeds`), at the
    /// positions after `state`'s, which then holds `T` more. The observer sees every op, the
    /// embeddings and the head included.
    pub fn logits(
        &self,
        x: Val,
        state: &mut SequenceState,
        obs: &mut dyn Observer,
    ) -> Result<Tensor> {
        let g = &self.graph;
        let port = g.port(match x {
            Val::Ids(_) => "ids",
            Val::F(_) => "embeds",
        })?;
        let out = self.run(vec![(port, x)], &[g.port("logits")?], Some(state), obs)?;
        Ok(out.into_iter().next().expect("one output requested"))
    }

    /// Runs the nodes needed for `outputs` given `feeds` (graph inputs, or any value to start
    /// from: a supplied value's producer is skipped). Stateful nodes read and update `state` and
    /// the position advances by the rows of the call.
    pub fn run(
        &self,
        feeds: Vec<(ValueId, Val)>,
        outputs: &[ValueId],
        state: Option<&mut SequenceState>,
        obs: &mut dyn Observer,
    ) -> Result<Vec<Tensor>> {
        match state {
            Some(s) => self.run_rows(feeds, outputs, &mut [s], obs),
            None => self.run_rows(feeds, outputs, &mut [], obs),
        }
    }

    /// A batched decode step: row `i` of the feeds (a token id at `ids`, or a row of any fed
    /// value) is the next position of `states[i]`, which then holds one more. Stateful nodes
    /// (conv windows, RoPE, cached attention) run once per sequence on its row at its own
    /// position; every other node takes the rows together, so each weight is read once per step.
    /// Each row's outputs equal, bit for bit, those of a one-row [`Self::run`] with its state:
    /// linear layers take the row-dot-product path whatever the row count.
    pub fn run_batch(
        &self,
        feeds: Vec<(ValueId, Val)>,
        outputs: &[ValueId],
        states: &mut [&mut SequenceState],
        obs: &mut dyn Observer,
    ) -> Result<Vec<Tensor>> {
        check_batch(bindings(&self.graph, &feeds)?.seq, states.len())?;
        self.run_rows(feeds, outputs, states, obs)
    }

    /// For a language-model graph: the logits `[B, vocab]` of one batched decode step, row `i`
    /// for `tokens[i]` appended to `states[i]` (see [`Self::run_batch`]).
    pub fn decode_batch(
        &self,
        tokens: &[u32],
        states: &mut [&mut SequenceState],
        obs: &mut dyn Observer,
    ) -> Result<Tensor> {
        let g = &self.graph;
        let feed = vec![(g.port("ids")?, Val::Ids(tokens.to_vec()))];
        let out = self.run_batch(feed, &[g.port("logits")?], states, obs)?;
        Ok(out.into_iter().next().expect("one output requested"))
    }

    /// [`Self::run`] with the call's rows split evenly over `states` in order (no state: a
    /// stateless part; one: every row).
    fn run_rows(
        &self,
        feeds: Vec<(ValueId, Val)>,
        outputs: &[ValueId],
        states: &mut [&mut SequenceState],
        obs: &mut dyn Observer,
    ) -> Result<Vec<Tensor>> {
        let g = &self.graph;
        let given: Vec<ValueId> = feeds.iter().map(|(v, _)| *v).collect();
        let b = bindings(g, &feeds)?;
        let plan = Plan::new(g, &given, outputs, states, b.seq, Op::uses_position)?;
        let mut vals: Vec<Option<Val>> = vec![None; g.values.len()];
        for (v, val) in feeds {
            if let (Some(p), Val::F(t)) = (g.producer(v), &val) {
                if g.nodes[p].observed && obs.enabled() {
                    obs.observe(&g.nodes[p].name, t);
                    for a in &g.nodes[p].aliases {
                        obs.observe(a, t);
                    }
                }
            }
            vals[v.0 as usize] = Some(val);
        }
        for &i in &plan.sched {
            let node = &g.nodes[i];
            report_input(node, &vals, &self.params, obs);
            let y = self
                .eval(i, node, &mut vals, &plan.last, states, &plan.starts, b)
                .map_err(at_node(&node.name))?;
            for v in &node.inputs {
                if plan.last[v.0 as usize] == Some(i) {
                    vals[v.0 as usize] = None;
                }
            }
            if node.observed && obs.enabled() {
                obs.observe(&node.name, &y);
                for a in &node.aliases {
                    obs.observe(a, &y);
                }
            }
            vals[node.output.0 as usize] = Some(Val::F(y));
        }
        plan.finish(states, b.seq);
        outputs
            .iter()
            .map(|o| match &vals[o.0 as usize] {
                Some(Val::F(t)) => Ok(t.clone()),
                _ => Err(Error::input(format!(
                    "`{}` is not a float value of this run",
                    g.value(*o).name
                ))),
            })
            .collect()
    }

    /// Input `k` of `node`: moved out when this node is its last reader (and reads it once),
    /// copied otherwise.
    fn take(
        &self,
        vals: &mut [Option<Val>],
        last: &[Option<usize>],
        node: &Node,
        i: usize,
        k: usize,
    ) -> Tensor {
        let v = node.inputs[k].0 as usize;
        let once = node.inputs.iter().filter(|x| x.0 as usize == v).count() == 1;
        if last[v] == Some(i) && once {
            if let Some(Val::F(t)) = vals[v].take() {
                return t;
            }
        }
        self.get(vals, node, k).clone()
    }

    fn get<'v>(&self, vals: &'v [Option<Val>], node: &Node, k: usize) -> &'v Tensor {
        match &vals[node.inputs[k].0 as usize] {
            Some(Val::F(t)) => t,
            _ => panic!("`{}`: input {k} is not a computed float value", node.name),
        }
    }

    fn p(&self, id: crate::graph::ParamId) -> &Tensor {
        &self.params[id.0 as usize]
    }

    #[allow(clippy::too_many_arguments)]
    fn eval(
        &self,
        i: usize,
        node: &Node,
        vals: &mut [Option<Val>],
        last: &[Option<usize>],
        states: &mut [&mut SequenceState],
        starts: &[usize],
        b: Bindings,
    ) -> Result<Tensor> {
        // Rows of several sequences: each row computed as a one-row call computes it.
        let batched = states.len() > 1;
        let out_shape = bind_shape(&self.graph.value(node.output).shape, b);
        Ok(match &node.op {
            Op::Embedding { table } => {
                let ids = match &vals[node.inputs[0].0 as usize] {
                    Some(Val::Ids(ids)) => ids,
                    _ => return Err(Error::input("embedding input must be token ids")),
                };
                let t = self.p(*table);
                let (v, h) = (t.dim(0), t.dim(1));
                let mut out = Vec::with_capacity(ids.len() * h);
                for (pos, &id) in ids.iter().enumerate() {
                    if id as usize >= v {
                        return Err(Error::input(format!(
                            "token id {id} at position {pos} is outside the vocabulary ({v} tokens)"
                        )));
                    }
                    out.extend_from_slice(t.row(id as usize));
                }
                Tensor::from_parts(&[ids.len(), h], out)
            }
            Op::Linear { weight, bias } => {
                let x = self.get(vals, node, 0);
                let w = self.p(*weight);
                let (out, inp) = (w.dim(0), w.dim(1));
                let t = x.numel() / inp;
                let linear = if batched {
                    gemm::linear_rowwise
                } else {
                    gemm::linear
                };
                let y = linear(
                    x.data(),
                    t,
                    w.data(),
                    out,
                    inp,
                    bias.map(|b| self.p(b).data()),
                );
                Tensor::from_parts(&out_shape, y)
            }
            Op::RmsNorm { weight, eps } => {
                let mut x = self.take(vals, last, node, i, 0);
                let w = self.p(*weight);
                rms_norm_rows(x.data_mut(), w.numel(), w.data(), *eps);
                x
            }
            Op::LayerNorm { weight, bias, eps } => {
                let mut x = self.take(vals, last, node, i, 0);
                let w = self.p(*weight);
                let b = bias.map(|b| self.p(b).data());
                layer_norm_rows(x.data_mut(), w.numel(), w.data(), b, *eps);
                x
            }
            Op::SliceRows { start: s0, len } => {
                let x = self.get(vals, node, 0);
                Tensor::from_parts(&out_shape, slice_rows(x.data(), x.dim(1), *s0, *len))
            }
            Op::ClsPosEmbed { cls, pos } => {
                let x = self.get(vals, node, 0);
                let mut y = Vec::with_capacity(x.numel() + x.dim(1));
                y.extend_from_slice(self.p(*cls).data());
                y.extend_from_slice(x.data());
                if let Some(pos) = pos {
                    y.iter_mut()
                        .zip(self.p(*pos).data())
                        .for_each(|(v, p)| *v += p);
                }
                Tensor::from_parts(&out_shape, y)
            }
            Op::PixelShuffle { h, w, scale } => {
                let x = self.get(vals, node, 0);
                let y = pixel_shuffle(x.data(), *h, *w, x.dim(1), *scale);
                Tensor::from_parts(&out_shape, y)
            }
            Op::RmsNorm2d { weight, eps } => {
                let mut x = self.take(vals, last, node, i, 0);
                let c = x.dim(0);
                rms_norm_channels(x.data_mut(), c, self.p(*weight).data(), *eps);
                x
            }
            Op::Slice { start: s0, len } => {
                let x = self.get(vals, node, 0);
                let d = x.dim(x.rank() - 1);
                let mut y = Vec::with_capacity(x.numel() / d * len);
                for row in x.data().chunks_exact(d) {
                    y.extend_from_slice(&row[*s0..s0 + len]);
                }
                Tensor::from_parts(&out_shape, y)
            }
            Op::Add | Op::Mul => {
                let mut a = self.take(vals, last, node, i, 0);
                let bt = self.get(vals, node, 1);
                let add = matches!(node.op, Op::Add);
                a.data_mut()
                    .par_chunks_mut(1 << 14)
                    .zip(bt.data().par_chunks(1 << 14))
                    .for_each(|(x, y)| {
                        if add {
                            x.iter_mut().zip(y).for_each(|(u, v)| *u += v);
                        } else {
                            x.iter_mut().zip(y).for_each(|(u, v)| *u *= v);
                        }
                    });
                a
            }
            Op::Act(act) => {
                let mut x = self.take(vals, last, node, i, 0);
                act.apply_inplace(x.data_mut());
                x
            }
            Op::ChannelScale { gamma } if out_shape.len() == 2 => {
                let mut x = self.take(vals, last, node, i, 0);
                let g = self.p(*gamma).data();
                x.data_mut()
                    .par_chunks_mut(g.len())
                    .for_each(|row| row.iter_mut().zip(g).for_each(|(v, &s)| *v *= s));
                x
            }
            Op::ChannelScale { gamma } => {
                let mut x = self.take(vals, last, node, i, 0);
                let hw = x.numel() / x.dim(0);
                x.data_mut()
                    .par_chunks_mut(hw.max(1))
                    .zip(self.p(*gamma).data())
                    .for_each(|(p, &g)| p.iter_mut().for_each(|v| *v *= g));
                x
            }
            Op::CausalConv1d { bias, state: s, .. } => {
                let Prep::ConvLh(w_lh) = &self.prep[i] else {
                    unreachable!("prepared with the program")
                };
                let x = self.get(vals, node, 0);
                let (t, h) = (x.dim(0), x.dim(1));
                let l = w_lh.len() / h;
                let per = t / states.len();
                let mut parts = Vec::with_capacity(states.len());
                for (rows, state) in x.data().chunks_exact(per * h).zip(states.iter_mut()) {
                    let SlotData::F32(window) = state.slot_mut(s.0 as usize) else {
                        return Err(Error::input("float conv state expected"));
                    };
                    let bias = bias.map(|b| self.p(b).data());
                    parts.push(causal_conv1d(rows, per, h, l, w_lh, bias, window).into_data());
                }
                Tensor::from_parts(&[t, h], join_rows(parts))
            }
            Op::Rope { heads, .. } => {
                let Prep::Rope(rope) = &self.prep[i] else {
                    unreachable!("prepared with the program")
                };
                let mut x = self.take(vals, last, node, i, 0);
                let per = x.numel() / states.len();
                for (rows, &start) in x.data_mut().chunks_exact_mut(per).zip(starts) {
                    rope.apply(rows, *heads, start);
                }
                x
            }
            Op::CachedAttention {
                heads,
                kv_heads,
                head_dim,
                scale,
                k,
                v,
            } => {
                let (q, kn, vn) = (
                    self.get(vals, node, 0),
                    self.get(vals, node, 1),
                    self.get(vals, node, 2),
                );
                let n = states.len();
                let t = q.dim(0) / n;
                let (qw, kw, vw) = (q.numel() / n, kn.numel() / n, vn.numel() / n);
                let mut parts = Vec::with_capacity(n);
                for (r, (state, &start)) in states.iter_mut().zip(starts).enumerate() {
                    let (SlotData::F32(kc), SlotData::F32(vc)) =
                        state.slot_pair_mut(k.0 as usize, v.0 as usize)
                    else {
                        return Err(Error::input("float K/V state expected"));
                    };
                    kc.extend_from_slice(&kn.data()[r * kw..(r + 1) * kw]);
                    vc.extend_from_slice(&vn.data()[r * vw..(r + 1) * vw]);
                    parts.push(attention(
                        &q.data()[r * qw..(r + 1) * qw],
                        kc,
                        vc,
                        t,
                        start + t,
                        AttnShape {
                            n_heads: *heads,
                            n_kv: *kv_heads,
                            d: *head_dim,
                            dv: *head_dim,
                        },
                        *scale,
                        Mask::Causal { offset: start },
                    ));
                }
                Tensor::from_parts(&out_shape, join_rows(parts))
            }
            Op::Attention {
                heads,
                kv_heads,
                d,
                dv,
                scale,
            } => {
                let (q, k, v) = (
                    self.get(vals, node, 0),
                    self.get(vals, node, 1),
                    self.get(vals, node, 2),
                );
                let o = attention(
                    q.data(),
                    k.data(),
                    v.data(),
                    q.dim(0),
                    k.dim(0),
                    AttnShape {
                        n_heads: *heads,
                        n_kv: *kv_heads,
                        d: *d,
                        dv: *dv,
                    },
                    *scale,
                    Mask::None,
                );
                Tensor::from_parts(&out_shape, o)
            }
            Op::Conv2d {
                weight,
                bias,
                stride,
                dilation,
                groups,
                pad,
            } => {
                let x = self.get(vals, node, 0);
                let spec = conv_spec(*stride, *dilation, *groups, pad);
                conv2d(x, self.p(*weight), bias.map(|b| self.p(b).data()), spec)
            }
            Op::PointwiseToTokens { weight } => {
                let x = self.get(vals, node, 0);
                let w = self.p(*weight);
                let (c, hw) = (x.dim(0), x.dim(1) * x.dim(2));
                let y = pointwise_to_tokens(x.data(), c, hw, w.data(), w.dim(0));
                Tensor::from_parts(&out_shape, y)
            }
            Op::PointwiseFromTokens { weight, .. } => {
                let x = self.get(vals, node, 0);
                let w = self.p(*weight);
                let y = pointwise_from_tokens(x.data(), x.dim(0), x.dim(1), w.data(), w.dim(0));
                Tensor::from_parts(&out_shape, y)
            }
            Op::ResizeNearest { h, w } => interpolate_nearest(self.get(vals, node, 0), *h, *w),
            Op::ResizeBilinear { h, w } => interpolate_bilinear(self.get(vals, node, 0), *h, *w),
            Op::AvgPool { kh, kw, sh, sw } => {
                avg_pool2d(self.get(vals, node, 0), *kh, *kw, *sh, *sw)
            }
            Op::Concat => {
                let xs: Vec<&Tensor> = (0..node.inputs.len())
                    .map(|k| self.get(vals, node, k))
                    .collect();
                concat_channels(&xs)
            }
            Op::ToTokens => {
                let x = self.take(vals, last, node, i, 0);
                let (c, hw) = (x.dim(0), x.dim(1) * x.dim(2));
                x.reshape(&[c, hw])?.transpose2d()
            }
        })
    }
}

/// What a weight is to the ops reading it (the first reader decides: a tied head's table is an
/// embedding table).
#[derive(Clone, Copy)]
enum Role {
    /// Norm weights and layer scales: multiplicative, near 1.
    Scale,
    Bias,
    Table,
    Matrix {
        fan_in: usize,
    },
}

fn param_roles(g: &Graph) -> Vec<Role> {
    let mut roles: Vec<Option<Role>> = vec![None; g.params.len()];
    let fan_in = |p: crate::graph::ParamId| -> usize {
        let s = &g.params[p.0 as usize].shape;
        s.iter().skip(1).product()
    };
    for n in &g.nodes {
        let mut set = |p: crate::graph::ParamId, r: Role| {
            roles[p.0 as usize].get_or_insert(r);
        };
        match &n.op {
            Op::Embedding { table } => set(*table, Role::Table),
            Op::Linear { weight, bias }
            | Op::CausalConv1d { weight, bias, .. }
            | Op::Conv2d { weight, bias, .. } => {
                set(
                    *weight,
                    Role::Matrix {
                        fan_in: fan_in(*weight),
                    },
                );
                if let Some(b) = bias {
                    set(*b, Role::Bias);
                }
            }
            Op::PointwiseToTokens { weight } | Op::PointwiseFromTokens { weight, .. } => set(
                *weight,
                Role::Matrix {
                    fan_in: fan_in(*weight),
                },
            ),
            Op::RmsNorm { weight, .. } | Op::RmsNorm2d { weight, .. } => set(*weight, Role::Scale),
            Op::LayerNorm { weight, bias, .. } => {
                set(*weight, Role::Scale);
                if let Some(b) = bias {
                    set(*b, Role::Bias);
                }
            }
            Op::ClsPosEmbed { cls, pos } => {
                set(*cls, Role::Table);
                if let Some(p) = pos {
                    set(*p, Role::Table);
                }
            }
            Op::ChannelScale { gamma } => set(*gamma, Role::Scale),
            _ => debug_assert!(n.op.params().is_empty(), "{} reads weights", n.op.kind()),
        }
    }
    // A weight no node reads (none today) is filled like a matrix over its trailing dims.
    (0..g.params.len())
        .map(|i| {
            roles[i].unwrap_or(Role::Matrix {
                fan_in: fan_in(crate::graph::ParamId(i as u32)),
            })
        })
        .collect()
}

/// SplitMix64's output function.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `center ± half`, uniform, element `i` from the SplitMix64 sequence seeded by `seed` and the
/// FNV-1a hash of `key`, so the values do not depend on the order weights are declared in or on
/// how the chunks are scheduled.
fn random_tensor(key: &str, shape: &[usize], seed: u64, center: f32, half: f32) -> Tensor {
    const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;
    let fnv = key.bytes().fold(0xCBF2_9CE4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3)
    });
    let base = mix64(fnv ^ mix64(seed.wrapping_add(GAMMA)));
    let n: usize = shape.iter().product();
    let mut data = vec![0.0f32; n];
    const CHUNK: usize = 1 << 16;
    data.par_chunks_mut(CHUNK).enumerate().for_each(|(c, out)| {
        for (j, v) in out.iter_mut().enumerate() {
            let i = (c * CHUNK + j) as u64;
            let z = mix64(base.wrapping_add(i.wrapping_add(1).wrapping_mul(GAMMA)));
            // 24 random bits -> [-1, 1).
            let u = (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
            *v = center + half * u;
        }
    });
    Tensor::from_parts(shape, data)
}

pub(crate) fn conv_spec(
    stride: usize,
    dilation: usize,
    groups: usize,
    pad: &[usize; 4],
) -> Conv2dSpec {
    Conv2dSpec::new(
        stride,
        dilation,
        groups,
        Pad2d {
            top: pad[0],
            bottom: pad[1],
            left: pad[2],
            right: pad[3],
        },
    )
}

/// The depthwise causal conv of `x [T, H]` with its `[L - 1, H]` left context `window`, which
/// then holds the last `L - 1` rows of `[window; x]`.
fn causal_conv1d(
    x: &[f32],
    t: usize,
    h: usize,
    l: usize,
    w_lh: &[f32],
    bias: Option<&[f32]>,
    window: &mut [f32],
) -> Tensor {
    let keep = l - 1;
    let mut ext = Vec::with_capacity((keep + t) * h);
    ext.extend_from_slice(window);
    ext.extend_from_slice(x);
    let mut conv = vec![0.0f32; t * h];
    for (i, out) in conv.chunks_exact_mut(h).enumerate() {
        if let Some(b) = bias {
            out.copy_from_slice(b);
        }
        for j in 0..l {
            let src = &ext[(i + j) * h..(i + j + 1) * h];
            let wj = &w_lh[j * h..(j + 1) * h];
            for ((o, &s), &w) in out.iter_mut().zip(src).zip(wj) {
                *o += w * s;
            }
        }
    }
    window.copy_from_slice(&ext[t * h..]);
    Tensor::from_parts(&[t, h], conv)
}

fn prepare(node: &Node, params: &[Tensor]) -> Result<Prep> {
    Ok(match &node.op {
        Op::CausalConv1d { weight, .. } => {
            let w = &params[weight.0 as usize];
            let (h, l) = (w.dim(0), w.numel() / w.dim(0));
            let mut lh = vec![0.0f32; h * l];
            for c in 0..h {
                for j in 0..l {
                    lh[j * h + c] = w.data()[c * l + j];
                }
            }
            Prep::ConvLh(lh)
        }
        Op::Rope {
            head_dim, theta, ..
        } => Prep::Rope(Rope::new(*head_dim, *theta)?),
        _ => Prep::None,
    })
}

/// The sequence length of this call, from the fed values' `Seq` dimensions, after checking every
/// feed against its declared shape.
fn bindings(g: &Graph, feeds: &[(ValueId, Val)]) -> Result<Bindings> {
    let mut seq = None;
    for (v, val) in feeds {
        let info = g.value(*v);
        let dims = val.dims();
        let kind_ok = matches!(
            (val, info.elem),
            (Val::Ids(_), Elem::Token) | (Val::F(_), Elem::F32)
        );
        let mut ok = kind_ok && dims.len() == info.shape.len();
        for (d, sym) in dims.iter().zip(&info.shape) {
            match sym {
                Dim::Fixed(n) => ok &= d == n,
                Dim::Seq => match seq {
                    None => seq = Some(*d),
                    Some(s) => ok &= s == *d,
                },
                _ => ok = false,
            }
        }
        if !ok {
            return Err(Error::input(format!(
                "`{}` must be {} ({:?}), got {dims:?}",
                info.name,
                crate::graph::shape_text(&info.shape),
                info.elem
            )));
        }
    }
    let seq = seq.unwrap_or(0);
    if feeds
        .iter()
        .any(|(v, _)| g.value(*v).shape.contains(&Dim::Seq))
        && seq == 0
    {
        return Err(Error::input("a call needs at least one row"));
    }
    Ok(Bindings { seq, past: 0 })
}

/// Reports a weighted node's input to observers that want inputs (GPTQ's Gram matrices), seen
/// the way its weight sees it.
fn report_input(node: &Node, vals: &[Option<Val>], params: &[Tensor], obs: &mut dyn Observer) {
    if !obs.wants_inputs() {
        return;
    }
    let Some(Some(Val::F(x))) = node.inputs.first().map(|v| &vals[v.0 as usize]) else {
        return;
    };
    let input = match &node.op {
        Op::Linear { .. } | Op::PointwiseFromTokens { .. } => OpInput::Tokens {
            x: x.data(),
            tokens: x.dim(0),
            features: x.dim(x.rank() - 1),
        },
        Op::PointwiseToTokens { .. } => OpInput::Channels {
            x: x.data(),
            channels: x.dim(0),
            positions: x.dim(1) * x.dim(2),
        },
        Op::Conv2d {
            weight,
            stride,
            dilation,
            groups,
            pad,
            ..
        } => {
            let w = &params[weight.0 as usize];
            OpInput::Conv {
                x,
                kernel: (w.dim(2), w.dim(3)),
                spec: conv_spec(*stride, *dilation, *groups, pad),
            }
        }
        _ => return,
    };
    obs.observe_input(&node.name, input);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::{argmax, Decoder, FloatDecoder};
    use crate::graph::builder::FromConfig;
    use crate::graph::cost::tests::tiny_lfm2;
    use crate::models::lfm2;
    use crate::models::mobilenetv5::{self, VisionConfig};
    use crate::observe::NoObserver;

    fn bits(t: &Tensor) -> Vec<u32> {
        t.data().iter().map(|v| v.to_bits()).collect()
    }

    #[test]
    fn random_weights_follow_key_and_role() {
        let cfg = tiny_lfm2();
        let g = lfm2::graph::build(&cfg, &FromConfig, "model").unwrap();
        let a = FloatProgram::random(g.clone(), 1).unwrap();
        let b = FloatProgram::random(g.clone(), 1).unwrap();
        let c = FloatProgram::random(g.clone(), 2).unwrap();
        for (x, (y, z)) in a.params().iter().zip(b.params().iter().zip(c.params())) {
            assert_eq!(bits(x), bits(y));
            assert_ne!(bits(x), bits(z));
        }
        // By key, not by position: a graph declaring the weights in another order agrees.
        let mut shuffled = g.clone();
        shuffled.params.reverse();
        let n = g.params.len() as u32;
        for node in &mut shuffled.nodes {
            let remap = |p: &mut crate::graph::ParamId| p.0 = n - 1 - p.0;
            match &mut node.op {
                Op::Embedding { table: p }
                | Op::RmsNorm { weight: p, .. }
                | Op::Linear {
                    weight: p,
                    bias: None,
                }
                | Op::CausalConv1d {
                    weight: p,
                    bias: None,
                    ..
                } => remap(p),
                op => assert!(op.params().is_empty(), "{}", op.kind()),
            }
        }
        let s = FloatProgram::random(shuffled, 1).unwrap();
        for p in &g.params {
            assert_eq!(
                bits(a.param(&p.key).unwrap()),
                bits(s.param(&p.key).unwrap())
            );
        }
        let norm = a.param("model.layers.0.operator_norm.weight").unwrap();
        assert!(norm.data().iter().all(|v| (0.9..=1.1).contains(v)));
        let w1 = a.param("model.layers.0.feed_forward.w1.weight").unwrap();
        let bound = 1.0 / (cfg.hidden_size as f32).sqrt();
        assert!(w1.data().iter().all(|v| v.abs() <= bound));
        let spread = w1.data().iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(spread > 0.9 * bound, "{spread}");
    }

    /// A random LM runs prefill and decode with finite, varied logits; a small random encoder
    /// runs too.
    #[test]
    fn random_models_run() {
        let cfg = tiny_lfm2();
        let g = lfm2::graph::build(&cfg, &FromConfig, "model").unwrap();
        let lm = FloatProgram::random(g, 7).unwrap();
        let ids: Vec<u32> = (0..9)
            .map(|i| (i * 13 + 1) % cfg.vocab_size as u32)
            .collect();
        let embeds = lm.graph.port("embeds").unwrap();
        let prompt = lm
            .run(
                vec![(lm.graph.port("ids").unwrap(), Val::Ids(ids.clone()))],
                &[embeds],
                None,
                &mut NoObserver,
            )
            .unwrap()
            .remove(0);
        let mut state = lm.new_state(32);
        let mut dec = FloatDecoder {
            lm: &lm,
            state: &mut state,
            prompt: Some(prompt),
            obs: &mut NoObserver,
        };
        let mut logits = dec.prefill().unwrap();
        for _ in 0..4 {
            assert!(logits.iter().all(|v| v.is_finite()));
            let (lo, hi) = logits
                .iter()
                .fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
            assert!(hi - lo > 1e-3 && hi - lo < 100.0, "{lo}..{hi}");
            logits = dec.step(argmax(&logits)).unwrap();
        }
        assert_eq!(dec.cache_len(), ids.len() + 4);

        let vision = VisionConfig {
            block_strings: vec![
                vec!["er_r1_k3_s2_e4_c8".into()],
                vec!["uir_r1_a3_k5_s2_e4_c16".into()],
                vec!["mqa_r1_k3_h2_v2_s1_d8_c16".into()],
            ],
            stem_size: 8,
            msfa_indices: vec![-2, -1],
            msfa_output_resolution: 2,
            num_features: 16,
            image_size: 32,
            norm_eps: 1e-6,
            stem_bias: true,
            layer_scale_init_value: Some(1e-5),
        };
        let g = mobilenetv5::graph::build(&vision, &FromConfig, "", (32, 32)).unwrap();
        let (px, feats) = (g.port("pixels").unwrap(), g.port("features").unwrap());
        let enc = FloatProgram::random(g, 3).unwrap();
        let pixels = Tensor::new(
            &[3, 32, 32],
            (0..3072).map(|i| (i % 7) as f32 / 7.0).collect(),
        );
        let y = enc
            .run(
                vec![(px, Val::F(pixels.unwrap()))],
                &[feats],
                None,
                &mut NoObserver,
            )
            .unwrap()
            .remove(0);
        assert_eq!(y.shape(), &[4, 16]);
        assert!(y.data().iter().all(|v| v.is_finite()));
    }
}
