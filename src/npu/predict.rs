//! The questions an edge VLM user asks, answered by the cost model from a config alone: vision
//! encoder latency, prefill and time to first token, decode rate at a context, peak memory, and
//! the longest context and largest image that fit the memory budgets.
//!
//! Runtime conventions follow the profile. Static-shape (NPU) profiles run the prompt in fixed
//! chunks (`chunk` tokens, the last one padded) against a static maximum context: every prefill
//! chunk and every decode step attends over all `context` positions. Dynamic (CPU) profiles run
//! the prompt in one call and decode step `n` attends over the `n` positions so far; decode is
//! reported at the given context.

use super::cost::{call_time, graph_work, NodePrecision, NodeWork};
use super::profile::Profile;
use super::scheme::NpuScheme;
use crate::error::{Error, Result};
use crate::graph::builder::FromConfig;
use crate::graph::cost::state_sizes;
use crate::graph::{bind_shape, Bindings, Graph};
use crate::models::autoneural::{AutoNeuralConfig, TextConfig, VisionTower, VISION_ROOT};
use crate::models::connector;
use crate::models::internvl::InternVitConfig;
use crate::models::mobilenetv5::VisionConfig;
use serde::Serialize;
use serde_json::Value;

/// Anything the cost model can build: a whole VLM or LM config, or a vision tower alone.
#[derive(Clone, Debug)]
pub enum Target {
    Model(Box<AutoNeuralConfig>),
    Vision(VisionTower),
}

impl Target {
    /// Any config the engine reads: AutoNeural, InternVL, LFM2, Llama (`model_type`), an InternVL
    /// vision config (`model_type: internvl_vision`), a timm MobileNetV5 encoder config
    /// (`architecture: mobilenetv5_300m_enc`, or the engine's own `vision_config` with
    /// `block_strings`).
    pub fn from_json(json: &Value) -> Result<Self> {
        let model_type = json.get("model_type").and_then(Value::as_str);
        if model_type == Some("internvl_vision") {
            let cfg = InternVitConfig::from_json(json, &serde_json::json!({}))?;
            return Ok(Target::Vision(VisionTower::InternVit(cfg)));
        }
        if let Some(arch) = json.get("architecture").and_then(Value::as_str) {
            if !arch.starts_with("mobilenetv5_300m") {
                return Err(Error::config(format!(
                    "timm architecture `{arch}` is not supported (mobilenetv5_300m_enc)"
                )));
            }
            let mut v = VisionConfig::mobilenetv5_300m_enc();
            // timm's pretrained_cfg.input_size is [3, H, W].
            if let Some(s) = json
                .pointer("/pretrained_cfg/input_size/2")
                .and_then(Value::as_u64)
            {
                v.image_size = s as usize;
            }
            return Ok(Target::Vision(VisionTower::MobileNetV5(v)));
        }
        if model_type.is_none() && json.get("block_strings").is_some() {
            let v: VisionConfig = serde_json::from_value(json.clone())
                .map_err(|e| Error::config(format!("MobileNetV5 vision config: {e}")))?;
            return Ok(Target::Vision(VisionTower::MobileNetV5(v)));
        }
        Ok(Target::Model(Box::new(AutoNeuralConfig::from_json(json)?)))
    }

    pub fn vision(&self) -> Option<&VisionTower> {
        match self {
            Target::Model(c) => c.vision.as_ref(),
            Target::Vision(v) => Some(v),
        }
    }

    pub fn text(&self) -> Option<&TextConfig> {
        match self {
            Target::Model(c) => Some(&c.text),
            Target::Vision(_) => None,
        }
    }

