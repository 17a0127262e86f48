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
    #[arg(long, required_unless_present = "preset", conflicts_with = "preset")]
    model: Option<PathBuf>,
    /// Export a real architecture (`autoneural-1.5b`, `internvl2-2b`, ...) with random weights
    /// instead, quantized in memory with --scheme (calibrated on one synthetic request): the
    /// full-size graphs for toolchain trials.
    #[arg(long)]
    preset: Option<String>,
    /// With --preset: the precision scheme (`default`, `w8a8`, ...), or `float`.
    #[arg(long, default_value = "default", requires = "preset")]
    scheme: String,
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
    let opts = ExportOptions {
        static_shapes: a.static_shapes.then_some(StaticShapes {
            prefill_chunk: a.prefill_chunk,
            context: a.context,
        }),
        force: a.force,
    };
    let (manifest, dest) = match (&a.model, &a.preset) {
        (Some(model), _) => {
            let model = super::resolve_model_dir(model)?;
            export_onnx(&model, &a.out, &opts)
                .with_context(|| format!("exporting {} to ONNX", model.display()))?
        }
        (None, Some(name)) => export_preset(name, &a.scheme, &a.out, &opts)
            .with_context(|| format!("exporting the {name} preset to ONNX"))?,
        (None, None) => unreachable!("clap requires --model or --preset"),
    };
    for p in &manifest.parts {
        outln!("{}", dest.join(&p.file).display())?;
    }
    outln!("{}", dest.join("export.json").display())?;
    Ok(())
}

/// A real architecture with random weights, quantized in memory on one synthetic request.
fn export_preset(
    name: &str,
    scheme: &str,
    out: &std::path::Path,
    opts: &ExportOptions,
) -> Result<(autoneural::export::onnx::Manifest, PathBuf)> {
    use autoneural::engine::observe_request;
    use autoneural::export::onnx::{export_float, export_quantized, FloatParts, QuantParts};
    use autoneural::models::autoneural::AutoNeuralModel;
    use autoneural::quant::calibrate::{CalibrationObserver, Rounding, DEFAULT_BINS};
    use autoneural::quant::int_model::IntModel;
    use autoneural::quant::scheme::Scheme;
    use rand::{Rng, SeedableRng};

    let cfg = autoneural::models::presets::preset_config(name)?;
    let pb = indicatif::ProgressBar::new_spinner();
    pb.enable_steady_tick(std::time::Duration::from_millis(200));
    pb.set_message(format!("{name}: random weights of the real shapes"));
    let model = AutoNeuralModel::random(cfg, 1)?;
    if scheme == "float" {
        pb.set_message("writing the float ONNX files");
        let r = export_float(&model, &[], out, opts)?;
        pb.finish_and_clear();
        return Ok(r);
    }
    let scheme = Scheme::parse(scheme)?;
    pb.set_message("calibrating on one synthetic request");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut pixels = Vec::new();
    let mut ids: Vec<u32> = Vec::new();
    let vocab = model.config.text.vocab_size() as u32;
    let image_token = model.config.image_token_id;
    let mut text = |n: usize, ids: &mut Vec<u32>| {
        for _ in 0..n {
            let t = rng.random_range(0..vocab);
            ids.push(if t == image_token { (t + 1) % vocab } else { t });
        }
    };
    text(16, &mut ids);
    if let Some(v) = &model.vision {
        let s = v.config.image_size();
        let mut r2 = rand_chacha::ChaCha8Rng::seed_from_u64(8);
        let data: Vec<f32> = (0..3 * s * s).map(|_| r2.random_range(0.0..1.0)).collect();
        pixels.push(autoneural::Tensor::new(&[3, s, s], data)?);
        let n = model.tokens_per_image();
        ids.extend(std::iter::repeat_n(image_token, n));
    }
    text(16, &mut ids);
    // Round to nearest: GPTQ needs each weight's input Gram matrix, which for the real encoder's
    // 3x3 convolutions (thousands of im2col rows) costs tens of minutes and gigabytes, and buys
    // nothing for random weights; the export's ops, shapes and QDQ are the same either way.
    let mut obs = CalibrationObserver::new(DEFAULT_BINS)?.with_rounding(Rounding::Nearest);
    observe_request(&model, &pixels, &ids, &[], 4, &mut obs)?;
    pb.set_message("lowering to the integer graph");
    let q = IntModel::build(&model, &obs.into_stats(), &scheme, None)?;
    pb.set_message("writing the QDQ ONNX files");
    let r = export_quantized(
        &model.config,
        FloatParts::of(&model),
        &QuantParts::of(&q),
        &[],
        out,
        opts,
    )?;
    pb.finish_and_clear();
    Ok(r)
}
