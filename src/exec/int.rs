//! The integer executor: runs a lowered graph (`Graph<QOp>`) with the scalar integer references
//! in [`crate::quant::ops`]. Integers only between the edges (float arithmetic is denied here);
//! observers get each observed value dequantized under its float name, so the two paths can be
//! compared op by op.
#![deny(clippy::float_arithmetic)]

use super::state::{SequenceState, SlotData};
use super::{at_node, check_batch, join_rows, Plan};
use crate::error::{Error, Result};
use crate::graph::qop::QOp;
use crate::graph::{Dim, Elem, Graph, Node, ValueId};
use crate::observe::{NoObserver, Observer};
use crate::ops::attention::Mask;
use crate::ops::tokens::{pixel_shuffle, slice_rows};
use crate::quant::ops::linear::linear_rows;
use crate::quant::params::ActQuant;
use crate::quant::tensor::QTensor;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// A value at run time.
#[derive(Clone, Debug)]
pub enum QVal {
    Q(QTensor),
    Ids(Vec<u32>),
}

/// The lowered graph of one model part: immutable, shared by every sequence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IntProgram {
    pub graph: Graph<QOp>,
}

impl IntProgram {
    pub fn new(graph: Graph<QOp>) -> Self {
        Self { graph }
    }

    /// A fresh decode state for up to `context` positions (windows at their zero points).
    pub fn new_state(&self, context: usize) -> SequenceState {
        SequenceState::new(&self.graph.states, context)
    }

    /// The quantization of value `v`.
    pub fn quant(&self, v: ValueId) -> Result<ActQuant> {
        match self.graph.value(v).elem {
            Elem::Q(q) => Ok(q),
            _ => Err(Error::input(format!(
                "`{}` is not an integer value",
                self.graph.value(v).name
            ))),
        }
    }

    /// For a language-model graph (ports `ids`, `embeds`, `logits`): `embed_tokens(ids)` in the
    /// `embeds` quantization.
    pub fn embed(&self, ids: &[u32]) -> Result<QTensor> {
        let g = &self.graph;
        let feed = vec![(g.port("ids")?, QVal::Ids(ids.to_vec()))];
        let out = self.run(feed, &[g.port("embeds")?], None, &mut NoObserver)?;
        Ok(out.into_iter().next().expect("one output requested"))
    }

    /// For a language-model graph: the integer logits of every row of `x`, token ids
    /// (`QVal::Ids`, fed at the `ids` port) or input embeddings (`QVal::Q`, `[T, hidden]` in the
    /// `embeds` quantization), at the positions after `state`'s, which then holds `T` more. The
    /// observer sees every op, the embeddings and the head included (see
    /// `FloatProgram::logits`).
    pub fn logits(
        &self,
        x: QVal,
        state: &mut SequenceState,
        obs: &mut dyn Observer,
    ) -> Result<QTensor> {
        let g = &self.graph;
        let port = g.port(match x {
            QVal::Ids(_) => "ids",
            QVal::Q(_) => "embeds",
        })?;
        let out = self.run(vec![(port, x)], &[g.port("logits")?], Some(state), obs)?;
        Ok(out.into_iter().next().expect("one output requested"))
    }

    /// Runs the nodes needed for `outputs` from `feeds` (see `FloatProgram::run`).
    pub fn run(
        &self,
        feeds: Vec<(ValueId, QVal)>,
        outputs: &[ValueId],
        state: Option<&mut SequenceState>,
        obs: &mut dyn Observer,
    ) -> Result<Vec<QTensor>> {
        match state {
            Some(s) => self.run_rows(feeds, outputs, &mut [s], obs),
            None => self.run_rows(feeds, outputs, &mut [], obs),
        }
    }

    /// A batched decode step: row `i` of the feeds is the next position of `states[i]` (see
    /// `FloatProgram::run_batch`). Integer arithmetic is exact, so each row's outputs equal those
    /// of a one-row [`Self::run`] with its state, bit for bit, on every kernel level.
    pub fn run_batch(
        &self,
        feeds: Vec<(ValueId, QVal)>,
        outputs: &[ValueId],
        states: &mut [&mut SequenceState],
        obs: &mut dyn Observer,
    ) -> Result<Vec<QTensor>> {
        check_batch(self.check_feeds(&feeds)?, states.len())?;
        self.run_rows(feeds, outputs, states, obs)
    }

