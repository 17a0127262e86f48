//! The field adapter that puts big integer vectors into `quantized.safetensors` and leaves a
//! reference in `graph.json`: `#[serde(with = "crate::artifact::array")]` on a field of an op
//! struct ([`Vec`] of an [`ArrayElem`], an `Option` of one, or [`PackedWeights`]).
//!
//! How it works with serde, which tells a field's serializer nothing about where it is:
//! - **Saving** takes two passes over the model, each with an [`ArraySink`] installed in a
//!   thread-local ([`saving`]). Pass one serializes to a `serde_json::Value` and keeps no data:
//!   each array field writes `{"array": "#<n>", "dtype": "I8", "len": 120}`, `n` counting the
//!   arrays in serialization order. The saver walks that (small) tree and names array `n` by
//!   where its reference sits: `<part>.<node name>.<fields from the op down to the array>`, e.g.
//!   `text.layers.3.conv.in_proj.weight.data` (the op's variant tag left out). Pass two
//!   serializes the model again, straight to text (fields in declaration order), the sink
//!   handing out those names in the same order and collecting the bytes. Keys are thus exactly
//!   the JSON paths of their references: meaningful and unique without any op spelling them.
//! - **Loading.** The reference carries its key, so no path is needed: with an [`ArraySource`]
//!   (the opened safetensors file) installed in a thread-local, the adapter reads the reference,
//!   checks the stored dtype and shape against it (`[len]`, or `[len, width]` for elements made
//!   of several values such as a multiplier's mantissa and shift) and decodes the values, with
//!   an error naming the key and the file. Whether the lengths fit the op (one multiplier per
//!   output row, ...) is then the op's own `validate`.
//! - **Anywhere else** (no sink or source installed) the field serializes as a plain JSON array,
//!   so op structs stay ordinary serde types.
//!
//! The scopes are per thread and restored on unwind; serializing happens on the calling thread.

use crate::error::{Error, Result};
use crate::quant::arith::Multiplier;
use crate::quant::ops::linear::PackedWeights;
use crate::quant::ops::pool::LinearTap;
use crate::weights::WeightStore;
use safetensors::Dtype;
use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// What `graph.json` holds in place of an array.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArrayRef {
    /// The safetensors key.
    pub array: String,
    pub dtype: Dtype,
    /// Elements (a multiplier counts once).
    pub len: usize,
}

/// One array on its way to the file.
#[derive(Clone, Debug, PartialEq)]
pub struct Array {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

/// An element type stored in safetensors in its natural dtype.
pub trait ArrayElem: Copy + Serialize + DeserializeOwned {
    const DTYPE: Dtype;
    /// Stored values per element.
    const WIDTH: usize;
    fn put(&self, out: &mut Vec<u8>);
    /// Decodes one element from `WIDTH` stored values (little endian).
    fn get(b: &[u8]) -> std::result::Result<Self, String>;
}

/// Bytes of one stored value of `d` (the integer dtypes this format uses).
fn value_bytes(d: Dtype) -> usize {
    d.bitsize() / 8
}

macro_rules! int_elem {
    ($t:ty, $d:expr) => {
        impl ArrayElem for $t {
            const DTYPE: Dtype = $d;
            const WIDTH: usize = 1;
            fn put(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn get(b: &[u8]) -> std::result::Result<Self, String> {
                Ok(<$t>::from_le_bytes(b.try_into().map_err(|_| "short read")?))
            }
        }
    };
}

int_elem!(i8, Dtype::I8);
int_elem!(u8, Dtype::U8);
int_elem!(i16, Dtype::I16);
int_elem!(u16, Dtype::U16);
int_elem!(i32, Dtype::I32);
int_elem!(u32, Dtype::U32);
int_elem!(i64, Dtype::I64);

/// Flags as `U8` 0/1.
impl ArrayElem for bool {
    const DTYPE: Dtype = Dtype::U8;
    const WIDTH: usize = 1;
    fn put(&self, out: &mut Vec<u8>) {
        out.push(*self as u8);
    }
    fn get(b: &[u8]) -> std::result::Result<Self, String> {
        match b {
            [0] => Ok(false),
            [1] => Ok(true),
            _ => Err(format!("{} is not a 0/1 flag", b[0])),
        }
    }
}

/// Indices as `I64`.
impl ArrayElem for usize {
    const DTYPE: Dtype = Dtype::I64;
    const WIDTH: usize = 1;
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(*self as i64).to_le_bytes());
    }
    fn get(b: &[u8]) -> std::result::Result<Self, String> {
        let v = i64::get(b)?;
        usize::try_from(v).map_err(|_| format!("{v} is not an index"))
    }
}

