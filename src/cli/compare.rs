//! `autoneural compare`: the paper's claims table from our own engine, in one command. For each
//! claim: the paper's number, what this machine measures (real-shaped models on random weights,
//! and the trained pair), and what the NPU cost model predicts for the SA8295P, with a plain
//! verdict. Every CPU measurement is also predicted by the CPU profile, so the same run checks the
//! cost model against the engine (the self-check).

use anyhow::{bail, Context, Result};
use autoneural::bench::models::{self as bm, LmRow, VisionRow};
use autoneural::dataset::cockpit::Scene;
use autoneural::dataset::kind_of;
use autoneural::engine::observe_request;
use autoneural::exec::{FloatProgram, IntProgram, QVal, Val};
use autoneural::files::{check_not_input, write_file};
use autoneural::models::autoneural::{AutoNeuralConfig, AutoNeuralModel, VisionTower};
use autoneural::models::presets::preset_config;
use autoneural::npu::chart::{self, BarScale, Breakdown};
use autoneural::npu::fit::{self, MeasurementFile, Role};
use autoneural::npu::predict::{predict, Prediction, Scenario, Target};
use autoneural::npu::profile::Profile;
use autoneural::npu::scheme::NpuScheme;
use autoneural::observe::NoObserver;
use autoneural::pipeline::{Pipeline, PromptInput};
use autoneural::quant::calibrate::{CalibrationObserver, Rounding, DEFAULT_BINS};
use autoneural::quant::int_model::IntModel;
use autoneural::quant::lower::lower;
use autoneural::quant::metrics::{relative_rms, sqnr_db};
use autoneural::quant::report::{analyse, nll};
use autoneural::quant::scheme::{Part, Precision, Scheme};
use autoneural::quant::tensor::QTensor;
use autoneural::Tensor;
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CpuRuns {
    /// No real-shaped runs: the trained pair and the predictions only (about a minute).
    None,
    /// Real shapes at 256 px, decode, quantization error (a few minutes).
    Quick,
    /// Everything: 256/512/768 px, time to first token at 512 px (about 20 minutes, ~12 GB).
    Full,
}

#[derive(Args, Debug)]
pub struct CompareArgs {
    /// Real-shaped measurements on this CPU.
    #[arg(long, value_enum, default_value = "full")]
    cpu: CpuRuns,
    /// NPU profile for the predictions.
    #[arg(long, default_value = "sa8295p")]
    profile: String,
    /// Profile of this machine, for the self-check.
    #[arg(long, default_value = "zen5-2c")]
    cpu_profile: String,
    /// The trained pair: AutoNeural and baseline model directories.
    #[arg(long, num_args = 2, default_values = ["models/autoneural-cockpit-tiny", "models/internvl-cockpit-tiny"])]
    trained: Vec<PathBuf>,
    /// Held-out cockpit scenes the trained pair is measured on (generated, seed 7).
    #[arg(long, default_value_t = 12)]
    scenes: usize,
    /// Write the charts (predicted vs published latency, per-node time breakdown) into this
    /// directory.
    #[arg(long)]
    charts: Option<PathBuf>,
    /// Replace existing chart files.
    #[arg(long)]
    force: bool,
    /// Print the report as JSON instead of Markdown.
    #[arg(long)]
    json: bool,
    /// Also write the JSON report to this file (with the Markdown on standard output).
    #[arg(long)]
    json_out: Option<PathBuf>,
}

/// One claim, side by side.
#[derive(Clone, Debug, Serialize)]
pub struct Claim {
    pub claim: String,
    pub paper: String,
    pub cpu: String,
    pub npu: String,
    pub verdict: String,
}

/// A CPU measurement and the CPU profile's prediction of it.
#[derive(Clone, Debug, Serialize)]
pub struct SelfCheck {
    pub what: String,
    pub measured_ms: f64,
    pub predicted_ms: f64,
    pub ratio: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub date: String,
    pub machine: Option<autoneural::bench::Machine>,
    pub command: String,
    pub claims: Vec<Claim>,
    pub npu_fit: Option<fit::FitReport>,
    pub cpu_self_check: Vec<SelfCheck>,
    /// Geometric-mean |error| of the CPU profile over the self-check rows, percent.
    pub cpu_self_check_error_pct: Option<f64>,
    pub vision_rows: Vec<VisionRow>,
    pub lm_rows: Vec<LmRow>,
    pub ttft_rows: Vec<bm::TtftRow>,
    pub quant: Vec<QuantRow>,
    pub predictions: Vec<(String, Prediction)>,
}

