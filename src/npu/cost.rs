//! The roofline cost of one graph call on a [`Profile`]: every node's work ([`NodeWork`]: padded
//! matrix MACs, vector operations, DRAM bytes) from [`crate::graph::cost`], then its time
//! ([`NodeWork::time`]) under the profile's fitted factors.
//!
//! Rules (each a documented property of NPUs such as Hexagon HTP; `docs/NPU.md` has sources):
//! - **Unit.** Weight x activation contractions (linear, conv with more than one input channel
//!   per group, pointwise) run on the matrix unit; activation x activation contractions
//!   (attention `QK^T`, `PV`) too, at their own efficiency. Depthwise convs, the causal conv,
//!   softmax, norms, element-wise ops, resizes, pools and data movement (transposes, shuffles,
//!   slices, concats) run on the vector unit.
//! - **Padding.** The matrix unit pads the contraction length and the output channels to the
//!   profile's channel multiple (a 3-channel stem conv costs as many MACs as a wider one).
//! - **Fusion.** On profiles that fuse activations, an activation whose input is a matrix op's
//!   output costs nothing and is not a node of its own.
//! - **Memory.** Weights stream from DRAM every call (at the scheme's weight bits; vectors such as
//!   biases and norm weights at 32 bits), decode state (conv windows, K/V) is read and written in
//!   DRAM in the activation type, and an activation tensor travels to DRAM only when a node's
//!   inputs and output together exceed the on-chip memory. Attention whose score matrix (all
//!   heads, in the activation type) exceeds the on-chip memory spills it: written and read back.
//! - **Time.** A node takes the larger of its compute time (matrix part + vector part) and its
//!   DRAM time, plus a per-node overhead; a graph call adds a fixed overhead.

use super::profile::{ActKind, Profile};
use crate::error::Result;
use crate::graph::cost::{node_cost, F32_BITS};
use crate::graph::{bind_shape, Bindings, Graph, Op, ValueId};
use serde::Serialize;

/// The precision a node runs at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct NodePrecision {
    pub act: ActKind,
    /// Bits of matrices and tables (vectors stay 32-bit).
    pub weight_bits: u32,
}

/// Vector operations per output element, by op kind (beyond the MACs a depthwise conv counts
/// one each): a norm squares, sums, scales and multiplies; softmax subtracts the max,
/// exponentiates (a table lookup), sums and divides; RoPE multiplies and adds two halves.
fn vector_ops_per_element(op: &Op) -> u64 {
    match op {
        Op::RmsNorm { .. } | Op::RmsNorm2d { .. } | Op::LayerNorm { .. } => 4,
        Op::Rope { .. } => 3,
        _ => 1,
    }
}

/// Operations per attention score for the softmax.
const SOFTMAX_OPS: u64 = 4;

/// What one node asks of the hardware.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct NodeWork {
    pub name: String,
    /// Category for breakdowns: `conv`, `depthwise`, `linear`, `attention`, `norm`,
    /// `elementwise`, `movement`, `gather`.
    pub category: &'static str,
    pub act: Option<ActKind>,
    /// MACs on the matrix unit with weights, padded.
    pub matrix_macs: u64,
    /// MACs on the matrix unit between activations (attention), padded.
    pub attention_macs: u64,
    /// Operations on the vector unit.
    pub vector_ops: u64,
    /// Weight bytes read.
    pub weight_bytes: u64,
    /// State bytes read and written.
    pub state_bytes: u64,
    /// Activation bytes that travel to DRAM (tensors larger than on-chip memory).
    pub activation_bytes: u64,
    /// Attention scores spilled to DRAM and read back.
    pub spill_bytes: u64,
    /// Fused into the previous node (no time, no overhead).
    pub fused: bool,
}

/// A node's time, split for reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct NodeTime {
    pub compute_s: f64,
    pub memory_s: f64,
    pub overhead_s: f64,
    pub total_s: f64,
}

impl NodeWork {
    pub fn dram_bytes(&self) -> u64 {
        self.weight_bytes + self.state_bytes + self.activation_bytes + self.spill_bytes
    }

