//! Golden parity of the MobileNetV5 encoder + MSFA with timm.
//!
//! Every case under `tests/golden/` (listed in `manifest.json`) with `num_images > 0` is run:
//! each `pixels_<i>.npy` `[3, H, W]` goes through the encoder, the `[C, R, R]` outputs are turned
//! into `[R * R, C]` tokens, stacked, and compared with `vision_features.npy`
//! (`max |a - b| / max |b| <= 1e-4`).
//!
//! `AUTONEURAL_VISION_GOLDEN_DIRS` (colon-separated) adds more roots in the same layout (a
//! `manifest.json` or one sub-directory per case), e.g. goldens made at other image sizes.

use autoneural::models::mobilenetv5::{MobileNetV5Encoder, VisionConfig};
use autoneural::npy::read_f32;
use autoneural::observe::NoObserver;
use autoneural::weights::{WeightStore, Weights};
use autoneural::Tensor;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

const TOLERANCE: f32 = 1e-4;

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Case directories of one golden root.
fn case_dirs(root: &Path) -> Vec<PathBuf> {
    let manifest = root.join("manifest.json");
    if manifest.is_file() {
        let v = read_json(&manifest);
        let list = v.get("cases").unwrap_or(&v);
        return list
            .as_array()
            .expect("manifest: a list of cases")
            .iter()
            .map(|c| match c {
                Value::String(s) => root.join(s),
                other => root.join(other["name"].as_str().expect("case name")),
            })
            .collect();
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.join("case.json").is_file())
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs
}

fn roots() -> Vec<PathBuf> {
    let mut roots = vec![PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")];
    if let Ok(extra) = std::env::var("AUTONEURAL_VISION_GOLDEN_DIRS") {
        roots.extend(
            extra
                .split(':')
                .filter(|s| !s.is_empty())
                .map(PathBuf::from),
        );
    }
    roots
}

fn max_rel_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(scale > 0.0, "reference is all zeros");
    let err = got
        .iter()
        .zip(want)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    err / scale
}

/// Runs one case; `None` when it has no images or no vision tower.
fn run_case(dir: &Path) -> Option<(f32, String)> {
    let case = read_json(&dir.join("case.json"));
    let num_images = case["num_images"].as_u64().unwrap_or(0) as usize;
    if num_images == 0 {
        return None;
    }
    let model_dir = dir.join("model");
    let config = read_json(&model_dir.join("config.json"));
    let vcfg: VisionConfig = serde_json::from_value(config.get("vision_config")?.clone())
        .unwrap_or_else(|e| panic!("{}: vision_config: {e}", dir.display()));
    let store = WeightStore::open_dir(&model_dir).unwrap();
    let w = Weights::new(Arc::new(store)).pp("model.vision_tower.timm_model");
    let enc =
        MobileNetV5Encoder::load(&vcfg, &w).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut tokens: Vec<f32> = Vec::new();
    let mut sizes = Vec::new();
    let t0 = Instant::now();
    for i in 0..num_images {
        let px = read_f32(&dir.join(format!("pixels_{i}.npy"))).unwrap();
        sizes.push(format!("{}x{}", px.dim(1), px.dim(2)));
        let map = enc.forward(&px, &mut NoObserver).unwrap();
        assert_eq!(
            map.shape(),
            &[
                enc.out_channels(),
                vcfg.msfa_output_resolution,
                vcfg.msfa_output_resolution
            ]
        );
        let t: Tensor = enc.feature_tokens(&map).unwrap();
        assert_eq!(t.shape(), &[enc.tokens_per_image(), enc.out_channels()]);
        tokens.extend_from_slice(t.data());
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let want = read_f32(&dir.join("vision_features.npy")).unwrap();
    assert_eq!(
        want.shape(),
        &[num_images * enc.tokens_per_image(), enc.out_channels()],
        "{}: vision_features.npy shape",
        dir.display()
    );
    let err = max_rel_err(&tokens, want.data());
    let info = format!(
        "{} blocks, images {}, {:.2}s",
        enc.num_blocks(),
        sizes.join(","),
        elapsed
    );
    Some((err, info))
}

#[test]
fn vision_features_match_timm() {
    let mut results = Vec::new();
    for root in roots() {
        for dir in case_dirs(&root) {
            if !dir.join("case.json").is_file() {
                eprintln!("skipping {} (no case.json yet)", dir.display());
                continue;
            }
            if let Some((err, info)) = run_case(&dir) {
                println!(
                    "vision golden {:<40} max rel err {err:.3e}  ({info})",
                    dir.file_name().unwrap().to_string_lossy()
                );
                results.push((dir, err));
            }
        }
    }
    if results.is_empty() {
        eprintln!("no vision golden cases found (run python/make_golden.py)");
    }
    let bad: Vec<_> = results
        .iter()
        .filter(|(_, e)| e.is_nan() || *e > TOLERANCE)
        .collect();
    assert!(bad.is_empty(), "cases above {TOLERANCE}: {bad:?}");
}
