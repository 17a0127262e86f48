//! `autoneural eval`: exact-match accuracy per question type on a dataset split, for the float
//! model and integer schemes side by side, against the majority-answer baseline.

use anyhow::{bail, Context, Result};
use autoneural::artifact::is_quantized_dir;
use autoneural::dataset::{self, Record};
use autoneural::engine::{Engine, IntegerPipeline};
use autoneural::eval::{self, EvalOptions, Outcome, Scores};
use autoneural::pipeline::Pipeline;
use autoneural::quant::calibrate::{
    calibrate, CalibrationOptions, CalibrationStats, Rounding, DEFAULT_BINS,
};
use autoneural::quant::calibset::{read_calibration_set, CalibrationSample};
use autoneural::quant::int_model::IntModel;
use autoneural::quant::scheme::Scheme;
use clap::Args;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What `eval` runs when no `--precision` is given: float, the paper's scheme and full int8.
const DEFAULT_PRECISIONS: [&str; 3] = ["float", "default", "w8a8"];

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Model directory: a float model (evaluated at each --precision) or a quantized one.
    #[arg(long, default_value = super::DEFAULT_MODEL)]
    model: PathBuf,
    /// Dataset directory written by `autoneural dataset cockpit` (or in the same layout).
    #[arg(long)]
    dataset: PathBuf,
    /// Split to evaluate on: test, validation or train.
    #[arg(long, default_value = "test")]
    split: String,
    /// `float` or an integer scheme (`default` = vision w8a16 + text w4a16, `w8a8`, `w8a16`,
    /// `w4a16`, `w16a16`, `vision=...,text=...`). Repeat for several; default: float, default,
    /// w8a8. Not allowed with a quantized model directory.
    #[arg(long = "precision", value_name = "P")]
    precisions: Vec<String>,
    /// Calibration set for the integer schemes (see `quantize --calibration`); default: the
    /// first --calibration-images images of the dataset's train split, with their questions.
    #[arg(long)]
    calibration: Option<PathBuf>,
    /// Weight rounding of the integer schemes (see `quantize --rounding`): gptq, gptq-all, nearest.
    #[arg(long, default_value = "gptq")]
    rounding: String,
    /// Train-split images to calibrate on when --calibration is not given.
    #[arg(long, default_value_t = 32)]
    calibration_images: usize,
    /// Evaluate only the first N questions of the split.
    #[arg(long)]
    limit: Option<usize>,
    /// Generation budget per answer.
    #[arg(long, default_value_t = 32)]
    max_new_tokens: usize,
    /// Print up to N wrong answers per precision.
    #[arg(long, default_value_t = 0)]
    show_errors: usize,
    /// Print one JSON object (accuracy, majority_baseline, per_type) instead of the table.
    #[arg(long)]
    json: bool,
}

struct Run {
    precision: String,
    scores: Scores,
    outcomes: Vec<Outcome>,
    seconds: f64,
}