    /// The node's time on `p`, with the profile's factors for its activation type (see the
    /// module docs).
    pub fn time(&self, p: &Profile) -> Result<NodeTime> {
        let Some(act) = self.act else {
            return Ok(NodeTime::default());
        };
        if self.fused {
            return Ok(NodeTime::default());
        }
        let f = p.factors(act);
        let mut compute = 0.0;
        if self.matrix_macs > 0 {
            let eff = if self.category == "linear" {
                f.linear_efficiency
            } else {
                f.conv_efficiency
            };
            compute += self.matrix_macs as f64 / (p.matrix_rate(act)? * eff);
        }
        if self.attention_macs > 0 {
            // Spilling never makes attention faster.
            let eff = if self.spill_bytes > 0 {
                f.spilled_attention_efficiency.min(f.attention_efficiency)
            } else {
                f.attention_efficiency
            };
            compute += self.attention_macs as f64 / (p.matrix_rate(act)? * eff);
        }
        if self.vector_ops > 0 {
            compute += self.vector_ops as f64 / (p.vector_rate(act)? * f.vector_efficiency);
        }
        let memory = self.dram_bytes() as f64 / (p.dram_bytes_per_s * f.bandwidth_efficiency);
        let overhead = f.node_overhead_s;
        Ok(NodeTime {
            compute_s: compute,
            memory_s: memory,
            overhead_s: overhead,
            total_s: compute.max(memory) + overhead,
        })
    }
}

/// Every node's work for one call of `g` at `b`, each node at `prec(node index)`.
pub fn graph_work(
    g: &Graph,
    b: Bindings,
    p: &Profile,
    prec: &dyn Fn(usize) -> NodePrecision,
) -> Vec<NodeWork> {
    let producer: std::collections::HashMap<ValueId, usize> = g
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.output, i))
        .collect();
    (0..g.nodes.len())
        .map(|i| {
            let node = &g.nodes[i];
            let np = prec(i);
            let mut w = node_work(g, i, b, p, np);
            if p.fuse_activations && matches!(node.op, Op::Act(_)) {
                let from = node.inputs.first().and_then(|v| producer.get(v));
                w.fused = from.is_some_and(|&j| {
                    matches!(
                        g.nodes[j].op,
                        Op::Linear { .. }
                            | Op::Conv2d { .. }
                            | Op::PointwiseToTokens { .. }
                            | Op::PointwiseFromTokens { .. }
                    )
                });
            }
            w
        })
        .collect()
}

