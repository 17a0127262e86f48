//! The integer path through the binary: `quantize`, `run`/`dump` on a quantized directory,
//! `--precision`, `report`, and clear errors for bad schemes, calibration sets and artifacts.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_autoneural"))
        .args(args)
        .output()
        .expect("spawn autoneural")
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The random-weight model: it never stops early, so token counts are the budget.
fn random_model() -> String {
    s(&root().join("models/autoneural-tiny-random"))
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Non-zero exit, no panic, one error line mentioning `needle`.
fn fails_with(out: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].contains(needle),
        "`{}` does not mention `{needle}`",
        lines[0]
    );
}

fn calibration_dir(dir: &Path) -> PathBuf {
    let c = dir.join("calib");
    std::fs::create_dir_all(&c).unwrap();
    std::fs::copy(root().join("assets/sample_dashboard.png"), c.join("a.png")).unwrap();
    std::fs::write(
        c.join("prompts.txt"),
        "What speed is shown?\nWhich warning lights are on?\n",
    )
    .unwrap();
    c
}

fn quantize(tmp: &Path, scheme: &str) -> PathBuf {
    quantize_model(tmp, &random_model(), scheme)
}

/// The InternVL baseline's golden model (InternViT + pixel shuffle + projector + Llama).
fn baseline_model() -> String {
    s(&root().join("tests/golden/internvl_layernorm_p8/model"))
}

fn quantize_model(tmp: &Path, model: &str, scheme: &str) -> PathBuf {
    let tag: String = model
        .chars()
        .map(|c| if c.is_alphanumeric() { c } else { '_' })
        .collect();
    let q = tmp.join(format!("q-{scheme}-{tag}"));
    let out = run(&[
        "quantize",
        "--model",
        model,
        "--calibration",
        &s(&calibration_dir(tmp)),
        "--scheme",
        scheme,
        "--out",
        &s(&q),
    ]);
    let text = ok(&out);
    assert!(text.contains("bytes on disk"), "{text}");
    q
}

