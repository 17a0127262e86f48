//! `autoneural inspect`: architecture summary, parameter counts per part and memory needs,
//! read from the model's graphs (built from the config and the checkpoint header, no weights
//! decoded; or from the config alone for the real architectures, `--preset`): parameters are
//! the graphs' weights, conv state and KV cache their declared state slots.

use super::graph::{dir_parts, preset_config, Parts};
use anyhow::{Context, Result};
use autoneural::artifact::ARRAYS_FILE;
use autoneural::graph::builder::FromConfig;
use autoneural::graph::cost::state_sizes;
use autoneural::graph::Graph;
use autoneural::models::autoneural::{AutoNeuralConfig, VisionTower};
use autoneural::quant::int_model::IntModel;
use autoneural::weights::WeightStore;
use clap::Args;
use std::collections::HashSet;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Model directory.
    #[arg(long, default_value = super::DEFAULT_MODEL)]
    model: PathBuf,
    /// Describe a real architecture from its config instead of a directory: autoneural-1.5b
    /// (mobilenetv5_300m_enc + 2048-wide connector + LFM2-1.2B), internvl2-2b (InternViT-300M +
    /// pixel shuffle + projector + InternLM2-1.8B as a Llama, the paper's baseline), lfm2-1.2b,
    /// lfm2-700m, lfm2-350m, internlm2-1.8b.
    #[arg(long, conflicts_with = "model")]
    preset: Option<String>,
    /// Context length (tokens) for the KV-cache estimate.
    #[arg(long, default_value_t = 4096, value_parser = super::context_arg)]
    context: usize,
    /// Print as JSON.
    #[arg(long)]
    json: bool,
}

pub fn inspect(args: InspectArgs) -> Result<()> {
    let (label, cfg, parts, params, weight_bytes, integer) = match &args.preset {
        Some(name) => {
            let cfg = preset_config(name)?;
            let parts = Parts::build(&cfg, &FromConfig)?;
            let params = part_params(&parts, 0);
            let label = format!("preset {name} (config only)");
            (label, cfg, parts, params, None, false)
        }
        None => {
            let dir = super::resolve_model_dir(&args.model)?;
            let (cfg, parts, store) = dir_parts(&dir)?;
            match store {
                Some(store) => {
                    let params = part_params(&parts, unused_elements(&store, &parts));
                    let label = dir.display().to_string();
                    (label, cfg, parts, params, Some(store.data_bytes()), false)
                }
                None => {
                    // Integer artifact: no float checkpoint; parameters from the config's graphs,
                    // bytes from the integer arrays actually stored.
                    let (q, _) = IntModel::load(&dir)?;
                    let stored = std::fs::metadata(dir.join(ARRAYS_FILE))
                        .with_context(|| format!("reading {}", dir.display()))?
                        .len() as usize;
                    let label = format!("{} (integer-only, scheme {})", dir.display(), q.scheme);
                    let params = part_params(&parts, 0);
                    (label, cfg, parts, params, Some(stored), true)
                }
            }
        }
    };
    let text = parts
        .text
        .as_ref()
        .expect("every inspected model has a language model");
    report(&args, &label, &cfg, text, params, weight_bytes, integer)
}

/// Parameters per part (vision, connector, language, other) from the graphs; `other` counts
/// checkpoint elements no graph reads.
fn part_params(parts: &Parts, other: usize) -> [usize; 4] {
    let (v, c, t) = parts.param_counts();
    [v, c, t, other]
}

/// Elements of the checkpoint tensors that no part's graph reads.
fn unused_elements(store: &WeightStore, parts: &Parts) -> usize {
    let used: HashSet<&str> = parts.param_keys().collect();
    store
        .names()
        .filter(|n| !used.contains(n))
        .map(|n| store.shape(n).unwrap_or(&[]).iter().product::<usize>())
        .sum()
}

