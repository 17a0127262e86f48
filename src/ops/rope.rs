//! Rotary position embeddings (rotate_half / NeoX style), mirroring transformers' `default` rope
//! type (`compute_default_rope_parameters` + `apply_rotary_pos_emb`).
//!
//! Numerics follow the PyTorch float32 graph step by step so angles match at large positions:
//! - `inv_freq[i] = 1 / theta^(f32(2i) / f32(d))`: the exponent is an f32 division, the power is
//!   taken on the f32-rounded base and rounded to f32 (PyTorch's vectorised `pow` is within 1 ulp of
//!   that; for head_dim 64 it is identical for every theta tried), the reciprocal is an f32 division;
//! - `angle = f32(position) * inv_freq[i]` (one f32 multiply), then f32 `cos` / `sin`;
//! - `out = x * cos + rotate_half(x) * sin` with separately rounded products, where
//!   `rotate_half([x1, x2]) = [-x2, x1]` over the two halves of each head.

use crate::error::{Error, Result};
use serde_json::Value;

/// Rotary embedding for one head size and base.
#[derive(Clone, Debug)]
pub struct Rope {
    head_dim: usize,
    theta: f64,
    inv_freq: Vec<f32>,
}

impl Rope {
    /// Default (unscaled) RoPE over the full `head_dim` with base `theta`.
    pub fn new(head_dim: usize, theta: f64) -> Result<Self> {
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(Error::config(format!(
                "rotary embedding needs an even, non-zero head_dim, got {head_dim}"
            )));
        }
        if !(theta.is_finite() && theta > 0.0) {
            return Err(Error::config(format!(
                "rope_theta must be a positive finite number, got {theta}"
            )));
        }
        Ok(Self {
            head_dim,
            theta,
            inv_freq: default_inv_freq(head_dim, theta),
        })
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
    }
    pub fn theta(&self) -> f64 {
        self.theta
    }
    /// The `head_dim / 2` inverse frequencies.
    pub fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }

    /// `(cos, sin)` of the `head_dim / 2` angles at `position` (the second half of PyTorch's
    /// `cat((freqs, freqs))` repeats them).
    pub fn cos_sin(&self, position: usize) -> (Vec<f32>, Vec<f32>) {
        let p = position as f32;
        self.inv_freq
            .iter()
            .map(|&f| {
                let a = p * f;
                (a.cos(), a.sin())
            })
            .unzip()
    }

    /// Rotates `x` in place. `x` is `[T, n_heads * head_dim]` (token-major, heads contiguous); row
    /// `t` sits at absolute position `start + t`.
    pub fn apply(&self, x: &mut [f32], n_heads: usize, start: usize) {
        let d = self.head_dim;
        let half = d / 2;
        let row = n_heads * d;
        assert!(
            row > 0 && x.len().is_multiple_of(row),
            "rope input of {} values is not a multiple of {n_heads} heads x {d}",
            x.len()
        );
        let mut cos = vec![0.0f32; half];
        let mut sin = vec![0.0f32; half];
        for (t, tok) in x.chunks_exact_mut(row).enumerate() {
            let p = (start + t) as f32;
            for ((c, s), &f) in cos.iter_mut().zip(sin.iter_mut()).zip(&self.inv_freq) {
                let a = p * f;
                *c = a.cos();
                *s = a.sin();
            }
            for head in tok.chunks_exact_mut(d) {
                let (x1, x2) = head.split_at_mut(half);
                for j in 0..half {
                    let (a, b) = (x1[j], x2[j]);
                    x1[j] = a * cos[j] + (-b) * sin[j];
                    x2[j] = b * cos[j] + a * sin[j];
                }
            }
        }
    }
}

/// transformers' `compute_default_rope_parameters`:
/// `1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))` in float32.
pub fn default_inv_freq(head_dim: usize, theta: f64) -> Vec<f32> {
    let base = theta as f32 as f64;
    let d = head_dim as f32;
    (0..head_dim)
        .step_by(2)
        .map(|i| {
            let e = i as f32 / d;
            let p = base.powf(e as f64) as f32;
            1.0f32 / p
        })
        .collect()
}