/// Multipliers as `I32` pairs `(m, shift)`.
impl ArrayElem for Multiplier {
    const DTYPE: Dtype = Dtype::I32;
    const WIDTH: usize = 2;
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.m.to_le_bytes());
        out.extend_from_slice(&self.shift.to_le_bytes());
    }
    fn get(b: &[u8]) -> std::result::Result<Self, String> {
        Ok(Multiplier {
            m: i32::get(&b[..4])?,
            shift: i32::get(&b[4..])?,
        })
    }
}

/// Bilinear taps as `I64` quadruples `(i0, i1, w0, w1)`.
impl ArrayElem for LinearTap {
    const DTYPE: Dtype = Dtype::I64;
    const WIDTH: usize = 4;
    fn put(&self, out: &mut Vec<u8>) {
        for v in [
            self.i0 as i64,
            self.i1 as i64,
            self.w0 as i64,
            self.w1 as i64,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    fn get(b: &[u8]) -> std::result::Result<Self, String> {
        let weight = |v: i64| u32::try_from(v).map_err(|_| format!("{v} is not a tap weight"));
        Ok(LinearTap {
            i0: usize::get(&b[..8])?,
            i1: usize::get(&b[8..16])?,
            w0: weight(i64::get(&b[16..24])?)?,
            w1: weight(i64::get(&b[24..])?)?,
        })
    }
}

/// A field the adapter can store: see the module docs.
pub trait ArrayField: Sized + Serialize + DeserializeOwned {
    fn save<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error>;
    fn load<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error>;
}

/// `#[serde(serialize_with)]` half of the adapter.
pub fn serialize<T: ArrayField, S: Serializer>(
    v: &T,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    if SINK.with(|k| k.borrow().is_some()) {
        v.save(s)
    } else {
        v.serialize(s)
    }
}

/// `#[serde(deserialize_with)]` half of the adapter.
pub fn deserialize<'de, T: ArrayField, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<T, D::Error> {
    if SOURCE.with(|k| k.borrow().is_some()) {
        T::load(d)
    } else {
        T::deserialize(d)
    }
}

impl<T: ArrayElem> ArrayField for Vec<T> {
    fn save<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        put(s, T::DTYPE, T::WIDTH, self.len(), || {
            let mut bytes = Vec::with_capacity(self.len() * T::WIDTH * value_bytes(T::DTYPE));
            for v in self {
                v.put(&mut bytes);
            }
            bytes
        })
    }

    fn load<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let r = ArrayRef::deserialize(d)?;
        if r.dtype != T::DTYPE {
            return Err(D::Error::custom(format!(
                "array `{}`: graph.json says {}, this field holds {}",
                r.array,
                r.dtype,
                T::DTYPE
            )));
        }
        take(&r, T::WIDTH, |b| {
            b.chunks_exact(T::WIDTH * value_bytes(T::DTYPE))
                .enumerate()
                .map(|(i, c)| T::get(c).map_err(|e| format!("[{i}]: {e}")))
                .collect()
        })
        .map_err(D::Error::custom)
    }
}

impl<A: ArrayField> ArrayField for Option<A> {
    fn save<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        struct Saved<'a, A>(&'a A);
        impl<A: ArrayField> Serialize for Saved<'_, A> {
            fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                self.0.save(s)
            }
        }
        match self {
            None => s.serialize_none(),
            Some(a) => s.serialize_some(&Saved(a)),
        }
    }

    fn load<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Loaded<A>(A);
        impl<'de, A: ArrayField> Deserialize<'de> for Loaded<A> {
            fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                A::load(d).map(Loaded)
            }
        }
        Ok(Option::<Loaded<A>>::deserialize(d)?.map(|l| l.0))
    }
}

/// Weights in their storage dtype: `I8`, packed int4 as `U8` (two values a byte, each row padded
/// to whole bytes), `I16`; the dtype chooses the variant.
impl ArrayField for PackedWeights {
    fn save<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            PackedWeights::I8(v) => v.save(s),
            PackedWeights::I4(v) => v.save(s),
            PackedWeights::I16(v) => v.save(s),
        }
    }

    fn load<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let r = ArrayRef::deserialize(d)?;
        match r.dtype {
            Dtype::I8 => take(&r, 1, |b| {
                Ok(PackedWeights::I8(b.iter().map(|&v| v as i8).collect()))
            }),
            Dtype::U8 => take(&r, 1, |b| Ok(PackedWeights::I4(b.to_vec()))),
            Dtype::I16 => take(&r, 1, |b| {
                Ok(PackedWeights::I16(
                    b.chunks_exact(2)
                        .map(|c| i16::from_le_bytes([c[0], c[1]]))
                        .collect(),
                ))
            }),
            other => Err(format!(
                "array `{}`: weights are stored as I8, U8 (packed int4) or I16, not {other}",
                r.array
            )),
        }
        .map_err(D::Error::custom)
    }
}

