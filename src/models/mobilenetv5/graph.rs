//! MobileNetV5 encoder + Multi-Scale Fusion Adapter as a graph: timm
//! `MobileNetV5Encoder.forward_features` (`timm/models/mobilenetv5.py`; blocks from
//! `_efficientnet_blocks.py`, attention from `layers/attention2d.py`), one node per reference op.
//!
//! Node names are the observations of [`super::MobileNetV5Encoder`] (checkpoint keys below the
//! timm root): a `ConvNormAct` `X` gives `X.conv`, `X.bn` and `X` (the GELU, or `X.bn` reported a
//! second time when the module has no activation); a block reports its output under its own name
//! (the residual sum, or its last op's output a second time when there is no shortcut).
//!
//! Ports: `pixels` (`[3, H, W]`) and `features` (`[R * R, C]` tokens after the MSFA norm, row-major
//! over the output grid). A graph is built for one input size: timm's TF-"same" padding, every
//! map size and the MSFA's resize / pool choice depend on it. Stages after the last MSFA tap are
//! not built, as the reference forward does not run them.

use super::{BlockSpec, BlockSpecKind, EncoderArch, VisionConfig};
use crate::error::{Error, Result};
use crate::graph::{fixed, Elem, Graph, GraphBuilder, Op, ValueId, WeightSource};
use crate::ops::activation::Activation;
use crate::ops::conv::same_padding;

/// Every activation of `mobilenetv5_300m_enc` is GELU (tanh approximation).
const ACT: Activation = Activation::GeluTanh;

/// Builds the encoder of `cfg` for `[3, H, W]` pixels of `size = (H, W)`, weights below `root`
/// (`model.vision_tower.timm_model` in an AutoNeural checkpoint).
pub fn build(
    cfg: &VisionConfig,
    w: &dyn WeightSource,
    root: &str,
    size: (usize, usize),
) -> Result<Graph> {
    let arch = cfg.arch()?;
    let (h, wd) = size;
    if h == 0 || wd == 0 {
        return Err(Error::input(format!(
            "vision encoder input has an empty spatial size {:?}",
            [arch.in_chans, h, wd]
        )));
    }
    let eps = arch.norm_eps as f32;
    let mut b = GraphBuilder::new(w, root);
    let pixels = b.input("pixels", fixed(&[arch.in_chans, h, wd]), Elem::F32);
    b.port("pixels", pixels);
    let stem = Conv {
        bias: arch.stem_bias,
        ..Conv::full(3, 2, 1)
    };
    let mut x = conv_norm_act(&mut b, eps, "conv_stem", pixels, arch.stem_size, stem, true)?;
    // timm's forward keeps the stem (tap 0) and stage outputs (tap s + 1) listed in the taps.
    let taps = &arch.msfa_taps;
    let last_tap = *taps.last().expect("EncoderArch has at least one msfa tap");
    let mut feats = Vec::with_capacity(taps.len());
    if taps.contains(&0) {
        feats.push(x);
    }
    for (si, stage) in arch.stages.iter().enumerate().take(last_tap) {
        for s in stage {
            let p = format!("blocks.{}.{}", s.stage, s.index);
            x = match s.kind {
                BlockSpecKind::EdgeResidual { .. } => edge_residual(&mut b, eps, &p, x, s)?,
                BlockSpecKind::UniversalInvertedResidual { .. } => uir(&mut b, eps, &p, x, s)?,
                BlockSpecKind::MobileAttention { .. } => mobile_attention(&mut b, eps, &p, x, s)?,
            };
        }
        if taps.contains(&(si + 1)) {
            feats.push(x);
        }
    }
    let map = msfa(&mut b, eps, &arch, &feats)?;
    let tokens = b.internal("features", Op::ToTokens, &[map])?;
    b.port("features", tokens);
    Ok(b.finish())
}

/// The geometry of a timm `create_conv2d(..., padding='same')`.
#[derive(Clone, Copy)]
struct Conv {
    kernel: usize,
    stride: usize,
    dilation: usize,
    depthwise: bool,
    bias: bool,
}

impl Conv {
    /// A regular `k x k` conv without bias.
    fn full(kernel: usize, stride: usize, dilation: usize) -> Self {
        Conv {
            kernel,
            stride,
            dilation,
            depthwise: false,
            bias: false,
        }
    }

