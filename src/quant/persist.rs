//! Saving integer operators to a quantized artifact ([`ArtifactWriter`]) and loading them back
//! ([`ArtifactReader`]) bit-identically, with clear errors for missing or inconsistent tensors.
//!
//! Every op saved under `key` writes
//! - one metadata object `meta[key]` (JSON): `"kind"` (the op type, checked on load) plus its small
//!   scalars: activation quantizations as `{"scale", "zero_point", "bits"}`, single multipliers as
//!   `{"m", "shift"}`, shapes, strides, padding, flags;
//! - its big integer arrays under `"{key}.{field}"` in their natural dtype:
//!   int8 (5..=8-bit) weights `I8 [out, inp]`, int16 (9..=16-bit) weights `I16 [out, inp]`,
//!   int4 (and 2/3-bit) weights PACKED `U8 [out, ceil(inp / 2)]`
//!   (rows packed separately, as [`QMatrix`] holds them), group multipliers `U16 [out, groups]`,
//!   biases `I64 [out]`, multiplier vectors as two `I32 [n]` arrays `{key}.{field}_m` and
//!   `{key}.{field}_shift`, sign flags `U8 [n]` (0/1), tables `I32`.
//!
//! Ops made of ops store the inner ones under sub-keys (`{key}.part{i}` of a concat,
//! `{key}.softmax` of an attention).
//!
//! | op | kind | metadata fields | arrays |
//! |---|---|---|---|
//! | [`ActQuant`] | `act` | `scale, zero_point, bits` | |
//! | [`Multiplier`] | `multiplier` | `m, shift` | |
//! | `Vec<Multiplier>` | `multipliers` | `n` | `mult_m, mult_shift` |
//! | [`QMatrix`] | `matrix` | `weight{out, inp, bits, group}` | `weight, group_mult` |
//! | [`QLinear`] | `linear` | `weight{..}, bias, x, y` | `weight, group_mult, [bias], mult_m, mult_shift` |
//! | [`QConv2d`] | `conv2d` | `c_in, kernel[kh, kw], stride, dilation, pad[t, b, l, r], depthwise, weight{..}, bias, x, y` | as linear |
//! | [`QCausalConv1d`] | `causal_conv1d` | `weight{..}, bias, x, y` | as linear |
//! | [`QEmbedding`] | `embedding` | `table{..}, y` | `table, group_mult, mult_m, mult_shift` |
//! | [`QAdd`] | `add` | `a, b, y, a_mult, b_mult, out_mult` | |
//! | [`QMul`] | `mul` | `a, b, y, mult` | |
//! | [`QChannelScale`] | `channel_scale` | `axis, channels, x, y` | `mult_m, mult_shift, negate` |
//! | [`QRequantize`] | `requantize` | `x, y, mult` | |
//! | [`QAvgPool2d`] | `avg_pool2d` | `kernel[kh, kw], mult, x, y` | |
//! | [`QUpsampleNearest`] | `upsample_nearest` | `h, w, out[oh, ow]` | `ys, xs` (I64) |
//! | [`QConcat`] | `concat` | `parts, y` | sub-ops `part{i}` ([`QRequantize`]) |
//! | [`QLut`] | `lut` | `x, y, seg_bits, frac_bits` | `table` (I32) |
//! | [`QSoftmax`] | `softmax` | `in_mult, out, out_one` | `exp2_table` (I32 [513]) |
//! | [`QRmsNorm`] / [`QRmsNorm2d`] | `rms_norm` / `rms_norm_2d` | `dim, x, y, eps_q64` (decimal string: a u128) | `w_mult_m, w_mult_shift, w_neg` |
//! | [`QRope`] | `rope` | `head_dim, x, y, mult` | `inv_freq_m, inv_freq_e, sin_table` (I32) |
//! | [`QAttention`] | `attention` | `n_heads, n_kv, d, dv, q, k, v, out, mode, out_mult` | sub-op `softmax` |
//!
//! Loading validates everything it reads (array dtypes and shapes against the metadata, bit widths,
//! zero points, multipliers, table sizes), then builds the op through its validating constructor
//! where it has one (the others are checked here against the conditions their builders guarantee
//! and their `forward` relies on), so an inconsistent artifact is an [`Error`] naming the key,
//! never a panic. Missing or unknown metadata fields are errors naming the key and the field.

use crate::error::{Error, Result};
use crate::ops::conv::Pad2d;
use crate::quant::arith::{check_reduction, qmax, qmin, unpack_int4, Multiplier};
use crate::quant::artifact::{ArtifactReader, ArtifactWriter};
use crate::quant::ops::attention::{PvMode, QAttention};
use crate::quant::ops::conv::QConv2d;
use crate::quant::ops::conv1d::QCausalConv1d;
use crate::quant::ops::elementwise::{ChannelAxis, QAdd, QChannelScale, QMul, QRequantize};
use crate::quant::ops::embedding::QEmbedding;
use crate::quant::ops::linear::{centered_abs_max, PackedWeights, QLinear, QMatrix};
use crate::quant::ops::lut::QLut;
use crate::quant::ops::norm::{QRmsNorm, QRmsNorm2d};
use crate::quant::ops::pool::{QAvgPool2d, QConcat, QUpsampleNearest};
use crate::quant::ops::rope::{QRope, SIN_TABLE_BITS, TRIG_ONE_BITS};
use crate::quant::ops::softmax::{QSoftmax, EXP_ONE_BITS, EXP_TABLE_BITS};
use crate::quant::params::ActQuant;
use serde_json::{json, Map, Value};
use std::collections::BTreeSet;
use std::fmt::Display;

/// An object that saves itself into a quantized artifact under a key and loads back identically.
pub trait Persist: Sized {
    fn save(&self, w: &mut ArtifactWriter, key: &str) -> Result<()>;
    fn load(r: &ArtifactReader, key: &str) -> Result<Self>;
}

/// Smallest multiplier shift [`Multiplier::apply`] handles (a right shift of 127 bits).
const MIN_SHIFT: i32 = -96;
/// Largest multiplier shift accepted (anything larger saturates every non-zero product anyway).
const MAX_SHIFT: i32 = 127;

/// An error about the artifact entry `key`.
pub(crate) fn err(key: &str, msg: impl Display) -> Error {
    Error::input(format!("quantized artifact `{key}`: {msg}"))
}

/// Names the key in a constructor's error.
fn ctx<T>(key: &str, r: Result<T>) -> Result<T> {
    r.map_err(|e| err(key, e))
}

/// The array key of `field` under `key`.
pub(crate) fn arr(key: &str, field: &str) -> String {
    format!("{key}.{field}")
}

// ---------------------------------------------------------------------------------------------
// Writing helpers.

/// Stores `fields` (a JSON object) plus `"kind"` as the metadata of `key`.
pub(crate) fn put_meta(w: &mut ArtifactWriter, key: &str, kind: &str, fields: Value) -> Result<()> {
    let Value::Object(mut obj) = fields else {
        return Err(err(key, "metadata must be a JSON object"));
    };
    if w.meta.contains_key(key) {
        return Err(err(key, "metadata written twice"));
    }
    obj.insert("kind".into(), kind.into());
    w.meta.insert(key.to_string(), Value::Object(obj));
    Ok(())
}

fn act_json(q: &ActQuant) -> Value {
    json!({"scale": q.scale, "zero_point": q.zero_point, "bits": q.bits})
}

fn mult_json(m: Multiplier) -> Value {
    json!({"m": m.m, "shift": m.shift})
}

fn put_mults(w: &mut ArtifactWriter, key: &str, field: &str, ms: &[Multiplier]) -> Result<()> {
    let n = [ms.len()];
    let m: Vec<i32> = ms.iter().map(|m| m.m).collect();
    let s: Vec<i32> = ms.iter().map(|m| m.shift).collect();
    w.put_i32(&arr(key, &format!("{field}_m")), &n, &m)?;
    w.put_i32(&arr(key, &format!("{field}_shift")), &n, &s)
}

fn put_flags(w: &mut ArtifactWriter, key: &str, field: &str, flags: &[bool]) -> Result<()> {
    let v: Vec<u8> = flags.iter().map(|&b| b as u8).collect();
    w.put_u8(&arr(key, field), &[v.len()], &v)
}

/// Writes a weight matrix's arrays (`{key}.{field}`, `{key}.group_mult`); returns its metadata.
fn put_matrix(w: &mut ArtifactWriter, key: &str, field: &str, m: &QMatrix) -> Result<Value> {
    let name = arr(key, field);
    match &m.data {
        PackedWeights::I8(v) => w.put_i8(&name, &[m.out, m.inp], v)?,
        PackedWeights::I4(p) => w.put_u8(&name, &[m.out, m.inp.div_ceil(2)], p)?,
        PackedWeights::I16(v) => w.put_i16(&name, &[m.out, m.inp], v)?,
    }
    w.put_u16(
        &arr(key, "group_mult"),
        &[m.out, m.groups_per_row()],
        &m.group_mult,
    )?;
    Ok(json!({"out": m.out, "inp": m.inp, "bits": m.bits, "group": m.group}))
}

fn put_bias(w: &mut ArtifactWriter, key: &str, bias: &Option<Vec<i64>>) -> Result<bool> {
    if let Some(b) = bias {
        w.put_i64(&arr(key, "bias"), &[b.len()], b)?;
    }
    Ok(bias.is_some())
}

// ---------------------------------------------------------------------------------------------
// Reading helpers.

/// A metadata object being read: every field read is recorded, and [`Fields::finish`] rejects
/// the ones nobody read.
struct Fields<'a> {
    key: &'a str,
    /// Dotted path of this object inside the key's metadata (`""` or `"x."`).
    path: String,
    obj: &'a Map<String, Value>,
    used: BTreeSet<&'static str>,
}