    /// For a language-model graph: the integer logits `[B, vocab]` of one batched decode step,
    /// row `i` for `tokens[i]` appended to `states[i]`.
    pub fn decode_batch(
        &self,
        tokens: &[u32],
        states: &mut [&mut SequenceState],
        obs: &mut dyn Observer,
    ) -> Result<QTensor> {
        let g = &self.graph;
        let feed = vec![(g.port("ids")?, QVal::Ids(tokens.to_vec()))];
        let out = self.run_batch(feed, &[g.port("logits")?], states, obs)?;
        Ok(out.into_iter().next().expect("one output requested"))
    }

    /// [`Self::run`] with the call's rows split evenly over `states` in order.
    fn run_rows(
        &self,
        feeds: Vec<(ValueId, QVal)>,
        outputs: &[ValueId],
        states: &mut [&mut SequenceState],
        obs: &mut dyn Observer,
    ) -> Result<Vec<QTensor>> {
        let g = &self.graph;
        let given: Vec<ValueId> = feeds.iter().map(|(v, _)| *v).collect();
        let seq = self.check_feeds(&feeds)?;
        let plan = Plan::new(g, &given, outputs, states, seq, QOp::uses_position)?;
        let mut vals: Vec<Option<QVal>> = vec![None; g.values.len()];
        for (v, val) in feeds {
            if let (Some(p), QVal::Q(t)) = (g.producer(v), &val) {
                report(&g.nodes[p], t, obs);
            }
            vals[v.0 as usize] = Some(val);
        }
        for &i in &plan.sched {
            let node = &g.nodes[i];
            let t0 = super::profile::enabled().then(std::time::Instant::now);
            let y = self
                .eval(node, &vals, states, &plan.starts)
                .map_err(at_node(&node.name))?;
            if let Some(t0) = t0 {
                let kind = match &node.op {
                    QOp::Conv2d(c) if c.depthwise => "conv2d_depthwise",
                    op => op.kind(),
                };
                super::profile::add(kind, t0.elapsed());
            }
            for v in &node.inputs {
                if plan.last[v.0 as usize] == Some(i) {
                    vals[v.0 as usize] = None;
                }
            }
            report(node, &y, obs);
            vals[node.output.0 as usize] = Some(QVal::Q(y));
        }
        plan.finish(states, seq);
        outputs
            .iter()
            .map(|o| match &vals[o.0 as usize] {
                Some(QVal::Q(t)) => Ok(t.clone()),
                _ => Err(Error::input(format!(
                    "`{}` is not an integer value of this run",
                    g.value(*o).name
                ))),
            })
            .collect()
    }

