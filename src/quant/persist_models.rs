//! [`Persist`] for the integer MODELS (encoder, connector, language model): each model struct
//! saves a small metadata object under its key and its ops under sub-keys that follow the float
//! checkpoint names, through the op impls of [`crate::quant::persist`]. Loading rebuilds the
//! structs exactly (`==`) and checks what the forward code relies on across ops: each op's input
//! quantization is its producer's output quantization, channel / feature counts chain, and (for
//! the encoder, whose shapes are static) every op fits the map size it will see. An inconsistent
//! artifact is an [`Error`] naming the keys involved, never a panic.
//!
//! Conventions are [`crate::quant::persist`]'s: `meta[key]` is a JSON object with a `"kind"`,
//! every field is read and checked, missing and unknown fields are errors naming the key and the
//! field. `Option` members have a boolean presence flag (named after the member) in their
//! parent's metadata; a sub-key present without its flag is an error too. Enums store their
//! variant as the `"kind"` of the variant's metadata ([`QBlock`], [`QLfm2Op`], [`QLmHead`]), and
//! their parent records which one it expects. Names (`name: String`) are stored in the metadata.
//!
//! Key layout (`E` = encoder key, e.g. `vision.encoder`; `P` = projector key; `T` = LM key):
//!
//! | key | kind | metadata fields | sub-keys |
//! |---|---|---|---|
//! | `E` | `mobilenetv5_encoder` | `image_size, in_chans, num_features, output_resolution, msfa_taps[..], stages[n_0, ..]` | `input` (act), `conv_stem`, `blocks.{s}.{i}`, `msfa` |
//! | conv-norm-act `C` | `conv_norm_act` | `name, act` | `conv`, `bn`, [`act`] |
//! | edge residual `B` | `edge_residual` | `name, skip` | `conv_exp`, `bn1`, `bn1.act`, `conv_pwl`, `bn2`, [`skip`] |
//! | UIR `B` | `universal_inverted_residual` | `name, dw_start, dw_mid, dw_end, layer_scale, skip` | [`dw_start`], `pw_exp`, [`dw_mid`], `pw_proj`, [`dw_end`], [`layer_scale`], [`skip`] |
//! | mobile attention `B` | `mobile_attention` | `name, layer_scale, skip` | `norm`, `attn`, [`layer_scale`], [`skip`] |
//! | `B.attn` | `multi_query_attention_2d` | `name` | `query.proj`, `key`, `value`, `sdpa`, `output.proj` |
//! | `B.attn.key` / `.value` | `kv_projection` | `name, down_conv, norm` | [`down_conv`], [`norm`], `proj` |
//! | `E.msfa` | `msfa` | `name, inputs, resize[bool; inputs], pool` | `resize.{i}` (when flagged), `concat`, `ffn` (UIR), [`pool`], `norm` |
//! | `P` | `projector` | | `linear_1`, `act`, `linear_2` |
//! | `T` | `lfm2` | `layers, lm_head` (`"tied"` / `"separate"`) | `dims`, `embed_tokens`, `layers.{i}`, `embedding_norm`, `lm_head` |
//! | `T.dims` | `lfm2_dims` | the seven [`QLfm2Dims`] fields | |
//! | `T.layers.{i}` | `lfm2_layer` | `op` (`"conv"` / `"self_attn"`) | `operator_norm`, `conv` or `self_attn`, `residual1`, `ffn_norm`, `feed_forward`, `residual2` |
//! | `.conv` | `lfm2_short_conv` | | `in_proj`, `bx`, `conv`, `y`, `out_proj` |
//! | `.self_attn` | `lfm2_attention` | | `q_proj`, `k_proj`, `v_proj`, `q_layernorm`, `k_layernorm`, `rope_q`, `rope_k`, `sdpa`, `out_proj` |
//! | `.feed_forward` | `lfm2_mlp` | | `w1`, `w3`, `silu`, `act`, `w2` |
//! | `T.lm_head` | `tied_head` or `linear` | `vocab` (tied) | `x`, `y` (act), `mult` (multipliers) (tied) |
//!
//! `[x]`: present when flagged. So `vision.encoder.blocks.2.2.attn.key.down_conv.weight` is the
//! int8 weight of that conv, `text.layers.3.conv.in_proj` a linear layer. [`save_vision`] /
//! [`load_vision`] store an encoder and its connector under `{key}.encoder` / `{key}.connector`
//! and check that they connect.

use crate::error::{Error, Result};
use crate::quant::arith::{check_reduction, Multiplier};
use crate::quant::artifact::{ArtifactReader, ArtifactWriter};
use crate::quant::models::connector::QProjector;
use crate::quant::models::lfm2::{
    QLfm2Attention, QLfm2Dims, QLfm2Layer, QLfm2Mlp, QLfm2Model, QLfm2Op, QLfm2ShortConv, QLmHead,
    QTiedHead,
};
use crate::quant::models::mobilenetv5::{
    QBlock, QConvNormAct, QEdgeResidual, QKvProjection, QMobileAttention, QMobileNetV5Encoder,
    QMultiQueryAttention2d, QMultiScaleFusionAdapter, QUniversalInvertedResidual,
};
use crate::quant::ops::attention::QAttention;
use crate::quant::ops::conv::QConv2d;
use crate::quant::ops::conv1d::QCausalConv1d;
use crate::quant::ops::elementwise::{ChannelAxis, QAdd, QChannelScale, QMul};
use crate::quant::ops::embedding::QEmbedding;
use crate::quant::ops::linear::{centered_abs_max, QLinear};
use crate::quant::ops::lut::QLut;
use crate::quant::ops::norm::{QRmsNorm, QRmsNorm2d};
use crate::quant::ops::pool::{QAvgPool2d, QConcat, QUpsampleNearest};
use crate::quant::ops::rope::QRope;
use crate::quant::params::ActQuant;
use crate::quant::persist::Persist;
use serde_json::{json, Map, Value};
use std::collections::BTreeSet;
use std::fmt::Display;

// ---------------------------------------------------------------------------------------------
// Helpers.

use super::persist::{arr as sub, err, put_meta};

/// A metadata object being read: every field read is recorded, [`Meta::finish`] rejects the
/// others.
struct Meta<'a> {
    key: &'a str,
    obj: &'a Map<String, Value>,
    used: BTreeSet<&'static str>,
}

impl<'a> Meta<'a> {
    /// The metadata object of `key`, whatever its kind.
    fn any(r: &'a ArtifactReader, key: &'a str) -> Result<Self> {
        let obj = r
            .meta(key)?
            .as_object()
            .ok_or_else(|| err(key, "metadata is not a JSON object"))?;
        Ok(Meta {
            key,
            obj,
            used: BTreeSet::new(),
        })
    }

    /// The metadata of `key`, which must be a `kind` object.
    fn open(r: &'a ArtifactReader, key: &'a str, kind: &str) -> Result<Self> {
        let mut m = Self::any(r, key)?;
        let k = m.str("kind")?;
        if k != kind {
            return Err(err(key, format!("is a `{k}`, expected a `{kind}`")));
        }
        Ok(m)
    }

    fn bad(&self, field: &str, msg: impl Display) -> Error {
        err(self.key, format!("metadata field `{field}`: {msg}"))
    }

