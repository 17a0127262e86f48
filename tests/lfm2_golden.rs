//! LFM2 language-model parity with transformers `Lfm2ForCausalLM` on every golden case.
//!
//! For each case the language model is loaded on its own (`model.*` keys for a plain LFM2
//! directory, `model.language_model.*` for AutoNeural) and fed the reference inputs: token
//! embeddings, with the reference `image_embeddings.npy` rows substituted at the `<image>`
//! positions for image cases (so this test does not depend on the vision tower). Checks:
//! - prompt logits from one uncached forward vs `logits.npy` (max|a-b| / max|b| <= 1e-4);
//! - the same logits when the prompt is fed one token at a time through the cache;
//! - greedy decoding (prefill, then one token per step with the cache, never stopping at EOS)
//!   reproduces `generated_ids` exactly.

mod common;

use autoneural::exec::{FloatProgram, SequenceState, Val};
use autoneural::generate::argmax;
use autoneural::models::lfm2::{self, Lfm2Config};
use autoneural::observe::NoObserver;
use autoneural::weights::WeightStore;
use autoneural::Tensor;
use common::*;
use serde_json::Value;

/// The language model's graph program.
struct Lm(FloatProgram);

impl Lm {
    fn embed(&self, ids: &[u32]) -> Tensor {
        self.0.embed(ids).unwrap()
    }
    fn state(&self) -> SequenceState {
        self.0.new_state(1024)
    }
    /// Logits of every row of `x` (input embeddings) after the positions in `state`.
    fn logits(&self, x: Tensor, state: &mut SequenceState) -> Tensor {
        self.0.logits(Val::F(x), state, &mut NoObserver).unwrap()
    }
}

struct Loaded {
    model: Lm,
    image_token_id: u32,
    format: &'static str,
}

fn load(case: &Case) -> Loaded {
    let dir = case.model_dir();
    let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let json: Value = serde_json::from_str(&text).unwrap();
    let (text_json, prefix, format) = match json["model_type"].as_str() {
        Some("lfm2") => (&json, "model", "lfm2"),
        Some("autoneural") => (&json["text_config"], "model.language_model", "autoneural"),
        other => panic!("{}: unexpected model_type {other:?}", case.name),
    };
    let cfg = Lfm2Config::from_json(text_json).unwrap_or_else(|e| panic!("{}: {e}", case.name));
    let store = WeightStore::open_dir(&dir).unwrap();
    let graph = lfm2::graph::build(&cfg, &store, prefix).unwrap();
    let model =
        Lm(FloatProgram::load(graph, &store).unwrap_or_else(|e| panic!("{}: {e}", case.name)));
    let image_token_id = json["image_token_id"].as_u64().unwrap_or(396) as u32;
    Loaded {
        model,
        image_token_id,
        format,
    }
}

/// Prompt embeddings with the reference image embeddings at the `<image>` positions.
fn prompt_embeddings(case: &Case, l: &Loaded, ids: &[u32]) -> Tensor {
    let mut x = l.model.embed(ids);
    if case.num_images() == 0 {
        return x;
    }
    let img = case.npy("image_embeddings.npy");
    let h = x.dim(1);
    assert_eq!(img.dim(1), h, "{}: image embedding width", case.name);
    let slots: Vec<usize> = (0..ids.len())
        .filter(|&i| ids[i] == l.image_token_id)
        .collect();
    assert_eq!(slots.len(), img.dim(0), "{}: image token count", case.name);
    for (row, &pos) in slots.iter().enumerate() {
        x.data_mut()[pos * h..(pos + 1) * h].copy_from_slice(img.row(row));
    }
    x
}

fn rows(t: &Tensor, from: usize, n: usize) -> Tensor {
    let d = t.dim(1);
    Tensor::new(&[n, d], t.data()[from * d..(from + n) * d].to_vec()).unwrap()
}

#[test]
fn lfm2_matches_transformers_on_every_golden_case() {
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for name in cases() {
        let case = Case::load(&name);
        let l = load(&case);
        let m = &l.model;
        let ids = case.ids("prompt_ids");
        let want_logits = case.npy("logits.npy");
        let x = prompt_embeddings(&case, &l, &ids);

        // One forward over the whole prompt.
        let e_full = max_rel_err(&m.logits(x.clone(), &mut m.state()), &want_logits);

        // The same prompt, one token at a time through the sequence state.
        let mut state = m.state();
        let mut step_logits = Vec::with_capacity(want_logits.numel());
        for t in 0..ids.len() {
            step_logits.extend_from_slice(m.logits(rows(&x, t, 1), &mut state).data());
        }
        let step_logits = Tensor::new(want_logits.shape(), step_logits).unwrap();
        let e_step = max_rel_err(&step_logits, &want_logits);

        // Greedy decoding with the cache.
        let want_ids = case.ids("generated_ids");
        let mut state = m.state();
        let n = ids.len();
        let prompt = m.logits(x, &mut state);
        let mut next = argmax(prompt.row(n - 1));
        let mut got_ids = vec![next];
        while got_ids.len() < want_ids.len() {
            next = argmax(m.logits(m.embed(&[next]), &mut state).data());
            got_ids.push(next);
        }
        let greedy_ok = got_ids == want_ids;

        report.push(format!(
            "{name:<24} {:<10} prompt {:>3} images {} logits rel err {e_full:.2e} (token by token {e_step:.2e}) greedy {}/{} {}",
            l.format,
            ids.len(),
            case.num_images(),
            got_ids.iter().zip(&want_ids).take_while(|(a, b)| a == b).count(),
            want_ids.len(),
            if greedy_ok { "match" } else { "MISMATCH" }
        ));
        if e_full > TOL || e_step > TOL {
            failures.push(format!(
                "{name}: logits error {e_full:e} / {e_step:e} > {TOL:e}"
            ));
        }
        if !greedy_ok {
            failures.push(format!(
                "{name}: greedy ids {got_ids:?} != reference {want_ids:?}"
            ));
        }
    }
    eprintln!("{}", report.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
