//! `autoneural export onnx` from Rust: the files decode as ONNX protobuf with every node input
//! defined (a graph input, an initializer or an earlier node's output), the QDQ form carries
//! integer weights behind `DequantizeLinear` and quantized state I/O, and bad requests fail with
//! clear errors. Numerical agreement with the engine is checked in ONNX Runtime by
//! `python/tests/test_onnx_export.py`.

mod common;

use autoneural::engine::observe_request;
use autoneural::export::onnx::emit::act_dtype;
use autoneural::export::onnx::{export_quantized, ExportOptions, FloatParts, QuantParts};
use autoneural::models::autoneural::AutoNeuralModel;
use autoneural::quant::calibrate::{CalibrationObserver, DEFAULT_BINS};
use autoneural::quant::int_model::IntModel;
use autoneural::quant::params::ActQuant;
use autoneural::quant::scheme::Scheme;
use common::{arg as s, assert_fails_with, repo_root as root, run_cli as run};
use onnx_protobuf::{Message, ModelProto};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

fn random_model() -> PathBuf {
    root().join("models/autoneural-tiny-random")
}

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn quantize(tmp: &Path, scheme: &str) -> PathBuf {
    let c = tmp.join("calib");
    std::fs::create_dir_all(&c).unwrap();
    std::fs::copy(root().join("assets/sample_dashboard.png"), c.join("a.png")).unwrap();
    std::fs::write(c.join("prompts.txt"), "What speed is shown?\n").unwrap();
    let q = tmp.join(format!("q-{scheme}"));
    ok(&run(&[
        "quantize",
        "--model",
        &s(&random_model()),
        "--calibration",
        &s(&c),
        "--scheme",
        scheme,
        "--out",
        &s(&q),
    ]));
    q
}

fn load(path: &Path) -> ModelProto {
    ModelProto::parse_from_bytes(&std::fs::read(path).unwrap()).unwrap()
}

/// Every node input is defined before use; returns the op types used.
fn check_wiring(m: &ModelProto) -> Vec<String> {
    let g = m.graph.as_ref().unwrap();
    let mut known: HashSet<&str> = g.input.iter().map(|v| v.name.as_str()).collect();
    known.extend(g.initializer.iter().map(|t| t.name.as_str()));
    let mut ops = Vec::new();
    for n in &g.node {
        for i in &n.input {
            assert!(
                i.is_empty() || known.contains(i.as_str()),
                "{} reads undefined `{i}`",
                n.name
            );
        }
        known.extend(n.output.iter().map(|o| o.as_str()));
        ops.push(n.op_type.clone());
    }
    for o in &g.output {
        assert!(
            known.contains(o.name.as_str()),
            "output {} undefined",
            o.name
        );
    }
    assert_eq!(m.opset_import[0].version, 21);
    ops
}

#[test]
fn float_and_qdq_exports_are_wired_and_typed() {
    let tmp = tempfile::tempdir().unwrap();
    let fl = tmp.path().join("float");
    ok(&run(&[
        "export",
        "onnx",
        "--model",
        &s(&random_model()),
        "--out",
        &s(&fl),
    ]));
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fl.join("export.json")).unwrap()).unwrap();
    assert_eq!(manifest["precision"], "float");
    let parts: Vec<&str> = manifest["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        parts,
        [
            "vision_encoder",
            "connector",
            "embed_tokens",
            "language_model"
        ]
    );
    for p in &parts {
        let ops = check_wiring(&load(&fl.join(format!("{p}.onnx"))));
        assert!(!ops.iter().any(|o| o.contains("Quantize")), "{p}: {ops:?}");
    }
    // Float state, K/V growing from an empty past.
    for st in manifest["states"].as_array().unwrap() {
        assert_eq!(st["dtype"], "float32");
    }

    let q = quantize(tmp.path(), "default");
    let qx = tmp.path().join("qdq");
    ok(&run(&[
        "export",
        "onnx",
        "--model",
        &s(&q),
        "--out",
        &s(&qx),
    ]));
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(qx.join("export.json")).unwrap()).unwrap();
    assert_eq!(manifest["precision"], "qdq");
    let lm = load(&qx.join("language_model.onnx"));
    let ops = check_wiring(&lm);
    assert!(ops.iter().any(|o| o == "QuantizeLinear"));
    let g = lm.graph.as_ref().unwrap();
    // The default scheme's 4-bit language-model weights: int4 initializers behind a
    // DequantizeLinear (blocked when per group).
    let int4: HashSet<&str> = g
        .initializer
        .iter()
        .filter(|t| t.data_type == 22)
        .map(|t| t.name.as_str())
        .collect();
    assert!(!int4.is_empty(), "no int4 weights in the language model");
    assert!(g
        .node
        .iter()
        .any(|n| n.op_type == "DequantizeLinear" && int4.contains(n.input[0].as_str())));
    // 16-bit activations: int16 state I/O.
    for st in manifest["states"].as_array().unwrap() {
        assert_eq!(st["dtype"], "int16", "{st}");
        assert_eq!(st["fill"], 0);
    }
    let vision = load(&qx.join("vision_encoder.onnx"));
    let vops = check_wiring(&vision);
    assert!(vops.iter().any(|o| o == "Conv") && vops.iter().any(|o| o == "DequantizeLinear"));

    // The static form: a prefill and a decode graph over fixed buffers.
    let st = tmp.path().join("static");
    ok(&run(&[
        "export",
        "onnx",
        "--model",
        &s(&q),
        "--out",
        &s(&st),
        "--static",
        "--prefill-chunk",
        "8",
        "--context",
        "64",
    ]));
    for f in ["language_model_prefill.onnx", "language_model_decode.onnx"] {
        let m = load(&st.join(f));
        check_wiring(&m);
        let inputs: Vec<&str> = m
            .graph
            .as_ref()
            .unwrap()
            .input
            .iter()
            .map(|v| v.name.as_str())
            .collect();
        assert!(inputs.contains(&"position") && inputs.contains(&"valid"));
    }
}

