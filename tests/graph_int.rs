//! The lowered integer graph against the hand-written integer twin (`QLfm2Model`): the same
//! calibration statistics and scheme give every observed tensor bit-identical, prefill, decode
//! and chunked prefill, on every golden language model and the trained default.

mod common;

use autoneural::exec::{FloatProgram, IntProgram, QVal, SequenceState};
use autoneural::models::legacy::LegacyModel as AutoNeuralModel;
use autoneural::models::lfm2;
use autoneural::observe::{NoObserver, Observer, Recorder};
use autoneural::quant::calibrate::{CalibrationObserver, CalibrationStats, RangeMethod, Rounding};
use autoneural::quant::lower::lower;
use autoneural::quant::prepare;
use autoneural::quant::scheme::{Part, Scheme};
use common::{cases, Case};
use std::path::Path;

fn models() -> Vec<(String, AutoNeuralModel)> {
    let mut dirs: Vec<(String, std::path::PathBuf)> = cases()
        .iter()
        .map(|c| (c.clone(), Case::load(c).model_dir()))
        .collect();
    dirs.push((
        "trained".into(),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("models/autoneural-cockpit-tiny"),
    ));
    dirs.into_iter()
        .map(|(n, d)| (n, AutoNeuralModel::load(&d).unwrap()))
        .collect()
}

fn prompt(vocab: usize, n: usize, seed: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (i * 31 + seed * 7 + 5) % vocab as u32)
        .collect()
}

/// Text statistics from the float model on three prompts (with every linear's Gram matrix when
/// `rounding` says so).
fn calibrate(m: &AutoNeuralModel, rounding: Rounding) -> CalibrationStats {
    let lm = &m.language_model;
    let mut obs = CalibrationObserver::new(2048)
        .unwrap()
        .with_rounding(rounding);
    obs.set_part(Part::Text);
    for s in 0..3 {
        let x = lm.embed(&prompt(m.config.text.vocab_size, 12, s)).unwrap();
        let h = lm.forward(x, &mut lm.new_cache(), &mut obs).unwrap();
        lm.lm_head(&h, &mut obs);
    }
    obs.into_stats()
}

fn same(what: &str, a: &Recorder<impl Fn(&str) -> bool>, b: &Recorder<impl Fn(&str) -> bool>) {
    let ka: Vec<&String> = a.tensors.keys().collect();
    let kb: Vec<&String> = b.tensors.keys().collect();
    assert_eq!(ka, kb, "{what}: observed names");
    for (n, t) in &a.tensors {
        let u = &b.tensors[n];
        assert_eq!(t.shape(), u.shape(), "{what}: `{n}`");
        let bad = t
            .data()
            .iter()
            .zip(u.data())
            .filter(|(x, y)| x.to_bits() != y.to_bits())
            .count();
        assert_eq!(bad, 0, "{what}: `{n}` differs in {bad} values");
    }
}

fn all() -> Recorder<fn(&str) -> bool> {
    Recorder::new(|_: &str| true)
}

fn run(p: &IntProgram, st: &mut SequenceState, ids: &[u32], obs: &mut dyn Observer) -> Vec<i16> {
    let g = &p.graph;
    let out = p
        .run(
            vec![(g.port("ids").unwrap(), QVal::Ids(ids.to_vec()))],
            &[g.port("logits").unwrap()],
            Some(st),
            obs,
        )
        .unwrap();
    out[0].data.clone()
}

