//! Artifact v2 (`autoneural::artifact`): lowered golden language models round-trip bit for bit
//! (the graphs compare equal and the integer executor gives the same logits before and after),
//! tied and untied heads, and a corrupted or foreign directory is a clear error naming the file,
//! the part and node (and the array key), never a panic.

mod common;

use autoneural::artifact::{self, QuantizedModel, FORMAT_VERSION, V1_MESSAGE};
use autoneural::exec::{FloatProgram, IntProgram, QVal, Val};
use autoneural::graph::qop::QOp;
use autoneural::graph::{Elem, Graph};
use autoneural::models::autoneural::{AutoNeuralConfig, Roots};
use autoneural::observe::NoObserver;
use autoneural::quant::calibrate::{CalibrationObserver, CalibrationStats};
use autoneural::quant::lower::lower;
use autoneural::quant::prepare::elementwise::requantize;
use autoneural::quant::scheme::{Part, Scheme};
use autoneural::quant::tensor::QTensor;
use autoneural::weights::WeightStore;
use autoneural::Tensor;
use common::Case;
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// A golden language model: its directory, config and float program.
struct Lm {
    dir: PathBuf,
    cfg: AutoNeuralConfig,
    prog: FloatProgram,
}

fn lm(case: &str) -> Lm {
    let dir = Case::load(case).model_dir();
    let cfg = AutoNeuralConfig::from_file(&dir.join("config.json")).unwrap();
    let store = WeightStore::open_dir(&dir).unwrap();
    let graph = cfg
        .text
        .build(&store, &Roots::detect(&cfg, &store))
        .unwrap();
    let prog = FloatProgram::load(graph, &store).unwrap();
    Lm { dir, cfg, prog }
}

fn prompt(vocab: usize, n: usize, seed: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (i * 31 + seed * 7 + 5) % vocab as u32)
        .collect()
}

/// Text statistics of the float graph on three prompts.
fn calibrate(m: &Lm) -> CalibrationStats {
    let mut obs = CalibrationObserver::new(2048).unwrap();
    obs.set_part(Part::Text);
    let g = &m.prog.graph;
    for s in 0..3 {
        let ids = prompt(m.cfg.text.vocab_size(), 12, s);
        let mut st = m.prog.new_state(64);
        m.prog
            .run(
                vec![(g.port("ids").unwrap(), Val::Ids(ids))],
                &[g.port("logits").unwrap()],
                Some(&mut st),
                &mut obs,
            )
            .unwrap();
    }
    obs.into_stats()
}

/// The text-only quantized model of `m` under `scheme`.
fn quantize(m: &Lm, stats: &CalibrationStats, scheme: &str) -> QuantizedModel {
    let text = lower(
        &m.prog,
        Part::Text,
        stats,
        &Scheme::parse(scheme).unwrap(),
        None,
        &[],
    )
    .unwrap();
    QuantizedModel {
        format_version: FORMAT_VERSION,
        scheme: scheme.to_string(),
        image_size: None,
        vision: None,
        connector: None,
        image_to_embed: None,
        text,
    }
}

/// Logits of a 9-token prefill and three decode steps.
fn logits(g: &Graph<QOp>, vocab: usize) -> Vec<Vec<i16>> {
    let p = IntProgram::new(g.clone());
    let mut st = p.new_state(64);
    let (ids, out) = (g.port("ids").unwrap(), g.port("logits").unwrap());
    let mut run = |tokens: Vec<u32>| {
        p.run(
            vec![(ids, QVal::Ids(tokens))],
            &[out],
            Some(&mut st),
            &mut NoObserver,
        )
        .unwrap()
        .remove(0)
        .data
    };
    let mut all = vec![run(prompt(vocab, 9, 1))];
    for step in 0..3u32 {
        all.push(run(vec![(step * 13 + 3) % vocab as u32]));
    }
    all
}