pub fn eval(args: EvalArgs) -> Result<()> {
    let rounding: Rounding = args.rounding.parse()?;
    let dir = super::resolve_model_dir(&args.model)?;
    if args.limit == Some(0) {
        bail!("--limit must be at least 1");
    }
    if args.max_new_tokens == 0 {
        bail!("--max-new-tokens must be at least 1");
    }
    let mut questions = dataset::read_split(&args.dataset, &args.split).with_context(|| {
        format!(
            "reading the {} split of {}",
            args.split,
            args.dataset.display()
        )
    })?;
    if let Some(n) = args.limit {
        questions.truncate(n);
    }
    let train = dataset::read_split(&args.dataset, "train").with_context(|| {
        format!(
            "reading the train split of {} (for the majority baseline)",
            args.dataset.display()
        )
    })?;
    let majority = eval::majority_answers(&train);
    let baseline = eval::majority_scores(&majority, &questions);
    let opts = EvalOptions {
        max_new_tokens: args.max_new_tokens,
        progress: !args.json,
    };

    let mut runs = Vec::new();
    if is_quantized_dir(&dir) {
        if !args.precisions.is_empty() {
            bail!(
                "{} is already quantized; --precision applies to float model directories",
                dir.display()
            );
        }
        let engine =
            Engine::load(&dir).with_context(|| format!("loading model {}", dir.display()))?;
        let label = match &engine {
            Engine::Integer(q) => q.model.scheme.to_string(),
            Engine::Float(_) => "float".to_string(),
        };
        runs.push(run_one(&engine, &label, &args.dataset, &questions, &opts)?);
    } else {
        let precisions: Vec<String> = if args.precisions.is_empty() {
            DEFAULT_PRECISIONS.iter().map(|s| s.to_string()).collect()
        } else {
            args.precisions.clone()
        };
        // Parse every scheme before the (long) evaluation starts.
        let schemes: Vec<Option<Scheme>> = precisions
            .iter()
            .map(|p| {
                if p == "float" {
                    Ok(None)
                } else {
                    Scheme::parse(p)
                        .map(Some)
                        .with_context(|| format!("--precision {p}"))
                }
            })
            .collect::<Result<_>>()?;
        let pipe =
            Pipeline::load(&dir).with_context(|| format!("loading model {}", dir.display()))?;
        let float = Engine::Float(Box::new(pipe));
        let Engine::Float(pipe) = &float else {
            unreachable!("built as a float engine")
        };
        let mut stats: Option<CalibrationStats> = None;
        for (p, scheme) in precisions.iter().zip(&schemes) {
            let integer;
            let engine = match scheme {
                None => &float,
                Some(scheme) => {
                    if stats.is_none() {
                        let samples = calibration_samples(&args, &train)?;
                        let calibrated = calibrate(
                            pipe,
                            &samples,
                            &CalibrationOptions {
                                bins: DEFAULT_BINS,
                                progress: !args.json,
                                system: None,
                                rounding,
                            },
                        )?;
                        stats = Some(calibrated);
                    }
                    let stats = stats.as_ref().expect("calibrated above");
                    let model = IntModel::build(&pipe.model, stats, scheme, None)
                        .with_context(|| format!("quantizing for --precision {p}"))?;
                    integer = Engine::Integer(Box::new(IntegerPipeline {
                        model,
                        config: pipe.model.config.clone(),
                        tokenizer: pipe.tokenizer.clone(),
                        template: pipe.template.clone(),
                    }));
                    &integer
                }
            };
            runs.push(run_one(engine, p, &args.dataset, &questions, &opts)?);
        }
    }

    let agreement = agreement_with_float(&runs)?;
    if args.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&to_json(
                &args, &dir, &questions, &majority, &baseline, &runs, &agreement
            ))?
        )?;
    } else {
        print_table(&args, &dir, &questions, &baseline, &runs, &agreement)?;
    }
    Ok(())
}

fn calibration_samples(args: &EvalArgs, train: &[Record]) -> Result<Vec<CalibrationSample>> {
    if let Some(path) = &args.calibration {
        return Ok(read_calibration_set(path)?);
    }
    if args.calibration_images == 0 {
        bail!("--calibration-images must be at least 1");
    }
    let mut samples = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    for r in train {
        if !seen.contains(&r.image.as_str()) {
            if seen.len() == args.calibration_images {
                break;
            }
            seen.push(&r.image);
        }
        samples.push(CalibrationSample {
            image: Some(args.dataset.join(&r.image)),
            prompt: r.question.clone(),
        });
    }
    Ok(samples)
}

fn run_one(
    engine: &Engine,
    precision: &str,
    dataset_dir: &Path,
    questions: &[Record],
    opts: &EvalOptions,
) -> Result<Run> {
    let t = Instant::now();
    let outcomes = eval::evaluate(engine, dataset_dir, questions, opts)
        .with_context(|| format!("evaluating at precision {precision}"))?;
    Ok(Run {
        precision: precision.to_string(),
        scores: Scores::from_outcomes(&outcomes),
        outcomes,
        seconds: t.elapsed().as_secs_f64(),
    })
}