    /// A depthwise `k x k` conv without bias.
    fn dw(kernel: usize, stride: usize, dilation: usize) -> Self {
        Conv {
            depthwise: true,
            ..Self::full(kernel, stride, dilation)
        }
    }

    /// A 1x1 conv without bias.
    fn pw() -> Self {
        Self::full(1, 1, 1)
    }
}

/// The `[C, H, W]` dimensions of map `x`.
fn chw(b: &GraphBuilder, x: ValueId) -> Result<(usize, usize, usize)> {
    Ok((b.dim(x, 0)?, b.dim(x, 1)?, b.dim(x, 2)?))
}

/// Conv `name` to `out` channels (`<name>.weight`, `<name>.bias`), with timm's "same" padding
/// resolved for `x`'s size as [`super::Conv2d::padding`] does.
fn conv2d(b: &mut GraphBuilder, name: &str, x: ValueId, out: usize, c: Conv) -> Result<ValueId> {
    if c.kernel == 0 {
        return Err(Error::config(format!("`{name}`: kernel size 0")));
    }
    let (c_in, h, w) = chw(b, x)?;
    let per_group = if c.depthwise { 1 } else { c_in };
    let weight = b.param(
        &format!("{name}.weight"),
        &[out, per_group, c.kernel, c.kernel],
    )?;
    let bias = c
        .bias
        .then(|| b.param(&format!("{name}.bias"), &[out]))
        .transpose()?;
    let pad = same_padding(h, w, c.kernel, c.stride, c.dilation);
    let op = Op::Conv2d {
        weight,
        bias,
        stride: c.stride,
        dilation: c.dilation,
        groups: if c.depthwise { c_in } else { 1 },
        pad: [pad.top, pad.bottom, pad.left, pad.right],
    };
    b.node(name, op, &[x])
}

/// timm `ConvNormAct`: `conv` -> `RmsNorm2d` (`bn`) -> GELU when `act`.
fn conv_norm_act(
    b: &mut GraphBuilder,
    eps: f32,
    name: &str,
    x: ValueId,
    out: usize,
    conv: Conv,
    act: bool,
) -> Result<ValueId> {
    let y = conv2d(b, &format!("{name}.conv"), x, out, conv)?;
    let y = b.rms_norm_2d(&format!("{name}.bn"), y, eps)?;
    if act {
        b.act(name, ACT, y)
    } else {
        b.alias(y, name)?;
        Ok(y)
    }
}

/// timm `LayerScale2d` (`<p>.layer_scale.gamma`) when the checkpoint has it (`expected` answers
/// without a checkpoint).
fn layer_scale(b: &mut GraphBuilder, p: &str, y: ValueId, expected: bool) -> Result<ValueId> {
    let key = format!("{p}.layer_scale.gamma");
    if !b.has(&key, expected) {
        return Ok(y);
    }
    let gamma = b.param(&key, &[b.dim(y, 0)?])?;
    b.node(
        &format!("{p}.layer_scale"),
        Op::ChannelScale { gamma },
        &[y],
    )
}

/// A block's output `p`: `y + shortcut` when the block has a skip, else `y` under a second name.
fn block_output(
    b: &mut GraphBuilder,
    p: &str,
    y: ValueId,
    shortcut: ValueId,
    skip: bool,
) -> Result<ValueId> {
    if skip {
        b.add(p, y, shortcut)
    } else {
        b.alias(y, p)?;
        Ok(y)
    }
}

/// timm `EdgeResidual` (fused MBConv): `conv_exp` (k x k, the block's stride) -> `bn1` -> GELU
/// (`bn1.act`) -> `conv_pwl` -> `bn2` (+ shortcut).
fn edge_residual(
    b: &mut GraphBuilder,
    eps: f32,
    p: &str,
    x: ValueId,
    s: &BlockSpec,
) -> Result<ValueId> {
    let BlockSpecKind::EdgeResidual {
        exp_kernel_size,
        pw_kernel_size,
        mid_chs,
    } = s.kind
    else {
        unreachable!("called for er blocks")
    };
    let exp = Conv::full(exp_kernel_size, s.stride, s.dilation);
    let h = conv2d(b, &format!("{p}.conv_exp"), x, mid_chs, exp)?;
    let h = b.rms_norm_2d(&format!("{p}.bn1"), h, eps)?;
    let h = b.act(&format!("{p}.bn1.act"), ACT, h)?;
    let pwl = Conv::full(pw_kernel_size, 1, 1);
    let y = conv2d(b, &format!("{p}.conv_pwl"), h, s.out_chs, pwl)?;
    let y = b.rms_norm_2d(&format!("{p}.bn2"), y, eps)?;
    block_output(b, p, y, x, s.has_skip)
}

