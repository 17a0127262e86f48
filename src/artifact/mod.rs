//! Artifact v2: a quantized model directory is its integer graphs.
//!
//! ```text
//! config.json            the float model's config plus a `quantization` section
//!                        {scheme, format: "graph", format_version: 2, integer_only: true}
//! tokenizer.json, tokenizer_config.json   copied from the float model
//! graph.json             the QuantizedModel (serde): every part's `Graph<QOp>` with nodes, edge
//!                        quantizations, state slots, ports and each op's small scalars
//! quantized.safetensors  the big integer arrays the ops reference, in their natural dtypes
//! ```
//!
//! Big arrays (weights, group multipliers, biases, multiplier vectors, tables, index tables,
//! sign flags) go to safetensors through one field adapter ([`array`]); `graph.json` holds a
//! reference `{"array": "<key>", "dtype": "I8", "len": 120}` in their place, keyed
//! `<part>.<node name>.<fields down to the array>`. An excerpt for a linear node:
//!
//! ```json
//! {
//!   "name": "layers.0.conv.in_proj",
//!   "op": {
//!     "linear": {
//!       "weight": {
//!         "out": 96, "inp": 32, "bits": 8, "group": 32,
//!         "data": {"array": "text.layers.0.conv.in_proj.weight.data", "dtype": "I8", "len": 3072},
//!         "group_mult": {"array": "text.layers.0.conv.in_proj.weight.group_mult", "dtype": "U16", "len": 96}
//!       },
//!       "bias": null,
//!       "mult": {"array": "text.layers.0.conv.in_proj.mult", "dtype": "I32", "len": 96},
//!       "x": {"scale": 0.0123, "zero_point": 3, "bits": 8},
//!       "y": {"scale": 0.0004, "zero_point": 0, "bits": 16}
//!     }
//!   },
//!   "inputs": [5], "output": 6, "observed": true
//! }
//! ```
//!
//! Loading is strict and never panics on what the files hold: every struct denies unknown
//! fields, every array is checked against its reference (dtype, shape) and must be referenced,
//! and the loaded model goes through [`QuantizedModel::validate`]: each part's
//! [`Graph::validate`] (every op's own checks, then edges, shapes, quantizations, state slots,
//! ports), the roles the engine reads, and how the parts connect. Errors name the file, the part
//! and node, and the array key when it is about an array.
//!
//! A directory written by the previous format (artifact v1: `quantized.safetensors` beside
//! `quantized.json`, no `graph.json`) is recognised by [`is_quantized_dir`] and refused with a
//! message asking to re-quantize.

pub mod array;
pub mod digest;

use crate::error::{Error, Result};
use crate::graph::qop::QOp;
use crate::graph::{Dim, Elem, Graph, Node, ValueInfo};
use crate::models::autoneural::AutoNeuralConfig;
use crate::quant::ops::elementwise::QRequantize;
use crate::quant::scheme::Scheme;
use array::ArraySource;
use safetensors::tensor::TensorView;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;

/// The version [`QuantizedModel::save`] writes and [`QuantizedModel::load`] reads.
pub const FORMAT_VERSION: u32 = 3;
/// The graphs and scalars.
pub const GRAPH_FILE: &str = "graph.json";
/// The integer arrays.
pub const ARRAYS_FILE: &str = "quantized.safetensors";
/// The metadata file of artifact v1 (beside `quantized.safetensors`, without `graph.json`).
pub const V1_META_FILE: &str = "quantized.json";

/// The error for a directory in the previous format.
pub const V1_MESSAGE: &str = "this quantized directory was written by an older autoneural \
                              (artifact v1); re-quantize it with `autoneural quantize`";

/// The model parts' names, in file order.
pub const PARTS: [&str; 3] = ["vision", "connector", "text"];