#[test]
fn lowered_golden_lms_round_trip_bit_identically() {
    // lfm2_plain_text and text_one_token tie the head to the embeddings; text_long_prompt does not.
    for (case, tied) in [
        ("lfm2_plain_text", true),
        ("text_one_token", true),
        ("text_long_prompt", false),
    ] {
        let m = lm(case);
        let stats = calibrate(&m);
        for scheme in ["default", "w8a8"] {
            let what = format!("{case} {scheme}");
            let q = quantize(&m, &stats, scheme);
            let head = q.text.nodes.iter().find(|n| n.name == "lm_head").unwrap();
            assert_eq!(
                matches!(head.op, QOp::TiedLinear { .. }),
                tied,
                "{what}: head {}",
                head.op.kind()
            );
            let dir = tempfile::tempdir().unwrap();
            let bytes = q.save(dir.path(), &m.dir).unwrap();
            assert!(artifact::is_quantized_dir(dir.path()));
            let (back, cfg) = QuantizedModel::load(dir.path()).unwrap();
            assert!(back == q, "{what}: the loaded model differs");
            assert_eq!(cfg.text.vocab_size(), m.cfg.text.vocab_size());
            let v = m.cfg.text.vocab_size();
            assert_eq!(logits(&back.text, v), logits(&q.text, v), "{what}: logits");
            // Asking for the logits without feeding the ids is an error, not a panic.
            let p = IntProgram::new(back.text.clone());
            let e = p
                .run(
                    vec![],
                    &[p.graph.port("logits").unwrap()],
                    Some(&mut p.new_state(8)),
                    &mut NoObserver,
                )
                .unwrap_err();
            assert!(e.to_string().contains("neither feeds nor computes"), "{e}");

            // The directory: config with the quantization section, tokenizer, arrays by key.
            let c: Value = read_json(&dir.path().join("config.json"));
            assert_eq!(
                c["quantization"],
                json!({"scheme": scheme, "format": "graph", "format_version": 3,
                       "integer_only": true}),
                "{what}"
            );
            assert_eq!(
                dir.path().join("tokenizer.json").is_file(),
                m.dir.join("tokenizer.json").is_file()
            );
            let st = std::fs::read(dir.path().join(artifact::ARRAYS_FILE)).unwrap();
            let st = SafeTensors::deserialize(&st).unwrap();
            let data: usize = st.tensors().iter().map(|(_, t)| t.data().len()).sum();
            assert_eq!(data, bytes, "{what}: array bytes");
            let names = st.names();
            for key in [
                "text.embed_tokens.table.data",
                "text.layers.0.operator_norm.w_mult",
                "text.embedding_norm.w_neg",
            ] {
                assert!(names.contains(&key), "{what}: no `{key}` in {names:?}");
            }
            let wbits = if scheme == "w8a8" {
                Dtype::I8
            } else {
                Dtype::U8
            };
            let lin = names
                .iter()
                .find(|k| k.ends_with("in_proj.weight.data"))
                .expect("a linear weight");
            assert_eq!(st.tensor(lin).unwrap().dtype(), wbits, "{what}: {lin}");
            if !tied {
                assert!(names.contains(&"text.lm_head.weight.data"), "{what}");
            }
            if case == "lfm2_plain_text" && scheme == "default" {
                print_linear_excerpt(dir.path());
            }
        }
    }
}

