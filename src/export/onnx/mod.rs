//! `autoneural export onnx`: a model as ONNX files, one per part (vision encoder, connector,
//! token embedding, language model), in QDQ form from a quantized directory or in float from a
//! float model directory, with an `export.json` manifest a runtime (or `python/check_onnx.py`)
//! drives them by.
//!
//! The QDQ export is our integer graph written as float ONNX ops: each node's float op (rebuilt
//! from the directory's `config.json`, checked node by node against the integer graph), its
//! weights as integers behind `DequantizeLinear` with the scales our integer kernels multiply by,
//! and every edge's quantization as a `QuantizeLinear` -> `DequantizeLinear` pair. Lookup-table
//! activations are written as the op they tabulate. See `docs/ONNX.md`.

pub mod emit;
pub mod proto;
pub mod weights;

use crate::artifact::{QuantizedModel, GRAPH_FILE};
use crate::error::{Error, Result};
use crate::files::OutputDir;
use crate::graph::builder::FromConfig;
use crate::graph::qop::QOp;
use crate::graph::{Elem, Graph, Op};
use crate::models::autoneural::{AutoNeuralConfig, AutoNeuralModel};
use crate::quant::int_model::IntModel;
use crate::quant::params::ActQuant;
use emit::{export_part, Exported, PartSpec, Port, StateMode, StatePort};
use proto::DimSpec;
use serde::Serialize;
use std::path::{Path, PathBuf};
use weights::{FloatWeights, QuantWeights};

/// Initializer bytes above which a file's weights go to `<file>.data` (protobuf's limit is
/// 2 GiB; ONNX tools load external data lazily).
pub const INLINE_LIMIT: usize = 1 << 30;

/// Fixed shapes for NPU runtimes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StaticShapes {
    pub prefill_chunk: usize,
    pub context: usize,
}

#[derive(Clone, Debug, Default)]
pub struct ExportOptions {
    pub static_shapes: Option<StaticShapes>,
    pub force: bool,
}

/// `export.json`.
#[derive(Clone, Debug, Serialize)]
pub struct Manifest {
    pub format: &'static str,
    pub version: u32,
    /// `qdq` or `float`.
    pub precision: &'static str,
    pub scheme: Option<String>,
    pub opset: i64,
    #[serde(rename = "static")]
    pub static_shapes: Option<StaticJson>,
    /// Positions a sequence may reach.
    pub context: usize,
    pub image: Option<ImageJson>,
    pub tokens: TokensJson,
    pub parts: Vec<PartJson>,
    pub states: Vec<StateJson>,
}