/// The RoPE base of a Hugging Face text config, following transformers' standardisation
/// (`convert_rope_params_to_dict` / `standardize_rope_params`): `rope_parameters.rope_theta`
/// (a legacy `rope_scaling` dict replaces `rope_parameters`) wins, then a top-level `rope_theta`
/// or the old LFM2 key `theta` (both must agree when present), then `default_theta` (the model
/// class's `default_theta`; 1e6 for LFM2). A `rope_parameters` dict nested per layer type is read
/// at `layer_type`. Only `rope_type` `"default"` is supported; anything else (linear, dynamic,
/// yarn, llama3, ...) is an [`Error::Config`].
pub fn rope_theta_from_config(cfg: &Value, layer_type: &str, default_theta: f64) -> Result<f64> {
    let theta_key = |k: &str| -> Result<Option<f64>> {
        cfg.get(k)
            .filter(|v| !v.is_null())
            .map(|v| as_theta(v, k))
            .transpose()
    };
    // Old transformers let `theta` override `rope_theta`; 5.x ignores `theta`. Real configs carry
    // equal values; refuse to guess when they differ.
    let top_theta = match (theta_key("rope_theta")?, theta_key("theta")?) {
        (Some(a), Some(b)) if a != b => {
            return Err(Error::config(format!(
                "rope_theta {a} disagrees with the old key theta {b}"
            )))
        }
        (a, b) => a.or(b),
    };
    // `convert_rope_params_to_dict`: a legacy `rope_scaling` replaces `rope_parameters`.
    let params = cfg
        .get("rope_scaling")
        .filter(|v| !v.is_null())
        .or_else(|| cfg.get("rope_parameters").filter(|v| !v.is_null()));
    let mut theta = top_theta.unwrap_or(default_theta);
    if let Some(p) = params {
        let obj = p
            .as_object()
            .ok_or_else(|| Error::config(format!("rope_parameters must be an object, got {p}")))?;
        // Nested per layer type ({"full_attention": {...}, ...}) or one flat dict.
        let flat = match obj.get(layer_type) {
            Some(inner) if inner.is_object() => inner.as_object().expect("checked"),
            _ => obj,
        };
        let rope_type = flat
            .get("rope_type")
            .filter(|v| !v.is_null())
            .or_else(|| flat.get("type").filter(|v| !v.is_null()));
        if let Some(rt) = rope_type {
            let rt = rt
                .as_str()
                .ok_or_else(|| Error::config(format!("rope_type must be a string, got {rt}")))?;
            check_rope_type(rt)?;
        }
        if let Some(f) = flat.get("partial_rotary_factor").filter(|v| !v.is_null()) {
            if f.as_f64() != Some(1.0) {
                return Err(Error::config(format!(
                    "partial_rotary_factor {f} is not supported (only full rotary embeddings)"
                )));
            }
        }
        if let Some(v) = flat.get("rope_theta").filter(|v| !v.is_null()) {
            theta = as_theta(v, "rope_parameters.rope_theta")?;
        }
    }
    if !(theta.is_finite() && theta > 0.0) {
        return Err(Error::config(format!(
            "rope_theta must be a positive finite number, got {theta}"
        )));
    }
    Ok(theta)
}

/// Accepts only the unscaled `default` rope type.
pub fn check_rope_type(rope_type: &str) -> Result<()> {
    if rope_type == "default" {
        Ok(())
    } else {
        Err(Error::config(format!(
            "unsupported rope_type `{rope_type}`: only `default` (unscaled RoPE) is implemented"
        )))
    }
}

