//! Shared helpers of the integration tests: the golden files (`tests/golden/`, produced by
//! `python/make_golden.py` from timm and transformers), the CLI, small model configs.
#![allow(dead_code)]

use autoneural::Tensor;
use serde_json::Value;
use std::path::{Path, PathBuf};

pub fn golden_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// The AutoNeural / LFM2 case names listed in `tests/golden/manifest.json`.
pub fn cases() -> Vec<String> {
    manifest_list("cases")
}

/// The baseline (InternVL, plain Llama) case names.
pub fn baseline_cases() -> Vec<String> {
    manifest_list("baseline_cases")
}

fn manifest_list(key: &str) -> Vec<String> {
    let path = golden_root().join("manifest.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let v: Value = serde_json::from_str(&text).unwrap();
    let list = v.get(key).unwrap_or(&v);
    list.as_array()
        .expect("manifest: a list of cases")
        .iter()
        .map(|c| match c {
            Value::String(s) => s.clone(),
            other => other["name"].as_str().expect("case name").to_string(),
        })
        .collect()
}

pub struct Case {
    pub name: String,
    pub dir: PathBuf,
    pub json: Value,
}

impl Case {
    pub fn load(name: &str) -> Case {
        let dir = golden_root().join(name);
        let text = std::fs::read_to_string(dir.join("case.json")).unwrap();
        Case {
            name: name.to_string(),
            json: serde_json::from_str(&text).unwrap(),
            dir,
        }
    }
    pub fn model_dir(&self) -> PathBuf {
        self.dir.join("model")
    }
    pub fn num_images(&self) -> usize {
        self.json["num_images"].as_u64().unwrap_or(0) as usize
    }
    pub fn ids(&self, key: &str) -> Vec<u32> {
        self.json[key]
            .as_array()
            .unwrap_or_else(|| panic!("{}: case.json has no `{key}`", self.name))
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect()
    }
    pub fn npy(&self, file: &str) -> Tensor {
        autoneural::npy::read_f32(&self.dir.join(file)).unwrap()
    }
    pub fn pixels(&self) -> Vec<Tensor> {
        (0..self.num_images())
            .map(|i| self.npy(&format!("pixels_{i}.npy")))
            .collect()
    }
}

/// max |a - b| / max |b|: the error relative to the reference tensor's scale.
pub fn max_rel_err(got: &Tensor, want: &Tensor) -> f32 {
    assert_eq!(got.shape(), want.shape(), "shape mismatch");
    let scale = want.data().iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let err = got
        .data()
        .iter()
        .zip(want.data())
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(scale > 0.0, "reference tensor is all zeros");
    err / scale
}

/// Concatenates `[n_i, d]` tensors along rows.
pub fn concat_rows(ts: &[Tensor]) -> Tensor {
    let d = ts[0].dim(1);
    let rows: usize = ts.iter().map(|t| t.dim(0)).sum();
    Tensor::new(
        &[rows, d],
        ts.iter().flat_map(|t| t.data().iter().copied()).collect(),
    )
    .unwrap()
}

pub fn exists(p: &Path) -> bool {
    p.exists()
}

/// The float32 parity bound required against the PyTorch references.
pub const TOL: f32 = 1e-4;

/// Asserts a clean failure: non-zero exit, no panic, one `error:` line containing `needle`.
pub fn assert_fails_with(out: &std::process::Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got success; stderr: {stderr}"
    );
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(
        lines[0].to_lowercase().contains(&needle.to_lowercase()),
        "error `{}` does not mention `{needle}`",
        lines[0]
    );
}

/// The source tree (where `models/` and `assets/` are).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs the `autoneural` binary with `args`.
pub fn run_cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_autoneural"))
        .args(args)
        .output()
        .expect("spawn autoneural")
}

/// A path as a command-line argument.
pub fn arg(p: &Path) -> String {
    p.display().to_string()
}

/// A small LFM2 (6 layers: conv, conv, attention, conv, conv, attention; hidden 64, GQA 4/2,
/// vocabulary 128) for the decode tests.
pub fn small_lfm2_config() -> autoneural::models::lfm2::Lfm2Config {
    autoneural::models::lfm2::Lfm2Config::from_json(&serde_json::json!({
        "model_type": "lfm2", "vocab_size": 128, "hidden_size": 64, "intermediate_size": 192,
        "num_hidden_layers": 6, "num_attention_heads": 4, "num_key_value_heads": 2,
        "layer_types": ["conv", "conv", "full_attention", "conv", "conv", "full_attention"],
        "max_position_embeddings": 4096, "block_multiple_of": 32
    }))
    .unwrap()
}
