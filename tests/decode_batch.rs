//! A batched decode step (B sequences, one new token each, one forward pass) gives every
//! sequence the logits, and leaves it the state, of its own one-sequence step, bit for bit: on
//! the float executor (above the 4-row GEMV limit too) and on integer lowerings with 16-bit and
//! 8-bit activations, for sequences at different positions (prompts of different lengths, so
//! their K/V caches differ in length) over several consecutive steps.

mod common;

use autoneural::exec::{FloatProgram, IntProgram, QVal, SequenceState, Val};
use autoneural::graph::builder::FromConfig;
use autoneural::models::lfm2;
use autoneural::observe::NoObserver;
use autoneural::quant::calibrate::CalibrationObserver;
use autoneural::quant::lower::lower;
use autoneural::quant::scheme::{Part, Scheme};

fn ids(n: usize, salt: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (i * 7 + 3 + salt * 11) % 128)
        .collect()
}

/// Prompt lengths of the sequences: all different, so every sequence sits at its own position.
const PROMPTS: [usize; 6] = [3, 17, 40, 9, 1, 25];

/// Either executor as the test needs it: logits as raw bits (f32 bits, or the integers).
trait Lm {
    fn state(&self) -> SequenceState;
    fn step(&self, ids: &[u32], state: &mut SequenceState) -> Vec<u32>;
    /// Logits rows of one batched step.
    fn step_batch(&self, ids: &[u32], states: &mut [&mut SequenceState]) -> Vec<Vec<u32>>;
}

impl Lm for FloatProgram {
    fn state(&self) -> SequenceState {
        self.new_state(64)
    }
    fn step(&self, ids: &[u32], state: &mut SequenceState) -> Vec<u32> {
        let l = self
            .logits(Val::Ids(ids.to_vec()), state, &mut NoObserver)
            .unwrap();
        let v = l.dim(1);
        l.data()[l.numel() - v..]
            .iter()
            .map(|x| x.to_bits())
            .collect()
    }
    fn step_batch(&self, ids: &[u32], states: &mut [&mut SequenceState]) -> Vec<Vec<u32>> {
        let l = self.decode_batch(ids, states, &mut NoObserver).unwrap();
        assert_eq!(l.shape(), &[ids.len(), 128]);
        l.data()
            .chunks_exact(128)
            .map(|r| r.iter().map(|x| x.to_bits()).collect())
            .collect()
    }
}

impl Lm for IntProgram {
    fn state(&self) -> SequenceState {
        self.new_state(64)
    }
    fn step(&self, ids: &[u32], state: &mut SequenceState) -> Vec<u32> {
        let l = self
            .logits(QVal::Ids(ids.to_vec()), state, &mut NoObserver)
            .unwrap();
        l.data[l.data.len() - 128..]
            .iter()
            .map(|&x| x as u16 as u32)
            .collect()
    }
    fn step_batch(&self, ids: &[u32], states: &mut [&mut SequenceState]) -> Vec<Vec<u32>> {
        let l = self.decode_batch(ids, states, &mut NoObserver).unwrap();
        assert_eq!(l.shape, [ids.len(), 128]);
        l.data
            .chunks_exact(128)
            .map(|r| r.iter().map(|&x| x as u16 as u32).collect())
            .collect()
    }
}

/// For B = 1..=max: prefills the first B prompts, then runs 3 decode steps both ways (each
/// sequence alone, and all B in one batched step) and compares logits and states.
fn check(lm: &dyn Lm, max: usize) {
    for b in 1..=max {
        let mut alone: Vec<SequenceState> = PROMPTS[..b]
            .iter()
            .enumerate()
            .map(|(k, &n)| {
                let mut s = lm.state();
                lm.step(&ids(n, k as u32), &mut s);
                s
            })
            .collect();
        let mut batched = alone.clone();
        for step in 0..3u32 {
            let tokens: Vec<u32> = (0..b as u32)
                .map(|k| (k * 29 + step * 5 + 1) % 128)
                .collect();
            let want: Vec<Vec<u32>> = alone
                .iter_mut()
                .zip(&tokens)
                .map(|(s, &t)| lm.step(&[t], s))
                .collect();
            let mut refs: Vec<&mut SequenceState> = batched.iter_mut().collect();
            let got = lm.step_batch(&tokens, &mut refs);
            for k in 0..b {
                assert_eq!(
                    got[k], want[k],
                    "B = {b}, step {step}: sequence {k} (prompt {}) differs",
                    PROMPTS[k]
                );
            }
            assert_eq!(batched, alone, "B = {b}, step {step}: states differ");
            for (k, s) in batched.iter().enumerate() {
                assert_eq!(s.len(), PROMPTS[k] + step as usize + 1);
            }
        }
    }
}

fn float() -> FloatProgram {
    let graph = lfm2::graph::build(&common::small_lfm2_config(), &FromConfig, "model").unwrap();
    FloatProgram::random(graph, 11).unwrap()
}

fn integer(float: &FloatProgram, scheme: &str) -> IntProgram {
    let mut obs = CalibrationObserver::new(2048).unwrap();
    obs.set_part(Part::Text);
    let mut s = float.new_state(64);
    float
        .logits(Val::Ids(ids(64, 0)), &mut s, &mut obs)
        .unwrap();
    let stats = obs.into_stats();
    let scheme = Scheme::parse(scheme).unwrap();
    IntProgram::new(lower(float, Part::Text, &stats, &scheme, None, &[]).unwrap())
}

#[test]
fn float_batched_steps_equal_single_steps_bit_for_bit() {
    // Up to 6: past the 4 rows below which `linear` takes the GEMV path by itself.
    check(&float(), 6);
}

#[test]
fn integer_batched_steps_equal_single_steps_bit_for_bit() {
    let f = float();
    for scheme in ["text=w4a16", "text=w8a8"] {
        check(&integer(&f, scheme), 4);
    }
}

#[test]
fn a_batched_step_takes_one_row_per_state() {
    let f = float();
    let (mut a, mut b) = (f.new_state(8), f.new_state(8));
    let g = &f.graph;
    let (port, logits) = (g.port("ids").unwrap(), g.port("logits").unwrap());
    let feed = vec![(port, Val::Ids(vec![1, 2, 3]))];
    let err = f
        .run_batch(feed, &[logits], &mut [&mut a, &mut b], &mut NoObserver)
        .unwrap_err();
    assert!(err.to_string().contains("one row per sequence"), "{err}");
    assert!(f.decode_batch(&[], &mut [], &mut NoObserver).is_err());
    // A state that is full refuses the step, and nothing moves.
    let mut full = f.new_state(1);
    f.logits(Val::Ids(vec![4]), &mut full, &mut NoObserver)
        .unwrap();
    assert!(f
        .decode_batch(&[1, 2], &mut [&mut a, &mut full], &mut NoObserver)
        .is_err());
    assert_eq!((a.len(), full.len()), (0, 1));
}
