//! `autoneural graph`: every node of a model's graphs with its shapes, parameters, MACs and bytes
//! ([`autoneural::graph::cost`]), from a model directory or a preset's config alone. Also the
//! part graphs `inspect` counts parameters and state from.

use anyhow::{bail, Context, Result};
use autoneural::artifact::is_quantized_dir;
use autoneural::graph::builder::FromConfig;
use autoneural::graph::cost::{elem_text, GraphCost, KindCost, NodeCost};
use autoneural::graph::{bind_shape, Bindings, Dim, Graph, WeightSource};
use autoneural::models::autoneural::AutoNeuralConfig;
use autoneural::weights::WeightStore;
use clap::{Args, ValueEnum};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use autoneural::models::presets::{preset_config, VISION_PRESETS};

/// The graph of a vision-encoder preset at its config's image size.
fn vision_preset(name: &str) -> Result<Graph> {
    let (v, root) = autoneural::models::presets::vision_preset(name)?;
    let s = v.image_size();
    Ok(v.build(&FromConfig, root, (s, s))?)
}

/// A model's part graphs, built without loading any weight.
pub struct Parts {
    pub vision: Option<Graph>,
    pub connector: Option<Graph>,
    pub text: Option<Graph>,
}

impl Parts {
    /// The graphs of `cfg`; `src` answers which optional weights exist (a checkpoint header, or
    /// [`FromConfig`]). The vision graph is built at the config's image size.
    pub fn build(cfg: &AutoNeuralConfig, src: &dyn WeightSource) -> Result<Self> {
        let parts = cfg.part_graphs(src)?;
        let (vision, connector) = match parts.vision {
            Some((v, c)) => (Some(v), Some(c)),
            None => (None, None),
        };
        Ok(Self {
            vision,
            connector,
            text: Some(parts.text),
        })
    }

    /// Distinct parameters per part: (vision, connector, text).
    pub fn param_counts(&self) -> (usize, usize, usize) {
        let n = |g: &Option<Graph>| g.as_ref().map_or(0, |g| g.param_count());
        (n(&self.vision), n(&self.connector), n(&self.text))
    }

    /// Every checkpoint key the graphs read.
    pub fn param_keys(&self) -> impl Iterator<Item = &str> {
        [&self.vision, &self.connector, &self.text]
            .into_iter()
            .flatten()
            .flat_map(|g| g.params.iter().map(|p| p.key.as_str()))
    }
}

