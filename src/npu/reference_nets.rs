//! Published convnets as graphs (cost only): the NPU cost model is fitted on their measured
//! latencies.
//!
//! Qualcomm AI Hub publishes on-device latencies of the torchvision classifiers on the SA8295P
//! (the automotive Hexagon NPU); these builders record the same networks as [`Graph`]s, without
//! weights ([`FromConfig`]), so [`crate::graph::cost::GraphCost`] prices them node by node and
//! the cost model's free factors can be fitted to those latencies. The graphs are never run.
//!
//! They follow the torchvision definitions for inference, with these substitutions:
//! - **Batch norm is folded** into the conv before it (as every inference compiler does): each
//!   conv carries a bias of `C_out`, and there is no norm node. Torchvision counts a batch norm
//!   as 2 trainable values per channel (its running mean and variance are buffers), the folded
//!   conv holds 1, so a folded graph has exactly one parameter per batch-norm channel fewer than
//!   torchvision's published count (0.04 % to 0.5 % fewer; the tests check the exact relation).
//! - **Max pools are average pools**: the graph has no max-pool op. An `AvgPool` with the same
//!   window and stride does the same `kH * kW` vector ops per output element, which is all the
//!   cost model sees. `AvgPool` has neither padding nor ceil mode, so when torchvision's pool
//!   pads (ResNet's 3x3/2 pad 1: 112 -> 56) or rounds up (GoogLeNet, SqueezeNet), an internal
//!   `<pool>.pad` `ResizeNearest` first brings the map to the size an unpadded floor-mode pool
//!   needs for the same output (112 -> 113). That node stands for the padding copy: no MACs, one
//!   vector op per element of the padded map.
//! - **Grouped convs** (ResNeXt): `Op::Conv2d` only supports dense and depthwise convs, so a conv
//!   with `g` groups is recorded as `g` branches: the 1x1 conv before it split into `g` convs of
//!   `width / g` outputs each, a dense 3x3 conv per branch, then a channel concat. MACs and
//!   parameters are exactly those of the grouped conv, but the graph has about `3 g` nodes where
//!   the network has 3, which matters to any per-node overhead term of the model.
//!   Inception v3's padded 3x3/1 average pools get the same stand-in.
//! - Dropout is the identity; GoogLeNet's and Inception v3's input transform (3 per-channel
//!   affine ops on the pixels) and their auxiliary classifiers (skipped at inference) are left
//!   out.
//!
//! Inputs are `[3, H, W]` float pixels (port `pixels`), the output `[1, 1000]` class logits
//! (port `logits`). Node names follow torchvision's module paths (`layer3.4.conv2`,
//! `features.7`), a block's output named like the block and a stage's last block also reported
//! as the stage (`layer4`).

use crate::error::{Error, Result};
use crate::graph::builder::FromConfig;
use crate::graph::{fixed, Elem, Graph, GraphBuilder, Op, ValueId};
use crate::ops::activation::Activation;

/// The networks [`build`] knows, by increasing MACs.
pub const NAMES: &[&str] = &[
    "mobilenet_v2",
    "squeezenet1_1",
    "googlenet",
    "resnet18",
    "resnet50",
    "inception_v3",
    "resnet101",
    "wide_resnet50_2",
    "resnext101_32x8d",
];

/// The networks [`build`] knows.
pub fn names() -> &'static [&'static str] {
    NAMES
}

/// The side of the square input `name` is measured at: 299 for Inception v3, 224 for the others
/// (and for unknown names, which [`build`] rejects).
pub fn input_size(name: &str) -> usize {
    match name {
        "inception_v3" => 299,
        _ => 224,
    }
}

/// The cost-only graph of `name` (one of [`names`]) at [`input_size`].
pub fn build(name: &str) -> Result<Graph> {
    let s = input_size(name);
    let mut b = GraphBuilder::new(&FromConfig, "");
    let x = b.input("pixels", fixed(&[3, s, s]), Elem::F32);
    b.port("pixels", x);
    let resnet = |bottleneck, layers, groups, width_per_group| ResNet {
        bottleneck,
        layers,
        groups,
        width_per_group,
    };
    let logits = match name {
        "resnet18" => resnet(false, [2, 2, 2, 2], 1, 64).build(&mut b, x)?,
        "resnet50" => resnet(true, [3, 4, 6, 3], 1, 64).build(&mut b, x)?,
        "resnet101" => resnet(true, [3, 4, 23, 3], 1, 64).build(&mut b, x)?,
        "wide_resnet50_2" => resnet(true, [3, 4, 6, 3], 1, 128).build(&mut b, x)?,
        "resnext101_32x8d" => resnet(true, [3, 4, 23, 3], 32, 8).build(&mut b, x)?,
        "mobilenet_v2" => mobilenet_v2(&mut b, x)?,
        "squeezenet1_1" => squeezenet1_1(&mut b, x)?,
        "googlenet" => googlenet(&mut b, x)?,
        "inception_v3" => inception_v3(&mut b, x)?,
        _ => {
            return Err(Error::config(format!(
                "unknown reference net `{name}` (known: {})",
                NAMES.join(", ")
            )))
        }
    };
    b.port("logits", logits);
    Ok(b.finish())
}

