//! One part graph as an ONNX graph: every node of our graph becomes the standard ONNX ops of the
//! float op it computes (written once, for both exports), with `QuantizeLinear` ->
//! `DequantizeLinear` on every quantized edge in the QDQ export.
//!
//! Layouts: token rows stay `[T, D]`; `[C, H, W]` maps get a leading batch axis of 1 (`[1, C, H,
//! W]`, what `Conv`, `Resize` and `AveragePool` take). Decode state is explicit: each state slot
//! is a graph input `past.<slot>` and output `present.<slot>` (quantized integers in the QDQ
//! export, float in the float export). Dynamic state appends K/V rows (`[past, W]` ->
//! `[past + T, W]`); static state keeps `[context, W]` buffers, written at `position` for the
//! `valid` real rows of a padded chunk, as fixed-shape NPU runtimes need.

use super::proto::{Attr, DType, DimSpec, OnnxGraph};
use super::weights::{ExportWeights, Vector};
use crate::error::{Error, Result};
use crate::graph::{Dim, Elem, Graph, Op, StateId, ValueId};
use crate::ops::activation::Activation;
use crate::ops::rope::Rope;
use crate::quant::params::ActQuant;
use std::collections::HashMap;

/// How the language model's state is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateMode {
    /// Growing K/V (`[past, W]` in, `[past + seq, W]` out), any number of rows per call.
    Dynamic,
    /// `seq` rows per call (padded), `[context, W]` K/V buffers, `position` and `valid` inputs.
    Static { seq: usize, context: usize },
}

/// A graph input or output as the manifest lists it.
#[derive(Clone, Debug)]
pub struct Port {
    pub name: String,
    pub dtype: DType,
    pub dims: Vec<DimSpec>,
    /// The edge quantization of our integer path at this port (QDQ export).
    pub quant: Option<ActQuant>,
}

/// A state slot's input and output.
#[derive(Clone, Debug)]
pub struct StatePort {
    pub slot: String,
    pub input: String,
    pub output: String,
    pub dtype: DType,
    pub dims: Vec<DimSpec>,
    pub grows: bool,
    pub quant: Option<ActQuant>,
    /// What a fresh state holds, in `dtype` (the zero point: real 0).
    pub fill: i64,
}

/// The result of exporting one part.
pub struct Exported {
    pub graph: OnnxGraph,
    pub inputs: Vec<Port>,
    pub outputs: Vec<Port>,
    pub states: Vec<StatePort>,
}

/// What to export from a part graph.
pub struct PartSpec<'a> {
    /// ONNX graph name.
    pub name: &'a str,
    /// Values fed from outside, with their ONNX input names.
    pub inputs: Vec<(ValueId, &'a str)>,
    /// Values returned, with their ONNX output names.
    pub outputs: Vec<(ValueId, &'a str)>,
    pub mode: StateMode,
    /// Length of the rotary tables (the positions a sequence may reach).
    pub positions: usize,
}

/// The largest negative logit a masked attention score gets (finite, so a softmax never sees
/// `inf - inf`).
const MASKED: f32 = -1.0e30;

struct Emitter<'a, W> {
    graph: &'a Graph,
    /// Element type per value: `Elem::Q` edges get QDQ.
    elems: &'a [Elem],
    state_elems: Vec<Elem>,
    w: W,
    g: OnnxGraph,
    names: Vec<Option<String>>,
    mode: StateMode,
    positions: usize,
    /// Graph inputs holding each state slot, and the present values written.
    past: HashMap<u32, String>,
    present: HashMap<u32, String>,
    /// `int64 [1]`: positions already in the state; `[T]`: positions of this call's rows.
    pos: Option<String>,
    row_pos: Option<String>,
    valid: Option<String>,
    rope: HashMap<(usize, u64), (String, String)>,
}

/// Exports the nodes of `graph` needed for `spec.outputs` from `spec.inputs`. `elems` gives each
/// value's element type (the integer graph's for QDQ, the float graph's otherwise) and
/// `state_elems` each state slot's.
pub fn export_part<W: ExportWeights>(
    graph: &Graph,
    elems: &[Elem],
    state_elems: &[Elem],
    weights: W,
    spec: &PartSpec,
) -> Result<Exported> {
    let mut e = Emitter {
        graph,
        elems,
        state_elems: state_elems.to_vec(),
        w: weights,
        g: OnnxGraph::new(spec.name),
        names: vec![None; graph.values.len()],
        mode: spec.mode,
        positions: spec.positions,
        past: HashMap::new(),
        present: HashMap::new(),
        pos: None,
        row_pos: None,
        valid: None,
        rope: HashMap::new(),
    };
    // Output names first, so no internal value takes them.
    for &(_, name) in &spec.outputs {
        e.g.reserve(name)?;
    }
    let mut inputs = Vec::new();
    for &(v, name) in &spec.inputs {
        let info = graph.value(v);
        let (dtype, quant) = match elems[v.0 as usize] {
            Elem::Token => (DType::I64, None),
            Elem::F32 => (DType::F32, None),
            Elem::Q(q) => (DType::F32, Some(q)),
        };
        let dims = e.dims(&info.shape);
        let n = e.g.input(name, dtype, &dims)?;
        let n = match quant {
            Some(q) => e.qdq(&n, &q, name)?,
            None => n,
        };
        e.names[v.0 as usize] = Some(n);
        inputs.push(Port {
            name: name.to_string(),
            dtype,
            dims,
            quant,
        });
    }
    let given: Vec<ValueId> = spec.inputs.iter().map(|(v, _)| *v).collect();
    let outs: Vec<ValueId> = spec.outputs.iter().map(|(v, _)| *v).collect();
    let schedule = graph.schedule(&given, &outs);
    e.declare_state(&schedule)?;
    for i in schedule {
        e.node(i)?;
    }
    let mut outputs = Vec::new();
    for &(v, name) in &spec.outputs {
        let info = graph.value(v);
        let dims = e.dims(&info.shape);
        let quant = match elems[v.0 as usize] {
            Elem::Q(q) => Some(q),
            _ => None,
        };
        let val = e.name(v)?;
        e.g.output(name, &val, DType::F32, &dims)?;
        outputs.push(Port {
            name: name.to_string(),
            dtype: DType::F32,
            dims,
            quant,
        });
    }
    let mut states = Vec::new();
    let mut slots: Vec<u32> = e.past.keys().copied().collect();
    slots.sort();
    for s in slots {
        let info = &graph.states[s as usize];
        let (dtype, quant) = e.state_type(s)?;
        let dims = e.state_dims(s);
        let present = e.present.get(&s).cloned().ok_or_else(|| {
            Error::input(format!("state `{}` is read but never written", info.name))
        })?;
        let out_name = format!("present.{}", info.name);
        e.g.output(&out_name, &present, dtype, &dims)?;
        states.push(StatePort {
            slot: info.name.clone(),
            input: format!("past.{}", info.name),
            output: out_name,
            dtype,
            dims,
            grows: info.grows(),
            fill: match &quant {
                Some(q) => act_zero_point(q)?,
                None => 0,
            },
            quant,
        });
    }
    Ok(Exported {
        graph: e.g,
        inputs,
        outputs,
        states,
    })
}