/// Where array fields go while saving (see the module docs).
#[derive(Default)]
pub struct ArraySink {
    /// Pass two: the key of each array, in serialization order. Pass one (`None`): placeholders.
    names: Option<Vec<String>>,
    count: usize,
    arrays: BTreeMap<String, Array>,
}

impl ArraySink {
    fn push(
        &mut self,
        dtype: Dtype,
        shape: Vec<usize>,
        bytes: impl FnOnce() -> Vec<u8>,
    ) -> std::result::Result<String, String> {
        let i = self.count;
        self.count += 1;
        let Some(names) = &self.names else {
            return Ok(format!("#{i}"));
        };
        let key = names
            .get(i)
            .ok_or("the model serialized more arrays than in the naming pass")?
            .clone();
        let array = Array {
            dtype,
            shape,
            bytes: bytes(),
        };
        if self.arrays.insert(key.clone(), array).is_some() {
            return Err(format!("two arrays would be stored under `{key}`"));
        }
        Ok(key)
    }

    /// Arrays serialized.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The collected arrays by key.
    pub fn into_arrays(self) -> BTreeMap<String, Array> {
        self.arrays
    }
}

/// The index `n` of a pass-one placeholder `#n`.
pub fn placeholder(key: &str) -> Option<usize> {
    key.strip_prefix('#')?.parse().ok()
}

/// The opened `quantized.safetensors` while loading; records which keys were read.
pub struct ArraySource {
    store: WeightStore,
    path: PathBuf,
    used: BTreeSet<String>,
}

impl ArraySource {
    pub fn open(path: &Path) -> Result<Self> {
        Ok(Self {
            store: WeightStore::open_files(&[path.to_path_buf()])?,
            path: path.to_path_buf(),
            used: BTreeSet::new(),
        })
    }