/// The roles generic code reads in each part (see [`Graph::ports`]).
fn required_ports(part: &str) -> &'static [&'static str] {
    match part {
        "vision" => &["pixels", "features"],
        "connector" => &["features", "embeddings"],
        _ => &["ids", "embeds", "hidden", "logits"],
    }
}

/// A quantized model: the integer graph of each part, and how the image rows join the prompt.
/// `O` is the op type; it is [`QOp`] everywhere but inside [`Self::load`], which reads the ops as
/// raw JSON first so that errors can name the node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuantizedModel<O = QOp> {
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// The precision scheme it was quantized with (as `Scheme::parse` reads it).
    pub scheme: String,
    /// The square input size the vision graph was built for.
    pub image_size: Option<usize>,
    pub vision: Option<Graph<O>>,
    pub connector: Option<Graph<O>>,
    /// Connector output -> the language model's embedding quantization (merging image rows into
    /// the prompt).
    pub image_to_embed: Option<QRequantize>,
    pub text: Graph<O>,
}

impl<O> QuantizedModel<O> {
    /// The parts present, by name.
    pub fn parts(&self) -> Vec<(&'static str, &Graph<O>)> {
        let [v, c, t] = PARTS;
        let mut parts = Vec::with_capacity(3);
        if let Some(g) = &self.vision {
            parts.push((v, g));
        }
        if let Some(g) = &self.connector {
            parts.push((c, g));
        }
        parts.push((t, &self.text));
        parts
    }
}

/// Whether `dir` holds a quantized model, of this format or the previous one (so callers route
/// both here and a v1 directory gets [`V1_MESSAGE`]).
pub fn is_quantized_dir(dir: &Path) -> bool {
    // `exists`, not `is_file`: a FIFO or directory in their place is reported by the loader.
    dir.join(GRAPH_FILE).exists() || dir.join(ARRAYS_FILE).exists()
}

