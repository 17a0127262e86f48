//! Bit-exact fixtures of the integer path, recorded from the integer runtime of
//! `src/quant/models/` (`QAutoNeural`) before it is replaced by a generic graph executor: the
//! replacement must reproduce every recorded value bit for bit.
//!
//! Cases, each at the schemes `default` (vision=w8a16, text=w4a16) and `w8a8`:
//! - every golden case of `tests/golden/manifest.json` (its `pixels_*.npy` and `prompt_ids`),
//!   quantized with request-only calibration (`Engine::quantize_for` on the case's own inputs);
//!   text-only cases record only logits (their float model is loaded without its vision tower,
//!   see [`text_only_float_engine`]);
//! - `trained_<image>`: the embedded trained model `models/autoneural-cockpit-tiny` on one of
//!   `assets/cockpit_{road,cluster,cabin}.png` with the chat prompt [`TRAINED_PROMPT`] (the
//!   engine's own prompt building), request-only calibration on that image and prompt;
//! - `trained_gptq_<image>`: the same model and inputs, quantized the way `autoneural quantize`
//!   does: `calibrate` (GPTQ rounding, the default) on a calibration set of the three images with
//!   that prompt, then built per scheme (see [`gptq_calibrated_engines`]).
//!
//! Outputs are `Engine::intermediates`: dequantized vision features and image embeddings (one
//! tensor per image) and the prompt logits `[seq, vocab]`. Dequantized values are exact images of
//! the integers (one scale per tensor), so equal bits mean equal integers.
//!
//! Layout: `tests/golden/int/<case>/<scheme>/` holds `fixture.json` (prompt ids, and per tensor:
//! shape, FNV-1a 64 hash over the little-endian bytes of every value's `f32::to_bits`, file and
//! what it stores) and the `.npy` files: `vision_features_<i>.npy`, `image_embeddings_<i>.npy`,
//! and `logits.npy` when the logits have at most [`FULL_LOGITS_MAX`] values, else
//! `logits_last_row.npy` (the full last row) plus the hash of the full tensor and one hash per
//! row (`row_fnv1a64`, to name the first differing row on failure).
//!
//! The tests recompute every case and compare bit for bit (shapes, stored values, hashes).
//!
//! Regenerate (only when the integer arithmetic is meant to change, never to make a failing
//! replacement pass):
//!
//! ```text
//! AUTONEURAL_WRITE_INT_FIXTURES=1 cargo test --test int_fixtures -- --ignored write_int_fixtures
//! ```
//!
//! Before writing, every case is computed three times (twice in the global rayon pool, once in a
//! 1-thread pool, calibration included) and must give identical bits.

mod common;

use autoneural::engine::{Engine, Intermediates};
use autoneural::pipeline::{ImageInput, PromptInput};
use autoneural::quant::scheme::Scheme;
use autoneural::Tensor;
use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// The schemes every case is recorded at (`Scheme::parse` strings).
const SCHEMES: [&str; 2] = ["default", "w8a8"];
/// Set to `1` to let [`write_int_fixtures`] write.
const WRITE_ENV: &str = "AUTONEURAL_WRITE_INT_FIXTURES";
/// Logits with more values than this are stored as their last row plus a hash of the whole.
const FULL_LOGITS_MAX: usize = 32 * 1024;
/// The trained model's prompt (chat template, one image).
const TRAINED_PROMPT: &str = "What colour is the traffic light?";
/// The golden cases with a test below (must equal `tests/golden/manifest.json`).
const GOLDEN_CASES: [&str; 7] = [
    "vision_all_blocks_256",
    "vision_512_pool",
    "two_images_r8",
    "real_layout_scaled",
    "text_one_token",
    "text_long_prompt",
    "lfm2_plain_text",
];
/// The trained model's sample images (`assets/<name>.png`), one per run.
const TRAINED_IMAGES: [&str; 3] = ["cockpit_road", "cockpit_cluster", "cockpit_cabin"];

fn int_root() -> PathBuf {
    golden_root().join("int")
}

fn trained_model_dir() -> PathBuf {
    repo_root().join("models/autoneural-cockpit-tiny")
}

fn asset(name: &str) -> PathBuf {
    repo_root().join("assets").join(format!("{name}.png"))
}