    /// Checks every feed against its declared shape and quantization; returns the rows (`Seq`).
    fn check_feeds(&self, feeds: &[(ValueId, QVal)]) -> Result<usize> {
        let g = &self.graph;
        let mut seq = None;
        for (v, val) in feeds {
            let info = g.value(*v);
            let (dims, ok_kind) = match (val, info.elem) {
                (QVal::Ids(ids), Elem::Token) => (vec![ids.len()], true),
                (QVal::Q(t), Elem::Q(q)) => (t.shape.clone(), t.q == q),
                (QVal::Q(t), _) => (t.shape.clone(), false),
                (QVal::Ids(ids), _) => (vec![ids.len()], false),
            };
            let mut ok = ok_kind && dims.len() == info.shape.len();
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
                    "`{}` must be {} in {:?}, got {dims:?}{}",
                    info.name,
                    crate::graph::shape_text(&info.shape),
                    info.elem,
                    match val {
                        QVal::Q(t) => format!(" in {:?}", t.q),
                        QVal::Ids(_) => String::new(),
                    }
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
        Ok(seq)
    }

    fn get<'v>(&self, vals: &'v [Option<QVal>], node: &Node<QOp>, k: usize) -> &'v QTensor {
        match &vals[node.inputs[k].0 as usize] {
            Some(QVal::Q(t)) => t,
            _ => panic!("`{}`: input {k} is not a computed integer value", node.name),
        }
    }

    fn eval(
        &self,
        node: &Node<QOp>,
        vals: &[Option<QVal>],
        states: &mut [&mut SequenceState],
        starts: &[usize],
    ) -> Result<QTensor> {
        let x = || self.get(vals, node, 0);
        Ok(match &node.op {
            QOp::Embedding(e) => match &vals[node.inputs[0].0 as usize] {
                Some(QVal::Ids(ids)) => e.forward(ids)?,
                _ => return Err(Error::input("embedding input must be token ids")),
            },
            QOp::Linear(l) => l.forward(x()),
            QOp::TiedLinear {
                table,
                mult,
                x: qx,
                y,
            } => {
                let QOp::Embedding(e) = &self.graph.nodes[*table].op else {
                    return Err(Error::input(
                        "a tied projection must name an embedding node",
                    ));
                };
                let (x, w) = (x(), &e.table);
                if x.q != *qx || x.shape.last() != Some(&w.inp) {
                    return Err(Error::input(format!(
                        "tied projection input {:?} in {:?}, expected [..., {}] in {qx:?}",
                        x.shape, x.q, w.inp
                    )));
                }
                let t = x.numel() / w.inp;
                let data = linear_rows(w, None, mult, (*qx, *y), &x.data, t);
                let mut shape = x.shape.clone();
                *shape.last_mut().expect("checked above") = w.out;
                QTensor::new(&shape, data, *y)
            }
            QOp::RmsNorm(n) => n.forward(x()),
            QOp::Slice { start: s0, len } => {
                let x = x();
                let d = *x.shape.last().expect("sliced values have a last dim");
                let mut data = Vec::with_capacity(x.numel() / d * len);
                for row in x.data.chunks_exact(d) {
                    data.extend_from_slice(&row[*s0..s0 + len]);
                }
                let mut shape = x.shape.clone();
                *shape.last_mut().expect("checked above") = *len;
                QTensor::new(&shape, data, x.q)
            }
            QOp::Add(a) => a.forward(x(), self.get(vals, node, 1)),
            QOp::Mul(m) => m.forward(x(), self.get(vals, node, 1)),
            QOp::Lut(l) => l.forward(x()),
            QOp::CausalConv1d { conv, state: s } => {
                let (x, n) = (x(), states.len());
                let mut parts = Vec::with_capacity(n);
                for (r, state) in states.iter_mut().enumerate() {
                    let SlotData::I16(window) = state.slot_mut(s.0 as usize) else {
                        return Err(Error::input("integer conv state expected"));
                    };
                    parts.push(conv.forward(&rows_of(x, r, n), window));
                }
                join(parts)
            }
            QOp::Rope { rope, heads } => {
                let (x, n) = (x(), starts.len());
                join(
                    (0..n)
                        .map(|r| rope.forward(&rows_of(x, r, n), *heads, starts[r]))
                        .collect(),
                )
            }
            QOp::CachedAttention { attn, k, v } => {
                let (q, kn, vn) = (x(), self.get(vals, node, 1), self.get(vals, node, 2));
                let n = states.len();
                let t = q.shape[0] / n;
                let (qw, kw, vw) = (q.data.len() / n, kn.data.len() / n, vn.data.len() / n);
                let mut parts = Vec::with_capacity(n);
                for (r, (state, &start)) in states.iter_mut().zip(starts).enumerate() {
                    let (SlotData::I16(kc), SlotData::I16(vc)) =
                        state.slot_pair_mut(k.0 as usize, v.0 as usize)
                    else {
                        return Err(Error::input("integer K/V state expected"));
                    };
                    kc.extend_from_slice(&kn.data[r * kw..(r + 1) * kw]);
                    vc.extend_from_slice(&vn.data[r * vw..(r + 1) * vw]);
                    parts.push(attn.forward_raw(
                        &q.data[r * qw..(r + 1) * qw],
                        kc,
                        vc,
                        t,
                        start + t,
                        Mask::Causal { offset: start },
                    ));
                }
                QTensor::new(&[t * n, attn.n_heads * attn.dv], join_rows(parts), attn.out)
            }
            QOp::Attention(a) => a.forward(
                x(),
                self.get(vals, node, 1),
                self.get(vals, node, 2),
                Mask::None,
            ),
            QOp::Conv2d(c) => c.forward(x()),
            QOp::RmsNorm2d(n) => n.forward(x()),
            QOp::ChannelScale(s) => s.forward(x()),
            QOp::PointwiseToTokens(l) => l.forward(&map_to_tokens(x())),
            QOp::PointwiseFromTokens { linear, h, w } => {
                tokens_to_map(&linear.forward(x()), *h, *w)
            }
            QOp::ResizeNearest(r) => r.forward(x()),
            QOp::ResizeBilinear(r) => r.forward(x()),
            QOp::AvgPool(p) => p.forward(x()),
            QOp::Concat(c) => {
                let xs: Vec<&QTensor> = (0..node.inputs.len())
                    .map(|k| self.get(vals, node, k))
                    .collect();
                c.forward(&xs)
            }
            QOp::ToTokens => map_to_tokens(x()),
            QOp::LayerNorm(n) => n.forward(x()),
            QOp::SliceRows { start: s0, len } => {
                let x = x();
                let d = x.shape[1];
                QTensor::new(&[*len, d], slice_rows(&x.data, d, *s0, *len), x.q)
            }
            QOp::ClsPosEmbed(e) => e.forward(x()),
            QOp::PixelShuffle { h, w, scale } => {
                let x = x();
                let c = x.shape[1];
                let y = pixel_shuffle(&x.data, *h, *w, c, *scale);
                QTensor::new(&[(h / scale) * (w / scale), scale * scale * c], y, x.q)
            }
        })
    }
}

