//! Where an exported node's weights come from: the float program's tensors (the float export), or
//! the integer ops of a quantized directory (the QDQ export: integer weights behind
//! `DequantizeLinear` with the scales the integer path multiplies by, biases as int32 in
//! accumulator units, norm and scale vectors as the real values the integer multipliers stand for).
//!
//! Both answer per node index of the part graph, so the op emission in `emit.rs` is written once.

use super::proto::{Attr, DType, OnnxGraph};
use crate::error::{Error, Result};
use crate::exec::FloatProgram;
use crate::graph::qop::QOp;
use crate::graph::{Graph, Op, ParamId};
use crate::quant::arith::{Multiplier, OUT_FRAC_BITS};
use crate::quant::ops::linear::{PackedWeights, QMatrix};
use crate::quant::params::multiplier_value;
use std::collections::HashMap;

/// The per-channel float vectors an op may carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vector {
    /// RMSNorm / LayerNorm / RmsNorm2d weight.
    NormWeight,
    /// LayerNorm bias.
    NormBias,
    /// Layer-scale gamma.
    Gamma,
}

/// Weights of the nodes of one part.
pub trait ExportWeights {
    /// Node `i`'s weight matrix as a float ONNX value of shape `dims` (`dims[0]` output rows, the
    /// rest the inputs of a row in PyTorch order).
    fn matrix(&mut self, g: &mut OnnxGraph, i: usize, dims: &[usize]) -> Result<String>;
    /// Node `i`'s bias (`[out]`), if it has one.
    fn bias(&mut self, g: &mut OnnxGraph, i: usize) -> Result<Option<String>>;
    /// A per-channel vector of node `i`.
    fn vector(&mut self, i: usize, which: Vector) -> Result<Option<Vec<f32>>>;
    /// A ViT embedding node's constants: the class row with its position added (`[D]`) and the
    /// patch rows' position embeddings (`[N, D]`), if any.
    fn cls_pos(&mut self, i: usize) -> Result<(Vec<f32>, Option<Vec<f32>>)>;
}

/// The float program's weights.
pub struct FloatWeights<'a> {
    pub prog: &'a FloatProgram,
    cache: HashMap<(u32, Vec<usize>), String>,
}

impl<'a> FloatWeights<'a> {
    pub fn new(prog: &'a FloatProgram) -> Self {
        Self {
            prog,
            cache: HashMap::new(),
        }
    }

    fn op(&self, i: usize) -> &Op {
        &self.prog.graph.nodes[i].op
    }

    fn tensor(&mut self, g: &mut OnnxGraph, p: ParamId, dims: &[usize]) -> Result<String> {
        let key = (p.0, dims.to_vec());
        if let Some(n) = self.cache.get(&key) {
            return Ok(n.clone());
        }
        let info = &self.prog.graph.params[p.0 as usize];
        let t = &self.prog.params()[p.0 as usize];
        if t.numel() != dims.iter().product::<usize>() {
            return Err(Error::input(format!(
                "weight `{}` has {} values, the ONNX op needs {dims:?}",
                info.key,
                t.numel()
            )));
        }
        let name = g.f32s(&info.key, dims, t.data());
        self.cache.insert(key, name.clone());
        Ok(name)
    }
}

impl ExportWeights for FloatWeights<'_> {
    fn matrix(&mut self, g: &mut OnnxGraph, i: usize, dims: &[usize]) -> Result<String> {
        let p = match self.op(i) {
            Op::Embedding { table: w }
            | Op::Linear { weight: w, .. }
            | Op::CausalConv1d { weight: w, .. }
            | Op::Conv2d { weight: w, .. }
            | Op::PointwiseToTokens { weight: w }
            | Op::PointwiseFromTokens { weight: w, .. } => *w,
            other => return Err(no_weight(other.kind(), "matrix")),
        };
        self.tensor(g, p, dims)
    }

    fn bias(&mut self, g: &mut OnnxGraph, i: usize) -> Result<Option<String>> {
        let b = match self.op(i) {
            Op::Linear { bias, .. } | Op::CausalConv1d { bias, .. } | Op::Conv2d { bias, .. } => {
                *bias
            }
            _ => None,
        };
        match b {
            Some(b) => {
                let n = self.prog.graph.params[b.0 as usize].numel();
                Ok(Some(self.tensor(g, b, &[n])?))
            }
            None => Ok(None),
        }
    }

    fn vector(&mut self, i: usize, which: Vector) -> Result<Option<Vec<f32>>> {
        let p = match (self.op(i), which) {
            (Op::RmsNorm { weight, .. }, Vector::NormWeight)
            | (Op::RmsNorm2d { weight, .. }, Vector::NormWeight)
            | (Op::LayerNorm { weight, .. }, Vector::NormWeight)
            | (Op::ChannelScale { gamma: weight }, Vector::Gamma) => Some(*weight),
            (Op::LayerNorm { bias, .. }, Vector::NormBias) => *bias,
            (other, _) => return Err(no_weight(other.kind(), "vector")),
        };
        Ok(p.map(|p| self.prog.params()[p.0 as usize].data().to_vec()))
    }

    fn cls_pos(&mut self, i: usize) -> Result<(Vec<f32>, Option<Vec<f32>>)> {
        let Op::ClsPosEmbed { cls, pos } = self.op(i) else {
            return Err(no_weight(self.op(i).kind(), "class embedding"));
        };
        let mut c = self.prog.params()[cls.0 as usize].data().to_vec();
        let d = c.len();
        match pos {
            None => Ok((c, None)),
            Some(p) => {
                let p = self.prog.params()[p.0 as usize].data();
                c.iter_mut().zip(&p[..d]).for_each(|(c, p)| *c += p);
                Ok((c, Some(p[d..].to_vec())))
            }
        }
    }
}