/// The whole model of every golden vision case (encoder, connector, image-row requantization,
/// LM): saved and loaded equal, and the loaded model encodes the image, embeds the prompt and
/// computes its logits bit for bit as before.
#[test]
fn lowered_golden_vision_models_round_trip_bit_identically() {
    use autoneural::pipeline::{ImageInput, Pipeline, PromptInput};
    use autoneural::quant::calibrate::{calibrate, CalibrationOptions, Rounding};
    use autoneural::quant::calibset::CalibrationSample;
    use autoneural::quant::int_model::{IntModel, IntVision};
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let image = root.join("assets/cockpit_road.png");
    let mut kinds = std::collections::BTreeSet::new();
    for case in common::cases() {
        if Case::load(&case).num_images() == 0 {
            continue;
        }
        let dir = Case::load(&case).model_dir();
        let pipe = Pipeline::load(&dir).unwrap();
        let samples = vec![CalibrationSample {
            image: Some(image.clone()),
            prompt: "What colour is the traffic light?".into(),
        }];
        let opts = CalibrationOptions {
            bins: 2048,
            progress: false,
            system: None,
            rounding: Rounding::Gptq,
        };
        let stats = calibrate(&pipe, &samples, &opts).unwrap();
        let pixels = pipe
            .load_pixels(&[ImageInput::File(image.clone())])
            .unwrap();
        let ids = pipe
            .prompt_ids(
                &PromptInput::Chat {
                    user: "What colour is the traffic light?".into(),
                    system: None,
                },
                1,
            )
            .unwrap();
        for scheme in ["default", "w8a8"] {
            let what = format!("{case} {scheme}");
            let int = IntModel::build(&pipe.model, &stats, &Scheme::parse(scheme).unwrap(), None)
                .unwrap();
            let v = int.vision.as_ref().unwrap();
            let q = QuantizedModel {
                format_version: FORMAT_VERSION,
                scheme: scheme.to_string(),
                image_size: Some(v.image_size),
                vision: Some(v.encoder.graph.clone()),
                connector: Some(v.connector.graph.clone()),
                image_to_embed: Some(v.to_embed.clone()),
                text: int.text.graph.clone(),
            };
            let out = tempfile::tempdir().unwrap();
            q.save(out.path(), &dir).unwrap();
            let (back, cfg) = QuantizedModel::load(out.path()).unwrap();
            assert!(back == q, "{what}: the loaded model differs");
            for (_, g) in back.parts() {
                kinds.extend(g.nodes.iter().map(|n| n.op.kind()));
            }
            let names = read_arrays(out.path());
            let has = |k: &str| names.iter().any(|a| a.0 == k);
            assert!(has("vision.conv_stem.conv.weight.data"), "{what}");
            assert!(
                names.iter().any(|a| a.0.starts_with("connector.")),
                "{what}"
            );
            let loaded = IntModel {
                scheme: Scheme::parse(&back.scheme).unwrap(),
                vision: Some(IntVision {
                    image_size: back.image_size.unwrap(),
                    encoder: IntProgram::new(back.vision.unwrap()),
                    connector: IntProgram::new(back.connector.unwrap()),
                    to_embed: back.image_to_embed.unwrap(),
                }),
                text: IntProgram::new(back.text),
                image_token_id: cfg.image_token_id,
                max_positions: cfg.text.max_position_embeddings(),
            };
            let ea = int.encode_image(&pixels[0], &mut NoObserver).unwrap();
            let eb = loaded.encode_image(&pixels[0], &mut NoObserver).unwrap();
            assert_eq!(ea.features, eb.features, "{what}");
            assert_eq!(ea.embeddings, eb.embeddings, "{what}");
            let xa = int.embed_prompt(&ids, &[ea.embeddings]).unwrap();
            let xb = loaded.embed_prompt(&ids, &[eb.embeddings]).unwrap();
            assert_eq!(xa, xb, "{what}: prompt embeddings");
            let la = int.prompt_logits(xa, &mut NoObserver).unwrap();
            let lb = loaded.prompt_logits(xb, &mut NoObserver).unwrap();
            assert_eq!(la, lb, "{what}: logits");
        }
        // At a size the MSFA cannot pool down to its output grid it resizes bilinearly: lower the
        // encoder (and the connector after it) at 320x320, calibrated there too.
        if case == "vision_all_blocks_256" {
            let what = format!("{case} at 320x320");
            let m = &pipe.model;
            let enc = m.encoder_for(320, 320).unwrap();
            let px = Tensor::new(
                &[3, 320, 320],
                (0..3 * 320 * 320)
                    .map(|i: u64| ((i * 7919) % 2003) as f32 / 2003.0)
                    .collect(),
            )
            .unwrap();
            let mut obs = CalibrationObserver::new(2048).unwrap();
            *obs.stats_mut() = stats.clone();
            obs.set_part(Part::Vision);
            let g = &enc.graph;
            let feed = vec![(g.port("pixels").unwrap(), Val::F(px.clone()))];
            enc.run(feed, &[g.port("features").unwrap()], None, &mut obs)
                .unwrap();
            let stats = obs.into_stats();
            let scheme = Scheme::parse("default").unwrap();
            let int = IntModel::build(m, &stats, &scheme, None).unwrap();
            let encoder = lower(&enc, Part::Vision, &stats, &scheme, None, &[]).unwrap();
            assert!(encoder
                .nodes
                .iter()
                .any(|n| n.op.kind() == "resize_bilinear"));
            let features = encoder.value(encoder.port("features").unwrap()).elem;
            let Elem::Q(features) = features else {
                panic!("float features")
            };
            let fv = m.vision.as_ref().unwrap();
            let input = [(fv.connector.graph.port("features").unwrap(), features)];
            let connector = lower(
                &fv.connector,
                Part::Connector,
                &stats,
                &scheme,
                None,
                &input,
            )
            .unwrap();
            let quant = |g: &Graph<QOp>, role: &str| match g.value(g.port(role).unwrap()).elem {
                Elem::Q(q) => q,
                _ => panic!("float {role}"),
            };
            let to_embed = requantize(
                quant(&connector, "embeddings"),
                quant(&int.text.graph, "embeds"),
            )
            .unwrap();
            let q = QuantizedModel {
                format_version: FORMAT_VERSION,
                scheme: "default".into(),
                image_size: Some(320),
                vision: Some(encoder),
                connector: Some(connector),
                image_to_embed: Some(to_embed),
                text: int.text.graph.clone(),
            };
            let out = tempfile::tempdir().unwrap();
            q.save(out.path(), &dir).unwrap();
            let (back, _) = QuantizedModel::load(out.path()).unwrap();
            assert!(back == q, "{what}: the loaded model differs");
            let taps = read_arrays(out.path())
                .into_iter()
                .find(|a| a.0 == "vision.msfa.interpolate.rows")
                .unwrap();
            assert_eq!((taps.1, taps.2.len()), (Dtype::I64, 2), "{what}");
            kinds.extend(
                back.parts()
                    .iter()
                    .flat_map(|(_, g)| g.nodes.iter().map(|n| n.op.kind())),
            );
            let run = |g: Graph<QOp>| {
                let p = IntProgram::new(g);
                let px_q = QTensor::quantize(&px, quant(&p.graph, "pixels"));
                let (i, o) = (
                    p.graph.port("pixels").unwrap(),
                    p.graph.port("features").unwrap(),
                );
                p.run(vec![(i, QVal::Q(px_q))], &[o], None, &mut NoObserver)
                    .unwrap()
            };
            assert_eq!(
                run(back.vision.unwrap()),
                run(q.vision.unwrap()),
                "{what}: features"
            );
        }
    }
    // Every integer op kind went through the file.
    println!("op kinds: {kinds:?}");
    for k in [
        "embedding",
        "linear",
        "tied_linear",
        "rms_norm",
        "slice",
        "add",
        "mul",
        "lut",
        "causal_conv1d",
        "rope",
        "cached_attention",
        "attention",
        "conv2d",
        "rms_norm_2d",
        "channel_scale",
        "pointwise_to_tokens",
        "pointwise_from_tokens",
        "resize_nearest",
        "resize_bilinear",
        "avg_pool",
        "concat",
        "to_tokens",
    ] {
        assert!(kinds.contains(k), "no `{k}` op in the golden vision models");
    }
}