fn as_theta(v: &Value, key: &str) -> Result<f64> {
    v.as_f64()
        .ok_or_else(|| Error::config(format!("`{key}` must be a number, got {v}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn inv_freq_matches_torch_float32() {
        // Bit patterns of `1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.float) / d))`.
        let f = default_inv_freq(64, 1e6);
        assert_eq!(f.len(), 32);
        assert_eq!(f[0], 1.0);
        let bits: Vec<u32> = [1, 5, 17, 31].iter().map(|&i| f[i].to_bits()).collect();
        assert_eq!(bits, [0x3f263de0, 0x3dec7fd6, 0x3a2a3b44, 0x35ceaf79]);
        let f: Vec<u32> = default_inv_freq(16, 1e4)
            .iter()
            .map(|x| x.to_bits())
            .collect();
        let want = [
            0x3f800000, 0x3ea1e89b, 0x3dcccccd, 0x3d0186e3, 0x3c23d70a, 0x3b4f3e38, 0x3a83126f,
            0x39a5cb60,
        ];
        assert_eq!(f, want);
    }

    #[test]
    fn large_position_angles_match_torch() {
        // torch float32 cos/sin of `position * inv_freq` (d = 64, theta = 1e6) at positions 4095
        // and 32767, frequencies 0, 1, 7. PyTorch's vectorised cos/sin are within 1 ulp of libm.
        let rope = Rope::new(64, 1e6).unwrap();
        let want_cos: [[u32; 3]; 2] = [
            [3179748972, 1041190464, 3181342225],
            [1065055644, 3212174085, 1064687802],
        ];
        let want_sin: [[u32; 3]; 2] = [
            [3212800310, 1065188111, 3212785951],
            [1044382136, 3197009110, 3197027282],
        ];
        for (k, pos) in [4095usize, 32767].into_iter().enumerate() {
            let (c, s) = rope.cos_sin(pos);
            for (n, j) in [0usize, 1, 7].into_iter().enumerate() {
                let ulp = |a: f32, b: u32| (a.to_bits() as i64 - b as i64).abs();
                assert!(ulp(c[j], want_cos[k][n]) <= 1, "cos {pos} {j}");
                assert!(ulp(s[j], want_sin[k][n]) <= 1, "sin {pos} {j}");
            }
        }
    }

    #[test]
    fn rotation_matches_definition_and_preserves_norm() {
        let rope = Rope::new(8, 10_000.0).unwrap();
        let heads = 2;
        let t = 3;
        let x: Vec<f32> = (0..t * heads * 8)
            .map(|i| (i as f32 * 0.37).sin())
            .collect();
        let mut y = x.clone();
        rope.apply(&mut y, heads, 5);
        for tok in 0..t {
            let (c, s) = rope.cos_sin(5 + tok);
            for h in 0..heads {
                let base = tok * heads * 8 + h * 8;
                let xs = &x[base..base + 8];
                let ys = &y[base..base + 8];
                for j in 0..4 {
                    let want1 = xs[j] * c[j] - xs[j + 4] * s[j];
                    let want2 = xs[j + 4] * c[j] + xs[j] * s[j];
                    assert!((ys[j] - want1).abs() < 1e-6);
                    assert!((ys[j + 4] - want2).abs() < 1e-6);
                }
                let n0: f32 = xs.iter().map(|v| v * v).sum();
                let n1: f32 = ys.iter().map(|v| v * v).sum();
                assert!((n0 - n1).abs() < 1e-5 * n0.max(1.0));
            }
        }
        // Position 0 is the identity.
        let mut z = x.clone();
        rope.apply(&mut z, heads, 0);
        assert_eq!(&z[..heads * 8], &x[..heads * 8]);
    }

    #[test]
    fn relative_property_of_dot_products() {
        // <R(p) q, R(p+k) k> depends only on k.
        let rope = Rope::new(16, 1e6).unwrap();
        let q: Vec<f32> = (0..16).map(|i| (i as f32 * 0.9).cos()).collect();
        let k: Vec<f32> = (0..16).map(|i| (i as f32 * 0.4).sin()).collect();
        let dot_at = |p: usize| {
            let (mut a, mut b) = (q.clone(), k.clone());
            rope.apply(&mut a, 1, p);
            rope.apply(&mut b, 1, p + 7);
            a.iter().zip(&b).map(|(x, y)| x * y).sum::<f32>()
        };
        let d0 = dot_at(0);
        for p in [1, 10, 100, 1000] {
            assert!((dot_at(p) - d0).abs() < 1e-4, "{p}");
        }
    }

    #[test]
    fn config_keys() {
        let d = 1e6;
        assert_eq!(
            rope_theta_from_config(&json!({}), "full_attention", d).unwrap(),
            1e6
        );
        assert_eq!(
            rope_theta_from_config(&json!({"rope_theta": 5e5}), "full_attention", d).unwrap(),
            5e5
        );
        assert_eq!(
            rope_theta_from_config(&json!({"theta": 1e4}), "full_attention", d).unwrap(),
            1e4
        );
        let new = json!({"rope_parameters": {"rope_type": "default", "rope_theta": 2e6}});
        assert_eq!(
            rope_theta_from_config(&new, "full_attention", d).unwrap(),
            2e6
        );
        let nested = json!({"rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 3e6}}});
        assert_eq!(
            rope_theta_from_config(&nested, "full_attention", d).unwrap(),
            3e6
        );
        // rope_parameters without a theta falls back to the top-level key.
        let mixed = json!({"rope_theta": 7e5, "rope_parameters": {"rope_type": "default"}});
        assert_eq!(
            rope_theta_from_config(&mixed, "full_attention", d).unwrap(),
            7e5
        );
        for bad in [
            json!({"rope_parameters": {"rope_type": "yarn", "factor": 4.0}}),
            json!({"rope_scaling": {"type": "linear", "factor": 2.0}}),
            json!({"rope_parameters": {"rope_type": "default", "partial_rotary_factor": 0.5}}),
            json!({"rope_theta": -1.0}),
            json!({"rope_theta": "big"}),
            json!({"rope_theta": 1e4, "theta": 1e6}),
        ] {
            let e = rope_theta_from_config(&bad, "full_attention", d).unwrap_err();
            assert!(matches!(e, Error::Config(_)), "{bad}: {e}");
        }
        assert!(Rope::new(7, 1e4).is_err());
    }
}
