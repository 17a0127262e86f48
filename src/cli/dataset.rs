//! `autoneural dataset`: procedurally rendered VQA sets (`cockpit`) and their validation.

use anyhow::Result;
use autoneural::dataset::{self, GenerateOptions};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct DatasetArgs {
    #[command(subcommand)]
    command: DatasetCommand,
}

#[derive(Subcommand, Debug)]
enum DatasetCommand {
    /// Render the synthetic in-car VQA set: instrument clusters (warning lights, speed), top-down
    /// cabins (passengers, phone, child seat, seatbelts) and road scenes (traffic lights, signs).
    Cockpit(CockpitArgs),
    /// Check a dataset directory: JSONL lines parse, images exist and decode, answers are
    /// non-empty, no image is in two splits.
    Validate(ValidateArgs),
}

#[derive(Args, Debug)]
struct CockpitArgs {
    /// Number of images (each gets 2-4 questions).
    #[arg(long)]
    count: usize,
    /// Random seed; the same arguments give byte-identical files.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output directory (new or empty; see --force).
    #[arg(long)]
    out: PathBuf,
    /// Image side in pixels (64..=2048).
    #[arg(long, default_value_t = 256)]
    size: u32,
    /// Replace what autoneural wrote earlier in a non-empty --out (files it did not write are
    /// never touched).
    #[arg(long)]
    force: bool,
}

#[derive(Args, Debug)]
struct ValidateArgs {
    /// Dataset directory.
    #[arg(long)]
    dir: PathBuf,
    /// Also print the answer distribution of every question type.
    #[arg(long)]
    answers: bool,
    /// Print the summary as JSON.
    #[arg(long, conflicts_with = "answers")]
    json: bool,
}

pub fn dataset(args: DatasetArgs) -> Result<()> {
    match args.command {
        DatasetCommand::Cockpit(a) => cockpit(a),
        DatasetCommand::Validate(a) => validate(a),
    }
}

fn cockpit(a: CockpitArgs) -> Result<()> {
    let opts = GenerateOptions {
        count: a.count,
        seed: a.seed,
        size: a.size,
        force: a.force,
    };
    let bar = ProgressBar::new(a.count as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} images {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let start = Instant::now();
    let summary = dataset::generate_cockpit_with_progress(&a.out, &opts, &|| bar.inc(1));
    bar.finish_and_clear();
    let summary = summary?;
    let splits = |m: &std::collections::BTreeMap<String, usize>| {
        dataset::SPLITS
            .iter()
            .map(|s| m.get(*s).copied().unwrap_or(0).to_string())
            .collect::<Vec<_>>()
            .join("/")
    };
    outln!(
        "wrote {} images ({} train/validation/test), {} questions of {} types to {} in {:.1}s",
        summary.total_images(),
        splits(&summary.images),
        summary.total_questions(),
        summary.answers.len(),
        a.out.display(),
        start.elapsed().as_secs_f64()
    )?;
    Ok(())
}

fn validate(a: ValidateArgs) -> Result<()> {
    let summary = dataset::validate(&a.dir)?;
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&summary)?)?;
        return Ok(());
    }
    outln!(
        "ok: {} images, {} questions, {} types in {}",
        summary.total_images(),
        summary.total_questions(),
        summary.answers.len(),
        a.dir.display()
    )?;
    if a.answers {
        for (kind, counts) in &summary.answers {
            let total: usize = counts.values().sum();
            let mut by_count: Vec<_> = counts.iter().collect();
            by_count.sort_by(|x, y| y.1.cmp(x.1).then(x.0.cmp(y.0)));
            let shown: Vec<String> = by_count
                .iter()
                .take(8)
                .map(|(ans, n)| format!("{ans:?} {n}"))
                .collect();
            let more = by_count.len().saturating_sub(8);
            let tail = if more > 0 {
                format!(", … {more} more")
            } else {
                String::new()
            };
            outln!(
                "  {kind:<16} {total:>5} q, majority {:>5.1}%: {}{tail}",
                100.0 * summary.majority_baseline(kind).unwrap_or(0.0),
                shown.join(", ")
            )?;
        }
    }
    Ok(())
}
