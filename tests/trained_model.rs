//! The shipped trained model (`models/autoneural-cockpit-tiny`, trained by
//! `python/train_cockpit.py`) still answers: on a freshly generated cockpit set (a seed the model
//! never saw) its exact-match accuracy in float and in the paper's default integer scheme (vision
//! w8a16, text w4a16) stays well above always giving each question type's most common answer, and
//! the README's sample images get their correct answers.

mod common;

use autoneural::dataset::{self, GenerateOptions};
use autoneural::quant::report::ErrorStats;
use common::{arg as s, repo_root as root, run_cli as run};
use serde_json::Value;

fn model() -> String {
    s(&root().join("models/autoneural-cockpit-tiny"))
}

/// Accuracy the shipped model must keep on the held-out questions, per precision. Measured when
/// the model was trained (see the model card); the bars sit below the measurement so a rebuild
/// with different float rounding does not flip them, and far above the majority baseline.
const BARS: [(&str, f64); 2] = [("float", FLOAT_BAR), ("default", DEFAULT_BAR)];
const FLOAT_BAR: f64 = 0.95; // measured 1.000 (89 questions)
const DEFAULT_BAR: f64 = 0.95; // measured 1.000

/// `autoneural eval --json` of the shipped model at `precisions` on the test split of a freshly
/// generated cockpit set of `count` images (a seed the model never saw).
fn eval_held_out(count: usize, seed: u64, precisions: &[&str]) -> Value {
    eval_held_out_of(&model(), count, seed, precisions)
}

