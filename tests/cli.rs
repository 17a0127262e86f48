//! The `autoneural` binary: main paths work and bad input gives a one-line error with a non-zero
//! exit, never a panic.

mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_autoneural"))
}

fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("spawn autoneural")
}

/// A golden case with images, and one without.
fn image_case() -> Case {
    cases()
        .iter()
        .map(|n| Case::load(n))
        .find(|c| c.num_images() == 1)
        .expect("a golden case with one image")
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn dump_writes_the_documented_files_matching_the_reference() {
    let case = image_case();
    let out_dir = tempfile::tempdir().unwrap();
    let ids: Vec<String> = case
        .ids("prompt_ids")
        .iter()
        .map(|i| i.to_string())
        .collect();
    let out = run(&[
        "dump",
        "--model",
        &s(&case.model_dir()),
        "--pixels",
        &s(&case.dir.join("pixels_0.npy")),
        "--tokens",
        &ids.join(","),
        "--out",
        &s(out_dir.path()),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (file, golden) in [
        ("pixels.npy", "pixels_0.npy"),
        ("vision_features.npy", "vision_features.npy"),
        ("image_embeddings.npy", "image_embeddings.npy"),
        ("logits.npy", "logits.npy"),
    ] {
        let got = autoneural::npy::read_f32(&out_dir.path().join(file)).unwrap();
        let err = max_rel_err(&got, &case.npy(golden));
        assert!(err <= TOL, "{file}: rel err {err}");
    }
}

#[test]
fn run_json_reports_tokens_and_timings() {
    let case = image_case();
    let ids: Vec<String> = case
        .ids("prompt_ids")
        .iter()
        .map(|i| i.to_string())
        .collect();
    let out = run(&[
        "run",
        "--model",
        &s(&case.model_dir()),
        "--pixels",
        &s(&case.dir.join("pixels_0.npy")),
        "--tokens",
        &ids.join(","),
        "--max-tokens",
        "4",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tokens: Vec<u32> = v["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect();
    let want = case.ids("generated_ids");
    // Greedy, stops at EOS at the latest: a prefix of the reference continuation.
    assert!(!tokens.is_empty() && tokens.len() <= 4);
    assert_eq!(tokens[..], want[..tokens.len()]);
    for key in [
        "time_to_first_token_s",
        "prefill_tokens_per_s",
        "decode_tokens_per_s",
    ] {
        assert!(v["timings"][key].as_f64().unwrap() >= 0.0, "{key}");
    }
}

#[test]
fn inspect_reports_kv_cache_for_attention_layers_only() {
    let case = image_case();
    let out = run(&[
        "inspect",
        "--model",
        &s(&case.model_dir()),
        "--json",
        "--context",
        "1000",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(case.model_dir().join("config.json")).unwrap(),
    )
    .unwrap();
    let t = &cfg["text_config"];
    let attn = v["language"]["attention_layers"].as_u64().unwrap();
    let kv_heads = t["num_key_value_heads"].as_u64().unwrap();
    let head_dim = t["head_dim"]
        .as_u64()
        .unwrap_or(t["hidden_size"].as_u64().unwrap() / t["num_attention_heads"].as_u64().unwrap());
    // K and V, f32, attention layers only.
    assert_eq!(
        v["kv_cache_bytes_per_token_f32"].as_u64().unwrap(),
        attn * 2 * kv_heads * head_dim * 4
    );
    assert_eq!(
        v["kv_cache_bytes_f32"].as_u64().unwrap(),
        attn * 2 * kv_heads * head_dim * 4 * 1000
    );
    let total = v["params"]["total"].as_u64().unwrap();
    assert_eq!(
        total,
        v["params"]["vision"].as_u64().unwrap()
            + v["params"]["connector"].as_u64().unwrap()
            + v["params"]["language"].as_u64().unwrap()
    );
}

fn json_of(args: &[&str]) -> serde_json::Value {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `graph` lists every node with MACs and bytes, and its parameter totals are exactly `inspect`'s,
/// for the trained model and for the real 1.5B layout.
#[test]
fn graph_lists_nodes_and_matches_inspect_parameters() {
    let trained = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/autoneural-cockpit-tiny");
    let trained = s(&trained);
    for source in [
        ["--model", trained.as_str()],
        ["--preset", "autoneural-1.5b"],
    ] {
        let g = json_of(&[&["graph", "--json"][..], &source[..]].concat());
        let i = json_of(&[&["inspect", "--json"][..], &source[..]].concat());
        for (gk, ik) in [
            ("vision", "vision"),
            ("connector", "connector"),
            ("text", "language"),
            ("total", "total"),
        ] {
            assert_eq!(g["params"][gk], i["params"][ik], "{source:?} {gk}");
        }
        assert!(
            g["params"]["total"].as_u64().unwrap() > 1_000_000,
            "{source:?}"
        );
        let sections = g["sections"].as_array().unwrap();
        let passes: Vec<&str> = sections
            .iter()
            .map(|s| s["pass"].as_str().unwrap())
            .collect();
        assert_eq!(
            passes,
            ["forward", "forward", "prefill", "decode"],
            "{source:?}"
        );
        for sec in sections {
            let nodes = sec["nodes"].as_array().unwrap();
            assert!(nodes.len() > 2, "{source:?}");
            let sum = |k: &str| nodes.iter().map(|n| n[k].as_u64().unwrap()).sum::<u64>();
            assert_eq!(sum("macs"), sec["total"]["macs"].as_u64().unwrap());
            assert!(sum("macs") > 0 && sum("weight_bytes") > 0 && sum("output_bytes") > 0);
            // Each weight once, as f32.
            assert_eq!(
                sec["weight_bytes"].as_u64().unwrap(),
                4 * sec["params"].as_u64().unwrap()
            );
        }
        // Prefill of 128 tokens from an empty state, a decode step at position 4095.
        let (prefill, decode) = (&sections[2], &sections[3]);
        assert_eq!(
            (prefill["seq"].as_u64(), prefill["past"].as_u64()),
            (Some(128), Some(0))
        );
        assert_eq!(
            (decode["seq"].as_u64(), decode["past"].as_u64()),
            (Some(1), Some(4095))
        );
        let head = decode["nodes"].as_array().unwrap().last().unwrap();
        assert_eq!(head["name"], "lm_head");
        assert_eq!(
            head["output_symbolic"].as_str().unwrap().split(',').next(),
            Some("[T")
        );
        assert_eq!(head["output"][0], 1);
        assert!(decode["total"]["state_read_bytes"].as_u64().unwrap() > 0);
    }
    // The table names every node with its op and the parameter line inspect prints.
    let out = run(&["graph", "--preset", "autoneural-1.5b", "--part", "text"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("layers.2.self_attn.sdpa") && text.contains("cached_attention"));
    assert!(text.contains("= 1,170,340,608"), "{text}");
}

#[test]
fn missing_model_directory() {
    let out = run(&["run", "--model", "/nonexistent/model", "--prompt", "hi"]);
    assert_fails_with(&out, "/nonexistent/model");
}

#[test]
fn missing_weights_file() {
    let case = image_case();
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&case.model_dir(), tmp.path());
    for e in std::fs::read_dir(tmp.path()).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "safetensors")
            || p.to_string_lossy().ends_with("index.json")
        {
            std::fs::remove_file(p).unwrap();
        }
    }
    let out = run(&["run", "--model", &s(tmp.path()), "--prompt", "hi"]);
    assert_fails_with(&out, "model.safetensors");
}

#[test]
fn corrupt_weights_file() {
    let case = image_case();
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&case.model_dir(), tmp.path());
    let st = tmp.path().join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    std::fs::write(&st, &bytes[..bytes.len() / 2]).unwrap();
    let out = run(&["run", "--model", &s(tmp.path()), "--prompt", "hi"]);
    assert_fails_with(&out, "model.safetensors");
    std::fs::write(&st, b"\x05\x00\x00\x00\x00\x00\x00\x00{{{{{").unwrap();
    let out = run(&["run", "--model", &s(tmp.path()), "--prompt", "hi"]);
    assert_fails_with(&out, "safetensors");
}

/// Rewrites the model's config.json through `edit`.
fn with_config(edit: impl Fn(&mut serde_json::Value)) -> tempfile::TempDir {
    let case = image_case();
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&case.model_dir(), tmp.path());
    let p = tmp.path().join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&p, serde_json::to_string(&v).unwrap()).unwrap();
    tmp
}

#[test]
fn unknown_block_string() {
    let tmp =
        with_config(|v| v["vision_config"]["block_strings"][0][0] = "xx_r1_k3_s2_e4_c16".into());
    let out = run(&["run", "--model", &s(tmp.path()), "--prompt", "hi"]);
    assert_fails_with(&out, "xx_r1_k3_s2_e4_c16");
}

#[test]
fn tensor_with_the_wrong_shape_or_missing() {
    // A wider hidden size than the checkpoint holds: every text tensor has the wrong shape.
    let tmp = with_config(|v| {
        let h = v["text_config"]["hidden_size"].as_u64().unwrap();
        v["text_config"]["hidden_size"] = (h * 2).into();
    });
    let out = run(&["run", "--model", &s(tmp.path()), "--prompt", "hi"]);
    assert_fails_with(&out, "shape");
    // One more layer than the checkpoint has: a missing tensor.
    let tmp = with_config(|v| {
        let t = &mut v["text_config"];
        let n = t["num_hidden_layers"].as_u64().unwrap();
        t["num_hidden_layers"] = (n + 1).into();
        if let Some(types) = t["layer_types"].as_array_mut() {
            types.push("conv".into());
        }
    });
    let out = run(&["run", "--model", &s(tmp.path()), "--prompt", "hi"]);
    assert_fails_with(&out, "missing tensor");
}

#[test]
fn unreadable_image_and_wrong_pixels_shape() {
    let case = image_case();
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.png");
    std::fs::write(&bad, b"this is not a png").unwrap();
    let out = run(&[
        "run",
        "--model",
        &s(&case.model_dir()),
        "--image",
        &s(&bad),
        "--prompt",
        "hi",
    ]);
    assert_fails_with(&out, "bad.png");
    let out = run(&[
        "run",
        "--model",
        &s(&case.model_dir()),
        "--image",
        "/nonexistent.png",
        "--prompt",
        "hi",
    ]);
    assert_fails_with(&out, "nonexistent.png");
    let npy = tmp.path().join("p.npy");
    autoneural::npy::write_f32(&npy, &autoneural::Tensor::zeros(&[4, 8, 8])).unwrap();
    let out = run(&[
        "run",
        "--model",
        &s(&case.model_dir()),
        "--pixels",
        &s(&npy),
        "--prompt",
        "hi",
    ]);
    assert_fails_with(&out, "[3, H, W]");
}

#[test]
fn image_placeholder_count_must_match_images() {
    let case = image_case();
    let px = s(&case.dir.join("pixels_0.npy"));
    let out = run(&[
        "run",
        "--model",
        &s(&case.model_dir()),
        "--pixels",
        &px,
        "--prompt",
        "<image> and <image>",
    ]);
    assert_fails_with(&out, "placeholder");
    // Literal tokens without image slots, but an image given.
    let out = run(&[
        "run",
        "--model",
        &s(&case.model_dir()),
        "--pixels",
        &px,
        "--tokens",
        "1,6,7",
    ]);
    assert_fails_with(&out, "image tokens");
}

#[test]
fn prompt_longer_than_context() {
    let case = image_case();
    let out = run(&[
        "run",
        "--model",
        &s(&case.model_dir()),
        "--prompt",
        "hello there",
        "--context",
        "4",
    ]);
    assert_fails_with(&out, "context");
}

#[test]
fn out_of_vocabulary_token_id() {
    let case = image_case();
    let out = run(&[
        "run",
        "--model",
        &s(&case.model_dir()),
        "--tokens",
        "1,99999999",
    ]);
    assert_fails_with(&out, "99999999");
}

#[test]
fn tensor_with_an_unsupported_dtype() {
    use safetensors::tensor::TensorView;
    let case = image_case();
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&case.model_dir(), tmp.path());
    let path = tmp.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let target = "model.multi_modal_projector.linear_1.bias";
    let mut owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(name, v)| (name, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    let entry = owned
        .iter_mut()
        .find(|t| t.0 == target)
        .expect("projector bias");
    // Same shape, stored as int32 (4 bytes per element, like f32).
    let n: usize = entry.2.iter().product();
    entry.1 = safetensors::Dtype::I32;
    entry.3 = vec![0u8; n * 4];
    let views: Vec<(String, TensorView)> = owned
        .iter()
        .map(|(name, dt, shape, data)| {
            (
                name.clone(),
                TensorView::new(*dt, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
    let out = run(&["run", "--model", &s(tmp.path()), "--prompt", "hi"]);
    assert_fails_with(&out, "unsupported dtype");
}

#[test]
fn oversized_or_non_finite_pixels() {
    let case = image_case();
    let tmp = tempfile::tempdir().unwrap();
    let big = tmp.path().join("big.npy");
    autoneural::npy::write_f32(&big, &autoneural::Tensor::zeros(&[3, 4000, 8])).unwrap();
    let out = run(&[
        "run",
        "--model",
        &s(&case.model_dir()),
        "--pixels",
        &s(&big),
        "--prompt",
        "hi",
    ]);
    assert_fails_with(&out, "input limit");
    let nan = tmp.path().join("nan.npy");
    autoneural::npy::write_f32(
        &nan,
        &autoneural::Tensor::new(&[3, 1, 1], vec![0.0, f32::NAN, 0.0]).unwrap(),
    )
    .unwrap();
    let out = run(&[
        "run",
        "--model",
        &s(&case.model_dir()),
        "--pixels",
        &s(&nan),
        "--prompt",
        "hi",
    ]);
    assert_fails_with(&out, "NaN");
}

/// The baseline's bad inputs get the same one-line errors: an unknown `model_type` (top level or
/// the InternVL text model), an image size that is no whole patch grid, pixels of another size,
/// and tensors the checkpoint lacks.
#[test]
fn baseline_bad_input() {
    let case = Case::load("internvl_layernorm_p8");
    let edited = |edit: &dyn Fn(&mut serde_json::Value)| {
        let tmp = tempfile::tempdir().unwrap();
        copy_dir(&case.model_dir(), tmp.path());
        let p = tmp.path().join("config.json");
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        edit(&mut v);
        std::fs::write(&p, serde_json::to_string(&v).unwrap()).unwrap();
        tmp
    };
    let run_on = |dir: &Path| run(&["run", "--model", &s(dir), "--prompt", "hi"]);

    let tmp = edited(&|v| v["model_type"] = "internvl_chat".into());
    assert_fails_with(
        &run_on(tmp.path()),
        "unsupported model_type `internvl_chat`",
    );
    let tmp = edited(&|v| v["text_config"]["model_type"] = "qwen2".into());
    assert_fails_with(&run_on(tmp.path()), "\"qwen2\"");
    let tmp = edited(&|v| v["vision_config"]["image_size"] = serde_json::json!([60, 60]));
    assert_fails_with(&run_on(tmp.path()), "not a multiple of the patch size 8");
    let tmp = edited(&|v| v["vision_config"]["image_size"] = serde_json::json!([64, 48]));
    assert_fails_with(&run_on(tmp.path()), "only square images");
    let tmp = edited(&|v| {
        let n = v["vision_config"]["num_hidden_layers"].as_u64().unwrap();
        v["vision_config"]["num_hidden_layers"] = (n + 1).into();
    });
    assert_fails_with(&run_on(tmp.path()), "missing tensor");

    // 56 px pixels for a 64 px model.
    let other = Case::load("internvl_rms_qknorm_p14");
    let out = run(&[
        "run",
        "--model",
        &s(&case.model_dir()),
        "--pixels",
        &s(&other.dir.join("pixels_0.npy")),
        "--prompt",
        "hi",
    ]);
    assert_fails_with(&out, "takes 64x64 images");
}

/// A model directory whose image processor normalises (InternVL's ImageNet mean/std): pixels
/// are normalised before the encoder, and the integer encoder's pixel edge covers the
/// normalised range instead of clipping it to [0, 1].
#[test]
fn image_processor_normalisation_reaches_the_integer_edge() {
    let case = Case::load("internvl_layernorm_p8");
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("m");
    copy_dir(&case.model_dir(), &model);
    std::fs::write(
        model.join("preprocessor_config.json"),
        r#"{"do_normalize": true, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}"#,
    )
    .unwrap();
    let cal = tmp.path().join("cal");
    std::fs::create_dir(&cal).unwrap();
    for (i, c) in [[0u8, 0, 0], [255, 255, 255], [30, 200, 90]]
        .iter()
        .enumerate()
    {
        image::RgbImage::from_pixel(64, 64, image::Rgb(*c))
            .save(cal.join(format!("{i}.png")))
            .unwrap();
    }
    let q = tmp.path().join("q");
    let out = run(&[
        "quantize",
        "--model",
        &s(&model),
        "--calibration",
        &s(&cal),
        "--out",
        &s(&q),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(q.join("preprocessor_config.json").is_file());
    let graph: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(q.join("graph.json")).unwrap()).unwrap();
    let px = graph["vision"]["values"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "pixels")
        .unwrap();
    let scale = px["elem"]["q"]["scale"].as_f64().unwrap();
    // 16-bit symmetric over the largest normalised magnitude, (1 - 0.406) / 0.225 = 2.64.
    assert!((scale * 32767.0 - 2.64).abs() < 1e-3, "pixel scale {scale}");
    let out = run(&[
        "run",
        "--model",
        &s(&q),
        "--image",
        &s(&cal.join("2.png")),
        "--prompt",
        "hi",
        "--max-tokens",
        "2",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
