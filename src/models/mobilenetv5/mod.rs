//! MobileNetV5 encoder + Multi-Scale Fusion Adapter (timm `MobileNetV5Encoder`): the config
//! (`VisionConfig`), timm's block-string grammar (`_efficientnet_builder.py`) and the resolved
//! architecture (`EncoderArch`: every block's channels, kernels, strides, MSFA taps). The encoder
//! itself is the graph built in [`graph`].
//!
//! Layout is `[C, H, W]` (batch 1). Every convolution uses timm's `padding='same'` rule
//! ([`crate::ops::conv::same_padding`]), every norm is `RmsNorm2d` and every activation is
//! GELU (tanh approximation), as in `mobilenetv5_300m_enc`.
//!
//! Observation names follow checkpoint keys. For a `ConvNormAct` named `X`: `X.conv` (conv
//! output), `X.bn` (after RMSNorm) and `X` (module output, after GELU when the module has one).
//! `EdgeResidual`: `conv_exp`, `bn1`, `bn1.act`, `conv_pwl`, `bn2`. MQA blocks: `norm`,
//! `attn.query.proj`, `attn.key.down_conv`, `attn.key.norm`, `attn.key.proj` (same for
//! `value`), `attn.sdpa`, `attn.output.proj`. Then `layer_scale` and the block name itself (block
//! output, residual included). MSFA: `msfa.resize.{i}` (upsampled inputs), `msfa.concat`,
//! `msfa.ffn.*`, `msfa.pool` (or `msfa.interpolate`), `msfa.norm`. Maps are `[C, H, W]`; the
//! attention internals `attn.{query,key,value}.proj` and `attn.sdpa` are token-major `[HW, D]`
//! (rank 2), with channel `head * dim + d` as in timm.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;

pub mod graph;

// ------------------------------------------------------------------------------------------------
// Config
// ------------------------------------------------------------------------------------------------

/// `vision_config` of an AutoNeural checkpoint: the arguments of timm `_gen_mobilenet_v5` /
/// `MobileNetV5Encoder` that vary between models.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VisionConfig {
    /// timm arch_def: one list of block strings per stage (`er_r1_k3_s2_e4_c128`, ...).
    pub block_strings: Vec<Vec<String>>,
    /// Stem conv output channels (before `round_channels`).
    pub stem_size: usize,
    /// Indices into timm's `feature_info`; negative counts from the end.
    pub msfa_indices: Vec<i64>,
    /// Side of the square MSFA output grid.
    pub msfa_output_resolution: usize,
    /// MSFA output channels.
    pub num_features: usize,
    /// Input side the preprocessor resizes images to.
    pub image_size: usize,
    /// `RmsNorm2d` eps (timm default 1e-6).
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f64,
    /// Whether the stem conv has a bias.
    #[serde(default = "default_true")]
    pub stem_bias: bool,
    /// timm's `layer_scale_init_value`. Only decides whether [`EncoderArch::tensors`] lists
    /// `layer_scale.gamma` keys; loading uses the gammas that are in the checkpoint.
    #[serde(default = "default_layer_scale")]
    pub layer_scale_init_value: Option<f64>,
}

fn default_norm_eps() -> f64 {
    1e-6
}
fn default_true() -> bool {
    true
}
fn default_layer_scale() -> Option<f64> {
    Some(1e-5)
}

impl VisionConfig {
    /// The real `mobilenetv5_300m_enc` (Gemma 3n vision tower): 84 blocks, 294,126,912 params,
    /// 3x768x768 -> 2048x16x16.
    pub fn mobilenetv5_300m_enc() -> Self {
        let mut stage2: Vec<String> = vec!["uir_r1_a5_k5_s2_e6_c640".into()];
        stage2.extend((0..7).map(|_| "uir_r1_a5_k0_s1_e4_c640".to_string()));
        stage2.push("uir_r1_a0_k0_s1_e1_c640".into());
        for _ in 0..14 {
            stage2.push("mqa_r1_k3_h12_v2_s1_d64_c640".into());
            stage2.push("uir_r1_a0_k0_s1_e2_c640".into());
        }
        let mut stage3: Vec<String> = vec!["uir_r1_a5_k5_s2_e6_c1280".into()];
        for _ in 0..19 {
            stage3.push("mqa_r1_k3_h16_s1_d96_c1280".into());
            stage3.push("uir_r1_a0_k0_s1_e2_c1280".into());
        }
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        VisionConfig {
            block_strings: vec![
                s(&[
                    "er_r1_k3_s2_e4_c128",
                    "er_r1_k3_s1_e4_c128",
                    "er_r1_k3_s1_e4_c128",
                ]),
                s(&[
                    "uir_r1_a3_k5_s2_e6_c256",
                    "uir_r1_a5_k0_s1_e4_c256",
                    "uir_r1_a3_k0_s1_e4_c256",
                    "uir_r1_a5_k0_s1_e4_c256",
                    "uir_r1_a3_k0_s1_e4_c256",
                ]),
                stage2,
                stage3,
            ],
            stem_size: 64,
            msfa_indices: vec![-2, -1],
            msfa_output_resolution: 16,
            num_features: 2048,
            image_size: 768,
            norm_eps: 1e-6,
            stem_bias: true,
            layer_scale_init_value: Some(1e-5),
        }
    }

    /// Resolves the config into the concrete architecture (what timm's builder derives).
    pub fn arch(&self) -> Result<EncoderArch> {
        EncoderArch::from_config(self)
    }
}

// ------------------------------------------------------------------------------------------------
// Block strings (timm `_decode_block_str`) and channel rounding
// ------------------------------------------------------------------------------------------------

/// timm `make_divisible(v, divisor, min_value=None, round_limit=0.9)`.
pub fn make_divisible(v: f64, divisor: usize) -> usize {
    let d = divisor as f64;
    let mut new_v = (((v + d / 2.0) as i64 / divisor as i64) * divisor as i64).max(divisor as i64);
    if (new_v as f64) < 0.9 * v {
        new_v += divisor as i64;
    }
    new_v as usize
}

