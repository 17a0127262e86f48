//! What a batched decode step buys on the engine alone, on a real LFM2 shape with random weights
//! (float32): B sequences at different positions, stepped one after another (B forward passes)
//! or together (`FloatProgram::decode_batch`, one pass), same tokens, same states, and the
//! logits checked equal bit for bit.
//!
//! ```text
//! cargo run --release --example decode_batch -- [350m|700m|1.2b|tiny] [steps]
//! ```
//!
//! `tiny` is the text model of the shipped `models/autoneural-cockpit-tiny` shape (hidden 128,
//! 6 layers): its weights fit in cache, which is the case where batching buys little.

use autoneural::exec::{FloatProgram, SequenceState, Val};
use autoneural::graph::builder::FromConfig;
use autoneural::models::lfm2::{self, Lfm2Config};
use autoneural::observe::NoObserver;
use std::time::Instant;

fn main() -> autoneural::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let cfg = match args.get(1).map(String::as_str).unwrap_or("350m") {
        "350m" => Lfm2Config::lfm2_350m(),
        "700m" => Lfm2Config::lfm2_700m(),
        "1.2b" => Lfm2Config::lfm2_1_2b(),
        "tiny" => Lfm2Config::from_json(&serde_json::json!({
            "model_type": "lfm2", "vocab_size": 384, "hidden_size": 128,
            "intermediate_size": 384, "num_hidden_layers": 6, "num_attention_heads": 4,
            "num_key_value_heads": 2, "max_position_embeddings": 4096,
            "layer_types": ["conv", "conv", "full_attention", "conv", "conv", "full_attention"]
        }))?,
        other => {
            return Err(autoneural::Error::input(format!(
                "unknown size `{other}` (350m, 700m, 1.2b or tiny)"
            )))
        }
    };
    let steps: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(16);
    println!("{}", cfg.summary());
    println!("threads: {}", rayon::current_num_threads());
    let lm = FloatProgram::random(lfm2::graph::build(&cfg, &FromConfig, "model")?, 0)?;
    let vocab = cfg.vocab_size as u32;

    // Prompts of 8, 24, 40 and 56 tokens: every sequence at its own position.
    let prompts = [8usize, 24, 40, 56];
    let mut base: Vec<SequenceState> = Vec::new();
    for (k, &n) in prompts.iter().enumerate() {
        let mut s = lm.new_state(n + steps + 1);
        let ids: Vec<u32> = (0..n as u32)
            .map(|i| (i * 7919 + k as u32) % vocab)
            .collect();
        lm.logits(Val::Ids(ids), &mut s, &mut NoObserver)?;
        base.push(s);
    }
    let token = |step: usize, k: usize| ((step * 31 + k * 101 + 1) as u32) % vocab;
    println!("B  one by one ms/step  batched ms/step  gain");
    for b in 1..=prompts.len() {
        let (mut alone, mut batched) = (base[..b].to_vec(), base[..b].to_vec());
        let (mut t_alone, mut t_batched) = (0.0, 0.0);
        for step in 0..steps {
            let tokens: Vec<u32> = (0..b).map(|k| token(step, k)).collect();
            let t = Instant::now();
            let mut want = Vec::new();
            for (s, &tok) in alone.iter_mut().zip(&tokens) {
                want.push(lm.logits(Val::Ids(vec![tok]), s, &mut NoObserver)?);
            }
            let dt_alone = t.elapsed().as_secs_f64();
            let mut refs: Vec<&mut SequenceState> = batched.iter_mut().collect();
            let t = Instant::now();
            let got = lm.decode_batch(&tokens, &mut refs, &mut NoObserver)?;
            let dt_batched = t.elapsed().as_secs_f64();
            if step > 0 {
                // The first step of each size warms caches and the thread pool.
                t_alone += dt_alone;
                t_batched += dt_batched;
            }
            for (k, w) in want.iter().enumerate() {
                let row = &got.data()[k * w.numel()..(k + 1) * w.numel()];
                assert!(
                    row.iter()
                        .zip(w.data())
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "B = {b}: sequence {k} differs"
                );
            }
        }
        let n = (steps - 1).max(1) as f64;
        println!(
            "{b}  {:>18.2}  {:>15.2}  {:.2}x",
            t_alone * 1e3 / n,
            t_batched * 1e3 / n,
            t_alone / t_batched
        );
    }
    Ok(())
}
