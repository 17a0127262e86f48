//! `autoneural npu`: what a model will do on an NPU (or this CPU) before anyone has the board,
//! from its config alone ([`autoneural::npu`]); `autoneural npu fit`: a profile's factors fitted
//! to published measurements, with the error on every row it was not fitted to.

use anyhow::{bail, Context, Result};
use autoneural::files::write_file;
use autoneural::models::presets;
use autoneural::npu::chart;
use autoneural::npu::fit::{self, MeasurementFile, Role};
use autoneural::npu::predict::{predict, Prediction, Scenario, Target};
use autoneural::npu::profile::Profile;
use autoneural::npu::scheme::NpuScheme;
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct NpuArgs {
    #[command(subcommand)]
    command: Option<NpuCommand>,
    #[command(flatten)]
    predict: PredictArgs,
}

#[derive(Subcommand, Debug)]
enum NpuCommand {
    /// Fit a profile's free factors to its measurement file and report every row.
    Fit(FitArgs),
}

#[derive(Args, Debug)]
pub struct PredictArgs {
    /// Any config the engine reads: AutoNeural, InternVL, LFM2 or Llama `config.json`, an
    /// InternVL vision config, a timm MobileNetV5 config.
    #[arg(long, conflicts_with_all = ["model", "preset"])]
    config: Option<PathBuf>,
    /// A model directory (its config.json).
    #[arg(long, conflicts_with = "preset")]
    model: Option<PathBuf>,
    /// A real architecture: autoneural-1.5b, internvl2-2b, lfm2-1.2b, lfm2-700m, lfm2-350m,
    /// internlm2-1.8b, or a vision encoder alone: mobilenetv5_300m_enc, internvit-300m.
    #[arg(long)]
    preset: Option<String>,
    /// Built-in profile (sa8295p, zen5-2c) or a profile .json file.
    #[arg(long, default_value = "sa8295p")]
    profile: String,
    /// default (vision/connector w8a16, text w4a16), a precision for every part (w8a8, w8a16,
    /// w4a16, w4f16, f16, float), or vision=P,connector=P,text=P.
    #[arg(long, default_value = "default")]
    scheme: String,
    /// Square image side (default: the model's own size).
    #[arg(long)]
    image_size: Option<usize>,
    /// Images in the prompt.
    #[arg(long, default_value_t = 1)]
    images: usize,
    /// Text tokens of the prompt (image tokens come on top).
    #[arg(long, default_value_t = 32)]
    prompt_tokens: usize,
    /// The (static maximum) context.
    #[arg(long, default_value_t = 4096, value_parser = super::context_arg)]
    context: usize,
    /// Prefill chunk of static-shape runtimes.
    #[arg(long, default_value_t = 128)]
    chunk: usize,
    /// Memory budget for weights + state + activations (bytes, or 2GiB, 512MiB, 8MB ...;
    /// default: the profile's).
    #[arg(long, value_parser = parse_bytes)]
    memory_budget: Option<u64>,
    /// On-chip budget one attention head's scores must fit (default: the profile's on-chip
    /// memory).
    #[arg(long, value_parser = parse_bytes)]
    onchip_budget: Option<u64>,
    /// Per-node detail (table rows, or `nodes` in the JSON).
    #[arg(long)]
    nodes: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct FitArgs {
    /// Built-in profile or a profile .json file.
    #[arg(long, default_value = "sa8295p")]
    profile: String,
    /// Measurement file (default: the one the profile names).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Write the profile with the fitted factors to this file.
    #[arg(long)]
    write: Option<PathBuf>,
    /// Write a predicted-vs-measured chart (SVG) to this file.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Replace existing --write / --svg files.
    #[arg(long)]
    force: bool,
    /// Only report the profile's factors as they are (no fit).
    #[arg(long)]
    no_fit: bool,
    #[arg(long)]
    json: bool,
}

/// `2GiB`, `512MiB`, `8MB`, `1500000`.
pub fn parse_bytes(s: &str) -> std::result::Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("`{s}`: expected a size such as 4096, 512MiB, 2GiB or 8MB"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        u => {
            return Err(format!(
                "`{s}`: unknown unit `{u}` (B, KB, MB, GB, KiB, MiB, GiB)"
            ))
        }
    };
    let v = num * mult;
    if !(1.0..1e18).contains(&v) {
        return Err(format!("`{s}`: a size must be at least 1 byte"));
    }
    Ok(v as u64)
}

