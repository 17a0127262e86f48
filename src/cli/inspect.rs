//! `autoneural inspect`: architecture summary, parameter counts per part and memory needs,
//! computed from the config and the checkpoint header (no weights are decoded), or from the
//! config alone for the real architectures (`--preset`).

use anyhow::{bail, Context, Result};
use autoneural::models::autoneural::AutoNeuralConfig;
use autoneural::models::lfm2::{LayerType, Lfm2Cache, Lfm2Config};
use autoneural::models::mobilenetv5::VisionConfig;
use autoneural::ops::activation::Activation;
use autoneural::quant::model::QAutoNeural;
use autoneural::quant::model_io::QUANT_STEM;
use autoneural::weights::WeightStore;
use clap::Args;
use std::path::PathBuf;

/// Real architectures `inspect --preset` knows (no weights needed).
const PRESETS: &[&str] = &["autoneural-1.5b", "lfm2-1.2b", "lfm2-700m", "lfm2-350m"];

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Model directory.
    #[arg(long, default_value = super::DEFAULT_MODEL)]
    model: PathBuf,
    /// Describe a real architecture from its config instead of a directory: autoneural-1.5b
    /// (mobilenetv5_300m_enc + 2048-wide connector + LFM2-1.2B), lfm2-1.2b, lfm2-700m, lfm2-350m.
    #[arg(long, conflicts_with = "model")]
    preset: Option<String>,
    /// Context length (tokens) for the KV-cache estimate.
    #[arg(long, default_value_t = 4096)]
    context: usize,
    /// Print as JSON.
    #[arg(long)]
    json: bool,
}

/// A preset's config and its parameters per part (vision, connector, language, other).
fn preset(name: &str) -> Result<(AutoNeuralConfig, [usize; 4])> {
    let text = match name {
        "autoneural-1.5b" | "lfm2-1.2b" => Lfm2Config::lfm2_1_2b(),
        "lfm2-700m" => Lfm2Config::lfm2_700m(),
        "lfm2-350m" => Lfm2Config::lfm2_350m(),
        other => bail!("unknown preset `{other}` (known: {})", PRESETS.join(", ")),
    };
    let vision = (name == "autoneural-1.5b").then(VisionConfig::mobilenetv5_300m_enc);
    let (vision_params, connector_params, projector_hidden_size) = match &vision {
        Some(v) => {
            // Connector width is not published; 2048 (= the encoder and LM widths) is assumed.
            let (c, p, h) = (v.num_features, 2048, text.hidden_size);
            (v.arch()?.param_count(), c * p + p + p * h + h, p)
        }
        None => (0, 0, 0),
    };
    let params = [vision_params, connector_params, text.param_count(), 0];
    let cfg = AutoNeuralConfig {
        vision,
        text,
        projector_hidden_size,
        projector_hidden_act: Activation::GeluErf,
        image_token_id: 396,
        image_start_token_id: 498,
        image_end_token_id: 499,
    };
    Ok((cfg, params))
}

/// Parameters per part computed from a config alone (vision, connector, language, other).
fn config_params(cfg: &AutoNeuralConfig) -> Result<[usize; 4]> {
    let (v, c) = match &cfg.vision {
        Some(v) => {
            let (f, p, h) = (
                v.num_features,
                cfg.projector_hidden_size,
                cfg.text.hidden_size,
            );
            (v.arch()?.param_count(), f * p + p + p * h + h)
        }
        None => (0, 0),
    };
    Ok([v, c, cfg.text.param_count(), 0])
}

pub fn inspect(args: InspectArgs) -> Result<()> {
    let (label, cfg, parts, weight_bytes) = match &args.preset {
        Some(name) => {
            let (cfg, parts) = preset(name)?;
            (format!("preset {name} (config only)"), cfg, parts, None)
        }
        None => {
            let dir = super::resolve_model_dir(&args.model)?;
            let cfg = AutoNeuralConfig::from_file(&dir.join("config.json"))
                .with_context(|| format!("reading {}", dir.display()))?;
            if QAutoNeural::is_quantized_dir(&dir) {
                // Integer artifact: no float checkpoint; parameters from the config, bytes from
                // the integer arrays actually stored.
                let (q, _) = QAutoNeural::load(&dir)?;
                let stored = std::fs::metadata(dir.join(format!("{QUANT_STEM}.safetensors")))
                    .with_context(|| format!("reading {}", dir.display()))?
                    .len() as usize;
                let label = format!("{} (integer-only, scheme {})", dir.display(), q.scheme);
                return report(
                    &args,
                    &label,
                    &cfg,
                    config_params(&cfg)?,
                    Some(stored),
                    true,
                );
            }
            let store = WeightStore::open_dir(&dir)?;
            let parts = checkpoint_params(&store);
            (
                dir.display().to_string(),
                cfg,
                parts,
                Some(store.data_bytes()),
            )
        }
    };
    report(&args, &label, &cfg, parts, weight_bytes, false)
}