/// Quantization error of one model.
#[derive(Clone, Debug, Serialize)]
pub struct QuantRow {
    pub model: String,
    pub weights: String,
    pub image_size: usize,
    pub images: usize,
    pub features_sqnr_db: f64,
    pub features_rel_rms_pct: f64,
    pub perplexity_float: Option<f64>,
    pub perplexity_w4a16: Option<f64>,
}

const PAIR: [&str; 2] = ["autoneural-1.5b", "internvl2-2b"];
const LMS: [&str; 2] = ["lfm2-1.2b", "internlm2-1.8b"];
const NAMES: [&str; 2] = ["AutoNeural", "InternVL2-2B"];
/// The paper's vision-encoder latencies (ms) at 256 / 512 / 768 px (`None`: out of memory).
const PAPER_VISION: [[Option<f64>; 3]; 2] = [
    [Some(28.0), Some(101.7), Some(278.1)],
    [Some(163.3), Some(1415.0), None],
];
const SIZES: [usize; 3] = [256, 512, 768];
/// Contexts the paper deploys at.
const CONTEXTS: [usize; 2] = [4096, 1024];

fn fmt_ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0} ms")
    } else {
        format!("{v:.1} ms")
    }
}

/// Ratio `b / a` as text.
fn ratio(a: f64, b: f64) -> f64 {
    b / a
}

/// "agrees" within 1.5x of the paper's figure, "holds, weaker" when ours points the same way by
/// less, "does not hold" when ours points the other way (or shows no advantage).
fn verdict(paper: f64, ours: f64) -> &'static str {
    if ours <= 1.0 {
        "does not hold"
    } else if ours >= paper / 1.5 && ours <= paper * 1.5 {
        "agrees"
    } else if ours > paper * 1.5 {
        "holds, stronger"
    } else {
        "holds, weaker"
    }
}

fn scenario(p: &Profile, size: usize, prompt: usize, context: usize) -> Scenario {
    Scenario {
        image_size: size,
        images: 1,
        prompt_tokens: prompt,
        context,
        chunk: 128,
        memory_budget_bytes: p.memory_budget_bytes,
        onchip_budget_bytes: p.onchip_bytes,
    }
}

/// Generated held-out cockpit scenes: (image at `size`, question, answer).
fn scenes(n: usize, size: usize) -> Vec<(image::RgbImage, String, String)> {
    use rand::Rng;
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    (0..n)
        .map(|i| {
            let scene = Scene::sample(kind_of(i), &mut rng);
            let qs = scene.questions();
            let qa = &qs[rng.random_range(0..qs.len())];
            (
                scene.render(size as u32),
                qa.question.clone(),
                qa.answer.clone(),
            )
        })
        .collect()
}

fn pixels_of(cfg: &AutoNeuralConfig, img: &image::RgbImage, size: usize) -> Tensor {
    let mut t = autoneural::preprocess::preprocess(img, size);
    if let Some(n) = &cfg.image_norm {
        n.apply(&mut t);
    }
    t
}

/// Vision-feature error of `enc` lowered at W8A16 (calibrated on `calib`, measured on `eval`).
/// Nearest rounding: GPTQ on 300M random weights would take minutes and fit noise.
fn vision_error(enc: &FloatProgram, calib: &[Tensor], eval: &[Tensor]) -> Result<(f64, f64)> {
    let (pix, feat) = (enc.graph.port("pixels")?, enc.graph.port("features")?);
    let mut obs = CalibrationObserver::new(DEFAULT_BINS)?.with_rounding(Rounding::Nearest);
    obs.set_part(Part::Vision);
    for px in calib {
        enc.run(vec![(pix, Val::F(px.clone()))], &[feat], None, &mut obs)?;
    }
    let stats = obs.into_stats();
    let q = IntProgram::new(lower(
        enc,
        Part::Vision,
        &stats,
        &Scheme::uniform(Precision::W8A16),
        None,
        &[],
    )?);
    let (mut reference, mut approx) = (Vec::new(), Vec::new());
    for px in eval {
        let f = enc.run(
            vec![(pix, Val::F(px.clone()))],
            &[feat],
            None,
            &mut NoObserver,
        )?;
        let qx = QTensor::quantize(px, q.quant(pix)?);
        let o = q.run(vec![(pix, QVal::Q(qx))], &[feat], None, &mut NoObserver)?;
        reference.extend_from_slice(f[0].data());
        approx.extend_from_slice(o[0].dequantize().data());
    }
    Ok((
        sqnr_db(&reference, &approx),
        relative_rms(&reference, &approx),
    ))
}

