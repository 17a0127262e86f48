//! Decode speed of the float reference path on a real LFM2 shape with random weights (no files):
//! the LFM2 graph built from the config alone, filled by `FloatProgram::random`.
//!
//! ```text
//! cargo run --release --example lfm2_real_decode -- [1.2b|700m|350m] [prompt_tokens] [new_tokens]
//! ```

use autoneural::exec::{FloatProgram, Val};
use autoneural::generate::{argmax, Decoder, FloatDecoder};
use autoneural::graph::builder::FromConfig;
use autoneural::models::lfm2::{self, Lfm2Config};
use autoneural::observe::NoObserver;
use std::time::Instant;

fn main() -> autoneural::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let cfg = match args.get(1).map(String::as_str).unwrap_or("1.2b") {
        "350m" => Lfm2Config::lfm2_350m(),
        "700m" => Lfm2Config::lfm2_700m(),
        "1.2b" => Lfm2Config::lfm2_1_2b(),
        other => {
            return Err(autoneural::Error::input(format!(
                "unknown size `{other}` (350m, 700m or 1.2b)"
            )))
        }
    };
    let prompt: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(16);
    let new: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(8);
    println!("{}", cfg.summary());
    println!("threads: {}", rayon::current_num_threads());

    let t0 = Instant::now();
    let graph = lfm2::graph::build(&cfg, &FromConfig, "model")?;
    println!(
        "graph: {} nodes, {} params",
        graph.nodes.len(),
        graph.param_count()
    );
    let lm = FloatProgram::random(graph, 0)?;
    println!("random init: {:.2} s", t0.elapsed().as_secs_f64());

    let g = &lm.graph;
    let ids: Vec<u32> = (0..prompt as u32).map(|i| 1 + i * 7919 % 65000).collect();
    let embeds = lm
        .run(
            vec![(g.port("ids")?, Val::Ids(ids))],
            &[g.port("embeds")?],
            None,
            &mut NoObserver,
        )?
        .remove(0);
    let mut state = lm.new_state(prompt + new + 1);
    let mut dec = FloatDecoder {
        lm: &lm,
        state: &mut state,
        prompt: Some(embeds),
        obs: &mut NoObserver,
    };
    let t0 = Instant::now();
    let mut logits = dec.prefill()?;
    let prefill = t0.elapsed().as_secs_f64();
    println!(
        "prefill {prompt} tokens: {:.0} ms ({:.1} ms/token)",
        prefill * 1e3,
        prefill * 1e3 / prompt as f64
    );

    let mut generated = Vec::new();
    let mut per_token = Vec::new();
    for _ in 0..new {
        let next = argmax(&logits);
        generated.push(next);
        let t = Instant::now();
        logits = dec.step(next)?;
        per_token.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let mean = per_token.iter().sum::<f64>() / per_token.len().max(1) as f64;
    println!("decode {new} tokens: {mean:.0} ms/token (steps: {per_token:.0?})");
    assert!(logits.iter().all(|v| v.is_finite()));
    println!(
        "state: {} positions, conv windows {} B, kv {} B",
        state.len(),
        state.window_bytes(),
        state.kv_bytes()
    );
    println!("generated ids: {generated:?}");
    Ok(())
}