/// timm `UniversalInvertedResidual`: [`dw_start`] -> `pw_exp` -> [`dw_mid`] -> `pw_proj` ->
/// [`dw_end`] -> [`layer_scale`] (+ shortcut). The stride sits on `dw_mid` when there is one,
/// else on `dw_start`, else on `dw_end`.
fn uir(b: &mut GraphBuilder, eps: f32, p: &str, x: ValueId, s: &BlockSpec) -> Result<ValueId> {
    let BlockSpecKind::UniversalInvertedResidual {
        dw_kernel_size_start: start,
        dw_kernel_size_mid: mid,
        dw_kernel_size_end: end,
        mid_chs,
    } = s.kind
    else {
        unreachable!("called for uir blocks")
    };
    let (stride, dil) = (s.stride, s.dilation);
    let mut h = x;
    if start > 0 {
        let st = if mid > 0 { 1 } else { stride };
        let dw = Conv::dw(start, st, dil);
        h = conv_norm_act(b, eps, &format!("{p}.dw_start"), h, s.in_chs, dw, false)?;
    }
    h = conv_norm_act(b, eps, &format!("{p}.pw_exp"), h, mid_chs, Conv::pw(), true)?;
    if mid > 0 {
        let dw = Conv::dw(mid, stride, dil);
        h = conv_norm_act(b, eps, &format!("{p}.dw_mid"), h, mid_chs, dw, true)?;
    }
    let mut y = conv_norm_act(
        b,
        eps,
        &format!("{p}.pw_proj"),
        h,
        s.out_chs,
        Conv::pw(),
        false,
    )?;
    if end > 0 {
        let st = if start == 0 && mid == 0 { stride } else { 1 };
        let dw = Conv::dw(end, st, dil);
        y = conv_norm_act(b, eps, &format!("{p}.dw_end"), y, s.out_chs, dw, false)?;
    }
    let y = layer_scale(b, p, y, s.layer_scale)?;
    block_output(b, p, y, x, s.has_skip)
}

/// A 1x1 projection `name` (`<name>.weight`, `[out, C, 1, 1]`) of a `[C, H, W]` map to
/// token-major `[H * W, out]`, as the attention projections produce it.
fn proj_to_tokens(b: &mut GraphBuilder, name: &str, x: ValueId, out: usize) -> Result<ValueId> {
    let c = b.dim(x, 0)?;
    let weight = b.param(&format!("{name}.weight"), &[out, c, 1, 1])?;
    b.node(name, Op::PointwiseToTokens { weight }, &[x])
}

/// The key or value branch `p` of `MultiQueryAttention2d`: with a kv stride, `down_conv` (depthwise
/// k x k, stride kv) -> `norm`; then `proj` to one head of `dim`, token-major.
fn kv_projection(
    b: &mut GraphBuilder,
    eps: f32,
    p: &str,
    x: ValueId,
    dim: usize,
    s: &BlockSpec,
) -> Result<ValueId> {
    let BlockSpecKind::MobileAttention {
        dw_kernel_size,
        kv_stride,
        ..
    } = s.kind
    else {
        unreachable!("called for mqa blocks")
    };
    let mut src = x;
    if kv_stride > 1 {
        let dw = Conv::dw(dw_kernel_size, kv_stride, s.dilation);
        src = conv2d(b, &format!("{p}.down_conv"), src, s.in_chs, dw)?;
        src = b.rms_norm_2d(&format!("{p}.norm"), src, eps)?;
    }
    proj_to_tokens(b, &format!("{p}.proj"), src, dim)
}

