//! What each node of a graph costs at given [`Bindings`]: multiply-accumulates, vector work,
//! weight, activation and decode-state bytes. Generic over the architecture: an NPU cost model,
//! `autoneural graph` and `inspect` read it from the graph alone, without weights.
//!
//! Conventions:
//! - **MACs** count the multiply-accumulates of the contractions: linear `rows * in * out`,
//!   conv2d `C_out * H_out * W_out * (C_in / groups) * kH * kW`, pointwise projections the same
//!   with a 1x1 kernel, the causal conv `T * H * L`, attention `heads * T_q * T_k * (d + d_v)`
//!   (`QK^T` and `PV`). Cached attention counts every query against all `Past + Seq` keys, the
//!   dense `[T, P + T]` score matrix a static-shape accelerator computes (the CPU kernel skips
//!   the masked upper triangle, so a prefill does about `T^2 / 2` fewer; a decode step is the
//!   same either way). An embedding is a gather: 0 MACs. Biases are not counted.
//! - **Vector ops** count the element-wise work the MAC count leaves out, one per output element
//!   of norms, activations, add / mul, channel scale, RoPE and resizes, `kH * kW` per output
//!   element of an average pool, and one per attention score (the softmax). Data movement
//!   (slice, concat, to-tokens, embedding) is free.
//! - **Weights**: `params` are the elements of the weights a node reads (a tied head reads the
//!   embedding table again, so per-node params can sum to more than [`Graph::param_count`]).
//!   Matrices, tables and kernels (rank >= 2) take the node's weight precision in bits (32 for
//!   the float graph); vectors (norm weights, biases, layer scales) stay at 4 bytes, as the
//!   integer path keeps them wide. `weight_read_bytes` is what one call reads: the whole weight,
//!   except an embedding, which reads its `T` rows.
//! - **Activations**: `input_bytes` / `output_bytes` are elements times the value's element size
//!   ([`Elem::bytes`]: 4 for f32 and token ids, 2 for the integer path's `i16`).
//! - **State**: a causal conv reads and rewrites its `[L - 1, H]` window; cached attention writes
//!   this call's `T` rows of K and V and reads K and V at all `Past + Seq` positions.
//!
//! The integer graph (`Graph<QOp>`, [`GraphCost::integer`]) has the same values and shapes, so
//! MACs, vector ops, activation and state bytes follow the same rules (activations and state at
//! their `i16` storage). Its weights live in the ops: `params` count the float weights each op
//! stands for, `weight_bytes` what the prepared op holds for them (packed int4 / int8 / int16
//! values, per-group scales, `i64` biases, per-channel multipliers; norm weights and layer
//! scales are multipliers). Lookup tables (activations, RoPE) are not counted as weights.

use super::qop::QOp;
use super::{bind_shape, Bindings, Elem, Graph, Node, Op, ParamId, StateId, ValueId};
use crate::quant::arith::Multiplier;
use crate::quant::ops::linear::{PackedWeights, QMatrix};
use serde::Serialize;
use std::collections::BTreeMap;

/// Bits of a float weight.
pub const F32_BITS: u32 = 32;

/// The cost of one node (or a sum of nodes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NodeCost {
    pub macs: u64,
    pub vector_ops: u64,
    pub params: u64,
    pub weight_bytes: u64,
    pub weight_read_bytes: u64,
    pub input_bytes: u64,
    pub output_bytes: u64,
    pub state_read_bytes: u64,
    pub state_write_bytes: u64,
}

impl std::ops::AddAssign for NodeCost {
    fn add_assign(&mut self, o: Self) {
        self.macs += o.macs;
        self.vector_ops += o.vector_ops;
        self.params += o.params;
        self.weight_bytes += o.weight_bytes;
        self.weight_read_bytes += o.weight_read_bytes;
        self.input_bytes += o.input_bytes;
        self.output_bytes += o.output_bytes;
        self.state_read_bytes += o.state_read_bytes;
        self.state_write_bytes += o.state_write_bytes;
    }
}