/// timm `round_channels(channels, multiplier=1.0, divisor=8)`.
pub fn round_channels(channels: usize) -> usize {
    make_divisible(channels as f64, 8)
}

/// Per-type arguments of a decoded block string.
#[derive(Clone, Debug, PartialEq)]
pub enum BlockKindArgs {
    /// `er`: `EdgeResidual` (fused MBConv).
    EdgeResidual {
        exp_kernel_size: usize,
        pw_kernel_size: usize,
        exp_ratio: f64,
        force_in_chs: usize,
    },
    /// `uir`: `UniversalInvertedResidual`; kernel 0 = no such depthwise conv.
    UniversalInvertedResidual {
        dw_kernel_size_start: usize,
        dw_kernel_size_mid: usize,
        dw_kernel_size_end: usize,
        exp_ratio: f64,
    },
    /// `mqa`: `MobileAttention` with `MultiQueryAttention2d`.
    MobileAttention {
        dw_kernel_size: usize,
        num_heads: usize,
        key_dim: usize,
        value_dim: usize,
        kv_stride: usize,
    },
}

/// One decoded block string (timm's block-args dict), before the builder resolves channels.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockArgs {
    pub out_chs: usize,
    pub stride: usize,
    pub noskip: bool,
    pub kind: BlockKindArgs,
}

impl BlockArgs {
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            BlockKindArgs::EdgeResidual { .. } => "er",
            BlockKindArgs::UniversalInvertedResidual { .. } => "uir",
            BlockKindArgs::MobileAttention { .. } => "mqa",
        }
    }
}

/// Decodes one block string like timm `_decode_block_str`, returning the args and the repeat
/// count `r`. Supports `er`, `uir` and `mqa`; other block types, options that change the
/// architecture in unsupported ways (squeeze-excite, activation overrides, mixed kernels,
/// grouped convs) and malformed numbers are errors. Options timm ignores for a block type are
/// ignored here too; options timm does not know at all are errors.
pub fn decode_block_str(block: &str) -> Result<(BlockArgs, usize)> {
    let err = |msg: String| Error::BlockString {
        block: block.to_string(),
        msg,
    };
    let mut ops = block.split('_');
    let block_type = ops.next().unwrap_or("");
    match block_type {
        "er" | "uir" | "mqa" => {}
        "ir" | "ds" | "dsa" | "cn" | "mha" => {
            return Err(err(format!(
                "block type `{block_type}` is a timm block this engine does not implement \
                 (supported: er, uir, mqa)"
            )))
        }
        other => {
            return Err(err(format!(
                "unknown block type `{other}` (supported: er, uir, mqa)"
            )))
        }
    }
    let mut options: BTreeMap<String, String> = BTreeMap::new();
    let mut noskip = false;
    for op in ops {
        if op == "noskip" {
            noskip = true;
        } else if op == "skip" {
            // Forces a skip only for `cn` blocks in timm; no effect here.
            noskip = false;
        } else if let Some(v) = op.strip_prefix('n') {
            // Activation override. timm silently ignores unknown values.
            if matches!(v, "re" | "r6" | "hs" | "sw" | "mi") {
                return Err(err(format!(
                    "activation override `{op}` is not supported (the encoder uses GELU-tanh)"
                )));
            }
        } else if let Some(pos) = op.find(|c: char| c.is_ascii_digit()) {
            let (k, v) = op.split_at(pos);
            if !matches!(
                k,
                "r" | "k"
                    | "s"
                    | "e"
                    | "c"
                    | "a"
                    | "p"
                    | "fc"
                    | "se"
                    | "gs"
                    | "cc"
                    | "d"
                    | "h"
                    | "v"
            ) {
                return Err(err(format!("unknown option `{op}`")));
            }
            options.insert(k.to_string(), v.to_string());
        } else if !op.is_empty() {
            // timm drops options without digits; they are almost certainly typos.
            return Err(err(format!("option `{op}` has no value")));
        }
    }
    let int = |key: &str| -> Result<Option<usize>> {
        match options.get(key) {
            None => Ok(None),
            Some(v) => {
                let n = v
                    .parse::<usize>()
                    .map_err(|_| err(format!("option `{key}{v}`: `{v}` is not an integer")))?;
                let limit = match key {
                    "r" => crate::models::limits::BLOCK_REPEAT,
                    "k" | "a" | "p" => crate::models::limits::KERNEL,
                    _ => crate::models::limits::CHANNELS,
                };
                if n > limit {
                    return Err(err(format!(
                        "option `{key}{v}`: larger than the {limit} this engine accepts"
                    )));
                }
                Ok(Some(n))
            }
        }
    };
    let required = |key: &str, what: &str| -> Result<usize> {
        int(key)?.ok_or_else(|| err(format!("missing `{key}` ({what})")))
    };
    let float = |key: &str, what: &str| -> Result<f64> {
        let v = options
            .get(key)
            .ok_or_else(|| err(format!("missing `{key}` ({what})")))?;
        match v.parse::<f64>() {
            Ok(x) if x.is_finite() && x > 0.0 && x <= crate::models::limits::EXPANSION => Ok(x),
            _ => Err(err(format!(
                "option `{key}{v}`: `{v}` is not a number in (0, {}]",
                crate::models::limits::EXPANSION
            ))),
        }
    };
    let ksize = |key: &str| -> Result<Option<usize>> {
        match options.get(key) {
            None => Ok(None),
            Some(v) if v.contains('.') => Err(err(format!(
                "option `{key}{v}`: mixed kernel sizes (MixedConv2d) are not supported"
            ))),
            Some(_) => int(key),
        }
    };
    // Parsed for every block type, as timm does before branching.
    let start_kernel = ksize("a")?;
    let end_kernel = ksize("p")?;
    let force_in_chs = int("fc")?.unwrap_or(0);
    let repeat = required("r", "repeat count")?;
    if repeat == 0 {
        return Err(err("repeat count `r` must be at least 1".into()));
    }
    let out_chs = required("c", "output channels")?;
    if out_chs == 0 {
        return Err(err("output channels `c` must be positive".into()));
    }
    let stride = required("s", "stride")?;
    if stride != 1 && stride != 2 {
        return Err(err(format!("stride {stride} (timm allows 1 or 2)")));
    }
    let se = match options.get("se") {
        None => 0.0,
        Some(v) => v
            .parse::<f64>()
            .map_err(|_| err(format!("option `se{v}`: not a number")))?,
    };
    let group_size = int("gs")?;
    let kind = match block_type {
        "er" => {
            if se != 0.0 {
                return Err(err("squeeze-excite (`se`) is not supported".into()));
            }
            if group_size.unwrap_or(0) != 0 {
                return Err(err("grouped convolutions (`gs`) are not supported".into()));
            }
            let k = ksize("k")?.ok_or_else(|| err("missing `k` (kernel size)".into()))?;
            BlockKindArgs::EdgeResidual {
                exp_kernel_size: k,
                pw_kernel_size: end_kernel.unwrap_or(1),
                exp_ratio: float("e", "expansion ratio")?,
                force_in_chs,
            }
        }
        "uir" => {
            if se != 0.0 {
                return Err(err("squeeze-excite (`se`) is not supported".into()));
            }
            if group_size.unwrap_or(1) != 1 {
                return Err(err(
                    "group size other than 1 (depthwise) is not supported".into()
                ));
            }
            let k = ksize("k")?.ok_or_else(|| err("missing `k` (mid dw kernel size)".into()))?;
            let a = start_kernel.unwrap_or(0);
            let p = end_kernel.unwrap_or(0);
            if stride > 1 && a == 0 && k == 0 && p == 0 {
                return Err(err(
                    "a strided uir block needs a depthwise conv (`a`, `k` or `p` > 0)".into(),
                ));
            }
            BlockKindArgs::UniversalInvertedResidual {
                dw_kernel_size_start: a,
                dw_kernel_size_mid: k,
                dw_kernel_size_end: p,
                exp_ratio: float("e", "expansion ratio")?,
            }
        }
        "mqa" => {
            let k = ksize("k")?.ok_or_else(|| err("missing `k` (kv dw kernel size)".into()))?;
            let h = required("h", "number of heads")?;
            let d = required("d", "key/value dim")?;
            let v = int("v")?.unwrap_or(1);
            if h == 0 || d == 0 || v == 0 {
                return Err(err("`h`, `d` and `v` must be positive".into()));
            }
            if v > 1 && k == 0 {
                return Err(err("kv stride needs a down_conv kernel `k` > 0".into()));
            }
            BlockKindArgs::MobileAttention {
                dw_kernel_size: k,
                num_heads: h,
                key_dim: d,
                value_dim: d,
                kv_stride: v,
            }
        }
        _ => unreachable!("block type checked above"),
    };
    Ok((
        BlockArgs {
            out_chs,
            stride,
            noskip,
            kind,
        },
        repeat,
    ))
}