// ---- layers ---------------------------------------------------------------------------------

/// A conv with a (folded batch-norm) bias: `k x k`, `stride`, zero padding `pad` on every side,
/// depthwise or dense.
#[allow(clippy::too_many_arguments)]
fn conv(
    b: &mut GraphBuilder,
    name: &str,
    x: ValueId,
    c_out: usize,
    (kh, kw): (usize, usize),
    stride: usize,
    (ph, pw): (usize, usize),
    depthwise: bool,
) -> Result<ValueId> {
    let c_in = b.dim(x, 0)?;
    let groups = if depthwise { c_in } else { 1 };
    let weight = b.param(&format!("{name}.weight"), &[c_out, c_in / groups, kh, kw])?;
    let bias = Some(b.param(&format!("{name}.bias"), &[c_out])?);
    let op = Op::Conv2d {
        weight,
        bias,
        stride,
        dilation: 1,
        groups,
        pad: [ph, ph, pw, pw],
    };
    b.node(name, op, &[x])
}

/// A square dense conv followed by `act` (named `<name>.relu`).
fn conv_act(
    b: &mut GraphBuilder,
    name: &str,
    x: ValueId,
    c_out: usize,
    (k, stride, pad): (usize, usize, usize),
    act: Activation,
) -> Result<ValueId> {
    let y = conv(b, name, x, c_out, (k, k), stride, (pad, pad), false)?;
    b.act(&format!("{name}.relu"), act, y)
}

/// `nn.MaxPool2d` output size along one axis.
fn max_pool_out(n: usize, k: usize, s: usize, p: usize, ceil: bool) -> usize {
    let span = n + 2 * p - k;
    let o = if ceil { span.div_ceil(s) } else { span / s } + 1;
    // In ceil mode the last window must start inside the input or its left padding.
    if ceil && (o - 1) * s >= n + p {
        o - 1
    } else {
        o
    }
}

/// `nn.MaxPool2d(k, s, p, ceil_mode)` as an average pool of the same window (see the module
/// docs), behind a `<name>.pad` resize when torchvision's padding or rounding gives a larger
/// output than an unpadded floor-mode pool.
fn max_pool(
    b: &mut GraphBuilder,
    name: &str,
    x: ValueId,
    (k, s, p): (usize, usize, usize),
    ceil: bool,
) -> Result<ValueId> {
    let (c, h, w) = (b.dim(x, 0)?, b.dim(x, 1)?, b.dim(x, 2)?);
    let (oh, ow) = (
        max_pool_out(h, k, s, p, ceil),
        max_pool_out(w, k, s, p, ceil),
    );
    // The unpadded input an `AvgPool` needs for that output (never smaller than the map).
    let (nh, nw) = (((oh - 1) * s + k).max(h), ((ow - 1) * s + k).max(w));
    let x = if (nh, nw) != (h, w) {
        let pad = Op::ResizeNearest { h: nh, w: nw };
        b.internal(&format!("{name}.pad"), pad, &[x])?
    } else {
        x
    };
    let pool = Op::AvgPool {
        kh: k,
        kw: k,
        sh: s,
        sw: s,
    };
    let y = b.node(name, pool, &[x])?;
    if b.shape(y) != fixed(&[c, oh, ow]).as_slice() {
        return Err(Error::config(format!(
            "`{name}`: the pool gives {:?}, torchvision {c}x{oh}x{ow}",
            b.shape(y)
        )));
    }
    Ok(y)
}

/// Global average pool, flatten and the `classes`-way classifier `fc`: `[1, classes]`.
fn head(b: &mut GraphBuilder, x: ValueId, fc: &str, classes: usize) -> Result<ValueId> {
    let (h, w) = (b.dim(x, 1)?, b.dim(x, 2)?);
    let pool = Op::AvgPool {
        kh: h,
        kw: w,
        sh: h,
        sw: w,
    };
    let x = b.node("avgpool", pool, &[x])?;
    let x = b.node("flatten", Op::ToTokens, &[x])?;
    b.linear(fc, x, classes, true)
}

// ---- ResNet, Wide ResNet, ResNeXt -------------------------------------------------------------

