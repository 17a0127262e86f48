//! A small typed layer over the generated ONNX protobuf types (`onnx-protobuf`): nodes with
//! attributes, initializers of every element type the export writes (float32, int64, int32,
//! int16, int8, packed int4), graph inputs and outputs with symbolic dimensions, and the model
//! file with large initializers moved to an external data file (protobuf's 2 GiB limit).

use crate::error::{Error, Result};
use onnx_protobuf::{
    attribute_proto::AttributeType, tensor_proto::DataLocation, tensor_shape_proto, type_proto,
    AttributeProto, GraphProto, Message, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

/// The opset every exported file imports: 21 is the first with int4 / int16 `QuantizeLinear` /
/// `DequantizeLinear` and blocked (`block_size`) dequantization.
pub const OPSET: i64 = 21;
/// IR version 10 (ONNX 1.16), the first that knows opset 21's int4 type.
pub const IR_VERSION: i64 = 10;

/// ONNX `TensorProto.DataType` codes the export uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    U8,
    I8,
    I16,
    I32,
    I64,
    I4,
}

impl DType {
    pub fn code(self) -> i32 {
        match self {
            DType::F32 => 1,
            DType::U8 => 2,
            DType::I8 => 3,
            DType::I16 => 5,
            DType::I32 => 6,
            DType::I64 => 7,
            DType::I4 => 22,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "float32",
            DType::U8 => "uint8",
            DType::I8 => "int8",
            DType::I16 => "int16",
            DType::I32 => "int32",
            DType::I64 => "int64",
            DType::I4 => "int4",
        }
    }

    /// The signed integer type holding `bits`-wide quantized values, if ONNX has one.
    pub fn for_bits(bits: u32) -> Option<DType> {
        match bits {
            2..=4 => Some(DType::I4),
            5..=8 => Some(DType::I8),
            9..=16 => Some(DType::I16),
            _ => None,
        }
    }
}

/// One dimension of a graph input or output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DimSpec {
    Fixed(usize),
    Named(String),
}

