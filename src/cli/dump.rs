//! `autoneural dump`: write the pipeline's intermediate tensors as float32 .npy files, for
//! comparison against PyTorch.

use super::InputArgs;
use anyhow::{Context, Result};
use autoneural::engine::Engine;
use autoneural::files::OutputDir;
use autoneural::npy::write_f32;
use autoneural::Tensor;
use clap::Args;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct DumpArgs {
    #[command(flatten)]
    input: InputArgs,
    /// Output directory (new or empty; see --force).
    #[arg(long)]
    out: PathBuf,
    /// Also write every node's output (the last image's, and the prompt's) as
    /// `nodes/<node name>.npy` (dequantized on the integer path), e.g. to find where an exported
    /// or reference model departs.
    #[arg(long)]
    nodes: bool,
    /// Replace what autoneural wrote earlier in a non-empty --out (files it did not write are
    /// never touched).
    #[arg(long)]
    force: bool,
}

pub fn dump(args: DumpArgs) -> Result<()> {
    let dir = args.input.model_dir()?;
    let engine = Engine::load(&dir).with_context(|| format!("loading model {}", dir.display()))?;
    let mut inputs = vec![dir.as_path()];
    inputs.extend(args.input.images.iter().map(PathBuf::as_path));
    inputs.extend(args.input.pixels.iter().map(PathBuf::as_path));
    let out = OutputDir::begin(&args.out, "dump", &inputs, args.force)?;

    let pixels = engine.load_pixels(&args.input.image_inputs())?;
    let prompt_ids = engine.prompt_ids(&args.input.prompt_input(), pixels.len())?;
    let engine = args.input.apply_precision(engine, &pixels, &prompt_ids)?;
    let context = engine.config().text.max_position_embeddings();
    if prompt_ids.len() > context {
        anyhow::bail!(autoneural::Error::ContextOverflow {
            tokens: prompt_ids.len(),
            max_new: 0,
            context
        });
    }
    // On the integer path these are the dequantized views of the integer tensors.
    let mut rec = autoneural::observe::Recorder::new(|_: &str| args.nodes);
    let t = engine.intermediates_observed(&pixels, &prompt_ids, &mut rec)?;
    if args.nodes {
        let dir = out.path().join("nodes");
        std::fs::create_dir_all(&dir).context("creating nodes/")?;
        for (name, t) in &rec.tensors {
            write_f32(&dir.join(format!("{name}.npy")), t)
                .with_context(|| format!("writing node {name}"))?;
        }
    }
    let mut written = Vec::new();
    if !pixels.is_empty() {
        write(out.path(), "pixels.npy", &stack(&pixels)?, &mut written)?;
        write(
            out.path(),
            "vision_features.npy",
            &concat_rows(&t.features)?,
            &mut written,
        )?;
        write(
            out.path(),
            "image_embeddings.npy",
            &concat_rows(&t.embeddings)?,
            &mut written,
        )?;
    }
    write(out.path(), "logits.npy", &t.logits, &mut written)?;
    std::fs::write(
        out.path().join("prompt_ids.json"),
        serde_json::to_string(&prompt_ids)?,
    )
    .context("writing prompt_ids.json")?;
    let dest = out.commit()?;
    for w in written {
        outln!("{}", dest.join(w).display())?;
    }
    Ok(())
}

fn write(
    dir: &Path,
    name: &'static str,
    t: &Tensor,
    written: &mut Vec<&'static str>,
) -> Result<()> {
    write_f32(&dir.join(name), t)?;
    written.push(name);
    Ok(())
}

/// One image: `[3, H, W]`; several of the same size: `[N, 3, H, W]`.
fn stack(ts: &[Tensor]) -> Result<Tensor> {
    if ts.len() == 1 {
        return Ok(ts[0].clone());
    }
    let shape = ts[0].shape().to_vec();
    if ts.iter().any(|t| t.shape() != shape.as_slice()) {
        anyhow::bail!(
            "pixels.npy needs all images at one size; got {:?}",
            ts.iter().map(|t| t.shape().to_vec()).collect::<Vec<_>>()
        );
    }
    let mut full = vec![ts.len()];
    full.extend(&shape);
    Ok(Tensor::new(
        &full,
        ts.iter().flat_map(|t| t.data().iter().copied()).collect(),
    )?)
}

/// Concatenates `[n_i, d]` tensors along rows.
fn concat_rows(ts: &[Tensor]) -> Result<Tensor> {
    let d = ts[0].dim(1);
    let rows: usize = ts.iter().map(|t| t.dim(0)).sum();
    Ok(Tensor::new(
        &[rows, d],
        ts.iter().flat_map(|t| t.data().iter().copied()).collect(),
    )?)
}
