//! Decode is incremental: after a prefill, one decode step processes exactly one new position in
//! every op (nothing is recomputed for the prompt), conv layers carry a state whose size does not
//! depend on the prompt, and only attention layers keep a KV cache that grows with it. Checked on
//! the float graph and on its integer lowering, which share the same state slots.

mod common;

use autoneural::exec::{FloatProgram, IntProgram, QVal, SequenceState, Val};
use autoneural::graph::builder::FromConfig;
use autoneural::models::lfm2;
use autoneural::observe::{NoObserver, Observer, Recorder};
use autoneural::quant::calibrate::CalibrationObserver;
use autoneural::quant::lower::lower;
use autoneural::quant::scheme::{Part, Scheme};
use std::collections::BTreeMap;

fn ids(n: usize) -> Vec<u32> {
    (0..n as u32).map(|i| (i * 7 + 3) % 128).collect()
}

/// Either executor, fed token ids, returning nothing (the observer sees the ops).
trait Lm {
    fn state(&self, context: usize) -> SequenceState;
    fn feed(&self, ids: &[u32], state: &mut SequenceState, obs: &mut dyn Observer);
}

impl Lm for FloatProgram {
    fn state(&self, context: usize) -> SequenceState {
        self.new_state(context)
    }
    fn feed(&self, ids: &[u32], state: &mut SequenceState, obs: &mut dyn Observer) {
        let g = &self.graph;
        let feed = vec![(g.port("ids").unwrap(), Val::Ids(ids.to_vec()))];
        self.run(feed, &[g.port("logits").unwrap()], Some(state), obs)
            .unwrap();
    }
}

impl Lm for IntProgram {
    fn state(&self, context: usize) -> SequenceState {
        self.new_state(context)
    }
    fn feed(&self, ids: &[u32], state: &mut SequenceState, obs: &mut dyn Observer) {
        let g = &self.graph;
        let feed = vec![(g.port("ids").unwrap(), QVal::Ids(ids.to_vec()))];
        self.run(feed, &[g.port("logits").unwrap()], Some(state), obs)
            .unwrap();
    }
}

/// Shapes of every tensor reported during one decode step after a `prompt_len` prefill, plus the
/// state's (window bytes, KV bytes) after the step.
fn decode_step(lm: &dyn Lm, prompt_len: usize) -> (BTreeMap<String, Vec<usize>>, usize, usize) {
    let mut state = lm.state(prompt_len + 1);
    lm.feed(&ids(prompt_len), &mut state, &mut NoObserver);
    let mut rec = Recorder::new(|_: &str| true);
    lm.feed(&[5], &mut state, &mut rec);
    assert_eq!(state.len(), prompt_len + 1);
    let shapes = rec
        .tensors
        .into_iter()
        .map(|(k, t)| (k, t.shape().to_vec()))
        .collect();
    (shapes, state.window_bytes(), state.kv_bytes())
}

fn check(lm: &dyn Lm, elem_bytes: usize) {
    let (short, state_short, kv_short) = decode_step(lm, 4);
    let (long, state_long, kv_long) = decode_step(lm, 400);
    // Every op saw one row (the new token) and the same shapes for both prompt lengths.
    assert!(short.len() > 40);
    assert_eq!(short, long);
    for (name, shape) in &short {
        assert_eq!(
            shape[0], 1,
            "{name} processed {shape:?} during a decode step"
        );
    }
    // Conv windows are fixed: 4 conv layers x (L_cache - 1 = 2) rows x hidden 64.
    assert_eq!(state_short, state_long);
    assert_eq!(state_short, 4 * 2 * 64 * elem_bytes);
    // K/V grow with the context, for the 2 attention layers only: (K + V) x 2 heads x 16 dims.
    let per_token = 2 * 2 * 2 * 16 * elem_bytes;
    assert_eq!(kv_short, 5 * per_token);
    assert_eq!(kv_long, 401 * per_token);
}

#[test]
fn a_decode_step_costs_the_same_whatever_the_prompt_length() {
    let cfg = common::small_lfm2_config();
    let graph = lfm2::graph::build(&cfg, &FromConfig, "model").unwrap();
    let float = FloatProgram::random(graph, 11).unwrap();
    check(&float, 4);

    // The integer graph keeps the same slots, in i16.
    let mut obs = CalibrationObserver::new(2048).unwrap();
    obs.set_part(Part::Text);
    float.feed(&ids(64), &mut float.state(64), &mut obs);
    let stats = obs.into_stats();
    let scheme = Scheme::parse("text=w8a16").unwrap();
    let int = IntProgram::new(lower(&float, Part::Text, &stats, &scheme, None, &[]).unwrap());
    check(&int, 2);
}
