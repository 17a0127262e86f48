//! The NPU cost model from the outside: its memory accounting against what the runtime
//! allocates, its answers on the real architectures' configs, and `autoneural npu`'s errors.

mod common;

use autoneural::engine::calibrate_on_request;
use autoneural::models::autoneural::{AutoNeuralConfig, AutoNeuralModel};
use autoneural::npu::predict::{predict, Scenario, Target};
use autoneural::npu::profile::Profile;
use autoneural::npu::scheme::NpuScheme;
use autoneural::quant::calibrate::{CalibrationObserver, Rounding, DEFAULT_BINS};
use autoneural::quant::int_model::IntModel;
use autoneural::quant::scheme::Scheme;
use autoneural::Tensor;
use common::{assert_fails_with, repo_root, run_cli};

fn scenario(p: &Profile, context: usize) -> Scenario {
    Scenario {
        image_size: 64,
        images: 1,
        prompt_tokens: 8,
        context,
        chunk: 16,
        memory_budget_bytes: p.memory_budget_bytes,
        onchip_budget_bytes: p.onchip_bytes,
    }
}

/// The conv-window and K/V bytes the cost model derives from the graph are what a sequence
/// state allocates: float states (f32) against the `float` scheme, the integer model's states
/// (`i16`) against 16-bit activations, for both trained models (LFM2 and Llama LMs) at several
/// contexts.
#[test]
fn state_bytes_match_what_the_runtime_allocates() {
    let cpu = Profile::load("zen5-2c").unwrap();
    for name in ["autoneural-cockpit-tiny", "internvl-cockpit-tiny"] {
        let dir = repo_root().join("models").join(name);
        let model = AutoNeuralModel::load(&dir).unwrap();
        let target = Target::Model(Box::new(model.config.clone()));
        let size = model.config.vision.as_ref().unwrap().image_size();
        let pixels = Tensor::new(&[3, size, size], vec![0.5; 3 * size * size]).unwrap();
        let ids: Vec<u32> = (0..model.tokens_per_image())
            .map(|_| model.config.image_token_id)
            .chain([10, 11, 12])
            .collect();
        let obs = CalibrationObserver::new(DEFAULT_BINS)
            .unwrap()
            .with_rounding(Rounding::Nearest);
        let stats = calibrate_on_request(&model, &[pixels], &ids, &[], 2, obs).unwrap();
        let int = IntModel::build(&model, &stats, &Scheme::default(), None).unwrap();
        for context in [200, 333, 512] {
            let mut s = scenario(&cpu, context);
            s.image_size = size;
            let float = predict(
                &target,
                &cpu,
                &NpuScheme::parse("float").unwrap(),
                &s,
                false,
            )
            .unwrap();
            let state = model.new_state(context);
            assert_eq!(
                float.state_bytes_at_context as usize,
                state.allocated_bytes(),
                "{name} float at {context}"
            );
            assert_eq!(
                float.state_window_bytes as usize + float.kv_bytes_per_token as usize * context,
                state.allocated_bytes()
            );
            let a16 = predict(
                &target,
                &cpu,
                &NpuScheme::parse("default").unwrap(),
                &s,
                false,
            )
            .unwrap();
            let qstate = int.new_state(context);
            assert_eq!(
                a16.state_bytes_at_context as usize,
                qstate.allocated_bytes(),
                "{name} integer at {context}"
            );
            assert_eq!(2 * a16.state_bytes_at_context, float.state_bytes_at_context);
        }
    }
}

