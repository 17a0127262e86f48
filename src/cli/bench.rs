//! `autoneural bench`: instruction peaks, kernels and whole models of real shapes on this machine
//! (see [`autoneural::bench`]). Prints tables, or the whole report as JSON with `--json`.

use super::graph::preset_config;
use anyhow::{bail, Context, Result};
use autoneural::bench::{self, kernels, models, peak, Report};
use autoneural::models::autoneural::{AutoNeuralConfig, AutoNeuralModel, VisionTower};
use autoneural::quant::kernels::level;
use autoneural::quant::scheme::{Precision, Scheme};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Section {
    /// Everything below, on the real shapes (several minutes, ~10 GB of memory).
    All,
    /// Instruction peaks of this CPU.
    Peaks,
    /// Integer and float linear kernels on LFM2-1.2B layer shapes.
    Kernels,
    /// Language-model prefill and decode.
    Lm,
    /// Vision-encoder latency.
    Vision,
    /// Time to first token: one image at the model's size plus a short prompt.
    Ttft,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum, default_value = "all")]
    section: Section,
    /// Language-model preset (random weights): lfm2-1.2b, lfm2-700m, lfm2-350m, internlm2-1.8b
    /// (InternVL2-2B's LM as a Llama). Repeatable; `all` runs lfm2-1.2b and lfm2-350m.
    #[arg(long = "preset")]
    presets: Vec<String>,
    /// Vision-language preset for `vision` and `ttft` (random weights): autoneural-1.5b
    /// (MobileNetV5-300M + LFM2-1.2B) or internvl2-2b (InternViT-300M + InternLM2-1.8B, the
    /// paper's baseline). Repeatable; default autoneural-1.5b (`all`: both).
    #[arg(long = "vlm")]
    vlms: Vec<String>,
    /// A model directory to benchmark instead of a preset (its own weights).
    #[arg(long, conflicts_with = "presets")]
    checkpoint: Option<PathBuf>,
    /// Precisions for `lm` (default float, w8a16, w4a16, w4a8) or `vision` (default float,
    /// w8a16, w8a8).
    #[arg(long = "precision", value_delimiter = ',')]
    precisions: Vec<String>,
    /// Thread counts to measure with (default: `--threads` if given, else 1 and all cores for
    /// `all` and `lm`, all cores otherwise).
    #[arg(long = "thread-counts", value_delimiter = ',')]
    thread_counts: Vec<usize>,
    /// Prompt tokens: the prefill of `lm` (default 512), the text of `ttft` (default 32).
    #[arg(long)]
    prompt: Option<usize>,
    /// Decoded tokens for `lm`.
    #[arg(long, default_value_t = 128)]
    decode: usize,
    /// Image sizes for `vision`.
    #[arg(long = "image-size", value_delimiter = ',', default_values_t = vec![256, 512, 768])]
    image_sizes: Vec<usize>,
    /// Weight shapes `OUTxIN` for `kernels` (default: LFM2-1.2B's FFN, 8192x2048 and 2048x8192).
    #[arg(long = "shape", value_delimiter = ',')]
    shapes: Vec<String>,
    /// Token counts for `kernels`.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1, 64, 512])]
    tokens: Vec<usize>,
    /// Print the report as JSON instead of tables.
    #[arg(long)]
    json: bool,
    /// Also report the integer ops' time per op kind (every integer run of the section).
    #[arg(long)]
    profile: bool,
}

fn parse_shape(s: &str) -> Result<[usize; 2]> {
    let bad = || anyhow::anyhow!("--shape {s}: expected OUTxIN, e.g. 8192x2048");
    let (o, i) = s.split_once('x').ok_or_else(bad)?;
    let (o, i): (usize, usize) = (o.parse().map_err(|_| bad())?, i.parse().map_err(|_| bad())?);
    if o == 0 || i == 0 || o.saturating_mul(i) > 1 << 30 {
        bail!("--shape {s}: each side at least 1 and at most 2^30 weights");
    }
    Ok([o, i])
}

fn pools(counts: &[usize]) -> Result<Vec<rayon::ThreadPool>> {
    counts
        .iter()
        .map(|&n| {
            if n == 0 || n > super::MAX_THREADS {
                bail!(
                    "thread counts must be in 1..={}, got {n}",
                    super::MAX_THREADS
                );
            }
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .context("building a thread pool")
        })
        .collect()
}

fn precisions(given: &[String], default: &[&str]) -> Result<Vec<Precision>> {
    let names: Vec<&str> = if given.is_empty() {
        default.to_vec()
    } else {
        given.iter().map(String::as_str).collect()
    };
    names
        .iter()
        .map(|s| Precision::parse(s).map_err(Into::into))
        .collect()
}

/// `threads`: the global `--threads`, which is then the one thread count measured unless
/// `--thread-counts` says otherwise.
pub fn bench(a: BenchArgs, threads: Option<usize>) -> Result<()> {
    let cores = rayon::current_num_threads();
    let all = a.section == Section::All;
    let counts: Vec<usize> = if !a.thread_counts.is_empty() {
        a.thread_counts.clone()
    } else if let Some(n) = threads {
        vec![n]
    } else if (all || a.section == Section::Lm) && cores > 1 {
        vec![1, cores]
    } else {
        vec![cores]
    };
    let pools = pools(&counts)?;
    // Building, calibrating and lowering the models uses every core whatever is measured.
    let setup = rayon::ThreadPoolBuilder::new()
        .num_threads(std::thread::available_parallelism().map_or(1, |n| n.get()))
        .build()
        .context("building the setup thread pool")?;
    setup.install(|| run_sections(&a, &pools))
}