/// `torchvision.models.ResNet`: basic or bottleneck blocks, blocks per stage, and the
/// bottleneck's `groups` and `width_per_group`.
struct ResNet {
    bottleneck: bool,
    layers: [usize; 4],
    groups: usize,
    width_per_group: usize,
}

impl ResNet {
    fn build(&self, b: &mut GraphBuilder, x: ValueId) -> Result<ValueId> {
        let relu = Activation::Relu;
        let x = conv(b, "conv1", x, 64, (7, 7), 2, (3, 3), false)?;
        let x = b.act("relu", relu, x)?;
        let mut x = max_pool(b, "maxpool", x, (3, 2, 1), false)?;
        let expansion = if self.bottleneck { 4 } else { 1 };
        for (li, (&blocks, planes)) in self.layers.iter().zip([64, 128, 256, 512]).enumerate() {
            for bi in 0..blocks {
                let stride = if li > 0 && bi == 0 { 2 } else { 1 };
                let p = format!("layer{}.{bi}", li + 1);
                let y = if self.bottleneck {
                    self.bottleneck(b, &p, x, planes, stride)?
                } else {
                    let y = conv_act(b, &format!("{p}.conv1"), x, planes, (3, stride, 1), relu)?;
                    conv(
                        b,
                        &format!("{p}.conv2"),
                        y,
                        planes,
                        (3, 3),
                        1,
                        (1, 1),
                        false,
                    )?
                };
                let short = if stride != 1 || b.dim(x, 0)? != planes * expansion {
                    let name = format!("{p}.downsample.0");
                    conv(
                        b,
                        &name,
                        x,
                        planes * expansion,
                        (1, 1),
                        stride,
                        (0, 0),
                        false,
                    )?
                } else {
                    x
                };
                let y = b.add(&format!("{p}.add"), y, short)?;
                x = b.act(&p, relu, y)?;
            }
            b.alias(x, &format!("layer{}", li + 1))?;
        }
        head(b, x, "fc", 1000)
    }

    /// torchvision's `Bottleneck` (stride on the 3x3 conv): 1x1, grouped 3x3, 1x1 to `4 *
    /// planes`, without the residual add.
    fn bottleneck(
        &self,
        b: &mut GraphBuilder,
        p: &str,
        x: ValueId,
        planes: usize,
        stride: usize,
    ) -> Result<ValueId> {
        let relu = Activation::Relu;
        let width = planes * self.width_per_group / 64 * self.groups;
        let y = if self.groups == 1 {
            let y = conv_act(b, &format!("{p}.conv1"), x, width, (1, 1, 0), relu)?;
            conv_act(b, &format!("{p}.conv2"), y, width, (3, stride, 1), relu)?
        } else {
            // A grouped conv as one branch per group (see the module docs).
            let gw = width / self.groups;
            let mut branches = Vec::with_capacity(self.groups);
            for g in 0..self.groups {
                let y = conv_act(b, &format!("{p}.conv1.g{g}"), x, gw, (1, 1, 0), relu)?;
                let y = conv_act(b, &format!("{p}.conv2.g{g}"), y, gw, (3, stride, 1), relu)?;
                branches.push(y);
            }
            b.node(&format!("{p}.conv2"), Op::Concat, &branches)?
        };
        conv(
            b,
            &format!("{p}.conv3"),
            y,
            planes * 4,
            (1, 1),
            1,
            (0, 0),
            false,
        )
    }
}

// ---- MobileNetV2 ------------------------------------------------------------------------------

/// `torchvision.models.mobilenet_v2` (width 1.0): inverted residuals with ReLU6.
fn mobilenet_v2(b: &mut GraphBuilder, x: ValueId) -> Result<ValueId> {
    let relu6 = Activation::Relu6;
    let mut x = conv_act(b, "features.0", x, 32, (3, 2, 1), relu6)?;
    // (expansion t, channels c, blocks n, first stride s).
    let settings = [
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ];
    let mut i = 1;
    for (t, c, n, s) in settings {
        for j in 0..n {
            let stride = if j == 0 { s } else { 1 };
            let p = format!("features.{i}");
            let c_in = b.dim(x, 0)?;
            let hidden = c_in * t;
            let mut y = x;
            if t != 1 {
                y = conv_act(b, &format!("{p}.expand"), y, hidden, (1, 1, 0), relu6)?;
            }
            let dw = format!("{p}.dw");
            y = conv(b, &dw, y, hidden, (3, 3), stride, (1, 1), true)?;
            y = b.act(&format!("{dw}.relu"), relu6, y)?;
            y = conv(b, &format!("{p}.project"), y, c, (1, 1), 1, (0, 0), false)?;
            x = if stride == 1 && c_in == c {
                b.add(&p, x, y)?
            } else {
                b.alias(y, &p)?;
                y
            };
            i += 1;
        }
    }
    let x = conv_act(b, "features.18", x, 1280, (1, 1, 0), relu6)?;
    head(b, x, "classifier.1", 1000)
}