/// Per-token state of the real language models from their configs: LFM2-1.2B keeps K/V in 6 of
/// its 16 layers (8 KV heads x 64), InternLM2-1.8B in all 24 (8 KV heads x 128); at 16 bits.
#[test]
fn real_models_state_per_token() {
    let p = Profile::load("sa8295p").unwrap();
    let s = scenario(&p, 4096);
    let scheme = NpuScheme::parse("default").unwrap();
    let lfm2 = Target::Model(Box::new(
        autoneural::models::presets::preset_config("lfm2-1.2b").unwrap(),
    ));
    let r = predict(&lfm2, &p, &scheme, &s, false).unwrap();
    assert_eq!(r.kv_bytes_per_token, 6 * 2 * 8 * 64 * 2);
    // Ten conv layers, each a [L - 1 = 2, 2048] window.
    assert_eq!(r.state_window_bytes, 10 * 2 * 2048 * 2);
    let llama = Target::Model(Box::new(
        autoneural::models::presets::preset_config("internlm2-1.8b").unwrap(),
    ));
    let mut s = s;
    s.memory_budget_bytes = 2 << 30;
    let r = predict(&llama, &p, &scheme, &s, false).unwrap();
    assert_eq!(r.kv_bytes_per_token, 24 * 2 * 8 * 128 * 2);
    assert_eq!(r.state_window_bytes, 0);
    // The longest context is what the budget leaves after weights, windows and activations.
    let fixed = r.weight_bytes + r.state_window_bytes + r.peak_activation_bytes;
    let c = r.max_context.unwrap() as u64;
    assert!(
        c < 32768,
        "bounded by the budget, not the position limit: {c}"
    );
    assert!(fixed + c * r.kv_bytes_per_token <= s.memory_budget_bytes);
    assert!(fixed + (c + 1) * r.kv_bytes_per_token > s.memory_budget_bytes);
}

/// Any config the engine reads: the shipped models' config.json files, a vision config alone.
#[test]
fn configs_of_every_kind() {
    for name in ["autoneural-cockpit-tiny", "internvl-cockpit-tiny"] {
        let path = repo_root().join("models").join(name).join("config.json");
        let out = run_cli(&["npu", "--config", path.to_str().unwrap(), "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        for key in [
            "vision_ms",
            "prefill_ms",
            "ttft_ms",
            "decode_tokens_per_s",
            "max_context",
        ] {
            assert!(
                j[key].as_f64().is_some_and(|v| v > 0.0),
                "{name}: {key} = {}",
                j[key]
            );
        }
    }
    // InternVL's vision config alone, as transformers writes it.
    let dir = tempfile::tempdir().unwrap();
    let cfg =
        AutoNeuralConfig::from_file(&repo_root().join("models/internvl-cockpit-tiny/config.json"))
            .unwrap();
    assert!(cfg.vision.is_some());
    let raw: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("models/internvl-cockpit-tiny/config.json"))
            .unwrap(),
    )
    .unwrap();
    let mut vision = raw["vision_config"].clone();
    vision["model_type"] = "internvl_vision".into();
    let path = dir.path().join("vision.json");
    std::fs::write(&path, vision.to_string()).unwrap();
    let out = run_cli(&[
        "npu",
        "--config",
        path.to_str().unwrap(),
        "--json",
        "--nodes",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(j["encoder_ms"].as_f64().unwrap() > 0.0);
    assert!(j["connector_ms"].is_null() && j["vision_ms"] == j["encoder_ms"]);
    assert!(j["prefill_ms"].is_null());
    assert!(!j["parts"][0]["nodes"].as_array().unwrap().is_empty());
    // A timm MobileNetV5 config.
    let path = dir.path().join("timm.json");
    std::fs::write(
        &path,
        r#"{"architecture": "mobilenetv5_300m_enc", "num_classes": 0,
            "pretrained_cfg": {"input_size": [3, 768, 768]}}"#,
    )
    .unwrap();
    let out = run_cli(&["npu", "--config", path.to_str().unwrap(), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["image_size"], 768);
}

#[test]
fn bad_input() {
    let cfg = repo_root().join("models/autoneural-cockpit-tiny/config.json");
    let cfg = cfg.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"model_type": "whisper"}"#).unwrap();
    let garbage = dir.path().join("garbage.json");
    std::fs::write(&garbage, "not json").unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["npu", "--preset", "autoneural-1.5b", "--profile", "tpu-v9"],
            "unknown profile",
        ),
        (
            vec!["npu", "--config", bad.to_str().unwrap()],
            "unsupported model_type",
        ),
        (
            vec!["npu", "--config", garbage.to_str().unwrap()],
            "not JSON",
        ),
        (
            vec!["npu", "--config", "/nonexistent/config.json"],
            "nonexistent",
        ),
        (vec!["npu", "--preset", "gpt-5"], "unknown preset"),
        (
            vec!["npu", "--preset", "autoneural-1.5b", "--scheme", "w3a8"],
            "unknown precision",
        ),
        (
            vec![
                "npu",
                "--preset",
                "autoneural-1.5b",
                "--memory-budget",
                "100MiB",
            ],
            "impossible memory budget",
        ),
        (
            vec![
                "npu",
                "--preset",
                "autoneural-1.5b",
                "--memory-budget",
                "lots",
            ],
            "expected a size",
        ),
        (
            vec!["npu", "--config", cfg, "--context", "64"],
            "does not fit a context",
        ),
        (
            vec!["npu", "--preset", "autoneural-1.5b", "--image-size", "0"],
            "at least 1",
        ),
        (
            vec![
                "npu",
                "--preset",
                "autoneural-1.5b",
                "--image-size",
                "99999",
            ],
            "largest image",
        ),
        (
            vec![
                "npu",
                "--preset",
                "internvl2-2b",
                "--profile",
                "zen5-2c",
                "--scheme",
                "f16",
            ],
            "no fp16",
        ),
        (vec!["npu"], "--config"),
    ];
    for (args, needle) in cases {
        let out = run_cli(&args);
        if args.contains(&"--memory-budget") && needle == "expected a size" {
            // clap's own usage error (exit code 2).
            assert!(!out.status.success());
            assert!(String::from_utf8_lossy(&out.stderr).contains(needle));
            continue;
        }
        assert_fails_with(&out, needle);
    }
}