#[test]
fn bad_requests_fail_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let out = s(&tmp.path().join("o"));
    let model = s(&random_model());
    assert_fails_with(
        &run(&[
            "export",
            "onnx",
            "--model",
            "/nonexistent/model",
            "--out",
            &out,
        ]),
        "nonexistent",
    );
    assert_fails_with(
        &run(&[
            "export",
            "onnx",
            "--model",
            &model,
            "--out",
            &out,
            "--static",
            "--prefill-chunk",
            "0",
        ]),
        "--prefill-chunk 0",
    );
    assert_fails_with(
        &run(&[
            "export",
            "onnx",
            "--model",
            &model,
            "--out",
            &out,
            "--static",
            "--context",
            "100000000",
        ]),
        "beyond the model's",
    );
    // A non-empty output the command did not write is refused.
    let busy = tmp.path().join("busy");
    std::fs::create_dir_all(&busy).unwrap();
    std::fs::write(busy.join("mine.txt"), "keep").unwrap();
    let r = run(&["export", "onnx", "--model", &model, "--out", &s(&busy)]);
    assert!(!r.status.success());
    assert_eq!(
        std::fs::read_to_string(busy.join("mine.txt")).unwrap(),
        "keep"
    );
    // The output may not be the model itself.
    assert!(
        !run(&["export", "onnx", "--model", &model, "--out", &model])
            .status
            .success()
    );
}

#[test]
fn a_float_part_or_an_odd_activation_width_has_no_qdq_form() {
    let model = AutoNeuralModel::load(&random_model()).unwrap();
    let s_ = model.config.vision.as_ref().unwrap().image_size();
    let px = autoneural::Tensor::new(&[3, s_, s_], vec![0.5; 3 * s_ * s_]).unwrap();
    let n = model.tokens_per_image();
    let ids: Vec<u32> = [1, 2]
        .into_iter()
        .chain(std::iter::repeat_n(model.config.image_token_id, n))
        .chain([3, 4])
        .collect();
    let mut obs = CalibrationObserver::new(DEFAULT_BINS).unwrap();
    observe_request(&model, &[px], &ids, &[], 2, &mut obs).unwrap();
    let q = IntModel::build(&model, &obs.into_stats(), &Scheme::default(), None).unwrap();
    let mut parts = QuantParts::of(&q);
    parts.vision = None;
    parts.connector = None;
    let tmp = tempfile::tempdir().unwrap();
    let e = export_quantized(
        &model.config,
        FloatParts::of(&model),
        &parts,
        &[],
        &tmp.path().join("o"),
        &ExportOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("float part"), "{e}");
    assert!(!tmp.path().join("o").exists());

    let e = act_dtype(&ActQuant {
        scale: 0.1,
        zero_point: 0,
        bits: 12,
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("no ONNX QDQ form"), "{e}");
}