fn run_sections(a: &BenchArgs, pools: &[rayon::ThreadPool]) -> Result<()> {
    let all = a.section == Section::All;
    autoneural::exec::profile::enable(a.profile);
    let widest = pools.last().expect("at least one thread count");
    let bar = ProgressBar::new_spinner();
    bar.set_style(ProgressStyle::with_template("{spinner} [{elapsed}] {msg}")?);
    bar.enable_steady_tick(Duration::from_millis(200));
    let progress = |m: &str| bar.set_message(m.to_string());
    let mut r = Report {
        machine: Some(bench::Machine::this()),
        ..Default::default()
    };
    let mark = |r: &mut Report, what: &str| {
        if let Some(m) = bench::peak_rss_mib() {
            r.peak_rss_mib.push((what.to_string(), m));
        }
    };
    if all || a.section == Section::Peaks {
        progress("instruction peaks");
        for p in pools {
            r.peaks.extend(peak::measure(p));
        }
    }
    if all || a.section == Section::Kernels {
        let shapes = if a.shapes.is_empty() {
            vec![[8192, 2048], [2048, 8192]]
        } else {
            a.shapes
                .iter()
                .map(|s| parse_shape(s))
                .collect::<Result<_>>()?
        };
        for p in pools {
            let n = p.current_num_threads();
            for &shape in &shapes {
                r.kernels
                    .extend(p.install(|| kernels::run(shape, &a.tokens, level(), n, &progress))?);
            }
        }
        mark(&mut r, "kernels");
    }
    if all || a.section == Section::Lm {
        let prompt = a.prompt.unwrap_or(512);
        let ps = precisions(&a.precisions, &["float", "w8a16", "w4a16", "w4a8"])?;
        let models: Vec<(String, AutoNeuralModel)> = match &a.checkpoint {
            Some(dir) => {
                progress(&format!("loading {}", dir.display()));
                vec![(dir.display().to_string(), AutoNeuralModel::load(dir)?)]
            }
            None => {
                let names = if a.presets.is_empty() {
                    vec!["lfm2-1.2b".to_string(), "lfm2-350m".to_string()]
                } else {
                    a.presets.clone()
                };
                let mut v = Vec::new();
                for n in names {
                    let cfg = preset_config(&n)?;
                    if cfg.vision.is_some() {
                        bail!("`bench lm` takes a language-model preset (lfm2-1.2b, lfm2-700m, lfm2-350m, internlm2-1.8b), not `{n}`");
                    }
                    progress(&format!("{n}: random weights"));
                    v.push((n, AutoNeuralModel::random(cfg, 1)?));
                    // One model in memory at a time.
                    let (name, model) = v.pop().expect("just pushed");
                    r.lm.extend(models::lm(
                        &name, &model, &ps, pools, prompt, a.decode, &progress,
                    )?);
                    mark(&mut r, &name);
                }
                v
            }
        };
        for (name, model) in &models {
            r.lm.extend(models::lm(
                name, model, &ps, pools, prompt, a.decode, &progress,
            )?);
            mark(&mut r, name);
        }
    }
    if all || a.section == Section::Vision || a.section == Section::Ttft {
        let vlms = if a.vlms.is_empty() && all {
            vec!["autoneural-1.5b".to_string(), "internvl2-2b".to_string()]
        } else if a.vlms.is_empty() {
            vec!["autoneural-1.5b".to_string()]
        } else {
            a.vlms.clone()
        };
        for name in &vlms {
            let cfg: AutoNeuralConfig = preset_config(name)?;
            let Some(tower) = cfg.vision.as_ref() else {
                bail!("--vlm takes a vision-language preset (autoneural-1.5b, internvl2-2b), not `{name}`");
            };
            let vision_name = match tower {
                VisionTower::MobileNetV5(_) => "mobilenetv5-300m",
                VisionTower::InternVit(_) => "internvit-300m",
            };
            progress(&format!("{name}: random weights"));
            let model = AutoNeuralModel::random(cfg, 1)?;
            if all || a.section == Section::Vision {
                let ps = precisions(&a.precisions, &["float", "w8a16", "w8a8"])?;
                r.vision.extend(models::vision(
                    vision_name,
                    &model,
                    &a.image_sizes,
                    &ps,
                    widest,
                    &progress,
                )?);
                mark(&mut r, "vision");
            }
            if all || a.section == Section::Ttft {
                let schemes = vec![
                    ("float".to_string(), Scheme::float()),
                    ("default (w8a16, w4a16)".to_string(), Scheme::default()),
                ];
                let prompt = a.prompt.unwrap_or(32);
                r.ttft.extend(models::ttft(
                    name, &model, &schemes, prompt, widest, &progress,
                )?);
                mark(&mut r, "time to first token");
            }
        }
    }
    bar.finish_and_clear();
    if a.profile {
        r.profile = autoneural::exec::profile::take();
    }
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&r)?)?;
    } else {
        out!("{}", r.table())?;
    }
    Ok(())
}