fn tokens(json: &str) -> Vec<u64> {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(v["path"], "integer");
    v["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect()
}

#[test]
fn quantize_then_run_dump_and_report() {
    let tmp = tempfile::tempdir().unwrap();
    let q = quantize(tmp.path(), "default");
    for f in [
        "config.json",
        "tokenizer.json",
        "quantized.safetensors",
        "graph.json",
    ] {
        assert!(q.join(f).is_file(), "{f}");
    }
    let img = s(&root().join("assets/sample_dashboard.png"));
    let args = [
        "run",
        "--model",
        &s(&q),
        "--image",
        &img,
        "--prompt",
        "What speed is shown?",
        "--max-tokens",
        "6",
        "--json",
    ];
    let a = tokens(&ok(&run(&args)));
    let b = tokens(&ok(&run(&args)));
    let mut one_thread = vec!["--threads", "1"];
    one_thread.extend_from_slice(&args);
    let c = tokens(&ok(&run(&one_thread)));
    assert!(!a.is_empty());
    assert_eq!(a, b);
    assert_eq!(a, c);

    let dump = tmp.path().join("dump");
    ok(&run(&[
        "dump",
        "--model",
        &s(&q),
        "--image",
        &img,
        "--prompt",
        "Hi",
        "--out",
        &s(&dump),
    ]));
    for f in [
        "pixels.npy",
        "vision_features.npy",
        "image_embeddings.npy",
        "logits.npy",
    ] {
        assert!(dump.join(f).is_file(), "{f}");
    }

    let svg = tmp.path().join("r.svg");
    let text = ok(&run(&[
        "report",
        "--model",
        &random_model(),
        "--quantized",
        &s(&q),
        "--images",
        &img,
        "--prompts",
        "What speed is shown?",
        "--svg",
        &s(&svg),
    ]));
    assert!(
        text.contains("vision features (msfa.norm)") && text.contains("LM logits"),
        "{text}"
    );
    assert!(std::fs::read_to_string(&svg).unwrap().starts_with("<svg"));
}

#[test]
fn precision_flag_switches_a_float_model_to_the_integer_path() {
    let img = s(&root().join("assets/sample_dashboard.png"));
    let out = ok(&run(&[
        "run",
        "--model",
        &random_model(),
        "--image",
        &img,
        "--prompt",
        "Hi",
        "--max-tokens",
        "3",
        "--precision",
        "w8a8",
        "--json",
    ]));
    assert_eq!(tokens(&out).len(), 3);
    fails_with(
        &run(&["run", "--prompt", "Hi", "--precision", "w3a5"]),
        "w3a5",
    );
}

#[test]
fn bad_schemes_calibration_sets_and_artifacts() {
    let tmp = tempfile::tempdir().unwrap();
    let calib = calibration_dir(tmp.path());
    let out_dir = s(&tmp.path().join("never"));
    fails_with(
        &run(&[
            "quantize",
            "--calibration",
            &s(&calib),
            "--scheme",
            "vision=w9a16",
            "--out",
            &out_dir,
        ]),
        "w9a16",
    );
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    fails_with(
        &run(&["quantize", "--calibration", &s(&empty), "--out", &out_dir]),
        "empty",
    );
    fails_with(
        &run(&[
            "quantize",
            "--calibration",
            "/nonexistent/calib",
            "--out",
            &out_dir,
        ]),
        "/nonexistent/calib",
    );

    // A quantized directory missing one integer array.
    let q = quantize(tmp.path(), "default");
    let st = q.join("quantized.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    let t = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let victim = t
        .names()
        .into_iter()
        .find(|n| n.starts_with("text.layers.0"))
        .unwrap()
        .to_string();
    let kept: Vec<(String, safetensors::tensor::TensorView)> = t
        .tensors()
        .into_iter()
        .filter(|(n, _)| *n != victim)
        .collect();
    // The header's digests are kept: every remaining array still matches its own, so the
    // error is the missing reference.
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let digests = meta.metadata().clone();
    std::fs::write(&st, safetensors::serialize(kept, digests).unwrap()).unwrap();
    fails_with(&run(&["run", "--model", &s(&q), "--prompt", "Hi"]), &victim);

    // One node's op removed from the graph.
    let q = quantize(tmp.path(), "w8a8");
    let graph_path = q.join("graph.json");
    let text = std::fs::read_to_string(&graph_path).unwrap();
    let mut graph: serde_json::Value = serde_json::from_str(&text).unwrap();
    let node = graph["text"]["nodes"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|n| n["name"] == "embed_tokens")
        .unwrap();
    node.as_object_mut().unwrap().remove("op");
    std::fs::write(&graph_path, serde_json::to_string(&graph).unwrap()).unwrap();
    // The digest of graph.json catches the edit before its structure is read (the structural
    // errors behind it are covered in tests/artifact_v2.rs).
    fails_with(
        &run(&["run", "--model", &s(&q), "--prompt", "Hi"]),
        "graph.json: does not match the digest",
    );

    // A directory written by the previous format (no graph.json): re-quantize.
    std::fs::remove_file(&graph_path).unwrap();
    std::fs::write(q.join("quantized.json"), "{}").unwrap();
    fails_with(
        &run(&["run", "--model", &s(&q), "--prompt", "Hi"]),
        "re-quantize",
    );
}

#[test]
fn inspect_reads_a_quantized_directory_without_float_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let q = quantize(tmp.path(), "default");
    let text = ok(&run(&["inspect", "--model", &s(&q)]));
    assert!(
        text.contains("integer-only, scheme vision=w8a16,connector=w8a16,text=w4a16"),
        "{text}"
    );
    assert!(text.contains("integer path (int16)"), "{text}");
}

/// A 320 px input: the MSFA's 20x20 fused map does not divide the trained model's 8x8 grid, so
/// it is resized bilinearly, which the integer path now does too. The model converts for that size
/// (the lowered encoder holds an integer bilinear resize) and answers on the integer path.
#[test]
fn a_320_px_input_quantizes_and_runs_on_the_integer_path() {
    use autoneural::engine::Engine;
    use autoneural::generate::GenerateOptions;
    use autoneural::pipeline::{ImageInput, PromptInput};
    use autoneural::quant::scheme::Scheme;

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cockpit-320");
    std::fs::create_dir_all(&dir).unwrap();
    let trained = root().join("models/autoneural-cockpit-tiny");
    for f in [
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        std::fs::copy(trained.join(f), dir.join(f)).unwrap();
    }
    let text = std::fs::read_to_string(trained.join("config.json")).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&text).unwrap();
    cfg["vision_config"]["image_size"] = 320.into();
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();

    let engine = Engine::load(&dir).unwrap();
    let image = ImageInput::File(root().join("assets/cockpit_road.png"));
    let pixels = engine.load_pixels(&[image]).unwrap();
    assert_eq!(pixels[0].shape(), [3, 320, 320]);
    let prompt = PromptInput::Chat {
        user: "What colour is the traffic light?".into(),
        system: None,
    };
    let ids = engine.prompt_ids(&prompt, 1).unwrap();
    let scheme = Scheme::parse("default").unwrap();
    let engine = engine.quantize_for(&scheme, &pixels, &ids).unwrap();
    let Engine::Integer(q) = &engine else {
        panic!("expected the integer engine")
    };
    let encoder = &q.model.vision.as_ref().unwrap().encoder.graph;
    let resize = encoder
        .nodes
        .iter()
        .find(|n| n.name == "msfa.interpolate")
        .expect("the 320 px encoder resizes bilinearly");
    assert_eq!(resize.op.kind(), "resize_bilinear");
    let opts = GenerateOptions {
        max_new_tokens: 8,
        stop_tokens: engine.stop_tokens(),
        sampling: Default::default(),
        context: 512,
    };
    let (generation, _) = engine
        .generate(&pixels, &ids, &opts, &mut |_| Ok(()))
        .unwrap();
    assert!(!generation.tokens.is_empty());
    let answer = engine.tokenizer().decode(&generation.tokens).unwrap();
    println!("320 px, integer path: {answer:?}");
}

