//! The float graph executor against the hand-written float models: every observed tensor
//! (and every weighted op's reported input) bit-identical, for the prompt and for decode steps,
//! on every golden model and on the trained default; the vision encoder + connector on every
//! golden image and a cockpit photo, and at input sizes the model was not trained at.

mod common;

use autoneural::exec::{FloatProgram, Val};
use autoneural::graph::Graph;
use autoneural::models::legacy::LegacyModel as AutoNeuralModel;
use autoneural::models::lfm2;
use autoneural::models::{connector, mobilenetv5};
use autoneural::observe::{Observer, OpInput};
use autoneural::pipeline::{load_pixels, ImageInput};
use autoneural::Tensor;
use common::{cases, Case};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Records every observed tensor and a digest of every reported input.
#[derive(Default)]
struct Everything {
    tensors: BTreeMap<String, Tensor>,
    inputs: BTreeMap<String, Vec<u32>>,
}

impl Observer for Everything {
    fn observe(&mut self, name: &str, t: &Tensor) {
        assert!(
            self.tensors.insert(name.to_string(), t.clone()).is_none(),
            "`{name}` observed twice"
        );
    }
    fn wants_inputs(&self) -> bool {
        true
    }
    fn observe_input(&mut self, op: &str, input: OpInput<'_>) {
        let bits: Vec<u32> = match input {
            OpInput::Tokens { x, .. } | OpInput::Channels { x, .. } => {
                x.iter().map(|v| v.to_bits()).collect()
            }
            OpInput::Conv { x, .. } => x.data().iter().map(|v| v.to_bits()).collect(),
        };
        self.inputs.insert(op.to_string(), bits);
    }
}

fn assert_same(what: &str, a: &Everything, b: &Everything) {
    let ka: Vec<&String> = a.tensors.keys().collect();
    let kb: Vec<&String> = b.tensors.keys().collect();
    assert_eq!(ka, kb, "{what}: observed names differ");
    for (name, t) in &a.tensors {
        let u = &b.tensors[name];
        assert_eq!(t.shape(), u.shape(), "{what}: `{name}` shape");
        let diff = t
            .data()
            .iter()
            .zip(u.data())
            .position(|(x, y)| x.to_bits() != y.to_bits());
        assert!(diff.is_none(), "{what}: `{name}` differs at {diff:?}");
    }
    // The graph reports every weighted op's input; the old models left the LM head out.
    for (op, bits) in &a.inputs {
        assert_eq!(Some(bits), b.inputs.get(op), "{what}: input of `{op}`");
    }
}

fn model_dirs() -> Vec<(String, PathBuf)> {
    let mut dirs: Vec<(String, PathBuf)> = cases()
        .iter()
        .map(|c| (c.clone(), Case::load(c).model_dir()))
        .collect();
    let trained = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/autoneural-cockpit-tiny");
    dirs.push(("trained".into(), trained));
    dirs
}

fn lm_graph(m: &AutoNeuralModel) -> Graph {
    let root = if m.has_vision() {
        "model.language_model"
    } else {
        "model"
    };
    lfm2::graph::build(&m.config.text, m.store.as_ref(), root).unwrap()
}

#[test]
fn lfm2_graph_is_bit_identical_to_the_float_model() {
    for (name, dir) in model_dirs() {
        let m = AutoNeuralModel::load(&dir).unwrap();
        let prog = FloatProgram::load(lm_graph(&m), &m.store).unwrap();
        let g = &prog.graph;
        let (embeds, logits) = (g.port("embeds").unwrap(), g.port("logits").unwrap());
        let v = m.config.text.vocab_size;
        // A text prompt (the image rows are fed as embeddings either way).
        let ids: Vec<u32> = (0..11u32).map(|i| (i * 37 + 5) % v as u32).collect();
        let lm = &m.language_model;
        let mut old = Everything::default();
        let mut cache = lm.new_cache();
        let hidden = lm
            .forward(lm.embed(&ids).unwrap(), &mut cache, &mut old)
            .unwrap();
        let old_logits = lm.lm_head(&hidden, &mut old);
        let mut new = Everything::default();
        let mut state = prog.new_state(64);
        let x = lm.embed(&ids).unwrap();
        let got = prog
            .run(
                vec![(embeds, Val::F(x))],
                &[logits],
                Some(&mut state),
                &mut new,
            )
            .unwrap();
        assert!(old.tensors.len() > 20 && !old.inputs.is_empty(), "{name}");
        assert_same(&format!("{name} prefill"), &old, &new);
        assert_eq!(got[0].data(), old_logits.data());
        // Decode steps, fed as token ids.
        let mut tok = autoneural::generate::argmax(old_logits.row(ids.len() - 1));
        for step in 0..3 {
            let mut old = Everything::default();
            let h = lm
                .forward(lm.embed(&[tok]).unwrap(), &mut cache, &mut old)
                .unwrap();
            let ol = lm.lm_head(&h, &mut old);
            let mut new = Everything::default();
            let nl = prog
                .run(
                    vec![(g.port("ids").unwrap(), Val::Ids(vec![tok]))],
                    &[logits],
                    Some(&mut state),
                    &mut new,
                )
                .unwrap();
            // The old model observes the embedded token as `embed_tokens` too.
            assert_same(&format!("{name} step {step}"), &old, &new);
            assert_eq!(nl[0].data(), ol.data());
            tok = autoneural::generate::argmax(ol.data());
        }
        assert_eq!(state.len(), ids.len() + 3);
    }
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.data().iter().map(|v| v.to_bits()).collect()
}

const VISION_ROOT: &str = "model.vision_tower.timm_model";

