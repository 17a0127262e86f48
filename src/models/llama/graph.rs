//! Llama as a graph: transformers `LlamaForCausalLM.forward` (`modeling_llama.py`), one node per
//! reference op, named like the checkpoint keys below the language model's root.
//!
//! Ports as in the LFM2 graph (`ids`, `embeds`, `hidden`, `logits`), so everything built over a
//! language model (prompt embedding with image rows, generation, calibration, lowering) takes
//! either. Every layer is attention, with post-RoPE keys and values in `Past` state slots.

use super::LlamaConfig;
use crate::error::Result;
use crate::graph::{Dim, Elem, Graph, GraphBuilder, Op, ValueId, WeightSource};
use crate::ops::activation::Activation;

/// Builds the graph of `cfg` whose weights sit below `root` (`model` in a plain Llama
/// checkpoint, `model.language_model` inside an InternVL one); an untied head is read at the
/// full key `head_key` (`lm_head.weight`).
pub fn build(cfg: &LlamaConfig, w: &dyn WeightSource, root: &str, head_key: &str) -> Result<Graph> {
    cfg.validate()?;
    let (v, h, eps) = (cfg.vocab_size, cfg.hidden_size, cfg.rms_norm_eps as f32);
    let mut b = GraphBuilder::new(w, root);
    let ids = b.input("ids", vec![Dim::Seq], Elem::Token);
    let table = b.param("embed_tokens.weight", &[v, h])?;
    let mut x = b.node("embed_tokens", Op::Embedding { table }, &[ids])?;
    b.port("ids", ids);
    b.port("embeds", x);
    for i in 0..cfg.num_hidden_layers {
        let p = format!("layers.{i}");
        let n = b.rms_norm(&format!("{p}.input_layernorm"), x, h, eps)?;
        let a = attention(&mut b, cfg, &format!("{p}.self_attn"), n)?;
        let r = b.add(&format!("{p}.residual1"), x, a)?;
        let n = b.rms_norm(&format!("{p}.post_attention_layernorm"), r, h, eps)?;
        let ff = mlp(&mut b, cfg, &format!("{p}.mlp"), n)?;
        x = b.add(&p, r, ff)?;
    }
    let hidden = b.rms_norm("norm", x, h, eps)?;
    let head = if cfg.tie_word_embeddings {
        table
    } else {
        b.param_at(head_key, &[v, h])?
    };
    let logits = b.linear_with("lm_head", hidden, head)?;
    b.port("hidden", hidden);
    b.port("logits", logits);
    Ok(b.finish())
}

/// `LlamaAttention`: GQA, rotate-half RoPE on q and k, causal, scale `head_dim^-0.5`.
fn attention(b: &mut GraphBuilder, cfg: &LlamaConfig, p: &str, x: ValueId) -> Result<ValueId> {
    let (h, nh, nkv, d) = (
        cfg.hidden_size,
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim,
    );
    let bias = cfg.attention_bias;
    let q = b.linear(&format!("{p}.q_proj"), x, nh * d, bias)?;
    let k = b.linear(&format!("{p}.k_proj"), x, nkv * d, bias)?;
    let v = b.linear(&format!("{p}.v_proj"), x, nkv * d, bias)?;
    let o = b.rope_cached_attention(p, [q, k, v], nh, nkv, d, cfg.rope_theta)?;
    b.linear(&format!("{p}.o_proj"), o, h, bias)
}

/// `LlamaMLP` (SwiGLU): `down_proj(silu(gate_proj x) * up_proj x)`.
fn mlp(b: &mut GraphBuilder, cfg: &LlamaConfig, p: &str, x: ValueId) -> Result<ValueId> {
    let (h, ff, bias) = (cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias);
    let gate = b.linear(&format!("{p}.gate_proj"), x, ff, bias)?;
    let up = b.linear(&format!("{p}.up_proj"), x, ff, bias)?;
    let s = b.internal(&format!("{p}.silu"), Op::Act(Activation::Silu), &[gate])?;
    let act = b.mul(&format!("{p}.act"), s, up)?;
    b.linear(&format!("{p}.down_proj"), act, h, bias)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::builder::FromConfig;

    #[test]
    fn internlm2_1_8b_has_its_parameter_count() {
        // baseline-npu-anchors.md A1: 1.51 B in the layer stack plus a 189.5 M head, i.e. the
        // 1.89 B of InternLM2-1.8B (embedding and head untied).
        let cfg = LlamaConfig::internlm2_1_8b();
        let g = build(&cfg, &FromConfig, "model", "lm_head.weight").unwrap();
        let (v, h) = (cfg.vocab_size, cfg.hidden_size);
        let layer = 2 * h * h + 2 * h * (8 * 128) + 3 * h * 8192 + 2 * h;
        assert_eq!(g.param_count(), 2 * v * h + 24 * layer + h);
        assert_eq!(g.param_count(), 1_889_146_880);
        let tied = LlamaConfig {
            tie_word_embeddings: true,
            ..cfg
        };
        let g = build(&tied, &FromConfig, "model", "lm_head.weight").unwrap();
        assert_eq!(g.param_count(), 1_889_146_880 - v * h);
    }
}
