//! LFM2 as a graph: transformers `Lfm2ForCausalLM.forward` (`modeling_lfm2.py`), one node per
//! reference op, named like the checkpoint keys below the language model's root.
//!
//! Ports: `ids` (token ids, `[T]`), `embeds` (`embed_tokens`' output, where image rows are merged
//! in), `hidden` (after `embedding_norm`), `logits`. One graph serves prefill, chunked prefill and
//! decode: rows are `Seq`, conv layers keep a `[L - 1, hidden]` window of `B * x` and attention
//! layers grow post-norm, post-RoPE keys and values.

use super::{LayerType, Lfm2Config};
use crate::error::Result;
use crate::graph::{fixed, Dim, Elem, Graph, GraphBuilder, Op, ValueId, WeightSource};
use crate::ops::activation::Activation;

/// Builds the graph of `cfg` whose weights sit below `root` (`model` for a plain LFM2
/// checkpoint, `model.language_model` inside AutoNeural); an untied `lm_head.weight` is read at
/// the checkpoint root, as transformers does.
pub fn build(cfg: &Lfm2Config, w: &dyn WeightSource, root: &str) -> Result<Graph> {
    build_with_head(cfg, w, root, "lm_head.weight")
}

/// [`build`] with an untied head read at the full key `head_key` (inside a composite saved by
/// transformers 5, `language_model.lm_head.weight`).
pub fn build_with_head(
    cfg: &Lfm2Config,
    w: &dyn WeightSource,
    root: &str,
    head_key: &str,
) -> Result<Graph> {
    cfg.validate()?;
    let (v, h, eps) = (cfg.vocab_size, cfg.hidden_size, cfg.norm_eps as f32);
    let mut b = GraphBuilder::new(w, root);
    let ids = b.input("ids", vec![Dim::Seq], Elem::Token);
    let table = b.param("embed_tokens.weight", &[v, h])?;
    let mut x = b.node("embed_tokens", Op::Embedding { table }, &[ids])?;
    b.port("ids", ids);
    b.port("embeds", x);
    for (i, t) in cfg.layer_types.iter().enumerate() {
        let p = format!("layers.{i}");
        let n = b.rms_norm(&format!("{p}.operator_norm"), x, h, eps)?;
        let mixed = match t {
            LayerType::Conv => short_conv(&mut b, cfg, &format!("{p}.conv"), n)?,
            LayerType::Attention => attention(&mut b, cfg, &format!("{p}.self_attn"), n)?,
        };
        let r = b.add(&format!("{p}.residual1"), x, mixed)?;
        let n = b.rms_norm(&format!("{p}.ffn_norm"), r, h, eps)?;
        let ff = mlp(&mut b, &format!("{p}.feed_forward"), n, cfg.ff_dim())?;
        x = b.add(&p, r, ff)?;
    }
    let hidden = b.rms_norm("embedding_norm", x, h, eps)?;
    // A tied config uses embed_tokens whatever the file holds (as transformers does).
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

/// `Lfm2ShortConv`: `out_proj(C * causal_conv(B * x))` with `[B, C, x] = in_proj(x)`.
fn short_conv(b: &mut GraphBuilder, cfg: &Lfm2Config, p: &str, x: ValueId) -> Result<ValueId> {
    let (h, l, bias) = (cfg.hidden_size, cfg.conv_l_cache, cfg.conv_bias);
    let bcx = b.linear(&format!("{p}.in_proj"), x, 3 * h, bias)?;
    let [bb, c, xx] = b.split3(&format!("{p}.in_proj"), bcx)?;
    let bx = b.mul(&format!("{p}.bx"), bb, xx)?;
    let name = format!("{p}.conv");
    // The checkpoint stores the depthwise kernel as [H, 1, L]; a squeezed [H, L] also loads.
    let shape = match b.stored_shape(&format!("{name}.weight")) {
        Some(s) if s == [h, l] => vec![h, l],
        _ => vec![h, 1, l],
    };
    let weight = b.param(&format!("{name}.weight"), &shape)?;
    let bias = bias
        .then(|| b.param(&format!("{name}.bias"), &[h]))
        .transpose()?;
    let state = b.state(&name, fixed(&[l.saturating_sub(1), h]));
    let conv = b.node(
        &name,
        Op::CausalConv1d {
            weight,
            bias,
            state,
        },
        &[bx],
    )?;
    let y = b.mul(&format!("{p}.y"), c, conv)?;
    b.linear(&format!("{p}.out_proj"), y, h, cfg.conv_bias)
}

/// `Lfm2Attention`: GQA with per-head RMSNorm on q and k before RoPE, causal, scale `d^-0.5`.
fn attention(b: &mut GraphBuilder, cfg: &Lfm2Config, p: &str, x: ValueId) -> Result<ValueId> {
    let (h, nh, nkv, d) = (
        cfg.hidden_size,
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.head_dim,
    );
    let eps = cfg.norm_eps as f32;
    let q = b.linear(&format!("{p}.q_proj"), x, nh * d, false)?;
    let k = b.linear(&format!("{p}.k_proj"), x, nkv * d, false)?;
    let v = b.linear(&format!("{p}.v_proj"), x, nkv * d, false)?;
    let q = b.rms_norm(&format!("{p}.q_layernorm"), q, d, eps)?;
    let k = b.rms_norm(&format!("{p}.k_layernorm"), k, d, eps)?;
    let o = b.rope_cached_attention(p, [q, k, v], nh, nkv, d, cfg.rope_theta)?;
    b.linear(&format!("{p}.out_proj"), o, h, false)
}

/// `Lfm2MLP` (SwiGLU): `w2(silu(w1 x) * w3 x)`; the SiLU has no name of its own.
fn mlp(b: &mut GraphBuilder, p: &str, x: ValueId, ff: usize) -> Result<ValueId> {
    let h = b.dim(x, -1)?;
    let gate = b.linear(&format!("{p}.w1"), x, ff, false)?;
    let up = b.linear(&format!("{p}.w3"), x, ff, false)?;
    let s = b.internal(&format!("{p}.silu"), Op::Act(Activation::Silu), &[gate])?;
    let act = b.mul(&format!("{p}.act"), s, up)?;
    b.linear(&format!("{p}.w2"), act, h, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::builder::FromConfig;

    #[test]
    fn real_configs_have_the_model_card_parameter_counts() {
        for (cfg, n) in [
            (Lfm2Config::lfm2_350m(), 354_483_968),
            (Lfm2Config::lfm2_700m(), 742_489_344),
            (Lfm2Config::lfm2_1_2b(), 1_170_340_608),
        ] {
            let g = build(&cfg, &FromConfig, "model").unwrap();
            assert_eq!(g.param_count(), n);
            assert!(cfg.summary().contains(&format!("{n} parameters")));
        }
        // An untied head and conv biases add their weights.
        let mut cfg = Lfm2Config::lfm2_350m();
        let (v, h, convs) = (cfg.vocab_size, cfg.hidden_size, cfg.num_conv_layers());
        cfg.tie_word_embeddings = false;
        cfg.conv_bias = true;
        let g = build(&cfg, &FromConfig, "model").unwrap();
        assert_eq!(
            g.param_count(),
            354_483_968 + v * h + convs * (3 * h + h + h)
        );
    }
}