/// Bytes of `numel` weight elements of rank `rank` at `bits` (vectors stay at 4 bytes).
pub fn weight_bytes(numel: usize, rank: usize, bits: u32) -> u64 {
    let bits = if rank >= 2 { bits } else { F32_BITS };
    (numel as u64 * bits as u64).div_ceil(8)
}

/// Activation bytes in and out of `node`, under `b`.
fn io_cost<O>(g: &Graph<O>, node: &Node<O>, b: Bindings) -> NodeCost {
    let bytes = |v: ValueId| {
        let n: usize = bind_shape(&g.value(v).shape, b).iter().product();
        (n * g.value(v).elem.bytes()) as u64
    };
    NodeCost {
        input_bytes: node.inputs.iter().map(|&v| bytes(v)).sum(),
        output_bytes: bytes(node.output),
        ..NodeCost::default()
    }
}

/// A causal conv's window: read and rewritten whole.
fn window_traffic<O>(g: &Graph<O>, state: StateId, b: Bindings, c: &mut NodeCost) {
    let s = &g.states[state.0 as usize];
    let window = (s.numel(b.past) * s.elem.bytes()) as u64;
    c.state_read_bytes += window;
    c.state_write_bytes += window;
}

/// Cached attention over `Past + Seq` keys: MACs, softmax and K/V traffic.
fn cached_attention<O>(
    g: &Graph<O>,
    (heads, d, dv): (usize, usize, usize),
    [k, v]: [StateId; 2],
    b: Bindings,
    c: &mut NodeCost,
) {
    let (t, keys) = (b.seq as u64, (b.past + b.seq) as u64);
    let scores = heads as u64 * t * keys;
    c.macs = scores * (d + dv) as u64;
    c.vector_ops = scores;
    for s in [k, v] {
        let s = &g.states[s.0 as usize];
        let row = (s.width() * s.elem.bytes()) as u64;
        c.state_write_bytes += t * row;
        c.state_read_bytes += keys * row;
    }
}

/// Unmasked attention of `q` rows over the rows of `k`.
fn attention<O>(
    g: &Graph<O>,
    node: &Node<O>,
    b: Bindings,
    (heads, d, dv): (usize, usize, usize),
) -> (u64, u64) {
    let rows = |v: ValueId| {
        bind_shape(&g.value(v).shape, b)
            .first()
            .copied()
            .unwrap_or(0) as u64
    };
    let scores = heads as u64 * rows(node.inputs[0]) * rows(node.inputs[1]);
    (scores * (d + dv) as u64, scores)
}

/// Elements of `node`'s output under `b`.
fn out_numel<O>(g: &Graph<O>, node: &Node<O>, b: Bindings) -> u64 {
    bind_shape(&g.value(node.output).shape, b)
        .iter()
        .product::<usize>() as u64
}

