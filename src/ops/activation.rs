//! Elementwise activations, written to match PyTorch's definitions.

/// `nn.GELU(approximate='tanh')`: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
pub fn gelu_tanh(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    let inner = SQRT_2_OVER_PI * (x + 0.044715 * x * x * x);
    0.5 * x * (1.0 + inner.tanh())
}

/// `nn.GELU()` (exact): 0.5 x (1 + erf(x / sqrt(2))).
pub fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + libm::erff(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// `nn.SiLU`: x * sigmoid(x).
pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// The activation functions a config can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    GeluTanh,
    GeluErf,
    Silu,
}

impl Activation {
    /// Parses a Hugging Face `hidden_act` name.
    pub fn from_hf_name(name: &str) -> Option<Self> {
        match name {
            "gelu" | "gelu_python" => Some(Self::GeluErf),
            "gelu_pytorch_tanh" | "gelu_new" | "gelu_tanh" => Some(Self::GeluTanh),
            "silu" | "swish" => Some(Self::Silu),
            _ => None,
        }
    }

    pub fn apply(self, x: f32) -> f32 {
        match self {
            Self::GeluTanh => gelu_tanh(x),
            Self::GeluErf => gelu_erf(x),
            Self::Silu => silu(x),
        }
    }

    pub fn apply_inplace(self, xs: &mut [f32]) {
        match self {
            Self::GeluTanh => xs.iter_mut().for_each(|v| *v = gelu_tanh(*v)),
            Self::GeluErf => xs.iter_mut().for_each(|v| *v = gelu_erf(*v)),
            Self::Silu => xs.iter_mut().for_each(|v| *v = silu(*v)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        // Reference values from torch.nn.functional.gelu / silu in float64.
        assert!((gelu_erf(1.0) - 0.841_344_7).abs() < 1e-6);
        assert!((gelu_tanh(1.0) - 0.841_192).abs() < 1e-6);
        assert!((gelu_erf(-3.0) - -0.004_049_8).abs() < 1e-6);
        assert!((silu(2.0) - 1.761_594_2).abs() < 1e-6);
        assert_eq!(Activation::from_hf_name("gelu"), Some(Activation::GeluErf));
        assert_eq!(Activation::from_hf_name("relu6"), None);
    }
}