// ------------------------------------------------------------------------------------------------
// Resolved architecture (timm EfficientNetBuilder)
// ------------------------------------------------------------------------------------------------

/// A block with everything the builder derives: channels, effective stride and dilation, skip.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockSpec {
    pub stage: usize,
    pub index: usize,
    pub block_str: String,
    pub in_chs: usize,
    pub out_chs: usize,
    /// Effective stride (only the first block of a stage keeps its string's stride).
    pub stride: usize,
    pub dilation: usize,
    pub has_skip: bool,
    /// Whether timm would create a `layer_scale` (UIR / MQA with `layer_scale_init_value`).
    pub layer_scale: bool,
    pub kind: BlockSpecKind,
}

#[derive(Clone, Debug, PartialEq)]
pub enum BlockSpecKind {
    EdgeResidual {
        exp_kernel_size: usize,
        pw_kernel_size: usize,
        mid_chs: usize,
    },
    UniversalInvertedResidual {
        dw_kernel_size_start: usize,
        dw_kernel_size_mid: usize,
        dw_kernel_size_end: usize,
        mid_chs: usize,
    },
    MobileAttention {
        dw_kernel_size: usize,
        num_heads: usize,
        key_dim: usize,
        value_dim: usize,
        kv_stride: usize,
    },
}

