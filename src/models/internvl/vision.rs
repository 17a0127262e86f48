//! The InternVL vision side as a graph: transformers `InternVLVisionModel` (`modeling_internvl.py`)
//! followed by `InternVLModel.get_image_features` up to the projector (CLS dropped, pixel
//! shuffle), one node per reference op, named like the checkpoint keys below the vision root.
//!
//! Ports: `pixels` (`[C, H, W]`) and `features` (`[(g / s)^2, s^2 * hidden]`, the projector's
//! input), for a patch grid of `g x g` and a shuffle block of `s`.

use super::{InternVitConfig, NormType};
use crate::error::{Error, Result};
use crate::graph::{fixed, Elem, Graph, GraphBuilder, Op, ValueId, WeightSource};
use crate::ops::activation::Activation;

/// Builds the vision graph of `cfg` for a square `image_size` input, weights below `root`
/// (`model.vision_tower` or `vision_tower`).
pub fn build(
    cfg: &InternVitConfig,
    w: &dyn WeightSource,
    root: &str,
    image_size: usize,
) -> Result<Graph> {
    cfg.validate()?;
    let g0 = cfg.grid(cfg.image_size)?;
    if cfg.use_absolute_position_embeddings && image_size != cfg.image_size {
        // transformers resizes the table bicubically for other grids; the engine keeps the
        // trained grid rather than silently computing something else.
        return Err(Error::input(format!(
            "this InternViT takes {0}x{0} images (its position embeddings cover a {g0}x{g0} grid \
             of {1} px patches), got {image_size}x{image_size}; resize the image to {0} px",
            cfg.image_size, cfg.patch_size
        )));
    }
    let g = cfg.grid(image_size)?;
    let (d, p, c) = (cfg.hidden_size, cfg.patch_size, cfg.num_channels);
    let mut b = GraphBuilder::new(w, root);
    let pixels = b.input("pixels", fixed(&[c, image_size, image_size]), Elem::F32);
    b.port("pixels", pixels);

    // InternVLVisionEmbeddings: patch conv, CLS token, position embeddings.
    let name = "embeddings.patch_embeddings.projection";
    let weight = b.param(&format!("{name}.weight"), &[d, c, p, p])?;
    let bias = Some(b.param(&format!("{name}.bias"), &[d])?);
    let conv = Op::Conv2d {
        weight,
        bias,
        stride: p,
        dilation: 1,
        groups: 1,
        pad: [0; 4],
    };
    let x = b.node(name, conv, &[pixels])?;
    let x = b.internal(&format!("{name}.tokens"), Op::ToTokens, &[x])?;
    let cls = b.param("embeddings.cls_token", &[1, 1, d])?;
    let pos = cfg
        .use_absolute_position_embeddings
        .then(|| b.param("embeddings.position_embeddings", &[1, g * g + 1, d]))
        .transpose()?;
    let mut x = b.node("embeddings", Op::ClsPosEmbed { cls, pos }, &[x])?;

    for i in 0..cfg.feature_layers {
        x = layer(&mut b, cfg, &format!("encoder.layer.{i}"), x)?;
    }
    if !cfg.use_mean_pooling && cfg.feature_layers == cfg.num_hidden_layers {
        x = b.layer_norm("layernorm", x, cfg.layer_norm_eps as f32)?;
    }

    // get_image_features: drop CLS, pixel shuffle on the g x g grid.
    let rows = Op::SliceRows {
        start: 1,
        len: g * g,
    };
    let x = b.internal("patch_tokens", rows, &[x])?;
    let shuffle = Op::PixelShuffle {
        h: g,
        w: g,
        scale: cfg.shuffle,
    };
    let features = b.node("pixel_shuffle", shuffle, &[x])?;
    b.port("features", features);
    Ok(b.finish())
}

fn norm(b: &mut GraphBuilder, cfg: &InternVitConfig, name: &str, x: ValueId) -> Result<ValueId> {
    let eps = cfg.layer_norm_eps as f32;
    match cfg.norm_type {
        NormType::LayerNorm => b.layer_norm(name, x, eps),
        NormType::RmsNorm => b.rms_norm(name, x, cfg.hidden_size, eps),
    }
}

/// `lambda * x` when the checkpoint has the layer scale (transformers always creates it).
fn layer_scale(b: &mut GraphBuilder, name: &str, x: ValueId, d: usize) -> Result<ValueId> {
    if !b.has(name, true) {
        return Ok(x);
    }
    let gamma = b.param(name, &[d])?;
    b.node(name, Op::ChannelScale { gamma }, &[x])
}

