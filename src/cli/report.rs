//! `autoneural report`: quantization error of an integer model against its float model, per op
//! and end to end, with an SVG chart of SQNR by layer.

use anyhow::{Context, Result};
use autoneural::files::write_file;
use autoneural::pipeline::{ImageInput, Pipeline, PromptInput};
use autoneural::quant::int_model::IntModel;
use autoneural::quant::report::{analyse, svg_chart};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Float model directory.
    #[arg(long, default_value = super::DEFAULT_MODEL)]
    model: PathBuf,
    /// Quantized model directory (from `autoneural quantize`).
    #[arg(long)]
    quantized: PathBuf,
    /// Image files to compare the vision side on.
    #[arg(long = "images", num_args = 1.., value_name = "PATH")]
    images: Vec<PathBuf>,
    /// Prompts (chat text) to compare the language model and perplexity on.
    #[arg(long = "prompts", num_args = 1.., value_name = "TEXT")]
    prompts: Vec<String>,
    /// Also write an SVG chart of SQNR by layer to this file.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Replace an existing --svg file.
    #[arg(long)]
    force: bool,
    /// How many of the worst ops to list.
    #[arg(long, default_value_t = 10)]
    worst: usize,
    /// Print the whole report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn report(args: ReportArgs) -> Result<()> {
    if args.images.is_empty() && args.prompts.is_empty() {
        anyhow::bail!("give at least one --images or --prompts input to compare on");
    }
    let dir = super::resolve_model_dir(&args.model)?;
    let mut read = vec![dir.as_path(), args.quantized.as_path()];
    read.extend(args.images.iter().map(PathBuf::as_path));
    if let Some(svg) = &args.svg {
        // Refused before the analysis runs, not after.
        autoneural::files::check_not_input(svg, &read)?;
        if svg.exists() && !args.force {
            anyhow::bail!(
                "{} already exists; pass --force to replace it",
                svg.display()
            );
        }
    }
    let pipe = Pipeline::load(&dir).with_context(|| format!("loading model {}", dir.display()))?;
    let (quant, _) = IntModel::load(&args.quantized)
        .with_context(|| format!("loading quantized model {}", args.quantized.display()))?;
    let inputs: Vec<ImageInput> = args.images.iter().cloned().map(ImageInput::File).collect();
    let pixels = pipe.load_pixels(&inputs)?;
    let prompts = args
        .prompts
        .iter()
        .map(|p| {
            pipe.prompt_ids(
                &PromptInput::Chat {
                    user: p.clone(),
                    system: None,
                },
                0,
            )
        })
        .collect::<autoneural::Result<Vec<_>>>()?;
    let r = analyse(&pipe.model, &quant, &pixels, &prompts)?;
    if let Some(svg) = &args.svg {
        let chart = svg_chart(
            &r,
            &format!(
                "SQNR by op: {} ({})",
                args.quantized.display(),
                quant.scheme
            ),
        );
        write_file(svg, chart.as_bytes(), &read, args.force)
            .with_context(|| format!("writing the chart {}", svg.display()))?;
    }
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&r)?)?;
        return Ok(());
    }
    outln!(
        "scheme {} | {} image(s), {} prompt(s)",
        quant.scheme,
        pixels.len(),
        prompts.len()
    )?;
    outln!("{:<60} {:>9} {:>10}", "op", "SQNR dB", "rel RMS %")?;
    let mut ops: Vec<_> = r.ops.iter().collect();
    ops.sort_by_key(|(_, s)| s.order);
    for (name, s) in &ops {
        outln!(
            "{name:<60} {:>9.2} {:>10.3}",
            s.sqnr_db(),
            100.0 * s.relative_rms()
        )?;
    }
    outln!("\nworst {}:", args.worst)?;
    for (name, s) in r.worst(args.worst) {
        outln!("  {name:<58} {:>9.2} dB", s.sqnr_db())?;
    }
    outln!("\nheadline:")?;
    for (label, key) in [
        ("vision features (msfa.norm)", "vision:msfa.norm"),
        (
            "image embeddings (connector)",
            "vision:multi_modal_projector.linear_2",
        ),
        ("LM logits", "text:lm_head"),
    ] {
        if let Some(s) = r.get(key) {
            outln!(
                "  {label:<30} SQNR {:>7.2} dB   relative RMS {:.3} %",
                s.sqnr_db(),
                100.0 * s.relative_rms()
            )?;
        }
    }
    if r.predicted_tokens > 0 {
        let (pf, pq) = (r.perplexity_float(), r.perplexity_integer());
        outln!(
            "  prompt perplexity              float {pf:.3}  integer {pq:.3}  ({:+.2} %, {} tokens)",
            100.0 * (pq / pf - 1.0),
            r.predicted_tokens
        )?;
    }
    if let Some(svg) = &args.svg {
        outln!("chart: {}", svg.display())?;
    }
    Ok(())
}
