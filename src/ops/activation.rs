//! Elementwise activations with PyTorch's definitions, written branch-free so loops over them
//! vectorize: `gelu_tanh` and `silu` go through [`exp_approx`] (about 1 ulp) instead of libm's
//! scalar `tanh`/`exp`, which dominated the vision encoder's run time.

use rayon::prelude::*;

/// `exp(x)` for `x` clamped to `[-87, 88]`: round-to-nearest `k = x / ln 2` by the 1.5 * 2^23
/// trick, a degree-6 polynomial (Cephes `expf` coefficients) on the remainder, then `2^k` through
/// the exponent bits. About 1 ulp.
#[inline(always)]
pub fn exp_approx(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + MAGIC;
    let k = t - MAGIC;
    let ki = (t.to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    let r = x - k * LN2_HI - k * LN2_LO;
    let p = ((((1.987_569_2e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let e = p * r * r + r + 1.0;
    f32::from_bits(((ki + 127) << 23) as u32) * e
}

/// `nn.GELU(approximate='tanh')`: 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3),
/// computed as x * sigmoid(2u) (an identity: 0.5 (1 + tanh(u)) = sigmoid(2u)).
#[inline(always)]
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    let u = SQRT_2_OVER_PI * (x + 0.044715 * x * x * x);
    x / (1.0 + exp_approx(-2.0 * u))
}

/// `nn.GELU()` (exact): 0.5 x (1 + erf(x / sqrt(2))).
pub fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// `nn.SiLU`: x * sigmoid(x).
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp_approx(-x))
}

/// `nn.ReLU`: max(0, x).
#[inline(always)]
pub fn relu(x: f32) -> f32 {
    x.max(0.0)
}

/// `nn.ReLU6`: min(max(0, x), 6).
#[inline(always)]
pub fn relu6(x: f32) -> f32 {
    x.clamp(0.0, 6.0)
}

/// The activation functions a config can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    GeluTanh,
    GeluErf,
    Silu,
    /// `nn.ReLU` (the torchvision convnets of `npu::reference_nets`).
    Relu,
    /// `nn.ReLU6` (MobileNetV2).
    Relu6,
}

impl Activation {
    /// Parses a Hugging Face `hidden_act` name.
    pub fn from_hf_name(name: &str) -> Option<Self> {
        match name {
            "gelu" | "gelu_python" => Some(Self::GeluErf),
            "gelu_pytorch_tanh" | "gelu_new" | "gelu_tanh" => Some(Self::GeluTanh),
            "silu" | "swish" => Some(Self::Silu),
            "relu" => Some(Self::Relu),
            "relu6" => Some(Self::Relu6),
            _ => None,
        }
    }

    pub fn apply(self, x: f32) -> f32 {
        match self {
            Self::GeluTanh => gelu_tanh(x),
            Self::GeluErf => gelu_erf(x),
            Self::Silu => silu(x),
            Self::Relu => relu(x),
            Self::Relu6 => relu6(x),
        }
    }

    /// In place; large slices are split across threads (elementwise, so the result does not
    /// depend on the split).
    pub fn apply_inplace(self, xs: &mut [f32]) {
        const CHUNK: usize = 1 << 14;
        let run = |c: &mut [f32]| match self {
            Self::GeluTanh => c.iter_mut().for_each(|v| *v = gelu_tanh(*v)),
            Self::GeluErf => c.iter_mut().for_each(|v| *v = gelu_erf(*v)),
            Self::Silu => c.iter_mut().for_each(|v| *v = silu(*v)),
            Self::Relu => c.iter_mut().for_each(|v| *v = relu(*v)),
            Self::Relu6 => c.iter_mut().for_each(|v| *v = relu6(*v)),
        };
        if xs.len() > CHUNK {
            xs.par_chunks_mut(CHUNK).for_each(run);
        } else {
            run(xs);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Textbook definitions in f64.
    fn gelu_tanh_f64(x: f64) -> f64 {
        0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x)).tanh())
    }

    #[test]
    fn match_f64_definitions_over_a_wide_range() {
        let mut worst = (0.0f64, 0.0f64, 0.0f64);
        for i in -400_000..=400_000 {
            let x = i as f32 * 5e-5 * (1.0 + (i as f32).abs() * 2e-5);
            let xd = x as f64;
            // Errors relative to the input's scale (1 + tanh(u) cancels for negative x).
            let scale = xd.abs().max(1.0);
            let g = (gelu_tanh(x) as f64 - gelu_tanh_f64(xd)).abs() / scale;
            let s = (silu(x) as f64 - xd / (1.0 + (-xd).exp())).abs() / scale;
            let e = (exp_approx(x.clamp(-80.0, 80.0)) as f64 / (x.clamp(-80.0, 80.0) as f64).exp()
                - 1.0)
                .abs();
            worst = (worst.0.max(g), worst.1.max(s), worst.2.max(e));
        }
        assert!(
            worst.0 < 5e-7 && worst.1 < 5e-7 && worst.2 < 3e-7,
            "{worst:?}"
        );
        for x in [-1e4f32, -100.0, -20.0, 0.0, 20.0, 100.0, 1e4] {
            assert!(
                (gelu_tanh(x) as f64 - gelu_tanh_f64(x as f64)).abs()
                    <= 1e-6 * (x.abs() as f64).max(1.0)
            );
        }
    }

    #[test]
    fn known_values() {
        // torch.nn.functional.gelu / silu in float64.
        assert!((gelu_erf(1.0) - 0.841_344_7).abs() < 1e-6);
        assert!((gelu_tanh(1.0) - 0.841_192).abs() < 1e-6);
        assert!((gelu_erf(-3.0) - -0.004_049_8).abs() < 1e-6);
        assert!((silu(2.0) - 1.761_594_2).abs() < 1e-6);
        assert_eq!(Activation::from_hf_name("gelu"), Some(Activation::GeluErf));
        assert_eq!(Activation::from_hf_name("mish"), None);
        let mut v = vec![0.5f32; 40_000];
        Activation::GeluTanh.apply_inplace(&mut v);
        assert!(v.iter().all(|&y| y == gelu_tanh(0.5)));
    }

    #[test]
    fn relu_is_max_zero_x() {
        assert_eq!(Activation::from_hf_name("relu"), Some(Activation::Relu));
        assert_eq!(Activation::from_hf_name("relu6"), Some(Activation::Relu6));
        for x in [
            -1e30f32, -6.5, -1.0, -1e-30, 0.0, 1e-30, 0.5, 5.99, 6.0, 7.0, 1e30,
        ] {
            assert_eq!(Activation::Relu.apply(x), x.max(0.0));
        }
        for (x, y) in [
            (-1e30f32, 0.0),
            (-1.0, 0.0),
            (0.0, 0.0),
            (2.5, 2.5),
            (6.0, 6.0),
            (7.0, 6.0),
        ] {
            assert_eq!(Activation::Relu6.apply(x), y);
        }
        // -0.0 maps to a zero (either sign): max(0, x) compares equal.
        assert_eq!(Activation::Relu.apply(-0.0), 0.0);
        let mut v: Vec<f32> = (-20_000..20_000).map(|i| i as f32 * 1e-3).collect();
        let want: Vec<f32> = v.iter().map(|x| x.max(0.0)).collect();
        Activation::Relu.apply_inplace(&mut v);
        assert_eq!(v, want);
        let json = serde_json::to_string(&[Activation::Relu, Activation::Relu6]).unwrap();
        assert_eq!(json, r#"["relu","relu6"]"#);
    }
}