/// A node attribute.
pub enum Attr<'a> {
    Int(i64),
    Float(f32),
    Ints(&'a [i64]),
    Str(&'a str),
}

/// A graph under construction.
pub struct OnnxGraph {
    name: String,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    used: HashMap<String, usize>,
    /// Small int64 / float constants by value, so shapes and axes are written once.
    consts: HashMap<(DType, Vec<usize>, Vec<u8>), String>,
}

impl OnnxGraph {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            nodes: Vec::new(),
            initializers: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            used: HashMap::new(),
            consts: HashMap::new(),
        }
    }

    /// A value name not used before, from `hint` (our node names follow checkpoint keys).
    pub fn fresh(&mut self, hint: &str) -> String {
        let n = self.used.entry(hint.to_string()).or_insert(0);
        *n += 1;
        if *n == 1 {
            hint.to_string()
        } else {
            format!("{hint}__{}", *n - 1)
        }
    }

    /// Reserves `name` exactly (graph inputs and outputs); an error if it is taken.
    pub fn reserve(&mut self, name: &str) -> Result<String> {
        if self.used.contains_key(name) {
            return Err(Error::input(format!("ONNX value name `{name}` used twice")));
        }
        self.used.insert(name.to_string(), 1);
        Ok(name.to_string())
    }

    /// A node with one output named from `hint`; returns the output's name.
    pub fn op(
        &mut self,
        op_type: &str,
        inputs: &[&str],
        attrs: &[(&str, Attr)],
        hint: &str,
    ) -> String {
        let out = self.fresh(hint);
        self.op_into(op_type, inputs, attrs, &[out.as_str()]);
        out
    }

    /// A node writing the given output names (`""` inputs are omitted optional inputs).
    pub fn op_into(
        &mut self,
        op_type: &str,
        inputs: &[&str],
        attrs: &[(&str, Attr)],
        outputs: &[&str],
    ) {
        let mut n = NodeProto::new();
        n.op_type = op_type.to_string();
        n.name = format!(
            "{}_{}",
            outputs.first().copied().unwrap_or(op_type),
            self.nodes.len()
        );
        n.input = inputs.iter().map(|s| s.to_string()).collect();
        n.output = outputs.iter().map(|s| s.to_string()).collect();
        n.attribute = attrs.iter().map(|(k, v)| attribute(k, v)).collect();
        self.nodes.push(n);
    }

    /// An initializer from raw little-endian bytes (int4: two values per byte, the first in the
    /// low nibble, as ONNX packs them).
    pub fn initializer(
        &mut self,
        hint: &str,
        dtype: DType,
        dims: &[usize],
        raw: Vec<u8>,
    ) -> String {
        let name = self.fresh(hint);
        let mut t = TensorProto::new();
        t.name = name.clone();
        t.data_type = dtype.code();
        t.dims = dims.iter().map(|&d| d as i64).collect();
        t.raw_data = raw;
        self.initializers.push(t);
        name
    }

    pub fn f32s(&mut self, hint: &str, dims: &[usize], v: &[f32]) -> String {
        self.initializer(
            hint,
            DType::F32,
            dims,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        )
    }

    /// Signed integers of `dtype` (int4 / int8 / int16 / int32), values already in range.
    pub fn ints(&mut self, hint: &str, dtype: DType, dims: &[usize], v: &[i64]) -> String {
        self.initializer(hint, dtype, dims, int_bytes(dtype, v))
    }

    /// A shared constant (written once per distinct value).
    fn constant(&mut self, dtype: DType, dims: &[usize], raw: Vec<u8>) -> String {
        let key = (dtype, dims.to_vec(), raw);
        if let Some(n) = self.consts.get(&key) {
            return n.clone();
        }
        let name = self.initializer("const", dtype, dims, key.2.clone());
        self.consts.insert(key, name.clone());
        name
    }

    /// A 1-D int64 constant (shapes, axes, starts).
    pub fn i64s(&mut self, v: &[i64]) -> String {
        self.constant(
            DType::I64,
            &[v.len()],
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        )
    }

    /// A scalar int64 constant.
    pub fn i64_scalar(&mut self, v: i64) -> String {
        self.constant(DType::I64, &[], v.to_le_bytes().to_vec())
    }

    /// A scalar float constant.
    pub fn f32_scalar(&mut self, v: f32) -> String {
        self.constant(DType::F32, &[], v.to_le_bytes().to_vec())
    }

    /// A scalar quantization parameter pair for `QuantizeLinear` / `DequantizeLinear`.
    pub fn zero_point(&mut self, dtype: DType, zp: i64) -> String {
        self.constant(dtype, &[], int_bytes(dtype, &[zp]))
    }

    pub fn input(&mut self, name: &str, dtype: DType, dims: &[DimSpec]) -> Result<String> {
        let name = self.reserve(name)?;
        self.inputs.push(value_info(&name, dtype, dims));
        Ok(name)
    }

    /// Declares `value` (already produced) as the graph output `name`, which [`Self::reserve`]
    /// must have kept free (an `Identity` when the names differ).
    pub fn output(
        &mut self,
        name: &str,
        value: &str,
        dtype: DType,
        dims: &[DimSpec],
    ) -> Result<()> {
        if value != name {
            self.op_into("Identity", &[value], &[], &[name]);
        }
        self.outputs.push(value_info(name, dtype, dims));
        Ok(())
    }

    /// Bytes of initializer data.
    pub fn initializer_bytes(&self) -> usize {
        self.initializers.iter().map(|t| t.raw_data.len()).sum()
    }

    /// Writes `dir/file` (and `dir/file.data` when the initializers would pass `inline_limit`
    /// bytes: every initializer over 1 KiB moves there, 64-byte aligned); returns the files
    /// written.
    pub fn write(
        mut self,
        dir: &Path,
        file: &str,
        doc: &str,
        inline_limit: usize,
    ) -> Result<Vec<String>> {
        let mut written = vec![file.to_string()];
        if self.initializer_bytes() > inline_limit {
            let data_name = format!("{file}.data");
            let path = dir.join(&data_name);
            let f = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
            let mut w = std::io::BufWriter::new(f);
            let mut offset = 0usize;
            for t in self
                .initializers
                .iter_mut()
                .filter(|t| t.raw_data.len() > 1024)
            {
                let pad = offset.next_multiple_of(64) - offset;
                w.write_all(&vec![0u8; pad])
                    .map_err(|e| Error::io(&path, e))?;
                offset += pad;
                let raw = std::mem::take(&mut t.raw_data);
                w.write_all(&raw).map_err(|e| Error::io(&path, e))?;
                t.data_location = DataLocation::EXTERNAL.into();
                t.external_data = vec![
                    entry("location", &data_name),
                    entry("offset", &offset.to_string()),
                    entry("length", &raw.len().to_string()),
                ];
                offset += raw.len();
            }
            w.flush().map_err(|e| Error::io(&path, e))?;
            written.push(data_name);
        }
        let mut g = GraphProto::new();
        g.name = self.name;
        g.node = self.nodes;
        g.initializer = self.initializers;
        g.input = self.inputs;
        g.output = self.outputs;
        let mut m = ModelProto::new();
        m.ir_version = IR_VERSION;
        m.producer_name = "autoneural".into();
        m.producer_version = env!("CARGO_PKG_VERSION").into();
        m.doc_string = doc.to_string();
        let mut opset = OperatorSetIdProto::new();
        opset.domain = String::new();
        opset.version = OPSET;
        m.opset_import = vec![opset];
        m.graph = Some(g).into();
        let bytes = m
            .write_to_bytes()
            .map_err(|e| Error::input(format!("encoding {file}: {e}")))?;
        let path = dir.join(file);
        std::fs::write(&path, bytes).map_err(|e| Error::io(&path, e))?;
        Ok(written)
    }
}

