//! The float graph executor against the hand-written float models: every observed tensor
//! (and every weighted op's reported input) bit-identical, for the prompt and for decode steps,
//! on every golden model and on the trained default.

mod common;

use autoneural::exec::{FloatProgram, Val};
use autoneural::graph::Graph;
use autoneural::models::autoneural::AutoNeuralModel;
use autoneural::models::lfm2;
use autoneural::observe::{Observer, OpInput};
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