/// One node's work (see the module docs).
pub fn node_work(g: &Graph, i: usize, b: Bindings, p: &Profile, np: NodePrecision) -> NodeWork {
    let node = &g.nodes[i];
    let c = node_cost(g, i, b, np.weight_bits);
    let pshape = |id: crate::graph::ParamId| g.params[id.0 as usize].shape.clone();
    let numel =
        |v: ValueId| -> u64 { bind_shape(&g.value(v).shape, b).iter().product::<usize>() as u64 };
    let act_bytes = np.act.bytes();
    let io: u64 =
        (node.inputs.iter().map(|&v| numel(v)).sum::<u64>() + numel(node.output)) * act_bytes;
    let mut w = NodeWork {
        name: node.name.clone(),
        act: Some(np.act),
        weight_bytes: c.weight_read_bytes,
        // The graph's state is f32; runtimes keep it in the activation type.
        state_bytes: (c.state_read_bytes + c.state_write_bytes) * act_bytes / F32_BITS as u64 * 8,
        activation_bytes: if io > p.onchip_bytes { io } else { 0 },
        ..Default::default()
    };
    // Padded MACs of a contraction: `rows` outputs of `out` channels, each `k` long.
    let padded = |rows: u64, k: u64, out: u64| rows * p.pad(k) * p.pad(out);
    w.category = match &node.op {
        Op::Embedding { .. } => "gather",
        Op::Linear { weight, .. } => {
            let s = pshape(*weight);
            let (out, k) = (s[0] as u64, s[1] as u64);
            w.matrix_macs = padded(numel(node.output) / out.max(1), k, out);
            "linear"
        }
        Op::PointwiseToTokens { weight } | Op::PointwiseFromTokens { weight, .. } => {
            let s = pshape(*weight);
            let (out, k) = (s[0] as u64, s[1] as u64);
            w.matrix_macs = padded(numel(node.output) / out.max(1), k, out);
            "conv"
        }
        Op::Conv2d { weight, groups, .. } => {
            let s = pshape(*weight);
            let (out, per_group) = (s[0] as u64, s[1] as u64);
            if per_group == 1 && *groups > 1 {
                w.vector_ops = c.macs;
                "depthwise"
            } else {
                let k: u64 = s[1..].iter().map(|&d| d as u64).product();
                w.matrix_macs = padded(numel(node.output) / out.max(1), k, out);
                "conv"
            }
        }
        Op::CausalConv1d { .. } => {
            w.vector_ops = c.macs;
            "depthwise"
        }
        Op::Attention { heads, d, dv, .. } => {
            let rows = |v: ValueId| bind_shape(&g.value(v).shape, b)[0] as u64;
            let (tq, tk) = (rows(node.inputs[0]), rows(node.inputs[1]));
            attention(
                &mut w,
                p,
                act_bytes,
                *heads as u64,
                tq,
                tk,
                (*d as u64, *dv as u64),
            );
            "attention"
        }
        Op::CachedAttention {
            heads, head_dim, ..
        } => {
            let (tq, tk) = (b.seq as u64, (b.past + b.seq) as u64);
            let d = *head_dim as u64;
            attention(&mut w, p, act_bytes, *heads as u64, tq, tk, (d, d));
            "attention"
        }
        Op::RmsNorm { .. } | Op::RmsNorm2d { .. } | Op::LayerNorm { .. } => {
            w.vector_ops = c.vector_ops * vector_ops_per_element(&node.op);
            "norm"
        }
        Op::Add
        | Op::Mul
        | Op::Act(_)
        | Op::ChannelScale { .. }
        | Op::ClsPosEmbed { .. }
        | Op::Rope { .. }
        | Op::ResizeNearest { .. }
        | Op::ResizeBilinear { .. }
        | Op::AvgPool { .. } => {
            w.vector_ops = c.vector_ops * vector_ops_per_element(&node.op);
            "elementwise"
        }
        // Copies: one operation per element moved.
        Op::Slice { .. }
        | Op::SliceRows { .. }
        | Op::PixelShuffle { .. }
        | Op::Concat
        | Op::ToTokens => {
            w.vector_ops = numel(node.output);
            "movement"
        }
    };
    // Narrow weights widened on the vector unit before the matrix unit reads them.
    if np.weight_bits < p.weight_unpack_below_bits && w.matrix_macs > 0 {
        w.vector_ops += c.params;
    }
    w
}

/// Attention of `tq` queries over `tk` keys: `QK^T` contracts `d` (padded), `PV` contracts the
/// keys; the softmax runs on the vector unit; scores spill when they exceed on-chip memory.
fn attention(
    w: &mut NodeWork,
    p: &Profile,
    act_bytes: u64,
    heads: u64,
    tq: u64,
    tk: u64,
    (d, dv): (u64, u64),
) {
    let scores = heads * tq * tk;
    w.attention_macs = heads * tq * (p.pad(d) * tk + p.pad(tk) * dv);
    w.vector_ops = scores * SOFTMAX_OPS;
    let score_bytes = scores * act_bytes;
    if score_bytes > p.onchip_bytes {
        w.spill_bytes = 2 * score_bytes;
    }
}