impl BlockSpec {
    pub fn type_name(&self) -> &'static str {
        match self.kind {
            BlockSpecKind::EdgeResidual { .. } => "er",
            BlockSpecKind::UniversalInvertedResidual { .. } => "uir",
            BlockSpecKind::MobileAttention { .. } => "mqa",
        }
    }

    /// Checkpoint keys (relative to the block) and shapes, in timm state_dict order.
    pub fn tensors(&self, out: &mut Vec<(String, Vec<usize>)>) {
        let p = format!("blocks.{}.{}", self.stage, self.index);
        let mut push = |k: &str, s: Vec<usize>| out.push((format!("{p}.{k}"), s));
        let (i, o) = (self.in_chs, self.out_chs);
        match self.kind {
            BlockSpecKind::EdgeResidual {
                exp_kernel_size: k,
                pw_kernel_size: pk,
                mid_chs: m,
            } => {
                push("conv_exp.weight", vec![m, i, k, k]);
                push("bn1.weight", vec![m]);
                push("conv_pwl.weight", vec![o, m, pk, pk]);
                push("bn2.weight", vec![o]);
            }
            BlockSpecKind::UniversalInvertedResidual {
                dw_kernel_size_start: a,
                dw_kernel_size_mid: k,
                dw_kernel_size_end: e,
                mid_chs: m,
            } => {
                uir_tensors(&mut push, i, o, a, k, e, m);
            }
            BlockSpecKind::MobileAttention {
                dw_kernel_size: k,
                num_heads: h,
                key_dim: kd,
                value_dim: vd,
                kv_stride,
            } => {
                push("norm.weight", vec![i]);
                push("attn.query.proj.weight", vec![h * kd, i, 1, 1]);
                for (name, d) in [("key", kd), ("value", vd)] {
                    if kv_stride > 1 {
                        push(&format!("attn.{name}.down_conv.weight"), vec![i, 1, k, k]);
                        push(&format!("attn.{name}.norm.weight"), vec![i]);
                    }
                    push(&format!("attn.{name}.proj.weight"), vec![d, i, 1, 1]);
                }
                push("attn.output.proj.weight", vec![o, h * vd, 1, 1]);
            }
        }
        if self.layer_scale {
            push("layer_scale.gamma", vec![o]);
        }
    }

    fn describe(&self) -> String {
        let mut s = format!("{} {}->{}", self.type_name(), self.in_chs, self.out_chs);
        match self.kind {
            BlockSpecKind::EdgeResidual {
                exp_kernel_size,
                mid_chs,
                ..
            } => {
                let _ = write!(s, " k{exp_kernel_size} mid {mid_chs}");
            }
            BlockSpecKind::UniversalInvertedResidual {
                dw_kernel_size_start: a,
                dw_kernel_size_mid: k,
                dw_kernel_size_end: e,
                mid_chs,
            } => {
                let _ = write!(s, " dw {a}/{k}/{e} mid {mid_chs}");
            }
            BlockSpecKind::MobileAttention {
                num_heads,
                key_dim,
                kv_stride,
                ..
            } => {
                let _ = write!(s, " h{num_heads} d{key_dim} kv-stride {kv_stride}");
            }
        }
        if self.stride > 1 {
            let _ = write!(s, " s{}", self.stride);
        }
        if self.dilation > 1 {
            let _ = write!(s, " dil{}", self.dilation);
        }
        if self.has_skip {
            s.push_str(" +skip");
        }
        s
    }
}

/// Keys of a UIR (relative names pushed through `push`).
fn uir_tensors(
    push: &mut impl FnMut(&str, Vec<usize>),
    i: usize,
    o: usize,
    a: usize,
    k: usize,
    e: usize,
    m: usize,
) {
    if a > 0 {
        push("dw_start.conv.weight", vec![i, 1, a, a]);
        push("dw_start.bn.weight", vec![i]);
    }
    push("pw_exp.conv.weight", vec![m, i, 1, 1]);
    push("pw_exp.bn.weight", vec![m]);
    if k > 0 {
        push("dw_mid.conv.weight", vec![m, 1, k, k]);
        push("dw_mid.bn.weight", vec![m]);
    }
    push("pw_proj.conv.weight", vec![o, m, 1, 1]);
    push("pw_proj.bn.weight", vec![o]);
    if e > 0 {
        push("dw_end.conv.weight", vec![o, 1, e, e]);
        push("dw_end.bn.weight", vec![o]);
    }
}

/// One entry of timm's `feature_info`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FeatureInfo {
    /// 0 = stem, `s + 1` = stage `s`.
    pub stage: usize,
    pub num_chs: usize,
    pub reduction: usize,
}

/// The encoder architecture resolved from a [`VisionConfig`], without weights.
#[derive(Clone, Debug, PartialEq)]
pub struct EncoderArch {
    pub in_chans: usize,
    pub stem_size: usize,
    pub stem_bias: bool,
    pub stages: Vec<Vec<BlockSpec>>,
    pub feature_info: Vec<FeatureInfo>,
    /// `msfa_indices` resolved against `feature_info` (timm `feature_take_indices`).
    pub msfa_indices: Vec<usize>,
    /// Forward taps feeding the MSFA, ascending: 0 = stem output, `s + 1` = output of stage `s`.
    /// (timm's forward compares its stage counter with `msfa_indices`.)
    pub msfa_taps: Vec<usize>,
    pub msfa_in_chs: usize,
    pub msfa_mid_chs: usize,
    pub num_features: usize,
    pub output_resolution: usize,
    pub image_size: usize,
    pub norm_eps: f64,
}

/// timm `EfficientNetBuilder(output_stride=32)`.
const OUTPUT_STRIDE: usize = 32;