/// timm `MobileAttention` with `MultiQueryAttention2d`: `norm` -> `num_heads` query heads over
/// one shared key / value head (`attn.sdpa`, scale `key_dim^-0.5`) -> `attn.output.proj` ->
/// [`layer_scale`] (+ shortcut).
fn mobile_attention(
    b: &mut GraphBuilder,
    eps: f32,
    p: &str,
    x: ValueId,
    s: &BlockSpec,
) -> Result<ValueId> {
    let BlockSpecKind::MobileAttention {
        num_heads: nh,
        key_dim: kd,
        value_dim: vd,
        ..
    } = s.kind
    else {
        unreachable!("called for mqa blocks")
    };
    let (_, h, w) = chw(b, x)?;
    let n = b.rms_norm_2d(&format!("{p}.norm"), x, eps)?;
    let a = format!("{p}.attn");
    let q = proj_to_tokens(b, &format!("{a}.query.proj"), n, nh * kd)?;
    let k = kv_projection(b, eps, &format!("{a}.key"), n, kd, s)?;
    let v = kv_projection(b, eps, &format!("{a}.value"), n, vd, s)?;
    let sdpa = Op::Attention {
        heads: nh,
        kv_heads: 1,
        d: kd,
        dv: vd,
        scale: (kd as f32).powf(-0.5),
    };
    let o = b.node(&format!("{a}.sdpa"), sdpa, &[q, k, v])?;
    let out = format!("{a}.output.proj");
    let weight = b.param(&format!("{out}.weight"), &[s.out_chs, nh * vd, 1, 1])?;
    let y = b.node(&out, Op::PointwiseFromTokens { weight, h, w }, &[o])?;
    let y = layer_scale(b, p, y, s.layer_scale)?;
    block_output(b, p, y, x, s.has_skip)
}