pub fn npu(a: NpuArgs) -> Result<()> {
    match a.command {
        Some(NpuCommand::Fit(f)) => fit_cmd(f),
        None => predict_cmd(a.predict),
    }
}

fn load_target(a: &PredictArgs) -> Result<Target> {
    if let Some(name) = &a.preset {
        return Ok(fit::target(name)?);
    }
    let path = match (&a.config, &a.model) {
        (Some(c), _) => c.clone(),
        (None, Some(m)) => m.join("config.json"),
        (None, None) => bail!(
            "give --config CONFIG.json, --model DIR or --preset NAME (presets: {}, {})",
            presets::PRESETS.join(", "),
            presets::VISION_PRESETS.join(", ")
        ),
    };
    let text = autoneural::files::read_text(&path, 1 << 20)
        .with_context(|| format!("reading {}", path.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    Target::from_json(&json).with_context(|| format!("{}", path.display()))
}

fn predict_cmd(a: PredictArgs) -> Result<()> {
    let target = load_target(&a)?;
    let profile = Profile::load(&a.profile)?;
    let scheme = NpuScheme::parse(&a.scheme)?;
    let image_size = match (a.image_size, target.vision()) {
        (Some(0), _) => bail!("--image-size must be at least 1"),
        (Some(s), _) => s,
        (None, Some(v)) => v.image_size(),
        (None, None) => 0,
    };
    if image_size > autoneural::models::limits::IMAGE_SIZE {
        bail!(
            "--image-size {image_size} is larger than the largest image the engine builds ({})",
            autoneural::models::limits::IMAGE_SIZE
        );
    }
    let s = Scenario {
        image_size,
        images: a.images,
        prompt_tokens: a.prompt_tokens,
        context: a.context,
        chunk: a.chunk,
        memory_budget_bytes: a.memory_budget.unwrap_or(profile.memory_budget_bytes),
        onchip_budget_bytes: a.onchip_budget.unwrap_or(profile.onchip_bytes),
    };
    let p = predict(&target, &profile, &scheme, &s, a.nodes)?;
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&p)?)?;
    } else {
        print_prediction(&p, &profile, a.nodes)?;
    }
    Ok(())
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1} ms"))
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0))
}

fn print_prediction(p: &Prediction, profile: &Profile, nodes: bool) -> Result<()> {
    outln!("{} | scheme {}", profile.title, p.scheme)?;
    if let Some(size) = p.image_size {
        outln!(
            "vision encoder   {} at {size} px ({} image tokens); connector {}; per image {}",
            ms(p.encoder_ms),
            p.image_tokens,
            ms(p.connector_ms),
            ms(p.vision_ms)
        )?;
    }
    if let Some(prefill) = p.prefill_ms {
        outln!(
            "prefill          {} ({} call(s); {} prompt tokens + image tokens, context {})",
            ms(Some(prefill)),
            p.prefill_chunks.unwrap_or(1),
            p.prompt_tokens,
            p.context
        )?;
        outln!("time to first token {}", ms(p.ttft_ms))?;
        outln!(
            "decode           {:.1} tokens/s ({} per token at context {})",
            p.decode_tokens_per_s.unwrap_or(0.0),
            ms(p.decode_ms_per_token),
            p.context
        )?;
        outln!(
            "state            {} B per token (K/V) + {} B conv windows; {} at context {}",
            p.kv_bytes_per_token,
            p.state_window_bytes,
            mib(p.state_bytes_at_context),
            p.context
        )?;
    }
    outln!(
        "memory           weights {}, peak activations {}, peak {} (budget {})",
        mib(p.weight_bytes),
        mib(p.peak_activation_bytes),
        mib(p.peak_memory_bytes),
        mib(p.memory_budget_bytes)
    )?;
    if let Some(c) = p.max_context {
        outln!("longest context  {c} tokens within the memory budget")?;
    }
    if p.image_size.is_some() {
        outln!(
            "largest image    {} (one head's attention scores within {} on chip, encoder within the memory budget)",
            match p.max_image_size {
                Some(0) => "none".to_string(),
                Some(s) => format!("{s} px"),
                None => format!("no limit up to {} px", autoneural::models::limits::IMAGE_SIZE),
            },
            mib(p.onchip_budget_bytes)
        )?;
    }
    for part in &p.parts {
        outln!(
            "\n{}: {:.2} ms, {:.1} GMAC, {} DRAM traffic",
            part.part,
            part.ms,
            part.macs as f64 / 1e9,
            mib(part.dram_bytes)
        )?;
        for (cat, t) in &part.by_category {
            outln!(
                "  {cat:<16} {t:>10.3} ms {:>6.1} %",
                100.0 * t / part.ms.max(1e-12)
            )?;
        }
        if nodes {
            outln!(
                "  {:<56} {:>11} {:>9} {:>8} {:>12} {:>12}",
                "node",
                "category",
                "ms",
                "bound",
                "MACs",
                "DRAM bytes"
            )?;
            for n in &part.nodes {
                outln!(
                    "  {:<56} {:>11} {:>9.4} {:>8} {:>12} {:>12}",
                    n.name,
                    n.category,
                    n.ms,
                    n.bound,
                    n.macs,
                    n.dram_bytes
                )?;
            }
        }
    }
    Ok(())
}