pub fn compare(a: CompareArgs) -> Result<()> {
    if a.scenes == 0 {
        bail!("--scenes must be at least 1");
    }
    let npu = Profile::load(&a.profile)?;
    let cpu = Profile::load(&a.cpu_profile)?;
    if let Some(dir) = &a.charts {
        let inputs: Vec<&std::path::Path> = a.trained.iter().map(PathBuf::as_path).collect();
        for f in ["npu-fit.svg", "npu-breakdown.svg"] {
            let p = dir.join(f);
            check_not_input(&p, &inputs)?;
            if p.exists() && !a.force {
                bail!("{} already exists; pass --force to replace it", p.display());
            }
        }
    }
    if let Some(p) = &a.json_out {
        let inputs: Vec<&std::path::Path> = a.trained.iter().map(PathBuf::as_path).collect();
        check_not_input(p, &inputs)?;
        if p.exists() && !a.force {
            bail!("{} already exists; pass --force to replace it", p.display());
        }
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(ProgressStyle::with_template("{spinner} [{elapsed}] {msg}")?);
    bar.enable_steady_tick(Duration::from_millis(200));
    let progress = |m: &str| bar.set_message(m.to_string());
    let mut r = Report {
        date: chrono_date(),
        machine: Some(autoneural::bench::Machine::this()),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        ..Default::default()
    };

    // The NPU model, fitted as committed, on its published rows.
    progress("NPU cost model on the published rows");
    let data = MeasurementFile::for_profile(&npu)?;
    let rows = fit::prepare(&data, &npu)?;
    r.npu_fit = Some(fit::evaluate(&npu, &rows, Vec::new())?);

    // Predictions for both real architectures.
    let targets: Vec<Target> = PAIR
        .iter()
        .map(|n| Ok(Target::Model(Box::new(preset_config(n)?))))
        .collect::<Result<_>>()?;
    let default = NpuScheme::parse("default")?;
    let mut npu_vision = [[0.0f64; 3]; 2];
    let mut ttft_pred = [0.0f64; 2];
    let mut decode_pred = [0.0f64; 2];
    let mut pred_512 = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        progress(&format!("predicting {}", PAIR[i]));
        for (j, &size) in SIZES.iter().enumerate() {
            let p = predict(
                t,
                &npu,
                &default,
                &scenario(&npu, size, 16, CONTEXTS[i]),
                false,
            )?;
            npu_vision[i][j] = p.encoder_ms.unwrap_or(f64::NAN);
            if size == 512 {
                ttft_pred[i] = p.ttft_ms.unwrap_or(f64::NAN);
                decode_pred[i] = p.decode_tokens_per_s.unwrap_or(f64::NAN);
                pred_512.push(p.clone());
            }
            r.predictions
                .push((format!("{} {size} px, {}", PAIR[i], npu.name), p));
        }
    }

    // The trained pair: quantization error and perplexity at the paper's scheme.
    for dir in &a.trained {
        progress(&format!("trained pair: {}", dir.display()));
        let dir = super::resolve_model_dir(dir)?;
        let pipe = Pipeline::load(&dir).with_context(|| format!("loading {}", dir.display()))?;
        let m = &pipe.model;
        let size = m
            .config
            .vision
            .as_ref()
            .map(VisionTower::image_size)
            .context("the trained models are vision-language models")?;
        let all = scenes(2 * a.scenes, size);
        let (calib, eval) = all.split_at(a.scenes);
        let px = |s: &[(image::RgbImage, String, String)]| -> Vec<Tensor> {
            s.iter()
                .map(|(img, _, _)| pixels_of(&m.config, img, size))
                .collect()
        };
        let (calib_px, eval_px) = (px(calib), px(eval));
        // All calibration scenes: one observer over every request.
        let mut obs = CalibrationObserver::new(DEFAULT_BINS)?;
        for ((_, q, _), px) in calib.iter().zip(&calib_px) {
            let ids = pipe.prompt_ids(
                &PromptInput::Chat {
                    user: q.clone(),
                    system: None,
                },
                1,
            )?;
            observe_request(m, std::slice::from_ref(px), &ids, &[], 8, &mut obs)?;
        }
        let q = IntModel::build(m, &obs.into_stats(), &Scheme::default(), None)?;
        // Perplexity of the answers, with their image, float and W4A16 (teacher-forced).
        let (mut nll_f, mut nll_q, mut n) = (0.0, 0.0, 0usize);
        for ((_, question, answer), px) in eval.iter().zip(&eval_px) {
            let mut ids = pipe.prompt_ids(
                &PromptInput::Chat {
                    user: question.clone(),
                    system: None,
                },
                1,
            )?;
            let start = ids.len();
            ids.extend(pipe.tokenizer.encode(answer)?);
            let e = m.encode_image(px, &mut NoObserver)?;
            let lf = m.prompt_logits(m.embed_prompt(&ids, &[e.embeddings])?, &mut NoObserver)?;
            let qe = q.encode_image(px, &mut NoObserver)?;
            let lq = q
                .prompt_logits(q.embed_prompt(&ids, &[qe.embeddings])?, &mut NoObserver)?
                .dequantize();
            for (t, &id) in ids.iter().enumerate().skip(start) {
                nll_f += nll(lf.row(t - 1), id as usize);
                nll_q += nll(lq.row(t - 1), id as usize);
                n += 1;
            }
        }
        let rep = analyse(m, &q, &eval_px, &[])?;
        let key = match m.config.vision {
            Some(VisionTower::MobileNetV5(_)) => "vision:msfa.norm",
            _ => "vision:pixel_shuffle",
        };
        let f = rep
            .get(key)
            .with_context(|| format!("the report has no {key}"))?;
        r.quant.push(QuantRow {
            model: dir.display().to_string(),
            weights: "trained".into(),
            image_size: size,
            images: eval_px.len(),
            features_sqnr_db: f.sqnr_db(),
            features_rel_rms_pct: 100.0 * f.relative_rms(),
            perplexity_float: Some((nll_f / n.max(1) as f64).exp()),
            perplexity_w4a16: Some((nll_q / n.max(1) as f64).exp()),
        });
    }

    // Real shapes on this CPU.
    let sizes: &[usize] = match a.cpu {
        CpuRuns::None => &[],
        CpuRuns::Quick => &[256],
        CpuRuns::Full => &SIZES,
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(rayon::current_num_threads())
        .build()?;
    if a.cpu != CpuRuns::None {
        for (i, name) in PAIR.iter().enumerate() {
            let mut cfg = preset_config(name)?;
            let tower = cfg.vision.clone().expect("VLM presets have a vision tower");
            // The TTFT image: 512 px (InternViT: the nearest size it takes, 504).
            let s512 = tower.nearest_size(512);
            cfg.vision = Some(tower.at_size(s512));
            progress(&format!("{name}: random weights of the real shapes"));
            let model = AutoNeuralModel::random(cfg.clone(), 1)?;
            let vname = match tower {
                VisionTower::MobileNetV5(_) => "mobilenetv5-300m",
                VisionTower::InternVit(_) => "internvit-300m",
            };
            r.vision_rows.extend(bm::vision(
                vname,
                &model,
                sizes,
                &[Precision::Float, Precision::W8A16],
                &pool,
                &progress,
            )?);
            // Quantization error of the real shapes at 256 px (random weights, cockpit scenes).
            progress(&format!("{name}: W8A16 vision error at 256 px"));
            let s = tower.nearest_size(256);
            let enc = bm::encoder_at(&model, s)?.0;
            let imgs = scenes(4, s);
            let px: Vec<Tensor> = imgs
                .iter()
                .map(|(im, _, _)| pixels_of(&cfg, im, s))
                .collect();
            let (db, rms) = pool.install(|| vision_error(&enc, &px[..2], &px[2..]))?;
            r.quant.push(QuantRow {
                model: vname.into(),
                weights: "random (real shapes)".into(),
                image_size: s,
                images: 2,
                features_sqnr_db: db,
                features_rel_rms_pct: 100.0 * rms,
                perplexity_float: None,
                perplexity_w4a16: None,
            });
            // Decode rate of the language model at W4A16.
            r.lm_rows.extend(bm::lm(
                LMS[i],
                &model,
                &[Precision::W4A16],
                std::slice::from_ref(&pool),
                128,
                32,
                &progress,
            )?);
            if a.cpu == CpuRuns::Full {
                r.ttft_rows.extend(bm::ttft(
                    name,
                    &model,
                    &[("default (w8a16, w4a16)".to_string(), Scheme::default())],
                    16,
                    &pool,
                    &progress,
                )?);
            }
        }
    }
    bar.finish_and_clear();

    self_check(&mut r, &cpu)?;
    claims(&mut r, &npu, &targets, npu_vision, ttft_pred, decode_pred)?;
    if let Some(dir) = &a.charts {
        write_charts(&r, &pred_512, dir, a.force)?;
    }
    if let Some(p) = &a.json_out {
        let mut json = serde_json::to_string_pretty(&r)?;
        json.push('\n');
        write_file(p, json.as_bytes(), &[], a.force)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&r)?)?;
    } else {
        out!("{}", markdown(&r))?;
    }
    Ok(())
}