/// A model directory's config and part graphs, optional weights following its checkpoint (or
/// the config for an integer directory, which holds no float checkpoint). The store is `None`
/// for integer directories.
pub fn dir_parts(dir: &Path) -> Result<(AutoNeuralConfig, Parts, Option<WeightStore>)> {
    let cfg = AutoNeuralConfig::from_file(&dir.join("config.json"))
        .with_context(|| format!("reading {}", dir.display()))?;
    if is_quantized_dir(dir) {
        let parts = Parts::build(&cfg, &FromConfig)?;
        return Ok((cfg, parts, None));
    }
    let store = WeightStore::open_dir(dir)?;
    let parts = Parts::build(&cfg, &store)?;
    Ok((cfg, parts, Some(store)))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum PartArg {
    Vision,
    Connector,
    Text,
    All,
}

/// How to read the listing (printed after `--help`).
const READING: &str = "\
Sections: the vision encoder at the config's image size; the connector on one image's visual \
tokens; the language model twice, as a prefill of --prompt-len tokens from an empty state \
(T = prompt-len, P = 0) and as one decode step at the end of the context (T = 1, P = context - 1).

Columns: input and output shapes bound to the section's T and P, the output's symbolic shape \
(T: rows of this call, P: positions already in the decode state), element type, parameters, \
MACs (multiply-accumulates of linear, conv and attention; attention counts every query against \
all P + T keys), float32 weight bytes, output activation bytes, decode-state bytes read/written \
(conv windows, K/V). Norms, activations and other element-wise ops are vector ops (total line, \
--json). A tied head reads the embedding table again; parameter totals count each weight once.";

#[derive(Args, Debug)]
#[command(after_help = READING)]
pub struct GraphArgs {
    /// Model directory.
    #[arg(long, default_value = super::DEFAULT_MODEL)]
    model: PathBuf,
    /// A real architecture from its config instead of a directory: autoneural-1.5b,
    /// internvl2-2b, lfm2-1.2b, lfm2-700m, lfm2-350m, internlm2-1.8b, or a vision encoder alone:
    /// mobilenetv5_300m_enc, internvit-300m.
    #[arg(long, conflicts_with = "model")]
    preset: Option<String>,
    /// Which part to list.
    #[arg(long, value_enum, default_value = "all")]
    part: PartArg,
    /// Prompt tokens of the text prefill section.
    #[arg(long, default_value_t = 128)]
    prompt_len: usize,
    /// Context length: the decode section is the step at position context - 1.
    #[arg(long, default_value_t = 4096)]
    context: usize,
    /// Print as JSON.
    #[arg(long)]
    json: bool,
}

/// One listed node.
#[derive(Serialize)]
struct NodeRow {
    name: String,
    op: &'static str,
    inputs: Vec<Vec<usize>>,
    inputs_symbolic: Vec<String>,
    output: Vec<usize>,
    output_symbolic: String,
    elem: String,
    #[serde(flatten)]
    cost: NodeCost,
}

/// One part under one binding.
#[derive(Serialize)]
struct Section {
    part: &'static str,
    /// `forward` (vision, connector), `prefill` or `decode` (text).
    pass: &'static str,
    seq: usize,
    past: usize,
    /// Distinct parameters of the part (each weight once).
    params: u64,
    /// Distinct weight bytes (float32).
    weight_bytes: u64,
    /// Bytes of the decode state after the call.
    state_bytes: u64,
    total: NodeCost,
    by_op: BTreeMap<&'static str, KindCost>,
    nodes: Vec<NodeRow>,
}

#[derive(Serialize)]
struct ParamTotals {
    vision: usize,
    connector: usize,
    text: usize,
    total: usize,
}

#[derive(Serialize)]
struct Listing {
    model: String,
    prompt_len: usize,
    context: usize,
    sections: Vec<Section>,
    /// Distinct parameters of the listed parts.
    params: ParamTotals,
}

pub fn graph(args: GraphArgs) -> Result<()> {
    if args.prompt_len == 0 || args.context == 0 {
        bail!("--prompt-len and --context must be at least 1");
    }
    let (label, parts) = match args.preset.as_deref() {
        Some(name) if VISION_PRESETS.contains(&name) => {
            let parts = Parts {
                vision: Some(vision_preset(name)?),
                connector: None,
                text: None,
            };
            (format!("preset {name} (config only)"), parts)
        }
        Some(name) => {
            let cfg = preset_config(name).map_err(|e| {
                anyhow::anyhow!(
                    "{e}, or a vision encoder alone: {}",
                    VISION_PRESETS.join(", ")
                )
            })?;
            let parts = Parts::build(&cfg, &FromConfig)?;
            (format!("preset {name} (config only)"), parts)
        }
        None => {
            let dir = super::resolve_model_dir(&args.model)?;
            let (_, parts, store) = dir_parts(&dir)?;
            let note = match store {
                Some(_) => "",
                None => " (integer-only: its float graph from the config, f32 weight bytes)",
            };
            (format!("{}{note}", dir.display()), parts)
        }
    };
    let want = |p: PartArg| args.part == PartArg::All || args.part == p;
    let mut sections = Vec::new();
    let mut totals = ParamTotals {
        vision: 0,
        connector: 0,
        text: 0,
        total: 0,
    };
    let mut vision_rows = None;
    if let Some(g) = &parts.vision {
        let f = g.value(g.port("features")?);
        vision_rows = f.shape[0].fixed();
        if want(PartArg::Vision) {
            totals.vision = g.param_count();
            sections.push(section(g, "vision", "forward", Bindings::default()));
        }
    }
    if let (Some(g), true) = (&parts.connector, want(PartArg::Connector)) {
        totals.connector = g.param_count();
        let seq = vision_rows.unwrap_or(1);
        sections.push(section(
            g,
            "connector",
            "forward",
            Bindings { seq, past: 0 },
        ));
    }
    if let (Some(g), true) = (&parts.text, want(PartArg::Text)) {
        totals.text = g.param_count();
        let prefill = Bindings {
            seq: args.prompt_len,
            past: 0,
        };
        let decode = Bindings {
            seq: 1,
            past: args.context - 1,
        };
        sections.push(section(g, "text", "prefill", prefill));
        sections.push(section(g, "text", "decode", decode));
    }
    if sections.is_empty() {
        let part = format!("{:?}", args.part).to_lowercase();
        bail!("the model has no {part} part");
    }
    totals.total = totals.vision + totals.connector + totals.text;
    let listing = Listing {
        model: label,
        prompt_len: args.prompt_len,
        context: args.context,
        sections,
        params: totals,
    };
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&listing)?)?;
    } else {
        print_listing(&listing)?;
    }
    Ok(())
}

