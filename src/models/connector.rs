//! The connector (`multi_modal_projector`) as a graph: `linear_1` -> activation -> `linear_2`, with
//! biases; AutoNeural's has no norm, InternVL's (`InternVLMultiModalProjector`) starts with a
//! `layer_norm` (`norm_eps: Some(1e-5)`, torch's default eps).
//!
//! Ports: `features` (`[T, in_dim]` vision tokens, any number of rows) and `embeddings`
//! (`[T, out_dim]` rows for the language model's prompt). Node names carry the
//! `multi_modal_projector.` prefix the float model reports; the weights live one level further
//! down (`model.multi_modal_projector.linear_1.weight`), so an AutoNeural checkpoint passes
//! `root = "model"`.

use crate::error::Result;
use crate::graph::{Dim, Elem, Graph, GraphBuilder, WeightSource};
use crate::ops::activation::Activation;

pub fn build(
    in_dim: usize,
    hidden: usize,
    out_dim: usize,
    act: Activation,
    norm_eps: Option<f32>,
    w: &dyn WeightSource,
    root: &str,
) -> Result<Graph> {
    let mut b = GraphBuilder::new(w, root);
    let mut x = b.input("features", vec![Dim::Seq, Dim::Fixed(in_dim)], Elem::F32);
    b.port("features", x);
    let p = "multi_modal_projector";
    if let Some(eps) = norm_eps {
        x = b.layer_norm(&format!("{p}.layer_norm"), x, eps)?;
    }
    let h = b.linear(&format!("{p}.linear_1"), x, hidden, true)?;
    let h = b.act(&format!("{p}.act"), act, h)?;
    let y = b.linear(&format!("{p}.linear_2"), h, out_dim, true)?;
    b.port("embeddings", y);
    Ok(b.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::builder::FromConfig;

    #[test]
    fn shapes_and_weights() {
        let g = build(64, 96, 32, Activation::GeluErf, None, &FromConfig, "model").unwrap();
        let keys: Vec<&str> = g.params.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "model.multi_modal_projector.linear_1.weight",
                "model.multi_modal_projector.linear_1.bias",
                "model.multi_modal_projector.linear_2.weight",
                "model.multi_modal_projector.linear_2.bias",
            ]
        );
        assert_eq!(g.param_count(), 64 * 96 + 96 + 96 * 32 + 32);
        let e = g.value(g.port("embeddings").unwrap());
        assert_eq!(e.shape, vec![Dim::Seq, Dim::Fixed(32)]);
        let f = g.value(g.port("features").unwrap());
        assert_eq!(f.shape, vec![Dim::Seq, Dim::Fixed(64)]);
    }
}