/// The kernel levels this CPU runs (`AUTONEURAL_KERNELS` values).
fn kernel_levels() -> Vec<&'static str> {
    let mut v = vec!["scalar"];
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx2") {
            v.push("avx2");
        }
        if has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512vnni") {
            v.push("avx512");
        }
    }
    v
}

#[test]
fn every_kernel_level_and_thread_count_gives_identical_outputs() {
    // The whole integer model (vision, connector, LM, greedy answer) at every instruction level
    // the machine has and at 1 and 2 threads: the same bytes, for the schemes that exercise
    // every GEMM arithmetic (grouped int4 x int16 pairs, int8 x int8 quads, grouped int4 x int8);
    // and the InternVL baseline (integer LayerNorm, CLS/positions, pixel shuffle, Llama).
    let tmp = tempfile::tempdir().unwrap();
    let img = s(&root().join("assets/sample_dashboard.png"));
    let runs = [
        (random_model(), "default"),
        (random_model(), "w8a8"),
        (random_model(), "w4a8"),
        (baseline_model(), "default"),
        (baseline_model(), "w8a8"),
    ];
    for (model, scheme) in &runs {
        let (model, scheme) = (model.as_str(), *scheme);
        let q = quantize_model(tmp.path(), model, scheme);
        let mut first: Option<(String, Vec<Vec<u8>>, String)> = None;
        for level in kernel_levels() {
            for threads in ["1", "2"] {
                let what = format!("{model} {scheme} at {level}, {threads} thread(s)");
                let dump = q.with_extension(format!("dump-{level}-{threads}"));
                let run_at = |args: &[&str]| {
                    let out = Command::new(env!("CARGO_BIN_EXE_autoneural"))
                        .env("AUTONEURAL_KERNELS", level)
                        .args(["--threads", threads])
                        .args(args)
                        .output()
                        .unwrap();
                    ok(&out)
                };
                run_at(&[
                    "dump",
                    "--model",
                    &s(&q),
                    "--image",
                    &img,
                    "--prompt",
                    "Hi",
                    "--out",
                    &s(&dump),
                ]);
                let files: Vec<Vec<u8>> =
                    ["vision_features.npy", "image_embeddings.npy", "logits.npy"]
                        .iter()
                        .map(|f| std::fs::read(dump.join(f)).unwrap())
                        .collect();
                let answer = run_at(&[
                    "run",
                    "--model",
                    &s(&q),
                    "--image",
                    &img,
                    "--prompt",
                    "What speed is shown?",
                    "--max-tokens",
                    "8",
                    "--json",
                ]);
                let answer = format!("{:?}", tokens(&answer));
                match &first {
                    None => first = Some((what, files, answer)),
                    Some((w0, f0, a0)) => {
                        assert!(f0 == &files, "{what}: dumped tensors differ from {w0}");
                        assert_eq!(a0, &answer, "{what}: answer differs from {w0}");
                    }
                }
            }
        }
    }
}

#[test]
fn an_unknown_or_unsupported_kernel_level_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_autoneural"))
        .env("AUTONEURAL_KERNELS", "neon9000")
        .args(["inspect", "--model", &random_model()])
        .output()
        .unwrap();
    fails_with(&out, "AUTONEURAL_KERNELS=neon9000 is not a kernel level");
}