// ---- SqueezeNet 1.1 ---------------------------------------------------------------------------

/// SqueezeNet's `Fire`: 1x1 squeeze, then 1x1 and 3x3 expands concatenated.
fn fire(
    b: &mut GraphBuilder,
    p: &str,
    x: ValueId,
    squeeze: usize,
    expand: usize,
) -> Result<ValueId> {
    let relu = Activation::Relu;
    let s = conv_act(b, &format!("{p}.squeeze"), x, squeeze, (1, 1, 0), relu)?;
    let e1 = conv_act(b, &format!("{p}.expand1x1"), s, expand, (1, 1, 0), relu)?;
    let e3 = conv_act(b, &format!("{p}.expand3x3"), s, expand, (3, 1, 1), relu)?;
    b.node(p, Op::Concat, &[e1, e3])
}

/// `torchvision.models.squeezenet1_1` (its convs have biases of their own, no batch norm).
fn squeezenet1_1(b: &mut GraphBuilder, x: ValueId) -> Result<ValueId> {
    let relu = Activation::Relu;
    let mut x = conv_act(b, "features.0", x, 64, (3, 2, 0), relu)?;
    let plan: [(usize, usize, usize); 8] = [
        (3, 16, 64),
        (4, 16, 64),
        (6, 32, 128),
        (7, 32, 128),
        (9, 48, 192),
        (10, 48, 192),
        (11, 64, 256),
        (12, 64, 256),
    ];
    for (i, squeeze, expand) in plan {
        if matches!(i, 3 | 6 | 9) {
            x = max_pool(b, &format!("features.{}", i - 1), x, (3, 2, 0), true)?;
        }
        x = fire(b, &format!("features.{i}"), x, squeeze, expand)?;
    }
    // Classifier: 1x1 conv to the classes, ReLU, global average pool.
    let x = conv_act(b, "classifier.1", x, 1000, (1, 1, 0), relu)?;
    let (h, w) = (b.dim(x, 1)?, b.dim(x, 2)?);
    let pool = Op::AvgPool {
        kh: h,
        kw: w,
        sh: h,
        sw: w,
    };
    let x = b.node("classifier.3", pool, &[x])?;
    b.node("flatten", Op::ToTokens, &[x])
}

// ---- GoogLeNet --------------------------------------------------------------------------------

/// GoogLeNet's `Inception` block: 1x1; 1x1 -> 3x3; 1x1 -> 3x3 (torchvision's "5x5" branch is a
/// 3x3 conv); 3x3/1 max pool -> 1x1.
fn inception(
    b: &mut GraphBuilder,
    p: &str,
    x: ValueId,
    [c1, c3r, c3, c5r, c5, pool_proj]: [usize; 6],
) -> Result<ValueId> {
    let relu = Activation::Relu;
    let b1 = conv_act(b, &format!("{p}.branch1"), x, c1, (1, 1, 0), relu)?;
    let b2 = conv_act(b, &format!("{p}.branch2.0"), x, c3r, (1, 1, 0), relu)?;
    let b2 = conv_act(b, &format!("{p}.branch2.1"), b2, c3, (3, 1, 1), relu)?;
    let b3 = conv_act(b, &format!("{p}.branch3.0"), x, c5r, (1, 1, 0), relu)?;
    let b3 = conv_act(b, &format!("{p}.branch3.1"), b3, c5, (3, 1, 1), relu)?;
    let b4 = max_pool(b, &format!("{p}.branch4.0"), x, (3, 1, 1), true)?;
    let b4 = conv_act(b, &format!("{p}.branch4.1"), b4, pool_proj, (1, 1, 0), relu)?;
    b.node(p, Op::Concat, &[b1, b2, b3, b4])
}