fn vision_graph(m: &AutoNeuralModel, size: (usize, usize)) -> Graph {
    let cfg = m.config.vision.as_ref().unwrap();
    mobilenetv5::graph::build(cfg, m.store.as_ref(), VISION_ROOT, size).unwrap()
}

fn connector_graph(m: &AutoNeuralModel) -> Graph {
    let c = &m.config;
    let v = c.vision.as_ref().unwrap();
    connector::build(
        v.num_features,
        c.projector_hidden_size,
        c.text.hidden_size,
        c.projector_hidden_act,
        m.store.as_ref(),
        "model",
    )
    .unwrap()
}

/// Runs `prog` from port `input` to port `output`.
fn run_ports(
    prog: &FloatProgram,
    input: &str,
    x: Tensor,
    output: &str,
    obs: &mut Everything,
) -> Tensor {
    let g = &prog.graph;
    let (i, o) = (g.port(input).unwrap(), g.port(output).unwrap());
    prog.run(vec![(i, Val::F(x))], &[o], None, obs)
        .unwrap()
        .remove(0)
}

/// Every golden case with images (its `pixels_*.npy`), and the trained default on a photo.
fn image_cases() -> Vec<(String, PathBuf, Vec<Tensor>)> {
    let mut out = Vec::new();
    for name in cases() {
        let case = Case::load(&name);
        if case.num_images() > 0 {
            out.push((name, case.model_dir(), case.pixels()));
        }
    }
    let trained = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/autoneural-cockpit-tiny");
    let config =
        autoneural::models::autoneural::AutoNeuralConfig::from_file(&trained.join("config.json"))
            .unwrap();
    let photo = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/cockpit_road.png");
    let pixels = load_pixels(&config, &[ImageInput::File(photo)]).unwrap();
    out.push(("trained".into(), trained, pixels));
    out
}

#[test]
fn vision_and_connector_graphs_are_bit_identical_to_the_float_model() {
    let mut images = 0;
    for (name, dir, pixels) in image_cases() {
        let m = AutoNeuralModel::load(&dir).unwrap();
        let conn = FloatProgram::load(connector_graph(&m), &m.store).unwrap();
        for (i, px) in pixels.into_iter().enumerate() {
            let what = format!("{name} image {i}");
            let mut old = Everything::default();
            let enc = m.encode_image(&px, &mut old).unwrap();
            let prog =
                FloatProgram::load(vision_graph(&m, (px.dim(1), px.dim(2))), &m.store).unwrap();
            let mut new = Everything::default();
            let features = run_ports(&prog, "pixels", px, "features", &mut new);
            let embeddings = run_ports(&conn, "features", features.clone(), "embeddings", &mut new);
            assert!(old.tensors.len() > 40, "{what}");
            assert!(old.tensors.contains_key("multi_modal_projector.linear_2"));
            assert_same(&what, &old, &new);
            let (ko, kn): (Vec<_>, Vec<_>) =
                (old.inputs.keys().collect(), new.inputs.keys().collect());
            assert_eq!(ko, kn, "{what}: reported inputs");
            assert_eq!(bits(&features), bits(&enc.features), "{what}: features");
            assert_eq!(
                bits(&embeddings),
                bits(&enc.embeddings),
                "{what}: embeddings"
            );
            images += 1;
        }
    }
    assert!(images >= 6, "ran {images} images");
}

/// Vision graphs are built per input size; one for a size the model was not trained at (the
/// MSFA then needs its bilinear resize) matches the float model too, sharing the weights of the
/// graph built first.
#[test]
fn vision_graphs_for_other_sizes_match_and_share_weights() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/autoneural-cockpit-tiny");
    let m = AutoNeuralModel::load(&dir).unwrap();
    let enc = m.vision_tower.as_ref().unwrap();
    let first = FloatProgram::load(vision_graph(&m, (256, 256)), &m.store).unwrap();
    assert!(first.graph.find("msfa.interpolate").is_none());
    for (h, w) in [(320, 320), (250, 190)] {
        let g = vision_graph(&m, (h, w));
        assert!(g.find("msfa.interpolate").is_some(), "{h}x{w}");
        let prog = FloatProgram::with_params_of(g, &first).unwrap();
        let n = 3 * h * w;
        let data = (0..n).map(|i| ((i * 7919) % 2003) as f32 / 1001.5 - 1.0);
        let px = Tensor::new(&[3, h, w], data.collect()).unwrap();
        let mut old = Everything::default();
        let want = enc
            .feature_tokens(&enc.forward(&px, &mut old).unwrap())
            .unwrap();
        let mut new = Everything::default();
        let got = run_ports(&prog, "pixels", px, "features", &mut new);
        let what = format!("{h}x{w}");
        assert_same(&what, &old, &new);
        assert_eq!(old.inputs.len(), new.inputs.len(), "{what}");
        assert_eq!(bits(&got), bits(&want), "{what}");
    }
    // Only graphs declaring the same weights share them.
    assert!(FloatProgram::with_params_of(connector_graph(&m), &first).is_err());
    // The input checks of the float model: an empty size at build time, a wrong channel count
    // when fed.
    let cfg = m.config.vision.as_ref().unwrap();
    let e = mobilenetv5::graph::build(cfg, m.store.as_ref(), VISION_ROOT, (0, 256)).unwrap_err();
    assert!(e.to_string().contains("empty spatial size"), "{e}");
    let px = first.graph.port("pixels").unwrap();
    let feed = vec![(px, Val::F(Tensor::zeros(&[1, 256, 256])))];
    let out = first.graph.port("features").unwrap();
    let e = first
        .run(feed, &[out], None, &mut autoneural::observe::NoObserver)
        .unwrap_err();
    assert!(
        e.to_string().contains("`pixels` must be [3, 256, 256]"),
        "{e}"
    );
}