    /// Keys the file holds that nothing read.
    pub fn unused(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self
            .store
            .names()
            .filter(|n| !self.used.contains(*n))
            .collect();
        v.sort_unstable();
        v
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn store(&self) -> &WeightStore {
        &self.store
    }
}

thread_local! {
    static SINK: RefCell<Option<ArraySink>> = const { RefCell::new(None) };
    static SOURCE: RefCell<Option<ArraySource>> = const { RefCell::new(None) };
}

/// Clears the thread-local slots when dropped (also on unwind).
struct Reset;
impl Drop for Reset {
    fn drop(&mut self) {
        SINK.with(|k| k.borrow_mut().take());
        SOURCE.with(|k| k.borrow_mut().take());
    }
}

/// Runs `f` with a sink installed on this thread: pass one (`names == None`, placeholders) or
/// pass two (the keys of pass one). Returns `f`'s result and the sink.
pub fn saving<R>(names: Option<Vec<String>>, f: impl FnOnce() -> R) -> Result<(R, ArraySink)> {
    if SINK.with(|k| k.borrow().is_some()) || SOURCE.with(|k| k.borrow().is_some()) {
        return Err(Error::input(
            "an artifact is already being saved or loaded on this thread",
        ));
    }
    SINK.with(|k| {
        *k.borrow_mut() = Some(ArraySink {
            names,
            ..ArraySink::default()
        })
    });
    let reset = Reset;
    let r = f();
    let sink = SINK.with(|k| k.borrow_mut().take()).unwrap_or_default();
    drop(reset);
    Ok((r, sink))
}

/// Runs `f` with `source` installed on this thread; returns its result and the source.
pub fn loading<R>(source: ArraySource, f: impl FnOnce() -> R) -> Result<(R, ArraySource)> {
    if SINK.with(|k| k.borrow().is_some()) || SOURCE.with(|k| k.borrow().is_some()) {
        return Err(Error::input(
            "an artifact is already being saved or loaded on this thread",
        ));
    }
    SOURCE.with(|k| *k.borrow_mut() = Some(source));
    let reset = Reset;
    let r = f();
    let source = SOURCE.with(|k| k.borrow_mut().take());
    drop(reset);
    match source {
        Some(s) => Ok((r, s)),
        None => Err(Error::input("the artifact source vanished while loading")),
    }
}

/// Moves one array into the sink and serializes its reference.
fn put<S: Serializer>(
    s: S,
    dtype: Dtype,
    width: usize,
    len: usize,
    bytes: impl FnOnce() -> Vec<u8>,
) -> std::result::Result<S::Ok, S::Error> {
    let shape = if width == 1 {
        vec![len]
    } else {
        vec![len, width]
    };
    let key = SINK
        .with(|k| match k.borrow_mut().as_mut() {
            Some(sink) => sink.push(dtype, shape, bytes),
            None => Err("no artifact array sink installed".to_string()),
        })
        .map_err(serde::ser::Error::custom)?;
    ArrayRef {
        array: key,
        dtype,
        len,
    }
    .serialize(s)
}

/// Reads the array `r` names from the installed source (dtype and shape checked against `r`)
/// and decodes its bytes with `f`.
fn take<T>(
    r: &ArrayRef,
    width: usize,
    f: impl FnOnce(&[u8]) -> std::result::Result<T, String>,
) -> std::result::Result<T, String> {
    SOURCE.with(|k| {
        let mut k = k.borrow_mut();
        let src = k.as_mut().ok_or("no artifact array source installed")?;
        let at = || format!("array `{}` in {}", r.array, src.path.display());
        let (dtype, shape, bytes) = src
            .store
            .raw(&r.array)
            .map_err(|_| format!("{}: missing", at()))?;
        let want = if width == 1 {
            vec![r.len]
        } else {
            vec![r.len, width]
        };
        if dtype != r.dtype || shape != want.as_slice() {
            return Err(format!(
                "{}: stored as {dtype} {shape:?}, graph.json expects {} {want:?}",
                at(),
                r.dtype
            ));
        }
        let v = f(bytes).map_err(|e| format!("{}: {e}", at()))?;
        src.used.insert(r.array.clone());
        Ok(v)
    })
}

/// Records, for every placeholder reference below `v`, its key: `path` plus the object keys and
/// array indices down to it.
pub fn name_arrays(v: &serde_json::Value, path: &str, names: &mut [Option<String>]) -> Result<()> {
    use serde_json::Value;
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match v {
        Value::Object(obj) => {
            if let (Some(Value::String(p)), 3) = (obj.get("array"), obj.len()) {
                let slot = placeholder(p)
                    .and_then(|i| names.get_mut(i))
                    .ok_or_else(|| {
                        Error::input(format!("artifact: unknown array placeholder `{p}`"))
                    })?;
                if slot.replace(path.to_string()).is_some() {
                    return Err(Error::input(format!(
                        "artifact: array placeholder `{p}` seen twice"
                    )));
                }
                return Ok(());
            }
            for (k, child) in obj {
                name_arrays(child, &join(k), names)?;
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                name_arrays(child, &join(&i.to_string()), names)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// `u128` fields as decimal strings (JSON numbers above 2^64 do not survive every reader).
pub mod decimal {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u128, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        let t = String::deserialize(d)?;
        t.parse()
            .map_err(|_| serde::de::Error::custom(format!("`{t}` is not an unsigned integer")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Fields {
        #[serde(with = "super")]
        a: Vec<i8>,
        #[serde(with = "super")]
        b: Vec<u16>,
        #[serde(with = "super")]
        some: Option<Vec<i64>>,
        #[serde(with = "super")]
        none: Option<Vec<i64>>,
        #[serde(with = "super")]
        m: Vec<Multiplier>,
        #[serde(with = "super")]
        f: Vec<bool>,
        #[serde(with = "super")]
        idx: Vec<usize>,
        #[serde(with = "super")]
        u: Vec<u32>,
        #[serde(with = "super")]
        w4: PackedWeights,
        #[serde(with = "super")]
        w16: PackedWeights,
        #[serde(with = "super")]
        taps: Vec<LinearTap>,
        small: i32,
    }

    fn fields() -> Fields {
        Fields {
            a: vec![-128, 0, 127],
            b: vec![0, 256, u16::MAX],
            some: Some(vec![i64::MIN, 5]),
            none: None,
            m: vec![
                Multiplier::ONE,
                Multiplier {
                    m: i32::MAX,
                    shift: -96,
                },
            ],
            f: vec![true, false, true],
            idx: vec![0, 7, 1 << 40],
            u: vec![u32::MAX, 1],
            w4: PackedWeights::I4(vec![0x7f, 0x09]),
            w16: PackedWeights::I16(vec![-32767, 12]),
            taps: vec![LinearTap {
                i0: 3,
                i1: 4,
                w0: 1 << 19,
                w1: 1 << 19,
            }],
            small: -3,
        }
    }

    /// Saves `t` the way the artifact does (two passes, keys `t.<field>`), writes the arrays to
    /// `dir` and returns the JSON text.
    fn save(t: &Fields, dir: &Path) -> String {
        let (v, sink) = saving(None, || serde_json::to_value(t)).unwrap();
        let mut names = vec![None; sink.count()];
        name_arrays(&v.unwrap(), "t", &mut names).unwrap();
        let names: Vec<String> = names.into_iter().map(Option::unwrap).collect();
        let (text, sink) = saving(Some(names), || serde_json::to_string(t)).unwrap();
        let arrays = sink.into_arrays();
        let views: Vec<_> = arrays
            .iter()
            .map(|(k, a)| {
                let v = safetensors::tensor::TensorView::new(a.dtype, a.shape.clone(), &a.bytes);
                (k.clone(), v.unwrap())
            })
            .collect();
        let path = dir.join("a.safetensors");
        std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
        text.unwrap()
    }

    fn load(text: &str, dir: &Path) -> std::result::Result<Fields, String> {
        let src = ArraySource::open(&dir.join("a.safetensors")).unwrap();
        let (r, src) = loading(src, || serde_json::from_str::<Fields>(text)).unwrap();
        let r = r.map_err(|e| e.to_string())?;
        assert!(src.unused().is_empty(), "{:?}", src.unused());
        Ok(r)
    }

    #[test]
    fn every_element_type_round_trips_through_safetensors() {
        let dir = tempfile::tempdir().unwrap();
        let t = fields();
        let text = save(&t, dir.path());
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["a"], json!({"array": "t.a", "dtype": "I8", "len": 3}));
        assert_eq!(v["m"], json!({"array": "t.m", "dtype": "I32", "len": 2}));
        assert_eq!(v["w4"], json!({"array": "t.w4", "dtype": "U8", "len": 2}));
        assert_eq!(
            v["w16"],
            json!({"array": "t.w16", "dtype": "I16", "len": 2})
        );
        assert_eq!(v["none"], json!(null));
        assert_eq!(v["small"], json!(-3));
        assert_eq!(load(&text, dir.path()).unwrap(), t);
        let st = WeightStore::open_files(&[dir.path().join("a.safetensors")]).unwrap();
        assert_eq!(st.shape("t.m"), Some(&[2, 2][..]));
        assert_eq!(st.raw("t.idx").unwrap().0, Dtype::I64);
        assert_eq!(st.raw("t.f").unwrap().0, Dtype::U8);
        assert_eq!(st.shape("t.taps"), Some(&[1, 4][..]));
        // Without an installed sink or source the fields are plain JSON arrays.
        let plain = serde_json::to_value(&t).unwrap();
        assert_eq!(plain["a"], json!([-128, 0, 127]));
        assert_eq!(plain["w4"], json!({"I4": [127, 9]}));
        let back: Fields = serde_json::from_value(plain).unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn bad_values_and_references_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = fields();
        t.idx[1] = usize::MAX; // saved as I64 -1
        let text = save(&t, dir.path());
        let e = load(&text, dir.path()).unwrap_err();
        assert!(
            e.contains("`t.idx`") && e.contains("[1]: -1 is not an index"),
            "{e}"
        );
        // A reference to a missing array, and one with the wrong dtype for its field.
        let t = fields();
        let text = save(&t, dir.path());
        let e = load(&text.replace("\"t.b\"", "\"t.x\""), dir.path()).unwrap_err();
        assert!(e.contains("`t.x`") && e.contains("missing"), "{e}");
        let bad = text.replacen("\"dtype\":\"U16\"", "\"dtype\":\"I16\"", 1);
        let e = load(&bad, dir.path()).unwrap_err();
        assert!(e.contains("`t.b`") && e.contains("says I16"), "{e}");
        // An inline array where a reference is expected.
        let v = serde_json::to_value(&t).unwrap();
        let e = load(&v.to_string(), dir.path()).unwrap_err();
        assert!(e.contains("invalid type"), "{e}");
        // Scopes do not nest, and are gone after a panic inside them.
        let nested = saving(None, || saving(None, || ()).is_err()).unwrap().0;
        assert!(nested);
        let r = std::panic::catch_unwind(|| saving(None, || panic!("inside")));
        assert!(r.is_err());
        assert!(saving(None, || ()).is_ok());
    }

    #[test]
    fn u128_as_decimal_text() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct E {
            #[serde(with = "super::decimal")]
            eps: u128,
        }
        let e = E { eps: 1 << 100 };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v, json!({"eps": "1267650600228229401496703205376"}));
        assert_eq!(serde_json::from_value::<E>(v).unwrap(), e);
        assert!(serde_json::from_value::<E>(json!({"eps": "-1"})).is_err());
    }
}