/// `torchvision.models.googlenet` at inference (no auxiliary classifiers).
fn googlenet(b: &mut GraphBuilder, x: ValueId) -> Result<ValueId> {
    let relu = Activation::Relu;
    let x = conv_act(b, "conv1", x, 64, (7, 2, 3), relu)?;
    let x = max_pool(b, "maxpool1", x, (3, 2, 0), true)?;
    let x = conv_act(b, "conv2", x, 64, (1, 1, 0), relu)?;
    let x = conv_act(b, "conv3", x, 192, (3, 1, 1), relu)?;
    let mut x = max_pool(b, "maxpool2", x, (3, 2, 0), true)?;
    let blocks: [(&str, [usize; 6]); 9] = [
        ("inception3a", [64, 96, 128, 16, 32, 32]),
        ("inception3b", [128, 128, 192, 32, 96, 64]),
        ("inception4a", [192, 96, 208, 16, 48, 64]),
        ("inception4b", [160, 112, 224, 24, 64, 64]),
        ("inception4c", [128, 128, 256, 24, 64, 64]),
        ("inception4d", [112, 144, 288, 32, 64, 64]),
        ("inception4e", [256, 160, 320, 32, 128, 128]),
        ("inception5a", [256, 160, 320, 32, 128, 128]),
        ("inception5b", [384, 192, 384, 48, 128, 128]),
    ];
    for (name, widths) in blocks {
        if name == "inception4a" {
            x = max_pool(b, "maxpool3", x, (3, 2, 0), true)?;
        }
        if name == "inception5a" {
            x = max_pool(b, "maxpool4", x, (2, 2, 0), true)?;
        }
        x = inception(b, name, x, widths)?;
    }
    head(b, x, "fc", 1000)
}

// ---- Inception v3 -----------------------------------------------------------------------------

/// Inception v3's `BasicConv2d` (conv, folded batch norm, ReLU) with a `kh x kw` kernel.
fn basic(
    b: &mut GraphBuilder,
    name: &str,
    x: ValueId,
    c_out: usize,
    k: (usize, usize),
    stride: usize,
    pad: (usize, usize),
) -> Result<ValueId> {
    let y = conv(b, name, x, c_out, k, stride, pad, false)?;
    b.act(&format!("{name}.relu"), Activation::Relu, y)
}

/// `F.avg_pool2d(x, 3, 1, 1)` before an Inception v3 pool projection, padded like a max pool.
fn pool3(b: &mut GraphBuilder, p: &str, x: ValueId) -> Result<ValueId> {
    max_pool(b, &format!("{p}.branch_pool.avg"), x, (3, 1, 1), false)
}

/// `InceptionA(in, pool_features)`: 1x1; 1x1 -> 5x5; 1x1 -> 3x3 -> 3x3; pool -> 1x1.
fn inception_a(b: &mut GraphBuilder, p: &str, x: ValueId, pool_features: usize) -> Result<ValueId> {
    let n = |s: &str| format!("{p}.{s}");
    let b1 = basic(b, &n("branch1x1"), x, 64, (1, 1), 1, (0, 0))?;
    let b5 = basic(b, &n("branch5x5_1"), x, 48, (1, 1), 1, (0, 0))?;
    let b5 = basic(b, &n("branch5x5_2"), b5, 64, (5, 5), 1, (2, 2))?;
    let bd = basic(b, &n("branch3x3dbl_1"), x, 64, (1, 1), 1, (0, 0))?;
    let bd = basic(b, &n("branch3x3dbl_2"), bd, 96, (3, 3), 1, (1, 1))?;
    let bd = basic(b, &n("branch3x3dbl_3"), bd, 96, (3, 3), 1, (1, 1))?;
    let bp = pool3(b, p, x)?;
    let bp = basic(b, &n("branch_pool"), bp, pool_features, (1, 1), 1, (0, 0))?;
    b.node(p, Op::Concat, &[b1, b5, bd, bp])
}

/// `InceptionB`: the 35 -> 17 reduction.
fn inception_b(b: &mut GraphBuilder, p: &str, x: ValueId) -> Result<ValueId> {
    let n = |s: &str| format!("{p}.{s}");
    let b3 = basic(b, &n("branch3x3"), x, 384, (3, 3), 2, (0, 0))?;
    let bd = basic(b, &n("branch3x3dbl_1"), x, 64, (1, 1), 1, (0, 0))?;
    let bd = basic(b, &n("branch3x3dbl_2"), bd, 96, (3, 3), 1, (1, 1))?;
    let bd = basic(b, &n("branch3x3dbl_3"), bd, 96, (3, 3), 2, (0, 0))?;
    let bp = max_pool(b, &n("branch_pool"), x, (3, 2, 0), false)?;
    b.node(p, Op::Concat, &[b3, bd, bp])
}