impl EncoderArch {
    pub fn from_config(cfg: &VisionConfig) -> Result<Self> {
        if cfg.block_strings.is_empty() {
            return Err(Error::config("vision_config.block_strings is empty"));
        }
        use crate::models::limits::{self as max, check};
        check("vision_config.stem_size", cfg.stem_size, max::CHANNELS)?;
        check(
            "vision_config.num_features",
            cfg.num_features,
            max::CHANNELS,
        )?;
        check("vision_config.image_size", cfg.image_size, max::IMAGE_SIZE)?;
        check(
            "vision_config.msfa_output_resolution",
            cfg.msfa_output_resolution,
            cfg.image_size,
        )?;
        if !(cfg.norm_eps.is_finite() && cfg.norm_eps >= 0.0) {
            return Err(Error::config(
                "vision_config.norm_eps must be a finite number >= 0",
            ));
        }
        // decode_arch_def: repeats expand into copies.
        let mut decoded: Vec<Vec<(BlockArgs, String)>> = Vec::new();
        for (si, stage) in cfg.block_strings.iter().enumerate() {
            if stage.is_empty() {
                return Err(Error::config(format!(
                    "vision_config.block_strings[{si}] is an empty stage"
                )));
            }
            let mut blocks = Vec::new();
            for s in stage {
                let (args, repeat) = decode_block_str(s)?;
                if decoded.iter().map(Vec::len).sum::<usize>() + blocks.len() + repeat
                    > max::VISION_BLOCKS
                {
                    return Err(Error::config(format!(
                        "vision_config.block_strings expand to more than {} blocks",
                        max::VISION_BLOCKS
                    )));
                }
                for _ in 0..repeat {
                    blocks.push((args.clone(), s.clone()));
                }
            }
            decoded.push(blocks);
        }
        let stem_size = round_channels(cfg.stem_size);
        let layer_scale = cfg.layer_scale_init_value.is_some();
        let mut in_chs = stem_size;
        let mut current_stride = 2;
        let mut current_dilation = 1;
        let mut feature_info = Vec::new();
        if decoded[0][0].0.stride > 1 {
            feature_info.push(FeatureInfo {
                stage: 0,
                num_chs: in_chs,
                reduction: current_stride,
            });
        }
        let n_stages = decoded.len();
        let mut stages = Vec::with_capacity(n_stages);
        for (si, stage) in decoded.iter().enumerate() {
            let mut specs = Vec::with_capacity(stage.len());
            for (bi, (args, block_str)) in stage.iter().enumerate() {
                let last_block = bi + 1 == stage.len();
                let mut stride = if bi >= 1 { 1 } else { args.stride };
                let extract = last_block && (si + 1 >= n_stages || decoded[si + 1][0].0.stride > 1);
                let mut next_dilation = current_dilation;
                if stride > 1 {
                    if current_stride * stride > OUTPUT_STRIDE {
                        next_dilation = current_dilation * stride;
                        stride = 1;
                    } else {
                        current_stride *= stride;
                    }
                }
                let dilation = current_dilation;
                current_dilation = next_dilation;
                let out_chs = round_channels(args.out_chs);
                let has_skip = in_chs == out_chs && stride == 1 && !args.noskip;
                let (kind, ls) = match args.kind {
                    BlockKindArgs::EdgeResidual {
                        exp_kernel_size,
                        pw_kernel_size,
                        exp_ratio,
                        force_in_chs,
                    } => {
                        let base = if force_in_chs > 0 {
                            round_channels(force_in_chs)
                        } else {
                            in_chs
                        };
                        (
                            BlockSpecKind::EdgeResidual {
                                exp_kernel_size,
                                pw_kernel_size,
                                mid_chs: make_divisible(base as f64 * exp_ratio, 8),
                            },
                            false,
                        )
                    }
                    BlockKindArgs::UniversalInvertedResidual {
                        dw_kernel_size_start,
                        dw_kernel_size_mid,
                        dw_kernel_size_end,
                        exp_ratio,
                    } => (
                        BlockSpecKind::UniversalInvertedResidual {
                            dw_kernel_size_start,
                            dw_kernel_size_mid,
                            dw_kernel_size_end,
                            mid_chs: make_divisible(in_chs as f64 * exp_ratio, 8),
                        },
                        layer_scale,
                    ),
                    BlockKindArgs::MobileAttention {
                        dw_kernel_size,
                        num_heads,
                        key_dim,
                        value_dim,
                        kv_stride,
                    } => (
                        BlockSpecKind::MobileAttention {
                            dw_kernel_size,
                            num_heads,
                            key_dim,
                            value_dim,
                            kv_stride,
                        },
                        layer_scale,
                    ),
                };
                specs.push(BlockSpec {
                    stage: si,
                    index: bi,
                    block_str: block_str.clone(),
                    in_chs,
                    out_chs,
                    stride,
                    dilation,
                    has_skip,
                    layer_scale: ls,
                    kind,
                });
                in_chs = out_chs;
                if extract {
                    feature_info.push(FeatureInfo {
                        stage: si + 1,
                        num_chs: out_chs,
                        reduction: current_stride,
                    });
                }
            }
            stages.push(specs);
        }

        // MSFA inputs: timm resolves msfa_indices against feature_info (channels), but its
        // forward taps the stem (0) and stage outputs (s + 1) whose counter equals an index.
        let nf = feature_info.len() as i64;
        let mut msfa_indices = Vec::new();
        for &i in &cfg.msfa_indices {
            let idx = if i < 0 { nf + i } else { i };
            if idx < 0 || idx >= nf {
                return Err(Error::config(format!(
                    "msfa index {i} is out of range for {nf} feature levels"
                )));
            }
            msfa_indices.push(idx as usize);
        }
        if msfa_indices.is_empty() {
            return Err(Error::config("vision_config.msfa_indices is empty"));
        }
        let msfa_in_chs: usize = msfa_indices.iter().map(|&i| feature_info[i].num_chs).sum();
        let mut msfa_taps: Vec<usize> = msfa_indices.clone();
        msfa_taps.sort_unstable();
        msfa_taps.dedup();
        let tap_chs = |t: usize| -> Option<usize> {
            if t == 0 {
                Some(stem_size)
            } else {
                stages
                    .get(t - 1)
                    .map(|s: &Vec<BlockSpec>| s.last().unwrap().out_chs)
            }
        };
        let mut tapped = 0;
        for &t in &msfa_taps {
            tapped += tap_chs(t).ok_or_else(|| {
                Error::config(format!("msfa index {t} has no matching stage output"))
            })?;
        }
        if tapped != msfa_in_chs {
            return Err(Error::config(format!(
                "msfa_indices {:?} select feature_info channels {msfa_in_chs}, but the stage outputs \
                 timm's forward would concatenate have {tapped} channels (timm itself would fail)",
                cfg.msfa_indices
            )));
        }
        Ok(EncoderArch {
            in_chans: 3,
            stem_size,
            stem_bias: cfg.stem_bias,
            stages,
            feature_info,
            msfa_indices,
            msfa_taps,
            msfa_in_chs,
            msfa_mid_chs: make_divisible(msfa_in_chs as f64 * 2.0, 8),
            num_features: cfg.num_features,
            output_resolution: cfg.msfa_output_resolution,
            image_size: cfg.image_size,
            norm_eps: cfg.norm_eps,
        })
    }

    pub fn num_blocks(&self) -> usize {
        self.stages.iter().map(|s| s.len()).sum()
    }

    /// Visual tokens per image: `R * R`.
    pub fn tokens_per_image(&self) -> usize {
        self.output_resolution * self.output_resolution
    }