/// One case at one scheme: its inputs' prompt ids and the integer path's outputs.
struct Run {
    case: String,
    scheme: &'static str,
    ids: Vec<u32>,
    out: Intermediates,
}

impl Run {
    /// The recorded tensors by name, in a fixed order.
    fn tensors(&self) -> Vec<(String, &Tensor)> {
        let mut v = Vec::new();
        for (i, t) in self.out.features.iter().enumerate() {
            v.push((format!("vision_features_{i}"), t));
        }
        for (i, t) in self.out.embeddings.iter().enumerate() {
            v.push((format!("image_embeddings_{i}"), t));
        }
        v.push(("logits".to_string(), &self.out.logits));
        v
    }

    fn dir(&self) -> PathBuf {
        int_root().join(&self.case).join(self.scheme)
    }

    /// Structural checks that hold whatever the values.
    fn check_shapes(&self, num_images: usize) {
        let what = format!("{} {}", self.case, self.scheme);
        assert_eq!(self.out.features.len(), num_images, "{what}: feature maps");
        assert_eq!(self.out.embeddings.len(), num_images, "{what}: embeddings");
        let logits = &self.out.logits;
        assert_eq!(logits.rank(), 2, "{what}: logits rank");
        assert_eq!(logits.dim(0), self.ids.len(), "{what}: logits rows");
        for (f, e) in self.out.features.iter().zip(&self.out.embeddings) {
            assert_eq!(f.rank(), 2, "{what}: features rank");
            assert_eq!(e.rank(), 2, "{what}: embeddings rank");
            assert_eq!(f.dim(0), e.dim(0), "{what}: tokens per image");
        }
        let image_rows: usize = self.out.embeddings.iter().map(|e| e.dim(0)).sum();
        assert!(
            image_rows <= self.ids.len(),
            "{what}: more image rows than ids"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Computing the cases.
// ---------------------------------------------------------------------------------------------

/// Request-only calibration through the public engine API.
fn request_only(dir: &Path, scheme: &str, pixels: &[Tensor], ids: &[u32]) -> Intermediates {
    let scheme = Scheme::parse(scheme).unwrap();
    let engine = Engine::load(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .quantize_for(&scheme, pixels, ids)
        .unwrap();
    assert!(engine.is_integer());
    engine.intermediates(pixels, ids).unwrap()
}

/// A golden case at both schemes.
fn golden_runs(name: &str) -> Vec<Run> {
    let case = Case::load(name);
    let pixels = case.pixels();
    let ids = case.ids("prompt_ids");
    SCHEMES
        .iter()
        .map(|&scheme| {
            let out = if pixels.is_empty() {
                let engine = text_only_float_engine(&case.model_dir())
                    .quantize_for(&Scheme::parse(scheme).unwrap(), &pixels, &ids)
                    .unwrap();
                assert!(engine.is_integer());
                engine.intermediates(&pixels, &ids).unwrap()
            } else {
                request_only(&case.model_dir(), scheme, &pixels, &ids)
            };
            let run = Run {
                case: name.to_string(),
                scheme,
                ids: ids.clone(),
                out,
            };
            run.check_shapes(case.num_images());
            run
        })
        .collect()
}

/// Pixels of `assets/<image>.png` and the chat prompt ids of [`TRAINED_PROMPT`] with one image,
/// as `engine` prepares them.
fn trained_inputs(engine: &Engine, image: &str) -> (Vec<Tensor>, Vec<u32>) {
    let pixels = engine
        .load_pixels(&[ImageInput::File(asset(image))])
        .unwrap();
    let ids = engine
        .prompt_ids(
            &PromptInput::Chat {
                user: TRAINED_PROMPT.to_string(),
                system: None,
            },
            1,
        )
        .unwrap();
    (pixels, ids)
}

/// The trained model, request-only calibration, one image per run, both schemes.
fn trained_request_runs() -> Vec<Run> {
    let dir = trained_model_dir();
    let mut runs = Vec::new();
    for image in TRAINED_IMAGES {
        let (pixels, ids) = trained_inputs(&Engine::load(&dir).unwrap(), image);
        for scheme in SCHEMES {
            let run = Run {
                case: format!("trained_{image}"),
                scheme,
                out: request_only(&dir, scheme, &pixels, &ids),
                ids: ids.clone(),
            };
            run.check_shapes(1);
            runs.push(run);
        }
    }
    runs
}

// ---------------------------------------------------------------------------------------------
// MODEL INTERNALS: the only two functions that reach past `Engine`. `gptq_calibrated_engines`
// is the only place that names the integer model's concrete types; `text_only_float_engine`
// touches the float model's fields. Rewrite both for the new API; the rest of the file only
// uses `Engine::{load, quantize_for, load_pixels, prompt_ids, intermediates}`.
// ---------------------------------------------------------------------------------------------

/// The float model at `dir` without its vision tower and connector, for a text-only request.
///
/// `Engine::quantize_for` on a model that has a vision tower needs the request to carry an image:
/// with none, no vision op is calibrated and `QAutoNeural::build` stops at `conv_stem.conv`. The
/// text-only golden cases `text_one_token` and `text_long_prompt` have a (tiny, unused) tower, so
/// their float model is loaded without it: the language model, the only part a text-only request
/// runs, is built from the same text statistics as with the tower.
///
/// Names the float model's field `vision`.
fn text_only_float_engine(dir: &Path) -> Engine {
    let mut pipe = autoneural::pipeline::Pipeline::load(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    pipe.model.vision = None;
    Engine::Float(Box::new(pipe))
}

/// ---- THE ONLY PLACE THAT NAMES THE INTEGER MODEL'S CONCRETE TYPES. ----
///
/// Calibrates the float model at `model_dir` once the way `autoneural quantize` does
/// (`src/cli/quantize.rs`: `calibrate` with GPTQ rounding, the default, on `samples`), then builds
/// one integer engine per scheme (`QAutoNeural::build`, default range method) and wraps it as
/// `Engine::Integer`. Rewrite this function for the graph executor's API.
fn gptq_calibrated_engines(model_dir: &Path, samples: &[(PathBuf, &str)]) -> Vec<Engine> {
    use autoneural::engine::IntegerPipeline;
    use autoneural::pipeline::Pipeline;
    use autoneural::quant::calibrate::{calibrate, CalibrationOptions, Rounding, DEFAULT_BINS};
    use autoneural::quant::calibset::CalibrationSample;
    use autoneural::quant::int_model::IntModel;

    let pipe = Pipeline::load(model_dir).unwrap();
    let samples: Vec<CalibrationSample> = samples
        .iter()
        .map(|(image, prompt)| CalibrationSample {
            image: Some(image.clone()),
            prompt: prompt.to_string(),
        })
        .collect();
    let opts = CalibrationOptions {
        bins: DEFAULT_BINS,
        progress: false,
        system: None,
        rounding: Rounding::Gptq,
    };
    let stats = calibrate(&pipe, &samples, &opts).unwrap();
    SCHEMES
        .iter()
        .map(|s| {
            let scheme = Scheme::parse(s).unwrap();
            let model = IntModel::build(&pipe.model, &stats, &scheme, None).unwrap();
            Engine::Integer(Box::new(IntegerPipeline {
                model,
                config: pipe.model.config.clone(),
                tokenizer: pipe.tokenizer.clone(),
                template: pipe.template.clone(),
            }))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// End of the model internals.
// ---------------------------------------------------------------------------------------------

/// The trained model calibrated on the three sample images (GPTQ), one image per run, both
/// schemes.
fn trained_gptq_runs() -> Vec<Run> {
    // A calibration directory holding the three images and a one-line prompts.txt: images in
    // byte-wise file-name order, each paired with the prompt (`quant::calibset`).
    let mut names = TRAINED_IMAGES.map(|n| format!("{n}.png"));
    names.sort();
    let samples: Vec<(PathBuf, &str)> = names
        .iter()
        .map(|n| (repo_root().join("assets").join(n), TRAINED_PROMPT))
        .collect();
    let engines = gptq_calibrated_engines(&trained_model_dir(), &samples);
    assert_eq!(engines.len(), SCHEMES.len());
    let mut runs = Vec::new();
    for image in TRAINED_IMAGES {
        for (engine, scheme) in engines.iter().zip(SCHEMES) {
            assert!(engine.is_integer());
            let (pixels, ids) = trained_inputs(engine, image);
            let run = Run {
                case: format!("trained_gptq_{image}"),
                scheme,
                out: engine.intermediates(&pixels, &ids).unwrap(),
                ids,
            };
            run.check_shapes(1);
            runs.push(run);
        }
    }
    runs
}

/// Every case group, by name (a group is computed by one function; the trained groups share a
/// model and, for GPTQ, one calibration).
fn groups() -> Vec<String> {
    let mut g = cases();
    g.push("trained".into());
    g.push("trained_gptq".into());
    g
}

fn compute_group(group: &str) -> Vec<Run> {
    match group {
        "trained" => trained_request_runs(),
        "trained_gptq" => trained_gptq_runs(),
        name => golden_runs(name),
    }
}

// ---------------------------------------------------------------------------------------------
// Fixture files and bit-for-bit comparison.
// ---------------------------------------------------------------------------------------------

/// FNV-1a 64 over the little-endian bytes of each value's bits.
fn fnv1a64(xs: &[f32]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for x in xs {
        for b in x.to_bits().to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

fn hex(h: u64) -> String {
    format!("{h:016x}")
}

/// [`fnv1a64`] of each row of a `[rows, cols]` tensor.
fn row_hashes(t: &Tensor) -> Vec<String> {
    (0..t.dim(0)).map(|r| hex(fnv1a64(t.row(r)))).collect()
}

/// Bitwise comparison of `got` with `want`, where `want[i]` is flat index `offset + i` of the
/// tensor `name` of shape `shape`. `None` when every bit matches.
fn bit_diff(
    name: &str,
    shape: &[usize],
    offset: usize,
    got: &[f32],
    want: &[f32],
) -> Option<String> {
    assert_eq!(got.len(), want.len(), "{name}: compared lengths");
    let mut first = None;
    let mut count = 0usize;
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        if a.to_bits() != b.to_bits() {
            count += 1;
            first.get_or_insert(i);
        }
    }
    let i = first?;
    let flat = offset + i;
    let mut idx = vec![0; shape.len()];
    let mut rest = flat;
    for (d, &n) in shape.iter().enumerate().rev() {
        idx[d] = rest % n;
        rest /= n;
    }
    Some(format!(
        "{name}: {count} of {} compared values differ bitwise; first at flat index {flat} {idx:?}: got {:e} ({:#010x}), want {:e} ({:#010x})",
        want.len(),
        got[i],
        got[i].to_bits(),
        want[i],
        want[i].to_bits()
    ))
}

fn write_run(run: &Run) {
    let dir = run.dir();
    std::fs::create_dir_all(&dir).unwrap();
    let mut tensors = serde_json::Map::new();
    for (name, t) in run.tensors() {
        let (file, stored, stored_t) = if name == "logits" && t.numel() > FULL_LOGITS_MAX {
            let vocab = t.dim(1);
            let last = Tensor::new(&[1, vocab], t.row(t.dim(0) - 1).to_vec()).unwrap();
            ("logits_last_row.npy".to_string(), "last_row", last)
        } else {
            (format!("{name}.npy"), "full", t.clone())
        };
        autoneural::npy::write_f32(&dir.join(&file), &stored_t).unwrap();
        let mut rec = json!({
            "shape": t.shape(),
            "fnv1a64": hex(fnv1a64(t.data())),
            "file": file,
            "stored": stored,
        });
        if stored == "last_row" {
            rec["row_fnv1a64"] = json!(row_hashes(t));
        }
        tensors.insert(name, rec);
    }
    let meta = json!({
        "case": run.case,
        "scheme": run.scheme,
        "prompt_ids": run.ids,
        "images": run.out.features.len(),
        "tensors": tensors,
    });
    std::fs::write(
        dir.join("fixture.json"),
        serde_json::to_string_pretty(&meta).unwrap() + "\n",
    )
    .unwrap();
}

/// Compares a run with its fixture; returns every mismatch found.
fn compare_run(run: &Run) -> Vec<String> {
    let dir = run.dir();
    let what = format!("{} {}", run.case, run.scheme);
    let path = dir.join("fixture.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{what}: {}: {e} (record with {WRITE_ENV}=1 cargo test --test int_fixtures -- --ignored write_int_fixtures)",
            path.display()
        )
    });
    let meta: Value = serde_json::from_str(&text).unwrap();
    let mut errors = Vec::new();
    let want_ids: Vec<u32> = meta["prompt_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    if want_ids != run.ids {
        errors.push(format!(
            "{what}: prompt ids differ from the recorded ones ({} vs {} ids)",
            run.ids.len(),
            want_ids.len()
        ));
    }
    let recorded = meta["tensors"].as_object().unwrap();
    let got = run.tensors();
    let got_names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    let mut want_names: Vec<&str> = recorded.keys().map(String::as_str).collect();
    let mut sorted_got = got_names.clone();
    sorted_got.sort_unstable();
    want_names.sort_unstable();
    if sorted_got != want_names {
        errors.push(format!(
            "{what}: tensors {got_names:?}, recorded {want_names:?}"
        ));
    }
    for (name, t) in got {
        let Some(rec) = recorded.get(&name) else {
            continue;
        };
        let shape: Vec<usize> = rec["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        if t.shape() != shape.as_slice() {
            errors.push(format!(
                "{what} {name}: shape {:?}, recorded {shape:?}",
                t.shape()
            ));
            continue;
        }
        let file = dir.join(rec["file"].as_str().unwrap());
        let stored = autoneural::npy::read_f32(&file)
            .unwrap_or_else(|e| panic!("{what}: {}: {e}", file.display()));
        let label = format!("{what} {name}");
        match rec["stored"].as_str().unwrap() {
            "full" => {
                assert_eq!(stored.shape(), t.shape(), "{label}: stored file shape");
                errors.extend(bit_diff(&label, t.shape(), 0, t.data(), stored.data()));
            }
            "last_row" => {
                let (rows, cols) = (t.dim(0), t.dim(1));
                assert_eq!(stored.shape(), [1, cols], "{label}: stored last row shape");
                errors.extend(bit_diff(
                    &format!("{label} (last row)"),
                    t.shape(),
                    (rows - 1) * cols,
                    t.row(rows - 1),
                    stored.data(),
                ));
            }
            other => panic!("{label}: unknown storage `{other}`"),
        }
        let want_hash = rec["fnv1a64"].as_str().unwrap();
        let got_hash = hex(fnv1a64(t.data()));
        if got_hash != want_hash {
            // Per-row hashes (stored with the last row) locate the rows that differ.
            let rows = match rec["row_fnv1a64"].as_array() {
                Some(want_rows) => {
                    let got_rows = row_hashes(t);
                    let differ: Vec<usize> = (0..got_rows.len())
                        .filter(|&r| want_rows.get(r).and_then(Value::as_str) != Some(&got_rows[r]))
                        .collect();
                    format!(
                        "; {} of {} rows differ, first row {:?}",
                        differ.len(),
                        got_rows.len(),
                        differ.first()
                    )
                }
                None => String::new(),
            };
            errors.push(format!(
                "{label}: FNV-1a 64 of all {} values is {got_hash}, recorded {want_hash}{rows}",
                t.numel()
            ));
        }
    }
    errors
}

/// Recomputes a group and compares every run with its fixture, bit for bit.
fn check_group(group: &str) {
    let t = std::time::Instant::now();
    let runs = compute_group(group);
    let mut errors = Vec::new();
    for run in &runs {
        let last = run.out.logits.row(run.out.logits.dim(0) - 1);
        let argmax = (0..last.len()).fold(0, |b, i| if last[i] > last[b] { i } else { b });
        println!(
            "  {} {}: {} prompt ids, {} image(s), last-row argmax {argmax} ({:.4})",
            run.case,
            run.scheme,
            run.ids.len(),
            run.out.features.len(),
            last[argmax]
        );
        errors.extend(compare_run(run));
    }
    println!(
        "{group}: {} runs compared in {:.1} s, {} mismatches",
        runs.len(),
        t.elapsed().as_secs_f64(),
        errors.len()
    );
    assert!(
        errors.is_empty(),
        "integer outputs differ from tests/golden/int:\n{}",
        errors.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------------------------

#[test]
fn int_vision_all_blocks_256() {
    check_group("vision_all_blocks_256");
}

#[test]
fn int_vision_512_pool() {
    check_group("vision_512_pool");
}

#[test]
fn int_two_images_r8() {
    check_group("two_images_r8");
}

#[test]
fn int_real_layout_scaled() {
    check_group("real_layout_scaled");
}

#[test]
fn int_text_one_token() {
    check_group("text_one_token");
}

#[test]
fn int_text_long_prompt() {
    check_group("text_long_prompt");
}

#[test]
fn int_lfm2_plain_text() {
    check_group("lfm2_plain_text");
}

#[test]
fn int_trained_request_only() {
    check_group("trained");
}

#[test]
fn int_trained_gptq_calibrated() {
    check_group("trained_gptq");
}

/// Every golden case of the manifest has a test above ([`GOLDEN_CASES`]) and a fixture directory
/// per scheme, and no fixture directory is left without a case.
#[test]
fn every_case_has_fixtures() {
    let mut expected = cases();
    assert_eq!(
        expected, GOLDEN_CASES,
        "tests/golden/manifest.json changed: add a test per new case and record its fixtures"
    );
    for image in TRAINED_IMAGES {
        expected.push(format!("trained_{image}"));
        expected.push(format!("trained_gptq_{image}"));
    }
    for case in &expected {
        for scheme in SCHEMES {
            let p = int_root().join(case).join(scheme).join("fixture.json");
            assert!(p.is_file(), "missing fixture {}", p.display());
        }
    }
    let mut found: Vec<String> = std::fs::read_dir(int_root())
        .unwrap()
        .filter_map(|e| {
            let e = e.unwrap();
            e.path()
                .is_dir()
                .then(|| e.file_name().to_string_lossy().into_owned())
        })
        .collect();
    found.sort();
    expected.sort();
    assert_eq!(found, expected, "fixture directories vs cases");
}

/// Panics unless `a` and `b` are the same bits (names, shapes, values and prompt ids).
fn assert_identical(a: &[Run], b: &[Run], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: run count");
    for (x, y) in a.iter().zip(b) {
        assert_eq!((&x.case, x.scheme), (&y.case, y.scheme), "{what}: order");
        assert_eq!(x.ids, y.ids, "{what}: {} {} prompt ids", x.case, x.scheme);
        let (tx, ty) = (x.tensors(), y.tensors());
        assert_eq!(
            tx.len(),
            ty.len(),
            "{what}: {} {} tensors",
            x.case,
            x.scheme
        );
        for ((n, t), (_, u)) in tx.iter().zip(&ty) {
            let label = format!("{what}: {} {} {n}", x.case, x.scheme);
            assert_eq!(t.shape(), u.shape(), "{label}: shape");
            if let Some(e) = bit_diff(&label, t.shape(), 0, t.data(), u.data()) {
                panic!("{e}");
            }
        }
    }
}

/// Records the fixtures (see the module documentation). Ignored, and writes nothing unless
/// `AUTONEURAL_WRITE_INT_FIXTURES=1`.
#[test]
#[ignore = "writes tests/golden/int; run with AUTONEURAL_WRITE_INT_FIXTURES=1 -- --ignored"]
fn write_int_fixtures() {
    if std::env::var(WRITE_ENV).as_deref() != Ok("1") {
        eprintln!("{WRITE_ENV} is not 1: nothing written");
        return;
    }
    let single = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    for group in groups() {
        let t = std::time::Instant::now();
        let first = compute_group(&group);
        let again = compute_group(&group);
        assert_identical(&first, &again, "a second run");
        let one_thread = single.install(|| compute_group(&group));
        assert_identical(&first, &one_thread, "a 1-thread rayon pool");
        let mut cases: Vec<&str> = first.iter().map(|r| r.case.as_str()).collect();
        cases.dedup();
        for case in cases {
            let dir = int_root().join(case);
            if dir.exists() {
                std::fs::remove_dir_all(&dir).unwrap();
            }
        }
        for run in &first {
            write_run(run);
        }
        println!(
            "{group}: {} runs, deterministic (3 computations, 1-thread pool included), written in {:.1} s",
            first.len(),
            t.elapsed().as_secs_f64()
        );
    }
}