/// `InceptionC(in, c7)`: factorized 7x7 convs at 17x17.
fn inception_c(b: &mut GraphBuilder, p: &str, x: ValueId, c7: usize) -> Result<ValueId> {
    let n = |s: &str| format!("{p}.{s}");
    let (k17, k71, p17, p71) = ((1, 7), (7, 1), (0, 3), (3, 0));
    let b1 = basic(b, &n("branch1x1"), x, 192, (1, 1), 1, (0, 0))?;
    let b7 = basic(b, &n("branch7x7_1"), x, c7, (1, 1), 1, (0, 0))?;
    let b7 = basic(b, &n("branch7x7_2"), b7, c7, k17, 1, p17)?;
    let b7 = basic(b, &n("branch7x7_3"), b7, 192, k71, 1, p71)?;
    let bd = basic(b, &n("branch7x7dbl_1"), x, c7, (1, 1), 1, (0, 0))?;
    let bd = basic(b, &n("branch7x7dbl_2"), bd, c7, k71, 1, p71)?;
    let bd = basic(b, &n("branch7x7dbl_3"), bd, c7, k17, 1, p17)?;
    let bd = basic(b, &n("branch7x7dbl_4"), bd, c7, k71, 1, p71)?;
    let bd = basic(b, &n("branch7x7dbl_5"), bd, 192, k17, 1, p17)?;
    let bp = pool3(b, p, x)?;
    let bp = basic(b, &n("branch_pool"), bp, 192, (1, 1), 1, (0, 0))?;
    b.node(p, Op::Concat, &[b1, b7, bd, bp])
}

/// `InceptionD`: the 17 -> 8 reduction.
fn inception_d(b: &mut GraphBuilder, p: &str, x: ValueId) -> Result<ValueId> {
    let n = |s: &str| format!("{p}.{s}");
    let b3 = basic(b, &n("branch3x3_1"), x, 192, (1, 1), 1, (0, 0))?;
    let b3 = basic(b, &n("branch3x3_2"), b3, 320, (3, 3), 2, (0, 0))?;
    let b7 = basic(b, &n("branch7x7x3_1"), x, 192, (1, 1), 1, (0, 0))?;
    let b7 = basic(b, &n("branch7x7x3_2"), b7, 192, (1, 7), 1, (0, 3))?;
    let b7 = basic(b, &n("branch7x7x3_3"), b7, 192, (7, 1), 1, (3, 0))?;
    let b7 = basic(b, &n("branch7x7x3_4"), b7, 192, (3, 3), 2, (0, 0))?;
    let bp = max_pool(b, &n("branch_pool"), x, (3, 2, 0), false)?;
    b.node(p, Op::Concat, &[b3, b7, bp])
}

/// `InceptionE`: expanded 1x3 / 3x1 branches at 8x8.
fn inception_e(b: &mut GraphBuilder, p: &str, x: ValueId) -> Result<ValueId> {
    let n = |s: &str| format!("{p}.{s}");
    let b1 = basic(b, &n("branch1x1"), x, 320, (1, 1), 1, (0, 0))?;
    let b3 = basic(b, &n("branch3x3_1"), x, 384, (1, 1), 1, (0, 0))?;
    let b3a = basic(b, &n("branch3x3_2a"), b3, 384, (1, 3), 1, (0, 1))?;
    let b3b = basic(b, &n("branch3x3_2b"), b3, 384, (3, 1), 1, (1, 0))?;
    let bd = basic(b, &n("branch3x3dbl_1"), x, 448, (1, 1), 1, (0, 0))?;
    let bd = basic(b, &n("branch3x3dbl_2"), bd, 384, (3, 3), 1, (1, 1))?;
    let bda = basic(b, &n("branch3x3dbl_3a"), bd, 384, (1, 3), 1, (0, 1))?;
    let bdb = basic(b, &n("branch3x3dbl_3b"), bd, 384, (3, 1), 1, (1, 0))?;
    let bp = pool3(b, p, x)?;
    let bp = basic(b, &n("branch_pool"), bp, 192, (1, 1), 1, (0, 0))?;
    b.node(p, Op::Concat, &[b1, b3a, b3b, bda, bdb, bp])
}

