//! A hardware profile: the peak rates of a matrix unit and a vector unit per activation type,
//! DRAM bandwidth, on-chip memory, channel padding, memory budgets, and the few free factors
//! (efficiencies and overheads) fitted to published measurements. Profiles are JSON files in
//! `profiles/`; the built-in ones are compiled in, and any path works too.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

/// Built-in profiles: (name, JSON).
pub const BUILTIN: &[(&str, &str)] = &[
    ("sa8295p", include_str!("../../profiles/sa8295p.json")),
    ("zen5-2c", include_str!("../../profiles/zen5-2c.json")),
];

/// The numeric type activations flow in; it picks the unit rates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActKind {
    Int8,
    Int16,
    Fp16,
    Fp32,
}

impl ActKind {
    /// Bytes of one activation (and of one K/V cache element, which NPU runtimes keep in the
    /// activation type).
    pub fn bytes(self) -> u64 {
        match self {
            ActKind::Int8 => 1,
            ActKind::Int16 | ActKind::Fp16 => 2,
            ActKind::Fp32 => 4,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, ActKind::Fp16 | ActKind::Fp32)
    }

    pub fn name(self) -> &'static str {
        match self {
            ActKind::Int8 => "int8",
            ActKind::Int16 => "int16",
            ActKind::Fp16 => "fp16",
            ActKind::Fp32 => "fp32",
        }
    }
}

impl fmt::Display for ActKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The fitted factors. Efficiencies scale a unit's peak rate; overheads add time.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Factors {
    /// Matrix unit on convolutions (regular and pointwise, channel-major maps).
    pub conv_efficiency: f64,
    /// Matrix unit on linear layers over token rows (transformer projections, MLPs, heads).
    pub linear_efficiency: f64,
    /// Matrix unit on activation x activation contractions (attention `QK^T`, `PV`) whose score
    /// matrix fits on chip.
    pub attention_efficiency: f64,
    /// The same when the scores spill to DRAM (the runtime tiles attention through memory).
    pub spilled_attention_efficiency: f64,
    /// Vector unit (depthwise convs, softmax, norms, element-wise ops, data movement).
    pub vector_efficiency: f64,
    /// Fraction of the DRAM bandwidth a node's traffic gets.
    pub bandwidth_efficiency: f64,
    /// Fixed cost of running one graph (launch, synchronisation), seconds.
    pub graph_overhead_s: f64,
    /// Fixed cost of each non-fused node, seconds.
    pub node_overhead_s: f64,
}

/// The names of the fields of [`Factors`], in order (the fit's parameter vector).
pub const FACTOR_NAMES: [&str; 8] = [
    "conv_efficiency",
    "linear_efficiency",
    "attention_efficiency",
    "spilled_attention_efficiency",
    "vector_efficiency",
    "bandwidth_efficiency",
    "graph_overhead_s",
    "node_overhead_s",
];

impl Factors {
    pub fn to_vec(self) -> [f64; 8] {
        [
            self.conv_efficiency,
            self.linear_efficiency,
            self.attention_efficiency,
            self.spilled_attention_efficiency,
            self.vector_efficiency,
            self.bandwidth_efficiency,
            self.graph_overhead_s,
            self.node_overhead_s,
        ]
    }
    pub fn from_vec(v: [f64; 8]) -> Self {
        Self {
            conv_efficiency: v[0],
            linear_efficiency: v[1],
            attention_efficiency: v[2],
            spilled_attention_efficiency: v[3],
            vector_efficiency: v[4],
            bandwidth_efficiency: v[5],
            graph_overhead_s: v[6],
            node_overhead_s: v[7],
        }
    }
}

/// How the factors were obtained.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FitInfo {
    /// The command that reproduces them.
    pub command: String,
    /// The measurement file they were fitted on (relative to `profiles/`).
    pub data: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub name: String,
    pub title: String,
    /// Peak MAC/s of the matrix unit per activation type.
    pub matrix_macs_per_s: BTreeMap<ActKind, f64>,
    /// Peak element operations per second of the vector unit per activation type (a
    /// depthwise MAC is one operation).
    pub vector_ops_per_s: BTreeMap<ActKind, f64>,
    pub dram_bytes_per_s: f64,
    /// Tensors (and attention score matrices) up to this size stay on chip.
    pub onchip_bytes: u64,
    /// The matrix unit pads contraction and output channels to a multiple of this.
    pub channel_multiple: u64,
    /// Activations directly after a matrix op run fused into it (no vector pass, no node).
    pub fuse_activations: bool,
    /// Weights narrower than this many bits are unpacked on the vector unit every call before the
    /// matrix unit takes them (one operation per weight element); 0: never.
    pub weight_unpack_below_bits: u32,
    /// Graphs have static shapes (NPU runtimes): prompts run in fixed chunks, and every call
    /// attends over the whole maximum context. Otherwise (CPU engines) a prompt is one call and
    /// attention covers the positions so far.
    pub static_shapes: bool,
    /// Default budget for weights + state + activations (the longest context that fits).
    pub memory_budget_bytes: u64,
    /// Factors by activation family: `all`, or `int` / `float` overriding it.
    pub factors: BTreeMap<String, Factors>,
    pub fit: FitInfo,
    /// Where every number comes from, by field.
    pub sources: BTreeMap<String, String>,
}

