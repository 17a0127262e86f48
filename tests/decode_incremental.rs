//! Decode is incremental: after a prefill, one decode step processes exactly one new position in
//! every op (nothing is recomputed for the prompt), conv layers carry a state whose size does not
//! depend on the prompt, and only attention layers keep a KV cache that grows with it.

use autoneural::models::lfm2::{Lfm2Cache, Lfm2Config, Lfm2Model};
use autoneural::observe::{NoObserver, Recorder};
use std::collections::BTreeMap;

fn config() -> Lfm2Config {
    Lfm2Config::from_json(&serde_json::json!({
        "model_type": "lfm2", "vocab_size": 128, "hidden_size": 64, "intermediate_size": 192,
        "num_hidden_layers": 6, "num_attention_heads": 4, "num_key_value_heads": 2,
        "layer_types": ["conv", "conv", "full_attention", "conv", "conv", "full_attention"],
        "max_position_embeddings": 4096, "block_multiple_of": 32
    }))
    .unwrap()
}

/// Shapes of every tensor the model reports during one decode step after a `prompt_len` prefill,
/// plus the cache's (conv state bytes, KV bytes) after the step.
fn decode_step(
    model: &Lfm2Model,
    prompt_len: usize,
) -> (BTreeMap<String, Vec<usize>>, usize, usize) {
    let ids: Vec<u32> = (0..prompt_len as u32).map(|i| (i * 7 + 3) % 128).collect();
    let mut cache = model.new_cache();
    model
        .forward(model.embed(&ids).unwrap(), &mut cache, &mut NoObserver)
        .unwrap();
    let mut rec = Recorder::new(|_: &str| true);
    model
        .forward(model.embed(&[5]).unwrap(), &mut cache, &mut rec)
        .unwrap();
    let shapes = rec
        .tensors
        .into_iter()
        .map(|(k, t)| (k, t.shape().to_vec()))
        .collect();
    (shapes, cache.state_bytes(), cache.kv_bytes())
}

#[test]
fn a_decode_step_costs_the_same_whatever_the_prompt_length() {
    let cfg = config();
    let model = Lfm2Model::random(&cfg, 11).unwrap();
    let (short, state_short, kv_short) = decode_step(&model, 4);
    let (long, state_long, kv_long) = decode_step(&model, 400);

    // Every op saw one row (the new token) and the same shapes for both prompt lengths.
    assert!(!short.is_empty());
    assert_eq!(short, long);
    for (name, shape) in &short {
        assert_eq!(
            shape[0], 1,
            "{name} processed {shape:?} during a decode step"
        );
    }
    // Conv state is fixed: conv layers x hidden x (L_cache - 1) floats.
    assert_eq!(state_short, state_long);
    assert_eq!(state_short, Lfm2Cache::conv_state_bytes(&cfg));
    assert_eq!(state_short, 4 * 64 * 2 * 4);
    // KV grows with the context, for the 2 attention layers only: 2 x (K + V) x 2 heads x 16 dims.
    let per_token = Lfm2Cache::kv_bytes_per_token(&cfg);
    assert_eq!(per_token, 2 * 2 * 2 * 16 * 4);
    assert_eq!(kv_short, 5 * per_token);
    assert_eq!(kv_long, 401 * per_token);
}