impl QuantizedModel {
    /// Checks the whole model; errors name the part and node. Run by [`Self::load`] and before
    /// [`Self::save`] writes anything.
    pub fn validate(&self) -> Result<()> {
        if self.format_version != FORMAT_VERSION {
            return Err(Error::input(format!(
                "format version {} (this autoneural reads {FORMAT_VERSION})",
                self.format_version
            )));
        }
        Scheme::parse(&self.scheme)
            .map_err(|e| Error::input(format!("scheme `{}`: {e}", self.scheme)))?;
        let vision = [
            self.vision.is_some(),
            self.connector.is_some(),
            self.image_to_embed.is_some(),
            self.image_size.is_some(),
        ];
        if vision.iter().any(|&p| p != vision[0]) {
            return Err(Error::input(format!(
                "vision, connector, image_to_embed and image_size come together (present: \
                 {vision:?})"
            )));
        }
        for (part, g) in self.parts() {
            g.validate()
                .map_err(|e| Error::input(format!("{part} {}", message(e))))?;
            for role in required_ports(part) {
                g.port(role)
                    .map_err(|e| Error::input(format!("{part}: {}", message(e))))?;
            }
        }
        if let (Some(v), Some(c), Some(r), Some(size)) = (
            &self.vision,
            &self.connector,
            &self.image_to_embed,
            self.image_size,
        ) {
            r.validate()
                .map_err(|e| Error::input(format!("image_to_embed: {}", message(e))))?;
            fn port<'g>(g: &'g Graph<QOp>, role: &str) -> Result<&'g ValueInfo> {
                Ok(g.value(g.port(role)?))
            }
            let pixels = port(v, "pixels")?;
            if !matches!(pixels.shape.as_slice(), [_, h, w] if *h == Dim::Fixed(size) && *w == Dim::Fixed(size))
            {
                return Err(Error::input(format!(
                    "the vision graph takes {} pixels, not a {size}x{size} image",
                    crate::graph::shape_text(&pixels.shape)
                )));
            }
            let (vf, cf) = (port(v, "features")?, port(c, "features")?);
            if vf.elem != cf.elem || vf.shape.last() != cf.shape.last() {
                return Err(Error::input(format!(
                    "the vision part produces features {} in {:?}, the connector reads {} in {:?}",
                    crate::graph::shape_text(&vf.shape),
                    vf.elem,
                    crate::graph::shape_text(&cf.shape),
                    cf.elem
                )));
            }
            let (ce, te) = (port(c, "embeddings")?, port(&self.text, "embeds")?);
            if ce.elem != Elem::Q(r.x)
                || te.elem != Elem::Q(r.y)
                || ce.shape.last() != te.shape.last()
            {
                return Err(Error::input(format!(
                    "image_to_embed requantizes {:?} to {:?}, but the connector produces {} in \
                     {:?} and the language model embeds {} in {:?}",
                    r.x,
                    r.y,
                    crate::graph::shape_text(&ce.shape),
                    ce.elem,
                    crate::graph::shape_text(&te.shape),
                    te.elem
                )));
            }
        }
        Ok(())
    }

    /// Writes a self-contained quantized directory: `config.json` (the float config plus a
    /// `quantization` section), the tokenizer files, `graph.json` and `quantized.safetensors`
    /// (see the module docs). Validates first; returns the bytes of array data written.
    pub fn save(&self, dir: &Path, float_dir: &Path) -> Result<usize> {
        self.validate().map_err(|e| {
            Error::input(format!("refusing to save an invalid model: {}", message(e)))
        })?;
        let (text, arrays) = self.to_files()?;
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let cfg_path = float_dir.join("config.json");
        let cfg_text = crate::files::read_text(&cfg_path, crate::files::limits::JSON)?;
        let mut cfg: Value = serde_json::from_str(&cfg_text)
            .map_err(|e| Error::corrupt(&cfg_path, format!("invalid JSON: {e}")))?;
        if !cfg.is_object() {
            return Err(Error::corrupt(&cfg_path, "not a JSON object"));
        }
        cfg["quantization"] = serde_json::json!({
            "scheme": self.scheme,
            "format": "graph",
            "format_version": FORMAT_VERSION,
            "integer_only": true,
        });
        let out_cfg = dir.join("config.json");
        let pretty = serde_json::to_string_pretty(&cfg).map_err(|e| Error::input(e.to_string()))?;
        std::fs::write(&out_cfg, &pretty).map_err(|e| Error::io(&out_cfg, e))?;
        for name in [
            "tokenizer.json",
            "tokenizer_config.json",
            crate::models::autoneural::PREPROCESSOR_CONFIG,
        ] {
            let src = float_dir.join(name);
            if src.is_file() {
                std::fs::copy(&src, dir.join(name)).map_err(|e| Error::io(&src, e))?;
            }
        }
        let bytes = arrays.values().map(|a| a.bytes.len()).sum();
        let views = arrays
            .iter()
            .map(|(k, a)| {
                TensorView::new(a.dtype, a.shape.clone(), &a.bytes)
                    .map(|v| (k.clone(), v))
                    .map_err(|e| Error::input(format!("artifact array `{k}`: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let st = dir.join(ARRAYS_FILE);
        // Digests of everything the directory's meaning depends on (see `digest`).
        let meta = digest::metadata(
            &[
                ("config.json", pretty.as_bytes()),
                (GRAPH_FILE, text.as_bytes()),
            ],
            &arrays,
        );
        let data = safetensors::serialize(views, Some(meta))
            .map_err(|e| Error::input(format!("serializing {}: {e}", st.display())))?;
        std::fs::write(&st, data).map_err(|e| Error::io(&st, e))?;
        let graph = dir.join(GRAPH_FILE);
        std::fs::write(&graph, text).map_err(|e| Error::io(&graph, e))?;
        // A v1 metadata file left from an earlier quantization would only confuse readers.
        let v1 = dir.join(V1_META_FILE);
        if v1.is_file() {
            std::fs::remove_file(&v1).map_err(|e| Error::io(&v1, e))?;
        }
        Ok(bytes)
    }

    /// `graph.json`'s text and the arrays by key (the two passes of [`array`]).
    pub fn to_files(&self) -> Result<(String, std::collections::BTreeMap<String, array::Array>)> {
        let json_err = |e: serde_json::Error| Error::input(format!("serializing the model: {e}"));
        let (tree, sink) = array::saving(None, || serde_json::to_value(self))?;
        let tree = tree.map_err(json_err)?;
        let mut names = vec![None; sink.count()];
        let Value::Object(top) = &tree else {
            return Err(Error::input("the model did not serialize to a JSON object"));
        };
        for (field, v) in top {
            match (PARTS.contains(&field.as_str()), v) {
                (true, Value::Object(graph)) => {
                    for (gf, gv) in graph {
                        if gf != "nodes" {
                            array::name_arrays(gv, &format!("{field}.{gf}"), &mut names)?;
                            continue;
                        }
                        for node in gv.as_array().into_iter().flatten() {
                            let name = node["name"].as_str().unwrap_or_default();
                            let path = format!("{field}.{name}");
                            // Skip the op's variant tag: `{"linear": {...}}`.
                            match &node["op"] {
                                Value::Object(op) if op.len() == 1 => {
                                    for payload in op.values() {
                                        array::name_arrays(payload, &path, &mut names)?;
                                    }
                                }
                                other => array::name_arrays(other, &path, &mut names)?,
                            }
                        }
                    }
                }
                _ => array::name_arrays(v, field, &mut names)?,
            }
        }
        let names = names
            .into_iter()
            .enumerate()
            .map(|(i, n)| n.ok_or_else(|| Error::input(format!("artifact array #{i} has no key"))))
            .collect::<Result<Vec<_>>>()?;
        let n = names.len();
        let (text, sink) = array::saving(Some(names), || serde_json::to_string_pretty(self))?;
        let text = text.map_err(json_err)?;
        if sink.count() != n {
            return Err(Error::input(format!(
                "the model serialized {} arrays, then {n}",
                sink.count()
            )));
        }
        Ok((text, sink.into_arrays()))
    }

    /// Loads a directory written by [`Self::save`] (validated; see the module docs), with the
    /// model's config. No float weights are read.
    pub fn load(dir: &Path) -> Result<(Self, AutoNeuralConfig)> {
        Self::load_checked(dir, true)
    }

    /// [`Self::load`] without the digest check, for fuzzing the parsers behind it (a mutated
    /// file would never get past the digests). Not for loading models.
    #[doc(hidden)]
    pub fn load_without_digests(dir: &Path) -> Result<(Self, AutoNeuralConfig)> {
        Self::load_checked(dir, false)
    }

    fn load_checked(dir: &Path, verify_digests: bool) -> Result<(Self, AutoNeuralConfig)> {
        let graph_path = dir.join(GRAPH_FILE);
        if !graph_path.exists() {
            if dir.join(ARRAYS_FILE).is_file() && dir.join(V1_META_FILE).is_file() {
                return Err(Error::corrupt(dir, V1_MESSAGE));
            }
            return Err(Error::io(
                &graph_path,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "not a quantized model directory (no graph.json)",
                ),
            ));
        }
        let cfg_path = dir.join("config.json");
        let cfg_bytes = crate::files::read_bytes(&cfg_path, crate::files::limits::JSON)?;
        let text = crate::files::read_text(&graph_path, crate::files::limits::JSON)?;
        let corrupt = |e: Error| Error::corrupt(&graph_path, message(e));
        let top: Value =
            serde_json::from_str(&text).map_err(|e| Error::corrupt(&graph_path, e.to_string()))?;
        match top.get("format_version").and_then(Value::as_u64) {
            Some(v) if v != FORMAT_VERSION as u64 => {
                return Err(corrupt(Error::input(format!(
                    "format version {v} (this autoneural reads {FORMAT_VERSION}); re-quantize the \
                     model with `autoneural quantize`"
                ))))
            }
            _ => {}
        }
        let arrays = dir.join(ARRAYS_FILE);
        let source = ArraySource::open(&arrays)?;
        crate::models::limits::check_memory(
            source.store().data_bytes() as u64,
            "its integer arrays",
        )?;
        if verify_digests {
            digest::verify(
                source.store(),
                &arrays,
                &[
                    ("config.json", &cfg_path, &cfg_bytes),
                    (GRAPH_FILE, &graph_path, text.as_bytes()),
                ],
            )?;
        }
        let config = AutoNeuralConfig::from_file(&cfg_path)?;
        // Structural errors inside a part are reported with the part (and node) they are in.
        for part in PARTS {
            if let Some(g) = top.get(part).filter(|g| !g.is_null()) {
                check_graph_json(part, g).map_err(corrupt)?;
            }
        }
        let raw: QuantizedModel<Value> =
            QuantizedModel::deserialize(top).map_err(|e| corrupt(Error::input(e.to_string())))?;
        let (model, source) = array::loading(source, || raw.into_ops())?;
        let model = model.map_err(|e| Error::corrupt(&graph_path, message(e)))?;
        if let Some(first) = source.unused().first() {
            return Err(Error::corrupt(
                &arrays,
                format!(
                    "holds `{first}` ({} array(s) in all) that graph.json does not reference",
                    source.unused().len()
                ),
            ));
        }
        model
            .validate()
            .map_err(|e| Error::corrupt(&graph_path, message(e)))?;
        Ok((model, config))
    }
}

impl QuantizedModel<Value> {
    /// Reads every node's op (arrays through the installed source), naming the part and node in
    /// errors.
    fn into_ops(self) -> Result<QuantizedModel> {
        let ops = |part: &str, g: Graph<Value>| -> Result<Graph<QOp>> {
            let nodes = g
                .nodes
                .into_iter()
                .map(|n| {
                    let op = QOp::deserialize(n.op)
                        .map_err(|e| Error::input(format!("{part} node `{}`: {e}", n.name)))?;
                    Ok(Node {
                        name: n.name,
                        op,
                        inputs: n.inputs,
                        output: n.output,
                        observed: n.observed,
                        aliases: n.aliases,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(Graph {
                inputs: g.inputs,
                values: g.values,
                nodes,
                params: g.params,
                states: g.states,
                ports: g.ports,
            })
        };
        let [v, c, t] = PARTS;
        Ok(QuantizedModel {
            format_version: self.format_version,
            scheme: self.scheme,
            image_size: self.image_size,
            vision: self.vision.map(|g| ops(v, g)).transpose()?,
            connector: self.connector.map(|g| ops(c, g)).transpose()?,
            image_to_embed: self.image_to_embed,
            text: ops(t, self.text)?,
        })
    }
}

/// Reads a part's graph with raw ops, only to name the part and node of a structural error
/// (serde's own message has only a position).
fn check_graph_json(part: &str, g: &Value) -> Result<()> {
    let Err(e) = Graph::<Value>::deserialize(g) else {
        return Ok(());
    };
    for (i, n) in g
        .get("nodes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        if let Err(e) = Node::<Value>::deserialize(n) {
            let name = n
                .get("name")
                .and_then(Value::as_str)
                .map_or_else(|| format!("#{i}"), |name| format!("`{name}`"));
            return Err(Error::input(format!("{part} node {name}: {e}")));
        }
    }
    Err(Error::input(format!("{part}: {e}")))
}

/// An error's message without the variant's own prefix (input errors are plain text).
fn message(e: Error) -> String {
    match e {
        Error::Input(m) => m,
        e => e.to_string(),
    }
}