fn to_json(
    args: &EvalArgs,
    dir: &Path,
    questions: &[Record],
    majority: &BTreeMap<String, String>,
    baseline: &Scores,
    runs: &[Run],
    agreement: &[(String, eval::Tally)],
) -> Value {
    let mut accuracy = Map::new();
    let mut seconds = Map::new();
    for r in runs {
        accuracy.insert(r.precision.clone(), json!(r.scores.overall().accuracy()));
        seconds.insert(r.precision.clone(), json!(r.seconds));
    }
    let agreement: Map<String, Value> = agreement
        .iter()
        .map(|(p, t)| (p.clone(), json!(t.accuracy())))
        .collect();
    let mut per_type = Map::new();
    for (kind, base) in &baseline.per_type {
        let mut entry = Map::new();
        entry.insert("questions".into(), json!(base.total));
        entry.insert("majority_answer".into(), json!(majority.get(kind)));
        entry.insert("majority_baseline".into(), json!(base.accuracy()));
        for r in runs {
            let t = r.scores.per_type.get(kind).copied().unwrap_or_default();
            entry.insert(r.precision.clone(), json!(t.accuracy()));
        }
        per_type.insert(kind.clone(), Value::Object(entry));
    }
    let errors: Map<String, Value> = runs
        .iter()
        .map(|r| {
            let wrong: Vec<&Outcome> = r
                .outcomes
                .iter()
                .filter(|o| !o.correct)
                .take(args.show_errors)
                .collect();
            (r.precision.clone(), json!(wrong))
        })
        .collect();
    let mut out = json!({
        "model": dir.display().to_string(),
        "dataset": args.dataset.display().to_string(),
        "split": args.split,
        "questions": questions.len(),
        "accuracy": accuracy,
        "majority_baseline": baseline.overall().accuracy(),
        "per_type": per_type,
        "seconds": seconds,
    });
    if !agreement.is_empty() {
        out["agreement_with_float"] = Value::Object(agreement);
    }
    if args.show_errors > 0 {
        out["errors"] = Value::Object(errors);
    }
    out
}

/// For every non-float run, how many of its answers equal the float run's (empty without a
/// float run).
fn agreement_with_float(runs: &[Run]) -> Result<Vec<(String, eval::Tally)>> {
    let Some(float) = runs.iter().find(|r| r.precision == "float") else {
        return Ok(Vec::new());
    };
    runs.iter()
        .filter(|r| r.precision != "float")
        .map(|r| {
            Ok((
                r.precision.clone(),
                eval::agreement(&float.outcomes, &r.outcomes)?,
            ))
        })
        .collect()
}

fn print_table(
    args: &EvalArgs,
    dir: &Path,
    questions: &[Record],
    baseline: &Scores,
    runs: &[Run],
    agreement: &[(String, eval::Tally)],
) -> Result<()> {
    outln!(
        "{} on {} ({} split, {} questions), exact match:",
        dir.display(),
        args.dataset.display(),
        args.split,
        questions.len()
    )?;
    let width = runs
        .iter()
        .map(|r| r.precision.len())
        .max()
        .unwrap_or(0)
        .max(8);
    let mut header = format!("{:<18} {:>9} {:>9}", "type", "questions", "majority");
    for r in runs {
        header += &format!(" {:>width$}", r.precision);
    }
    outln!("{header}")?;
    let pct = |x: f64| format!("{:.1}%", 100.0 * x);
    for (kind, base) in &baseline.per_type {
        let mut line = format!("{:<18} {:>9} {:>9}", kind, base.total, pct(base.accuracy()));
        for r in runs {
            let t = r.scores.per_type.get(kind).copied().unwrap_or_default();
            line += &format!(" {:>width$}", pct(t.accuracy()));
        }
        outln!("{line}")?;
    }
    let mut line = format!(
        "{:<18} {:>9} {:>9}",
        "all",
        baseline.overall().total,
        pct(baseline.overall().accuracy())
    );
    for r in runs {
        line += &format!(" {:>width$}", pct(r.scores.overall().accuracy()));
    }
    outln!("{line}")?;
    for (p, t) in agreement {
        outln!(
            "{p}: same answer as float on {}/{} questions ({})",
            t.correct,
            t.total,
            pct(t.accuracy())
        )?;
    }
    for r in runs {
        outln!(
            "{}: {:.1} s ({:.1} questions/s)",
            r.precision,
            r.seconds,
            questions.len() as f64 / r.seconds.max(1e-9)
        )?;
    }
    for r in runs {
        let wrong: Vec<&Outcome> = r
            .outcomes
            .iter()
            .filter(|o| !o.correct)
            .take(args.show_errors)
            .collect();
        if !wrong.is_empty() {
            outln!("wrong answers at {}:", r.precision)?;
            for o in wrong {
                outln!(
                    "  {} {:?}: expected {:?}, got {:?}",
                    o.image,
                    o.question,
                    o.expected,
                    o.got
                )?;
            }
        }
    }
    Ok(())
}