/// The cost of node `i` of `g` under `b`, its matrices at `wbits` bits.
pub fn node_cost(g: &Graph, i: usize, b: Bindings, wbits: u32) -> NodeCost {
    let node = &g.nodes[i];
    let pshape = |p: ParamId| g.params[p.0 as usize].shape.as_slice();
    let out = out_numel(g, node, b);
    let mut c = io_cost(g, node, b);
    for p in node.op.params() {
        let info = &g.params[p.0 as usize];
        let wb = weight_bytes(info.numel(), info.shape.len(), wbits);
        c.params += info.numel() as u64;
        c.weight_bytes += wb;
        c.weight_read_bytes += wb;
    }
    match &node.op {
        Op::Embedding { table } => {
            let rows = out / pshape(*table)[1] as u64;
            c.weight_read_bytes = weight_bytes(rows as usize * pshape(*table)[1], 2, wbits);
        }
        // Every output element sums one weight row: `in`, `C_in / groups * kH * kW`, or `L`.
        Op::Linear { weight, .. }
        | Op::Conv2d { weight, .. }
        | Op::PointwiseToTokens { weight }
        | Op::PointwiseFromTokens { weight, .. } => {
            c.macs = out * pshape(*weight)[1..].iter().product::<usize>() as u64;
        }
        Op::CausalConv1d { weight, state, .. } => {
            c.macs = out * *pshape(*weight).last().unwrap_or(&0) as u64;
            window_traffic(g, *state, b, &mut c);
        }
        Op::CachedAttention {
            heads,
            head_dim,
            k,
            v,
            ..
        } => cached_attention(g, (*heads, *head_dim, *head_dim), [*k, *v], b, &mut c),
        Op::Attention { heads, d, dv, .. } => {
            (c.macs, c.vector_ops) = attention(g, node, b, (*heads, *d, *dv));
        }
        Op::RmsNorm { .. }
        | Op::RmsNorm2d { .. }
        | Op::LayerNorm { .. }
        | Op::ClsPosEmbed { .. }
        | Op::Add
        | Op::Mul
        | Op::Act(_)
        | Op::ChannelScale { .. }
        | Op::Rope { .. }
        | Op::ResizeNearest { .. }
        | Op::ResizeBilinear { .. } => c.vector_ops = out,
        Op::AvgPool { kh, kw, .. } => c.vector_ops = out * (kh * kw) as u64,
        Op::Slice { .. }
        | Op::SliceRows { .. }
        | Op::PixelShuffle { .. }
        | Op::Concat
        | Op::ToTokens => {}
    }
    c
}

/// Bytes an integer matrix holds: its packed values and per-group scales.
fn qmatrix_bytes(m: &QMatrix) -> u64 {
    let values = match &m.data {
        PackedWeights::I4(v) => v.len(),
        PackedWeights::I8(v) => v.len(),
        PackedWeights::I16(v) => 2 * v.len(),
    };
    (values + 2 * m.group_mult.len()) as u64
}

const MULT_BYTES: u64 = std::mem::size_of::<Multiplier>() as u64;

/// A prepared weighted op's weights: the matrix, an `i64` bias and per-row multipliers.
fn qweights(m: &QMatrix, bias: &Option<Vec<i64>>, mult: usize, c: &mut NodeCost) {
    let nb = bias.as_ref().map_or(0, |b| b.len()) as u64;
    c.params += (m.out * m.inp) as u64 + nb;
    c.weight_bytes += qmatrix_bytes(m) + 8 * nb + MULT_BYTES * mult as u64;
    c.weight_read_bytes = c.weight_bytes;
}