fn fit_cmd(a: FitArgs) -> Result<()> {
    let profile = Profile::load(&a.profile)?;
    let data = match &a.data {
        Some(path) => MeasurementFile::parse(&autoneural::files::read_text(path, 1 << 22)?)?,
        None => MeasurementFile::for_profile(&profile)?,
    };
    for out in [&a.write, &a.svg].into_iter().flatten() {
        if out.exists() && !a.force {
            bail!(
                "{} already exists; pass --force to replace it",
                out.display()
            );
        }
    }
    let rows = fit::prepare(&data, &profile)?;
    let (fitted, report) = if a.no_fit {
        let r = fit::evaluate(&profile, &rows, Vec::new())?;
        (profile.clone(), r)
    } else {
        fit::fit(&profile, &rows)?
    };
    if let Some(path) = &a.write {
        let mut json = serde_json::to_string_pretty(&fitted)?;
        json.push('\n');
        write_file(path, json.as_bytes(), &[], a.force)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &a.svg {
        let points = report.chart_points();
        let svg = chart::predicted_vs_published(
            &points,
            &format!("{}: predicted vs measured latency", fitted.title),
        );
        write_file(path, svg.as_bytes(), &[], a.force)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&report)?)?;
        return Ok(());
    }
    outln!("{} ({} rows)", fitted.title, report.rows.len())?;
    for (family, f) in &report.factors {
        outln!(
            "factors [{family}]: conv {:.3}, linear {:.3}, attention {:.3} (spilled {:.3}), vector {:.3}, bandwidth {:.3}, graph overhead {:.3} ms, node overhead {:.2} us",
            f.conv_efficiency,
            f.linear_efficiency,
            f.attention_efficiency,
            f.spilled_attention_efficiency,
            f.vector_efficiency,
            f.bandwidth_efficiency,
            f.graph_overhead_s * 1e3,
            f.node_overhead_s * 1e6
        )?;
    }
    if !report.unconstrained.is_empty() {
        outln!(
            "not constrained by the fit rows: {}",
            report.unconstrained.join(", ")
        )?;
    }
    outln!(
        "\n{:<46} {:>8} {:>12} {:>12} {:>8}",
        "row",
        "role",
        "measured ms",
        "predicted ms",
        "ratio"
    )?;
    for r in &report.rows {
        outln!(
            "{:<46} {:>8} {:>12.3} {:>12.3} {:>8.2}",
            r.label,
            match r.role {
                Role::Fit => "fit",
                Role::HoldOut => "hold-out",
            },
            r.measured_ms,
            r.predicted_ms,
            r.ratio
        )?;
    }
    outln!(
        "\nmean error (geometric): fit rows {:.1} %, hold-out rows {:.1} %",
        report.fit_error_pct,
        report.hold_out_error_pct
    )?;
    Ok(())
}