impl<'a> Fields<'a> {
    /// The metadata of `key`, which must be a `kind` object.
    fn open(r: &'a ArtifactReader, key: &'a str, kind: &str) -> Result<Self> {
        let obj = r
            .meta(key)?
            .as_object()
            .ok_or_else(|| err(key, "metadata is not a JSON object"))?;
        let mut f = Fields {
            key,
            path: String::new(),
            obj,
            used: BTreeSet::new(),
        };
        let k = f.str("kind")?;
        if k != kind {
            return Err(err(key, format!("is a `{k}`, expected a `{kind}`")));
        }
        Ok(f)
    }

    fn bad(&self, field: &str, msg: impl Display) -> Error {
        err(
            self.key,
            format!("metadata field `{}{field}`: {msg}", self.path),
        )
    }

    fn get(&mut self, field: &'static str) -> Result<&'a Value> {
        self.used.insert(field);
        self.obj.get(field).ok_or_else(|| {
            err(
                self.key,
                format!("missing metadata field `{}{field}`", self.path),
            )
        })
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

    fn i64(&mut self, field: &'static str) -> Result<i64> {
        let v = self.get(field)?;
        v.as_i64()
            .ok_or_else(|| self.bad(field, format!("{v} is not a 64-bit integer")))
    }

    fn int<T: TryFrom<i64>>(&mut self, field: &'static str, what: &str) -> Result<T> {
        let v = self.i64(field)?;
        T::try_from(v).map_err(|_| self.bad(field, format!("{v} is not {what}")))
    }

    fn usize(&mut self, field: &'static str) -> Result<usize> {
        self.int(field, "a size")
    }

    fn u32(&mut self, field: &'static str) -> Result<u32> {
        self.int(field, "a u32")
    }

    fn i32(&mut self, field: &'static str) -> Result<i32> {
        self.int(field, "an i32")
    }

    fn f32(&mut self, field: &'static str) -> Result<f32> {
        let v = self.get(field)?;
        let x = v
            .as_f64()
            .ok_or_else(|| self.bad(field, format!("{v} is not a number")))?;
        Ok(x as f32)
    }

    /// A fixed-length array of sizes.
    fn sizes<const N: usize>(&mut self, field: &'static str) -> Result<[usize; N]> {
        let v = self.get(field)?;
        let bad = || self.bad(field, format!("{v} is not an array of {N} sizes"));
        let a = v.as_array().filter(|a| a.len() == N).ok_or_else(bad)?;
        let mut out = [0usize; N];
        for (o, x) in out.iter_mut().zip(a) {
            *o = x
                .as_u64()
                .and_then(|x| usize::try_from(x).ok())
                .ok_or_else(bad)?;
        }
        Ok(out)
    }

    /// A nested object, read with `f` and then finished.
    fn sub<T>(
        &mut self,
        field: &'static str,
        f: impl FnOnce(&mut Fields<'a>) -> Result<T>,
    ) -> Result<T> {
        let v = self.get(field)?;
        let obj = v
            .as_object()
            .ok_or_else(|| self.bad(field, format!("{v} is not an object")))?;
        let mut s = Fields {
            key: self.key,
            path: format!("{}{field}.", self.path),
            obj,
            used: BTreeSet::new(),
        };
        let t = f(&mut s)?;
        s.finish()?;
        Ok(t)
    }

    /// Fields of an [`ActQuant`] in this object.
    fn act_fields(&mut self) -> Result<ActQuant> {
        let q = ActQuant {
            scale: self.f32("scale")?,
            zero_point: self.i32("zero_point")?,
            bits: self.u32("bits")?,
        };
        if !(q.scale.is_finite() && q.scale > 0.0) {
            return Err(self.bad("scale", format!("{} must be finite and positive", q.scale)));
        }
        // What `check_act` requires of the integer runtime's activations.
        if !(2..=16).contains(&q.bits) {
            return Err(self.bad("bits", format!("bit width {} not in 2..=16", q.bits)));
        }
        let zp = q.zero_point as i64;
        if zp < qmin(q.bits) || zp > qmax(q.bits) {
            return Err(self.bad(
                "zero_point",
                format!("{zp} outside the {}-bit range", q.bits),
            ));
        }
        Ok(q)
    }

    fn act(&mut self, field: &'static str) -> Result<ActQuant> {
        self.sub(field, |s| s.act_fields())
    }

    fn mult_fields(&mut self) -> Result<Multiplier> {
        let m = Multiplier {
            m: self.i32("m")?,
            shift: self.i32("shift")?,
        };
        check_mult(m).map_err(|e| err(self.key, format!("multiplier `{}`: {e}", self.path)))?;
        Ok(m)
    }

    fn mult(&mut self, field: &'static str) -> Result<Multiplier> {
        self.sub(field, |s| s.mult_fields())
    }

    /// Rejects fields nobody read.
    fn finish(self) -> Result<()> {
        match self.obj.keys().find(|k| !self.used.contains(k.as_str())) {
            Some(k) => Err(err(
                self.key,
                format!("unknown metadata field `{}{k}`", self.path),
            )),
            None => Ok(()),
        }
    }
}

/// `m` in `[2^30, 2^31)` (or 0) and a shift [`Multiplier::apply`] handles.
fn check_mult(m: Multiplier) -> std::result::Result<(), String> {
    if m.m != 0 && m.m < 1 << 30 {
        return Err(format!("mantissa {} outside [2^30, 2^31) (or 0)", m.m));
    }
    if !(MIN_SHIFT..=MAX_SHIFT).contains(&m.shift) {
        return Err(format!(
            "shift {} outside [{MIN_SHIFT}, {MAX_SHIFT}]",
            m.shift
        ));
    }
    Ok(())
}

fn get_mults(r: &ArtifactReader, key: &str, field: &str, n: usize) -> Result<Vec<Multiplier>> {
    let (mk, sk) = (
        arr(key, &format!("{field}_m")),
        arr(key, &format!("{field}_shift")),
    );
    let m = r.get_i32(&mk, &[n])?;
    let s = r.get_i32(&sk, &[n])?;
    m.into_iter()
        .zip(s)
        .enumerate()
        .map(|(i, (m, shift))| {
            let mult = Multiplier { m, shift };
            check_mult(mult).map_err(|e| err(key, format!("`{mk}`/`{sk}` [{i}]: {e}")))?;
            Ok(mult)
        })
        .collect()
}

fn get_flags(r: &ArtifactReader, key: &str, field: &str, n: usize) -> Result<Vec<bool>> {
    let name = arr(key, field);
    r.get_u8(&name, &[n])?
        .into_iter()
        .enumerate()
        .map(|(i, v)| match v {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(err(key, format!("`{name}`[{i}] = {v} is not a 0/1 flag"))),
        })
        .collect()
}

/// The bias announced by the metadata flag `bias`; an array without the flag is an error too.
fn get_bias(r: &ArtifactReader, f: &mut Fields, key: &str, n: usize) -> Result<Option<Vec<i64>>> {
    let name = arr(key, "bias");
    if f.bool("bias")? {
        Ok(Some(r.get_i64(&name, &[n])?))
    } else if r.shape(&name).is_some() {
        Err(err(
            key,
            format!("array `{name}` present but the metadata says there is no bias"),
        ))
    } else {
        Ok(None)
    }
}

/// A weight matrix: dimensions from the metadata object `field`, values from `{key}.{field}`
/// (packed U8 `[out, ceil(inp / 2)]` for `bits <= 4`, I8 `[out, inp]` for 5..=8 bits, I16
/// `[out, inp]` for 9..=16 bits), group multipliers from
/// `{key}.group_mult`, validated by [`QMatrix::new`].
fn get_matrix(
    r: &ArtifactReader,
    f: &mut Fields,
    key: &str,
    field: &'static str,
) -> Result<QMatrix> {
    let (out, inp, bits, group) = f.sub(field, |s| {
        let dims = (
            s.usize("out")?,
            s.usize("inp")?,
            s.u32("bits")?,
            s.usize("group")?,
        );
        let (_, inp, bits, group) = dims;
        if !(2..=16).contains(&bits) {
            return Err(s.bad("bits", format!("weight bit width {bits} not in 2..=16")));
        }
        if inp == 0 || group == 0 || group > inp {
            return Err(s.bad(
                "group",
                format!("group {group} for {inp} inputs: need 0 < group <= inp"),
            ));
        }
        Ok(dims)
    })?;
    let name = arr(key, field);
    let q: Vec<i16> = if bits <= 4 {
        let rb = inp.div_ceil(2);
        let packed = r.get_u8(&name, &[out, rb])?;
        let mut q = Vec::with_capacity(packed.len() * 2);
        for (o, row) in packed.chunks_exact(rb).enumerate() {
            if inp % 2 == 1 && row[rb - 1] >> 4 != 0 {
                return Err(err(
                    key,
                    format!("`{name}` row {o}: the padding nibble of an odd-length row is not 0"),
                ));
            }
            q.extend((0..inp).map(|i| unpack_int4(row, i) as i16));
        }
        q
    } else if bits <= 8 {
        r.get_i8(&name, &[out, inp])?
            .into_iter()
            .map(i16::from)
            .collect()
    } else {
        r.get_i16(&name, &[out, inp])?
    };
    let gm = r.get_u16(&arr(key, "group_mult"), &[out, inp.div_ceil(group)])?;
    ctx(key, QMatrix::new(out, inp, bits, group, &q, gm))
}

// ---------------------------------------------------------------------------------------------
// Parameters.

impl Persist for ActQuant {
    fn save(&self, w: &mut ArtifactWriter, key: &str) -> Result<()> {
        put_meta(w, key, "act", act_json(self))
    }

    fn load(r: &ArtifactReader, key: &str) -> Result<Self> {
        let mut f = Fields::open(r, key, "act")?;
        let q = f.act_fields()?;
        f.finish()?;
        Ok(q)
    }
}

impl Persist for Multiplier {
    fn save(&self, w: &mut ArtifactWriter, key: &str) -> Result<()> {
        put_meta(w, key, "multiplier", mult_json(*self))
    }

    fn load(r: &ArtifactReader, key: &str) -> Result<Self> {
        let mut f = Fields::open(r, key, "multiplier")?;
        let m = f.mult_fields()?;
        f.finish()?;
        Ok(m)
    }
}

impl Persist for Vec<Multiplier> {
    fn save(&self, w: &mut ArtifactWriter, key: &str) -> Result<()> {
        put_mults(w, key, "mult", self)?;
        put_meta(w, key, "multipliers", json!({"n": self.len()}))
    }

    fn load(r: &ArtifactReader, key: &str) -> Result<Self> {
        let mut f = Fields::open(r, key, "multipliers")?;
        let n = f.usize("n")?;
        f.finish()?;
        get_mults(r, key, "mult", n)
    }
}

impl Persist for QMatrix {
    fn save(&self, w: &mut ArtifactWriter, key: &str) -> Result<()> {
        let m = put_matrix(w, key, "weight", self)?;
        put_meta(w, key, "matrix", json!({ "weight": m }))
    }

    fn load(r: &ArtifactReader, key: &str) -> Result<Self> {
        let mut f = Fields::open(r, key, "matrix")?;
        let m = get_matrix(r, &mut f, key, "weight")?;
        f.finish()?;
        Ok(m)
    }
}

// ---------------------------------------------------------------------------------------------
// Weighted ops.

impl Persist for QLinear {
    fn save(&self, w: &mut ArtifactWriter, key: &str) -> Result<()> {
        let weight = put_matrix(w, key, "weight", &self.weight)?;
        let bias = put_bias(w, key, &self.bias)?;
        put_mults(w, key, "mult", &self.mult)?;
        let meta = json!({
            "weight": weight, "bias": bias, "x": act_json(&self.x), "y": act_json(&self.y),
        });
        put_meta(w, key, "linear", meta)
    }

    fn load(r: &ArtifactReader, key: &str) -> Result<Self> {
        let mut f = Fields::open(r, key, "linear")?;
        let weight = get_matrix(r, &mut f, key, "weight")?;
        let bias = get_bias(r, &mut f, key, weight.out)?;
        let (x, y) = (f.act("x")?, f.act("y")?);
        f.finish()?;
        let mult = get_mults(r, key, "mult", weight.out)?;
        ctx(key, QLinear::new(weight, bias, mult, x, y))
    }
}

impl Persist for QConv2d {
    fn save(&self, w: &mut ArtifactWriter, key: &str) -> Result<()> {
        let weight = put_matrix(w, key, "weight", &self.weight)?;
        let bias = put_bias(w, key, &self.bias)?;
        put_mults(w, key, "mult", &self.mult)?;
        let p = self.pad;
        let meta = json!({
            "c_in": self.c_in,
            "kernel": [self.kh, self.kw],
            "stride": self.stride,
            "dilation": self.dilation,
            "pad": [p.top, p.bottom, p.left, p.right],
            "depthwise": self.depthwise,
            "weight": weight,
            "bias": bias,
            "x": act_json(&self.x),
            "y": act_json(&self.y),
        });
        put_meta(w, key, "conv2d", meta)
    }

    fn load(r: &ArtifactReader, key: &str) -> Result<Self> {
        let mut f = Fields::open(r, key, "conv2d")?;
        let c_in = f.usize("c_in")?;
        let [kh, kw] = f.sizes("kernel")?;
        let stride = f.usize("stride")?;
        let dilation = f.usize("dilation")?;
        let [top, bottom, left, right] = f.sizes("pad")?;
        let depthwise = f.bool("depthwise")?;
        let weight = get_matrix(r, &mut f, key, "weight")?;
        let bias = get_bias(r, &mut f, key, weight.out)?;
        let (x, y) = (f.act("x")?, f.act("y")?);
        f.finish()?;
        let mult = get_mults(r, key, "mult", weight.out)?;
        let pad = Pad2d {
            top,
            bottom,
            left,
            right,
        };
        ctx(
            key,
            QConv2d::new(
                c_in,
                (kh, kw),
                stride,
                dilation,
                pad,
                depthwise,
                weight,
                bias,
                mult,
                x,
                y,
            ),
        )
    }
}

impl Persist for QCausalConv1d {
    fn save(&self, w: &mut ArtifactWriter, key: &str) -> Result<()> {
        let weight = put_matrix(w, key, "weight", &self.weight)?;
        let bias = put_bias(w, key, &self.bias)?;
        put_mults(w, key, "mult", &self.mult)?;
        let meta = json!({
            "weight": weight, "bias": bias, "x": act_json(&self.x), "y": act_json(&self.y),
        });
        put_meta(w, key, "causal_conv1d", meta)
    }

    fn load(r: &ArtifactReader, key: &str) -> Result<Self> {
        let mut f = Fields::open(r, key, "causal_conv1d")?;
        let weight = get_matrix(r, &mut f, key, "weight")?;
        let bias = get_bias(r, &mut f, key, weight.out)?;
        let (x, y) = (f.act("x")?, f.act("y")?);
        f.finish()?;
        let mult = get_mults(r, key, "mult", weight.out)?;
        ctx(key, QCausalConv1d::new(weight, bias, mult, x, y))
    }
}

impl Persist for QEmbedding {
    fn save(&self, w: &mut ArtifactWriter, key: &str) -> Result<()> {
        let table = put_matrix(w, key, "table", &self.table)?;
        put_mults(w, key, "mult", &self.mult)?;
        put_meta(
            w,
            key,
            "embedding",
            json!({"table": table, "y": act_json(&self.y)}),
        )
    }

    fn load(r: &ArtifactReader, key: &str) -> Result<Self> {
        let mut f = Fields::open(r, key, "embedding")?;
        let table = get_matrix(r, &mut f, key, "table")?;
        let y = f.act("y")?;
        f.finish()?;
        let mult = get_mults(r, key, "mult", table.out)?;
        ctx(key, QEmbedding::new(table, mult, y))
    }
}

// ---------------------------------------------------------------------------------------------
// Elementwise, pooling, concatenation.

impl Persist for QAdd {
    fn save(&self, w: &mut ArtifactWriter, key: &str) -> Result<()> {
        let meta = json!({
            "a": act_json(&self.a),
            "b": act_json(&self.b),
            "y": act_json(&self.y),
            "a_mult": self.a_mult,
            "b_mult": self.b_mult,
            "out_mult": mult_json(self.out_mult),
        });
        put_meta(w, key, "add", meta)
    }

    fn load(r: &ArtifactReader, key: &str) -> Result<Self> {
        let mut f = Fields::open(r, key, "add")?;
        let (a, b, y) = (f.act("a")?, f.act("b")?, f.act("y")?);
        let (a_mult, b_mult) = (f.i64("a_mult")?, f.i64("b_mult")?);
        let out_mult = f.mult("out_mult")?;
        f.finish()?;
        ctx(key, QAdd::new(a, b, y, a_mult, b_mult, out_mult))
    }
}

impl Persist for QMul {
    fn save(&self, w: &mut ArtifactWriter, key: &str) -> Result<()> {
        let meta = json!({
            "a": act_json(&self.a),
            "b": act_json(&self.b),
            "y": act_json(&self.y),
            "mult": mult_json(self.mult),
        });
        put_meta(w, key, "mul", meta)
    }

    fn load(r: &ArtifactReader, key: &str) -> Result<Self> {
        let mut f = Fields::open(r, key, "mul")?;
        let (a, b, y) = (f.act("a")?, f.act("b")?, f.act("y")?);
        let mult = f.mult("mult")?;
        f.finish()?;
        ctx(key, QMul::new(a, b, y, mult))
    }
}

impl Persist for QChannelScale {
    fn save(&self, w: &mut ArtifactWriter, key: &str) -> Result<()> {
        put_mults(w, key, "mult", &self.mult)?;
        put_flags(w, key, "negate", &self.negate)?;
        let axis = match self.axis {
            ChannelAxis::First => "first",
            ChannelAxis::Last => "last",
        };
        let meta = json!({
            "axis": axis,
            "channels": self.mult.len(),
            "x": act_json(&self.x),
            "y": act_json(&self.y),
        });
        put_meta(w, key, "channel_scale", meta)
    }

    fn load(r: &ArtifactReader, key: &str) -> Result<Self> {
        let mut f = Fields::open(r, key, "channel_scale")?;
        let axis = match f.str("axis")? {
            "first" => ChannelAxis::First,
            "last" => ChannelAxis::Last,
            other => return Err(f.bad("axis", format!("`{other}` is not `first` or `last`"))),
        };
        let c = f.usize("channels")?;
        let (x, y) = (f.act("x")?, f.act("y")?);
        f.finish()?;
        let mult = get_mults(r, key, "mult", c)?;
        let negate = get_flags(r, key, "negate", c)?;
        ctx(key, QChannelScale::new(axis, mult, negate, x, y))
    }
}

impl Persist for QRequantize {
    fn save(&self, w: &mut ArtifactWriter, key: &str) -> Result<()> {
        let meta = json!({
            "x": act_json(&self.x), "y": act_json(&self.y), "mult": mult_json(self.mult),
        });
        put_meta(w, key, "requantize", meta)
    }

    fn load(r: &ArtifactReader, key: &str) -> Result<Self> {
        let mut f = Fields::open(r, key, "requantize")?;
        let (x, y, mult) = (f.act("x")?, f.act("y")?, f.mult("mult")?);
        f.finish()?;
        ctx(key, QRequantize::new(x, y, mult))
    }
}

impl Persist for QAvgPool2d {
    fn save(&self, w: &mut ArtifactWriter, key: &str) -> Result<()> {
        let meta = json!({
            "kernel": [self.kh, self.kw],
            "mult": mult_json(self.mult),
            "x": act_json(&self.x),
            "y": act_json(&self.y),
        });
        put_meta(w, key, "avg_pool2d", meta)
    }

    fn load(r: &ArtifactReader, key: &str) -> Result<Self> {
        let mut f = Fields::open(r, key, "avg_pool2d")?;
        let [kh, kw] = f.sizes("kernel")?;
        let (mult, x, y) = (f.mult("mult")?, f.act("x")?, f.act("y")?);
        f.finish()?;
        ctx(key, QAvgPool2d::new(kh, kw, mult, x, y))
    }
}

impl Persist for QUpsampleNearest {
    fn save(&self, w: &mut ArtifactWriter, key: &str) -> Result<()> {
        let idx = |v: &[usize]| v.iter().map(|&i| i as i64).collect::<Vec<_>>();
        w.put_i64(&arr(key, "ys"), &[self.ys.len()], &idx(&self.ys))?;
        w.put_i64(&arr(key, "xs"), &[self.xs.len()], &idx(&self.xs))?;
        let meta = json!({"h": self.h, "w": self.w, "out": [self.ys.len(), self.xs.len()]});
        put_meta(w, key, "upsample_nearest", meta)
    }

    fn load(r: &ArtifactReader, key: &str) -> Result<Self> {
        let mut f = Fields::open(r, key, "upsample_nearest")?;
        let (h, wd) = (f.usize("h")?, f.usize("w")?);
        let [oh, ow] = f.sizes("out")?;
        f.finish()?;
        let idx = |field: &str, n: usize| -> Result<Vec<usize>> {
            let name = arr(key, field);
            r.get_i64(&name, &[n])?
                .into_iter()
                .map(|i| {
                    usize::try_from(i)
                        .map_err(|_| err(key, format!("`{name}` has a negative index {i}")))
                })
                .collect()
        };
        let (ys, xs) = (idx("ys", oh)?, idx("xs", ow)?);
        ctx(key, QUpsampleNearest::new(h, wd, ys, xs))
    }
}

impl Persist for QConcat {
    fn save(&self, w: &mut ArtifactWriter, key: &str) -> Result<()> {
        for (i, p) in self.parts.iter().enumerate() {
            p.save(w, &format!("{key}.part{i}"))?;
        }
        let meta = json!({"parts": self.parts.len(), "y": act_json(&self.y)});
        put_meta(w, key, "concat", meta)
    }

    fn load(r: &ArtifactReader, key: &str) -> Result<Self> {
        let mut f = Fields::open(r, key, "concat")?;
        let n = f.usize("parts")?;
        let y = f.act("y")?;
        f.finish()?;
        let parts = (0..n)
            .map(|i| QRequantize::load(r, &format!("{key}.part{i}")))
            .collect::<Result<Vec<_>>>()?;
        ctx(key, QConcat::new(parts, y))
    }
}

// ---------------------------------------------------------------------------------------------
// Tables: LUT, softmax, norms, RoPE, attention. These ops have no validating constructor, so the
// conditions their builders guarantee (and their `forward` relies on) are checked here.

/// Every value of `table` (array `name`) in `[lo, hi]`.
fn check_range(key: &str, name: &str, table: &[i32], lo: i64, hi: i64) -> Result<()> {
    match table
        .iter()
        .enumerate()
        .find(|(_, &v)| (v as i64) < lo || (v as i64) > hi)
    {
        Some((i, v)) => Err(err(
            key,
            format!("`{name}`[{i}] = {v} outside [{lo}, {hi}]"),
        )),
        None => Ok(()),
    }
}

impl Persist for QLut {
    fn save(&self, w: &mut ArtifactWriter, key: &str) -> Result<()> {
        w.put_i32(&arr(key, "table"), &[self.table.len()], &self.table)?;
        let meta = json!({
            "x": act_json(&self.x),
            "y": act_json(&self.y),
            "seg_bits": self.seg_bits,
            "frac_bits": self.frac_bits,
        });
        put_meta(w, key, "lut", meta)
    }

    fn load(r: &ArtifactReader, key: &str) -> Result<Self> {
        let mut f = Fields::open(r, key, "lut")?;
        let (x, y) = (f.act("x")?, f.act("y")?);
        let seg_bits = f.u32("seg_bits")?;
        let frac_bits = f.u32("frac_bits")?;
        if seg_bits >= x.bits {
            return Err(f.bad(
                "seg_bits",
                format!("{seg_bits} interval bits for a {}-bit input", x.bits),
            ));
        }
        if (seg_bits == 0 && frac_bits != 0) || frac_bits > 32 {
            return Err(f.bad(
                "frac_bits",
                format!("{frac_bits} (0 for a direct table, at most 32)"),
            ));
        }
        f.finish()?;
        let name = arr(key, "table");
        let n = if seg_bits == 0 {
            1usize << x.bits
        } else {
            (1usize << (x.bits - seg_bits)) + 1
        };
        let table = r.get_i32(&name, &[n])?;
        if seg_bits == 0 {
            // A direct table holds output integers.
            check_range(key, &name, &table, qmin(y.bits), qmax(y.bits))?;
        }
        Ok(QLut {
            x,
            y,
            seg_bits,
            frac_bits,
            table,
        })
    }
}

impl Persist for QSoftmax {
    fn save(&self, w: &mut ArtifactWriter, key: &str) -> Result<()> {
        let t = &self.exp2_table;
        w.put_i32(&arr(key, "exp2_table"), &[t.len()], t)?;
        let meta = json!({
            "in_mult": mult_json(self.in_mult),
            "out": act_json(&self.out),
            "out_one": self.out_one,
        });
        put_meta(w, key, "softmax", meta)
    }

    fn load(r: &ArtifactReader, key: &str) -> Result<Self> {
        let mut f = Fields::open(r, key, "softmax")?;
        let in_mult = f.mult("in_mult")?;
        // The range `quant::prepare::softmax` accepts (keeps the exponent arithmetic in i128).
        if !(-88..=40).contains(&in_mult.shift) {
            return Err(f.bad(
                "in_mult.shift",
                format!("{} outside [-88, 40]", in_mult.shift),
            ));
        }
        let out = f.act("out")?;
        let out_one = f.i32("out_one")?;
        if !(1..=1 << 16).contains(&out_one) {
            return Err(f.bad("out_one", format!("{out_one} outside [1, 2^16]")));
        }
        f.finish()?;
        let name = arr(key, "exp2_table");
        let table = r.get_i32(&name, &[(1 << EXP_TABLE_BITS) + 1])?;
        // 2^(-j/512) in Q30: within [2^29, 2^30], exactly 2^30 at 0 (the row maximum).
        let one = 1i64 << EXP_ONE_BITS;
        check_range(key, &name, &table, one / 2, one)?;
        if table[0] as i64 != one {
            return Err(err(key, format!("`{name}`[0] = {} is not 2^30", table[0])));
        }
        Ok(QSoftmax {
            in_mult,
            exp2_table: table,
            out,
            out_one,
        })
    }
}

fn save_norm(n: &QRmsNorm, w: &mut ArtifactWriter, key: &str, kind: &str) -> Result<()> {
    put_mults(w, key, "w_mult", &n.w_mult)?;
    put_flags(w, key, "w_neg", &n.w_neg)?;
    let meta = json!({
        "dim": n.dim,
        "x": act_json(&n.x),
        "y": act_json(&n.y),
        "eps_q64": n.eps_q64.to_string(),
    });
    put_meta(w, key, kind, meta)
}

fn load_norm(r: &ArtifactReader, key: &str, kind: &str) -> Result<QRmsNorm> {
    let mut f = Fields::open(r, key, kind)?;
    let dim = f.usize("dim")?;
    let (x, y) = (f.act("x")?, f.act("y")?);
    let eps = f.str("eps_q64")?;
    let eps_q64: u128 = eps
        .parse()
        .map_err(|_| f.bad("eps_q64", format!("`{eps}` is not an unsigned integer")))?;
    if eps_q64 > 1 << 126 {
        return Err(f.bad("eps_q64", format!("{eps_q64} exceeds 2^126")));
    }
    if dim == 0 {
        return Err(f.bad("dim", "must be positive"));
    }
    // The sum of squares must stay below 2^62 (as `quant::prepare::norm` checks).
    let cm = centered_abs_max(&x) as u128;
    if (dim as u128) * cm * cm >= 1 << 62 {
        return Err(f.bad(
            "dim",
            format!(
                "a sum of {dim} squares of {}-bit values could exceed 2^62",
                x.bits
            ),
        ));
    }
    f.finish()?;
    let w_mult = get_mults(r, key, "w_mult", dim)?;
    if let Some(i) = w_mult
        .iter()
        .position(|m| m.m != 0 && !(-60..=60).contains(&m.shift))
    {
        return Err(err(
            key,
            format!(
                "`{key}.w_mult_shift`[{i}] = {} outside [-60, 60]",
                w_mult[i].shift
            ),
        ));
    }
    let w_neg = get_flags(r, key, "w_neg", dim)?;
    Ok(QRmsNorm {
        dim,
        x,
        y,
        eps_q64,
        w_mult,
        w_neg,
    })
}

impl Persist for QRmsNorm {
    fn save(&self, w: &mut ArtifactWriter, key: &str) -> Result<()> {
        save_norm(self, w, key, "rms_norm")
    }

    fn load(r: &ArtifactReader, key: &str) -> Result<Self> {
        load_norm(r, key, "rms_norm")
    }
}

impl Persist for QRmsNorm2d {
    fn save(&self, w: &mut ArtifactWriter, key: &str) -> Result<()> {
        save_norm(&self.norm, w, key, "rms_norm_2d")
    }

    fn load(r: &ArtifactReader, key: &str) -> Result<Self> {
        Ok(QRmsNorm2d {
            norm: load_norm(r, key, "rms_norm_2d")?,
        })
    }
}

impl Persist for QRope {
    fn save(&self, w: &mut ArtifactWriter, key: &str) -> Result<()> {
        let n = [self.inv_freq_m.len()];
        let m: Vec<i32> = self.inv_freq_m.iter().map(|&m| m as i32).collect();
        w.put_i32(&arr(key, "inv_freq_m"), &n, &m)?;
        w.put_i32(&arr(key, "inv_freq_e"), &n, &self.inv_freq_e)?;
        let t = &self.sin_table;
        w.put_i32(&arr(key, "sin_table"), &[t.len()], t)?;
        let meta = json!({
            "head_dim": self.head_dim,
            "x": act_json(&self.x),
            "y": act_json(&self.y),
            "mult": mult_json(self.mult),
        });
        put_meta(w, key, "rope", meta)
    }

    fn load(r: &ArtifactReader, key: &str) -> Result<Self> {
        let mut f = Fields::open(r, key, "rope")?;
        let head_dim = f.usize("head_dim")?;
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(f.bad("head_dim", format!("{head_dim} must be even and positive")));
        }
        let (x, y, mult) = (f.act("x")?, f.act("y")?, f.mult("mult")?);
        f.finish()?;
        let half = [head_dim / 2];
        let (mn, en) = (arr(key, "inv_freq_m"), arr(key, "inv_freq_e"));
        // Mantissas and exponents of positive normal f32 numbers.
        let m = r.get_i32(&mn, &half)?;
        check_range(key, &mn, &m, 1 << 23, (1 << 24) - 1)?;
        let inv_freq_e = r.get_i32(&en, &half)?;
        check_range(key, &en, &inv_freq_e, -149, 104)?;
        let sn = arr(key, "sin_table");
        let sin_table = r.get_i32(&sn, &[(1 << SIN_TABLE_BITS) + 1])?;
        check_range(key, &sn, &sin_table, 0, 1 << TRIG_ONE_BITS)?;
        // A quarter sine rises by at most 2^30 * (pi / 2) / 1024 < 2^21 per entry; this bound keeps
        // the interpolation product inside i64.
        if let Some(j) = sin_table
            .windows(2)
            .position(|p| !(0..=1 << 22).contains(&(p[1] as i64 - p[0] as i64)))
        {
            return Err(err(
                key,
                format!(
                    "`{sn}` is not a quarter sine: entries {j} and {} differ by {}",
                    j + 1,
                    sin_table[j + 1] as i64 - sin_table[j] as i64
                ),
            ));
        }
        Ok(QRope {
            head_dim,
            x,
            y,
            mult,
            inv_freq_m: m.into_iter().map(|v| v as u32).collect(),
            inv_freq_e,
            sin_table,
        })
    }
}

impl Persist for QAttention {
    fn save(&self, w: &mut ArtifactWriter, key: &str) -> Result<()> {
        self.softmax.save(w, &format!("{key}.softmax"))?;
        let mode = match self.mode {
            PvMode::Probabilities => "probabilities",
            PvMode::Deferred => "deferred",
        };
        let meta = json!({
            "n_heads": self.n_heads,
            "n_kv": self.n_kv,
            "d": self.d,
            "dv": self.dv,
            "q": act_json(&self.q),
            "k": act_json(&self.k),
            "v": act_json(&self.v),
            "out": act_json(&self.out),
            "mode": mode,
            "out_mult": mult_json(self.out_mult),
        });
        put_meta(w, key, "attention", meta)
    }

    fn load(r: &ArtifactReader, key: &str) -> Result<Self> {
        let mut f = Fields::open(r, key, "attention")?;
        let (n_heads, n_kv) = (f.usize("n_heads")?, f.usize("n_kv")?);
        let (d, dv) = (f.usize("d")?, f.usize("dv")?);
        if n_kv == 0 || n_heads == 0 || n_heads % n_kv != 0 || d == 0 || dv == 0 {
            return Err(err(
                key,
                format!(
                    "bad attention shape: {n_heads} heads, {n_kv} kv heads, d {d}, dv {dv} \
                     (heads must be a non-zero multiple of kv heads)"
                ),
            ));
        }
        let (q, k) = (f.act("q")?, f.act("k")?);
        let (v, out) = (f.act("v")?, f.act("out")?);
        let mode = match f.str("mode")? {
            "probabilities" => PvMode::Probabilities,
            "deferred" => PvMode::Deferred,
            other => {
                return Err(f.bad(
                    "mode",
                    format!("`{other}` is not `probabilities` or `deferred`"),
                ))
            }
        };
        let out_mult = f.mult("out_mult")?;
        f.finish()?;
        ctx(
            key,
            check_reduction(
                "attention scores",
                2 * d,
                centered_abs_max(&q),
                centered_abs_max(&k),
                0,
            ),
        )?;
        let softmax = QSoftmax::load(r, &format!("{key}.softmax"))?;
        Ok(QAttention {
            n_heads,
            n_kv,
            d,
            dv,
            q,
            k,
            v,
            out,
            softmax,
            mode,
            out_mult,
        })
    }
}

#[cfg(test)]
#[allow(clippy::float_arithmetic)]
mod tests {
    use super::*;
    use crate::ops::attention::{AttnShape, Mask};
    use crate::ops::conv::Conv2dSpec;
    use crate::quant::ops::linear::testutil::Lcg;
    use crate::quant::params::{Granularity, WeightRange};
    use crate::quant::prepare;
    use crate::quant::prepare::lut::LutFn;
    use crate::quant::tensor::QTensor;
    use crate::tensor::Tensor;
    use safetensors::tensor::TensorView;
    use safetensors::{Dtype, SafeTensors};
    use std::collections::BTreeMap;
    use std::fmt::Debug;
    use std::path::Path;

    const STEM: &str = "quantized";

    /// Asymmetric 8-bit or symmetric 16-bit activations over `[lo, hi]`.
    fn aq(lo: f32, hi: f32, bits: u32) -> ActQuant {
        ActQuant::from_range(lo, hi, bits, bits == 16)
    }

    fn input(rng: &mut Lcg, shape: &[usize], q: ActQuant) -> QTensor {
        let n = shape.iter().product();
        QTensor::new(shape, rng.ints(n, &q), q)
    }

    fn gauss(rng: &mut Lcg, n: usize, s: f32) -> Vec<f32> {
        (0..n).map(|_| rng.gauss() * s).collect()
    }

    /// Loads `key` and checks it equals `op`.
    fn back<T: Persist + PartialEq + Debug>(r: &ArtifactReader, key: &str, op: &T) -> T {
        let b = T::load(r, key).unwrap_or_else(|e| panic!("loading `{key}`: {e}"));
        assert_eq!(&b, op, "`{key}` round trip");
        b
    }

    #[test]
    fn every_op_round_trips_bit_identically() {
        let mut rng = Lcg::new(42);
        let (x8, x16) = (aq(-0.7, 2.3, 8), aq(-3.0, 3.0, 16));
        let (y8, y16) = (aq(-5.0, 4.0, 8), aq(-6.0, 6.0, 16));
        let mm = WeightRange::MinMax;

        // Weighted ops: int16 / int12 / int8 / int4 / int3, per channel / per group, odd widths, with and without
        // bias.
        let lin8 = {
            let (w, b) = (gauss(&mut rng, 6 * 20, 0.3), gauss(&mut rng, 6, 0.5));
            let g = Granularity::PerChannel;
            prepare::linear::linear(&w, Some(&b), 6, 20, 8, g, mm, x8, y16).unwrap()
        };
        let lin4 = {
            let w = gauss(&mut rng, 5 * 37, 0.3);
            let g = Granularity::PerGroup(8);
            let r = WeightRange::Mse;
            prepare::linear::linear(&w, None, 5, 37, 4, g, r, x16, y8).unwrap()
        };
        let lin3 = {
            let (w, b) = (gauss(&mut rng, 4 * 9, 0.3), gauss(&mut rng, 4, 0.5));
            let g = Granularity::PerChannel;
            prepare::linear::linear(&w, Some(&b), 4, 9, 3, g, mm, x16, y16).unwrap()
        };
        // 16-bit (and 12-bit) weights are stored one I16 per value.
        let lin16 = {
            let (w, b) = (gauss(&mut rng, 7 * 19, 0.3), gauss(&mut rng, 7, 0.5));
            let g = Granularity::PerChannel;
            prepare::linear::linear(&w, Some(&b), 7, 19, 16, g, mm, x16, y16).unwrap()
        };
        let lin12 = {
            let w = gauss(&mut rng, 3 * 11, 0.3);
            let g = Granularity::PerGroup(4);
            prepare::linear::linear(&w, None, 3, 11, 12, g, mm, x8, y8).unwrap()
        };
        assert!(matches!(lin4.weight.data, PackedWeights::I4(_)));
        assert!(matches!(lin3.weight.data, PackedWeights::I4(_)));
        assert!(matches!(lin8.weight.data, PackedWeights::I8(_)));
        assert!(matches!(lin16.weight.data, PackedWeights::I16(_)));
        assert!(matches!(lin12.weight.data, PackedWeights::I16(_)));
        assert!(lin16.weight.values().iter().any(|v| v.abs() > 127));
        let conv = {
            let w = Tensor::new(&[4, 3, 3, 3], gauss(&mut rng, 4 * 27, 0.2)).unwrap();
            let b = gauss(&mut rng, 4, 0.3);
            let pad = Pad2d {
                top: 1,
                bottom: 0,
                left: 2,
                right: 1,
            };
            let spec = Conv2dSpec::new(2, 1, 1, pad);
            let g = Granularity::PerGroup(9);
            prepare::conv::conv2d(&w, Some(&b), spec, 4, g, mm, x8, y16).unwrap()
        };
        let dw = {
            let w = Tensor::new(&[3, 1, 3, 3], gauss(&mut rng, 27, 0.2)).unwrap();
            let pad = Pad2d {
                top: 2,
                bottom: 2,
                left: 2,
                right: 2,
            };
            let spec = Conv2dSpec::new(1, 2, 3, pad);
            let g = Granularity::PerChannel;
            prepare::conv::conv2d(&w, None, spec, 8, g, mm, x16, y8).unwrap()
        };
        assert!(dw.depthwise);
        let cconv = {
            let (w, b) = (gauss(&mut rng, 6 * 3, 0.4), gauss(&mut rng, 6, 0.2));
            let g = Granularity::PerChannel;
            prepare::conv1d::causal_conv1d(&w, Some(&b), 6, 3, 8, g, mm, x16, y16).unwrap()
        };
        let emb = {
            let t = gauss(&mut rng, 11 * 7, 1.0);
            prepare::embedding::embedding(&t, 11, 7, 4, Granularity::PerChannel, mm, y16).unwrap()
        };

        // Elementwise, pooling, concatenation.
        let add = prepare::elementwise::add(x8, x16, y16).unwrap();
        let mul = prepare::elementwise::mul(x16, x8, y8).unwrap();
        let cs_last = {
            let gamma = [0.5, -1.25, 0.0, 2.0, 1e-3];
            prepare::elementwise::channel_scale(&gamma, ChannelAxis::Last, x16, y16).unwrap()
        };
        let cs_first = {
            let gamma = [-0.3, 0.7, 1.1];
            prepare::elementwise::channel_scale(&gamma, ChannelAxis::First, x8, y8).unwrap()
        };
        let req = prepare::elementwise::requantize(x16, y8).unwrap();
        let pool = prepare::pool::avg_pool2d(2, 3, x8, y8).unwrap();
        let up = prepare::pool::upsample_nearest(3, 4, 7, 9).unwrap();
        let cat = prepare::pool::concat_channels(&[x8, x16, y16], y16).unwrap();

        // Tables.
        let lut8 = prepare::lut::lut(LutFn::GeluTanh, x8, y8).unwrap();
        let lut16 = prepare::lut::lut(LutFn::Silu, x16, y16).unwrap();
        assert_eq!(lut8.seg_bits, 0);
        assert!(lut16.seg_bits > 0);
        let sm16 = prepare::softmax::softmax(0.01, 16).unwrap();
        let sm8 = prepare::softmax::softmax(0.02, 8).unwrap();
        let norm = {
            let w: Vec<f32> = (0..12)
                .map(|i| rng.uniform(-2.0, 2.0) + i as f32 * 0.1)
                .collect();
            prepare::norm::rms_norm(&w, 1e-6, x16, y16).unwrap()
        };
        let norm2d = {
            let w = [0.9, -1.1, 0.4, 2.0];
            prepare::norm::rms_norm_2d(&w, 1e-5, x8, y16).unwrap()
        };
        let rope = prepare::rope::rope(16, 1e4, x16, y16).unwrap();
        let shape = AttnShape {
            n_heads: 4,
            n_kv: 2,
            d: 8,
            dv: 6,
        };
        let (qa, ka, va) = (aq(-2.0, 2.0, 16), aq(-3.0, 3.0, 16), aq(-1.0, 1.5, 8));
        let scale = 8f32.powf(-0.5);
        let attn = prepare::attention::attention(shape, scale, qa, ka, va, y16).unwrap();
        let attn8 =
            prepare::attention::attention_with_p_bits(shape, scale, qa, ka, va, y8, 8).unwrap();

        // Parameters.
        let mults = lin8.mult.clone();
        let one = Multiplier::ONE;

        let mut w = ArtifactWriter::new();
        lin8.save(&mut w, "lin8").unwrap();
        lin4.save(&mut w, "lin4").unwrap();
        lin3.save(&mut w, "lin3").unwrap();
        lin16.save(&mut w, "lin16").unwrap();
        lin12.save(&mut w, "lin12").unwrap();
        conv.save(&mut w, "conv").unwrap();
        dw.save(&mut w, "dw").unwrap();
        cconv.save(&mut w, "cconv").unwrap();
        emb.save(&mut w, "emb").unwrap();
        add.save(&mut w, "add").unwrap();
        mul.save(&mut w, "mul").unwrap();
        cs_last.save(&mut w, "cs_last").unwrap();
        cs_first.save(&mut w, "cs_first").unwrap();
        req.save(&mut w, "req").unwrap();
        pool.save(&mut w, "pool").unwrap();
        up.save(&mut w, "up").unwrap();
        cat.save(&mut w, "cat").unwrap();
        lut8.save(&mut w, "lut8").unwrap();
        lut16.save(&mut w, "lut16").unwrap();
        sm16.save(&mut w, "sm16").unwrap();
        sm8.save(&mut w, "sm8").unwrap();
        norm.save(&mut w, "norm").unwrap();
        norm2d.save(&mut w, "norm2d").unwrap();
        rope.save(&mut w, "rope").unwrap();
        attn.save(&mut w, "attn").unwrap();
        attn8.save(&mut w, "attn8").unwrap();
        x8.save(&mut w, "act").unwrap();
        one.save(&mut w, "one").unwrap();
        mults.save(&mut w, "mults").unwrap();
        lin4.weight.save(&mut w, "matrix").unwrap();
        // A key can only be written once.
        assert!(lin8.save(&mut w, "lin8").is_err());
        assert!(add.save(&mut w, "add").is_err());

        let dir = tempfile::tempdir().unwrap();
        w.write(dir.path(), STEM).unwrap();
        let r = ArtifactReader::open(dir.path(), STEM).unwrap();
        // Array dtypes: I8 up to 8 bits, packed U8 up to 4, I16 above 8.
        assert_eq!(
            r.get_i16("lin16.weight", &[7, 19]).unwrap(),
            lin16.weight.values()
        );
        assert!(r.get_i8("lin16.weight", &[7, 19]).is_err());
        assert!(r.get_i8("lin8.weight", &[6, 20]).is_ok());

        for (key, op) in [
            ("lin8", &lin8),
            ("lin4", &lin4),
            ("lin3", &lin3),
            ("lin16", &lin16),
            ("lin12", &lin12),
        ] {
            let b = back(&r, key, op);
            let x = input(&mut rng, &[3, op.in_features()], op.x);
            assert_eq!(b.forward(&x), op.forward(&x), "{key}");
        }
        for (key, op, hw) in [("conv", &conv, (7, 8)), ("dw", &dw, (6, 5))] {
            let b = back(&r, key, op);
            let x = input(&mut rng, &[op.c_in, hw.0, hw.1], op.x);
            assert_eq!(b.forward(&x), op.forward(&x), "{key}");
        }
        let b = back(&r, "cconv", &cconv);
        let x = input(&mut rng, &[4, 6], cconv.x);
        let (mut s1, mut s2) = (Vec::new(), Vec::new());
        assert_eq!(b.forward(&x, &mut s1), cconv.forward(&x, &mut s2));
        assert_eq!(s1, s2);
        let b = back(&r, "emb", &emb);
        let ids = [0u32, 10, 3, 3, 7];
        assert_eq!(b.forward(&ids).unwrap(), emb.forward(&ids).unwrap());

        let b = back(&r, "add", &add);
        let (xa, xb) = (input(&mut rng, &[5, 4], x8), input(&mut rng, &[5, 4], x16));
        assert_eq!(b.forward(&xa, &xb), add.forward(&xa, &xb));
        let b = back(&r, "mul", &mul);
        let (xa, xb) = (input(&mut rng, &[5, 4], x16), input(&mut rng, &[5, 4], x8));
        assert_eq!(b.forward(&xa, &xb), mul.forward(&xa, &xb));
        let b = back(&r, "cs_last", &cs_last);
        let x = input(&mut rng, &[3, 5], x16);
        assert_eq!(b.forward(&x), cs_last.forward(&x));
        let b = back(&r, "cs_first", &cs_first);
        let x = input(&mut rng, &[3, 2, 4], x8);
        assert_eq!(b.forward(&x), cs_first.forward(&x));
        let b = back(&r, "req", &req);
        let x = input(&mut rng, &[17], x16);
        assert_eq!(b.forward(&x), req.forward(&x));
        let b = back(&r, "pool", &pool);
        let x = input(&mut rng, &[2, 4, 7], x8);
        assert_eq!(b.forward(&x), pool.forward(&x));
        let b = back(&r, "up", &up);
        let x = input(&mut rng, &[2, 3, 4], x8);
        assert_eq!(b.forward(&x), up.forward(&x));
        let b = back(&r, "cat", &cat);
        let xs: Vec<QTensor> = [x8, x16, y16]
            .iter()
            .enumerate()
            .map(|(i, &q)| input(&mut rng, &[i + 1, 2, 3], q))
            .collect();
        let refs: Vec<&QTensor> = xs.iter().collect();
        assert_eq!(b.forward(&refs), cat.forward(&refs));

        for (key, op) in [("lut8", &lut8), ("lut16", &lut16)] {
            let b = back(&r, key, op);
            let x = input(&mut rng, &[64], op.x);
            assert_eq!(b.forward(&x), op.forward(&x), "{key}");
        }
        for (key, op) in [("sm16", &sm16), ("sm8", &sm8)] {
            let b = back(&r, key, op);
            let x = input(&mut rng, &[2, 3, 5], x16);
            let mask = Mask::Causal { offset: 1 };
            assert_eq!(b.forward(&x, mask), op.forward(&x, mask), "{key}");
        }
        let b = back(&r, "norm", &norm);
        let x = input(&mut rng, &[3, 12], x16);
        assert_eq!(b.forward(&x), norm.forward(&x));
        let b = back(&r, "norm2d", &norm2d);
        let x = input(&mut rng, &[4, 3, 2], x8);
        assert_eq!(b.forward(&x), norm2d.forward(&x));
        let b = back(&r, "rope", &rope);
        let x = input(&mut rng, &[3, 32], x16);
        assert_eq!(b.forward(&x, 2, 12345), rope.forward(&x, 2, 12345));
        for (key, op) in [("attn", &attn), ("attn8", &attn8)] {
            let b = back(&r, key, op);
            let q = input(&mut rng, &[3, 4 * 8], qa);
            let k = input(&mut rng, &[5, 2 * 8], ka);
            let v = input(&mut rng, &[5, 2 * 6], va);
            let mask = Mask::Causal { offset: 2 };
            assert_eq!(b.forward(&q, &k, &v, mask), op.forward(&q, &k, &v, mask));
        }

        back(&r, "act", &x8);
        back(&r, "one", &one);
        back(&r, "mults", &mults);
        back(&r, "matrix", &lin4.weight);
        // Scales survive JSON bit for bit.
        assert_eq!(
            ActQuant::load(&r, "act").unwrap().scale.to_bits(),
            x8.scale.to_bits()
        );
    }

    /// Arrays of a safetensors file: name -> (dtype, shape, bytes).
    type Arrays = BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>;

    /// A saved artifact whose arrays and metadata tests can edit into a new directory.
    struct Fixture {
        arrays: Arrays,
        meta: Value,
    }

    impl Fixture {
        fn new(save: impl FnOnce(&mut ArtifactWriter)) -> Self {
            let mut w = ArtifactWriter::new();
            save(&mut w);
            let dir = tempfile::tempdir().unwrap();
            w.write(dir.path(), STEM).unwrap();
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
        }

        /// Writes an edited copy into `dir` and opens it.
        fn edited(&self, dir: &Path, edit: impl FnOnce(&mut Arrays, &mut Value)) -> ArtifactReader {
            let (mut arrays, mut meta) = (self.arrays.clone(), self.meta.clone());
            edit(&mut arrays, &mut meta);
            let views: Vec<(String, TensorView)> = arrays
                .iter()
                .map(|(k, (d, s, b))| (k.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
                .collect();
            let bytes = safetensors::serialize(views, None).unwrap();
            std::fs::write(dir.join(format!("{STEM}.safetensors")), bytes).unwrap();
            std::fs::write(
                dir.join(format!("{STEM}.json")),
                serde_json::to_string(&meta).unwrap(),
            )
            .unwrap();
            ArtifactReader::open(dir, STEM).unwrap()
        }

        /// The error of loading `key` as a `T` after `edit`.
        fn load_err<T: Persist + Debug>(
            &self,
            key: &str,
            edit: impl FnOnce(&mut Arrays, &mut Value),
        ) -> String {
            let dir = tempfile::tempdir().unwrap();
            let r = self.edited(dir.path(), edit);
            T::load(&r, key).unwrap_err().to_string()
        }
    }

    fn assert_mentions(e: &str, parts: &[&str]) {
        for p in parts {
            assert!(e.contains(p), "error `{e}` should mention `{p}`");
        }
        println!("{e}");
    }

    fn test_ops() -> (QLinear, QLinear, QRmsNorm, QLut) {
        let mut rng = Lcg::new(5);
        let (x8, y16) = (aq(-1.0, 2.0, 8), aq(-4.0, 4.0, 16));
        let mm = WeightRange::MinMax;
        let g = Granularity::PerChannel;
        let (w, b) = (gauss(&mut rng, 6 * 20, 0.3), gauss(&mut rng, 6, 0.5));
        let lin8 = prepare::linear::linear(&w, Some(&b), 6, 20, 8, g, mm, x8, y16).unwrap();
        let w = gauss(&mut rng, 4 * 7, 0.3);
        let lin4 = prepare::linear::linear(&w, None, 4, 7, 4, g, mm, y16, x8).unwrap();
        let norm = prepare::norm::rms_norm(&[1.0, -0.5, 2.0], 1e-6, y16, y16).unwrap();
        let lut = prepare::lut::lut(LutFn::Sigmoid, x8, x8).unwrap();
        (lin8, lin4, norm, lut)
    }

    fn fixture() -> Fixture {
        let (lin8, lin4, norm, lut) = test_ops();
        Fixture::new(|w| {
            lin8.save(w, "lin8").unwrap();
            lin4.save(w, "lin4").unwrap();
            norm.save(w, "norm").unwrap();
            lut.save(w, "lut").unwrap();
        })
    }

    #[test]
    fn unedited_fixture_loads() {
        let (lin8, lin4, norm, lut) = test_ops();
        let f = fixture();
        let dir = tempfile::tempdir().unwrap();
        let r = f.edited(dir.path(), |_, _| {});
        back(&r, "lin8", &lin8);
        back(&r, "lin4", &lin4);
        back(&r, "norm", &norm);
        back(&r, "lut", &lut);
    }

    #[test]
    fn missing_and_misshapen_arrays_are_errors_naming_them() {
        let f = fixture();
        // A missing array.
        let e = f.load_err::<QLinear>("lin8", |a, _| {
            a.remove("lin8.mult_shift");
        });
        assert_mentions(&e, &["lin8.mult_shift"]);
        let e = f.load_err::<QLinear>("lin8", |a, _| {
            a.remove("lin8.bias");
        });
        assert_mentions(&e, &["lin8.bias"]);
        // Wrong shapes: the weight flattened, one multiplier too few.
        let e = f.load_err::<QLinear>("lin8", |a, _| {
            a.get_mut("lin8.weight").unwrap().1 = vec![120];
        });
        assert_mentions(&e, &["lin8.weight", "[120]", "[6, 20]"]);
        let e = f.load_err::<QLinear>("lin8", |a, _| {
            let m = a.get_mut("lin8.mult_m").unwrap();
            m.1 = vec![5];
            m.2.truncate(20);
        });
        assert_mentions(&e, &["lin8.mult_m"]);
        // The packed int4 length must be rows * ceil(inp / 2).
        let e = f.load_err::<QLinear>("lin4", |a, _| {
            let m = a.get_mut("lin4.weight").unwrap();
            m.1 = vec![4, 3];
            m.2.truncate(12);
        });
        assert_mentions(&e, &["lin4.weight", "[4, 4]"]);
        // Wrong dtypes.
        let e = f.load_err::<QLinear>("lin8", |a, _| {
            a.get_mut("lin8.weight").unwrap().0 = Dtype::U8;
        });
        assert_mentions(&e, &["lin8.weight", "expected I8"]);
        let e = f.load_err::<QRmsNorm>("norm", |a, _| {
            a.get_mut("norm.w_neg").unwrap().0 = Dtype::I8;
        });
        assert_mentions(&e, &["norm.w_neg", "expected U8"]);
        // A table of the wrong length.
        let e = f.load_err::<QLut>("lut", |a, _| {
            let t = a.get_mut("lut.table").unwrap();
            t.1 = vec![255];
            t.2.truncate(255 * 4);
        });
        assert_mentions(&e, &["lut.table", "[256]"]);
        // A bias array the metadata does not announce.
        let e = f.load_err::<QLinear>("lin8", |_, m| {
            m["lin8"]["bias"] = json!(false);
        });
        assert_mentions(&e, &["lin8.bias", "no bias"]);
    }

    #[test]
    fn missing_unknown_and_bad_metadata_are_errors_naming_key_and_field() {
        let f = fixture();
        let e = f.load_err::<QLinear>("lin8", |_, m| {
            m["lin8"]["x"].as_object_mut().unwrap().remove("scale");
        });
        assert_mentions(&e, &["`lin8`", "missing metadata field `x.scale`"]);
        let e = f.load_err::<QLinear>("lin8", |_, m| {
            m["lin8"].as_object_mut().unwrap().remove("weight");
        });
        assert_mentions(&e, &["`lin8`", "`weight`"]);
        let e = f.load_err::<QRmsNorm>("norm", |_, m| {
            m["norm"].as_object_mut().unwrap().remove("eps_q64");
        });
        assert_mentions(&e, &["`norm`", "`eps_q64`"]);
        let e = f.load_err::<QLinear>("lin8", |_, m| {
            m["lin8"]["extra"] = json!(1);
        });
        assert_mentions(&e, &["`lin8`", "unknown metadata field `extra`"]);
        let e = f.load_err::<QLinear>("lin8", |_, m| {
            m["lin8"]["weight"]["padding"] = json!(0);
        });
        assert_mentions(&e, &["`lin8`", "unknown metadata field `weight.padding`"]);
        // Missing metadata for the whole op.
        let e = f.load_err::<QLinear>("lin8", |_, m| {
            m.as_object_mut().unwrap().remove("lin8");
        });
        assert_mentions(&e, &["`lin8`"]);
        // The wrong op kind.
        let e = f.load_err::<QConv2d>("lin8", |_, _| {});
        assert_mentions(&e, &["`lin8`", "is a `linear`, expected a `conv2d`"]);
        // Values out of range.
        let e = f.load_err::<QLinear>("lin8", |_, m| {
            m["lin8"]["weight"]["bits"] = json!(17);
        });
        assert_mentions(&e, &["`lin8`", "`weight.bits`", "17"]);
        let e = f.load_err::<QLinear>("lin8", |_, m| {
            m["lin8"]["x"]["zero_point"] = json!(300);
        });
        assert_mentions(&e, &["`lin8`", "`x.zero_point`", "300"]);
        let e = f.load_err::<QLinear>("lin8", |_, m| {
            m["lin8"]["y"]["scale"] = json!(-1.0);
        });
        assert_mentions(&e, &["`lin8`", "`y.scale`"]);
        let e = f.load_err::<QLinear>("lin8", |_, m| {
            m["lin8"]["x"]["bits"] = json!("eight");
        });
        assert_mentions(&e, &["`lin8`", "`x.bits`"]);
        let e = f.load_err::<QRmsNorm>("norm", |_, m| {
            m["norm"]["eps_q64"] = json!("-3");
        });
        assert_mentions(&e, &["`norm`", "`eps_q64`"]);
        let e = f.load_err::<QLut>("lut", |_, m| {
            m["lut"]["seg_bits"] = json!(8);
        });
        assert_mentions(&e, &["`lut`", "`seg_bits`"]);
        // Metadata inconsistent with the arrays: 4-bit weights are packed U8.
        let e = f.load_err::<QLinear>("lin8", |_, m| {
            m["lin8"]["weight"]["bits"] = json!(4);
        });
        assert_mentions(&e, &["lin8.weight", "expected U8"]);
        // 9..=16-bit weights are I16 arrays.
        let e = f.load_err::<QLinear>("lin8", |_, m| {
            m["lin8"]["weight"]["bits"] = json!(9);
        });
        assert_mentions(&e, &["lin8.weight", "expected I16"]);
        let e = f.load_err::<QLinear>("lin8", |_, m| {
            m["lin8"]["weight"]["out"] = json!(7);
        });
        assert_mentions(&e, &["lin8.weight", "[7, 20]"]);
        let e = f.load_err::<QLinear>("lin8", |_, m| {
            m["lin8"]["weight"]["group"] = json!(0);
        });
        assert_mentions(&e, &["`lin8`", "`weight.group`"]);
    }

    #[test]
    fn inconsistent_values_are_errors_not_panics() {
        let f = fixture();
        // A group multiplier above 2^8 (rejected by QMatrix::new).
        let e = f.load_err::<QLinear>("lin8", |a, _| {
            a.get_mut("lin8.group_mult").unwrap().2[..2].copy_from_slice(&300u16.to_le_bytes());
        });
        assert_mentions(&e, &["`lin8`", "group multiplier 300"]);
        // An int8 weight of -128 (outside the symmetric range).
        let e = f.load_err::<QLinear>("lin8", |a, _| {
            a.get_mut("lin8.weight").unwrap().2[3] = 0x80;
        });
        assert_mentions(&e, &["`lin8`", "-128"]);
        // An int4 nibble of -8, and a non-zero padding nibble of an odd row.
        let e = f.load_err::<QLinear>("lin4", |a, _| {
            a.get_mut("lin4.weight").unwrap().2[0] = 0x08;
        });
        assert_mentions(&e, &["`lin4`", "-8"]);
        let e = f.load_err::<QLinear>("lin4", |a, _| {
            a.get_mut("lin4.weight").unwrap().2[3] |= 0x10;
        });
        assert_mentions(&e, &["lin4.weight", "padding nibble"]);
        // A multiplier that is not normalised, and one with an absurd shift.
        let e = f.load_err::<QLinear>("lin8", |a, _| {
            a.get_mut("lin8.mult_m").unwrap().2[..4].copy_from_slice(&5i32.to_le_bytes());
        });
        assert_mentions(&e, &["`lin8`", "lin8.mult_m", "[0]", "mantissa 5"]);
        let e = f.load_err::<QLinear>("lin8", |a, _| {
            let s = &mut a.get_mut("lin8.mult_shift").unwrap().2;
            s[4..8].copy_from_slice(&i32::MIN.to_le_bytes());
        });
        assert_mentions(&e, &["`lin8`", "[1]", "shift"]);
        // A bias so large no accumulator bound can be proven (QLinear::new).
        let e = f.load_err::<QLinear>("lin8", |a, _| {
            a.get_mut("lin8.bias").unwrap().2[..8].copy_from_slice(&i64::MAX.to_le_bytes());
        });
        assert_mentions(&e, &["`lin8`", "overflow"]);
        // Flags that are not 0/1, table entries out of range.
        let e = f.load_err::<QRmsNorm>("norm", |a, _| {
            a.get_mut("norm.w_neg").unwrap().2[1] = 2;
        });
        assert_mentions(&e, &["`norm`", "norm.w_neg", "[1]"]);
        let e = f.load_err::<QLut>("lut", |a, _| {
            a.get_mut("lut.table").unwrap().2[..4].copy_from_slice(&1000i32.to_le_bytes());
        });
        assert_mentions(&e, &["`lut`", "lut.table", "1000"]);
    }

    #[test]
    fn nested_ops_and_tables_are_checked() {
        let q = aq(-2.0, 2.0, 16);
        let shape = AttnShape {
            n_heads: 2,
            n_kv: 1,
            d: 4,
            dv: 4,
        };
        let attn = prepare::attention::attention(shape, 0.5, q, q, q, q).unwrap();
        let cat = prepare::pool::concat_channels(&[q, aq(-1.0, 1.0, 8)], q).unwrap();
        let rope = prepare::rope::rope(8, 1e4, q, q).unwrap();
        let sm = prepare::softmax::softmax(0.1, 16).unwrap();
        let f = Fixture::new(|w| {
            attn.save(w, "attn").unwrap();
            cat.save(w, "cat").unwrap();
            rope.save(w, "rope").unwrap();
            sm.save(w, "sm").unwrap();
        });
        let dir = tempfile::tempdir().unwrap();
        let r = f.edited(dir.path(), |_, _| {});
        back(&r, "attn", &attn);
        back(&r, "cat", &cat);
        back(&r, "rope", &rope);
        back(&r, "sm", &sm);
        // Sub-ops live under their own keys.
        let e = f.load_err::<QAttention>("attn", |_, m| {
            m.as_object_mut().unwrap().remove("attn.softmax");
        });
        assert_mentions(&e, &["attn.softmax"]);
        let e = f.load_err::<QAttention>("attn", |a, _| {
            a.remove("attn.softmax.exp2_table");
        });
        assert_mentions(&e, &["attn.softmax.exp2_table"]);
        let e = f.load_err::<QAttention>("attn", |_, m| {
            m["attn"]["n_kv"] = json!(3);
        });
        assert_mentions(&e, &["`attn`", "kv heads"]);
        let e = f.load_err::<QAttention>("attn", |_, m| {
            m["attn"]["mode"] = json!("fast");
        });
        assert_mentions(&e, &["`attn`", "`mode`", "fast"]);
        let e = f.load_err::<QConcat>("cat", |_, m| {
            m.as_object_mut().unwrap().remove("cat.part1");
        });
        assert_mentions(&e, &["cat.part1"]);
        // A part requantizing to another output than the concat's (QConcat::new).
        let e = f.load_err::<QConcat>("cat", |_, m| {
            m["cat.part1"]["y"]["zero_point"] = json!(1);
        });
        assert_mentions(&e, &["`cat`", "requantizes to"]);
        // Corrupted tables.
        let e = f.load_err::<QRope>("rope", |a, _| {
            a.get_mut("rope.sin_table").unwrap().2[4..8]
                .copy_from_slice(&(1i32 << 30).to_le_bytes());
        });
        assert_mentions(&e, &["`rope`", "rope.sin_table", "quarter sine"]);
        let e = f.load_err::<QRope>("rope", |a, _| {
            a.get_mut("rope.inv_freq_m").unwrap().2[..4].copy_from_slice(&7i32.to_le_bytes());
        });
        assert_mentions(&e, &["`rope`", "rope.inv_freq_m", "[0] = 7"]);
        let e = f.load_err::<QRope>("rope", |_, m| {
            m["rope"]["head_dim"] = json!(10);
        });
        assert_mentions(&e, &["rope.inv_freq_m", "[5]"]);
        let e = f.load_err::<QSoftmax>("sm", |a, _| {
            a.get_mut("sm.exp2_table").unwrap().2[..4].copy_from_slice(&0i32.to_le_bytes());
        });
        assert_mentions(&e, &["`sm`", "sm.exp2_table", "[0] = 0"]);
        let e = f.load_err::<QSoftmax>("sm", |_, m| {
            m["sm"]["in_mult"]["shift"] = json!(60);
        });
        assert_mentions(&e, &["`sm`", "`in_mult.shift`"]);
    }

    #[test]
    fn int4_linear_size_on_disk_is_close_to_bits_times_params() {
        let mut rng = Lcg::new(3);
        let (out, inp) = (256, 1024);
        let w = gauss(&mut rng, out * inp, 0.05);
        let b = gauss(&mut rng, out, 0.1);
        let q = aq(-4.0, 4.0, 16);
        let mm = WeightRange::MinMax;
        for (gran, limit) in [
            // Per row: bias 8 + multiplier 8 + group multipliers 2 bytes per group, vs 512.
            (Granularity::PerChannel, 1.05),
            (Granularity::PerGroup(128), 1.075),
            (Granularity::PerGroup(32), 1.17),
        ] {
            let op = prepare::linear::linear(&w, Some(&b), out, inp, 4, gran, mm, q, q).unwrap();
            let mut wr = ArtifactWriter::new();
            op.save(&mut wr, "fc").unwrap();
            let dir = tempfile::tempdir().unwrap();
            wr.write(dir.path(), STEM).unwrap();
            let size = |ext: &str| {
                std::fs::metadata(dir.path().join(format!("{STEM}.{ext}")))
                    .unwrap()
                    .len() as usize
            };
            let (st, js) = (size("safetensors"), size("json"));
            let theory = 4 * out * inp / 8;
            let ratio = (st + js) as f64 / theory as f64;
            println!(
                "int4 linear [{out}, {inp}] {gran:?}: {st} + {js} (json) bytes on disk vs \
                 {theory} = 4 bits x {} params / 8: x{ratio:.4} (array data {} bytes)",
                out * inp,
                wr.data_bytes()
            );
            assert!(ratio >= 1.0 && ratio < limit, "{gran:?}: x{ratio}");
            let r = ArtifactReader::open(dir.path(), STEM).unwrap();
            back(&r, "fc", &op);
        }
    }
}