impl Profile {
    /// A built-in profile by name, or a profile file by path.
    pub fn load(name_or_path: &str) -> Result<Self> {
        let text = match BUILTIN.iter().find(|(n, _)| *n == name_or_path) {
            Some((_, text)) => text.to_string(),
            None if name_or_path.ends_with(".json") || Path::new(name_or_path).exists() => {
                crate::files::read_text(Path::new(name_or_path), 1 << 20)?
            }
            None => {
                let known: Vec<&str> = BUILTIN.iter().map(|(n, _)| *n).collect();
                return Err(Error::input(format!(
                    "unknown profile `{name_or_path}` (built in: {}; or a path to a profile .json)",
                    known.join(", ")
                )));
            }
        };
        Self::parse(&text).map_err(|e| Error::input(format!("profile {name_or_path}: {e}")))
    }

    /// Parses and checks a profile.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let p: Profile = serde_json::from_str(text).map_err(|e| e.to_string())?;
        p.validate()?;
        Ok(p)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        let positive = |what: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(format!("{what} must be a positive number, got {v}"))
            }
        };
        for (k, v) in &self.matrix_macs_per_s {
            positive(&format!("matrix_macs_per_s.{k}"), *v)?;
        }
        for (k, v) in &self.vector_ops_per_s {
            positive(&format!("vector_ops_per_s.{k}"), *v)?;
        }
        positive("dram_bytes_per_s", self.dram_bytes_per_s)?;
        if self.channel_multiple == 0 || self.onchip_bytes == 0 || self.memory_budget_bytes == 0 {
            return Err(
                "channel_multiple, onchip_bytes and memory_budget_bytes must be > 0".into(),
            );
        }
        let has = |k: &str| self.factors.contains_key(k);
        if !(has("all") || has("int") && has("float")) {
            return Err("factors need `all`, or both `int` and `float`".into());
        }
        for (family, f) in &self.factors {
            if !["all", "int", "float"].contains(&family.as_str()) {
                return Err(format!("factors.{family}: expected all, int or float"));
            }
            for (name, v) in FACTOR_NAMES.iter().zip(f.to_vec()) {
                let ok = if name.ends_with("_s") {
                    v.is_finite() && v >= 0.0
                } else {
                    v.is_finite() && v > 0.0 && v <= 1.0
                };
                if !ok {
                    return Err(format!(
                        "factors.{family}.{name} = {v} (efficiencies in (0, 1], overheads >= 0)"
                    ));
                }
            }
        }
        Ok(())
    }

    /// The factors for activations of `act`.
    pub fn factors(&self, act: ActKind) -> Factors {
        let family = if act.is_float() { "float" } else { "int" };
        *self
            .factors
            .get(family)
            .or_else(|| self.factors.get("all"))
            .expect("validated: `all` or both families")
    }

    /// The factor families this profile fits (`all`, or `int` and `float`).
    pub fn families(&self) -> Vec<String> {
        self.factors.keys().cloned().collect()
    }

    pub fn matrix_rate(&self, act: ActKind) -> Result<f64> {
        self.matrix_macs_per_s.get(&act).copied().ok_or_else(|| {
            Error::input(format!(
                "profile {} has no {act} matrix rate (it runs: {})",
                self.name,
                names(self.matrix_macs_per_s.keys())
            ))
        })
    }

    pub fn vector_rate(&self, act: ActKind) -> Result<f64> {
        self.vector_ops_per_s.get(&act).copied().ok_or_else(|| {
            Error::input(format!(
                "profile {} has no {act} vector rate (it runs: {})",
                self.name,
                names(self.vector_ops_per_s.keys())
            ))
        })
    }

    /// `n` rounded up to the matrix unit's channel multiple.
    pub fn pad(&self, n: u64) -> u64 {
        n.div_ceil(self.channel_multiple) * self.channel_multiple
    }
}

fn names<'a>(k: impl Iterator<Item = &'a ActKind>) -> String {
    k.map(|a| a.name()).collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_parse_and_cite_their_numbers() {
        for (name, _) in BUILTIN {
            let p = Profile::load(name).unwrap();
            assert_eq!(p.name, *name);
            for field in [
                "matrix_macs_per_s",
                "vector_ops_per_s",
                "dram_bytes_per_s",
                "onchip_bytes",
                "channel_multiple",
                "memory_budget_bytes",
                "static_shapes",
                "factors",
            ] {
                assert!(
                    p.sources.get(field).is_some_and(|s| !s.is_empty()),
                    "{name}: no source for {field}"
                );
            }
        }
    }

    #[test]
    fn bad_profiles_are_refused() {
        let e = Profile::load("tpu-v9").unwrap_err().to_string();
        assert!(
            e.contains("unknown profile `tpu-v9`") && e.contains("sa8295p"),
            "{e}"
        );
        let good: serde_json::Value = serde_json::from_str(BUILTIN[0].1).unwrap();
        let mut bad = good.clone();
        bad["dram_bytes_per_s"] = serde_json::json!(-1.0);
        let e = Profile::parse(&bad.to_string()).unwrap_err();
        assert!(e.contains("dram_bytes_per_s"), "{e}");
        let mut bad = good.clone();
        bad["factors"]["all"]["conv_efficiency"] = serde_json::json!(1.5);
        let e = Profile::parse(&bad.to_string()).unwrap_err();
        assert!(e.contains("conv_efficiency"), "{e}");
        let mut bad = good;
        bad["typo"] = serde_json::json!(1);
        assert!(Profile::parse(&bad.to_string()).is_err());
    }
}