fn report(
    args: &InspectArgs,
    label: &str,
    cfg: &AutoNeuralConfig,
    text_graph: &Graph,
    parts: [usize; 4],
    weight_bytes: Option<usize>,
    integer: bool,
) -> Result<()> {
    let text = &cfg.text;
    let count = |kind: &str| {
        text_graph
            .nodes
            .iter()
            .filter(|n| n.op.kind() == kind)
            .count()
    };
    let (attn_layers, conv_layers) = (count("cached_attention"), count("causal_conv1d"));
    // The decode state's slots as the graph declares them (f32 on the float path).
    let (conv_state, kv_bytes, kv_per_token) = state_sizes(text_graph, args.context);
    let (conv_state, kv_bytes, kv_per_token) = (
        conv_state as usize,
        kv_bytes as usize,
        kv_per_token as usize,
    );
    let total_params: usize = parts.iter().sum();
    let tokens = cfg.vision.as_ref().map(VisionTower::tokens_per_image);

    if args.json {
        let v = serde_json::json!({
            "model": label,
            "model_type": cfg.model_type,
            "params": {"vision": parts[0], "connector": parts[1], "language": parts[2], "other": parts[3], "total": total_params},
            "weights_bytes_on_disk": weight_bytes,
            "weights_bytes_f32": total_params * 4,
            "language": {"arch": text.name(), "conv_layers": conv_layers, "attention_layers": attn_layers},
            "context": args.context,
            "kv_cache_bytes_per_token_f32": kv_per_token,
            "kv_cache_bytes_f32": kv_bytes,
            "kv_cache_bytes_f32_at": {"1024": kv_per_token * 1024, "4096": kv_per_token * 4096},
            "conv_state_bytes_f32": conv_state,
            "visual_tokens_per_image": tokens,
        });
        outln!("{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(());
    }

    outln!("model: {label}")?;
    match &cfg.vision {
        Some(v) => {
            outln!(
                "vision: {0}x{0} input, {1} visual tokens/image",
                v.image_size(),
                v.tokens_per_image()
            )?;
            for line in v.summary()?.lines() {
                outln!("  {line}")?;
            }
            outln!(
                "connector: {}linear -> {} ({:?}) -> linear -> {}",
                if cfg.projector_norm_eps.is_some() {
                    "LayerNorm -> "
                } else {
                    ""
                },
                cfg.projector_hidden_size,
                cfg.projector_hidden_act,
                text.hidden_size()
            )?;
        }
        None => outln!("vision: none (text-only {} checkpoint)", text.name())?,
    }
    outln!("language:")?;
    for line in text.summary().lines() {
        outln!("  {line}")?;
    }
    outln!("parameters:")?;
    outln!("  vision     {:>14}", group(parts[0]))?;
    outln!("  connector  {:>14}", group(parts[1]))?;
    outln!("  language   {:>14}", group(parts[2]))?;
    if parts[3] > 0 {
        outln!("  other      {:>14}", group(parts[3]))?;
    }
    outln!("  total      {:>14}", group(total_params))?;
    outln!("memory:")?;
    if let Some(b) = weight_bytes {
        outln!("  weights on disk         {:>14} bytes", group(b))?;
    }
    outln!(
        "  weights as f32          {:>14} bytes",
        group(total_params * 4)
    )?;
    outln!(
        "  conv state (f32, fixed) {:>14} bytes ({conv_layers} conv layers)",
        group(conv_state)
    )?;
    outln!(
        "  KV cache (f32) @ {:<6} {:>14} bytes ({attn_layers} attention layers, {} bytes/token)",
        args.context,
        group(kv_bytes),
        group(kv_per_token)
    )?;
    for ctx in [1024, 4096] {
        if ctx != args.context {
            outln!(
                "  KV cache (f32) @ {:<6} {:>14} bytes",
                ctx,
                group(kv_per_token * ctx)
            )?;
        }
    }
    if integer {
        // The integer path keeps its conv state and K/V as int16.
        outln!(
            "  integer path (int16): conv state {} bytes, KV cache @ {} {} bytes",
            group(conv_state / 2),
            args.context,
            group(kv_bytes / 2)
        )?;
    }
    Ok(())
}

fn group(n: usize) -> String {
    super::graph::group(n as u64)
}