/// Row block `r` of `n` equal blocks of `x` (the rows of one sequence in a batched step); `x`
/// itself when it is all one sequence's.
fn rows_of(x: &QTensor, r: usize, n: usize) -> Cow<'_, QTensor> {
    if n == 1 {
        return Cow::Borrowed(x);
    }
    let mut shape = x.shape.clone();
    shape[0] /= n;
    let w = x.data.len() / n;
    Cow::Owned(QTensor::new(
        &shape,
        x.data[r * w..(r + 1) * w].to_vec(),
        x.q,
    ))
}

/// The per-sequence outputs of a stateful op joined back into the call's rows, in order.
fn join(mut parts: Vec<QTensor>) -> QTensor {
    if parts.len() == 1 {
        return parts.pop().expect("one part");
    }
    let mut shape = parts[0].shape.clone();
    shape[0] = parts.iter().map(|p| p.shape[0]).sum();
    let q = parts[0].q;
    QTensor::new(
        &shape,
        join_rows(parts.into_iter().map(|p| p.data).collect()),
        q,
    )
}

/// `[C, H, W]` map -> `[H * W, C]` token rows (an integer copy).
pub fn map_to_tokens(x: &QTensor) -> QTensor {
    assert_eq!(x.shape.len(), 3, "map_to_tokens: {:?}", x.shape);
    let (c, hw) = (x.shape[0], x.shape[1] * x.shape[2]);
    let mut data = vec![0i16; c * hw];
    for (ch, plane) in x.data.chunks_exact(hw.max(1)).enumerate() {
        for (p, &v) in plane.iter().enumerate() {
            data[p * c + ch] = v;
        }
    }
    QTensor::new(&[hw, c], data, x.q)
}

/// `[H * W, C]` token rows -> `[C, H, W]` map (an integer copy).
pub fn tokens_to_map(x: &QTensor, h: usize, w: usize) -> QTensor {
    assert_eq!(x.shape.len(), 2, "tokens_to_map: {:?}", x.shape);
    let (hw, c) = (x.shape[0], x.shape[1]);
    assert_eq!(hw, h * w, "tokens_to_map: {hw} tokens for {h}x{w}");
    let mut data = vec![0i16; c * hw];
    for (p, row) in x.data.chunks_exact(c.max(1)).enumerate() {
        for (ch, &v) in row.iter().enumerate() {
            data[ch * hw + p] = v;
        }
    }
    QTensor::new(&[c, h, w], data, x.q)
}

/// Reports an observed node's output (dequantized) under its name and aliases.
fn report(node: &Node<QOp>, y: &QTensor, obs: &mut dyn Observer) {
    if node.observed && obs.enabled() {
        let f = y.dequantize();
        obs.observe(&node.name, &f);
        for a in &node.aliases {
            obs.observe(a, &f);
        }
    }
}
