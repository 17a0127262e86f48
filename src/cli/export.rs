//! `autoneural export onnx`: ONNX files of a quantized (QDQ) or float model directory.

use anyhow::{Context, Result};
use autoneural::export::onnx::{export_onnx, ExportOptions, StaticShapes};
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ExportArgs {
    #[command(subcommand)]
    format: Format,
}

#[derive(Subcommand, Debug)]
enum Format {
    /// ONNX (opset 21): one file per part (vision_encoder, connector, embed_tokens,
    /// language_model) and export.json. A quantized directory exports in QDQ form (its edge
    /// quantization and integer weights); a float model directory exports float ops.
    Onnx(OnnxArgs),
}

#[derive(Args, Debug)]
struct OnnxArgs {
    /// A quantized directory (`autoneural quantize`) or a float model directory.
    #[arg(long)]
    model: PathBuf,
    /// Output directory (new or empty; see --force).
    #[arg(long)]
    out: PathBuf,
    /// Fixed shapes for NPU runtimes: the language model as a prefill graph of
    /// --prefill-chunk rows and a one-row decode graph over --context-row K/V buffers.
    #[arg(long = "static")]
    static_shapes: bool,
    /// Rows per prefill call with --static.
    #[arg(long, default_value_t = 128, requires = "static_shapes")]
    prefill_chunk: usize,
    /// K/V buffer rows (the longest sequence) with --static.
    #[arg(long, default_value_t = 4096, requires = "static_shapes")]
    context: usize,
    /// Replace what autoneural wrote earlier in a non-empty --out (files it did not write are
    /// never touched).
    #[arg(long)]
    force: bool,
}

pub fn export(args: ExportArgs) -> Result<()> {
    let Format::Onnx(a) = args.format;
    let model = super::resolve_model_dir(&a.model)?;
    let opts = ExportOptions {
        static_shapes: a.static_shapes.then_some(StaticShapes {
            prefill_chunk: a.prefill_chunk,
            context: a.context,
        }),
        force: a.force,
    };
    let (manifest, dest) = export_onnx(&model, &a.out, &opts)
        .with_context(|| format!("exporting {} to ONNX", model.display()))?;
    for p in &manifest.parts {
        outln!("{}", dest.join(&p.file).display())?;
    }
    outln!("{}", dest.join("export.json").display())?;
    Ok(())
}