/// `torchvision.models.inception_v3` at inference (no auxiliary classifier).
fn inception_v3(b: &mut GraphBuilder, x: ValueId) -> Result<ValueId> {
    let x = basic(b, "Conv2d_1a_3x3", x, 32, (3, 3), 2, (0, 0))?;
    let x = basic(b, "Conv2d_2a_3x3", x, 32, (3, 3), 1, (0, 0))?;
    let x = basic(b, "Conv2d_2b_3x3", x, 64, (3, 3), 1, (1, 1))?;
    let x = max_pool(b, "maxpool1", x, (3, 2, 0), false)?;
    let x = basic(b, "Conv2d_3b_1x1", x, 80, (1, 1), 1, (0, 0))?;
    let x = basic(b, "Conv2d_4a_3x3", x, 192, (3, 3), 1, (0, 0))?;
    let x = max_pool(b, "maxpool2", x, (3, 2, 0), false)?;
    let x = inception_a(b, "Mixed_5b", x, 32)?;
    let x = inception_a(b, "Mixed_5c", x, 64)?;
    let x = inception_a(b, "Mixed_5d", x, 64)?;
    let x = inception_b(b, "Mixed_6a", x)?;
    let x = inception_c(b, "Mixed_6b", x, 128)?;
    let x = inception_c(b, "Mixed_6c", x, 160)?;
    let x = inception_c(b, "Mixed_6d", x, 160)?;
    let x = inception_c(b, "Mixed_6e", x, 192)?;
    let x = inception_d(b, "Mixed_7a", x)?;
    let x = inception_e(b, "Mixed_7b", x)?;
    let x = inception_e(b, "Mixed_7c", x)?;
    head(b, x, "fc", 1000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::cost::GraphCost;
    use crate::graph::Bindings;

    /// The shape of node (or alias) `name`.
    fn shape(g: &Graph, name: &str) -> Vec<usize> {
        let node = g
            .nodes
            .iter()
            .find(|n| n.name == name || n.aliases.iter().any(|a| a == name))
            .unwrap_or_else(|| panic!("no node `{name}`"));
        crate::graph::bind_shape(&g.value(node.output).shape, Bindings::default())
    }

    /// Elements of the conv biases, i.e. of the folded batch norms' channels.
    fn conv_bias_count(g: &Graph) -> usize {
        g.nodes
            .iter()
            .filter_map(|n| match n.op {
                Op::Conv2d { bias: Some(b), .. } => Some(g.params[b.0 as usize].numel()),
                _ => None,
            })
            .sum()
    }

    /// (name, torch FlopCounter GMACs (conv + linear), torchvision's parameter count, whether
    /// the convs carry batch norms).
    const PUBLISHED: &[(&str, f64, usize, bool)] = &[
        ("resnet18", 1.814, 11_689_512, true),
        ("resnet50", 4.089, 25_557_032, true),
        ("resnet101", 7.801, 44_549_160, true),
        ("wide_resnet50_2", 11.40, 68_883_240, true),
        ("resnext101_32x8d", 16.41, 88_791_336, true),
        ("mobilenet_v2", 0.301, 3_504_872, true),
        ("squeezenet1_1", 0.349, 1_235_496, false),
        ("googlenet", 1.498, 6_624_904, true),
        // Torchvision's 27_161_264 includes the auxiliary classifier (3_326_696: 1x1 conv 768 ->
        // 128 and 5x5 conv 128 -> 768 with batch norms, fc 768 -> 1000), which inference skips.
        ("inception_v3", 5.713, 27_161_264 - 3_326_696, true),
    ];

    #[test]
    fn every_name_builds_and_ends_in_logits() {
        for &name in names() {
            let g = build(name).unwrap();
            let s = input_size(name);
            assert_eq!(shape_of_port(&g, "pixels"), [3, s, s], "{name}");
            assert_eq!(shape_of_port(&g, "logits"), [1, 1000], "{name}");
        }
        assert!(build("vgg16").is_err());
        assert_eq!(names().len(), PUBLISHED.len());
    }

    fn shape_of_port(g: &Graph, role: &str) -> Vec<usize> {
        crate::graph::bind_shape(&g.value(g.port(role).unwrap()).shape, Bindings::default())
    }

    /// MACs within 1 % of torch's FlopCounter figures.
    #[test]
    fn macs_match_torchvision() {
        for &(name, gmacs, _, _) in PUBLISHED {
            let g = build(name).unwrap();
            let macs = GraphCost::float(&g, Bindings::default()).total.macs as f64 / 1e9;
            let err = (macs / gmacs - 1.0).abs();
            println!("{name}: {macs:.4} GMACs (published {gmacs})");
            assert!(err < 0.01, "{name}: {macs:.4} GMACs, published {gmacs}");
        }
    }

    /// Torchvision counts a batch norm's weight and bias (2 per channel); folded into the conv
    /// it is one bias per channel. So the graph holds torchvision's count minus one per
    /// batch-norm channel, exactly, and within 1 % of the published count. SqueezeNet has no
    /// batch norm: its count is torchvision's.
    #[test]
    fn params_match_torchvision() {
        for &(name, _, published, bn) in PUBLISHED {
            let g = build(name).unwrap();
            let n = g.param_count();
            let folded = if bn { conv_bias_count(&g) } else { 0 };
            assert_eq!(n + folded, published, "{name}");
            let err = (n as f64 / published as f64 - 1.0).abs();
            println!("{name}: {n} params (published {published}, {folded} folded away)");
            assert!(err < 0.01, "{name}: {n} params, published {published}");
        }
    }

    /// Node names and their torchvision output shapes.
    type Stages = &'static [(&'static str, &'static [usize])];

    #[test]
    fn stage_shapes_match_torchvision() {
        let cases: &[(&str, Stages)] = &[
            (
                "resnet18",
                &[
                    ("conv1", &[64, 112, 112]),
                    ("maxpool", &[64, 56, 56]),
                    ("layer1", &[64, 56, 56]),
                    ("layer2", &[128, 28, 28]),
                    ("layer3", &[256, 14, 14]),
                    ("layer4", &[512, 7, 7]),
                    ("avgpool", &[512, 1, 1]),
                    ("fc", &[1, 1000]),
                ],
            ),
            (
                "resnet50",
                &[
                    ("maxpool", &[64, 56, 56]),
                    ("layer1", &[256, 56, 56]),
                    ("layer2", &[512, 28, 28]),
                    ("layer3", &[1024, 14, 14]),
                    ("layer4", &[2048, 7, 7]),
                    ("fc", &[1, 1000]),
                ],
            ),
            (
                "resnet101",
                &[("layer3.22", &[1024, 14, 14]), ("layer4", &[2048, 7, 7])],
            ),
            (
                "wide_resnet50_2",
                &[
                    ("layer1.0.conv2", &[128, 56, 56]),
                    ("layer4.2.conv2", &[1024, 7, 7]),
                    ("layer4", &[2048, 7, 7]),
                ],
            ),
            (
                "resnext101_32x8d",
                &[
                    ("layer1.0.conv2.g0", &[8, 56, 56]),
                    ("layer1.0.conv2", &[256, 56, 56]),
                    ("layer2.0.conv2", &[512, 28, 28]),
                    ("layer4.2.conv2", &[2048, 7, 7]),
                    ("layer4", &[2048, 7, 7]),
                ],
            ),
            (
                "mobilenet_v2",
                &[
                    ("features.0", &[32, 112, 112]),
                    ("features.1", &[16, 112, 112]),
                    ("features.3", &[24, 56, 56]),
                    ("features.6", &[32, 28, 28]),
                    ("features.13", &[96, 14, 14]),
                    ("features.17", &[320, 7, 7]),
                    ("features.18.relu", &[1280, 7, 7]),
                    ("classifier.1", &[1, 1000]),
                ],
            ),
            (
                "squeezenet1_1",
                &[
                    ("features.0", &[64, 111, 111]),
                    ("features.2", &[64, 55, 55]),
                    ("features.4", &[128, 55, 55]),
                    ("features.5", &[128, 27, 27]),
                    ("features.8", &[256, 13, 13]),
                    ("features.12", &[512, 13, 13]),
                    ("classifier.3", &[1000, 1, 1]),
                ],
            ),
            (
                "googlenet",
                &[
                    ("conv1", &[64, 112, 112]),
                    ("maxpool1", &[64, 56, 56]),
                    ("maxpool2", &[192, 28, 28]),
                    ("inception3b", &[480, 28, 28]),
                    ("maxpool3", &[480, 14, 14]),
                    ("inception4e", &[832, 14, 14]),
                    ("maxpool4", &[832, 7, 7]),
                    ("inception5b", &[1024, 7, 7]),
                    ("fc", &[1, 1000]),
                ],
            ),
            (
                "inception_v3",
                &[
                    ("Conv2d_1a_3x3", &[32, 149, 149]),
                    ("maxpool1", &[64, 73, 73]),
                    ("maxpool2", &[192, 35, 35]),
                    ("Mixed_5b", &[256, 35, 35]),
                    ("Mixed_5d", &[288, 35, 35]),
                    ("Mixed_6a", &[768, 17, 17]),
                    ("Mixed_6e", &[768, 17, 17]),
                    ("Mixed_7a", &[1280, 8, 8]),
                    ("Mixed_7c", &[2048, 8, 8]),
                    ("avgpool", &[2048, 1, 1]),
                    ("fc", &[1, 1000]),
                ],
            ),
        ];
        for &(name, stages) in cases {
            let g = build(name).unwrap();
            for &(node, want) in stages {
                assert_eq!(shape(&g, node), want, "{name} {node}");
            }
        }
    }

    /// torch's pool output sizes (and the padding stand-in stays free of MACs).
    #[test]
    fn max_pool_sizes() {
        assert_eq!(max_pool_out(112, 3, 2, 1, false), 56);
        assert_eq!(max_pool_out(111, 3, 2, 0, true), 55);
        assert_eq!(max_pool_out(112, 3, 2, 0, true), 56);
        assert_eq!(max_pool_out(112, 3, 2, 0, false), 55);
        assert_eq!(max_pool_out(14, 2, 2, 0, true), 7);
        assert_eq!(max_pool_out(28, 3, 1, 1, true), 28);
        let g = build("resnet18").unwrap();
        assert_eq!(shape(&g, "maxpool.pad"), [64, 113, 113]);
        let cost = GraphCost::float(&g, Bindings::default());
        assert_eq!(cost.by_kind["resize_nearest"].cost.macs, 0);
    }
}