/// A graph call's time: the fixed overhead (of the first node's activation family) plus every
/// node's.
pub fn call_time(work: &[NodeWork], p: &Profile) -> Result<f64> {
    let Some(act) = work.iter().find_map(|w| w.act) else {
        return Ok(0.0);
    };
    let mut t = p.factors(act).graph_overhead_s;
    for w in work {
        t += w.time(p)?.total_s;
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::builder::FromConfig;
    use crate::graph::{fixed, Dim, Elem, GraphBuilder};
    use crate::npu::profile::Factors;
    use crate::ops::activation::Activation;

    /// Round numbers: 1 GMAC/s matrix, 100 M op/s vector, 1 GB/s DRAM, 1000 B on chip, channels
    /// padded to 8, every efficiency 1, no overheads.
    fn unit_profile(fuse: bool) -> Profile {
        let mut p = Profile::load("sa8295p").unwrap();
        p.matrix_macs_per_s = [(ActKind::Int8, 1e9)].into();
        p.vector_ops_per_s = [(ActKind::Int8, 1e8)].into();
        p.dram_bytes_per_s = 1e9;
        p.onchip_bytes = 1000;
        p.channel_multiple = 8;
        p.fuse_activations = fuse;
        p.factors = [(
            "all".to_string(),
            Factors::from_vec([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]),
        )]
        .into();
        p
    }

    const W8A8: NodePrecision = NodePrecision {
        act: ActKind::Int8,
        weight_bits: 8,
    };

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 + 1e-9 * b.abs()
    }

    #[test]
    fn linear_pads_channels_and_takes_the_slower_of_compute_and_memory() {
        let mut b = GraphBuilder::new(&FromConfig, "");
        let x = b.input("x", vec![Dim::Seq, Dim::Fixed(6)], Elem::F32);
        let y = b.linear("fc", x, 10, true).unwrap();
        b.act("act", Activation::Silu, y).unwrap();
        let g = b.finish();
        let bind = Bindings { seq: 4, past: 0 };
        for fuse in [true, false] {
            let p = unit_profile(fuse);
            let w = graph_work(&g, bind, &p, &|_| W8A8);
            // 4 rows x 6 -> 8 (padded contraction) x 10 -> 16 (padded outputs).
            assert_eq!(w[0].matrix_macs, 4 * 8 * 16);
            assert_eq!(w[0].category, "linear");
            // 60 int8 weights + 10 f32 biases.
            assert_eq!(w[0].weight_bytes, 60 + 40);
            // Inputs + output = 24 + 40 int8 bytes: on chip.
            assert_eq!(w[0].activation_bytes, 0);
            let t = w[0].time(&p).unwrap();
            assert!(close(t.compute_s, 512e-9) && close(t.memory_s, 100e-9));
            assert!(close(t.total_s, 512e-9));
            // The SiLU: fused into the linear, or 40 vector ops.
            assert_eq!(w[1].fused, fuse);
            let t = w[1].time(&p).unwrap().total_s;
            assert!(close(t, if fuse { 0.0 } else { 40.0 / 1e8 }), "{t}");
        }
        // Memory-bound when the weights dominate: 1 row against a 6 x 10 matrix at 16 bits
        // (120 + 40 B) vs 1 x 8 x 16 = 128 MACs.
        let p = unit_profile(true);
        let w16 = NodePrecision {
            weight_bits: 16,
            ..W8A8
        };
        let w = graph_work(&g, Bindings { seq: 1, past: 0 }, &p, &|_| w16);
        let t = w[0].time(&p).unwrap();
        assert!(close(t.memory_s, 160e-9) && close(t.compute_s, 128e-9));
        assert!(close(t.total_s, 160e-9));
        // A graph call adds its overhead once and every node's own.
        let mut q = p.clone();
        q.factors.get_mut("all").unwrap().graph_overhead_s = 1e-3;
        q.factors.get_mut("all").unwrap().node_overhead_s = 1e-6;
        let total = call_time(&w, &q).unwrap();
        // The fused activation pays no node overhead.
        assert!(close(total, 1e-3 + 160e-9 + 1e-6), "{total}");
    }

    #[test]
    fn depthwise_on_the_vector_unit_regular_conv_on_the_matrix_unit() {
        let mut b = GraphBuilder::new(&FromConfig, "");
        let x = b.input("px", fixed(&[4, 9, 9]), Elem::F32);
        let conv = |b: &mut GraphBuilder, name: &str, shape: &[usize], groups, stride, pad, x| {
            let w = b.param(&format!("{name}.weight"), shape).unwrap();
            let op = Op::Conv2d {
                weight: w,
                bias: None,
                stride,
                dilation: 1,
                groups,
                pad: [pad; 4],
            };
            b.node(name, op, &[x]).unwrap()
        };
        let y = conv(&mut b, "dw", &[4, 1, 3, 3], 4, 2, 1, x);
        conv(&mut b, "pw", &[16, 4, 1, 1], 1, 1, 0, y);
        let g = b.finish();
        let p = unit_profile(true);
        let w = graph_work(&g, Bindings::default(), &p, &|_| W8A8);
        // [4, 5, 5] outputs x 9 taps, on the vector unit.
        assert_eq!(
            (w[0].category, w[0].vector_ops, w[0].matrix_macs),
            ("depthwise", 900, 0)
        );
        assert!(close(w[0].time(&p).unwrap().compute_s, 900.0 / 1e8));
        // 1x1: 25 pixels x (4 -> 8) x 16.
        assert_eq!((w[1].category, w[1].matrix_macs), ("conv", 25 * 8 * 16));
        // Input [4, 9, 9] + output [4, 5, 5] = 424 bytes stays on chip; with 400 bytes of
        // on-chip memory both travel.
        assert_eq!(w[0].activation_bytes, 0);
        let mut small = p.clone();
        small.onchip_bytes = 400;
        let w = graph_work(&g, Bindings::default(), &small, &|_| W8A8);
        assert_eq!(w[0].activation_bytes, 324 + 100);
    }

    #[test]
    fn attention_matmuls_softmax_and_spills() {
        let mut b = GraphBuilder::new(&FromConfig, "");
        let q = b.input("q", vec![Dim::Fixed(3), Dim::Fixed(8)], Elem::F32);
        let k = b.input("k", vec![Dim::Fixed(5), Dim::Fixed(8)], Elem::F32);
        let v = b.input("v", vec![Dim::Fixed(5), Dim::Fixed(8)], Elem::F32);
        let op = Op::Attention {
            heads: 2,
            kv_heads: 2,
            d: 4,
            dv: 4,
            scale: 0.5,
        };
        b.node("sdpa", op, &[q, k, v]).unwrap();
        let g = b.finish();
        let p = unit_profile(true);
        let w = graph_work(&g, Bindings::default(), &p, &|_| W8A8);
        // Per head: QK^T 3 x (d 4 -> 8) x 5 keys, PV 3 x (5 keys -> 8) x 4.
        assert_eq!(w[0].attention_macs, 2 * 3 * (8 * 5 + 8 * 4));
        // Softmax: 4 operations per score, 2 x 3 x 5 scores.
        assert_eq!(w[0].vector_ops, 4 * 30);
        assert_eq!(w[0].spill_bytes, 0);
        // Scores (30 int8 bytes) larger than 16 bytes on chip: written and read back.
        let mut small = p.clone();
        small.onchip_bytes = 16;
        let w = graph_work(&g, Bindings::default(), &small, &|_| W8A8);
        assert_eq!(w[0].spill_bytes, 60);
        let t = w[0].time(&small).unwrap();
        assert!(close(t.compute_s, 432e-9 + 120e-8));
    }

    #[test]
    fn norms_state_and_missing_rates() {
        let cfg = crate::graph::cost::tests::tiny_lfm2();
        let g = crate::models::lfm2::graph::build(&cfg, &FromConfig, "model").unwrap();
        let p = unit_profile(true);
        let bind = Bindings { seq: 1, past: 9 };
        let w = graph_work(&g, bind, &p, &|_| W8A8);
        let find = |name: &str| w.iter().find(|n| n.name == name).unwrap();
        // RMSNorm over [1, 32]: four operations per element.
        assert_eq!(find("layers.0.operator_norm").vector_ops, 4 * 32);
        assert_eq!(find("layers.0.operator_norm").category, "norm");
        // K/V of an attention layer read at 10 positions and written at 1, int8: 2 x (10 + 1)
        // rows of 2 KV heads x 8.
        let sdpa = w.iter().find(|n| n.name.ends_with("sdpa")).unwrap();
        assert_eq!(sdpa.state_bytes, 2 * 11 * 2 * 8);
        // The causal conv's [L - 1, H] window read and rewritten, on the vector unit.
        let conv = find("layers.0.conv.conv");
        assert_eq!(conv.state_bytes, 2 * (cfg.conv_l_cache as u64 - 1) * 32);
        assert_eq!(conv.category, "depthwise");
        // A profile without fp16 says so.
        let f16 = NodePrecision {
            act: ActKind::Fp16,
            weight_bits: 16,
        };
        let w = graph_work(&g, bind, &p, &|_| f16);
        let e = call_time(&w, &p).unwrap_err().to_string();
        assert!(e.contains("has no fp16"), "{e}");
    }
}