/// Parameters per part (vision, connector, language, other) from the checkpoint's tensor shapes.
fn checkpoint_params(store: &WeightStore) -> [usize; 4] {
    let mut parts = [0usize; 4];
    for name in store.names() {
        let n: usize = store.shape(name).unwrap_or(&[]).iter().product();
        let part = if name.starts_with("model.vision_tower.") {
            0
        } else if name.starts_with("model.multi_modal_projector.") {
            1
        } else if name.starts_with("model.language_model.")
            || name.starts_with("model.")
            || name == "lm_head.weight"
        {
            2
        } else {
            3
        };
        parts[part] += n;
    }
    parts
}

fn report(
    args: &InspectArgs,
    label: &str,
    cfg: &AutoNeuralConfig,
    parts: [usize; 4],
    weight_bytes: Option<usize>,
    integer: bool,
) -> Result<()> {
    let text = &cfg.text;
    let attn_layers = text
        .layer_types
        .iter()
        .filter(|t| **t == LayerType::Attention)
        .count();
    let conv_layers = text.layer_types.len() - attn_layers;
    let kv_per_token = Lfm2Cache::kv_bytes_per_token(text);
    let kv_bytes = kv_per_token * args.context;
    let conv_state = Lfm2Cache::conv_state_bytes(text);
    let total_params: usize = parts.iter().sum();

    if args.json {
        let v = serde_json::json!({
            "model": label,
            "params": {"vision": parts[0], "connector": parts[1], "language": parts[2], "other": parts[3], "total": total_params},
            "weights_bytes_on_disk": weight_bytes,
            "weights_bytes_f32": total_params * 4,
            "language": {"layers": text.layer_types.len(), "conv_layers": conv_layers, "attention_layers": attn_layers},
            "context": args.context,
            "kv_cache_bytes_per_token_f32": kv_per_token,
            "kv_cache_bytes_f32": kv_bytes,
            "conv_state_bytes_f32": conv_state,
            "visual_tokens_per_image": cfg.vision.as_ref().map(|v| v.msfa_output_resolution * v.msfa_output_resolution),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }

    println!("model: {label}");
    match &cfg.vision {
        Some(v) => {
            println!(
                "vision: input {0}x{0}, MSFA {1:?} -> {2}x{2}x{3} ({4} visual tokens/image)",
                v.image_size,
                v.msfa_indices,
                v.msfa_output_resolution,
                v.num_features,
                v.msfa_output_resolution * v.msfa_output_resolution
            );
            for line in v.arch()?.summary().lines() {
                println!("  {line}");
            }
            println!(
                "connector: linear {} -> {} ({:?}) -> linear -> {}",
                v.num_features,
                cfg.projector_hidden_size,
                cfg.projector_hidden_act,
                text.hidden_size
            );
        }
        None => println!("vision: none (text-only LFM2 checkpoint)"),
    }
    let layout: String = text
        .layer_types
        .iter()
        .map(|t| if *t == LayerType::Attention { 'A' } else { 'c' })
        .collect();
    println!(
        "language: LFM2, {} layers [{}] ({} conv, {} attention; c = gated short conv, A = GQA), hidden {}, heads {}/{} kv, head_dim {}, ffn {}, vocab {}",
        text.layer_types.len(), layout, conv_layers, attn_layers, text.hidden_size,
        text.num_attention_heads, text.num_key_value_heads, text.head_dim, text.ff_dim(), text.vocab_size
    );
    println!("parameters:");
    println!("  vision     {:>14}", group(parts[0]));
    println!("  connector  {:>14}", group(parts[1]));
    println!("  language   {:>14}", group(parts[2]));
    if parts[3] > 0 {
        println!("  other      {:>14}", group(parts[3]));
    }
    println!("  total      {:>14}", group(total_params));
    println!("memory:");
    if let Some(b) = weight_bytes {
        println!("  weights on disk         {:>14} bytes", group(b));
    }
    println!(
        "  weights as f32          {:>14} bytes",
        group(total_params * 4)
    );
    println!(
        "  conv state (f32, fixed) {:>14} bytes ({conv_layers} conv layers)",
        group(conv_state)
    );
    println!(
        "  KV cache (f32) @ {:<6} {:>14} bytes ({attn_layers} attention layers, {} bytes/token)",
        args.context,
        group(kv_bytes),
        group(kv_per_token)
    );
    if integer {
        // The integer path keeps its conv state and K/V as int16.
        println!(
            "  integer path (int16): conv state {} bytes, KV cache @ {} {} bytes",
            group(conv_state / 2),
            args.context,
            group(kv_bytes / 2)
        );
    }
    Ok(())
}

/// 1234567 -> "1,234,567".
fn group(n: usize) -> String {
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