    fn get(&mut self, field: &'static str) -> Result<&'a Value> {
        self.used.insert(field);
        self.obj
            .get(field)
            .ok_or_else(|| err(self.key, format!("missing metadata field `{field}`")))
    }

    fn str(&mut self, field: &'static str) -> Result<&'a str> {
        let v = self.get(field)?;
        v.as_str()
            .ok_or_else(|| self.bad(field, format!("{v} is not a string")))
    }

    fn bool(&mut self, field: &'static str) -> Result<bool> {
        let v = self.get(field)?;
        v.as_bool()
            .ok_or_else(|| self.bad(field, format!("{v} is not a boolean")))
    }

    fn usize(&mut self, field: &'static str) -> Result<usize> {
        let v = self.get(field)?;
        v.as_u64()
            .and_then(|x| usize::try_from(x).ok())
            .ok_or_else(|| self.bad(field, format!("{v} is not a size")))
    }

    fn usizes(&mut self, field: &'static str) -> Result<Vec<usize>> {
        let v = self.get(field)?;
        let bad = || self.bad(field, format!("{v} is not an array of sizes"));
        v.as_array()
            .ok_or_else(bad)?
            .iter()
            .map(|x| x.as_u64().and_then(|x| usize::try_from(x).ok()))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(bad)
    }

    fn bools(&mut self, field: &'static str) -> Result<Vec<bool>> {
        let v = self.get(field)?;
        let bad = || self.bad(field, format!("{v} is not an array of booleans"));
        v.as_array()
            .ok_or_else(bad)?
            .iter()
            .map(Value::as_bool)
            .collect::<Option<Vec<_>>>()
            .ok_or_else(bad)
    }

    /// Rejects fields nobody read.
    fn finish(self) -> Result<()> {
        match self.obj.keys().find(|k| !self.used.contains(k.as_str())) {
            Some(k) => Err(err(self.key, format!("unknown metadata field `{k}`"))),
            None => Ok(()),
        }
    }
}

/// The `"kind"` of `key`'s metadata (how enum variants are told apart).
fn kind_of<'a>(r: &'a ArtifactReader, key: &'a str) -> Result<&'a str> {
    Meta::any(r, key)?.str("kind")
}

/// Saves `v` under `{key}.{field}` when present; returns the presence flag.
fn save_opt<T: Persist>(
    w: &mut ArtifactWriter,
    key: &str,
    field: &str,
    v: &Option<T>,
) -> Result<bool> {
    if let Some(v) = v {
        v.save(w, &sub(key, field))?;
    }
    Ok(v.is_some())
}

/// Loads `{key}.{field}` when the metadata flag `field` says it is there; a sub-key present
/// without its flag is an error.
fn load_opt<T: Persist>(
    r: &ArtifactReader,
    m: &mut Meta,
    field: &'static str,
) -> Result<Option<T>> {
    let k = sub(m.key, field);
    if m.bool(field)? {
        T::load(r, &k).map(Some)
    } else if r.meta.contains_key(&k) {
        Err(err(
            m.key,
            format!("`{k}` is present but the metadata flag `{field}` says there is none"),
        ))
    } else {
        Ok(None)
    }
}

/// `consumer` (a key) takes its input in `inp`, which must be what `producer` (a key, or a
/// description in backquotes) produces.
fn chain(key: &str, producer: &str, out: &ActQuant, consumer: &str, inp: &ActQuant) -> Result<()> {
    if out == inp {
        Ok(())
    } else {
        Err(err(
            key,
            format!(
                "`{consumer}` takes its input quantized as {inp:?}, but `{producer}` produces \
                 {out:?}"
            ),
        ))
    }
}

/// A count that must equal another.
fn count(key: &str, what: impl Display, got: usize, want: usize) -> Result<()> {
    if got == want {
        Ok(())
    } else {
        Err(err(key, format!("{what} is {got}, expected {want}")))
    }
}

/// A map size `(h, w)`.
type Hw = (usize, usize);

/// Output size of `conv` (saved at `key`) on an `h x w` map, with the checks its `forward` would
/// otherwise assert (and overflow-free arithmetic). The total padding of a dimension must be
/// smaller than the dilated kernel (as with timm's "same" and symmetric paddings), which bounds
/// the output by the input.
fn conv_hw(key: &str, c: &QConv2d, (h, w): Hw) -> Result<Hw> {
    let p = c.pad;
    let dim = |n: usize, k: usize, before: usize, after: usize| -> Option<(usize, usize)> {
        let span = c.dilation.checked_mul(k - 1)?.checked_add(1)?;
        let pad = before.checked_add(after)?;
        Some((span, n.checked_add(pad)?)).filter(|&(span, _)| pad < span)
    };
    let bad = || {
        err(
            key,
            format!(
                "a {h}x{w} map does not fit the {}x{} kernel (dilation {}, padding {:?})",
                c.kh, c.kw, c.dilation, p
            ),
        )
    };
    let (sh, ph) = dim(h, c.kh, p.top, p.bottom).ok_or_else(bad)?;
    let (sw, pw) = dim(w, c.kw, p.left, p.right).ok_or_else(bad)?;
    if ph < sh || pw < sw || h == 0 || w == 0 {
        return Err(bad());
    }
    Ok(c.out_size(h, w))
}

/// What the encoder needs to chain a map-to-map module: input / output quantization and
/// channels, and the output size for an input size (checking every op fits).
trait MapOp {
    fn in_q(&self) -> ActQuant;
    fn out_q(&self) -> ActQuant;
    fn in_ch(&self) -> usize;
    fn out_ch(&self) -> usize;
    /// Output size for an `hw` input; `key` is where the module is saved.
    fn out_hw(&self, key: &str, hw: Hw) -> Result<Hw>;
}

impl MapOp for QConvNormAct {
    fn in_q(&self) -> ActQuant {
        self.conv.x
    }
    fn out_q(&self) -> ActQuant {
        self.out_quant()
    }
    fn in_ch(&self) -> usize {
        self.conv.c_in
    }
    fn out_ch(&self) -> usize {
        self.conv.c_out
    }
    fn out_hw(&self, key: &str, hw: Hw) -> Result<Hw> {
        conv_hw(&sub(key, "conv"), &self.conv, hw)
    }
}

/// A residual add must see its input's size again.
fn same_hw(key: &str, inp: Hw, out: Hw) -> Result<()> {
    if inp == out {
        Ok(())
    } else {
        Err(err(
            key,
            format!(
                "the residual `{}` adds a {}x{} input to a {}x{} output",
                sub(key, "skip"),
                inp.0,
                inp.1,
                out.0,
                out.1
            ),
        ))
    }
}

impl MapOp for QEdgeResidual {
    fn in_q(&self) -> ActQuant {
        self.conv_exp.x
    }
    fn out_q(&self) -> ActQuant {
        self.out_quant()
    }
    fn in_ch(&self) -> usize {
        self.conv_exp.c_in
    }
    fn out_ch(&self) -> usize {
        self.conv_pwl.c_out
    }
    fn out_hw(&self, key: &str, hw: Hw) -> Result<Hw> {
        let mid = conv_hw(&sub(key, "conv_exp"), &self.conv_exp, hw)?;
        let out = conv_hw(&sub(key, "conv_pwl"), &self.conv_pwl, mid)?;
        if self.skip.is_some() {
            same_hw(key, hw, out)?;
        }
        Ok(out)
    }
}

/// The conv-norm-acts of a UIR in forward order, with their field names.
fn uir_stages(b: &QUniversalInvertedResidual) -> Vec<(&'static str, &QConvNormAct)> {
    let mut v = Vec::with_capacity(5);
    if let Some(m) = &b.dw_start {
        v.push(("dw_start", m));
    }
    v.push(("pw_exp", &b.pw_exp));
    if let Some(m) = &b.dw_mid {
        v.push(("dw_mid", m));
    }
    v.push(("pw_proj", &b.pw_proj));
    if let Some(m) = &b.dw_end {
        v.push(("dw_end", m));
    }
    v
}

impl MapOp for QUniversalInvertedResidual {
    fn in_q(&self) -> ActQuant {
        uir_stages(self)[0].1.in_q()
    }
    fn out_q(&self) -> ActQuant {
        self.out_quant()
    }
    fn in_ch(&self) -> usize {
        uir_stages(self)[0].1.in_ch()
    }
    fn out_ch(&self) -> usize {
        uir_stages(self).last().map_or(0, |s| s.1.out_ch())
    }
    fn out_hw(&self, key: &str, hw: Hw) -> Result<Hw> {
        let mut cur = hw;
        for (f, m) in uir_stages(self) {
            cur = m.out_hw(&sub(key, f), cur)?;
        }
        if self.skip.is_some() {
            same_hw(key, hw, cur)?;
        }
        Ok(cur)
    }
}

/// Tokens a key / value branch gives for an `hw` map.
fn kv_tokens(key: &str, kv: &QKvProjection, hw: Hw) -> Result<usize> {
    let (h, w) = match &kv.down_conv {
        Some(c) => conv_hw(&sub(key, "down_conv"), c, hw)?,
        None => hw,
    };
    Ok(h.saturating_mul(w))
}

impl MapOp for QMobileAttention {
    fn in_q(&self) -> ActQuant {
        self.norm.norm.x
    }
    fn out_q(&self) -> ActQuant {
        self.out_quant()
    }
    fn in_ch(&self) -> usize {
        self.norm.channels()
    }
    fn out_ch(&self) -> usize {
        self.attn.output_proj.out_features()
    }
    fn out_hw(&self, key: &str, hw: Hw) -> Result<Hw> {
        let a = sub(key, "attn");
        let k = kv_tokens(&sub(&a, "key"), &self.attn.key, hw)?;
        let v = kv_tokens(&sub(&a, "value"), &self.attn.value, hw)?;
        if k != v || k == 0 {
            return Err(err(
                &a,
                format!(
                    "on a {}x{} map the key branch gives {k} tokens and the value branch {v}",
                    hw.0, hw.1
                ),
            ));
        }
        Ok(hw)
    }
}

impl MapOp for QBlock {
    fn in_q(&self) -> ActQuant {
        match self {
            QBlock::EdgeResidual(b) => b.in_q(),
            QBlock::UniversalInvertedResidual(b) => b.in_q(),
            QBlock::MobileAttention(b) => b.in_q(),
        }
    }
    fn out_q(&self) -> ActQuant {
        self.out_quant()
    }
    fn in_ch(&self) -> usize {
        match self {
            QBlock::EdgeResidual(b) => b.in_ch(),
            QBlock::UniversalInvertedResidual(b) => b.in_ch(),
            QBlock::MobileAttention(b) => b.in_ch(),
        }
    }
    fn out_ch(&self) -> usize {
        match self {
            QBlock::EdgeResidual(b) => b.out_ch(),
            QBlock::UniversalInvertedResidual(b) => b.out_ch(),
            QBlock::MobileAttention(b) => b.out_ch(),
        }
    }
    fn out_hw(&self, key: &str, hw: Hw) -> Result<Hw> {
        match self {
            QBlock::EdgeResidual(b) => b.out_hw(key, hw),
            QBlock::UniversalInvertedResidual(b) => b.out_hw(key, hw),
            QBlock::MobileAttention(b) => b.out_hw(key, hw),
        }
    }
}

/// The layer scale (`{key}.layer_scale`) and residual add (`{key}.skip`) ending a block whose
/// main branch produces `out` with `ch` channels; the add's second input is the block input
/// (`in_q`, `in_ch` channels).
#[allow(clippy::too_many_arguments)]
fn check_tail(
    key: &str,
    producer: &str,
    out: ActQuant,
    ch: usize,
    layer_scale: Option<&QChannelScale>,
    skip: Option<&QAdd>,
    in_q: ActQuant,
    in_ch: usize,
) -> Result<()> {
    let mut cur = (producer.to_string(), out);
    if let Some(ls) = layer_scale {
        let k = sub(key, "layer_scale");
        chain(key, &cur.0, &cur.1, &k, &ls.x)?;
        if !matches!(ls.axis, ChannelAxis::First) {
            return Err(err(
                key,
                format!("`{k}` must scale the first (channel) axis"),
            ));
        }
        count(key, format!("`{k}` channels"), ls.channels(), ch)?;
        cur = (k, ls.y);
    }
    if let Some(add) = skip {
        let k = sub(key, "skip");
        chain(key, &cur.0, &cur.1, &format!("{k}` input `a"), &add.a)?;
        chain(key, "block input", &in_q, &format!("{k}` input `b"), &add.b)?;
        count(key, format!("`{k}`: output channels"), ch, in_ch)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// MobileNetV5 encoder.

impl Persist for QConvNormAct {
    fn save(&self, w: &mut ArtifactWriter, key: &str) -> Result<()> {
        self.conv.save(w, &sub(key, "conv"))?;
        self.bn.save(w, &sub(key, "bn"))?;
        let act = save_opt(w, key, "act", &self.act)?;
        put_meta(
            w,
            key,
            "conv_norm_act",
            json!({"name": self.name, "act": act}),
        )
    }

    fn load(r: &ArtifactReader, key: &str) -> Result<Self> {
        let mut m = Meta::open(r, key, "conv_norm_act")?;
        let name = m.str("name")?.to_string();
        let act: Option<QLut> = load_opt(r, &mut m, "act")?;
        m.finish()?;
        let (kc, kb) = (sub(key, "conv"), sub(key, "bn"));
        let conv = QConv2d::load(r, &kc)?;
        let bn = QRmsNorm2d::load(r, &kb)?;
        chain(key, &kc, &conv.y, &kb, &bn.norm.x)?;
        count(key, format!("`{kb}` channels"), bn.channels(), conv.c_out)?;
        if let Some(l) = &act {
            chain(key, &kb, &bn.norm.y, &sub(key, "act"), &l.x)?;
        }
        Ok(QConvNormAct {
            name,
            conv,
            bn,
            act,
        })
    }
}

impl Persist for QEdgeResidual {
    fn save(&self, w: &mut ArtifactWriter, key: &str) -> Result<()> {
        self.conv_exp.save(w, &sub(key, "conv_exp"))?;
        self.bn1.save(w, &sub(key, "bn1"))?;
        self.act1.save(w, &sub(key, "bn1.act"))?;
        self.conv_pwl.save(w, &sub(key, "conv_pwl"))?;
        self.bn2.save(w, &sub(key, "bn2"))?;
        let skip = save_opt(w, key, "skip", &self.skip)?;
        put_meta(
            w,
            key,
            "edge_residual",
            json!({"name": self.name, "skip": skip}),
        )
    }

    fn load(r: &ArtifactReader, key: &str) -> Result<Self> {
        let mut m = Meta::open(r, key, "edge_residual")?;
        let name = m.str("name")?.to_string();
        let skip: Option<QAdd> = load_opt(r, &mut m, "skip")?;
        m.finish()?;
        let k = |f: &str| sub(key, f);
        let conv_exp = QConv2d::load(r, &k("conv_exp"))?;
        let bn1 = QRmsNorm2d::load(r, &k("bn1"))?;
        let act1 = QLut::load(r, &k("bn1.act"))?;
        let conv_pwl = QConv2d::load(r, &k("conv_pwl"))?;
        let bn2 = QRmsNorm2d::load(r, &k("bn2"))?;
        chain(key, &k("conv_exp"), &conv_exp.y, &k("bn1"), &bn1.norm.x)?;
        count(
            key,
            format!("`{}` channels", k("bn1")),
            bn1.channels(),
            conv_exp.c_out,
        )?;
        chain(key, &k("bn1"), &bn1.norm.y, &k("bn1.act"), &act1.x)?;
        chain(key, &k("bn1.act"), &act1.y, &k("conv_pwl"), &conv_pwl.x)?;
        count(
            key,
            format!("`{}` input channels", k("conv_pwl")),
            conv_pwl.c_in,
            conv_exp.c_out,
        )?;
        chain(key, &k("conv_pwl"), &conv_pwl.y, &k("bn2"), &bn2.norm.x)?;
        count(
            key,
            format!("`{}` channels", k("bn2")),
            bn2.channels(),
            conv_pwl.c_out,
        )?;
        let (out, ch) = (bn2.norm.y, conv_pwl.c_out);
        check_tail(
            key,
            &k("bn2"),
            out,
            ch,
            None,
            skip.as_ref(),
            conv_exp.x,
            conv_exp.c_in,
        )?;
        Ok(QEdgeResidual {
            name,
            conv_exp,
            bn1,
            act1,
            conv_pwl,
            bn2,
            skip,
        })
    }
}

impl Persist for QUniversalInvertedResidual {
    fn save(&self, w: &mut ArtifactWriter, key: &str) -> Result<()> {
        let dw_start = save_opt(w, key, "dw_start", &self.dw_start)?;
        self.pw_exp.save(w, &sub(key, "pw_exp"))?;
        let dw_mid = save_opt(w, key, "dw_mid", &self.dw_mid)?;
        self.pw_proj.save(w, &sub(key, "pw_proj"))?;
        let dw_end = save_opt(w, key, "dw_end", &self.dw_end)?;
        let layer_scale = save_opt(w, key, "layer_scale", &self.layer_scale)?;
        let skip = save_opt(w, key, "skip", &self.skip)?;
        let meta = json!({
            "name": self.name,
            "dw_start": dw_start,
            "dw_mid": dw_mid,
            "dw_end": dw_end,
            "layer_scale": layer_scale,
            "skip": skip,
        });
        put_meta(w, key, "universal_inverted_residual", meta)
    }

    fn load(r: &ArtifactReader, key: &str) -> Result<Self> {
        let mut m = Meta::open(r, key, "universal_inverted_residual")?;
        let name = m.str("name")?.to_string();
        let dw_start = load_opt(r, &mut m, "dw_start")?;
        let dw_mid = load_opt(r, &mut m, "dw_mid")?;
        let dw_end = load_opt(r, &mut m, "dw_end")?;
        let layer_scale = load_opt(r, &mut m, "layer_scale")?;
        let skip = load_opt(r, &mut m, "skip")?;
        m.finish()?;
        let b = QUniversalInvertedResidual {
            name,
            dw_start,
            pw_exp: QConvNormAct::load(r, &sub(key, "pw_exp"))?,
            dw_mid,
            pw_proj: QConvNormAct::load(r, &sub(key, "pw_proj"))?,
            dw_end,
            layer_scale,
            skip,
        };
        let stages = uir_stages(&b);
        for p in stages.windows(2) {
            let ((fa, a), (fb, b)) = (p[0], p[1]);
            let (ka, kb) = (sub(key, fa), sub(key, fb));
            chain(key, &ka, &a.out_q(), &sub(&kb, "conv"), &b.in_q())?;
            count(
                key,
                format!("`{kb}.conv` input channels"),
                b.in_ch(),
                a.out_ch(),
            )?;
        }
        let (lf, last) = stages[stages.len() - 1];
        let first = stages[0].1;
        check_tail(
            key,
            &sub(key, lf),
            last.out_q(),
            last.out_ch(),
            b.layer_scale.as_ref(),
            b.skip.as_ref(),
            first.in_q(),
            first.in_ch(),
        )?;
        Ok(b)
    }
}

impl Persist for QKvProjection {
    fn save(&self, w: &mut ArtifactWriter, key: &str) -> Result<()> {
        let down_conv = save_opt(w, key, "down_conv", &self.down_conv)?;
        let norm = save_opt(w, key, "norm", &self.norm)?;
        self.proj.save(w, &sub(key, "proj"))?;
        let meta = json!({"name": self.name, "down_conv": down_conv, "norm": norm});
        put_meta(w, key, "kv_projection", meta)
    }

    fn load(r: &ArtifactReader, key: &str) -> Result<Self> {
        let mut m = Meta::open(r, key, "kv_projection")?;
        let name = m.str("name")?.to_string();
        let down_conv: Option<QConv2d> = load_opt(r, &mut m, "down_conv")?;
        let norm: Option<QRmsNorm2d> = load_opt(r, &mut m, "norm")?;
        m.finish()?;
        let kp = sub(key, "proj");
        let proj = QLinear::load(r, &kp)?;
        match (&down_conv, &norm) {
            (None, Some(_)) => {
                return Err(err(
                    key,
                    "a `norm` without a `down_conv` (not a timm layout)",
                ));
            }
            (Some(c), n) => {
                let kc = sub(key, "down_conv");
                let mut cur = (kc.clone(), c.y);
                if let Some(n) = n {
                    let kn = sub(key, "norm");
                    chain(key, &kc, &c.y, &kn, &n.norm.x)?;
                    count(key, format!("`{kn}` channels"), n.channels(), c.c_out)?;
                    cur = (kn, n.norm.y);
                }
                chain(key, &cur.0, &cur.1, &kp, &proj.x)?;
                count(
                    key,
                    format!("`{kp}` input features"),
                    proj.in_features(),
                    c.c_out,
                )?;
            }
            (None, None) => {}
        }
        Ok(QKvProjection {
            name,
            down_conv,
            norm,
            proj,
        })
    }
}

impl QKvProjection {
    /// Input quantization and channels of the branch.
    fn input(&self) -> (ActQuant, usize) {
        match &self.down_conv {
            Some(c) => (c.x, c.c_in),
            None => (self.proj.x, self.proj.in_features()),
        }
    }
}

impl Persist for QMultiQueryAttention2d {
    fn save(&self, w: &mut ArtifactWriter, key: &str) -> Result<()> {
        self.query_proj.save(w, &sub(key, "query.proj"))?;
        self.key.save(w, &sub(key, "key"))?;
        self.value.save(w, &sub(key, "value"))?;
        self.sdpa.save(w, &sub(key, "sdpa"))?;
        self.output_proj.save(w, &sub(key, "output.proj"))?;
        put_meta(
            w,
            key,
            "multi_query_attention_2d",
            json!({"name": self.name}),
        )
    }

    fn load(r: &ArtifactReader, key: &str) -> Result<Self> {
        let mut m = Meta::open(r, key, "multi_query_attention_2d")?;
        let name = m.str("name")?.to_string();
        m.finish()?;
        let k = |f: &str| sub(key, f);
        let query_proj = QLinear::load(r, &k("query.proj"))?;
        let kv_key = QKvProjection::load(r, &k("key"))?;
        let value = QKvProjection::load(r, &k("value"))?;
        let sdpa = QAttention::load(r, &k("sdpa"))?;
        let output_proj = QLinear::load(r, &k("output.proj"))?;
        let (xq, c) = (query_proj.x, query_proj.in_features());
        for (f, kv) in [("key", &kv_key), ("value", &value)] {
            let (q, ch) = kv.input();
            chain(key, &k("query.proj"), &xq, &k(f), &q)?;
            count(key, format!("`{}` input channels", k(f)), ch, c)?;
        }
        let (nh, nkv, d, dv) = (sdpa.n_heads, sdpa.n_kv, sdpa.d, sdpa.dv);
        let ks = k("sdpa");
        chain(
            key,
            &k("query.proj"),
            &query_proj.y,
            &format!("{ks}` input `q"),
            &sdpa.q,
        )?;
        chain(
            key,
            &k("key.proj"),
            &kv_key.proj.y,
            &format!("{ks}` input `k"),
            &sdpa.k,
        )?;
        chain(
            key,
            &k("value.proj"),
            &value.proj.y,
            &format!("{ks}` input `v"),
            &sdpa.v,
        )?;
        let feats = |f: &str| format!("`{}` output features", k(f));
        count(
            key,
            feats("query.proj"),
            query_proj.out_features(),
            nh.saturating_mul(d),
        )?;
        count(
            key,
            feats("key.proj"),
            kv_key.proj.out_features(),
            nkv.saturating_mul(d),
        )?;
        count(
            key,
            feats("value.proj"),
            value.proj.out_features(),
            nkv.saturating_mul(dv),
        )?;
        chain(key, &ks, &sdpa.out, &k("output.proj"), &output_proj.x)?;
        count(
            key,
            format!("`{}` input features", k("output.proj")),
            output_proj.in_features(),
            nh.saturating_mul(dv),
        )?;
        Ok(QMultiQueryAttention2d {
            name,
            query_proj,
            key: kv_key,
            value,
            sdpa,
            output_proj,
        })
    }
}

impl Persist for QMobileAttention {
    fn save(&self, w: &mut ArtifactWriter, key: &str) -> Result<()> {
        self.norm.save(w, &sub(key, "norm"))?;
        self.attn.save(w, &sub(key, "attn"))?;
        let layer_scale = save_opt(w, key, "layer_scale", &self.layer_scale)?;
        let skip = save_opt(w, key, "skip", &self.skip)?;
        let meta = json!({"name": self.name, "layer_scale": layer_scale, "skip": skip});
        put_meta(w, key, "mobile_attention", meta)
    }

    fn load(r: &ArtifactReader, key: &str) -> Result<Self> {
        let mut m = Meta::open(r, key, "mobile_attention")?;
        let name = m.str("name")?.to_string();
        let layer_scale: Option<QChannelScale> = load_opt(r, &mut m, "layer_scale")?;
        let skip: Option<QAdd> = load_opt(r, &mut m, "skip")?;
        m.finish()?;
        let (kn, ka) = (sub(key, "norm"), sub(key, "attn"));
        let norm = QRmsNorm2d::load(r, &kn)?;
        let attn = QMultiQueryAttention2d::load(r, &ka)?;
        let kq = sub(&ka, "query.proj");
        chain(key, &kn, &norm.norm.y, &kq, &attn.query_proj.x)?;
        count(
            key,
            format!("`{kq}` input features"),
            attn.query_proj.in_features(),
            norm.channels(),
        )?;
        let o = &attn.output_proj;
        check_tail(
            key,
            &sub(&ka, "output.proj"),
            o.y,
            o.out_features(),
            layer_scale.as_ref(),
            skip.as_ref(),
            norm.norm.x,
            norm.channels(),
        )?;
        Ok(QMobileAttention {
            name,
            norm,
            attn,
            layer_scale,
            skip,
        })
    }
}

const BLOCK_KINDS: &str = "`edge_residual`, `universal_inverted_residual` or `mobile_attention`";

impl Persist for QBlock {
    /// The variant's own metadata (its `"kind"`) tells the variant.
    fn save(&self, w: &mut ArtifactWriter, key: &str) -> Result<()> {
        match self {
            QBlock::EdgeResidual(b) => b.save(w, key),
            QBlock::UniversalInvertedResidual(b) => b.save(w, key),
            QBlock::MobileAttention(b) => b.save(w, key),
        }
    }

    fn load(r: &ArtifactReader, key: &str) -> Result<Self> {
        Ok(match kind_of(r, key)? {
            "edge_residual" => QBlock::EdgeResidual(QEdgeResidual::load(r, key)?),
            "universal_inverted_residual" => {
                QBlock::UniversalInvertedResidual(QUniversalInvertedResidual::load(r, key)?)
            }
            "mobile_attention" => QBlock::MobileAttention(QMobileAttention::load(r, key)?),
            other => {
                return Err(err(
                    key,
                    format!("`{other}` is not a block kind ({BLOCK_KINDS})"),
                ))
            }
        })
    }
}

impl Persist for QMultiScaleFusionAdapter {
    fn save(&self, w: &mut ArtifactWriter, key: &str) -> Result<()> {
        let mut resize = Vec::with_capacity(self.resize.len());
        for (i, r) in self.resize.iter().enumerate() {
            resize.push(save_opt(w, key, &format!("resize.{i}"), r)?);
        }
        self.concat.save(w, &sub(key, "concat"))?;
        self.ffn.save(w, &sub(key, "ffn"))?;
        let pool = save_opt(w, key, "pool", &self.pool)?;
        self.norm.save(w, &sub(key, "norm"))?;
        let meta = json!({
            "name": self.name,
            "inputs": self.resize.len(),
            "resize": resize,
            "pool": pool,
        });
        put_meta(w, key, "msfa", meta)
    }

    fn load(r: &ArtifactReader, key: &str) -> Result<Self> {
        let mut m = Meta::open(r, key, "msfa")?;
        let name = m.str("name")?.to_string();
        let n = m.usize("inputs")?;
        let flags = m.bools("resize")?;
        if flags.len() != n {
            return Err(m.bad("resize", format!("{} flags for {n} inputs", flags.len())));
        }
        let pool: Option<QAvgPool2d> = load_opt(r, &mut m, "pool")?;
        m.finish()?;
        let mut resize = Vec::with_capacity(n);
        for (i, present) in flags.into_iter().enumerate() {
            let k = sub(key, &format!("resize.{i}"));
            if present {
                resize.push(Some(QUpsampleNearest::load(r, &k)?));
            } else if r.meta.contains_key(&k) {
                return Err(err(
                    key,
                    format!("`{k}` is present but the metadata flag `resize[{i}]` is false"),
                ));
            } else {
                resize.push(None);
            }
        }
        let (kc, kf, kn) = (sub(key, "concat"), sub(key, "ffn"), sub(key, "norm"));
        let concat = QConcat::load(r, &kc)?;
        count(key, format!("`{kc}` inputs"), concat.parts.len(), n)?;
        let ffn = QUniversalInvertedResidual::load(r, &kf)?;
        chain(key, &kc, &concat.y, &kf, &ffn.in_q())?;
        let mut cur = (kf, ffn.out_q());
        if let Some(p) = &pool {
            let kp = sub(key, "pool");
            chain(key, &cur.0, &cur.1, &kp, &p.x)?;
            cur = (kp, p.y);
        }
        let norm = QRmsNorm2d::load(r, &kn)?;
        chain(key, &cur.0, &cur.1, &kn, &norm.norm.x)?;
        count(
            key,
            format!("`{kn}` channels"),
            norm.channels(),
            ffn.out_ch(),
        )?;
        Ok(QMultiScaleFusionAdapter {
            name,
            resize,
            concat,
            ffn,
            pool,
            norm,
        })
    }
}

impl Persist for QMobileNetV5Encoder {
    fn save(&self, w: &mut ArtifactWriter, key: &str) -> Result<()> {
        self.input.save(w, &sub(key, "input"))?;
        self.conv_stem.save(w, &sub(key, "conv_stem"))?;
        for (s, stage) in self.blocks.iter().enumerate() {
            for (i, b) in stage.iter().enumerate() {
                b.save(w, &sub(key, &format!("blocks.{s}.{i}")))?;
            }
        }
        self.msfa.save(w, &sub(key, "msfa"))?;
        let stages: Vec<usize> = self.blocks.iter().map(Vec::len).collect();
        let meta = json!({
            "image_size": self.image_size,
            "in_chans": self.in_chans,
            "num_features": self.num_features,
            "output_resolution": self.output_resolution,
            "msfa_taps": self.msfa_taps,
            "stages": stages,
        });
        put_meta(w, key, "mobilenetv5_encoder", meta)
    }

    /// Besides each part's own checks, walks the static shapes from `image_size` through the
    /// stem, the blocks up to the last tap and the MSFA: quantizations and channels chain, every
    /// conv fits its map, the taps reach the MSFA at its expected sizes, and the output is
    /// `[num_features, R, R]`.
    fn load(r: &ArtifactReader, key: &str) -> Result<Self> {
        let mut m = Meta::open(r, key, "mobilenetv5_encoder")?;
        let image_size = m.usize("image_size")?;
        let in_chans = m.usize("in_chans")?;
        let num_features = m.usize("num_features")?;
        let output_resolution = m.usize("output_resolution")?;
        let msfa_taps = m.usizes("msfa_taps")?;
        let stages = m.usizes("stages")?;
        if msfa_taps.is_empty() || msfa_taps.windows(2).any(|p| p[0] >= p[1]) {
            return Err(m.bad(
                "msfa_taps",
                format!("{msfa_taps:?} must be non-empty and strictly ascending"),
            ));
        }
        let last_tap = msfa_taps[msfa_taps.len() - 1];
        if last_tap > stages.len() {
            return Err(m.bad(
                "msfa_taps",
                format!("tap {last_tap} after only {} stages", stages.len()),
            ));
        }
        if image_size == 0 || output_resolution == 0 {
            return Err(err(
                key,
                "image_size and output_resolution must be positive",
            ));
        }
        m.finish()?;

        let input = ActQuant::load(r, &sub(key, "input"))?;
        let ks = sub(key, "conv_stem");
        let conv_stem = QConvNormAct::load(r, &ks)?;
        chain(key, &sub(key, "input"), &input, &ks, &conv_stem.in_q())?;
        count(
            key,
            format!("`{ks}` input channels"),
            conv_stem.in_ch(),
            in_chans,
        )?;
        let mut cur = (ks.clone(), conv_stem.out_q(), conv_stem.out_ch());
        let mut hw = conv_stem.out_hw(&ks, (image_size, image_size))?;
        // (producer key, quantization, channels, size) of each tap.
        let mut taps = Vec::with_capacity(msfa_taps.len());
        if msfa_taps.contains(&0) {
            taps.push((cur.clone(), hw));
        }
        let mut blocks = Vec::with_capacity(stages.len());
        for (s, &n) in stages.iter().enumerate() {
            let mut stage = Vec::new();
            for i in 0..n {
                let kb = sub(key, &format!("blocks.{s}.{i}"));
                let b = QBlock::load(r, &kb)?;
                if s < last_tap {
                    chain(key, &cur.0, &cur.1, &kb, &b.in_q())?;
                    count(key, format!("`{kb}` input channels"), b.in_ch(), cur.2)?;
                    hw = b.out_hw(&kb, hw)?;
                    cur = (kb, b.out_q(), b.out_ch());
                }
                stage.push(b);
            }
            blocks.push(stage);
            if msfa_taps.contains(&(s + 1)) {
                taps.push((cur.clone(), hw));
            }
        }

        let km = sub(key, "msfa");
        let msfa = QMultiScaleFusionAdapter::load(r, &km)?;
        count(key, format!("`{km}` inputs"), msfa.resize.len(), taps.len())?;
        let hw0 = taps[0].1;
        let mut channels = 0usize;
        for (i, (((kt, q, c), thw), (resize, part))) in taps
            .iter()
            .zip(msfa.resize.iter().zip(&msfa.concat.parts))
            .enumerate()
        {
            chain(key, kt, q, &format!("{km}.concat.part{i}"), &part.x)?;
            channels = channels.saturating_add(*c);
            let size = match resize {
                Some(u) => {
                    if (u.h, u.w) != *thw {
                        return Err(err(
                            key,
                            format!(
                                "`{km}.resize.{i}` expects a {}x{} map, `{kt}` gives {}x{}",
                                u.h, u.w, thw.0, thw.1
                            ),
                        ));
                    }
                    u.out_size()
                }
                None => *thw,
            };
            if size != hw0 {
                return Err(err(
                    key,
                    format!(
                        "msfa input {i} reaches `{km}.concat` as {}x{}, the first as {}x{}",
                        size.0, size.1, hw0.0, hw0.1
                    ),
                ));
            }
        }
        let kf = sub(&km, "ffn");
        count(
            key,
            format!("`{kf}` input channels"),
            msfa.ffn.in_ch(),
            channels,
        )?;
        let (h, w) = msfa.ffn.out_hw(&kf, hw0)?;
        let out = match &msfa.pool {
            Some(p) if h >= p.kh && w >= p.kw => (h / p.kh, w / p.kw),
            Some(p) => {
                return Err(err(
                    key,
                    format!("`{km}.pool` kernel {}x{} on a {h}x{w} map", p.kh, p.kw),
                ))
            }
            None => (h, w),
        };
        let rr = (output_resolution, output_resolution);
        if out != rr {
            return Err(err(
                key,
                format!(
                    "`{km}` outputs a {}x{} map, the metadata says {output_resolution}x{output_resolution}",
                    out.0, out.1
                ),
            ));
        }
        count(
            key,
            format!("`{km}.norm` channels"),
            msfa.norm.channels(),
            num_features,
        )?;
        Ok(QMobileNetV5Encoder {
            image_size,
            in_chans,
            input,
            conv_stem,
            blocks,
            msfa_taps,
            msfa,
            num_features,
            output_resolution,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Connector.

impl Persist for QProjector {
    fn save(&self, w: &mut ArtifactWriter, key: &str) -> Result<()> {
        self.linear_1.save(w, &sub(key, "linear_1"))?;
        self.act.save(w, &sub(key, "act"))?;
        self.linear_2.save(w, &sub(key, "linear_2"))?;
        put_meta(w, key, "projector", json!({}))
    }

    fn load(r: &ArtifactReader, key: &str) -> Result<Self> {
        Meta::open(r, key, "projector")?.finish()?;
        let k = |f: &str| sub(key, f);
        let linear_1 = QLinear::load(r, &k("linear_1"))?;
        let act = QLut::load(r, &k("act"))?;
        let linear_2 = QLinear::load(r, &k("linear_2"))?;
        chain(key, &k("linear_1"), &linear_1.y, &k("act"), &act.x)?;
        chain(key, &k("act"), &act.y, &k("linear_2"), &linear_2.x)?;
        count(
            key,
            format!("`{}` input features", k("linear_2")),
            linear_2.in_features(),
            linear_1.out_features(),
        )?;
        Ok(QProjector {
            linear_1,
            act,
            linear_2,
        })
    }
}

/// Saves an integer encoder and its connector under `{key}.encoder` and `{key}.connector`.
pub fn save_vision(
    w: &mut ArtifactWriter,
    key: &str,
    encoder: &QMobileNetV5Encoder,
    projector: &QProjector,
) -> Result<()> {
    encoder.save(w, &sub(key, "encoder"))?;
    projector.save(w, &sub(key, "connector"))
}

/// Loads what [`save_vision`] saved and checks the connector takes the encoder's output tokens
/// (quantization and channels).
pub fn load_vision(r: &ArtifactReader, key: &str) -> Result<(QMobileNetV5Encoder, QProjector)> {
    let (ke, kc) = (sub(key, "encoder"), sub(key, "connector"));
    let enc = QMobileNetV5Encoder::load(r, &ke)?;
    let proj = QProjector::load(r, &kc)?;
    let kl = sub(&kc, "linear_1");
    chain(key, &ke, &enc.output_quant(), &kl, &proj.input_quant())?;
    count(
        key,
        format!("`{kl}` input features"),
        proj.in_features(),
        enc.out_channels(),
    )?;
    Ok((enc, proj))
}

// ---------------------------------------------------------------------------------------------
// LFM2.

impl Persist for QLfm2Dims {
    fn save(&self, w: &mut ArtifactWriter, key: &str) -> Result<()> {
        let meta = json!({
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "conv_l_cache": self.conv_l_cache,
            "max_position_embeddings": self.max_position_embeddings,
        });
        put_meta(w, key, "lfm2_dims", meta)
    }

    fn load(r: &ArtifactReader, key: &str) -> Result<Self> {
        let mut m = Meta::open(r, key, "lfm2_dims")?;
        let d = QLfm2Dims {
            vocab_size: m.usize("vocab_size")?,
            hidden_size: m.usize("hidden_size")?,
            num_attention_heads: m.usize("num_attention_heads")?,
            num_key_value_heads: m.usize("num_key_value_heads")?,
            head_dim: m.usize("head_dim")?,
            conv_l_cache: m.usize("conv_l_cache")?,
            max_position_embeddings: m.usize("max_position_embeddings")?,
        };
        for (f, v) in [
            ("vocab_size", d.vocab_size),
            ("hidden_size", d.hidden_size),
            ("num_attention_heads", d.num_attention_heads),
            ("num_key_value_heads", d.num_key_value_heads),
            ("head_dim", d.head_dim),
            ("conv_l_cache", d.conv_l_cache),
        ] {
            if v == 0 {
                return Err(m.bad(f, "must be positive"));
            }
        }
        if !d.num_attention_heads.is_multiple_of(d.num_key_value_heads) {
            return Err(m.bad(
                "num_key_value_heads",
                format!(
                    "{} attention heads are not a multiple of {} kv heads",
                    d.num_attention_heads, d.num_key_value_heads
                ),
            ));
        }
        m.finish()?;
        Ok(d)
    }
}

impl Persist for QLfm2ShortConv {
    fn save(&self, w: &mut ArtifactWriter, key: &str) -> Result<()> {
        self.in_proj.save(w, &sub(key, "in_proj"))?;
        self.bx.save(w, &sub(key, "bx"))?;
        self.conv.save(w, &sub(key, "conv"))?;
        self.y.save(w, &sub(key, "y"))?;
        self.out_proj.save(w, &sub(key, "out_proj"))?;
        put_meta(w, key, "lfm2_short_conv", json!({}))
    }

    fn load(r: &ArtifactReader, key: &str) -> Result<Self> {
        Meta::open(r, key, "lfm2_short_conv")?.finish()?;
        let k = |f: &str| sub(key, f);
        let in_proj = QLinear::load(r, &k("in_proj"))?;
        let bx = QMul::load(r, &k("bx"))?;
        let conv = QCausalConv1d::load(r, &k("conv"))?;
        let y = QMul::load(r, &k("y"))?;
        let out_proj = QLinear::load(r, &k("out_proj"))?;
        let (ki, kb, kc, ky) = (k("in_proj"), k("bx"), k("conv"), k("y"));
        let h = conv.channels();
        count(
            key,
            format!("`{ki}` output features ([B | C | x] of `{kc}`'s channels)"),
            in_proj.out_features(),
            h.saturating_mul(3),
        )?;
        chain(key, &ki, &in_proj.y, &format!("{kb}` input `a"), &bx.a)?;
        chain(key, &ki, &in_proj.y, &format!("{kb}` input `b"), &bx.b)?;
        chain(key, &kb, &bx.y, &kc, &conv.x)?;
        chain(key, &ki, &in_proj.y, &format!("{ky}` input `a"), &y.a)?;
        chain(key, &kc, &conv.y, &format!("{ky}` input `b"), &y.b)?;
        chain(key, &ky, &y.y, &k("out_proj"), &out_proj.x)?;
        count(
            key,
            format!("`{}` input features", k("out_proj")),
            out_proj.in_features(),
            h,
        )?;
        Ok(QLfm2ShortConv {
            in_proj,
            bx,
            conv,
            y,
            out_proj,
        })
    }
}

impl Persist for QLfm2Attention {
    fn save(&self, w: &mut ArtifactWriter, key: &str) -> Result<()> {
        self.q_proj.save(w, &sub(key, "q_proj"))?;
        self.k_proj.save(w, &sub(key, "k_proj"))?;
        self.v_proj.save(w, &sub(key, "v_proj"))?;
        self.q_layernorm.save(w, &sub(key, "q_layernorm"))?;
        self.k_layernorm.save(w, &sub(key, "k_layernorm"))?;
        self.rope_q.save(w, &sub(key, "rope_q"))?;
        self.rope_k.save(w, &sub(key, "rope_k"))?;
        self.sdpa.save(w, &sub(key, "sdpa"))?;
        self.out_proj.save(w, &sub(key, "out_proj"))?;
        put_meta(w, key, "lfm2_attention", json!({}))
    }

    fn load(r: &ArtifactReader, key: &str) -> Result<Self> {
        Meta::open(r, key, "lfm2_attention")?.finish()?;
        let k = |f: &str| sub(key, f);
        let a = QLfm2Attention {
            q_proj: QLinear::load(r, &k("q_proj"))?,
            k_proj: QLinear::load(r, &k("k_proj"))?,
            v_proj: QLinear::load(r, &k("v_proj"))?,
            q_layernorm: QRmsNorm::load(r, &k("q_layernorm"))?,
            k_layernorm: QRmsNorm::load(r, &k("k_layernorm"))?,
            rope_q: QRope::load(r, &k("rope_q"))?,
            rope_k: QRope::load(r, &k("rope_k"))?,
            sdpa: QAttention::load(r, &k("sdpa"))?,
            out_proj: QLinear::load(r, &k("out_proj"))?,
        };
        let s = &a.sdpa;
        let (nh, nkv, d, dv) = (s.n_heads, s.n_kv, s.d, s.dv);
        let ks = k("sdpa");
        let inp = a.q_proj.in_features();
        for f in ["k_proj", "v_proj"] {
            let l = if f == "k_proj" { &a.k_proj } else { &a.v_proj };
            chain(key, &k("q_proj"), &a.q_proj.x, &k(f), &l.x)?;
            let what = format!("`{}` input features", k(f));
            count(key, what, l.in_features(), inp)?;
        }
        let feats = |f: &str| format!("`{}` output features", k(f));
        count(
            key,
            feats("q_proj"),
            a.q_proj.out_features(),
            nh.saturating_mul(d),
        )?;
        count(
            key,
            feats("k_proj"),
            a.k_proj.out_features(),
            nkv.saturating_mul(d),
        )?;
        count(
            key,
            feats("v_proj"),
            a.v_proj.out_features(),
            nkv.saturating_mul(dv),
        )?;
        for (p, l, n, rope) in [
            ("q", &a.q_proj, &a.q_layernorm, &a.rope_q),
            ("k", &a.k_proj, &a.k_layernorm, &a.rope_k),
        ] {
            let (kp, kn, kr) = (
                k(&format!("{p}_proj")),
                k(&format!("{p}_layernorm")),
                k(&format!("rope_{p}")),
            );
            chain(key, &kp, &l.y, &kn, &n.x)?;
            count(key, format!("`{kn}` dim (head_dim)"), n.dim, d)?;
            chain(key, &kn, &n.y, &kr, &rope.x)?;
            count(key, format!("`{kr}` head_dim"), rope.head_dim, d)?;
            let want = if p == "q" { &s.q } else { &s.k };
            chain(key, &kr, &rope.y, &format!("{ks}` input `{p}"), want)?;
        }
        chain(
            key,
            &k("v_proj"),
            &a.v_proj.y,
            &format!("{ks}` input `v"),
            &s.v,
        )?;
        chain(key, &ks, &s.out, &k("out_proj"), &a.out_proj.x)?;
        count(
            key,
            format!("`{}` input features", k("out_proj")),
            a.out_proj.in_features(),
            nh.saturating_mul(dv),
        )?;
        Ok(a)
    }
}

impl Persist for QLfm2Mlp {
    fn save(&self, w: &mut ArtifactWriter, key: &str) -> Result<()> {
        self.w1.save(w, &sub(key, "w1"))?;
        self.w3.save(w, &sub(key, "w3"))?;
        self.silu.save(w, &sub(key, "silu"))?;
        self.act.save(w, &sub(key, "act"))?;
        self.w2.save(w, &sub(key, "w2"))?;
        put_meta(w, key, "lfm2_mlp", json!({}))
    }

    fn load(r: &ArtifactReader, key: &str) -> Result<Self> {
        Meta::open(r, key, "lfm2_mlp")?.finish()?;
        let k = |f: &str| sub(key, f);
        let w1 = QLinear::load(r, &k("w1"))?;
        let w3 = QLinear::load(r, &k("w3"))?;
        let silu = QLut::load(r, &k("silu"))?;
        let act = QMul::load(r, &k("act"))?;
        let w2 = QLinear::load(r, &k("w2"))?;
        chain(key, &k("w1"), &w1.x, &k("w3"), &w3.x)?;
        let (kw1, kw3) = (k("w1"), k("w3"));
        count(
            key,
            format!("`{kw3}` input features"),
            w3.in_features(),
            w1.in_features(),
        )?;
        count(
            key,
            format!("`{kw3}` output features"),
            w3.out_features(),
            w1.out_features(),
        )?;
        chain(key, &kw1, &w1.y, &k("silu"), &silu.x)?;
        chain(
            key,
            &k("silu"),
            &silu.y,
            &format!("{}` input `a", k("act")),
            &act.a,
        )?;
        chain(key, &kw3, &w3.y, &format!("{}` input `b", k("act")), &act.b)?;
        chain(key, &k("act"), &act.y, &k("w2"), &w2.x)?;
        count(
            key,
            format!("`{}` input features", k("w2")),
            w2.in_features(),
            w1.out_features(),
        )?;
        Ok(QLfm2Mlp {
            w1,
            w3,
            silu,
            act,
            w2,
        })
    }
}

impl QLfm2Op {
    /// The sub-key of the op in its layer (the float checkpoint's name).
    fn field(&self) -> &'static str {
        match self {
            QLfm2Op::Conv(_) => "conv",
            QLfm2Op::Attention(_) => "self_attn",
        }
    }

    fn io(&self) -> (&QLinear, &QLinear) {
        match self {
            QLfm2Op::Conv(c) => (&c.in_proj, &c.out_proj),
            QLfm2Op::Attention(a) => (&a.q_proj, &a.out_proj),
        }
    }
}

impl Persist for QLfm2Op {
    /// The variant's own metadata (its `"kind"`) tells the variant.
    fn save(&self, w: &mut ArtifactWriter, key: &str) -> Result<()> {
        match self {
            QLfm2Op::Conv(c) => c.save(w, key),
            QLfm2Op::Attention(a) => a.save(w, key),
        }
    }

    fn load(r: &ArtifactReader, key: &str) -> Result<Self> {
        Ok(match kind_of(r, key)? {
            "lfm2_short_conv" => QLfm2Op::Conv(QLfm2ShortConv::load(r, key)?),
            "lfm2_attention" => QLfm2Op::Attention(QLfm2Attention::load(r, key)?),
            other => {
                return Err(err(
                    key,
                    format!("`{other}` is not `lfm2_short_conv` or `lfm2_attention`"),
                ))
            }
        })
    }
}

impl Persist for QLfm2Layer {
    fn save(&self, w: &mut ArtifactWriter, key: &str) -> Result<()> {
        self.operator_norm.save(w, &sub(key, "operator_norm"))?;
        let op = self.op.field();
        self.op.save(w, &sub(key, op))?;
        self.residual1.save(w, &sub(key, "residual1"))?;
        self.ffn_norm.save(w, &sub(key, "ffn_norm"))?;
        self.feed_forward.save(w, &sub(key, "feed_forward"))?;
        self.residual2.save(w, &sub(key, "residual2"))?;
        put_meta(w, key, "lfm2_layer", json!({ "op": op }))
    }

    fn load(r: &ArtifactReader, key: &str) -> Result<Self> {
        let mut m = Meta::open(r, key, "lfm2_layer")?;
        let field = m.str("op")?;
        let field = match field {
            "conv" => "conv",
            "self_attn" => "self_attn",
            other => return Err(m.bad("op", format!("`{other}` is not `conv` or `self_attn`"))),
        };
        m.finish()?;
        let k = |f: &str| sub(key, f);
        let ko = k(field);
        let operator_norm = QRmsNorm::load(r, &k("operator_norm"))?;
        let op = QLfm2Op::load(r, &ko)?;
        if op.field() != field {
            return Err(err(
                key,
                format!("`{ko}` is not a `{field}` op (metadata field `op`)"),
            ));
        }
        let residual1 = QAdd::load(r, &k("residual1"))?;
        let ffn_norm = QRmsNorm::load(r, &k("ffn_norm"))?;
        let feed_forward = QLfm2Mlp::load(r, &k("feed_forward"))?;
        let residual2 = QAdd::load(r, &k("residual2"))?;

        let (kn, kr1, kf, kff, kr2) = (
            k("operator_norm"),
            k("residual1"),
            k("ffn_norm"),
            k("feed_forward"),
            k("residual2"),
        );
        let dim = operator_norm.dim;
        let (first, last) = op.io();
        let (kfirst, klast) = match &op {
            QLfm2Op::Conv(_) => (sub(&ko, "in_proj"), sub(&ko, "out_proj")),
            QLfm2Op::Attention(_) => (sub(&ko, "q_proj"), sub(&ko, "out_proj")),
        };
        chain(key, &kn, &operator_norm.y, &kfirst, &first.x)?;
        count(
            key,
            format!("`{kfirst}` input features"),
            first.in_features(),
            dim,
        )?;
        count(
            key,
            format!("`{klast}` output features"),
            last.out_features(),
            dim,
        )?;
        let layer_in = operator_norm.x;
        chain(
            key,
            "layer input",
            &layer_in,
            &format!("{kr1}` input `a"),
            &residual1.a,
        )?;
        chain(
            key,
            &klast,
            &last.y,
            &format!("{kr1}` input `b"),
            &residual1.b,
        )?;
        chain(key, &kr1, &residual1.y, &kf, &ffn_norm.x)?;
        count(key, format!("`{kf}` dim"), ffn_norm.dim, dim)?;
        let ff = &feed_forward;
        let kw1 = sub(&kff, "w1");
        chain(key, &kf, &ffn_norm.y, &kw1, &ff.w1.x)?;
        count(
            key,
            format!("`{kw1}` input features"),
            ff.w1.in_features(),
            dim,
        )?;
        let kw2 = sub(&kff, "w2");
        count(
            key,
            format!("`{kw2}` output features"),
            ff.w2.out_features(),
            dim,
        )?;
        chain(
            key,
            &kr1,
            &residual1.y,
            &format!("{kr2}` input `a"),
            &residual2.a,
        )?;
        chain(
            key,
            &kw2,
            &ff.w2.y,
            &format!("{kr2}` input `b"),
            &residual2.b,
        )?;
        Ok(QLfm2Layer {
            operator_norm,
            op,
            residual1,
            ffn_norm,
            feed_forward,
            residual2,
        })
    }
}

impl Persist for QTiedHead {
    fn save(&self, w: &mut ArtifactWriter, key: &str) -> Result<()> {
        self.x.save(w, &sub(key, "x"))?;
        self.y.save(w, &sub(key, "y"))?;
        self.mult.save(w, &sub(key, "mult"))?;
        put_meta(w, key, "tied_head", json!({"vocab": self.mult.len()}))
    }

    fn load(r: &ArtifactReader, key: &str) -> Result<Self> {
        let mut m = Meta::open(r, key, "tied_head")?;
        let vocab = m.usize("vocab")?;
        m.finish()?;
        let km = sub(key, "mult");
        let mult = Vec::<Multiplier>::load(r, &km)?;
        count(
            key,
            format!("`{km}` multipliers (vocab)"),
            mult.len(),
            vocab,
        )?;
        Ok(QTiedHead {
            mult,
            x: ActQuant::load(r, &sub(key, "x"))?,
            y: ActQuant::load(r, &sub(key, "y"))?,
        })
    }
}

impl Persist for QLmHead {
    /// The variant's own metadata (its `"kind"`: `tied_head` or `linear`) tells the variant.
    fn save(&self, w: &mut ArtifactWriter, key: &str) -> Result<()> {
        match self {
            QLmHead::Tied(t) => t.save(w, key),
            QLmHead::Separate(l) => l.save(w, key),
        }
    }

    fn load(r: &ArtifactReader, key: &str) -> Result<Self> {
        Ok(match kind_of(r, key)? {
            "tied_head" => QLmHead::Tied(QTiedHead::load(r, key)?),
            "linear" => QLmHead::Separate(QLinear::load(r, key)?),
            other => {
                return Err(err(
                    key,
                    format!("`{other}` is not a `tied_head` or a `linear`"),
                ))
            }
        })
    }
}

impl Persist for QLfm2Model {
    fn save(&self, w: &mut ArtifactWriter, key: &str) -> Result<()> {
        self.dims.save(w, &sub(key, "dims"))?;
        self.embed_tokens.save(w, &sub(key, "embed_tokens"))?;
        for (i, l) in self.layers.iter().enumerate() {
            l.save(w, &sub(key, &format!("layers.{i}")))?;
        }
        self.embedding_norm.save(w, &sub(key, "embedding_norm"))?;
        self.lm_head.save(w, &sub(key, "lm_head"))?;
        let lm_head = match self.lm_head {
            QLmHead::Tied(_) => "tied",
            QLmHead::Separate(_) => "separate",
        };
        let meta = json!({"layers": self.layers.len(), "lm_head": lm_head});
        put_meta(w, key, "lfm2", meta)
    }

    /// Besides each part's own checks: the layers chain (each takes the previous one's output
    /// quantization, starting from `embed_tokens`), and every shape matches `dims` (hidden size,
    /// vocabulary, heads, head_dim, conv taps — what [`QLfm2Model::new_cache`] and `forward`
    /// rely on).
    fn load(r: &ArtifactReader, key: &str) -> Result<Self> {
        let mut m = Meta::open(r, key, "lfm2")?;
        let n = m.usize("layers")?;
        let tied = match m.str("lm_head")? {
            "tied" => true,
            "separate" => false,
            other => return Err(m.bad("lm_head", format!("`{other}` is not `tied` or `separate`"))),
        };
        m.finish()?;
        let k = |f: &str| sub(key, f);
        let dims = QLfm2Dims::load(r, &k("dims"))?;
        let (v, h) = (dims.vocab_size, dims.hidden_size);
        let ke = k("embed_tokens");
        let embed_tokens = QEmbedding::load(r, &ke)?;
        let dim = |what: &str| format!("`{what}` (dims)");
        count(key, format!("`{ke}` rows"), embed_tokens.table.out, v)?;
        count(key, format!("`{ke}` width"), embed_tokens.table.inp, h)?;
        let mut cur = (ke, embed_tokens.y);
        let mut layers = Vec::new();
        for i in 0..n {
            let kl = k(&format!("layers.{i}"));
            let l = QLfm2Layer::load(r, &kl)?;
            let kn = sub(&kl, "operator_norm");
            chain(key, &cur.0, &cur.1, &kn, &l.operator_norm.x)?;
            count(key, format!("`{kn}` dim"), l.operator_norm.dim, h)?;
            match &l.op {
                QLfm2Op::Conv(c) => {
                    let kc = sub(&kl, "conv.conv");
                    count(key, format!("`{kc}` channels"), c.conv.channels(), h)?;
                    count(
                        key,
                        format!("`{kc}` taps vs {}", dim("conv_l_cache")),
                        c.conv.kernel_size(),
                        dims.conv_l_cache,
                    )?;
                }
                QLfm2Op::Attention(a) => {
                    let ks = sub(&kl, "self_attn.sdpa");
                    let s = &a.sdpa;
                    let heads = format!("`{ks}` heads vs {}", dim("num_attention_heads"));
                    count(key, heads, s.n_heads, dims.num_attention_heads)?;
                    let kv = format!("`{ks}` kv heads vs {}", dim("num_key_value_heads"));
                    count(key, kv, s.n_kv, dims.num_key_value_heads)?;
                    count(
                        key,
                        format!("`{ks}` d vs {}", dim("head_dim")),
                        s.d,
                        dims.head_dim,
                    )?;
                    count(
                        key,
                        format!("`{ks}` dv vs {}", dim("head_dim")),
                        s.dv,
                        dims.head_dim,
                    )?;
                }
            }
            cur = (sub(&kl, "residual2"), l.residual2.y);
            layers.push(l);
        }
        let kn = k("embedding_norm");
        let embedding_norm = QRmsNorm::load(r, &kn)?;
        chain(key, &cur.0, &cur.1, &kn, &embedding_norm.x)?;
        count(key, format!("`{kn}` dim"), embedding_norm.dim, h)?;
        let kh = k("lm_head");
        let lm_head = QLmHead::load(r, &kh)?;
        match (&lm_head, tied) {
            (QLmHead::Tied(t), true) => {
                chain(key, &kn, &embedding_norm.y, &sub(&kh, "x"), &t.x)?;
                count(key, format!("`{kh}` vocabulary"), t.mult.len(), v)?;
                let table = &embed_tokens.table;
                check_reduction(
                    &kh,
                    table.inp,
                    centered_abs_max(&t.x),
                    table.effective_abs_max(),
                    0,
                )
                .map_err(|e| err(&kh, e))?;
            }
            (QLmHead::Separate(l), false) => {
                chain(key, &kn, &embedding_norm.y, &kh, &l.x)?;
                count(key, format!("`{kh}` output features"), l.out_features(), v)?;
                count(key, format!("`{kh}` input features"), l.in_features(), h)?;
            }
            _ => {
                let kind = if tied { "tied_head" } else { "linear" };
                return Err(err(
                    key,
                    format!("`{kh}` is not a `{kind}` (metadata field `lm_head`)"),
                ));
            }
        }
        Ok(QLfm2Model {
            dims,
            embed_tokens,
            layers,
            embedding_norm,
            lm_head,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::NoObserver;
    use crate::pipeline::{ImageInput, Pipeline, PromptInput};
    use crate::quant::calibrate::{calibrate, CalibrationOptions, CalibrationStats};
    use crate::quant::calibset::CalibrationSample;
    use crate::quant::model::QAutoNeural;
    use crate::quant::models::lfm2::argmax_i16;
    use crate::quant::models::mobilenetv5::map_to_tokens;
    use crate::quant::scheme::Scheme;
    use crate::quant::tensor::QTensor;
    use crate::tensor::Tensor;
    use safetensors::tensor::TensorView;
    use safetensors::{Dtype, SafeTensors};
    use std::collections::BTreeMap;
    use std::path::{Path, PathBuf};
    use std::sync::OnceLock;

    const STEM: &str = "quantized";
    const PROMPT: &str = "What speed is shown?";

    fn root() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    /// The embedded default model, calibrated on the sample image + a text-only prompt.
    struct Setup {
        pipe: Pipeline,
        stats: CalibrationStats,
        pixels: Tensor,
    }

    fn setup() -> &'static Setup {
        static S: OnceLock<Setup> = OnceLock::new();
        S.get_or_init(|| {
            let pipe = Pipeline::load(&root().join("models/autoneural-tiny-random")).unwrap();
            let image = root().join("assets/sample_dashboard.png");
            let samples = [
                CalibrationSample {
                    image: Some(image.clone()),
                    prompt: PROMPT.into(),
                },
                CalibrationSample {
                    image: None,
                    prompt: "Say something about the sea.".into(),
                },
            ];
            let opts = CalibrationOptions {
                progress: false,
                ..CalibrationOptions::default()
            };
            let stats = calibrate(&pipe, &samples, &opts).unwrap();
            let pixels = pipe.load_pixels(&[ImageInput::File(image)]).unwrap();
            let pixels = pixels.into_iter().next().unwrap();
            Setup {
                pipe,
                stats,
                pixels,
            }
        })
    }

    fn build(scheme: &Scheme) -> QAutoNeural {
        let s = setup();
        QAutoNeural::build(&s.pipe.model, &s.stats, scheme, None).unwrap()
    }

    fn default_model() -> &'static QAutoNeural {
        static Q: OnceLock<QAutoNeural> = OnceLock::new();
        Q.get_or_init(|| build(&Scheme::default()))
    }

    fn save(q: &QAutoNeural) -> ArtifactWriter {
        let mut w = ArtifactWriter::new();
        let (enc, proj) = q.vision.as_ref().unwrap();
        save_vision(&mut w, "vision", enc, proj).unwrap();
        q.text.save(&mut w, "text").unwrap();
        w
    }

    fn chat_ids(images: usize) -> Vec<u32> {
        let p = PromptInput::Chat {
            user: PROMPT.into(),
            system: None,
        };
        setup().pipe.prompt_ids(&p, images).unwrap()
    }

    /// Prefill `x`, then `steps` greedy decode steps: every logit row, as integers.
    fn run_lm(lm: &QLfm2Model, x: &QTensor, steps: usize) -> Vec<QTensor> {
        let mut cache = lm.new_cache();
        let h = lm.forward(x, &mut cache, &mut NoObserver).unwrap();
        let mut out = vec![lm.logits(&h)];
        for _ in 0..steps {
            let tok = argmax_i16(last_row(out.last().unwrap()));
            let e = lm.embed(&[tok]).unwrap();
            let h = lm.forward(&e, &mut cache, &mut NoObserver).unwrap();
            out.push(lm.logits(&h));
        }
        out
    }

    fn last_row(t: &QTensor) -> &[i16] {
        let v = *t.shape.last().unwrap();
        &t.data[t.data.len() - v..]
    }

    /// Saves `q`, reads it back from disk, checks equality and bit-identical forward outputs.
    fn round_trip(q: &QAutoNeural, label: &str) {
        let w = save(q);
        let dir = tempfile::tempdir().unwrap();
        w.write(dir.path(), STEM).unwrap();
        let r = ArtifactReader::open(dir.path(), STEM).unwrap();
        println!(
            "{label}: {} metadata entries, {} bytes of arrays",
            r.meta.len(),
            w.data_bytes()
        );
        // Keys follow the float checkpoint names.
        for k in [
            "vision.encoder.conv_stem.conv.weight",
            "vision.encoder.blocks.0.0.conv_exp.weight",
            "vision.encoder.blocks.1.0.dw_start.conv.weight",
            "vision.encoder.blocks.2.2.attn.query.proj.weight",
            "vision.encoder.blocks.2.2.attn.key.down_conv.weight",
            "vision.encoder.blocks.2.2.attn.value.proj.weight",
            "vision.encoder.blocks.2.2.attn.output.proj.weight",
            "vision.encoder.msfa.ffn.pw_exp.conv.weight",
            "vision.encoder.msfa.norm.w_mult_m",
            "vision.connector.linear_1.weight",
            "vision.connector.linear_2.bias",
            "text.embed_tokens.table",
            "text.layers.0.conv.in_proj.weight",
            "text.layers.0.conv.conv.weight",
            "text.layers.2.self_attn.q_proj.weight",
            "text.layers.2.self_attn.sdpa.softmax.exp2_table",
            "text.layers.5.feed_forward.w2.weight",
        ] {
            assert!(r.shape(k).is_some(), "{label}: no array `{k}`");
        }

        let (enc, proj) = q.vision.as_ref().unwrap();
        let (enc2, proj2) = load_vision(&r, "vision").unwrap();
        let text2 = QLfm2Model::load(&r, "text").unwrap();
        assert!(
            &enc2 == enc,
            "{label}: encoder differs after the round trip"
        );
        assert!(
            &proj2 == proj,
            "{label}: projector differs after the round trip"
        );
        assert!(
            text2 == q.text,
            "{label}: language model differs after the round trip"
        );

        // Encoder + connector on the quantized sample pixels.
        let x = enc.quantize_pixels(&setup().pixels).unwrap();
        assert_eq!(enc2.quantize_pixels(&setup().pixels).unwrap(), x);
        let map = enc.forward(&x, &mut NoObserver).unwrap();
        let map2 = enc2.forward(&x, &mut NoObserver).unwrap();
        assert_eq!(map2, map, "{label}: encoder output");
        let emb = proj.forward(&map_to_tokens(&map), &mut NoObserver).unwrap();
        let emb2 = proj2
            .forward(&map_to_tokens(&map2), &mut NoObserver)
            .unwrap();
        assert_eq!(emb2, emb, "{label}: connector output");

        // LM logits: a text prompt (prefill + greedy decode), and the prompt with the image rows.
        let ids = chat_ids(0);
        let x = q.text.embed(&ids).unwrap();
        assert_eq!(text2.embed(&ids).unwrap(), x);
        let a = run_lm(&q.text, &x, 3);
        assert_eq!(run_lm(&text2, &x, 3), a, "{label}: text logits");
        let ids = chat_ids(1);
        let x = q.embed_prompt(&ids, &[emb]).unwrap();
        let a = run_lm(&q.text, &x, 0);
        assert_eq!(run_lm(&text2, &x, 0), a, "{label}: image prompt logits");
        println!(
            "{label}: {} prompt tokens, {} vocabulary, bit-identical",
            ids.len(),
            a[0].shape[1]
        );
    }

    #[test]
    fn default_scheme_round_trips_bit_identically() {
        round_trip(default_model(), "default (w8a16 vision, w4a16 text)");
    }

    #[test]
    fn w8a8_round_trips_bit_identically() {
        let q = build(&Scheme::parse("w8a8").unwrap());
        assert_eq!(q.text.embed_params().bits, 8);
        round_trip(&q, "w8a8");
    }

    #[test]
    fn keys_are_written_once() {
        let q = default_model();
        let mut w = save(q);
        let (enc, _) = q.vision.as_ref().unwrap();
        let e = enc.save(&mut w, "vision.encoder").unwrap_err().to_string();
        assert!(e.contains("vision.encoder"), "{e}");
        assert!(q.text.save(&mut w, "text").is_err());
    }

    /// A separate (untied) head and a conv bias, which the default model does not have: a random
    /// tiny LFM2 built by `prepare::lfm2`, saved on its own.
    #[test]
    fn untied_lm_with_conv_bias_round_trips() {
        use crate::models::lfm2::{Lfm2Config, Lfm2Model};
        use crate::quant::calibrate::{CalibrationObserver, RangeMethod, DEFAULT_BINS};
        use crate::quant::scheme::Part;
        let mut cfg = Lfm2Config::from_json(&json!({
            "vocab_size": 97,
            "hidden_size": 32,
            "intermediate_size": 96,
            "num_hidden_layers": 3,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "layer_types": ["conv", "full_attention", "conv"],
            "max_position_embeddings": 40,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
            "block_multiple_of": 16,
            "tie_word_embeddings": false,
            "eos_token_id": 7,
        }))
        .unwrap();
        cfg.conv_bias = true;
        let m = Lfm2Model::random(&cfg, 11).unwrap();
        let ids: Vec<u32> = (0..12u32).map(|i| (i * 31 + 5) % 97).collect();
        let mut obs = CalibrationObserver::new(DEFAULT_BINS).unwrap();
        obs.set_part(Part::Text);
        let h = m
            .forward(m.embed(&ids).unwrap(), &mut m.new_cache(), &mut obs)
            .unwrap();
        m.lm_head(&h, &mut obs);
        let stats = obs.into_stats();
        for scheme in ["text=w4a16", "text=w8a8"] {
            let scheme = Scheme::parse(scheme).unwrap();
            let q = crate::quant::prepare::lfm2::lfm2(&m, &stats, &scheme, RangeMethod::MinMax)
                .unwrap();
            assert!(matches!(q.lm_head, QLmHead::Separate(_)));
            let mut w = ArtifactWriter::new();
            q.save(&mut w, "lm").unwrap();
            let dir = tempfile::tempdir().unwrap();
            w.write(dir.path(), STEM).unwrap();
            let r = ArtifactReader::open(dir.path(), STEM).unwrap();
            assert!(r.shape("lm.lm_head.weight").is_some());
            assert!(r.shape("lm.layers.0.conv.conv.bias").is_some());
            assert_eq!(r.meta["lm.lm_head"]["kind"], "linear");
            let back = QLfm2Model::load(&r, "lm").unwrap();
            assert!(back == q, "untied LM differs after the round trip");
            let x = q.embed(&ids).unwrap();
            assert_eq!(run_lm(&back, &x, 4), run_lm(&q, &x, 4));
        }
    }

    /// Arrays of a safetensors file: name -> (dtype, shape, bytes).
    type Arrays = BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>;

    /// The saved default model, which tests edit into new directories.
    struct Fixture {
        arrays: Arrays,
        meta: Value,
    }

    fn fixture() -> &'static Fixture {
        static F: OnceLock<Fixture> = OnceLock::new();
        F.get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            save(default_model()).write(dir.path(), STEM).unwrap();
            let bytes = std::fs::read(dir.path().join(format!("{STEM}.safetensors"))).unwrap();
            let st = SafeTensors::deserialize(&bytes).unwrap();
            let arrays = st
                .tensors()
                .into_iter()
                .map(|(n, v)| (n, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
                .collect();
            let text = std::fs::read_to_string(dir.path().join(format!("{STEM}.json"))).unwrap();
            Fixture {
                arrays,
                meta: serde_json::from_str(&text).unwrap(),
            }
        })
    }

    impl Fixture {
        fn edited(&self, dir: &Path, edit: impl FnOnce(&mut Arrays, &mut Value)) -> ArtifactReader {
            let (mut arrays, mut meta) = (self.arrays.clone(), self.meta.clone());
            edit(&mut arrays, &mut meta);
            let views: Vec<(String, TensorView)> = arrays
                .iter()
                .map(|(k, (d, s, b))| (k.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
                .collect();
            let bytes = safetensors::serialize(views, None).unwrap();
            std::fs::write(dir.join(format!("{STEM}.safetensors")), bytes).unwrap();
            let text = serde_json::to_string(&meta).unwrap();
            std::fs::write(dir.join(format!("{STEM}.json")), text).unwrap();
            ArtifactReader::open(dir, STEM).unwrap()
        }

        /// The error of loading the vision part (`vision`) or the LM (`text`) after `edit`.
        fn load_err(&self, part: &str, edit: impl FnOnce(&mut Arrays, &mut Value)) -> String {
            let dir = tempfile::tempdir().unwrap();
            let r = self.edited(dir.path(), edit);
            match part {
                "vision" => load_vision(&r, "vision").map(|_| ()),
                "text" => QLfm2Model::load(&r, "text").map(|_| ()),
                _ => unreachable!(),
            }
            .unwrap_err()
            .to_string()
        }
    }

    fn assert_mentions(e: &str, parts: &[&str]) {
        for p in parts {
            assert!(e.contains(p), "error `{e}` should mention `{p}`");
        }
        println!("{e}");
    }

    fn obj<'a>(meta: &'a mut Value, key: &str) -> &'a mut Map<String, Value> {
        meta[key]
            .as_object_mut()
            .unwrap_or_else(|| panic!("no metadata `{key}`"))
    }

    #[test]
    fn unedited_fixture_loads() {
        let dir = tempfile::tempdir().unwrap();
        let r = fixture().edited(dir.path(), |_, _| {});
        let q = default_model();
        assert!(load_vision(&r, "vision").unwrap() == *q.vision.as_ref().unwrap());
        assert!(QLfm2Model::load(&r, "text").unwrap() == q.text);
    }

    #[test]
    fn missing_nested_arrays_and_metadata_name_the_nested_key() {
        let f = fixture();
        // Arrays of nested ops.
        for (part, array) in [
            ("vision", "vision.encoder.blocks.1.0.pw_exp.conv.weight"),
            (
                "vision",
                "vision.encoder.blocks.2.2.attn.key.down_conv.mult_m",
            ),
            ("vision", "vision.encoder.msfa.resize.1.ys"),
            ("vision", "vision.connector.linear_2.bias"),
            ("text", "text.layers.2.self_attn.rope_k.sin_table"),
            ("text", "text.layers.3.conv.conv.group_mult"),
            ("text", "text.lm_head.mult.mult_shift"),
        ] {
            let e = f.load_err(part, |a, _| {
                a.remove(array)
                    .unwrap_or_else(|| panic!("no array `{array}`"));
            });
            assert_mentions(&e, &[array]);
        }
        // A metadata field of a nested op, and a nested op's whole metadata.
        let e = f.load_err("text", |_, m| {
            obj(m, "text.layers.2.self_attn.q_proj").remove("x");
        });
        assert_mentions(&e, &["`text.layers.2.self_attn.q_proj`", "`x`"]);
        let e = f.load_err("vision", |_, m| {
            m["vision.encoder.blocks.2.2.attn.sdpa"]["q"]
                .as_object_mut()
                .unwrap()
                .remove("scale");
        });
        assert_mentions(&e, &["`vision.encoder.blocks.2.2.attn.sdpa`", "`q.scale`"]);
        for (part, key) in [
            ("text", "text.layers.3.conv.bx"),
            ("text", "text.layers.4.feed_forward"),
            ("text", "text.dims"),
            ("vision", "vision.encoder.blocks.0.1.skip"),
            ("vision", "vision.encoder.blocks.3.1.attn.value"),
            ("vision", "vision.encoder.input"),
            ("vision", "vision.connector"),
        ] {
            let e = f.load_err(part, |_, m| {
                m.as_object_mut().unwrap().remove(key).unwrap();
            });
            assert_mentions(&e, &[&format!("`{key}`")]);
        }
    }

    #[test]
    fn model_metadata_is_checked() {
        let f = fixture();
        // Missing, unknown, mistyped fields of the model structs.
        let e = f.load_err("vision", |_, m| {
            obj(m, "vision.encoder").remove("stages");
        });
        assert_mentions(&e, &["`vision.encoder`", "missing metadata field `stages`"]);
        let e = f.load_err("vision", |_, m| {
            obj(m, "vision.encoder.blocks.2.2").insert("extra".into(), json!(1));
        });
        assert_mentions(
            &e,
            &[
                "`vision.encoder.blocks.2.2`",
                "unknown metadata field `extra`",
            ],
        );
        let e = f.load_err("vision", |_, m| {
            m["vision.encoder.msfa"]["resize"] = json!([true]);
        });
        assert_mentions(&e, &["`vision.encoder.msfa`", "`resize`"]);
        let e = f.load_err("text", |_, m| {
            m["text"]["layers"] = json!("six");
        });
        assert_mentions(&e, &["`text`", "`layers`"]);
        let e = f.load_err("text", |_, m| {
            m["text.dims"]["num_key_value_heads"] = json!(3);
        });
        assert_mentions(&e, &["`text.dims`", "`num_key_value_heads`"]);
        // Presence flags: a present member flagged absent, an absent one flagged present.
        let e = f.load_err("vision", |_, m| {
            m["vision.encoder.blocks.1.0"]["dw_start"] = json!(false);
        });
        assert_mentions(
            &e,
            &[
                "`vision.encoder.blocks.1.0.dw_start` is present",
                "`dw_start`",
            ],
        );
        let e = f.load_err("vision", |_, m| {
            m["vision.encoder.blocks.1.2"]["dw_start"] = json!(true);
        });
        assert_mentions(&e, &["`vision.encoder.blocks.1.2.dw_start`"]);
        // Variants: an unknown block kind, a block of another kind, the wrong layer op or head.
        let e = f.load_err("vision", |_, m| {
            m["vision.encoder.blocks.2.2"]["kind"] = json!("transformer");
        });
        assert_mentions(
            &e,
            &[
                "`vision.encoder.blocks.2.2`",
                "`transformer` is not a block kind",
            ],
        );
        let e = f.load_err("vision", |_, m| {
            m["vision.encoder.blocks.2.2"]["kind"] = json!("edge_residual");
        });
        assert_mentions(&e, &["`vision.encoder.blocks.2.2`"]);
        let e = f.load_err("text", |_, m| {
            m["text.layers.0"]["op"] = json!("self_attn");
        });
        assert_mentions(&e, &["`text.layers.0.self_attn`"]);
        let e = f.load_err("text", |_, m| {
            m["text.layers.0"]["op"] = json!("mamba");
        });
        assert_mentions(&e, &["`text.layers.0`", "`op`", "mamba"]);
        let e = f.load_err("text", |_, m| {
            m["text"]["lm_head"] = json!("separate");
        });
        assert_mentions(&e, &["`text.lm_head` is not a `linear`"]);
        // Counts.
        let e = f.load_err("vision", |_, m| {
            m["vision.encoder"]["stages"] = json!([2, 3, 4]);
        });
        assert_mentions(&e, &["`vision.encoder`", "`msfa_taps`"]);
        let e = f.load_err("vision", |_, m| {
            m["vision.encoder"]["stages"] = json!([2, 3, 3, 3]);
        });
        assert_mentions(&e, &["vision.encoder.blocks.3.0"]);
        let e = f.load_err("text", |_, m| {
            m["text"]["layers"] = json!(5);
        });
        assert_mentions(&e, &["`text.embedding_norm`", "`text.layers.4.residual2`"]);
        let e = f.load_err("text", |_, m| {
            m["text"]["layers"] = json!(7);
        });
        assert_mentions(&e, &["`text.layers.6`"]);
        let e = f.load_err("text", |_, m| {
            m["text.dims"]["hidden_size"] = json!(32);
        });
        assert_mentions(&e, &["`text.embed_tokens` width", "32"]);
        let e = f.load_err("text", |_, m| {
            m["text.dims"]["conv_l_cache"] = json!(4);
        });
        assert_mentions(&e, &["`text.layers.0.conv.conv` taps", "conv_l_cache"]);
        let e = f.load_err("text", |_, m| {
            m["text.lm_head"]["vocab"] = json!(511);
        });
        assert_mentions(&e, &["`text.lm_head`", "511"]);
    }

    #[test]
    fn cross_op_inconsistencies_name_both_ends() {
        let f = fixture();
        // An op whose input quantization is not its producer's output.
        let e = f.load_err("text", |_, m| {
            m["text.layers.1.ffn_norm"]["x"]["zero_point"] = json!(5);
        });
        assert_mentions(
            &e,
            &["`text.layers.1.ffn_norm`", "`text.layers.1.residual1`"],
        );
        let e = f.load_err("text", |_, m| {
            m["text.layers.2.self_attn.sdpa"]["k"]["zero_point"] = json!(3);
        });
        assert_mentions(&e, &["`text.layers.2.self_attn.sdpa` input `k`", "rope_k"]);
        let e = f.load_err("text", |_, m| {
            m["text.embedding_norm"]["x"]["scale"] = json!(0.125);
        });
        assert_mentions(&e, &["`text.embedding_norm`", "`text.layers.5.residual2`"]);
        let e = f.load_err("text", |_, m| {
            m["text.lm_head.x"]["scale"] = json!(0.125);
        });
        assert_mentions(&e, &["`text.lm_head.x`", "`text.embedding_norm`"]);
        let e = f.load_err("vision", |_, m| {
            m["vision.encoder.blocks.0.0.bn1"]["x"]["scale"] = json!(0.125);
        });
        assert_mentions(&e, &["`vision.encoder.blocks.0.0.bn1`", "conv_exp"]);
        let e = f.load_err("vision", |_, m| {
            m["vision.encoder.blocks.2.2.attn.output.proj"]["x"]["scale"] = json!(0.125);
        });
        assert_mentions(
            &e,
            &["`vision.encoder.blocks.2.2.attn.output.proj`", "attn.sdpa"],
        );
        let e = f.load_err("vision", |_, m| {
            m["vision.encoder.msfa.concat.part1"]["x"]["scale"] = json!(0.125);
        });
        assert_mentions(
            &e,
            &[
                "`vision.encoder.msfa.concat.part1`",
                "vision.encoder.blocks.3",
            ],
        );
        // Across the encoder -> connector boundary.
        let e = f.load_err("vision", |_, m| {
            m["vision.connector.linear_1"]["x"]["scale"] = json!(0.125);
        });
        assert_mentions(&e, &["`vision.connector.linear_1`", "`vision.encoder`"]);
        // Static shapes: another input size breaks the MSFA geometry.
        let e = f.load_err("vision", |_, m| {
            m["vision.encoder"]["image_size"] = json!(128);
        });
        assert_mentions(&e, &["vision.encoder"]);
        let e = f.load_err("vision", |_, m| {
            m["vision.encoder"]["output_resolution"] = json!(8);
        });
        assert_mentions(&e, &["`vision.encoder.msfa` outputs a 16x16 map"]);
    }
}