fn entry(k: &str, v: &str) -> StringStringEntryProto {
    let mut e = StringStringEntryProto::new();
    e.key = k.into();
    e.value = v.into();
    e
}

fn attribute(name: &str, v: &Attr) -> AttributeProto {
    let mut a = AttributeProto::new();
    a.name = name.to_string();
    match v {
        Attr::Int(i) => {
            a.type_ = AttributeType::INT.into();
            a.i = *i;
        }
        Attr::Float(f) => {
            a.type_ = AttributeType::FLOAT.into();
            a.f = *f;
        }
        Attr::Ints(v) => {
            a.type_ = AttributeType::INTS.into();
            a.ints = v.to_vec();
        }
        Attr::Str(s) => {
            a.type_ = AttributeType::STRING.into();
            a.s = s.as_bytes().to_vec();
        }
    }
    a
}

fn value_info(name: &str, dtype: DType, dims: &[DimSpec]) -> ValueInfoProto {
    let mut shape = TensorShapeProto::new();
    shape.dim = dims
        .iter()
        .map(|d| {
            let mut dim = tensor_shape_proto::Dimension::new();
            dim.value = Some(match d {
                DimSpec::Fixed(n) => tensor_shape_proto::dimension::Value::DimValue(*n as i64),
                DimSpec::Named(s) => tensor_shape_proto::dimension::Value::DimParam(s.clone()),
            });
            dim
        })
        .collect();
    let mut tt = type_proto::Tensor::new();
    tt.elem_type = dtype.code();
    tt.shape = Some(shape).into();
    let mut tp = TypeProto::new();
    tp.value = Some(type_proto::Value::TensorType(tt));
    let mut vi = ValueInfoProto::new();
    vi.name = name.to_string();
    vi.type_ = Some(tp).into();
    vi
}

/// Little-endian bytes of integers as `dtype` stores them (int4 packed two per byte, low nibble
/// first, the last byte padded with zero).
pub fn int_bytes(dtype: DType, v: &[i64]) -> Vec<u8> {
    match dtype {
        DType::I4 => v
            .chunks(2)
            .map(|p| {
                let lo = (p[0] as u8) & 0x0f;
                let hi = p.get(1).map_or(0, |&x| (x as u8) & 0x0f);
                lo | (hi << 4)
            })
            .collect(),
        DType::I8 => v.iter().map(|&x| x as i8 as u8).collect(),
        DType::U8 => v.iter().map(|&x| x as u8).collect(),
        DType::I16 => v.iter().flat_map(|&x| (x as i16).to_le_bytes()).collect(),
        DType::I32 => v.iter().flat_map(|&x| (x as i32).to_le_bytes()).collect(),
        DType::I64 => v.iter().flat_map(|&x| x.to_le_bytes()).collect(),
        DType::F32 => v.iter().flat_map(|&x| (x as f32).to_le_bytes()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int4_packs_low_nibble_first() {
        assert_eq!(int_bytes(DType::I4, &[1, -1, 7]), vec![0xf1, 0x07]);
        assert_eq!(int_bytes(DType::I4, &[-8, 0]), vec![0x08]);
    }

    #[test]
    fn fresh_names_never_repeat() {
        let mut g = OnnxGraph::new("g");
        let a = g.fresh("x");
        let b = g.fresh("x");
        assert_ne!(a, b);
        assert!(g.reserve("x").is_err());
        assert_eq!(g.i64s(&[1, 2]), g.i64s(&[1, 2]));
    }
}