/// The cost of node `i` of the integer graph `g` under `b` (see the module docs).
pub fn qnode_cost(g: &Graph<QOp>, i: usize, b: Bindings) -> NodeCost {
    let node = &g.nodes[i];
    let out = out_numel(g, node, b);
    let mut c = io_cost(g, node, b);
    // Norm weights and layer scales: one multiplier and one sign per channel.
    let per_channel = |n: usize, c: &mut NodeCost| {
        c.params = n as u64;
        c.weight_bytes = n as u64 * (MULT_BYTES + 1);
        c.weight_read_bytes = c.weight_bytes;
        c.vector_ops = out;
    };
    match &node.op {
        QOp::Embedding(e) => {
            qweights(&e.table, &None, e.mult.len(), &mut c);
            let rows = out / e.table.inp.max(1) as u64;
            let per_row = qmatrix_bytes(&e.table) / e.table.out.max(1) as u64 + MULT_BYTES;
            c.weight_read_bytes = rows * per_row;
        }
        QOp::Linear(l) | QOp::PointwiseToTokens(l) | QOp::PointwiseFromTokens { linear: l, .. } => {
            qweights(&l.weight, &l.bias, l.mult.len(), &mut c);
            c.macs = out * l.weight.inp as u64;
        }
        QOp::TiedLinear { table, mult, .. } => {
            if let Some(QOp::Embedding(e)) = g.nodes.get(*table).map(|n| &n.op) {
                qweights(&e.table, &None, mult.len(), &mut c);
                c.macs = out * e.table.inp as u64;
            }
        }
        QOp::Conv2d(conv) => {
            qweights(&conv.weight, &conv.bias, conv.mult.len(), &mut c);
            c.macs = out * conv.weight.inp as u64;
        }
        QOp::CausalConv1d { conv, state } => {
            qweights(&conv.weight, &conv.bias, conv.mult.len(), &mut c);
            c.macs = out * conv.weight.inp as u64;
            window_traffic(g, *state, b, &mut c);
        }
        QOp::CachedAttention { attn, k, v } => {
            cached_attention(g, (attn.n_heads, attn.d, attn.dv), [*k, *v], b, &mut c)
        }
        QOp::Attention(attn) => {
            (c.macs, c.vector_ops) = attention(g, node, b, (attn.n_heads, attn.d, attn.dv));
        }
        QOp::RmsNorm(n) => per_channel(n.w_mult.len(), &mut c),
        QOp::RmsNorm2d(n) => per_channel(n.norm.w_mult.len(), &mut c),
        QOp::ChannelScale(s) => per_channel(s.mult.len(), &mut c),
        QOp::LayerNorm(n) => {
            per_channel(n.w_mult.len(), &mut c);
            // Biases: one `i64` each.
            let nb = n.bias.as_ref().map_or(0, Vec::len) as u64;
            c.params += nb;
            c.weight_bytes += 8 * nb;
            c.weight_read_bytes = c.weight_bytes;
        }
        QOp::ClsPosEmbed(e) => {
            // The float weights it folds (class token, and position embeddings of every output
            // row: the first is folded into the class row), held as `i64` output steps.
            let held = (e.cls.len() + e.pos.as_ref().map_or(0, Vec::len)) as u64;
            c.params = e.cls.len() as u64 + e.pos.as_ref().map_or(0, |p| (p.len() + e.dim) as u64);
            c.weight_bytes = 8 * held + MULT_BYTES;
            c.weight_read_bytes = c.weight_bytes;
            c.vector_ops = out;
        }
        QOp::Add(_)
        | QOp::Mul(_)
        | QOp::Lut(_)
        | QOp::Rope { .. }
        | QOp::ResizeNearest(_)
        | QOp::ResizeBilinear(_) => c.vector_ops = out,
        QOp::AvgPool(p) => c.vector_ops = out * (p.kh * p.kw) as u64,
        QOp::Slice { .. }
        | QOp::SliceRows { .. }
        | QOp::PixelShuffle { .. }
        | QOp::Concat(_)
        | QOp::ToTokens => {}
    }
    c
}

/// One op kind's share of a [`GraphCost`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct KindCost {
    pub nodes: usize,
    pub cost: NodeCost,
}

/// Every node's cost under one binding, with totals.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GraphCost {
    pub seq: usize,
    pub past: usize,
    /// One entry per [`Graph::nodes`] entry, in order.
    pub nodes: Vec<NodeCost>,
    /// The sum over nodes (shared weights counted at every node reading them).
    pub total: NodeCost,
    pub by_kind: BTreeMap<&'static str, KindCost>,
    /// Distinct weight elements ([`Graph::param_count`] for the float graph).
    pub params: u64,
    /// Distinct weight bytes: each float weight at the precision of the first node reading it;
    /// what the prepared ops of an integer graph hold.
    pub weight_bytes: u64,
    /// Bytes of every state slot after this call (`Past + Seq` positions).
    pub state_bytes: u64,
}