/// Prints the first linear node of graph.json (for the record).
fn print_linear_excerpt(dir: &Path) {
    let g = read_json(&dir.join(artifact::GRAPH_FILE));
    let node = g["text"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["op"].get("linear").is_some())
        .unwrap();
    println!("{}", serde_json::to_string_pretty(node).unwrap());
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn write_json(p: &Path, v: &Value) {
    std::fs::write(p, serde_json::to_string_pretty(v).unwrap()).unwrap();
}

type Arrays = Vec<(String, Dtype, Vec<usize>, Vec<u8>)>;

fn read_arrays(dir: &Path) -> Arrays {
    let bytes = std::fs::read(dir.join(artifact::ARRAYS_FILE)).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Arrays = st
        .tensors()
        .into_iter()
        .map(|(k, t)| (k, t.dtype(), t.shape().to_vec(), t.data().to_vec()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn write_arrays(dir: &Path, arrays: &Arrays) {
    let views: Vec<(String, TensorView)> = arrays
        .iter()
        .map(|(k, d, s, b)| (k.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let bytes = safetensors::serialize(views, None).unwrap();
    std::fs::write(dir.join(artifact::ARRAYS_FILE), bytes).unwrap();
}

/// A saved artifact to corrupt copies of.
struct Saved {
    dir: tempfile::TempDir,
}

impl Saved {
    fn new() -> Self {
        let m = lm("lfm2_plain_text");
        let q = quantize(&m, &calibrate(&m), "default");
        let dir = tempfile::tempdir().unwrap();
        q.save(dir.path(), &m.dir).unwrap();
        Saved { dir }
    }

    /// A copy of the directory.
    fn copy(&self) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for e in std::fs::read_dir(self.dir.path()).unwrap() {
            let p = e.unwrap().path();
            std::fs::copy(&p, d.path().join(p.file_name().unwrap())).unwrap();
        }
        d
    }

    /// The load error after `edit` on a copy (panics if it loads). The digests catch every edit
    /// first; the error returned is the one of the structural checks behind them (what a
    /// loader without digests, or the fuzz target, would hit).
    fn err(&self, edit: impl FnOnce(&Path)) -> String {
        let d = self.copy();
        edit(d.path());
        let unverified = QuantizedModel::load_without_digests(d.path()).err();
        match QuantizedModel::load(d.path()) {
            Ok(_) => panic!("the edited artifact passed the digest check"),
            // Either the digests caught it, or the file is too broken to reach them.
            Err(e) => assert!(
                e.to_string().contains("digest")
                    || Some(e.to_string()) == unverified.map(|u| u.to_string()),
                "{e}"
            ),
        }
        match QuantizedModel::load_without_digests(d.path()) {
            Ok(_) => panic!("the edited artifact loaded"),
            Err(e) => {
                let e = e.to_string();
                println!("{e}");
                e
            }
        }
    }

    /// The load error after editing graph.json.
    fn json_err(&self, edit: impl FnOnce(&mut Value)) -> String {
        self.err(|d| {
            let p = d.join(artifact::GRAPH_FILE);
            let mut v = read_json(&p);
            edit(&mut v);
            write_json(&p, &v);
        })
    }

    /// The load error after editing the arrays.
    fn arrays_err(&self, edit: impl FnOnce(&mut Arrays)) -> String {
        self.err(|d| {
            let mut a = read_arrays(d);
            edit(&mut a);
            write_arrays(d, &a);
        })
    }
}

fn mentions(e: &str, parts: &[&str]) {
    for p in parts {
        assert!(e.contains(p), "error `{e}` should mention `{p}`");
    }
}

/// The JSON of the first text node whose op is `kind`.
fn node<'v>(g: &'v mut Value, kind: &str) -> &'v mut Value {
    g["text"]["nodes"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|n| n["op"].get(kind).is_some())
        .unwrap()
}

fn array<'a>(a: &'a mut Arrays, suffix: &str) -> &'a mut (String, Dtype, Vec<usize>, Vec<u8>) {
    a.iter_mut().find(|x| x.0.ends_with(suffix)).unwrap()
}

#[test]
fn corrupted_artifacts_are_clear_errors() {
    let s = Saved::new();
    let graph = artifact::GRAPH_FILE;
    let arrays = artifact::ARRAYS_FILE;
    assert!(QuantizedModel::load(s.dir.path()).is_ok());

    // Truncated arrays, truncated or garbled graph.json.
    let e = s.err(|d| {
        let p = d.join(arrays);
        let b = std::fs::read(&p).unwrap();
        std::fs::write(&p, &b[..b.len() - 100]).unwrap();
    });
    mentions(&e, &[arrays]);
    let e = s.err(|d| {
        let p = d.join(graph);
        let b = std::fs::read(&p).unwrap();
        std::fs::write(&p, &b[..b.len() / 2]).unwrap();
    });
    mentions(&e, &[graph]);

    // Unknown fields at every level, and dropped ones.
    let e = s.json_err(|g| g["extra"] = json!(1));
    mentions(&e, &[graph, "unknown field `extra`"]);
    let e = s.json_err(|g| g["text"]["extra"] = json!(1));
    mentions(&e, &[graph, "text: unknown field `extra`"]);
    let e = s.json_err(|g| node(g, "linear")["extra"] = json!(1));
    mentions(&e, &[graph, "text node `", "unknown field `extra`"]);
    let e = s.json_err(|g| node(g, "linear")["op"]["linear"]["extra"] = json!(1));
    mentions(&e, &[graph, "text node `", "unknown field `extra`"]);
    let e = s.json_err(|g| node(g, "linear")["op"]["linear"]["mult"]["extra"] = json!(1));
    mentions(&e, &[graph, "text node `", "unknown field `extra`"]);
    let e = s.json_err(|g| node(g, "rms_norm")["op"]["rms_norm"]["x"]["extra"] = json!(1));
    mentions(&e, &[graph, "text node `", "unknown field `extra`"]);
    let e = s.json_err(|g| {
        node(g, "linear")["op"]["linear"]
            .as_object_mut()
            .unwrap()
            .remove("mult");
    });
    mentions(&e, &[graph, "text node `", "missing field `mult`"]);
    let e = s.json_err(|g| {
        g.as_object_mut().unwrap().remove("scheme");
    });
    mentions(&e, &[graph, "missing field `scheme`"]);
    let e = s.json_err(|g| {
        g["text"].as_object_mut().unwrap().remove("states");
    });
    mentions(&e, &[graph, "text: missing field `states`"]);
    let e = s.json_err(|g| {
        node(g, "linear").as_object_mut().unwrap().remove("output");
    });
    mentions(&e, &[graph, "text node `", "missing field `output`"]);
    let e = s.json_err(|g| g["format_version"] = json!(1));
    mentions(&e, &[graph, "format version 1"]);
    let e = s.json_err(|g| g["scheme"] = json!("bogus"));
    mentions(&e, &[graph, "scheme `bogus`"]);

    // Arrays: missing, extra, wrong dtype, wrong length, reference edited.
    let key = |g: &mut Value| {
        node(g, "linear")["op"]["linear"]["weight"]["data"]["array"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let mut g = read_json(&s.dir.path().join(graph));
    let w = key(&mut g);
    let e = s.arrays_err(|a| a.retain(|x| x.0 != w));
    mentions(&e, &[graph, "text node `", &w, arrays, "missing"]);
    let e = s.arrays_err(|a| a.push(("stray".into(), Dtype::I8, vec![1], vec![0])));
    mentions(&e, &[arrays, "`stray`", "does not reference"]);
    let e = s.arrays_err(|a| array(a, "in_proj.weight.data").1 = Dtype::I8);
    mentions(
        &e,
        &["in_proj.weight.data", arrays, "stored as I8", "expects U8"],
    );
    let e = s.arrays_err(|a| {
        let m = array(a, "in_proj.mult");
        m.1 = Dtype::I64;
        m.2 = vec![m.2[0]];
    });
    mentions(&e, &["in_proj.mult", "stored as I64", "expects I32"]);
    let e = s.arrays_err(|a| {
        let m = array(a, "in_proj.mult");
        m.2[0] -= 1;
        let n = m.2[0] * 8;
        m.3.truncate(n);
    });
    mentions(&e, &["in_proj.mult", arrays, "expects I32"]);
    let e = s.json_err(|g| node(g, "linear")["op"]["linear"]["mult"]["dtype"] = json!("I16"));
    mentions(&e, &["text node `", "mult", "says I16", "holds I32"]);
    let e = s.json_err(|g| node(g, "linear")["op"]["linear"]["mult"]["len"] = json!(3));
    mentions(&e, &["text node `", "_proj.mult", "expects I32 [3, 2]"]);
    let e = s.json_err(|g| node(g, "linear")["op"]["linear"]["mult"]["array"] = json!("nope"));
    mentions(&e, &["text node `", "`nope`", "missing"]);
    let e = s.json_err(|g| {
        let w = key(g);
        node(g, "rms_norm")["op"]["rms_norm"]["w_mult"]["array"] = json!(w)
    });
    mentions(&e, &["text node `", &w]);

    // Values the ops would misbehave on.
    let e = s.arrays_err(|a| {
        let m = array(a, "in_proj.mult");
        m.3[..4].copy_from_slice(&5i32.to_le_bytes());
    });
    mentions(&e, &[graph, "text node `", "in_proj", "mantissa 5"]);
    let e = s.arrays_err(|a| {
        let m = array(a, "in_proj.mult");
        m.3[4..8].copy_from_slice(&i32::MIN.to_le_bytes());
    });
    mentions(&e, &["text node `", "in_proj", "shift"]);
    let e = s.arrays_err(|a| array(a, "in_proj.weight.data").3[0] = 0x88);
    mentions(&e, &["text node `", "in_proj", "-8"]);
    let e = s.arrays_err(|a| {
        let t = array(a, "embed_tokens.table.group_mult");
        t.3[..2].copy_from_slice(&300u16.to_le_bytes());
    });
    mentions(&e, &["text node `embed_tokens`", "group multiplier 300"]);
    let e = s.arrays_err(|a| array(a, "embedding_norm.w_neg").3[0] = 2);
    mentions(&e, &["text node `embedding_norm`", "w_neg", "0/1 flag"]);
    let e = s.arrays_err(|a| {
        let t = array(a, "exp2_table");
        t.3[..4].copy_from_slice(&0i32.to_le_bytes());
    });
    mentions(&e, &["text node `", "exp2_table[0] = 0"]);

    // The graph: a producer/consumer mismatch, a dangling input, a bad state slot, a bad port,
    // a duplicated name, a tied head pointing elsewhere.
    let e = s.json_err(|g| {
        let n = node(g, "linear");
        let zp = n["op"]["linear"]["x"]["zero_point"].as_i64().unwrap();
        n["op"]["linear"]["x"]["zero_point"] = json!(zp + 1);
    });
    mentions(
        &e,
        &["text node `", "(linear)", "quantized as", "prepared for"],
    );
    let e = s.json_err(|g| {
        let out = node(g, "linear")["output"].clone();
        node(g, "embedding")["inputs"] = json!([out]);
    });
    mentions(
        &e,
        &[
            "text node `embed_tokens`",
            "neither a graph input nor computed",
        ],
    );
    let e = s.json_err(|g| node(g, "causal_conv1d")["op"]["causal_conv1d"]["state"] = json!(99));
    mentions(&e, &["text node `", "(causal_conv1d)", "state slot 99"]);
    let e = s.json_err(|g| {
        g["text"]["states"][0]["shape"] = json!([{"fixed": 5}, {"fixed": 7}]);
    });
    mentions(&e, &["text node `", "state slot"]);
    let e = s.json_err(|g| g["text"]["ports"] = json!([["ids", 0]]));
    mentions(&e, &["text", "no `embeds` port"]);
    let e = s.json_err(|g| g["text"]["ports"][0][1] = json!(100000));
    mentions(&e, &["text", "port `ids`"]);
    let e = s.json_err(|g| {
        let name = g["text"]["nodes"][1]["name"].clone();
        g["text"]["nodes"][2]["name"] = name;
    });
    mentions(&e, &["text node `", "used by an earlier node"]);
    let e = s.json_err(|g| node(g, "tied_linear")["op"]["tied_linear"]["table"] = json!(3));
    mentions(
        &e,
        &["text node `lm_head` (tied_linear)", "not an embedding"],
    );
    let e = s.json_err(|g| {
        let n = node(g, "linear");
        n["op"]["linear"]["weight"]["bits"] = json!(17);
    });
    mentions(&e, &["text node `", "bit width 17"]);
}

#[test]
fn graph_json_byte_flips_are_errors_or_valid_models_never_panics() {
    let s = Saved::new();
    let p = s.dir.path().join(artifact::GRAPH_FILE);
    let orig = std::fs::read(&p).unwrap();
    let d = s.copy();
    let target = d.path().join(artifact::GRAPH_FILE);
    let (mut errors, mut loaded) = (0, 0);
    let mut x = 0x9e37_79b9_u64;
    for _ in 0..300 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut b = orig.clone();
        let i = (x % b.len() as u64) as usize;
        b[i] ^= 1 << ((x >> 32) % 8);
        std::fs::write(&target, &b).unwrap();
        match QuantizedModel::load(d.path()) {
            Ok(_) => loaded += 1,
            Err(e) => {
                let e = e.to_string();
                assert!(e.contains(artifact::GRAPH_FILE), "{e}");
                errors += 1;
            }
        }
    }
    println!("300 single-bit flips of graph.json: {errors} errors, {loaded} still valid models");
    // The digest of graph.json catches every flip, even those that would still parse.
    assert_eq!(loaded, 0, "{errors} errors");
}

#[test]
fn v1_and_foreign_directories() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("quantized.safetensors"), b"").unwrap();
    std::fs::write(d.path().join(artifact::V1_META_FILE), b"{}").unwrap();
    assert!(artifact::is_quantized_dir(d.path()));
    let e = QuantizedModel::load(d.path()).unwrap_err().to_string();
    mentions(&e, &[V1_MESSAGE]);
    // A float model directory is not a quantized one.
    let float = Case::load("lfm2_plain_text").model_dir();
    assert!(!artifact::is_quantized_dir(&float));
    let e = QuantizedModel::load(&float).unwrap_err().to_string();
    mentions(&e, &["graph.json"]);
}