    /// Encoder (and connector, for a whole model) graphs at `size` x `size` (the nearest size the
    /// tower takes).
    pub fn vision_graphs(&self, size: usize) -> Result<Option<(Graph, Option<Graph>)>> {
        let Some(v) = self.vision() else {
            return Ok(None);
        };
        let size = v.nearest_size(size);
        let v = v.at_size(size);
        let root = match v {
            VisionTower::MobileNetV5(_) => VISION_ROOT,
            VisionTower::InternVit(_) => "model.vision_tower",
        };
        let enc = v.build(&FromConfig, root, (size, size))?;
        let conn = match self {
            Target::Model(c) => {
                let feat = c.feature_dim(&enc)?;
                Some(connector::build(
                    feat,
                    c.projector_hidden_size,
                    c.text.hidden_size(),
                    c.projector_hidden_act,
                    c.projector_norm_eps,
                    &FromConfig,
                    "model",
                )?)
            }
            Target::Vision(_) => None,
        };
        Ok(Some((enc, conn)))
    }

    pub fn text_graph(&self) -> Result<Option<Graph>> {
        match self {
            Target::Model(c) => Ok(Some(c.part_graphs(&FromConfig)?.text)),
            Target::Vision(_) => Ok(None),
        }
    }
}

/// What to predict for.
#[derive(Clone, Copy, Debug)]
pub struct Scenario {
    /// Square image side (the nearest size the tower takes).
    pub image_size: usize,
    /// Images in the prompt.
    pub images: usize,
    /// Text tokens of the prompt (image tokens come on top).
    pub prompt_tokens: usize,
    /// The (static maximum) context.
    pub context: usize,
    /// Prefill chunk of static-shape runtimes.
    pub chunk: usize,
    pub memory_budget_bytes: u64,
    pub onchip_budget_bytes: u64,
}

/// One part's cost in a call.
#[derive(Clone, Debug, Serialize)]
pub struct PartTime {
    pub part: String,
    pub ms: f64,
    pub macs: u64,
    pub dram_bytes: u64,
    /// Time per category (conv, attention, ...), ms.
    pub by_category: Vec<(String, f64)>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeRow>,
}

#[derive(Clone, Debug, Serialize)]
pub struct NodeRow {
    pub name: String,
    pub category: &'static str,
    pub ms: f64,
    pub bound: &'static str,
    pub macs: u64,
    pub vector_ops: u64,
    pub dram_bytes: u64,
}

/// The answers. Fields a target has no part for are `None`.
#[derive(Clone, Debug, Serialize)]
pub struct Prediction {
    pub profile: String,
    pub scheme: String,
    pub image_size: Option<usize>,
    pub image_tokens: usize,
    pub prompt_tokens: usize,
    pub context: usize,
    pub chunk: usize,
    pub encoder_ms: Option<f64>,
    pub connector_ms: Option<f64>,
    /// Encoder + connector, per image.
    pub vision_ms: Option<f64>,
    pub prefill_chunks: Option<usize>,
    pub prefill_ms: Option<f64>,
    /// All images + prefill (the first token comes out of the last prefill call).
    pub ttft_ms: Option<f64>,
    pub decode_ms_per_token: Option<f64>,
    pub decode_tokens_per_s: Option<f64>,
    pub weight_bytes: u64,
    /// Conv windows (fixed) and K/V bytes per position, in the LM's activation type.
    pub state_window_bytes: u64,
    pub kv_bytes_per_token: u64,
    pub state_bytes_at_context: u64,
    /// Largest set of live activations of any call (encoder, prefill chunk, decode step).
    pub peak_activation_bytes: u64,
    pub peak_memory_bytes: u64,
    pub memory_budget_bytes: u64,
    /// The longest context whose weights + state + activations fit the memory budget (capped by
    /// the model's position limit).
    pub max_context: Option<usize>,
    pub onchip_budget_bytes: u64,
    /// The largest square image whose attention keeps one head's scores within the on-chip
    /// budget (the smallest piece a runtime can split attention into), and whose encoder fits the
    /// memory budget; `None` for towers without that limit up to the search bound.
    pub max_image_size: Option<usize>,
    pub parts: Vec<PartTime>,
}

