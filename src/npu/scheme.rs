//! Precision schemes for the cost model: what each part (vision encoder, connector, language
//! model) computes in. The same syntax as quantization schemes (`default`, a bare precision, or
//! `vision=P,connector=P,text=P`), with the float types NPU runtimes also use:
//!
//! - `wXaY` (X in 4, 8, 16; Y in 8, 16): integer activations of Y bits, X-bit weights;
//! - `wXf16`: fp16 activations, X-bit weights (`w4f16`: how NPU LLM runtimes often run);
//! - `f16`: fp16 activations and weights; `float` / `f32`: fp32 (CPUs).
//!
//! `default` is the paper's deployment: vision and connector W8A16, language model W4A16.

use super::cost::NodePrecision;
use super::profile::ActKind;
use crate::error::{Error, Result};
use serde::Serialize;
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct NpuScheme {
    pub vision: NodePrecision,
    pub connector: NodePrecision,
    pub text: NodePrecision,
}

impl fmt::Display for NodePrecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.act {
            ActKind::Fp32 => f.write_str("f32"),
            ActKind::Fp16 if self.weight_bits == 16 => f.write_str("f16"),
            ActKind::Fp16 => write!(f, "w{}f16", self.weight_bits),
            ActKind::Int8 => write!(f, "w{}a8", self.weight_bits),
            ActKind::Int16 => write!(f, "w{}a16", self.weight_bits),
        }
    }
}

impl fmt::Display for NpuScheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "vision={},connector={},text={}",
            self.vision, self.connector, self.text
        )
    }
}

/// One precision: `w8a16`, `w4f16`, `f16`, `float`.
pub fn parse_precision(s: &str) -> Result<NodePrecision> {
    let bad = || {
        Error::input(format!(
            "unknown precision `{s}` (expected wXaY with X in 4/8/16 and Y in 8/16, wXf16, f16, or float)"
        ))
    };
    let p = |act, weight_bits| NodePrecision { act, weight_bits };
    match s {
        "float" | "f32" | "fp32" => return Ok(p(ActKind::Fp32, 32)),
        "f16" | "fp16" => return Ok(p(ActKind::Fp16, 16)),
        _ => {}
    }
    let rest = s.strip_prefix('w').ok_or_else(bad)?;
    let (w, a, act) = if let Some((w, a)) = rest.split_once('a') {
        let act = match a {
            "8" => ActKind::Int8,
            "16" => ActKind::Int16,
            _ => return Err(bad()),
        };
        (w, a, act)
    } else if let Some((w, a)) = rest.split_once('f') {
        if a != "16" {
            return Err(bad());
        }
        (w, a, ActKind::Fp16)
    } else {
        return Err(bad());
    };
    let _ = a;
    let bits: u32 = w.parse().map_err(|_| bad())?;
    if ![4, 8, 16].contains(&bits) {
        return Err(bad());
    }
    Ok(p(act, bits))
}

impl NpuScheme {
    pub fn uniform(p: NodePrecision) -> Self {
        Self {
            vision: p,
            connector: p,
            text: p,
        }
    }

    /// The paper's deployment: vision and connector W8A16, text W4A16.
    pub fn paper_default() -> Self {
        let w8a16 = NodePrecision {
            act: ActKind::Int16,
            weight_bits: 8,
        };
        Self {
            vision: w8a16,
            connector: w8a16,
            text: NodePrecision {
                act: ActKind::Int16,
                weight_bits: 4,
            },
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        let mut scheme = Self::paper_default();
        let mut parts = Vec::new();
        for item in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            match item.split_once('=') {
                Some((part, p)) => parts.push((part, parse_precision(p)?)),
                None if item == "default" => {}
                None => scheme = Self::uniform(parse_precision(item)?),
            }
        }
        for (part, p) in parts {
            match part {
                "vision" => scheme.vision = p,
                "connector" => scheme.connector = p,
                "text" => scheme.text = p,
                other => {
                    return Err(Error::input(format!(
                        "unknown part `{other}` in scheme `{s}` (vision, connector, text)"
                    )))
                }
            }
        }
        Ok(scheme)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes() {
        assert_eq!(
            NpuScheme::parse("default").unwrap().to_string(),
            "vision=w8a16,connector=w8a16,text=w4a16"
        );
        assert_eq!(
            NpuScheme::parse("w8a8").unwrap().to_string(),
            "vision=w8a8,connector=w8a8,text=w8a8"
        );
        assert_eq!(
            NpuScheme::parse("f16,text=w4f16").unwrap().to_string(),
            "vision=f16,connector=f16,text=w4f16"
        );
        assert_eq!(
            NpuScheme::parse("float").unwrap().text,
            NodePrecision {
                act: ActKind::Fp32,
                weight_bits: 32
            }
        );
        for bad in ["w3a8", "w8a4", "w8f8", "int8", "eyes=w8a8", "w8a16x"] {
            assert!(NpuScheme::parse(bad).is_err(), "{bad}");
        }
    }
}