impl GraphCost {
    /// The cost of every node of `g` under `b`, a node's matrices at `wbits(node)` bits.
    pub fn new(g: &Graph, b: Bindings, wbits: impl Fn(&Node) -> u32) -> Self {
        let mut bits: Vec<Option<u32>> = vec![None; g.params.len()];
        let nodes = (0..g.nodes.len())
            .map(|i| {
                let w = wbits(&g.nodes[i]);
                for p in g.nodes[i].op.params() {
                    bits[p.0 as usize].get_or_insert(w);
                }
                node_cost(g, i, b, w)
            })
            .collect();
        let weight_bytes = g
            .params
            .iter()
            .zip(&bits)
            .map(|(p, w)| weight_bytes(p.numel(), p.shape.len(), w.unwrap_or(F32_BITS)))
            .sum();
        let kinds = g.nodes.iter().map(|n| n.op.kind());
        Self::summed(g, b, nodes, kinds, g.param_count() as u64, weight_bytes)
    }

    /// The float graph's cost: every weight at 32 bits.
    pub fn float(g: &Graph, b: Bindings) -> Self {
        Self::new(g, b, |_| F32_BITS)
    }

    /// The integer graph's cost, weights as the prepared ops hold them. A tied head reads the
    /// embedding's table: distinct params and bytes count it once.
    pub fn integer(g: &Graph<QOp>, b: Bindings) -> Self {
        let nodes: Vec<NodeCost> = (0..g.nodes.len()).map(|i| qnode_cost(g, i, b)).collect();
        let (mut params, mut bytes) = (0, 0);
        for (n, c) in g.nodes.iter().zip(&nodes) {
            if let QOp::TiedLinear { mult, .. } = &n.op {
                // Only its multipliers are its own.
                bytes += MULT_BYTES * mult.len() as u64;
            } else {
                params += c.params;
                bytes += c.weight_bytes;
            }
        }
        let kinds = g.nodes.iter().map(|n| n.op.kind());
        Self::summed(g, b, nodes, kinds, params, bytes)
    }

    fn summed<O>(
        g: &Graph<O>,
        b: Bindings,
        nodes: Vec<NodeCost>,
        kinds: impl Iterator<Item = &'static str>,
        params: u64,
        weight_bytes: u64,
    ) -> Self {
        let mut total = NodeCost::default();
        let mut by_kind: BTreeMap<&'static str, KindCost> = BTreeMap::new();
        for (c, kind) in nodes.iter().zip(kinds) {
            total += *c;
            let k = by_kind.entry(kind).or_default();
            k.nodes += 1;
            k.cost += *c;
        }
        let state_bytes = g
            .states
            .iter()
            .map(|s| (s.numel(b.past + b.seq) * s.elem.bytes()) as u64)
            .sum();
        Self {
            seq: b.seq,
            past: b.past,
            nodes,
            total,
            by_kind,
            params,
            weight_bytes,
            state_bytes,
        }
    }
}

/// Decode-state sizes of a graph's slots at `context` positions, in bytes: (fixed windows,
/// growing K/V at `context` positions, K/V bytes per position).
pub fn state_sizes<O>(g: &Graph<O>, context: usize) -> (u64, u64, u64) {
    let (mut window, mut kv, mut per_pos) = (0u64, 0u64, 0u64);
    for s in &g.states {
        let e = s.elem.bytes() as u64;
        if s.grows() {
            kv += s.numel(context) as u64 * e;
            per_pos += s.width() as u64 * e;
        } else {
            window += s.numel(0) as u64 * e;
        }
    }
    (window, kv, per_pos)
}