/// Bytes of the values live at the worst point of `g`'s execution order, in `act_bytes` each.
pub fn peak_live_bytes(g: &Graph, b: Bindings, act_bytes: u64) -> u64 {
    let n = g.values.len();
    let mut last_use = vec![0usize; n];
    for (i, node) in g.nodes.iter().enumerate() {
        for v in &node.inputs {
            last_use[v.0 as usize] = i;
        }
    }
    let size = |v: crate::graph::ValueId| -> u64 {
        bind_shape(&g.value(v).shape, b).iter().product::<usize>() as u64 * act_bytes
    };
    let mut live: u64 = g.inputs.iter().map(|&v| size(v)).sum();
    let mut peak = live;
    let mut dying: Vec<Vec<crate::graph::ValueId>> = vec![Vec::new(); g.nodes.len()];
    for (i, node) in g.nodes.iter().enumerate() {
        for v in node.inputs.iter().chain([&node.output]) {
            if last_use[v.0 as usize] == i && !dying[i].contains(v) {
                dying[i].push(*v);
            }
        }
    }
    for (i, node) in g.nodes.iter().enumerate() {
        live += size(node.output);
        peak = peak.max(live);
        for v in &dying[i] {
            live = live.saturating_sub(size(*v));
        }
    }
    peak
}

/// Visual tokens the encoder graph `enc` yields: a `[C, R, R]` map is `R * R`
/// tokens, `[T, D]` features are `T`.
pub fn image_tokens_of(enc: &Graph) -> Result<usize> {
    let feat = enc.value(enc.port("features")?);
    let dims = bind_shape(&feat.shape, Bindings::default());
    Ok(match dims.len() {
        3 => dims[1] * dims[2],
        _ => dims[0],
    })
}