fn chrono_date() -> String {
    std::process::Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// The CPU profile's predictions of every CPU measurement of this run.
fn self_check(r: &mut Report, cpu: &Profile) -> Result<()> {
    let mut rows = Vec::new();
    for v in &r.vision_rows {
        let model = if v.model.starts_with("mobilenet") {
            "mobilenetv5_300m_enc"
        } else {
            "internvit-300m"
        };
        let t = fit::target(model)?;
        let scheme = NpuScheme::parse(&v.precision)?;
        let p = predict(&t, cpu, &scheme, &scenario(cpu, v.image_size, 0, 1), false)?;
        rows.push((
            format!("{} {} px {}", v.model, v.image_size, v.precision),
            v.latency_ms,
            p.encoder_ms.unwrap_or(f64::NAN),
        ));
    }
    for l in &r.lm_rows {
        let t = fit::target(&l.model)?;
        let scheme = NpuScheme::parse(&l.precision)?;
        // Decode rate averaged over the generated tokens: at the middle context.
        let ctx = l.prompt_tokens + l.decode_tokens / 2;
        let p = predict(
            &t,
            cpu,
            &scheme,
            &scenario(cpu, 0, l.prompt_tokens, ctx),
            false,
        )?;
        rows.push((
            format!("{} {} decode", l.model, l.precision),
            1e3 / l.decode_tok_s,
            p.decode_ms_per_token.unwrap_or(f64::NAN),
        ));
        rows.push((
            format!("{} {} prefill {}", l.model, l.precision, l.prompt_tokens),
            l.prefill_ms,
            p.prefill_ms.unwrap_or(f64::NAN),
        ));
    }
    for t in &r.ttft_rows {
        let target = Target::Model(Box::new({
            let mut c = preset_config(&t.model)?;
            let v = c.vision.clone().expect("VLM");
            c.vision = Some(v.at_size(t.image_size));
            c
        }));
        let scheme = NpuScheme::parse("default")?;
        let p = predict(
            &target,
            cpu,
            &scheme,
            &scenario(cpu, t.image_size, t.prompt_tokens, 4096),
            false,
        )?;
        rows.push((
            format!("{} TTFT {} px default", t.model, t.image_size),
            t.ttft_ms,
            p.ttft_ms.unwrap_or(f64::NAN),
        ));
    }
    let mut logs = Vec::new();
    for (what, measured, predicted) in rows {
        logs.push((predicted / measured).ln().abs());
        r.cpu_self_check.push(SelfCheck {
            what,
            measured_ms: measured,
            predicted_ms: predicted,
            ratio: predicted / measured,
        });
    }
    if !logs.is_empty() {
        let mean = logs.iter().sum::<f64>() / logs.len() as f64;
        r.cpu_self_check_error_pct = Some(100.0 * (mean.exp() - 1.0));
    }
    Ok(())
}

fn claims(
    r: &mut Report,
    npu: &Profile,
    targets: &[Target],
    npu_vision: [[f64; 3]; 2],
    ttft_pred: [f64; 2],
    decode_pred: [f64; 2],
) -> Result<()> {
    let cpu_vision = |model: &str, size: usize, prec: &str| -> Option<f64> {
        r.vision_rows
            .iter()
            .find(|v| {
                v.model.starts_with(model)
                    // InternViT runs at the nearest multiple of 28 px (252, 504, 756).
                    && (v.image_size as i64 - size as i64).abs() <= 14
                    && v.precision == prec
            })
            .map(|v| v.latency_ms)
    };
    let mut claims = Vec::new();
    // Quantization error.
    let trained: Vec<&QuantRow> = r.quant.iter().filter(|q| q.weights == "trained").collect();
    let random: Vec<&QuantRow> = r.quant.iter().filter(|q| q.weights != "trained").collect();
    let db_text = |rows: &[&QuantRow]| -> String {
        if rows.len() == 2 {
            format!(
                "{:.1} vs {:.1} dB ({:.2} % vs {:.2} % RMS)",
                rows[0].features_sqnr_db,
                rows[1].features_sqnr_db,
                rows[0].features_rel_rms_pct,
                rows[1].features_rel_rms_pct
            )
        } else {
            "not measured".into()
        }
    };
    let q_verdict = |rows: &[&QuantRow]| -> String {
        if rows.len() != 2 {
            return "not measured".into();
        }
        let ours = rows[1].features_rel_rms_pct / rows[0].features_rel_rms_pct;
        format!("{} (error ratio {ours:.2}x vs 7.08x)", verdict(7.08, ours))
    };
    claims.push(Claim {
        claim: "Vision quantization error at W8A16, trained pair (features SQNR, relative RMS)"
            .into(),
        paper: "45 vs 28 dB (0.562 % vs 3.98 %, 7x)".into(),
        cpu: db_text(&trained),
        npu: "-".into(),
        verdict: q_verdict(&trained),
    });
    claims.push(Claim {
        claim: "Vision quantization error at W8A16, real shapes, random weights, 256 px".into(),
        paper: "45 vs 28 dB".into(),
        cpu: db_text(&random),
        npu: "-".into(),
        verdict: q_verdict(&random),
    });
    for (j, &size) in SIZES.iter().enumerate() {
        let paper = match PAPER_VISION[1][j] {
            Some(b) => format!(
                "{} vs {} ({:.1}x)",
                fmt_ms(PAPER_VISION[0][j].unwrap_or(f64::NAN)),
                fmt_ms(b),
                b / PAPER_VISION[0][j].unwrap_or(f64::NAN)
            ),
            None => format!(
                "{} vs out of memory",
                fmt_ms(PAPER_VISION[0][j].unwrap_or(f64::NAN))
            ),
        };
        let cpu = match (
            cpu_vision("mobilenet", size, "w8a16"),
            cpu_vision("internvit", size, "w8a16"),
            cpu_vision("mobilenet", size, "float"),
            cpu_vision("internvit", size, "float"),
        ) {
            (Some(a8), Some(b8), Some(af), Some(bf)) => format!(
                "W8A16 {} vs {} ({:.1}x); float {} vs {} ({:.1}x)",
                fmt_ms(a8),
                fmt_ms(b8),
                ratio(a8, b8),
                fmt_ms(af),
                fmt_ms(bf),
                ratio(af, bf)
            ),
            _ => "not measured".into(),
        };
        let (a, b) = (npu_vision[0][j], npu_vision[1][j]);
        let npu_text = format!("{} vs {} ({:.1}x)", fmt_ms(a), fmt_ms(b), ratio(a, b));
        let v = match PAPER_VISION[1][j] {
            Some(pb) => verdict(pb / PAPER_VISION[0][j].unwrap_or(1.0), ratio(a, b)).to_string(),
            None => "see the largest-image row".into(),
        };
        claims.push(Claim {
            claim: format!(
                "Vision-encoder latency at {size} px (InternViT at the nearest size it takes)"
            ),
            paper,
            cpu,
            npu: npu_text,
            verdict: format!("NPU model: {v}"),
        });
    }
    let ttft_cpu = if r.ttft_rows.len() == 2 {
        format!(
            "{} vs {} ({:.1}x), default scheme",
            fmt_ms(r.ttft_rows[0].ttft_ms),
            fmt_ms(r.ttft_rows[1].ttft_ms),
            ratio(r.ttft_rows[0].ttft_ms, r.ttft_rows[1].ttft_ms)
        )
    } else {
        "not measured (--cpu full)".into()
    };
    claims.push(Claim {
        claim: "Time to first token, one 512 px image + 16 text tokens".into(),
        paper: "~100 ms vs ~1.4 s (14x)".into(),
        cpu: ttft_cpu,
        npu: format!(
            "{} vs {} ({:.1}x; 128-token chunks at contexts 4096 / 1024)",
            fmt_ms(ttft_pred[0]),
            fmt_ms(ttft_pred[1]),
            ratio(ttft_pred[0], ttft_pred[1])
        ),
        verdict: format!(
            "NPU model: {}",
            verdict(14.0, ratio(ttft_pred[0], ttft_pred[1]))
        ),
    });
    let dec_cpu = if r.lm_rows.len() == 2 {
        format!(
            "{:.1} vs {:.1} tok/s ({:.2}x), W4A16, prompt 128",
            r.lm_rows[0].decode_tok_s,
            r.lm_rows[1].decode_tok_s,
            r.lm_rows[0].decode_tok_s / r.lm_rows[1].decode_tok_s
        )
    } else {
        "not measured".into()
    };
    claims.push(Claim {
        claim: "Decode throughput, LM at W4A16".into(),
        paper: "~44 vs ~15 tok/s (2.9x)".into(),
        cpu: dec_cpu,
        npu: format!(
            "{:.1} vs {:.1} tok/s ({:.2}x) at contexts 4096 / 1024",
            decode_pred[0],
            decode_pred[1],
            decode_pred[0] / decode_pred[1]
        ),
        verdict: format!(
            "NPU model: {}",
            verdict(2.93, decode_pred[0] / decode_pred[1])
        ),
    });
    // Memory: per-token state and the longest context under the profile's budget.
    let mem: Vec<Prediction> = targets
        .iter()
        .map(|t| {
            predict(
                t,
                npu,
                &NpuScheme::parse("default")?,
                &scenario(npu, 512, 16, 1024),
                false,
            )
            .map_err(Into::into)
        })
        .collect::<Result<_>>()?;
    claims.push(Claim {
        claim: format!(
            "KV/state per token (16-bit) and the longest context within {:.1} GiB",
            npu.memory_budget_bytes as f64 / (1u64 << 30) as f64
        ),
        paper: "context 4096 vs 1024 (4x)".into(),
        cpu: format!(
            "{} vs {} B/token (+ {} vs {} B conv windows)",
            mem[0].kv_bytes_per_token,
            mem[1].kv_bytes_per_token,
            mem[0].state_window_bytes,
            mem[1].state_window_bytes
        ),
        npu: format!(
            "{} vs {} tokens",
            mem[0].max_context.unwrap_or(0),
            mem[1].max_context.unwrap_or(0)
        ),
        verdict: format!(
            "state per token {:.1}x smaller; {}",
            mem[1].kv_bytes_per_token as f64 / mem[0].kv_bytes_per_token as f64,
            if mem[1].max_context.unwrap_or(0) >= 4096 {
                "the baseline's 1024 limit is not a memory limit under this budget"
            } else {
                "the budget limits the baseline's context"
            }
        ),
    });
    claims.push(Claim {
        claim: format!(
            "Largest image with one attention head's scores in {:.0} MiB on chip",
            npu.onchip_bytes as f64 / (1u64 << 20) as f64
        ),
        paper: "768 vs 448 px".into(),
        cpu: "-".into(),
        npu: format!(
            "{} vs {} px",
            mem[0]
                .max_image_size
                .map_or("no limit".to_string(), |s| s.to_string()),
            mem[1]
                .max_image_size
                .map_or("no limit".to_string(), |s| s.to_string())
        ),
        verdict: match (mem[0].max_image_size, mem[1].max_image_size) {
            (a, Some(b)) if a.is_none_or(|a| a >= 768) && b < 768 => {
                "holds: InternViT cannot take 768 px, MobileNetV5 can".into()
            }
            _ => "does not hold as stated".into(),
        },
    });
    let ppl: Vec<&QuantRow> = trained
        .iter()
        .copied()
        .filter(|q| q.perplexity_float.is_some())
        .collect();
    claims.push(Claim {
        claim: "LM perplexity delta at W4A16 (trained pair: the answers to held-out questions, with their image)".into(),
        paper: "21.13 -> 21.47 (+1.6 %)".into(),
        cpu: ppl
            .iter()
            .map(|q| {
                let (f, i) = (
                    q.perplexity_float.unwrap_or(f64::NAN),
                    q.perplexity_w4a16.unwrap_or(f64::NAN),
                );
                format!("{f:.3} -> {i:.3} ({:+.2} %)", 100.0 * (i / f - 1.0))
            })
            .collect::<Vec<_>>()
            .join(" vs "),
        npu: "-".into(),
        verdict: {
            let deltas: Vec<f64> = ppl
                .iter()
                .map(|q| {
                    100.0
                        * (q.perplexity_w4a16.unwrap_or(f64::NAN)
                            / q.perplexity_float.unwrap_or(f64::NAN)
                            - 1.0)
                })
                .collect();
            let worst = deltas.iter().fold(0.0f64, |m, d| m.max(d.abs()));
            if deltas.is_empty() {
                "not measured".into()
            } else if worst <= 1.6 {
                format!("holds: W4A16 moves perplexity by at most {worst:.2} % (paper +1.6 %); the trained LMs are nearly certain of their answers, so this says little about a general LM")
            } else {
                format!("does not hold: W4A16 moves perplexity by up to {worst:.2} % (paper +1.6 %)")
            }
        },
    });
    r.claims = claims;
    Ok(())
}

fn markdown(r: &Report) -> String {
    let mut s = String::new();
    let m = r.machine.as_ref();
    s += &format!(
        "# autoneural compare — {} — {} ({} cores, kernels {})\n\n",
        r.date,
        m.map_or("?".into(), |m| m.cpu.clone()),
        m.map_or(0, |m| m.cores),
        m.map_or("?".into(), |m| m.kernel_level.clone())
    );
    s += &format!(
        "`{}`\n\nAutoNeural vs InternVL2-2B (each cell: AutoNeural vs baseline).\n\n",
        r.command
    );
    s += "| claim | paper (SA8295P) | ours, this CPU | ours, NPU model (sa8295p) | verdict |\n|---|---|---|---|---|\n";
    for c in &r.claims {
        s += &format!(
            "| {} | {} | {} | {} | {} |\n",
            c.claim, c.paper, c.cpu, c.npu, c.verdict
        );
    }
    if let Some(f) = &r.npu_fit {
        s += &format!(
            "\nNPU model on the published rows: fit rows {:.1} % mean error, hold-out rows {:.1} %\n\n| row | role | published ms | predicted ms | ratio |\n|---|---|---|---|---|\n",
            f.fit_error_pct, f.hold_out_error_pct
        );
        for row in &f.rows {
            s += &format!(
                "| {} | {} | {:.3} | {:.3} | {:.2} |\n",
                row.label,
                match row.role {
                    Role::Fit => "fit",
                    Role::HoldOut => "hold-out",
                },
                row.measured_ms,
                row.predicted_ms,
                row.ratio
            );
        }
    }
    if !r.cpu_self_check.is_empty() {
        s += &format!(
            "\nCPU self-check (profile zen5-2c predicting this run's measurements): mean error {:.1} %\n\n| measurement | measured ms | predicted ms | ratio |\n|---|---|---|---|\n",
            r.cpu_self_check_error_pct.unwrap_or(f64::NAN)
        );
        for c in &r.cpu_self_check {
            s += &format!(
                "| {} | {:.1} | {:.1} | {:.2} |\n",
                c.what, c.measured_ms, c.predicted_ms, c.ratio
            );
        }
    }
    s
}

fn write_charts(
    r: &Report,
    pred_512: &[Prediction],
    dir: &std::path::Path,
    force: bool,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if let Some(f) = &r.npu_fit {
        let points = f.chart_points();
        let svg = chart::predicted_vs_published(
            &points,
            "SA8295P: cost model vs published latency (fit and hold-out rows)",
        );
        write_file(&dir.join("npu-fit.svg"), svg.as_bytes(), &[], force)?;
    }
    let mut rows = Vec::new();
    for (i, p) in pred_512.iter().enumerate() {
        for part in &p.parts {
            if part.part.starts_with("vision encoder") || part.part.contains("decode") {
                rows.push(Breakdown {
                    label: format!("{} {}", NAMES[i], part.part),
                    segments: part.by_category.clone(),
                });
            }
        }
    }
    let svg = chart::time_breakdown(
        &rows,
        "SA8295P predicted time per op category: vision encoder at 512 px, one decode step",
        BarScale::Absolute,
    );
    write_file(&dir.join("npu-breakdown.svg"), svg.as_bytes(), &[], force)?;
    Ok(())
}