    /// Every checkpoint key (timm names, no prefix) with its shape, in state_dict order.
    pub fn tensors(&self) -> Vec<(String, Vec<usize>)> {
        let mut out = Vec::new();
        let s = self.stem_size;
        out.push(("conv_stem.conv.weight".into(), vec![s, self.in_chans, 3, 3]));
        if self.stem_bias {
            out.push(("conv_stem.conv.bias".into(), vec![s]));
        }
        out.push(("conv_stem.bn.weight".into(), vec![s]));
        for b in self.stages.iter().flatten() {
            b.tensors(&mut out);
        }
        let (i, m, o) = (self.msfa_in_chs, self.msfa_mid_chs, self.num_features);
        uir_tensors(
            &mut |k: &str, shape| out.push((format!("msfa.ffn.{k}"), shape)),
            i,
            o,
            0,
            0,
            0,
            m,
        );
        out.push(("msfa.norm.weight".into(), vec![o]));
        out
    }

    /// Parameters the architecture has (with layer scales when the config asks for them).
    pub fn param_count(&self) -> usize {
        self.tensors()
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    }

    /// A short human-readable description: stem, stages, MSFA.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "MobileNetV5 encoder: {} blocks in {} stages, {} params",
            self.num_blocks(),
            self.stages.len(),
            self.param_count()
        );
        let _ = writeln!(
            s,
            "  stem: conv3x3 s2 {}->{}{}, RMSNorm, GELU",
            self.in_chans,
            self.stem_size,
            if self.stem_bias { " (bias)" } else { "" }
        );
        for (si, stage) in self.stages.iter().enumerate() {
            let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
            for b in stage {
                *counts.entry(b.type_name()).or_default() += 1;
            }
            let kinds: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
            let stride: usize = stage.iter().map(|b| b.stride).product();
            let _ = writeln!(
                s,
                "  stage {si}: {} blocks ({}), {}->{} channels, stride {stride}",
                stage.len(),
                kinds.join(", "),
                stage[0].in_chs,
                stage.last().unwrap().out_chs
            );
            // Collapse runs of identical descriptions.
            let descs: Vec<String> = stage.iter().map(|b| b.describe()).collect();
            let mut i = 0;
            while i < descs.len() {
                let mut j = i + 1;
                while j < descs.len() && descs[j] == descs[i] {
                    j += 1;
                }
                // Alternating pairs (mqa, uir) x n.
                let mut pairs = 1;
                if j == i + 1 && i + 1 < descs.len() {
                    while i + 2 * pairs + 1 < descs.len()
                        && descs[i + 2 * pairs] == descs[i]
                        && descs[i + 2 * pairs + 1] == descs[i + 1]
                    {
                        pairs += 1;
                    }
                }
                if pairs > 1 {
                    let _ = writeln!(
                        s,
                        "    [{}..{}] ({} ; {}) x{pairs}",
                        i,
                        i + 2 * pairs - 1,
                        descs[i],
                        descs[i + 1]
                    );
                    i += 2 * pairs;
                } else {
                    let range = if j - i > 1 {
                        format!("[{}..{}]", i, j - 1)
                    } else {
                        format!("[{i}]")
                    };
                    let times = if j - i > 1 {
                        format!(" x{}", j - i)
                    } else {
                        String::new()
                    };
                    let _ = writeln!(s, "    {range} {}{times}", descs[i]);
                    i = j;
                }
            }
        }
        let taps: Vec<String> = self
            .msfa_taps
            .iter()
            .map(|&t| {
                if t == 0 {
                    "stem".to_string()
                } else {
                    format!("stage {}", t - 1)
                }
            })
            .collect();
        let _ = write!(
            s,
            "  msfa: {} ({} ch) -> pw {} -> pw {} -> {}x{}, RMSNorm",
            taps.join(" + "),
            self.msfa_in_chs,
            self.msfa_mid_chs,
            self.num_features,
            self.output_resolution,
            self.output_resolution
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::{WeightStore, Weights};
    use std::collections::HashMap;
    use std::sync::Arc;

    fn uir(a: usize, k: usize, e: usize, r: f64) -> BlockKindArgs {
        BlockKindArgs::UniversalInvertedResidual {
            dw_kernel_size_start: a,
            dw_kernel_size_mid: k,
            dw_kernel_size_end: e,
            exp_ratio: r,
        }
    }

    #[test]
    fn decodes_timm_examples() {
        let (a, r) = decode_block_str("er_r1_k3_s2_e4_c128").unwrap();
        assert_eq!(r, 1);
        assert_eq!(
            a,
            BlockArgs {
                out_chs: 128,
                stride: 2,
                noskip: false,
                kind: BlockKindArgs::EdgeResidual {
                    exp_kernel_size: 3,
                    pw_kernel_size: 1,
                    exp_ratio: 4.0,
                    force_in_chs: 0
                }
            }
        );
        let (a, _) = decode_block_str("uir_r1_a3_k5_s2_e6_c256").unwrap();
        assert_eq!((a.out_chs, a.stride), (256, 2));
        assert_eq!(a.kind, uir(3, 5, 0, 6.0));
        let (a, r) = decode_block_str("uir_r2_a5_k0_e4_c256_s1").unwrap();
        assert_eq!(r, 2);
        assert_eq!(a.kind, uir(5, 0, 0, 4.0));
        let (a, _) = decode_block_str("mqa_r1_k3_h12_v2_s1_d64_c640").unwrap();
        assert_eq!(
            a.kind,
            BlockKindArgs::MobileAttention {
                dw_kernel_size: 3,
                num_heads: 12,
                key_dim: 64,
                value_dim: 64,
                kv_stride: 2
            }
        );
        let (a, _) = decode_block_str("mqa_r1_k3_h16_s1_d96_c1280").unwrap();
        assert_eq!(
            a.kind,
            BlockKindArgs::MobileAttention {
                dw_kernel_size: 3,
                num_heads: 16,
                key_dim: 96,
                value_dim: 96,
                kv_stride: 1
            }
        );
        let (a, _) = decode_block_str("uir_r1_a0_k3_p3_s1_e2.5_c24_noskip").unwrap();
        assert!(a.noskip);
        assert_eq!(a.kind, uir(0, 3, 3, 2.5));
        let (a, _) = decode_block_str("er_r1_k3_s1_e4_c16_p3_fc12").unwrap();
        assert_eq!(
            a.kind,
            BlockKindArgs::EdgeResidual {
                exp_kernel_size: 3,
                pw_kernel_size: 3,
                exp_ratio: 4.0,
                force_in_chs: 12
            }
        );
        // Unknown activation names are ignored by timm, and so here.
        assert!(decode_block_str("uir_r1_a3_k0_s1_e4_c16_nxx").is_ok());
    }

    #[test]
    fn uir_r2_without_stride_is_an_error_like_timm_keyerror() {
        // timm's own docstring example `uir_r2_a5_k0_e4_c256` has no `s`: int(options['s']) fails.
        let e = decode_block_str("uir_r2_a5_k0_e4_c256").unwrap_err();
        assert!(e.to_string().contains("missing `s`"), "{e}");
    }

    #[test]
    fn bad_block_strings_are_errors() {
        for (s, needle) in [
            ("ir_r1_k3_s1_e4_c16", "does not implement"),
            ("ds_r1_k3_s1_c16", "does not implement"),
            ("zz_r1_k3_s1_c16", "unknown block type"),
            ("uir_r1_a3_k0_s1_e4", "missing `c`"),
            ("uir_a3_k0_s1_e4_c16", "missing `r`"),
            ("uir_r1_a3_s1_e4_c16", "missing `k`"),
            ("uir_r1_a3_k0_s1_c16", "missing `e`"),
            ("uir_r1_a3_k0_s1_e4_c1x6", "not an integer"),
            ("uir_r1_a3_k0_s1_ex_c16", "no value"),
            ("uir_r1_a3_k0_s1_e0_c16", "not a number in (0, 64]"),
            ("uir_r1_a3_k0_s1_e65_c16", "not a number in (0, 64]"),
            ("uir_r257_a3_k0_s1_e4_c16", "larger than the 256"),
            ("uir_r1_a3_k0_s1_e4_c70000", "larger than the 65536"),
            ("uir_r1_a3_k17_s1_e4_c16", "larger than the 15"),
            ("uir_r1_a3_k0_s3_e4_c16", "stride 3"),
            ("uir_r1_a3_k3.5_s1_e4_c16", "mixed kernel"),
            ("uir_r1_a3_k0_s1_e4_c16_se0.25", "squeeze-excite"),
            ("uir_r1_a3_k0_s1_e4_c16_nre", "activation override"),
            ("uir_r1_a3_k0_s1_e4_c16_q7", "unknown option"),
            ("uir_r1_a0_k0_s2_e4_c16", "needs a depthwise"),
            ("uir_r0_a3_k0_s1_e4_c16", "at least 1"),
            ("mqa_r1_k3_s1_d64_c640", "missing `h`"),
            ("mqa_r1_k3_h4_s1_c640", "missing `d`"),
            ("er_r1_k3_s1_e4_c16_gs8", "grouped"),
        ] {
            match decode_block_str(s) {
                Err(e @ Error::BlockString { .. }) => {
                    assert!(e.to_string().contains(needle), "{s}: {e}")
                }
                other => panic!("{s}: expected a BlockString error, got {other:?}"),
            }
        }
    }

    #[test]
    fn make_divisible_matches_timm() {
        // Values from timm.layers.make_divisible.
        assert_eq!(make_divisible(64.0 * 4.0, 8), 256);
        assert_eq!(make_divisible(20.0, 8), 24);
        assert_eq!(make_divisible(12.0, 8), 16);
        assert_eq!(make_divisible(11.0, 8), 16);
        assert_eq!(make_divisible(3.0, 8), 8);
        assert_eq!(make_divisible(16.0 * 2.5, 8), 40);
        assert_eq!(make_divisible(36.0, 8), 40);
        assert_eq!(make_divisible(35.0, 8), 32);
        assert_eq!(make_divisible(9.0, 8), 16); // 8 < 0.9 * 9 -> +8
        assert_eq!(round_channels(100), 104);
    }

    fn read_tsv() -> Vec<(String, Vec<usize>)> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/mobilenetv5_300m_enc_keys.tsv"
        );
        let text = std::fs::read_to_string(path).unwrap();
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| {
                let (k, s) = l.split_once('\t').unwrap();
                let dims = s
                    .trim_matches(|c| c == '(' || c == ')')
                    .split(',')
                    .map(str::trim)
                    .filter(|d| !d.is_empty())
                    .map(|d| d.parse().unwrap())
                    .collect();
                (k.to_string(), dims)
            })
            .collect()
    }

    #[test]
    fn real_300m_arch_matches_timm_key_list() {
        let arch = VisionConfig::mobilenetv5_300m_enc().arch().unwrap();
        assert_eq!(arch.num_blocks(), 84);
        assert_eq!(
            arch.stages.iter().map(|s| s.len()).collect::<Vec<_>>(),
            vec![3, 5, 37, 39]
        );
        assert_eq!(arch.feature_info.len(), 5);
        assert_eq!(arch.msfa_indices, vec![3, 4]);
        assert_eq!(arch.msfa_taps, vec![3, 4]);
        assert_eq!((arch.msfa_in_chs, arch.msfa_mid_chs), (1920, 3840));
        assert_eq!(arch.tokens_per_image(), 256);
        let ours = arch.tensors();
        let theirs = read_tsv();
        assert_eq!(theirs.len(), 548);
        assert_eq!(ours.len(), 548);
        let a: HashMap<_, _> = ours.into_iter().collect();
        let b: HashMap<_, _> = theirs.into_iter().collect();
        for (k, s) in &b {
            assert_eq!(a.get(k), Some(s), "key {k}");
        }
        assert_eq!(a.len(), b.len());
        assert_eq!(arch.param_count(), 294_126_912);
        // Block details the builder derives.
        let b20 = &arch.stages[2][0];
        assert_eq!((b20.stride, b20.has_skip, b20.in_chs), (2, false, 256));
        let b29 = &arch.stages[2][9];
        assert!(b29.has_skip && b29.layer_scale);
        assert!(!arch.stages[0][0].has_skip && arch.stages[0][1].has_skip);
        assert!(!arch.stages[0][1].layer_scale);
        let summary = arch.summary();
        assert!(summary.contains("84 blocks"), "{summary}");
        assert!(summary.contains("x14"), "{summary}");
    }

    #[test]
    fn stride_only_on_first_block_of_stage_and_dilation_past_32() {
        let cfg = VisionConfig {
            block_strings: vec![
                vec!["er_r2_k3_s2_e2_c8".into()],
                vec!["uir_r1_a3_k0_s2_e2_c16".into()],
                vec!["uir_r1_a3_k3_s2_e2_c16".into()],
                vec!["uir_r1_a3_k3_s2_e2_c16".into()],
                vec![
                    "uir_r2_a3_k3_s2_e2_c16".into(),
                    "mqa_r1_k3_h2_v2_s2_d8_c16".into(),
                ],
            ],
            stem_size: 8,
            msfa_indices: vec![-1],
            msfa_output_resolution: 4,
            num_features: 16,
            image_size: 64,
            norm_eps: 1e-6,
            stem_bias: true,
            layer_scale_init_value: None,
        };
        let arch = cfg.arch().unwrap();
        assert_eq!(arch.stages[0][0].stride, 2);
        assert_eq!(arch.stages[0][1].stride, 1);
        // stem 2, then x2 four times = 32; the fifth stride becomes dilation.
        assert_eq!(arch.stages[4][0].stride, 1);
        assert_eq!(arch.stages[4][0].dilation, 1);
        assert_eq!(arch.stages[4][1].dilation, 2);
        assert_eq!(arch.stages[4][2].stride, 1);
        assert_eq!(arch.feature_info.last().unwrap().reduction, 32);
        assert!(arch
            .tensors()
            .iter()
            .all(|(k, _)| !k.contains("layer_scale")));
    }

    #[test]
    fn msfa_index_errors() {
        let mut cfg = VisionConfig::mobilenetv5_300m_enc();
        cfg.msfa_indices = vec![-6];
        assert!(matches!(cfg.arch(), Err(Error::Config(_))));
        cfg.msfa_indices = vec![-1, -1];
        assert!(matches!(cfg.arch(), Err(Error::Config(_))));
        // Reversed order is fine: the forward concatenates in stage order.
        cfg.msfa_indices = vec![-1, -2];
        assert_eq!(cfg.arch().unwrap().msfa_taps, vec![3, 4]);
    }

    #[test]
    fn config_json_defaults() {
        let cfg: VisionConfig = serde_json::from_str(
            r#"{"block_strings": [["er_r1_k3_s2_e4_c8"]], "stem_size": 8, "msfa_indices": [-1],
                "msfa_output_resolution": 4, "num_features": 8, "image_size": 64}"#,
        )
        .unwrap();
        assert_eq!(cfg.norm_eps, 1e-6);
        assert!(cfg.stem_bias);
        assert_eq!(cfg.layer_scale_init_value, Some(1e-5));
    }

    /// A safetensors checkpoint with the arch's keys filled with a deterministic pattern.
    pub(super) fn synthetic_weights(arch: &EncoderArch, dir: &std::path::Path) -> Weights {
        let tensors = arch.tensors();
        let mut bufs: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        for (ti, (k, s)) in tensors.iter().enumerate() {
            let n: usize = s.iter().product();
            let fan_in: usize = s.iter().skip(1).product::<usize>().max(1);
            let vals: Vec<f32> = (0..n)
                .map(|i| {
                    let u = ((i * 7919 + ti * 104_729) % 2003) as f32 / 1001.5 - 1.0;
                    if s.len() == 1 {
                        1.0 + 0.1 * u
                    } else {
                        u * (3.0 / fan_in as f32).sqrt()
                    }
                })
                .collect();
            bufs.push((
                format!("model.vision_tower.timm_model.{k}"),
                s.clone(),
                vals.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ));
        }
        let views: Vec<(String, safetensors::tensor::TensorView)> = bufs
            .iter()
            .map(|(k, s, b)| {
                (
                    k.clone(),
                    safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                        .unwrap(),
                )
            })
            .collect();
        let path = dir.join("model.safetensors");
        safetensors::serialize_to_file(views, None, &path).unwrap();
        Weights::new(Arc::new(WeightStore::open_files(&[path]).unwrap()))
            .pp("model.vision_tower.timm_model")
    }

    #[test]
    fn missing_and_misshapen_tensors_are_reported() {
        let cfg = VisionConfig {
            block_strings: vec![vec!["er_r1_k3_s2_e2_c8".into()]],
            stem_size: 8,
            msfa_indices: vec![-1],
            msfa_output_resolution: 2,
            num_features: 8,
            image_size: 32,
            norm_eps: 1e-6,
            stem_bias: true,
            layer_scale_init_value: None,
        };
        let arch = cfg.arch().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let w = synthetic_weights(&arch, dir.path());
        // More channels than the checkpoint has -> shape error naming the key.
        let mut big = cfg.clone();
        big.block_strings = vec![vec!["er_r1_k3_s2_e4_c8".into()]];
        let load = |cfg: &VisionConfig| {
            let store = w.store();
            let g = graph::build(cfg, store.as_ref(), w.prefix(), (32, 32))?;
            crate::exec::FloatProgram::load(g, store)
        };
        match load(&big) {
            Err(Error::TensorShape { name, .. }) => {
                assert_eq!(
                    name,
                    "model.vision_tower.timm_model.blocks.0.0.conv_exp.weight"
                )
            }
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("expected a shape error"),
        }
        let mut more = cfg.clone();
        more.block_strings[0].push("er_r1_k3_s1_e2_c8".into());
        match load(&more) {
            Err(Error::MissingTensor(k)) => {
                assert_eq!(
                    k,
                    "model.vision_tower.timm_model.blocks.0.1.conv_exp.weight"
                )
            }
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("expected a missing-tensor error"),
        }
    }
}