/// Largest score matrix of one attention head in `g` (elements).
fn head_scores(g: &Graph, b: Bindings) -> u64 {
    g.nodes
        .iter()
        .filter_map(|n| match &n.op {
            crate::graph::Op::Attention { .. } => {
                let rows = |v: crate::graph::ValueId| bind_shape(&g.value(v).shape, b)[0] as u64;
                Some(rows(n.inputs[0]) * rows(n.inputs[1]))
            }
            crate::graph::Op::CachedAttention { .. } => {
                Some(b.seq as u64 * (b.seq + b.past) as u64)
            }
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

fn part_time(part: &str, work: &[NodeWork], p: &Profile, detail: bool) -> Result<PartTime> {
    let mut by: Vec<(String, f64)> = Vec::new();
    let mut nodes = Vec::new();
    let (mut macs, mut dram) = (0, 0);
    for w in work {
        let t = w.time(p)?;
        macs += w.matrix_macs + w.attention_macs;
        dram += w.dram_bytes();
        if t.total_s > 0.0 {
            match by.iter_mut().find(|(c, _)| c == w.category) {
                Some((_, ms)) => *ms += t.total_s * 1e3,
                None => by.push((w.category.to_string(), t.total_s * 1e3)),
            }
        }
        if detail {
            nodes.push(NodeRow {
                name: w.name.clone(),
                category: w.category,
                ms: t.total_s * 1e3,
                bound: if w.fused {
                    "fused"
                } else if t.memory_s > t.compute_s {
                    "memory"
                } else {
                    "compute"
                },
                macs: w.matrix_macs + w.attention_macs,
                vector_ops: w.vector_ops,
                dram_bytes: w.dram_bytes(),
            });
        }
    }
    let total = call_time(work, p)?;
    let overhead = total - by.iter().map(|(_, ms)| ms / 1e3).sum::<f64>();
    if overhead > 0.0 {
        by.push(("graph overhead".into(), overhead * 1e3));
    }
    Ok(PartTime {
        part: part.into(),
        ms: total * 1e3,
        macs,
        dram_bytes: dram,
        by_category: by,
        nodes,
    })
}

/// Work of one call of `g` at `b`, every node at `np`.
pub fn work(g: &Graph, b: Bindings, p: &Profile, np: NodePrecision) -> Vec<NodeWork> {
    graph_work(g, b, p, &|_| np)
}

/// Weight bytes of `g` at `np` (matrices at the weight bits, vectors at 32).
fn weight_bytes(g: &Graph, np: NodePrecision) -> u64 {
    crate::graph::cost::GraphCost::new(g, Bindings { seq: 1, past: 0 }, |_| np.weight_bits)
        .weight_bytes
}

/// One prefill call of `prompt` tokens at `context` and how many of them: static-shape profiles
/// run `chunk`-token calls against the whole static context, dynamic ones the prompt at once.
pub fn prefill_call(p: &Profile, prompt: usize, context: usize, chunk: usize) -> (Bindings, usize) {
    if p.static_shapes {
        let chunk = chunk.min(context);
        (
            Bindings {
                seq: chunk,
                past: context - chunk,
            },
            prompt.div_ceil(chunk),
        )
    } else {
        (
            Bindings {
                seq: prompt,
                past: 0,
            },
            1,
        )
    }
}

/// A decode step at `context` (static profiles: the static context; dynamic: the last position).
pub fn decode_call(context: usize) -> Bindings {
    Bindings {
        seq: 1,
        past: context - 1,
    }
}

/// Upper end of the image-size search.
const MAX_IMAGE_SEARCH: usize = crate::models::limits::IMAGE_SIZE;

/// Everything [`Prediction`] holds, for `target` on `p`.
pub fn predict(
    target: &Target,
    p: &Profile,
    scheme: &NpuScheme,
    s: &Scenario,
    detail: bool,
) -> Result<Prediction> {
    if s.chunk == 0 || s.context == 0 {
        return Err(Error::input("--chunk and --context must be at least 1"));
    }
    let mut parts = Vec::new();
    let mut weights = 0u64;
    let mut peak_act = 0u64;
    let (mut encoder_ms, mut connector_ms, mut image_tokens, mut image_size) =
        (None, None, 0usize, None);
    if let Some((enc, conn)) = target.vision_graphs(s.image_size)? {
        let b = Bindings::default();
        let size = target.vision().map(|v| v.nearest_size(s.image_size));
        image_size = size;
        let w = work(&enc, b, p, scheme.vision);
        let t = part_time("vision encoder", &w, p, detail)?;
        encoder_ms = Some(t.ms);
        parts.push(t);
        weights += weight_bytes(&enc, scheme.vision);
        peak_act = peak_act.max(peak_live_bytes(&enc, b, scheme.vision.act.bytes()));
        image_tokens = image_tokens_of(&enc)?;
        if let Some(conn) = conn {
            let cb = Bindings {
                seq: image_tokens,
                past: 0,
            };
            let w = work(&conn, cb, p, scheme.connector);
            let t = part_time("connector", &w, p, detail)?;
            connector_ms = Some(t.ms);
            parts.push(t);
            weights += weight_bytes(&conn, scheme.connector);
            peak_act = peak_act.max(peak_live_bytes(&conn, cb, scheme.connector.act.bytes()));
        }
    }
    let vision_ms = encoder_ms.map(|e| e + connector_ms.unwrap_or(0.0));
    let images = if vision_ms.is_some() { s.images } else { 0 };

    let mut pred = Prediction {
        profile: p.name.clone(),
        scheme: scheme.to_string(),
        image_size,
        image_tokens,
        prompt_tokens: s.prompt_tokens,
        context: s.context,
        chunk: s.chunk,
        encoder_ms,
        connector_ms,
        vision_ms,
        prefill_chunks: None,
        prefill_ms: None,
        ttft_ms: None,
        decode_ms_per_token: None,
        decode_tokens_per_s: None,
        weight_bytes: 0,
        state_window_bytes: 0,
        kv_bytes_per_token: 0,
        state_bytes_at_context: 0,
        peak_activation_bytes: 0,
        peak_memory_bytes: 0,
        memory_budget_bytes: s.memory_budget_bytes,
        max_context: None,
        onchip_budget_bytes: s.onchip_budget_bytes,
        max_image_size: None,
        parts: Vec::new(),
    };

    if let Some(text) = target.text_graph()? {
        let prompt = images * image_tokens + s.prompt_tokens;
        if prompt == 0 {
            return Err(Error::input(
                "the prompt has no tokens (--prompt-tokens 0 and no image)",
            ));
        }
        if prompt >= s.context {
            return Err(Error::input(format!(
                "the prompt ({prompt} tokens: {images} image(s) x {image_tokens} + {} text) does not fit a context of {} tokens",
                s.prompt_tokens, s.context
            )));
        }
        let tp = scheme.text;
        let (prefill_b, chunks) = prefill_call(p, prompt, s.context, s.chunk);
        let w = work(&text, prefill_b, p, tp);
        let mut t = part_time("prefill call", &w, p, detail)?;
        let prefill_ms = t.ms * chunks as f64;
        t.part = format!(
            "language model prefill ({chunks} call(s) of {} tokens)",
            prefill_b.seq
        );
        parts.push(t);
        let decode_b = decode_call(s.context);
        let w = work(&text, decode_b, p, tp);
        let mut t = part_time("decode step", &w, p, detail)?;
        t.part = format!("language model decode step at context {}", s.context);
        let decode_ms = t.ms;
        parts.push(t);
        weights += weight_bytes(&text, tp);
        let act = tp.act.bytes();
        peak_act = peak_act
            .max(peak_live_bytes(&text, prefill_b, act))
            .max(peak_live_bytes(&text, decode_b, act));
        // The graph's slots are f32; runtimes keep them in the activation type.
        let (window, _, per_pos) = state_sizes(&text, 0);
        let (window, per_pos) = (window / 4 * act, per_pos / 4 * act);
        pred.state_window_bytes = window;
        pred.kv_bytes_per_token = per_pos;
        pred.state_bytes_at_context = window + per_pos * s.context as u64;
        pred.prefill_chunks = Some(chunks);
        pred.prefill_ms = Some(prefill_ms);
        pred.ttft_ms = Some(images as f64 * vision_ms.unwrap_or(0.0) + prefill_ms);
        pred.decode_ms_per_token = Some(decode_ms);
        pred.decode_tokens_per_s = Some(1e3 / decode_ms);
        let fixed = weights + window + peak_act;
        if fixed > s.memory_budget_bytes {
            return Err(Error::input(format!(
                "impossible memory budget: {} bytes, but weights, conv state and activations alone need {fixed}",
                s.memory_budget_bytes
            )));
        }
        let limit = target
            .text()
            .map_or(usize::MAX, TextConfig::max_position_embeddings);
        let fits = (s.memory_budget_bytes - fixed)
            .checked_div(per_pos)
            .map_or(usize::MAX, |n| n as usize);
        pred.max_context = Some(fits.min(limit));
    }
    pred.weight_bytes = weights;
    pred.peak_activation_bytes = peak_act;
    pred.peak_memory_bytes = weights + pred.state_bytes_at_context + peak_act;
    if let Some(v) = target.vision() {
        pred.max_image_size = max_image_size(v, scheme, s)?;
    }
    pred.parts = parts;
    Ok(pred)
}

/// The largest square image (in the tower's size steps) whose attention heads' scores fit the
/// on-chip budget and whose encoder fits the memory budget.
fn max_image_size(v: &VisionTower, scheme: &NpuScheme, s: &Scenario) -> Result<Option<usize>> {
    let step = match v {
        VisionTower::MobileNetV5(_) => 32,
        VisionTower::InternVit(c) => c.patch_size * c.shuffle,
    };
    let act = scheme.vision.act.bytes();
    let fits = |size: usize| -> Result<bool> {
        let t = v.at_size(size);
        let root = match t {
            VisionTower::MobileNetV5(_) => VISION_ROOT,
            VisionTower::InternVit(_) => "model.vision_tower",
        };
        let g = t.build(&FromConfig, root, (size, size))?;
        let b = Bindings::default();
        let onchip = head_scores(&g, b) * act <= s.onchip_budget_bytes;
        let memory =
            weight_bytes(&g, scheme.vision) + peak_live_bytes(&g, b, act) <= s.memory_budget_bytes;
        Ok(onchip && memory)
    };
    if !fits(step)? {
        return Ok(Some(0));
    }
    // Both limits grow with the image: bisect over multiples of the step.
    let (mut lo, mut hi) = (1usize, MAX_IMAGE_SEARCH / step);
    if fits(hi * step)? {
        return Ok(None);
    }
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if fits(mid * step)? {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(Some(lo * step))
}