fn eval_held_out_of(model: &str, count: usize, seed: u64, precisions: &[&str]) -> Value {
    let tmp = tempfile::tempdir().unwrap();
    let ds = tmp.path().join("heldout");
    let opts = GenerateOptions {
        count,
        seed,
        ..GenerateOptions::default()
    };
    dataset::generate_cockpit(&ds, &opts).unwrap();
    let ds = s(&ds);
    let mut args = vec!["eval", "--model", model, "--dataset", &ds, "--json"];
    for p in precisions {
        args.extend(["--precision", p]);
    }
    let out = run(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn answers_held_out_questions_in_float_and_default_integer() {
    let v = eval_held_out(300, 20261125, &["float", "default"]);
    let majority = v["majority_baseline"].as_f64().unwrap();
    let questions = v["questions"].as_u64().unwrap();
    assert!(questions >= 60, "only {questions} held-out questions");
    if let Some(a) = v["agreement_with_float"]["default"].as_f64() {
        println!(
            "default: same answer as float on {:.1} % of the questions",
            100.0 * a
        );
    }
    for (p, bar) in BARS {
        let acc = v["accuracy"][p].as_f64().unwrap();
        println!(
            "{p}: {acc:.3} on {questions} held-out questions (majority baseline {majority:.3})"
        );
        assert!(
            acc >= bar && acc >= majority + 0.25,
            "{p}: accuracy {acc:.3} below the bar {bar} or not clearly above the majority baseline {majority:.3}"
        );
    }
}

/// Every question type, in float, beats always answering its most common answer by at least
/// `PER_TYPE_MARGIN` (absolute) and reaches `PER_TYPE_FLOOR`, just under the shipped model's
/// weakest type so a regression on one type shows, on a held-out set large enough for the rarest
/// type (the speed limit, 31 questions here). Float only: the integer schemes are covered above,
/// and their scalar kernels would make 1000 questions slow.
const PER_TYPE_MARGIN: f64 = 0.15;
const PER_TYPE_FLOOR: f64 = 0.90; // measured: every type 1.000
const PER_TYPE_IMAGES: usize = 3000;

#[test]
fn every_question_type_clearly_beats_its_majority_answer_in_float() {
    let v = eval_held_out(PER_TYPE_IMAGES, 20261202, &["float"]);
    let per_type = v["per_type"].as_object().unwrap();
    assert_eq!(per_type.len(), 11, "question types: {:?}", per_type.keys());
    let mut failures = Vec::new();
    for (kind, t) in per_type {
        let n = t["questions"].as_u64().unwrap();
        let majority = t["majority_baseline"].as_f64().unwrap();
        let acc = t["float"].as_f64().unwrap();
        println!("{kind:16} {n:4} questions: float {acc:.3}, majority {majority:.3}");
        assert!(n >= 30, "{kind}: only {n} questions");
        if acc < majority + PER_TYPE_MARGIN || acc < PER_TYPE_FLOOR {
            failures.push(format!("{kind}: {acc:.3} vs majority {majority:.3}"));
        }
    }
    assert!(
        failures.is_empty(),
        "below the floor {PER_TYPE_FLOOR} or not clearly above the majority answer: {failures:?}"
    );
}

#[test]
fn readme_sample_images_get_their_answers() {
    let model_dir = model();
    for (image, question, answer) in SAMPLES {
        // Float (no flag) and the paper's integer scheme, calibrated on the request.
        for precision in [None, Some("default")] {
            let image = s(&root().join(image));
            let mut args = vec![
                "run", "--model", &model_dir, "--image", &image, "--prompt", question,
            ];
            if let Some(p) = precision {
                args.extend(["--precision", p]);
            }
            let out = run(&args);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(
                String::from_utf8_lossy(&out.stdout).trim(),
                *answer,
                "{image} / {question} at {precision:?}"
            );
        }
    }
}

/// The sample images in `assets/` (test-split images of `dataset cockpit --count 30 --seed 4242`,
/// a seed outside the training set), questions about each, and the
/// generator's answers. The README's first command is the first line.
const SAMPLES: &[(&str, &str, &str)] = &[
    (
        "assets/cockpit_road.png",
        "What colour is the traffic light?",
        "Green.",
    ),
    (
        "assets/cockpit_road.png",
        "What sign is shown?",
        "A speed limit sign.",
    ),
    (
        "assets/cockpit_road.png",
        "What is the speed limit?",
        "60 km/h.",
    ),
    (
        "assets/cockpit_cluster.png",
        "What speed is shown?",
        "140 km/h.",
    ),
    (
        "assets/cockpit_cluster.png",
        "Which warning lights are on?",
        "Engine and battery.",
    ),
    (
        "assets/cockpit_cabin.png",
        "How many passengers are in the back?",
        "Two.",
    ),
    (
        "assets/cockpit_cabin.png",
        "Is the driver using a phone?",
        "No.",
    ),
    (
        "assets/cockpit_cabin.png",
        "Are all occupants wearing seatbelts?",
        "No.",
    ),
];

/// Vision-feature SQNR bars (dB), each just under its measurement (see the model card) so a
/// regression shows: the default scheme with GPTQ rounding (the bar is 35 dB), the same
/// with nearest rounding, and 16-bit weights (what the integer runtime itself costs).
const VISION_BAR_DEFAULT: f64 = 42.0; // measured 43.59
const VISION_BAR_NEAREST: f64 = 37.0; // measured 38.64
const VISION_BAR_W16: f64 = 47.0; // measured 49.25

/// Vision quantization error on trained weights, measured by `autoneural report` on `quantize`d
/// directories over held-out images (calibrated on training images): the integer runtime itself
/// costs little (16-bit weights and activations keep the visual tokens near 50 dB; the weakest op
/// is the first MQA block's integer attention); int8 weights (the default scheme's vision W8A16)
/// rounded to nearest cost about 11 dB more on this 277k-parameter encoder, and GPTQ rounding
/// against the calibration inputs wins half of it back.
#[test]
fn trained_vision_features_sqnr_at_w8a16_and_w16a16() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = tmp.path().join("set");
    let opts = GenerateOptions {
        count: 60,
        seed: 20261201,
        ..GenerateOptions::default()
    };
    dataset::generate_cockpit(&ds, &opts).unwrap();
    // Calibrate on the set's training images and questions, compare on its test images.
    let train = dataset::read_split(&ds, "train").unwrap();
    let calib = tmp.path().join("calib.jsonl");
    let lines: Vec<String> = train
        .iter()
        .take(48)
        .map(|r| {
            serde_json::json!({"image": s(&ds.join(&r.image)), "prompt": r.question}).to_string()
        })
        .collect();
    std::fs::write(&calib, lines.join("\n")).unwrap();
    let test = dataset::read_split(&ds, "test").unwrap();
    let mut images: Vec<String> = test.iter().map(|r| s(&ds.join(&r.image))).collect();
    images.dedup();
    for (k, (scheme, rounding, bar)) in [
        ("default", "gptq", VISION_BAR_DEFAULT),
        ("default", "nearest", VISION_BAR_NEAREST),
        (
            "vision=w16a16,connector=w16a16,text=w4a16",
            "gptq",
            VISION_BAR_W16,
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let q = tmp.path().join(format!("q{k}"));
        let out = run(&[
            "quantize",
            "--model",
            &model(),
            "--calibration",
            &s(&calib),
            "--scheme",
            scheme,
            "--rounding",
            rounding,
            "--out",
            &s(&q),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut args = vec![
            "report".to_string(),
            "--model".into(),
            model(),
            "--quantized".into(),
            s(&q),
            "--svg".into(),
            // One chart per scheme: report never replaces an existing file without --force.
            s(&tmp.path().join(format!("r-{scheme}-{rounding}.svg"))),
            "--json".into(),
            "--images".into(),
        ];
        args.extend(images.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        // The report's accumulated powers, turned into dB by the report module's own formula.
        let sqnr = |key: &str| {
            let op = &v["ops"][key];
            ErrorStats {
                signal: op["signal"].as_f64().unwrap(),
                error: op["error"].as_f64().unwrap(),
                ..ErrorStats::default()
            }
            .sqnr_db()
        };
        let vision = sqnr("vision:msfa.norm");
        let embeddings = sqnr("vision:multi_modal_projector.linear_2");
        println!(
            "{scheme}, {rounding} rounding, on {} held-out images: vision features {vision:.2} dB, \
             image embeddings {embeddings:.2} dB",
            images.len()
        );
        assert!(
            vision >= bar,
            "{scheme}, {rounding} rounding: vision features SQNR {vision:.2} dB < {bar} dB"
        );
    }
}

/// The shipped baseline (`models/internvl-cockpit-tiny`: InternViT + pixel shuffle + projector +
/// Llama, trained by `python/train_cockpit_baseline.py` through the same stages) still answers in
/// float and in the default integer scheme. It is the weaker model (83.1 % on the full test split,
/// speed, speed limit and seatbelts near their majority answers; see its model card), so its bar
/// is its own: below the measurement, well above the majority baseline.
const BASELINE_BAR: f64 = 0.75; // measured 0.831 (float) and 0.830 (default) on the test split

#[test]
fn baseline_answers_held_out_questions_in_float_and_default_integer() {
    let model = s(&root().join("models/internvl-cockpit-tiny"));
    let v = eval_held_out_of(&model, 300, 20261125, &["float", "default"]);
    let majority = v["majority_baseline"].as_f64().unwrap();
    for p in ["float", "default"] {
        let acc = v["accuracy"][p].as_f64().unwrap();
        println!("baseline {p}: {acc:.3} (majority baseline {majority:.3})");
        assert!(
            acc >= BASELINE_BAR && acc >= majority + 0.25,
            "baseline {p}: accuracy {acc:.3} below {BASELINE_BAR} or not clearly above the majority baseline {majority:.3}"
        );
    }
}