/// The integer graph's weights, dequantized in the exported graph.
pub struct QuantWeights<'a> {
    pub graph: &'a Graph<QOp>,
    /// Integer initializers by the node owning the matrix (a tied head shares its embedding's).
    ints: HashMap<(usize, Vec<usize>), String>,
}

impl<'a> QuantWeights<'a> {
    pub fn new(graph: &'a Graph<QOp>) -> Self {
        Self {
            graph,
            ints: HashMap::new(),
        }
    }

    fn op(&self, i: usize) -> &'a QOp {
        &self.graph.nodes[i].op
    }

    /// The matrix of node `i`, the node owning its integers, and the real value of one
    /// integer step of each row before its group multiplier (`row_scale / 2^GROUP_SCALE_BITS`).
    fn weighted(&self, i: usize) -> Result<(&'a QMatrix, usize, Vec<f64>, f64)> {
        let unit = |mult: &[Multiplier], sx: f32, sy: f32| -> Vec<f64> {
            mult.iter()
                .map(|m| multiplier_value(*m) * sy as f64 / sx as f64)
                .collect()
        };
        Ok(match self.op(i) {
            QOp::Linear(l)
            | QOp::PointwiseToTokens(l)
            | QOp::PointwiseFromTokens { linear: l, .. } => (
                &l.weight,
                i,
                unit(&l.mult, l.x.scale, l.y.scale),
                l.x.scale as f64,
            ),
            QOp::Conv2d(c) => (
                &c.weight,
                i,
                unit(&c.mult, c.x.scale, c.y.scale),
                c.x.scale as f64,
            ),
            QOp::CausalConv1d { conv: c, .. } => (
                &c.weight,
                i,
                unit(&c.mult, c.x.scale, c.y.scale),
                c.x.scale as f64,
            ),
            QOp::Embedding(e) => (&e.table, i, unit(&e.mult, 1.0, e.y.scale), 1.0),
            QOp::TiedLinear { table, mult, x, y } => {
                let QOp::Embedding(e) = self.op(*table) else {
                    return Err(Error::input(format!(
                        "tied head `{}` names node {table}, which is not an embedding",
                        self.graph.nodes[i].name
                    )));
                };
                (
                    &e.table,
                    *table,
                    unit(mult, x.scale, y.scale),
                    x.scale as f64,
                )
            }
            other => return Err(no_weight(other.kind(), "matrix")),
        })
    }
}