fn section(g: &Graph, part: &'static str, pass: &'static str, b: Bindings) -> Section {
    let cost = GraphCost::float(g, b);
    let nodes = g
        .nodes
        .iter()
        .zip(&cost.nodes)
        .map(|(n, c)| {
            let out = g.value(n.output);
            NodeRow {
                name: n.name.clone(),
                op: n.op.kind(),
                inputs: n
                    .inputs
                    .iter()
                    .map(|v| bind_shape(&g.value(*v).shape, b))
                    .collect(),
                inputs_symbolic: n
                    .inputs
                    .iter()
                    .map(|v| compact(&g.value(*v).shape))
                    .collect(),
                output: bind_shape(&out.shape, b),
                output_symbolic: compact(&out.shape),
                elem: elem_text(out.elem),
                cost: *c,
            }
        })
        .collect();
    Section {
        part,
        pass,
        seq: b.seq,
        past: b.past,
        params: cost.params,
        weight_bytes: cost.weight_bytes,
        state_bytes: cost.state_bytes,
        total: cost.total,
        by_op: cost.by_kind,
        nodes,
    }
}

/// `[T,2048]`: a shape without spaces.
fn compact(s: &[Dim]) -> String {
    let d: Vec<String> = s.iter().map(|d| d.to_string()).collect();
    format!("[{}]", d.join(","))
}

fn dims_text(d: &[usize]) -> String {
    let d: Vec<String> = d.iter().map(|d| d.to_string()).collect();
    format!("[{}]", d.join(","))
}

/// 1234 -> "1.23k", 5_891_440_896 -> "5.89G" (three significant digits); below 1000 exact.
pub fn human(n: u64) -> String {
    if n < 1000 {
        return n.to_string();
    }
    let mut v = n as f64;
    let mut unit = "";
    for u in ["k", "M", "G", "T", "P"] {
        if v < 1000.0 {
            break;
        }
        v /= 1000.0;
        unit = u;
    }
    let digits = if v < 10.0 {
        2
    } else if v < 100.0 {
        1
    } else {
        0
    };
    format!("{v:.digits$}{unit}")
}

/// Bytes with an SI unit: "4.68 GB", "512 B".
pub fn human_bytes(n: u64) -> String {
    let h = human(n);
    if n < 1000 {
        format!("{h} B")
    } else {
        let (num, unit) = h.split_at(h.len() - 1);
        format!("{num} {unit}B")
    }
}

/// A number, or `-` for zero (keeps sparse columns readable).
fn cell(n: u64, f: fn(u64) -> String) -> String {
    if n == 0 {
        "-".into()
    } else {
        f(n)
    }
}

