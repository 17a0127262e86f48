//! `autoneural quantize`: calibrate the float model on a calibration set, build the integer
//! model for a scheme, and write a self-contained quantized directory.

use anyhow::{Context, Result};
use autoneural::files::OutputDir;
use autoneural::pipeline::Pipeline;
use autoneural::quant::calibrate::{
    calibrate, CalibrationOptions, RangeMethod, Rounding, DEFAULT_BINS,
};
use autoneural::quant::calibset::read_calibration_set;
use autoneural::quant::int_model::IntModel;
use autoneural::quant::scheme::{Part, Scheme};
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// Float model directory.
    #[arg(long, default_value = super::DEFAULT_MODEL)]
    model: PathBuf,
    /// Calibration set: a directory of images (+ optional prompts.txt) or a .jsonl of
    /// {"image": ..., "prompt": ...} lines.
    #[arg(long)]
    calibration: PathBuf,
    /// Precision scheme, e.g. `default` (vision=w8a16,text=w4a16), `w8a8`,
    /// `vision=w8a16,connector=w8a16,text=w4a16,group=64`.
    #[arg(long, default_value = "default")]
    scheme: String,
    /// JSON file of per-layer overrides: {"overrides": [{"pattern": "layers.3.*", "precision": "w8a16"}]}.
    #[arg(long)]
    overrides: Option<PathBuf>,
    /// Activation range method: minmax, mse, percentile[:P] (default: min-max for 16-bit, MSE for 8-bit).
    #[arg(long)]
    range: Option<String>,
    /// Weight rounding: `gptq` (default: vision and connector weights re-rounded against their
    /// calibration inputs, kept per layer only where that lowers the output error there; language
    /// weights to nearest), `gptq-all` (the language model's too) or `nearest`.
    #[arg(long, default_value = "gptq")]
    rounding: String,
    /// Output directory for the quantized model (new or empty; see --force).
    #[arg(long)]
    out: PathBuf,
    /// Replace what autoneural wrote earlier in a non-empty --out (files it did not write are
    /// never touched).
    #[arg(long)]
    force: bool,
}

pub fn quantize(args: QuantizeArgs) -> Result<()> {
    let dir = super::resolve_model_dir(&args.model)?;
    let mut scheme = Scheme::parse(&args.scheme)?;
    if let Some(path) = &args.overrides {
        scheme = scheme.with_overrides_file(path)?;
    }
    let method = args.range.as_deref().map(RangeMethod::parse).transpose()?;
    let rounding: Rounding = args.rounding.parse()?;
    let mut inputs = vec![dir.as_path(), args.calibration.as_path()];
    inputs.extend(args.overrides.as_deref());
    // Checked before the (long) calibration, written into a temporary sibling, moved into place
    // only when complete.
    let out = OutputDir::begin(&args.out, "quantize", &inputs, args.force)?;
    let samples = read_calibration_set(&args.calibration)?;
    let pipe = Pipeline::load(&dir).with_context(|| format!("loading model {}", dir.display()))?;
    let stats = calibrate(
        &pipe,
        &samples,
        &CalibrationOptions {
            bins: DEFAULT_BINS,
            progress: true,
            system: None,
            rounding,
        },
    )?;
    let q = IntModel::build(&pipe.model, &stats, &scheme, method)?;
    let written = q.save(out.path(), &dir)?;
    stats
        .save(&out.path().join("calibration.json"))
        .context("writing calibration.json")?;
    out.commit()?;

    // Theoretical size: every weight at its part's bit width.
    let (pv, pc, pt) = pipe.model.param_counts();
    let bits = |p: Part| scheme.part(p).weight_bits().unwrap_or(32) as usize;
    let theoretical =
        (pv * bits(Part::Vision) + pc * bits(Part::Connector) + pt * bits(Part::Text)) / 8;
    outln!(
        "quantized {} with scheme {scheme}, {} rounding ({} calibration samples)",
        dir.display(),
        rounding,
        samples.len()
    )?;
    outln!("wrote {}", args.out.display())?;
    outln!(
        "integer weights and tables: {written} bytes on disk; theoretical bits x params: {theoretical} bytes ({:.2}x)",
        written as f64 / theoretical.max(1) as f64
    )?;
    Ok(())
}
