//! `autoneural report`: quantization error of an integer model against its float model, per op
//! and end to end, with an SVG chart of SQNR by layer.

use anyhow::{Context, Result};
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
    /// Where to write the SVG chart of SQNR by layer.
    #[arg(long, default_value = "quant_report.svg")]
    svg: PathBuf,
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
    std::fs::write(
        &args.svg,
        svg_chart(
            &r,
            &format!(
                "SQNR by op: {} ({})",
                args.quantized.display(),
                quant.scheme
            ),
        ),
    )
    .with_context(|| format!("writing {}", args.svg.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!(
        "scheme {} | {} image(s), {} prompt(s)",
        quant.scheme,
        pixels.len(),
        prompts.len()
    );
    println!("{:<60} {:>9} {:>10}", "op", "SQNR dB", "rel RMS %");
    let mut ops: Vec<_> = r.ops.iter().collect();
    ops.sort_by_key(|(_, s)| s.order);
    for (name, s) in &ops {
        println!(
            "{name:<60} {:>9.2} {:>10.3}",
            s.sqnr_db(),
            100.0 * s.relative_rms()
        );
    }
    println!("\nworst {}:", args.worst);
    for (name, s) in r.worst(args.worst) {
        println!("  {name:<58} {:>9.2} dB", s.sqnr_db());
    }
    println!("\nheadline:");
    for (label, key) in [
        ("vision features (msfa.norm)", "vision:msfa.norm"),
        (
            "image embeddings (connector)",
            "vision:multi_modal_projector.linear_2",
        ),
        ("LM logits", "text:lm_head"),
    ] {
        if let Some(s) = r.get(key) {
            println!(
                "  {label:<30} SQNR {:>7.2} dB   relative RMS {:.3} %",
                s.sqnr_db(),
                100.0 * s.relative_rms()
            );
        }
    }
    if r.predicted_tokens > 0 {
        let (pf, pq) = (r.perplexity_float(), r.perplexity_integer());
        println!(
            "  prompt perplexity              float {pf:.3}  integer {pq:.3}  ({:+.2} %, {} tokens)",
            100.0 * (pq / pf - 1.0),
            r.predicted_tokens
        );
    }
    println!("chart: {}", args.svg.display());
    Ok(())
}