/// `compare` without the real-shaped CPU runs: the trained pair's quantization error and
/// perplexity, the NPU predictions and the published rows, as JSON and charts; refuses to
/// overwrite.
#[test]
fn compare_without_cpu_runs() {
    let dir = tempfile::tempdir().unwrap();
    let charts = dir.path().join("charts");
    let json = dir.path().join("compare.json");
    let args = [
        "compare",
        "--cpu",
        "none",
        "--scenes",
        "3",
        "--charts",
        charts.to_str().unwrap(),
        "--json-out",
        json.to_str().unwrap(),
    ];
    let out = run_cli(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let md = String::from_utf8(out.stdout).unwrap();
    assert!(md.contains("| claim | paper (SA8295P) |"), "{md}");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let claims = r["claims"].as_array().unwrap();
    assert_eq!(claims.len(), 10);
    for c in claims {
        assert!(!c["verdict"].as_str().unwrap().is_empty());
    }
    // Both trained models measured: finite SQNR, perplexities.
    let quant = r["quant"].as_array().unwrap();
    assert_eq!(quant.len(), 2);
    for q in quant {
        let db = q["features_sqnr_db"].as_f64().unwrap();
        assert!(db.is_finite() && db > 20.0, "{q}");
        assert!(q["perplexity_w4a16"].as_f64().unwrap() >= 1.0);
    }
    // Every published row predicted.
    let rows = r["npu_fit"]["rows"].as_array().unwrap();
    assert!(rows.len() >= 20);
    for row in rows {
        assert!(row["predicted_ms"].as_f64().unwrap() > 0.0, "{row}");
    }
    for f in ["npu-fit.svg", "npu-breakdown.svg"] {
        let svg = std::fs::read_to_string(charts.join(f)).unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    }
    // Written files are not replaced without --force.
    assert_fails_with(&run_cli(&args), "already exists");
}