#[test]
fn lowered_lfm2_is_bit_identical_to_the_integer_twin() {
    for (name, m) in models() {
        let root = if m.has_vision() {
            "model.language_model"
        } else {
            "model"
        };
        let graph = lfm2::graph::build(&m.config.text, m.store.as_ref(), root).unwrap();
        let prog = FloatProgram::load(graph, &m.store).unwrap();
        let v = m.config.text.vocab_size;
        for (scheme, rounding) in [
            ("default", Rounding::Gptq),
            ("w8a8", Rounding::Gptq),
            ("text=w8a16", Rounding::GptqAll),
            ("text=w16a16", Rounding::Nearest),
        ] {
            let what = format!("{name} {scheme}");
            let scheme = Scheme::parse(scheme).unwrap();
            let stats = calibrate(&m, rounding);
            let twin = prepare::lfm2::lfm2(&m.language_model, &stats, &scheme, RangeMethod::MinMax)
                .unwrap();
            let int =
                IntProgram::new(lower(&prog, Part::Text, &stats, &scheme, None, &[]).unwrap());
            let ids = prompt(v, 9, 1);
            // Prefill: every observed op.
            let (mut a, mut b) = (all(), all());
            let mut cache = twin.new_cache();
            let h = twin
                .forward(&twin.embed(&ids).unwrap(), &mut cache, &mut a)
                .unwrap();
            let old = twin.lm_head(&h, &mut a);
            let mut st = int.new_state(64);
            let new = run(&int, &mut st, &ids, &mut b);
            assert!(a.tensors.len() > 20, "{what}: the twin reported too little");
            same(&format!("{what} prefill"), &a, &b);
            assert_eq!(old.data, new, "{what}: logits");
            // Three decode steps.
            for step in 0..3u32 {
                let tok = (step * 13 + 3) % v as u32;
                let (mut a, mut b) = (all(), all());
                let h = twin
                    .forward(&twin.embed(&[tok]).unwrap(), &mut cache, &mut a)
                    .unwrap();
                let old = twin.lm_head(&h, &mut a);
                let new = run(&int, &mut st, &[tok], &mut b);
                same(&format!("{what} step {step}"), &a, &b);
                assert_eq!(old.data, new, "{what}: step {step} logits");
            }
            // Chunked prefill gives the same integers as one call.
            let mut whole = int.new_state(64);
            let one = run(&int, &mut whole, &ids, &mut NoObserver);
            let mut st = int.new_state(64);
            let mut chunks = Vec::new();
            for c in [&ids[..2], &ids[2..3], &ids[3..]] {
                chunks.extend(run(&int, &mut st, c, &mut NoObserver));
            }
            assert_eq!(one, chunks, "{what}: chunked prefill");
            assert_eq!(st.slots(), whole.slots(), "{what}: state after chunks");
        }
    }
}

/// The whole integer model (vision + connector + LM lowered from graphs) against the twin
/// `QAutoNeural`, on the same calibration statistics: every observed op of the image encoding and
/// of the prompt bit-identical, for every golden model with vision and the trained default.
#[test]
fn lowered_model_is_bit_identical_to_the_integer_twin() {
    use autoneural::models::autoneural::AutoNeuralModel as GraphModel;
    use autoneural::quant::calibrate::{calibrate, CalibrationOptions};
    use autoneural::quant::calibset::CalibrationSample;
    use autoneural::quant::int_model::IntModel;
    use autoneural::quant::model::QAutoNeural;
    let mut dirs: Vec<(String, std::path::PathBuf)> = cases()
        .iter()
        .filter(|c| Case::load(c).num_images() > 0)
        .map(|c| (c.clone(), Case::load(c).model_dir()))
        .collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    dirs.push((
        "trained".into(),
        root.join("models/autoneural-cockpit-tiny"),
    ));
    let image = root.join("assets/cockpit_road.png");
    for (name, dir) in dirs {
        let pipe = autoneural::pipeline::Pipeline::load(&dir).unwrap();
        let s = pipe.model.config.vision.as_ref().unwrap().image_size;
        // Calibrate on the shipped image resized to the model's input size.
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
        let m: &GraphModel = &pipe.model;
        let pixels = pipe
            .load_pixels(&[autoneural::pipeline::ImageInput::File(image.clone())])
            .unwrap();
        assert_eq!(pixels[0].shape(), [3, s, s]);
        for scheme in ["default", "w8a8"] {
            let what = format!("{name} {scheme}");
            let scheme = Scheme::parse(scheme).unwrap();
            let twin = QAutoNeural::build(m, &stats, &scheme, None).unwrap();
            let new = IntModel::build(m, &stats, &scheme, None).unwrap();
            let (mut a, mut b) = (all(), all());
            let ea = twin.encode_image(&pixels[0], &mut a).unwrap();
            let eb = new.encode_image(&pixels[0], &mut b).unwrap();
            assert!(a.tensors.len() > 20, "{what}");
            same(&format!("{what} vision"), &a, &b);
            assert_eq!(ea.features, eb.features, "{what}");
            assert_eq!(ea.embeddings, eb.embeddings, "{what}");
            let ids = pipe
                .prompt_ids(
                    &autoneural::pipeline::PromptInput::Chat {
                        user: "What colour is the traffic light?".into(),
                        system: None,
                    },
                    1,
                )
                .unwrap();
            let xa = twin.embed_prompt(&ids, &[ea.embeddings]).unwrap();
            let xb = new.embed_prompt(&ids, &[eb.embeddings]).unwrap();
            assert_eq!(xa, xb, "{what}: prompt embeddings");
            let (mut a, mut b) = (all(), all());
            let h = twin
                .text
                .forward(&xa, &mut twin.new_cache(), &mut a)
                .unwrap();
            let la = twin.text.lm_head(&h, &mut a);
            let lb = new.prompt_logits(xb, &mut b).unwrap();
            same(&format!("{what} text"), &a, &b);
            assert_eq!(la, lb, "{what}: logits");
        }
    }
}