fn print_listing(l: &Listing) -> Result<()> {
    outln!("model: {}", l.model)?;
    for s in &l.sections {
        outln!()?;
        let bind = match s.pass {
            "prefill" => format!(" (T = {}, P = {})", s.seq, s.past),
            "decode" => format!(" (one step: T = {}, P = {})", s.seq, s.past),
            _ if s.seq > 0 => format!(" (T = {})", s.seq),
            _ => String::new(),
        };
        outln!("== {} {}{bind}: {} nodes", s.part, s.pass, s.nodes.len())?;
        let header = [
            "node",
            "op",
            "inputs",
            "output",
            "symbolic",
            "elem",
            "params",
            "MACs",
            "weights",
            "out bytes",
            "state r/w",
        ];
        let mut rows: Vec<[String; 11]> = vec![header.map(String::from)];
        for n in &s.nodes {
            let ins: Vec<String> = n.inputs.iter().map(|d| dims_text(d)).collect();
            let c = &n.cost;
            let state = if c.state_read_bytes + c.state_write_bytes == 0 {
                "-".into()
            } else {
                format!(
                    "{}/{}",
                    human_bytes(c.state_read_bytes),
                    human_bytes(c.state_write_bytes)
                )
            };
            rows.push([
                n.name.clone(),
                n.op.to_string(),
                ins.join(" "),
                dims_text(&n.output),
                n.output_symbolic.clone(),
                n.elem.clone(),
                cell(c.params, human),
                cell(c.macs, human),
                cell(c.weight_bytes, human_bytes),
                human_bytes(c.output_bytes),
                state,
            ]);
        }
        // Left-aligned text columns, right-aligned numbers.
        let mut width = [0usize; 11];
        for r in &rows {
            for (w, c) in width.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        for r in &rows {
            let mut line = String::new();
            for (i, (c, w)) in r.iter().zip(width).enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                if i < 6 {
                    line.push_str(&format!("{c:<w$}"));
                } else {
                    line.push_str(&format!("{c:>w$}"));
                }
            }
            outln!("{}", line.trim_end())?;
        }
        let t = &s.total;
        outln!(
            "total: params {} (each weight once), MACs {}, vector ops {}",
            group(s.params),
            human(t.macs),
            human(t.vector_ops),
        )?;
        let mut bytes = format!(
            "       weights {} (read by this call {}), activations written {}",
            human_bytes(s.weight_bytes),
            human_bytes(t.weight_read_bytes),
            human_bytes(t.output_bytes),
        );
        if s.state_bytes > 0 {
            bytes += &format!(
                ", state read {} / written {} / held after {}",
                human_bytes(t.state_read_bytes),
                human_bytes(t.state_write_bytes),
                human_bytes(s.state_bytes),
            );
        }
        outln!("{bytes}")?;
        let mut kinds: Vec<(&&str, &KindCost)> = s.by_op.iter().collect();
        kinds.sort_by(|a, b| b.1.cost.macs.cmp(&a.1.cost.macs).then(a.0.cmp(b.0)));
        let per: Vec<String> = kinds
            .iter()
            .filter(|(_, k)| k.cost.macs > 0)
            .map(|(name, k)| {
                let pct = 100.0 * k.cost.macs as f64 / t.macs.max(1) as f64;
                format!("{name} x{} {} ({pct:.1}%)", k.nodes, human(k.cost.macs))
            })
            .collect();
        if !per.is_empty() {
            outln!("       MACs by op: {}", per.join(", "))?;
        }
    }
    let p = &l.params;
    outln!()?;
    outln!(
        "parameters: vision {} + connector {} + text {} = {}",
        group(p.vision as u64),
        group(p.connector as u64),
        group(p.text as u64),
        group(p.total as u64)
    )?;
    Ok(())
}

/// 1234567 -> "1,234,567".
pub fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn humanized_numbers() {
        assert_eq!(human(0), "0");
        assert_eq!(human(999), "999");
        assert_eq!(human(1234), "1.23k");
        assert_eq!(human(45_600_000), "45.6M");
        assert_eq!(human(1_170_340_608), "1.17G");
        assert_eq!(human(149_800_000_000), "150G");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(5_891_440_896), "5.89 GB");
        assert_eq!(group(1_472_860_224), "1,472,860,224");
    }
}