/// timm `MobileNetV5MultiScaleFusionAdapter`: nearest-resize the smaller taps to the first one's
/// size (`resize.{i}`), `concat` the channels, a UIR `ffn` (pw_exp 2x -> pw_proj, no skip, no
/// layer scale), then `pool` (divisible sizes) or bilinear `interpolate` to `R x R`, then `norm`.
fn msfa(b: &mut GraphBuilder, eps: f32, arch: &EncoderArch, feats: &[ValueId]) -> Result<ValueId> {
    let (_, hh, hw) = chw(b, feats[0])?;
    let mut parts = Vec::with_capacity(feats.len());
    for (i, &x) in feats.iter().enumerate() {
        let (_, h, w) = chw(b, x)?;
        if h < hh || w < hw {
            let up = Op::ResizeNearest { h: hh, w: hw };
            parts.push(b.node(&format!("msfa.resize.{i}"), up, &[x])?);
        } else if h != hh || w != hw {
            return Err(Error::input(format!(
                "msfa input {i} is {h}x{w}, larger than the first input {hh}x{hw}; \
                 channel concat needs equal sizes"
            )));
        } else {
            parts.push(x);
        }
    }
    let cat = b.node("msfa.concat", Op::Concat, &parts)?;
    if b.has("msfa.ffn.layer_scale.gamma", false) {
        return Err(Error::config(
            "checkpoint has msfa.ffn.layer_scale.gamma; timm's MSFA has no layer scale",
        ));
    }
    let ffn = BlockSpec {
        stage: 0,
        index: 0,
        block_str: String::new(),
        in_chs: arch.msfa_in_chs,
        out_chs: arch.num_features,
        stride: 1,
        dilation: 1,
        has_skip: false,
        layer_scale: false,
        kind: BlockSpecKind::UniversalInvertedResidual {
            dw_kernel_size_start: 0,
            dw_kernel_size_mid: 0,
            dw_kernel_size_end: 0,
            mid_chs: arch.msfa_mid_chs,
        },
    };
    let mut y = uir(b, eps, "msfa.ffn", cat, &ffn)?;
    let r = arch.output_resolution;
    if hh != r || hw != r {
        y = if hh % r != 0 || hw % r != 0 {
            b.node("msfa.interpolate", Op::ResizeBilinear { h: r, w: r }, &[y])?
        } else {
            let (sh, sw) = (hh / r, hw / r);
            let pool = Op::AvgPool {
                kh: sh,
                kw: sw,
                sh,
                sw,
            };
            b.node("msfa.pool", pool, &[y])?
        };
    }
    b.rms_norm_2d("msfa.norm", y, eps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec::{FloatProgram, Val};
    use crate::graph::builder::FromConfig;
    use crate::graph::Dim;
    use crate::models::mobilenetv5::tests::synthetic_weights;
    use crate::observe::{Observer, OpInput};
    use crate::tensor::Tensor;
    use std::collections::{BTreeMap, HashMap};

    const ROOT: &str = "model.vision_tower.timm_model";

    #[test]
    fn real_300m_graph_has_every_weight_and_256_tokens() {
        let cfg = VisionConfig::mobilenetv5_300m_enc();
        let g = build(&cfg, &FromConfig, ROOT, (768, 768)).unwrap();
        assert_eq!(g.param_count(), 294_126_912);
        assert_eq!(g.param_count(), cfg.arch().unwrap().param_count());
        let f = g.port("features").unwrap();
        assert_eq!(g.value(f).shape, fixed(&[256, 2048]));
        assert_eq!(
            g.value(g.port("pixels").unwrap()).shape,
            fixed(&[3, 768, 768])
        );
        // 48x48 and 24x24 taps: nearest upsampling, then a 3x3 average pool to 16x16.
        assert!(g.find("msfa.resize.1").is_some() && g.find("msfa.pool").is_some());
        assert!(g.find("msfa.resize.0").is_none() && g.find("msfa.interpolate").is_none());
    }

    /// Every observed tensor and the bits of every reported weighted-op input.
    #[derive(Default)]
    struct All {
        tensors: BTreeMap<String, Vec<u32>>,
        inputs: BTreeMap<String, Vec<u32>>,
    }

    fn bits(x: &[f32]) -> Vec<u32> {
        x.iter().map(|v| v.to_bits()).collect()
    }

    impl Observer for All {
        fn observe(&mut self, name: &str, t: &Tensor) {
            let mut v = t.shape().iter().map(|&d| d as u32).collect::<Vec<_>>();
            v.extend(bits(t.data()));
            assert!(
                self.tensors.insert(name.into(), v).is_none(),
                "{name} twice"
            );
        }
        fn wants_inputs(&self) -> bool {
            true
        }
        fn observe_input(&mut self, op: &str, input: OpInput<'_>) {
            let x = match input {
                OpInput::Tokens { x, .. } | OpInput::Channels { x, .. } => x,
                OpInput::Conv { x, .. } => x.data(),
            };
            assert!(
                self.inputs.insert(op.into(), bits(x)).is_none(),
                "{op} twice"
            );
        }
    }

    fn small_config(blocks: &[&[&str]], msfa_indices: Vec<i64>) -> VisionConfig {
        VisionConfig {
            block_strings: blocks
                .iter()
                .map(|s| s.iter().map(|b| b.to_string()).collect())
                .collect(),
            stem_size: 8,
            msfa_indices,
            msfa_output_resolution: 3,
            num_features: 16,
            image_size: 64,
            norm_eps: 1e-6,
            stem_bias: true,
            layer_scale_init_value: Some(1e-5),
        }
    }

    /// Block kinds and options the golden cases lack (er with a 3x3 `conv_pwl`, uir ending in
    /// `dw_end`, with the stride there, without skip, an mqa changing the width, the stem as an
    /// MSFA tap, a stage after the last tap) build and run at odd sizes down to 1x1, reporting
    /// every op once. (They were bit-identical to the hand-written encoder this graph replaced.)
    #[test]
    fn small_encoders_run_at_odd_sizes() {
        let er: &[&str] = &["er_r1_k3_s2_e4_c8", "er_r1_k3_s1_e2_c8_p3"];
        let uir: &[&str] = &[
            "uir_r1_a3_k5_s2_e4_c16",
            "uir_r1_a0_k3_p3_s1_e2_c16",
            "uir_r1_a0_k0_p3_s1_e2_c16_noskip",
        ];
        let mqa: &[&str] = &[
            "uir_r1_a5_k0_s2_e2_c24",
            "mqa_r1_k3_h2_v2_s1_d8_c24",
            "mqa_r1_k3_h3_s1_d4_c32",
        ];
        let last: &[&str] = &["uir_r1_a0_k0_p3_s2_e2_c32"];
        for cfg in [
            small_config(&[er, uir, mqa], vec![-2, -1]),
            small_config(&[er, uir, mqa, last], vec![0, -2]),
            small_config(&[er, uir, mqa, last], vec![-1]),
        ] {
            let arch = cfg.arch().unwrap();
            let dir = tempfile::tempdir().unwrap();
            let w = synthetic_weights(&arch, dir.path());
            for (h, wd) in [(64, 64), (37, 50), (9, 9), (1, 1)] {
                let n = 3 * h * wd;
                let data = (0..n).map(|i| ((i * 7919) % 2003) as f32 / 1001.5 - 1.0);
                let px = Tensor::new(&[3, h, wd], data.collect()).unwrap();
                let g = build(&cfg, w.store().as_ref(), ROOT, (h, wd)).unwrap();
                let (pixels, features) = (g.port("pixels").unwrap(), g.port("features").unwrap());
                let prog = FloatProgram::load(g, w.store()).unwrap();
                let mut obs = All::default();
                let got = prog
                    .run(vec![(pixels, Val::F(px))], &[features], None, &mut obs)
                    .unwrap();
                let what = format!("{:?} at {h}x{wd}", cfg.msfa_indices);
                assert!(obs.tensors.len() > 40 && !obs.inputs.is_empty(), "{what}");
                assert_eq!(got[0].shape(), [9, 16], "{what}");
                assert!(got[0].data().iter().all(|v| v.is_finite()), "{what}");
            }
        }
    }

    /// Weight shapes by full key: a checkpoint without data.
    struct Keys(HashMap<String, Vec<usize>>);

    impl WeightSource for Keys {
        fn shape(&self, key: &str) -> Option<Vec<usize>> {
            self.0.get(key).cloned()
        }
    }

    fn keys_of(arch: &EncoderArch, keep: impl Fn(&str) -> bool) -> Keys {
        let t = arch.tensors().into_iter().filter(|(k, _)| keep(k));
        Keys(t.map(|(k, s)| (format!("{ROOT}.{k}"), s)).collect())
    }

    #[test]
    fn layer_scales_follow_the_checkpoint() {
        let cfg = VisionConfig::mobilenetv5_300m_enc();
        let arch = cfg.arch().unwrap();
        let all = keys_of(&arch, |_| true);
        let g = build(&cfg, &all, ROOT, (256, 256)).unwrap();
        assert_eq!(g.param_count(), arch.param_count());
        assert!(g.find("blocks.2.9.layer_scale").is_some());
        let none = keys_of(&arch, |k| !k.contains("layer_scale"));
        let g = build(&cfg, &none, ROOT, (256, 256)).unwrap();
        assert!(g.nodes.iter().all(|n| !n.name.contains("layer_scale")));
        let gammas: usize = arch
            .tensors()
            .iter()
            .filter(|(k, _)| k.contains("layer_scale"))
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        assert_eq!(g.param_count(), arch.param_count() - gammas);
        let mut extra = keys_of(&arch, |_| true);
        extra
            .0
            .insert(format!("{ROOT}.msfa.ffn.layer_scale.gamma"), vec![2048]);
        let e = build(&cfg, &extra, ROOT, (256, 256)).unwrap_err();
        assert!(
            matches!(e, Error::Config(_)) && e.to_string().contains("msfa.ffn"),
            "{e}"
        );
    }

    #[test]
    fn input_sizes() {
        let cfg = VisionConfig::mobilenetv5_300m_enc();
        for size in [(0, 768), (768, 0)] {
            let e = build(&cfg, &FromConfig, ROOT, size).unwrap_err();
            assert!(
                matches!(e, Error::Input(_)) && e.to_string().contains("empty"),
                "{e}"
            );
        }
        // Odd sizes: TF "same" padding; 1x1 taps are resized to the 16x16 grid.
        for size in [(250, 190), (1, 1)] {
            let g = build(&cfg, &FromConfig, ROOT, size).unwrap();
            let f = g.value(g.port("features").unwrap());
            assert_eq!(f.shape, vec![Dim::Fixed(256), Dim::Fixed(2048)]);
            assert!(g.find("msfa.interpolate").is_some());
        }
    }
}