impl ExportWeights for QuantWeights<'_> {
    fn matrix(&mut self, g: &mut OnnxGraph, i: usize, dims: &[usize]) -> Result<String> {
        let (m, owner, unit, _) = self.weighted(i)?;
        let name = &self.graph.nodes[i].name;
        if dims.first() != Some(&m.out) || dims[1..].iter().product::<usize>() != m.inp {
            return Err(Error::input(format!(
                "`{name}`: integer weight [{}, {}] does not fit the ONNX shape {dims:?}",
                m.out, m.inp
            )));
        }
        let dtype = DType::for_bits(m.bits).ok_or_else(|| {
            Error::input(format!(
                "`{name}`: {}-bit weights have no ONNX integer type",
                m.bits
            ))
        })?;
        let gpr = m.groups_per_row();
        let per_channel = gpr == 1;
        // Per channel: the integers in the op's own shape, one scale per output row (axis 0).
        // Per group: `[out, inp]` with `block_size` along the inputs, then reshaped.
        let int_dims: Vec<usize> = if per_channel {
            dims.to_vec()
        } else {
            vec![m.out, m.inp]
        };
        let key = (owner, int_dims.clone());
        let ints = match self.ints.get(&key) {
            Some(n) => n.clone(),
            None => {
                let vals: Vec<i64> = match &m.data {
                    PackedWeights::I8(v) => v.iter().map(|&x| x as i64).collect(),
                    _ => m.values().into_iter().map(|x| x as i64).collect(),
                };
                let owner_name = self.graph.nodes[owner].name.clone();
                let n = g.ints(&format!("{owner_name}.weight_q"), dtype, &int_dims, &vals);
                self.ints.insert(key, n.clone());
                n
            }
        };
        let scales: Vec<f32> = (0..m.out)
            .flat_map(|o| {
                let u = unit[o];
                m.row_group_mult(o)
                    .iter()
                    .map(move |&gm| (u * gm as f64) as f32)
            })
            .collect();
        if per_channel {
            let s = g.f32s(&format!("{name}.weight_scale"), &[m.out], &scales);
            Ok(g.op(
                "DequantizeLinear",
                &[&ints, &s],
                &[("axis", Attr::Int(0))],
                &format!("{name}.weight"),
            ))
        } else {
            let s = g.f32s(&format!("{name}.weight_scale"), &[m.out, gpr], &scales);
            let w = g.op(
                "DequantizeLinear",
                &[&ints, &s],
                &[
                    ("axis", Attr::Int(1)),
                    ("block_size", Attr::Int(m.group as i64)),
                ],
                &format!("{name}.weight_2d"),
            );
            if dims.len() == 2 {
                return Ok(w);
            }
            let shape = g.i64s(&dims.iter().map(|&d| d as i64).collect::<Vec<_>>());
            Ok(g.op("Reshape", &[&w, &shape], &[], &format!("{name}.weight")))
        }
    }

    fn bias(&mut self, g: &mut OnnxGraph, i: usize) -> Result<Option<String>> {
        let bias = match self.op(i) {
            QOp::Linear(l) => l.bias.as_ref(),
            QOp::Conv2d(c) => c.bias.as_ref(),
            QOp::CausalConv1d { conv, .. } => conv.bias.as_ref(),
            _ => None,
        };
        let Some(b) = bias else { return Ok(None) };
        let (_, _, unit, sx) = self.weighted(i)?;
        let name = self.graph.nodes[i].name.clone();
        // Accumulator units: s_x * row_scale / 2^GROUP_SCALE_BITS per row.
        let scale: Vec<f32> = unit.iter().map(|u| (u * sx) as f32).collect();
        let fits = b.iter().all(|&v| i32::try_from(v).is_ok());
        if fits {
            let q = g.ints(&format!("{name}.bias_q"), DType::I32, &[b.len()], b);
            let s = g.f32s(&format!("{name}.bias_scale"), &[b.len()], &scale);
            Ok(Some(g.op(
                "DequantizeLinear",
                &[&q, &s],
                &[("axis", Attr::Int(0))],
                &format!("{name}.bias"),
            )))
        } else {
            let real: Vec<f32> = b
                .iter()
                .zip(&scale)
                .map(|(&v, &s)| (v as f64 * s as f64) as f32)
                .collect();
            Ok(Some(g.f32s(&format!("{name}.bias"), &[b.len()], &real)))
        }
    }

    fn vector(&mut self, i: usize, which: Vector) -> Result<Option<Vec<f32>>> {
        let signed = |mult: &[Multiplier], neg: &[bool], k: f64| -> Vec<f32> {
            mult.iter()
                .zip(neg)
                .map(|(m, &n)| {
                    let v = (multiplier_value(*m) * k) as f32;
                    if n {
                        -v
                    } else {
                        v
                    }
                })
                .collect()
        };
        Ok(match (self.op(i), which) {
            // |w| sqrt(D) / s_y per channel.
            (QOp::RmsNorm(n), Vector::NormWeight) => Some(signed(
                &n.w_mult,
                &n.w_neg,
                n.y.scale as f64 / (n.dim as f64).sqrt(),
            )),
            (QOp::RmsNorm2d(n), Vector::NormWeight) => Some(signed(
                &n.norm.w_mult,
                &n.norm.w_neg,
                n.norm.y.scale as f64 / (n.norm.dim as f64).sqrt(),
            )),
            // |w| / s_y.
            (QOp::LayerNorm(n), Vector::NormWeight) => {
                Some(signed(&n.w_mult, &n.w_neg, n.y.scale as f64))
            }
            (QOp::LayerNorm(n), Vector::NormBias) => n.bias.as_ref().map(|b| {
                b.iter()
                    .map(|&v| (v as f64 / (1u64 << OUT_FRAC_BITS) as f64 * n.y.scale as f64) as f32)
                    .collect()
            }),
            // |gamma| s_x / s_y.
            (QOp::ChannelScale(s), Vector::Gamma) => Some(signed(
                &s.mult,
                &s.negate,
                s.y.scale as f64 / s.x.scale as f64,
            )),
            (other, _) => return Err(no_weight(other.kind(), "vector")),
        })
    }

    fn cls_pos(&mut self, i: usize) -> Result<(Vec<f32>, Option<Vec<f32>>)> {
        let QOp::ClsPosEmbed(e) = self.op(i) else {
            return Err(no_weight(self.op(i).kind(), "class embedding"));
        };
        let k = e.y.scale as f64 / (1u64 << OUT_FRAC_BITS) as f64;
        let real = |v: &[i64]| -> Vec<f32> { v.iter().map(|&x| (x as f64 * k) as f32).collect() };
        Ok((real(&e.cls), e.pos.as_deref().map(real)))
    }
}

fn no_weight(kind: &str, what: &str) -> Error {
    Error::input(format!("a `{kind}` op has no {what} to export"))
}