/// Short text of an element type for listings: `f32`, `token`, `i8`, `i16`.
pub fn elem_text(e: Elem) -> String {
    match e {
        Elem::F32 => "f32".into(),
        Elem::Token => "token".into(),
        Elem::Q(q) => format!("i{}", q.bits),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::graph::builder::FromConfig;
    use crate::graph::{fixed, Dim, GraphBuilder};
    use crate::models::lfm2::{self, Lfm2Config};
    use crate::ops::activation::Activation;

    #[test]
    fn linear_conv_and_attention_macs() {
        let mut b = GraphBuilder::new(&FromConfig, "");
        let x = b.input("x", vec![Dim::Seq, Dim::Fixed(8)], Elem::F32);
        let y = b.linear("fc", x, 6, true).unwrap();
        b.act("act", Activation::Silu, y).unwrap();
        let g = b.finish();
        let c = GraphCost::float(&g, Bindings { seq: 5, past: 0 });
        assert_eq!(c.nodes[0].macs, 5 * 8 * 6);
        assert_eq!(c.nodes[0].params, 8 * 6 + 6);
        assert_eq!(c.nodes[0].weight_bytes, (8 * 6 + 6) * 4);
        assert_eq!(c.nodes[0].output_bytes, 5 * 6 * 4);
        assert_eq!((c.nodes[1].macs, c.nodes[1].vector_ops), (0, 30));
        assert_eq!(c.params, g.param_count() as u64);
        // int4 matrices, f32 bias.
        let q = GraphCost::new(&g, Bindings { seq: 5, past: 0 }, |_| 4);
        assert_eq!(q.weight_bytes, 8 * 6 / 2 + 6 * 4);

        // A depthwise 3x3 stride-2 conv and a regular 1x1 on a [4, 9, 9] map.
        let mut b = GraphBuilder::new(&FromConfig, "");
        let x = b.input("px", fixed(&[4, 9, 9]), Elem::F32);
        let w = b.param("dw.weight", &[4, 1, 3, 3]).unwrap();
        let op = Op::Conv2d {
            weight: w,
            bias: None,
            stride: 2,
            dilation: 1,
            groups: 4,
            pad: [1, 1, 1, 1],
        };
        let y = b.node("dw", op, &[x]).unwrap();
        let w = b.param("pw.weight", &[16, 4, 1, 1]).unwrap();
        let op = Op::Conv2d {
            weight: w,
            bias: None,
            stride: 1,
            dilation: 1,
            groups: 1,
            pad: [0; 4],
        };
        b.node("pw", op, &[y]).unwrap();
        let g = b.finish();
        let c = GraphCost::float(&g, Bindings::default());
        assert_eq!(c.nodes[0].macs, 4 * 5 * 5 * 9);
        assert_eq!(c.nodes[1].macs, 16 * 5 * 5 * 4);
        assert_eq!(c.by_kind["conv2d"].nodes, 2);
        assert_eq!(c.total.macs, c.nodes[0].macs + c.nodes[1].macs);
    }

    /// GQA (4 heads / 2 kv), both layer kinds, a tied head.
    pub(crate) fn tiny_lfm2() -> Lfm2Config {
        Lfm2Config::from_json(&serde_json::json!({
            "model_type": "lfm2",
            "vocab_size": 97,
            "hidden_size": 32,
            "intermediate_size": 96,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "layer_types": ["conv", "full_attention", "conv", "full_attention"],
            "max_position_embeddings": 64,
            "block_multiple_of": 16,
            "tie_word_embeddings": true,
        }))
        .unwrap()
    }

    #[test]
    fn lfm2_prefill_and_decode() {
        let cfg = tiny_lfm2();
        let g = lfm2::graph::build(&cfg, &FromConfig, "model").unwrap();
        let (h, d) = (cfg.hidden_size, cfg.head_dim);
        let (nh, nkv) = (cfg.num_attention_heads, cfg.num_key_value_heads);
        let idx = |name: &str| g.nodes.iter().position(|n| n.name == name).unwrap();
        let attn = cfg
            .layer_types
            .iter()
            .position(|t| *t == lfm2::LayerType::Attention)
            .unwrap();
        let conv = cfg
            .layer_types
            .iter()
            .position(|t| *t == lfm2::LayerType::Conv)
            .unwrap();
        for (seq, past) in [(7, 0), (1, 20)] {
            let b = Bindings { seq, past };
            let c = GraphCost::float(&g, b);
            let sdpa = &c.nodes[idx(&format!("layers.{attn}.self_attn.sdpa"))];
            assert_eq!(sdpa.macs as usize, nh * seq * (past + seq) * 2 * d);
            assert_eq!(sdpa.state_write_bytes as usize, 2 * seq * nkv * d * 4);
            assert_eq!(
                sdpa.state_read_bytes as usize,
                2 * (past + seq) * nkv * d * 4
            );
            let cc = &c.nodes[idx(&format!("layers.{conv}.conv.conv"))];
            let l = cfg.conv_l_cache;
            assert_eq!(cc.macs as usize, seq * h * l);
            assert_eq!(cc.state_read_bytes as usize, (l - 1) * h * 4);
            let e = &c.nodes[idx("embed_tokens")];
            assert_eq!(e.macs, 0);
            assert_eq!(e.weight_read_bytes as usize, seq * h * 4);
            assert_eq!(e.weight_bytes as usize, cfg.vocab_size * h * 4);
            // Tied: the head reads the table again; distinct weights count once.
            let head = &c.nodes[idx("lm_head")];
            assert_eq!(head.macs as usize, seq * h * cfg.vocab_size);
            assert_eq!(c.params as usize, g.param_count());
            assert_eq!(
                c.total.params as usize,
                g.param_count() + cfg.vocab_size * h
            );
            assert_eq!(c.weight_bytes as usize, g.param_count() * 4);
        }
        let (window, kv, per_pos) = state_sizes(&g, 100);
        let attn_layers = cfg.num_attention_layers();
        assert_eq!(per_pos as usize, attn_layers * 2 * nkv * d * 4);
        assert_eq!(kv, per_pos * 100);
        let conv_layers = cfg.num_conv_layers();
        assert_eq!(
            window as usize,
            conv_layers * (cfg.conv_l_cache - 1) * h * 4
        );
    }

    /// The lowered LM has the float graph's MACs and state traffic (at `i16`), and holds about
    /// one byte per weight at w8a8.
    #[test]
    fn integer_graph_cost() {
        use crate::exec::{FloatProgram, Val};
        use crate::quant::calibrate::CalibrationObserver;
        use crate::quant::lower::lower;
        use crate::quant::scheme::{Part, Scheme};

        let cfg = tiny_lfm2();
        let g = lfm2::graph::build(&cfg, &FromConfig, "model").unwrap();
        let prog = FloatProgram::random(g, 5).unwrap();
        let mut obs = CalibrationObserver::new(256).unwrap();
        obs.set_part(Part::Text);
        let (ids, logits) = (
            prog.graph.port("ids").unwrap(),
            prog.graph.port("logits").unwrap(),
        );
        let prompt: Vec<u32> = (0..12)
            .map(|i| (i * 7 + 3) % cfg.vocab_size as u32)
            .collect();
        let mut st = prog.new_state(16);
        prog.run(
            vec![(ids, Val::Ids(prompt))],
            &[logits],
            Some(&mut st),
            &mut obs,
        )
        .unwrap();
        let scheme = Scheme::parse("w8a8").unwrap();
        let q = lower(&prog, Part::Text, &obs.into_stats(), &scheme, None, &[]).unwrap();
        for (seq, past) in [(6, 0), (1, 9)] {
            let b = Bindings { seq, past };
            let (f, i) = (GraphCost::float(&prog.graph, b), GraphCost::integer(&q, b));
            assert_eq!(i.total.macs, f.total.macs);
            assert_eq!(i.params, f.params);
            assert_eq!(i.total.state_read_bytes * 2, f.total.state_read_bytes);
            assert_eq!(i.state_bytes * 2, f.state_bytes);
            assert!(i.total.output_bytes < f.total.output_bytes);
            // int8 values plus a multiplier per row, i64 biases, per-channel norm multipliers.
            let p = f.params;
            assert!(
                i.weight_bytes > p && i.weight_bytes < p + p / 2,
                "{} for {p}",
                i.weight_bytes
            );
            let head = q.nodes.iter().position(|n| n.name == "lm_head").unwrap();
            let fh = prog
                .graph
                .nodes
                .iter()
                .position(|n| n.name == "lm_head")
                .unwrap();
            assert_eq!(i.nodes[head].macs, f.nodes[fh].macs);
        }
    }
}