/// The ONNX type of an activation edge's integers (`QuantizeLinear` output): 8-bit activations
/// (asymmetric) as uint8, the form ONNX Runtime's and NPU toolchains' QDQ kernels expect (`q +
/// 128` with the zero point moved alike: the same real values), 16-bit (symmetric) as int16.
pub fn act_dtype(q: &ActQuant) -> Result<DType> {
    match q.bits {
        8 => Ok(DType::U8),
        16 => Ok(DType::I16),
        b => Err(Error::input(format!(
            "{b}-bit activations have no ONNX QDQ form (int8 and int16 do); quantize with 8- or \
             16-bit activations"
        ))),
    }
}

/// The zero point of `q` in its ONNX type (see [`act_dtype`]).
pub fn act_zero_point(q: &ActQuant) -> Result<i64> {
    Ok(match act_dtype(q)? {
        DType::U8 => q.zero_point as i64 + 128,
        _ => q.zero_point as i64,
    })
}

impl<W: ExportWeights> Emitter<'_, W> {
    fn name(&self, v: ValueId) -> Result<String> {
        self.names[v.0 as usize].clone().ok_or_else(|| {
            Error::input(format!(
                "value `{}` is needed but not computed",
                self.graph.value(v).name
            ))
        })
    }

    fn input(&self, i: usize, k: usize) -> Result<String> {
        self.name(self.graph.nodes[i].inputs[k])
    }

    /// ONNX dims of a value: maps get a batch axis.
    fn dims(&self, shape: &[Dim]) -> Vec<DimSpec> {
        let mut d: Vec<DimSpec> = shape
            .iter()
            .map(|d| match (d, self.mode) {
                (Dim::Fixed(n), _) => DimSpec::Fixed(*n),
                (Dim::Seq, StateMode::Static { seq, .. }) => DimSpec::Fixed(seq),
                (Dim::Seq, _) => DimSpec::Named("seq".into()),
                (Dim::Past, StateMode::Static { context, .. })
                | (Dim::PastPlusSeq, StateMode::Static { context, .. }) => DimSpec::Fixed(context),
                (Dim::Past, _) => DimSpec::Named("past".into()),
                (Dim::PastPlusSeq, _) => DimSpec::Named("past+seq".into()),
            })
            .collect();
        if shape.len() == 3 {
            d.insert(0, DimSpec::Fixed(1));
        }
        d
    }

    fn is_map(&self, v: ValueId) -> bool {
        self.graph.value(v).shape.len() == 3
    }

    /// Fixed dims of a value (all but the sequence axes).
    fn fixed(&self, v: ValueId, axis: usize) -> Result<usize> {
        self.graph.value(v).shape[axis].fixed().ok_or_else(|| {
            Error::input(format!(
                "axis {axis} of `{}` is not fixed",
                self.graph.value(v).name
            ))
        })
    }

    /// `QuantizeLinear` -> `DequantizeLinear` with `q`.
    fn qdq(&mut self, x: &str, q: &ActQuant, hint: &str) -> Result<String> {
        let xq = self.quantize(x, q, hint)?;
        self.dequantize(&xq, q, hint)
    }

    /// After a layout op (reshape, transpose) on quantized data: the same `QuantizeLinear` ->
    /// `DequantizeLinear` again (exact: the values are on the grid already), so every compute
    /// op reads straight from a `DequantizeLinear`, the pattern QDQ fusers look for.
    fn regrid(&mut self, x: String, q: Option<ActQuant>, hint: &str) -> Result<String> {
        match q {
            Some(q) => self.qdq(&x, &q, hint),
            None => Ok(x),
        }
    }

    fn quant_of(&self, v: ValueId) -> Option<ActQuant> {
        match self.elems[v.0 as usize] {
            Elem::Q(q) => Some(q),
            _ => None,
        }
    }

    fn quantize(&mut self, x: &str, q: &ActQuant, hint: &str) -> Result<String> {
        let dt = act_dtype(q)?;
        let s = self.g.f32_scalar(q.scale);
        let z = self.g.zero_point(dt, act_zero_point(q)?);
        Ok(self
            .g
            .op("QuantizeLinear", &[x, &s, &z], &[], &format!("{hint}_q")))
    }

    fn dequantize(&mut self, xq: &str, q: &ActQuant, hint: &str) -> Result<String> {
        let dt = act_dtype(q)?;
        let s = self.g.f32_scalar(q.scale);
        let z = self.g.zero_point(dt, act_zero_point(q)?);
        Ok(self.g.op(
            "DequantizeLinear",
            &[xq, &s, &z],
            &[],
            &format!("{hint}_dq"),
        ))
    }

    fn state_type(&self, s: u32) -> Result<(DType, Option<ActQuant>)> {
        Ok(match self.state_elems[s as usize] {
            Elem::Q(q) => (act_dtype(&q)?, Some(q)),
            _ => (DType::F32, None),
        })
    }

    fn state_quant(&self, s: StateId) -> Option<ActQuant> {
        match self.state_elems[s.0 as usize] {
            Elem::Q(q) => Some(q),
            _ => None,
        }
    }

    fn state_dims(&self, s: u32) -> Vec<DimSpec> {
        self.dims(&self.graph.states[s as usize].shape)
    }

    /// Graph inputs for the state slots the scheduled nodes touch, and (for the LM) the position
    /// inputs.
    fn declare_state(&mut self, schedule: &[usize]) -> Result<()> {
        let mut slots: Vec<StateId> = Vec::new();
        for &i in schedule {
            match &self.graph.nodes[i].op {
                Op::CausalConv1d { state, .. } => slots.push(*state),
                Op::CachedAttention { k, v, .. } => slots.extend([*k, *v]),
                _ => {}
            }
        }
        let positional = schedule.iter().any(|&i| {
            matches!(
                self.graph.nodes[i].op,
                Op::Rope { .. } | Op::CachedAttention { .. }
            )
        });
        for s in &slots {
            let info = &self.graph.states[s.0 as usize];
            let (dtype, _) = self.state_type(s.0)?;
            let dims = self.state_dims(s.0);
            self.g.reserve(&format!("present.{}", info.name))?;
            let n = self.g.input(&format!("past.{}", info.name), dtype, &dims)?;
            self.past.insert(s.0, n);
        }
        match self.mode {
            StateMode::Static { .. } if !slots.is_empty() || positional => {
                let p = self.g.input("position", DType::I64, &[DimSpec::Fixed(1)])?;
                let v = self.g.input("valid", DType::I64, &[DimSpec::Fixed(1)])?;
                self.pos = Some(p);
                self.valid = Some(v);
            }
            StateMode::Dynamic if positional => {
                // Positions already held = rows of the first growing slot.
                let kv = slots
                    .iter()
                    .find(|s| self.graph.states[s.0 as usize].grows())
                    .ok_or_else(|| {
                        Error::input("a positional op without a growing K/V state to count from")
                    })?;
                let past = self.past[&kv.0].clone();
                let shape = self.g.op("Shape", &[&past], &[], "past_shape");
                let (z, one) = (self.g.i64s(&[0]), self.g.i64s(&[1]));
                self.pos = Some(self.g.op("Slice", &[&shape, &z, &one], &[], "past_length"));
            }
            _ => {}
        }
        Ok(())
    }

    /// `int64 [T]`: the absolute positions of this call's rows.
    fn row_positions(&mut self, x: &str) -> Result<String> {
        if let Some(p) = &self.row_pos {
            return Ok(p.clone());
        }
        let pos = self
            .pos
            .clone()
            .ok_or_else(|| Error::input("positions needed outside a language model"))?;
        let t = self.rows_scalar(x);
        let (zero, one) = (self.g.i64_scalar(0), self.g.i64_scalar(1));
        let r = self.g.op("Range", &[&zero, &t, &one], &[], "row_index");
        let p = self.g.op("Add", &[&r, &pos], &[], "row_position");
        self.row_pos = Some(p.clone());
        Ok(p)
    }

    /// Scalar int64: the rows of token activations `x`.
    fn rows_scalar(&mut self, x: &str) -> String {
        let shape = self.g.op("Shape", &[x], &[], "rows_shape");
        let (z, one) = (self.g.i64s(&[0]), self.g.i64s(&[1]));
        let t = self.g.op("Slice", &[&shape, &z, &one], &[], "rows");
        let ax = self.g.i64s(&[0]);
        self.g.op("Squeeze", &[&t, &ax], &[], "rows_scalar")
    }

    fn node(&mut self, i: usize) -> Result<()> {
        let node = &self.graph.nodes[i];
        let name = node.name.clone();
        let out_v = node.output;
        let op = node.op.clone();
        let y = self.op(i, &op, &name).map_err(|e| match e {
            Error::Input(m) => Error::input(format!("exporting `{name}` ({}): {m}", op.kind())),
            other => other,
        })?;
        let y = match self.elems[out_v.0 as usize] {
            Elem::Q(q) => self.qdq(&y, &q, &name)?,
            _ => y,
        };
        self.names[out_v.0 as usize] = Some(y);
        Ok(())
    }

    fn op(&mut self, i: usize, op: &Op, name: &str) -> Result<String> {
        let x = self.input(i, 0)?;
        let x_v = self.graph.nodes[i].inputs[0];
        let g = &mut self.g;
        Ok(match op {
            Op::Embedding { .. } => {
                let (v, h) = table_dims(self.graph, op)?;
                let t = self.w.matrix(&mut self.g, i, &[v, h])?;
                self.g
                    .op("Gather", &[&t, &x], &[("axis", Attr::Int(0))], name)
            }
            Op::Linear { .. } => {
                let (out, inp) = linear_dims(self.graph, i)?;
                let w = self.w.matrix(&mut self.g, i, &[out, inp])?;
                self.gemm(i, &x, &w, name)?
            }
            Op::RmsNorm { eps, .. } => {
                let w = self.vector(i, Vector::NormWeight)?;
                let width = w.len();
                let d = self.fixed(x_v, self.graph.value(x_v).shape.len() - 1)?;
                let wn = self.g.f32s(&format!("{name}.weight"), &[width], &w);
                if width == d {
                    self.rms(&x, -1, *eps, &wn, name)
                } else {
                    let s3 = self.g.i64s(&[0, (d / width) as i64, width as i64]);
                    let s2 = self.g.i64s(&[0, d as i64]);
                    let x3 = self
                        .g
                        .op("Reshape", &[&x, &s3], &[], &format!("{name}.heads"));
                    let y3 = self.rms(&x3, -1, *eps, &wn, name);
                    self.g.op("Reshape", &[&y3, &s2], &[], name)
                }
            }
            Op::RmsNorm2d { eps, .. } => {
                let w = self.vector(i, Vector::NormWeight)?;
                let c = w.len();
                let wn = self.g.f32s(&format!("{name}.weight"), &[1, c, 1, 1], &w);
                self.rms(&x, 1, *eps, &wn, name)
            }
            Op::LayerNorm { eps, .. } => {
                let w = self.vector(i, Vector::NormWeight)?;
                let d = w.len();
                let wn = self.g.f32s(&format!("{name}.weight"), &[d], &w);
                let b = self.w.vector(i, Vector::NormBias)?;
                let bn = b.map(|b| self.g.f32s(&format!("{name}.bias"), &[d], &b));
                let mut ins = vec![x.as_str(), wn.as_str()];
                if let Some(b) = &bn {
                    ins.push(b);
                }
                self.g.op(
                    "LayerNormalization",
                    &ins,
                    &[("axis", Attr::Int(-1)), ("epsilon", Attr::Float(*eps))],
                    name,
                )
            }
            Op::Slice { start, len } => {
                let (s, e, a) = (
                    g.i64s(&[*start as i64]),
                    g.i64s(&[(*start + *len) as i64]),
                    g.i64s(&[-1]),
                );
                g.op("Slice", &[&x, &s, &e, &a], &[], name)
            }
            Op::SliceRows { start, len } => {
                let (s, e, a) = (
                    g.i64s(&[*start as i64]),
                    g.i64s(&[(*start + *len) as i64]),
                    g.i64s(&[0]),
                );
                g.op("Slice", &[&x, &s, &e, &a], &[], name)
            }
            Op::Add | Op::Mul => {
                let b = self.input(i, 1)?;
                let t = if matches!(op, Op::Add) { "Add" } else { "Mul" };
                self.g.op(t, &[&x, &b], &[], name)
            }
            Op::Act(a) => match a {
                Activation::GeluTanh => {
                    g.op("Gelu", &[&x], &[("approximate", Attr::Str("tanh"))], name)
                }
                Activation::GeluErf => g.op("Gelu", &[&x], &[], name),
                Activation::Silu => {
                    let s = g.op("Sigmoid", &[&x], &[], &format!("{name}.sigmoid"));
                    g.op("Mul", &[&x, &s], &[], name)
                }
                Activation::Relu => g.op("Relu", &[&x], &[], name),
                Activation::Relu6 => {
                    let (lo, hi) = (g.f32_scalar(0.0), g.f32_scalar(6.0));
                    g.op("Clip", &[&x, &lo, &hi], &[], name)
                }
            },
            Op::ChannelScale { .. } => {
                let gamma = self.vector(i, Vector::Gamma)?;
                let c = gamma.len();
                let dims = if self.is_map(x_v) {
                    vec![1, c, 1, 1]
                } else {
                    vec![c]
                };
                let gn = self.g.f32s(&format!("{name}.gamma"), &dims, &gamma);
                self.g.op("Mul", &[&x, &gn], &[], name)
            }
            Op::ClsPosEmbed { .. } => {
                let (cls, pos) = self.w.cls_pos(i)?;
                let d = cls.len();
                let cn = self.g.f32s(&format!("{name}.cls"), &[1, d], &cls);
                let x = match pos {
                    Some(p) => {
                        let pn = self.g.f32s(&format!("{name}.pos"), &[p.len() / d, d], &p);
                        self.g
                            .op("Add", &[&x, &pn], &[], &format!("{name}.patches"))
                    }
                    None => x,
                };
                self.g
                    .op("Concat", &[&cn, &x], &[("axis", Attr::Int(0))], name)
            }
            Op::PixelShuffle { h, w, scale } => {
                let c = self.fixed(x_v, 1)? as i64;
                let g = &mut self.g;
                let (h, w, s) = (*h as i64, *w as i64, *scale as i64);
                // Row (s i + m) * w + s j + k -> row (i, j), column block (m, k).
                let s5 = g.i64s(&[h / s, s, w / s, s, c]);
                let x5 = g.op("Reshape", &[&x, &s5], &[], &format!("{name}.blocks"));
                let t = g.op(
                    "Transpose",
                    &[&x5],
                    &[("perm", Attr::Ints(&[0, 2, 1, 3, 4]))],
                    &format!("{name}.perm"),
                );
                let s2 = g.i64s(&[(h / s) * (w / s), s * s * c]);
                g.op("Reshape", &[&t, &s2], &[], name)
            }
            Op::CausalConv1d { state, .. } => self.causal_conv(i, &x, *state, name)?,
            Op::Rope {
                heads,
                head_dim,
                theta,
            } => self.rope(&x, *heads, *head_dim, *theta, name)?,
            Op::CachedAttention {
                heads,
                kv_heads,
                head_dim,
                scale,
                k,
                v,
            } => {
                let (kn, vn) = (self.input(i, 1)?, self.input(i, 2)?);
                let keys = self.append_state(*k, &kn, &format!("{name}.k"))?;
                let values = self.append_state(*v, &vn, &format!("{name}.v"))?;
                let qpos = self.row_positions(&x)?;
                let quants = [
                    self.quant_of(x_v),
                    self.state_quant(*k),
                    self.state_quant(*v),
                ];
                self.attention(
                    &x,
                    &keys,
                    &values,
                    *heads,
                    *kv_heads,
                    *head_dim,
                    *head_dim,
                    *scale,
                    Some(&qpos),
                    quants,
                    name,
                )?
            }
            Op::Attention {
                heads,
                kv_heads,
                d,
                dv,
                scale,
            } => {
                let (kn, vn) = (self.input(i, 1)?, self.input(i, 2)?);
                let ins = &self.graph.nodes[i].inputs;
                let quants = [
                    self.quant_of(ins[0]),
                    self.quant_of(ins[1]),
                    self.quant_of(ins[2]),
                ];
                self.attention(
                    &x, &kn, &vn, *heads, *kv_heads, *d, *dv, *scale, None, quants, name,
                )?
            }
            Op::Conv2d {
                stride,
                dilation,
                groups,
                pad,
                ..
            } => {
                let p = &self.graph.params[op.params()[0].0 as usize].shape;
                let dims = p.clone();
                let wn = self.w.matrix(&mut self.g, i, &dims)?;
                let b = self.w.bias(&mut self.g, i)?;
                let mut ins = vec![x.as_str(), wn.as_str()];
                if let Some(b) = &b {
                    ins.push(b);
                }
                let (kh, kw) = (dims[2] as i64, dims[3] as i64);
                let [top, bottom, left, right] = pad.map(|v| v as i64);
                self.g.op(
                    "Conv",
                    &ins,
                    &[
                        ("kernel_shape", Attr::Ints(&[kh, kw])),
                        ("strides", Attr::Ints(&[*stride as i64; 2])),
                        ("dilations", Attr::Ints(&[*dilation as i64; 2])),
                        ("group", Attr::Int(*groups as i64)),
                        ("pads", Attr::Ints(&[top, left, bottom, right])),
                    ],
                    name,
                )
            }
            Op::PointwiseToTokens { .. } => {
                let tokens = self.map_to_tokens(&x, x_v, &format!("{name}.tokens"))?;
                let tokens = self.regrid(tokens, self.quant_of(x_v), &format!("{name}.tokens"))?;
                let (d, c) = self.pointwise_dims(op)?;
                let w = self.w.matrix(&mut self.g, i, &[d, c])?;
                self.gemm(i, &tokens, &w, name)?
            }
            Op::PointwiseFromTokens { h, w, .. } => {
                let (c, d) = self.pointwise_dims(op)?;
                let wn = self.w.matrix(&mut self.g, i, &[c, d])?;
                let rows = self.gemm(i, &x, &wn, &format!("{name}.rows"))?;
                let t = self.g.op(
                    "Transpose",
                    &[&rows],
                    &[("perm", Attr::Ints(&[1, 0]))],
                    &format!("{name}.cols"),
                );
                let s = self.g.i64s(&[1, c as i64, *h as i64, *w as i64]);
                self.g.op("Reshape", &[&t, &s], &[], name)
            }
            Op::ResizeNearest { h, w } | Op::ResizeBilinear { h, w } => {
                let c = self.fixed(x_v, 0)? as i64;
                let g = &mut self.g;
                let sizes = g.i64s(&[1, c, *h as i64, *w as i64]);
                let attrs: Vec<(&str, Attr)> = if matches!(op, Op::ResizeNearest { .. }) {
                    // PyTorch's legacy "nearest": floor(dst * in / out).
                    vec![
                        ("mode", Attr::Str("nearest")),
                        ("coordinate_transformation_mode", Attr::Str("asymmetric")),
                        ("nearest_mode", Attr::Str("floor")),
                    ]
                } else {
                    // align_corners=False, no antialias.
                    vec![
                        ("mode", Attr::Str("linear")),
                        (
                            "coordinate_transformation_mode",
                            Attr::Str("pytorch_half_pixel"),
                        ),
                    ]
                };
                g.op("Resize", &[&x, "", "", &sizes], &attrs, name)
            }
            Op::AvgPool { kh, kw, sh, sw } => g.op(
                "AveragePool",
                &[&x],
                &[
                    ("kernel_shape", Attr::Ints(&[*kh as i64, *kw as i64])),
                    ("strides", Attr::Ints(&[*sh as i64, *sw as i64])),
                ],
                name,
            ),
            Op::Concat => {
                let n = self.graph.nodes[i].inputs.len();
                let ins: Vec<String> = (0..n).map(|k| self.input(i, k)).collect::<Result<_>>()?;
                let refs: Vec<&str> = ins.iter().map(String::as_str).collect();
                self.g.op("Concat", &refs, &[("axis", Attr::Int(1))], name)
            }
            Op::ToTokens => self.map_to_tokens(&x, x_v, name)?,
        })
    }

    fn vector(&mut self, i: usize, which: Vector) -> Result<Vec<f32>> {
        self.w
            .vector(i, which)?
            .ok_or_else(|| Error::input(format!("no {which:?} weight")))
    }

    /// `x @ W^T (+ b)` on `[T, in]` rows.
    fn gemm(&mut self, i: usize, x: &str, w: &str, name: &str) -> Result<String> {
        let b = self.w.bias(&mut self.g, i)?;
        let mut ins = vec![x, w];
        if let Some(b) = &b {
            ins.push(b);
        }
        Ok(self.g.op("Gemm", &ins, &[("transB", Attr::Int(1))], name))
    }

    /// `x * w / sqrt(mean(x^2, axis) + eps)`.
    fn rms(&mut self, x: &str, axis: i64, eps: f32, w: &str, name: &str) -> String {
        let g = &mut self.g;
        let sq = g.op("Mul", &[x, x], &[], &format!("{name}.sq"));
        let ax = g.i64s(&[axis]);
        let ms = g.op(
            "ReduceMean",
            &[&sq, &ax],
            &[("keepdims", Attr::Int(1))],
            &format!("{name}.mean_sq"),
        );
        let e = g.f32_scalar(eps);
        let v = g.op("Add", &[&ms, &e], &[], &format!("{name}.var"));
        let s = g.op("Sqrt", &[&v], &[], &format!("{name}.rms"));
        let r = g.op("Reciprocal", &[&s], &[], &format!("{name}.inv_rms"));
        let n = g.op("Mul", &[x, &r], &[], &format!("{name}.normed"));
        g.op("Mul", &[&n, w], &[], name)
    }

    /// `[1, C, H, W] -> [H * W, C]`.
    fn map_to_tokens(&mut self, x: &str, x_v: ValueId, name: &str) -> Result<String> {
        let c = self.fixed(x_v, 0)? as i64;
        let s = self.g.i64s(&[c, -1]);
        let flat = self.g.op("Reshape", &[x, &s], &[], &format!("{name}.flat"));
        Ok(self.g.op(
            "Transpose",
            &[&flat],
            &[("perm", Attr::Ints(&[1, 0]))],
            name,
        ))
    }

    fn pointwise_dims(&self, op: &Op) -> Result<(usize, usize)> {
        let p = &self.graph.params[op.params()[0].0 as usize].shape;
        Ok((p[0], p[1..].iter().product()))
    }

    /// Appends this call's rows to a state slot (quantized to the slot's integers in the QDQ
    /// export) and returns the float rows the op reads: all keys / values so far (dynamic) or the
    /// whole `[context, W]` buffer (static).
    fn append_state(&mut self, s: StateId, rows: &str, hint: &str) -> Result<String> {
        let past = self.past[&s.0].clone();
        let quant = match self.state_elems[s.0 as usize] {
            Elem::Q(q) => Some(q),
            _ => None,
        };
        let new = match &quant {
            Some(q) => self.quantize(rows, q, hint)?,
            None => rows.to_string(),
        };
        let present = match self.mode {
            StateMode::Dynamic => self.g.op(
                "Concat",
                &[&past, &new],
                &[("axis", Attr::Int(0))],
                &format!("{hint}.present"),
            ),
            StateMode::Static { seq, context } => {
                // Row r of the buffer takes new row r - position when position <= r <
                // position + valid, and keeps its old value otherwise: one Gather from [past;
                // new] (index arithmetic in int64, so any element type works).
                let pos = self.pos.clone().expect("static inputs declared");
                let valid = self.valid.clone().expect("static inputs declared");
                let g = &mut self.g;
                let (zero, one) = (g.i64_scalar(0), g.i64_scalar(1));
                let ctx = g.i64_scalar(context as i64);
                let r = g.op("Range", &[&zero, &ctx, &one], &[], "buffer_row");
                let rel = g.op("Sub", &[&r, &pos], &[], "buffer_rel");
                let lo = g.op("GreaterOrEqual", &[&rel, &zero], &[], "buffer_ge");
                let hi = g.op("Less", &[&rel, &valid], &[], "buffer_lt");
                let take = g.op("And", &[&lo, &hi], &[], "buffer_take");
                let last = g.i64_scalar(seq as i64 - 1);
                let src = g.op("Clip", &[&rel, &zero, &last], &[], "buffer_src");
                let from_new = g.op("Add", &[&src, &ctx], &[], "buffer_src_new");
                let idx = g.op("Where", &[&take, &from_new, &r], &[], "buffer_index");
                let both = g.op(
                    "Concat",
                    &[&past, &new],
                    &[("axis", Attr::Int(0))],
                    &format!("{hint}.both"),
                );
                g.op(
                    "Gather",
                    &[&both, &idx],
                    &[("axis", Attr::Int(0))],
                    &format!("{hint}.present"),
                )
            }
        };
        self.present.insert(s.0, present.clone());
        Ok(match &quant {
            Some(q) => self.dequantize(&present, q, hint)?,
            None => present,
        })
    }

    fn causal_conv(&mut self, i: usize, x: &str, s: StateId, name: &str) -> Result<String> {
        let past = self.past[&s.0].clone();
        let quant = match self.state_elems[s.0 as usize] {
            Elem::Q(q) => Some(q),
            _ => None,
        };
        let new = match &quant {
            Some(q) => self.quantize(x, q, &format!("{name}.x"))?,
            None => x.to_string(),
        };
        let ext = self.g.op(
            "Concat",
            &[&past, &new],
            &[("axis", Attr::Int(0))],
            &format!("{name}.ext"),
        );
        let window = self.fixed_state_rows(s)?;
        let present = match self.mode {
            StateMode::Dynamic => {
                let (st, en, ax) = (
                    self.g.i64s(&[-(window as i64)]),
                    self.g.i64s(&[i64::MAX]),
                    self.g.i64s(&[0]),
                );
                self.g.op(
                    "Slice",
                    &[&ext, &st, &en, &ax],
                    &[],
                    &format!("{name}.present"),
                )
            }
            StateMode::Static { .. } => {
                // The last `window` rows of [state; x[..valid]] start at row `valid`.
                let valid = self.valid.clone().expect("static inputs declared");
                let g = &mut self.g;
                let (zero, one) = (g.i64_scalar(0), g.i64_scalar(1));
                let n = g.i64_scalar(window as i64);
                let r = g.op("Range", &[&zero, &n, &one], &[], "window_row");
                let idx = g.op("Add", &[&r, &valid], &[], "window_src");
                g.op(
                    "Gather",
                    &[&ext, &idx],
                    &[("axis", Attr::Int(0))],
                    &format!("{name}.present"),
                )
            }
        };
        self.present.insert(s.0, present);
        let xin = match &quant {
            Some(q) => self.dequantize(&ext, q, &format!("{name}.ext"))?,
            None => ext,
        };
        // [L - 1 + T, H] -> [1, H, L - 1 + T], depthwise conv with L taps, back to [T, H].
        let h = self.graph.states[s.0 as usize].width();
        let l = window + 1;
        let wn = self.w.matrix(&mut self.g, i, &[h, 1, l])?;
        let b = self.w.bias(&mut self.g, i)?;
        let g = &mut self.g;
        let t = g.op(
            "Transpose",
            &[&xin],
            &[("perm", Attr::Ints(&[1, 0]))],
            &format!("{name}.cols"),
        );
        let ax = g.i64s(&[0]);
        let t3 = g.op("Unsqueeze", &[&t, &ax], &[], &format!("{name}.batch"));
        let t3 = self.regrid(t3, quant, &format!("{name}.batch"))?;
        let g = &mut self.g;
        let mut ins = vec![t3.as_str(), wn.as_str()];
        if let Some(b) = &b {
            ins.push(b);
        }
        let y3 = g.op(
            "Conv",
            &ins,
            &[
                ("kernel_shape", Attr::Ints(&[l as i64])),
                ("group", Attr::Int(h as i64)),
            ],
            &format!("{name}.conv"),
        );
        let y2 = g.op("Squeeze", &[&y3, &ax], &[], &format!("{name}.unbatch"));
        let yn = g.op("Transpose", &[&y2], &[("perm", Attr::Ints(&[1, 0]))], name);
        Ok(yn)
    }

    fn fixed_state_rows(&self, s: StateId) -> Result<usize> {
        let info = &self.graph.states[s.0 as usize];
        info.shape[0].fixed().ok_or_else(|| {
            Error::input(format!("conv state `{}` is not a fixed window", info.name))
        })
    }

    /// Rotate-half RoPE on `[T, heads * d]` at this call's positions, with cos / sin tables of
    /// `self.positions` rows computed as the float path computes them.
    fn rope(&mut self, x: &str, heads: usize, d: usize, theta: f64, name: &str) -> Result<String> {
        let key = (d, theta.to_bits());
        let (cos, sin) = match self.rope.get(&key) {
            Some(t) => t.clone(),
            None => {
                let rope = Rope::new(d, theta)?;
                let half = d / 2;
                let n = self.positions;
                let mut c = Vec::with_capacity(n * half);
                let mut s = Vec::with_capacity(n * half);
                for p in 0..n {
                    let (cp, sp) = rope.cos_sin(p);
                    c.extend_from_slice(&cp);
                    s.extend_from_slice(&sp);
                }
                let cn = self.g.f32s(&format!("rope_cos_{d}"), &[n, half], &c);
                let sn = self.g.f32s(&format!("rope_sin_{d}"), &[n, half], &s);
                self.rope.insert(key, (cn.clone(), sn.clone()));
                (cn, sn)
            }
        };
        let pos = self.row_positions(x)?;
        let g = &mut self.g;
        let ax1 = g.i64s(&[1]);
        let cr = g.op(
            "Gather",
            &[&cos, &pos],
            &[("axis", Attr::Int(0))],
            "rope_cos_rows",
        );
        let sr = g.op(
            "Gather",
            &[&sin, &pos],
            &[("axis", Attr::Int(0))],
            "rope_sin_rows",
        );
        let c3 = g.op("Unsqueeze", &[&cr, &ax1], &[], "rope_cos3");
        let s3 = g.op("Unsqueeze", &[&sr, &ax1], &[], "rope_sin3");
        let shape = g.i64s(&[0, heads as i64, d as i64]);
        let x3 = g.op("Reshape", &[x, &shape], &[], &format!("{name}.heads"));
        let half = (d / 2) as i64;
        let (a0, a1, a2, ax) = (
            g.i64s(&[0]),
            g.i64s(&[half]),
            g.i64s(&[d as i64]),
            g.i64s(&[2]),
        );
        let x1 = g.op("Slice", &[&x3, &a0, &a1, &ax], &[], &format!("{name}.x1"));
        let x2 = g.op("Slice", &[&x3, &a1, &a2, &ax], &[], &format!("{name}.x2"));
        // [x1 cos - x2 sin, x2 cos + x1 sin]
        let x1c = g.op("Mul", &[&x1, &c3], &[], &format!("{name}.x1c"));
        let x2s = g.op("Mul", &[&x2, &s3], &[], &format!("{name}.x2s"));
        let x2c = g.op("Mul", &[&x2, &c3], &[], &format!("{name}.x2c"));
        let x1s = g.op("Mul", &[&x1, &s3], &[], &format!("{name}.x1s"));
        let lo = g.op("Sub", &[&x1c, &x2s], &[], &format!("{name}.lo"));
        let hi = g.op("Add", &[&x2c, &x1s], &[], &format!("{name}.hi"));
        let y3 = g.op(
            "Concat",
            &[&lo, &hi],
            &[("axis", Attr::Int(2))],
            &format!("{name}.rot"),
        );
        let flat = g.i64s(&[0, (heads * d) as i64]);
        Ok(g.op("Reshape", &[&y3, &flat], &[], name))
    }

    /// Grouped attention: `q [T, heads * d]`, `k [K, kv * d]`, `v [K, kv * dv]`; query head `h`
    /// reads kv head `h / (heads / kv)`. With `qpos`, key `j` is visible to row `i` when `j <=
    /// qpos[i]` (causal over the state's positions).
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &mut self,
        q: &str,
        k: &str,
        v: &str,
        heads: usize,
        kv: usize,
        d: usize,
        dv: usize,
        scale: f32,
        qpos: Option<&str>,
        [q_q, k_q, v_q]: [Option<ActQuant>; 3],
        name: &str,
    ) -> Result<String> {
        let group = (heads / kv) as i64;
        let (kv, d, dv) = (kv as i64, d as i64, dv as i64);
        let g = &mut self.g;
        // q: [T, kv, group, d] -> [kv, group, T, d]
        let sq = g.i64s(&[0, kv, group, d]);
        let q4 = g.op("Reshape", &[q, &sq], &[], &format!("{name}.q4"));
        let qt = g.op(
            "Transpose",
            &[&q4],
            &[("perm", Attr::Ints(&[1, 2, 0, 3]))],
            &format!("{name}.qt"),
        );
        // k: [K, kv, d] -> [kv, 1, d, K]
        let sk = g.i64s(&[0, kv, 1, d]);
        let k4 = g.op("Reshape", &[k, &sk], &[], &format!("{name}.k4"));
        let kt = g.op(
            "Transpose",
            &[&k4],
            &[("perm", Attr::Ints(&[1, 2, 3, 0]))],
            &format!("{name}.kt"),
        );
        // v: [K, kv, dv] -> [kv, 1, K, dv]
        let sv = g.i64s(&[0, kv, 1, dv]);
        let v4 = g.op("Reshape", &[v, &sv], &[], &format!("{name}.v4"));
        let vt = g.op(
            "Transpose",
            &[&v4],
            &[("perm", Attr::Ints(&[1, 2, 0, 3]))],
            &format!("{name}.vt"),
        );
        let qt = self.regrid(qt, q_q, &format!("{name}.qt"))?;
        let kt = self.regrid(kt, k_q, &format!("{name}.kt"))?;
        let vt = self.regrid(vt, v_q, &format!("{name}.vt"))?;
        let g = &mut self.g;
        let s = g.op("MatMul", &[&qt, &kt], &[], &format!("{name}.scores_raw"));
        let sc = g.f32_scalar(scale);
        let mut scores = g.op("Mul", &[&s, &sc], &[], &format!("{name}.scores"));
        if let Some(qpos) = qpos {
            // keys: the last axis of the scores.
            let shape = g.op("Shape", &[&kt], &[], &format!("{name}.kshape"));
            let (a, b) = (g.i64s(&[3]), g.i64s(&[4]));
            let kn = g.op("Slice", &[&shape, &a, &b], &[], &format!("{name}.keys"));
            let ax0 = g.i64s(&[0]);
            let kns = g.op("Squeeze", &[&kn, &ax0], &[], &format!("{name}.keys_scalar"));
            let (zero, one) = (g.i64_scalar(0), g.i64_scalar(1));
            let kidx = g.op(
                "Range",
                &[&zero, &kns, &one],
                &[],
                &format!("{name}.key_pos"),
            );
            let row = g.op("Unsqueeze", &[&kidx, &ax0], &[], &format!("{name}.key_row"));
            let ax1 = g.i64s(&[1]);
            let col = g.op(
                "Unsqueeze",
                &[qpos, &ax1],
                &[],
                &format!("{name}.query_col"),
            );
            let allowed = g.op("LessOrEqual", &[&row, &col], &[], &format!("{name}.causal"));
            let neg = g.f32_scalar(MASKED);
            scores = g.op(
                "Where",
                &[&allowed, &scores, &neg],
                &[],
                &format!("{name}.masked"),
            );
        }
        let p = g.op(
            "Softmax",
            &[&scores],
            &[("axis", Attr::Int(-1))],
            &format!("{name}.probs"),
        );
        let o = g.op("MatMul", &[&p, &vt], &[], &format!("{name}.heads_out"));
        // [kv, group, T, dv] -> [T, kv, group, dv] -> [T, heads * dv]
        let ot = g.op(
            "Transpose",
            &[&o],
            &[("perm", Attr::Ints(&[2, 0, 1, 3]))],
            &format!("{name}.ot"),
        );
        let so = g.i64s(&[0, kv * group * dv]);
        Ok(g.op("Reshape", &[&ot, &so], &[], name))
    }
}

fn table_dims(graph: &Graph, op: &Op) -> Result<(usize, usize)> {
    let p = &graph.params[op.params()[0].0 as usize].shape;
    match p.as_slice() {
        [v, h] => Ok((*v, *h)),
        s => Err(Error::input(format!("embedding table of shape {s:?}"))),
    }
}

/// `[out, in]` of a linear node, from its input and output values (a tied head's weight is its
/// embedding's table).
fn linear_dims(graph: &Graph, i: usize) -> Result<(usize, usize)> {
    let n = &graph.nodes[i];
    let last = |v: ValueId| -> Result<usize> {
        let s = &graph.value(v).shape;
        s.last()
            .and_then(|d| d.fixed())
            .ok_or_else(|| Error::input(format!("`{}` has no fixed width", graph.value(v).name)))
    };
    Ok((last(n.output)?, last(n.inputs[0])?))
}