/// `InternVLVisionLayer`: pre-norm attention and MLP, each scaled by its lambda before its
/// residual add.
fn layer(b: &mut GraphBuilder, cfg: &InternVitConfig, p: &str, x: ValueId) -> Result<ValueId> {
    let d = cfg.hidden_size;
    let n = norm(b, cfg, &format!("{p}.layernorm_before"), x)?;
    let a = attention(b, cfg, &format!("{p}.attention"), n)?;
    let a = layer_scale(b, &format!("{p}.lambda_1"), a, d)?;
    let r = b.add(&format!("{p}.residual1"), x, a)?;
    let n = norm(b, cfg, &format!("{p}.layernorm_after"), r)?;
    let h = b.linear(&format!("{p}.mlp.fc1"), n, cfg.intermediate_size, true)?;
    let h = b.act(&format!("{p}.mlp.act"), Activation::GeluErf, h)?;
    let h = b.linear(&format!("{p}.mlp.fc2"), h, d, true)?;
    let h = layer_scale(b, &format!("{p}.lambda_2"), h, d)?;
    b.add(p, r, h)
}

/// `InternVLVisionAttention`: q/k/v projections, optional RMSNorm over the full width of q and
/// k (eps 1e-6, the module's default), unmasked multi-head attention, `projection_layer`.
fn attention(b: &mut GraphBuilder, cfg: &InternVitConfig, p: &str, x: ValueId) -> Result<ValueId> {
    let (d, heads) = (cfg.hidden_size, cfg.num_attention_heads);
    let hd = d / heads;
    let bias = cfg.attention_bias;
    let mut q = b.linear(&format!("{p}.q_proj"), x, d, bias)?;
    let mut k = b.linear(&format!("{p}.k_proj"), x, d, bias)?;
    let v = b.linear(&format!("{p}.v_proj"), x, d, bias)?;
    if cfg.use_qk_norm {
        q = b.rms_norm(&format!("{p}.q_norm"), q, d, 1e-6)?;
        k = b.rms_norm(&format!("{p}.k_norm"), k, d, 1e-6)?;
    }
    let sdpa = Op::Attention {
        heads,
        kv_heads: heads,
        d: hd,
        dv: hd,
        scale: (hd as f64).powf(-0.5) as f32,
    };
    let o = b.node(&format!("{p}.sdpa"), sdpa, &[q, k, v])?;
    b.linear(&format!("{p}.projection_layer"), o, d, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::builder::FromConfig;
    use crate::graph::Dim;

    #[test]
    fn internvit_300m_has_its_shapes_and_parameter_count() {
        let cfg = InternVitConfig::internvit_300m();
        let g = build(&cfg, &FromConfig, "model.vision_tower", 448).unwrap();
        let f = g.value(g.port("features").unwrap());
        assert_eq!(f.shape, vec![Dim::Fixed(256), Dim::Fixed(4096)]);
        // InternViT-300M: 304 M parameters (patch conv, CLS, 1025 positions, 24 layers).
        let (d, m) = (1024usize, 4096usize);
        let layer = 4 * (d * d + d) + 2 * d * m + m + d + 4 * d + 2 * d;
        let embed = d * 3 * 14 * 14 + d + d + 1025 * d;
        assert_eq!(g.param_count(), embed + 24 * layer);
        assert_eq!(g.param_count(), 304_012_288);
    }

    #[test]
    fn other_grids_are_refused_with_the_reason() {
        let mut cfg = InternVitConfig::internvit_300m();
        let e = build(&cfg, &FromConfig, "", 512).unwrap_err().to_string();
        assert!(e.contains("takes 448x448 images"), "{e}");
        assert!(e.contains("a 32x32 grid of 14 px patches"), "{e}");
        // Without position embeddings any grid of whole shuffle blocks works.
        cfg.use_absolute_position_embeddings = false;
        let e = build(&cfg, &FromConfig, "", 512).unwrap_err().to_string();
        assert!(e.contains("not a multiple of the patch size 14"), "{e}");
        let e = build(&cfg, &FromConfig, "", 14 * 33)
            .unwrap_err()
            .to_string();
        assert!(e.contains("pixel shuffle"), "{e}");
        assert!(build(&cfg, &FromConfig, "", 14 * 34).is_ok());
    }
}