#[derive(Clone, Debug, Serialize)]
pub struct StaticJson {
    pub prefill_chunk: usize,
    pub context: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct ImageJson {
    pub size: usize,
    pub tokens: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct TokensJson {
    pub image: u32,
    pub image_start: Option<u32>,
    pub image_end: Option<u32>,
    pub eos: Vec<u32>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PartJson {
    pub name: String,
    pub file: String,
    /// Other files the part needs (external weights).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub data_files: Vec<String>,
    pub inputs: Vec<PortJson>,
    pub outputs: Vec<PortJson>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PortJson {
    pub name: String,
    pub dtype: &'static str,
    pub shape: Vec<serde_json::Value>,
    pub quant: Option<ActQuant>,
}

#[derive(Clone, Debug, Serialize)]
pub struct StateJson {
    pub name: String,
    pub input: String,
    pub output: String,
    pub dtype: &'static str,
    pub shape: Vec<serde_json::Value>,
    pub grows: bool,
    pub quant: Option<ActQuant>,
    /// What a fresh state holds (the zero point in `dtype`, i.e. real 0).
    pub fill: i64,
}

fn dims_json(d: &[DimSpec]) -> Vec<serde_json::Value> {
    d.iter()
        .map(|d| match d {
            DimSpec::Fixed(n) => serde_json::json!(n),
            DimSpec::Named(s) => serde_json::json!(s),
        })
        .collect()
}

fn port_json(p: &Port) -> PortJson {
    PortJson {
        name: p.name.clone(),
        dtype: p.dtype.name(),
        shape: dims_json(&p.dims),
        quant: p.quant,
    }
}

fn state_json(s: &StatePort) -> StateJson {
    StateJson {
        name: s.slot.clone(),
        input: s.input.clone(),
        output: s.output.clone(),
        dtype: s.dtype.name(),
        shape: dims_json(&s.dims),
        grows: s.grows,
        quant: s.quant,
        fill: s.fill,
    }
}

/// One model part's graphs: the float graph (op attributes) and, for the QDQ export, the integer
/// graph of the same nodes.
enum Source<'a> {
    Float(&'a crate::exec::FloatProgram),
    Quant {
        float: &'a Graph,
        int: &'a Graph<QOp>,
    },
}

impl Source<'_> {
    fn graph(&self) -> &Graph {
        match self {
            Source::Float(p) => &p.graph,
            Source::Quant { float, .. } => float,
        }
    }

    fn export(&self, spec: &PartSpec) -> Result<Exported> {
        match self {
            Source::Float(p) => {
                let elems: Vec<Elem> = p.graph.values.iter().map(|v| v.elem).collect();
                let states: Vec<Elem> = p.graph.states.iter().map(|s| s.elem).collect();
                export_part(&p.graph, &elems, &states, FloatWeights::new(p), spec)
            }
            Source::Quant { float, int } => {
                let elems: Vec<Elem> = int.values.iter().map(|v| v.elem).collect();
                let states: Vec<Elem> = int.states.iter().map(|s| s.elem).collect();
                export_part(float, &elems, &states, QuantWeights::new(int), spec)
            }
        }
    }
}

/// Exports the model in `model` (a quantized directory: QDQ; a float model directory: float)
/// into `out`; returns the manifest written there as `export.json` and where it went.
pub fn export_onnx(model: &Path, out: &Path, opts: &ExportOptions) -> Result<(Manifest, PathBuf)> {
    if model.join(GRAPH_FILE).is_file() {
        let (q, config) = QuantizedModel::load(model)?;
        let (text, vision) = float_graphs(&config, &q)?;
        let ints = QuantParts {
            text: &q.text,
            vision: q.vision.as_ref(),
            connector: q.connector.as_ref(),
            scheme: q.scheme.clone(),
        };
        let floats = FloatParts {
            text: &text,
            vision: vision.as_ref().map(|(e, c)| (e, c)),
        };
        export_quantized(&config, floats, &ints, &[model], out, opts)
    } else {
        let m = AutoNeuralModel::load(model)?;
        export_float(&m, &[model], out, opts)
    }
}

/// The integer graphs of a quantized model.
pub struct QuantParts<'a> {
    pub text: &'a Graph<QOp>,
    pub vision: Option<&'a Graph<QOp>>,
    pub connector: Option<&'a Graph<QOp>>,
    pub scheme: String,
}

impl<'a> QuantParts<'a> {
    /// The graphs of an in-memory integer model.
    pub fn of(m: &'a IntModel) -> Self {
        Self {
            text: &m.text.graph,
            vision: m.vision.as_ref().map(|v| &v.encoder.graph),
            connector: m.vision.as_ref().map(|v| &v.connector.graph),
            scheme: m.scheme.to_string(),
        }
    }
}

/// The float graphs a quantized model was lowered from (text; encoder and connector).
pub struct FloatParts<'a> {
    pub text: &'a Graph,
    pub vision: Option<(&'a Graph, &'a Graph)>,
}

impl<'a> FloatParts<'a> {
    /// The graphs of an in-memory float model.
    pub fn of(m: &'a AutoNeuralModel) -> Self {
        Self {
            text: &m.text.graph,
            vision: m
                .vision
                .as_ref()
                .map(|v| (&v.encoder.graph, &v.connector.graph)),
        }
    }
}

/// The QDQ export of integer graphs `ints`, with `floats` the float graphs they were lowered
/// from. `inputs` are the files the output must not overwrite.
pub fn export_quantized(
    config: &AutoNeuralConfig,
    floats: FloatParts,
    ints: &QuantParts,
    inputs: &[&Path],
    out: &Path,
    opts: &ExportOptions,
) -> Result<(Manifest, PathBuf)> {
    check_static(opts)?;
    let vision =
        match (floats.vision, ints.vision, ints.connector) {
            (Some((fe, fc)), Some(e), Some(c)) => {
                check_same("vision", fe, e)?;
                check_same("connector", fc, c)?;
                Some((
                    Source::Quant { float: fe, int: e },
                    Source::Quant { float: fc, int: c },
                ))
            }
            (None, _, _) => None,
            _ => return Err(Error::input(
                "the model has a vision tower in its config but no integer vision part: a float \
                 part in a quantized model has no QDQ form; quantize every part (or export the \
                 float model without QDQ)",
            )),
        };
    check_same("text", floats.text, ints.text)?;
    let text = Source::Quant {
        float: floats.text,
        int: ints.text,
    };
    let stage = OutputDir::begin(out, "export onnx", inputs, opts.force)?;
    let manifest = write_parts(
        stage.path(),
        config,
        "qdq",
        Some(ints.scheme.clone()),
        vision.as_ref().map(|(a, b)| (a, b)),
        &text,
        opts,
    )?;
    finish(stage, manifest)
}

/// The float export of a float model (no QDQ).
pub fn export_float(
    m: &AutoNeuralModel,
    inputs: &[&Path],
    out: &Path,
    opts: &ExportOptions,
) -> Result<(Manifest, PathBuf)> {
    check_static(opts)?;
    let vision = m
        .vision
        .as_ref()
        .map(|v| (Source::Float(&v.encoder), Source::Float(&v.connector)));
    let text = Source::Float(&m.text);
    let stage = OutputDir::begin(out, "export onnx", inputs, opts.force)?;
    let manifest = write_parts(
        stage.path(),
        &m.config,
        "float",
        None,
        vision.as_ref().map(|(a, b)| (a, b)),
        &text,
        opts,
    )?;
    finish(stage, manifest)
}

fn check_static(opts: &ExportOptions) -> Result<()> {
    match opts.static_shapes {
        Some(s) if s.prefill_chunk == 0 || s.context == 0 || s.prefill_chunk > s.context => {
            Err(Error::input(format!(
                "--prefill-chunk {} and --context {} must be positive, the chunk no longer than \
                 the context",
                s.prefill_chunk, s.context
            )))
        }
        _ => Ok(()),
    }
}

fn finish(stage: OutputDir, manifest: Manifest) -> Result<(Manifest, PathBuf)> {
    let json = serde_json::to_string_pretty(&manifest).expect("manifest serializes");
    let path = stage.path().join("export.json");
    std::fs::write(&path, json).map_err(|e| Error::io(&path, e))?;
    let dest = stage.commit()?;
    Ok((manifest, dest))
}

/// The float graphs of a quantized directory's parts (for op attributes), at the size its
/// encoder was converted for.
fn float_graphs(
    config: &AutoNeuralConfig,
    q: &QuantizedModel,
) -> Result<(Graph, Option<(Graph, Graph)>)> {
    let parts = config.part_graphs(&FromConfig)?;
    let vision = match (parts.vision, &config.vision, q.image_size) {
        (Some((_, conn)), Some(tower), Some(s)) if s != tower.image_size() => {
            let enc = tower.build(&FromConfig, &parts.roots.vision, (s, s))?;
            Some((enc, conn))
        }
        (v, _, _) => v,
    };
    Ok((parts.text, vision))
}

/// The integer graph must be the float graph's nodes, in order, with the same wiring: then each
/// float op says what its integer op computes.
fn check_same(part: &str, f: &Graph, q: &Graph<QOp>) -> Result<()> {
    let bad = |what: String| {
        Err(Error::input(format!(
            "the quantized {part} graph does not match the graph its config.json builds ({what}); \
             was the directory quantized from this config?"
        )))
    };
    if f.nodes.len() != q.nodes.len() || f.values.len() != q.values.len() {
        return bad(format!(
            "{} vs {} nodes, {} vs {} values",
            f.nodes.len(),
            q.nodes.len(),
            f.values.len(),
            q.values.len()
        ));
    }
    for (a, b) in f.nodes.iter().zip(&q.nodes) {
        let kinds = match (&a.op, &b.op) {
            (Op::Act(_), QOp::Lut(_)) | (Op::Linear { .. }, QOp::TiedLinear { .. }) => true,
            (fa, qb) => fa.kind() == qb.kind(),
        };
        if a.name != b.name || a.inputs != b.inputs || a.output != b.output || !kinds {
            return bad(format!(
                "node `{}` ({}) vs `{}` ({})",
                a.name,
                a.op.kind(),
                b.name,
                b.op.kind()
            ));
        }
    }
    for (a, b) in f.values.iter().zip(&q.values) {
        if a.shape != b.shape {
            return bad(format!("value `{}` shapes differ", a.name));
        }
    }
    if f.states.len() != q.states.len() {
        return bad("state slots differ".into());
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn write_parts(
    dir: &Path,
    config: &AutoNeuralConfig,
    precision: &'static str,
    scheme: Option<String>,
    vision: Option<(&Source, &Source)>,
    text: &Source,
    opts: &ExportOptions,
) -> Result<Manifest> {
    let mut parts = Vec::new();
    let mut states = Vec::new();
    let max_pos = config.text.max_position_embeddings();
    let context = match opts.static_shapes {
        Some(s) if s.context > max_pos => {
            return Err(Error::input(format!(
                "--context {} is beyond the model's {max_pos} positions",
                s.context
            )))
        }
        Some(s) => s.context,
        None => max_pos,
    };
    let mut image = None;
    let finish = |name: &str, ex: Exported, parts: &mut Vec<PartJson>| -> Result<Vec<StatePort>> {
        let file = format!("{name}.onnx");
        let inputs = ex.inputs.iter().map(port_json).collect();
        let outputs = ex.outputs.iter().map(port_json).collect();
        let doc = format!("autoneural {precision} export: {name}");
        let files = ex.graph.write(dir, &file, &doc, INLINE_LIMIT)?;
        parts.push(PartJson {
            name: name.to_string(),
            file,
            data_files: files[1..].to_vec(),
            inputs,
            outputs,
        });
        Ok(ex.states)
    };
    if let Some((enc, conn)) = vision {
        let g = enc.graph();
        let (px, feat) = (g.port("pixels")?, g.port("features")?);
        let ex = enc.export(&PartSpec {
            name: "vision_encoder",
            inputs: vec![(px, "pixels")],
            outputs: vec![(feat, "features")],
            mode: StateMode::Dynamic,
            positions: 0,
        })?;
        let tokens = g.value(feat).shape[0].fixed().unwrap_or(0);
        let size = g.value(px).shape[1].fixed().unwrap_or(0);
        image = Some(ImageJson { size, tokens });
        finish("vision_encoder", ex, &mut parts)?;
        let c = conn.graph();
        let ex = conn.export(&PartSpec {
            name: "connector",
            inputs: vec![(c.port("features")?, "features")],
            outputs: vec![(c.port("embeddings")?, "image_embeds")],
            mode: StateMode::Dynamic,
            positions: 0,
        })?;
        finish("connector", ex, &mut parts)?;
    }
    let t = text.graph();
    let (ids, embeds, logits) = (t.port("ids")?, t.port("embeds")?, t.port("logits")?);
    let ex = text.export(&PartSpec {
        name: "embed_tokens",
        inputs: vec![(ids, "input_ids")],
        outputs: vec![(embeds, "inputs_embeds")],
        mode: StateMode::Dynamic,
        positions: 0,
    })?;
    finish("embed_tokens", ex, &mut parts)?;
    let lm = |mode| PartSpec {
        name: "language_model",
        inputs: vec![(embeds, "inputs_embeds")],
        outputs: vec![(logits, "logits")],
        mode,
        positions: context,
    };
    match opts.static_shapes {
        None => {
            let ex = text.export(&lm(StateMode::Dynamic))?;
            states = finish("language_model", ex, &mut parts)?;
        }
        Some(s) => {
            for (name, seq) in [
                ("language_model_prefill", s.prefill_chunk),
                ("language_model_decode", 1),
            ] {
                let ex = text.export(&PartSpec {
                    name,
                    ..lm(StateMode::Static {
                        seq,
                        context: s.context,
                    })
                })?;
                states = finish(name, ex, &mut parts)?;
            }
        }
    }
    Ok(Manifest {
        format: "autoneural-onnx-export",
        version: 1,
        precision,
        scheme,
        opset: proto::OPSET,
        static_shapes: opts.static_shapes.map(|s| StaticJson {
            prefill_chunk: s.prefill_chunk,
            context: s.context,
        }),
        context,
        image,
        tokens: TokensJson {
            image: config.image_token_id,
            image_start: config.image_start_token_id,
            image_end: config.image_end_token_id,
            eos: config.text.eos_token_ids().to_vec(),
        },
        parts,
        states: states.iter().map(state_json).collect(),
    })
}
