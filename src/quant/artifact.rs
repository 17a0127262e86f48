//! The quantized-model artifact container: integer arrays in one safetensors file (typed:
//! I8 / U8 for packed int4 / I16 / I32 / I64) plus JSON metadata. Operators save and load
//! themselves through [`ArtifactWriter`] / [`ArtifactReader`] under their op names, so the
//! artifact's keys follow the float checkpoint's.

use crate::error::{Error, Result};
use crate::weights::WeightStore;
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One integer array to be written.
struct Array {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

/// Collects arrays and metadata, then writes `<dir>/<stem>.safetensors` + `<dir>/<stem>.json`.
#[derive(Default)]
pub struct ArtifactWriter {
    arrays: BTreeMap<String, Array>,
    /// Small per-op metadata (scales, zero points, shapes, op kinds), keyed by op name.
    pub meta: BTreeMap<String, serde_json::Value>,
}

macro_rules! put_fn {
    ($name:ident, $t:ty, $dtype:expr) => {
        pub fn $name(&mut self, key: &str, shape: &[usize], values: &[$t]) -> Result<()> {
            let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            self.put(key, $dtype, shape, values.len(), bytes)
        }
    };
}

impl ArtifactWriter {
    pub fn new() -> Self {
        Self::default()
    }

    fn put(
        &mut self,
        key: &str,
        dtype: Dtype,
        shape: &[usize],
        n: usize,
        bytes: Vec<u8>,
    ) -> Result<()> {
        if shape.iter().product::<usize>() != n {
            return Err(Error::input(format!(
                "artifact array `{key}`: {n} values for shape {shape:?}"
            )));
        }
        if self.arrays.contains_key(key) {
            return Err(Error::input(format!(
                "artifact array `{key}` written twice"
            )));
        }
        let array = Array {
            dtype,
            shape: shape.to_vec(),
            bytes,
        };
        self.arrays.insert(key.to_string(), array);
        Ok(())
    }

    put_fn!(put_i8, i8, Dtype::I8);
    put_fn!(put_u8, u8, Dtype::U8);
    put_fn!(put_i16, i16, Dtype::I16);
    put_fn!(put_u16, u16, Dtype::U16);
    put_fn!(put_i32, i32, Dtype::I32);
    put_fn!(put_i64, i64, Dtype::I64);

    /// Total bytes of array data (what `size on disk` is mostly made of).
    pub fn data_bytes(&self) -> usize {
        self.arrays.values().map(|a| a.bytes.len()).sum()
    }

    pub fn write(&self, dir: &Path, stem: &str) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let views = self
            .arrays
            .iter()
            .map(|(k, a)| {
                TensorView::new(a.dtype, a.shape.clone(), &a.bytes)
                    .map(|v| (k.clone(), v))
                    .map_err(|e| Error::input(format!("artifact array `{k}`: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let st = dir.join(format!("{stem}.safetensors"));
        let bytes = safetensors::serialize(views, None)
            .map_err(|e| Error::input(format!("serializing {}: {e}", st.display())))?;
        std::fs::write(&st, bytes).map_err(|e| Error::io(&st, e))?;
        let meta = dir.join(format!("{stem}.json"));
        let text =
            serde_json::to_string_pretty(&self.meta).map_err(|e| Error::input(e.to_string()))?;
        std::fs::write(&meta, text).map_err(|e| Error::io(&meta, e))
    }
}

/// Reads what [`ArtifactWriter::write`] wrote; every getter checks dtype and shape and names the
/// array in its error.
pub struct ArtifactReader {
    store: WeightStore,
    pub meta: BTreeMap<String, serde_json::Value>,
    path: PathBuf,
}

macro_rules! get_fn {
    ($name:ident, $t:ty, $dtype:expr, $w:expr) => {
        pub fn $name(&self, key: &str, shape: &[usize]) -> Result<Vec<$t>> {
            let bytes = self.checked(key, $dtype, shape)?;
            Ok(bytes
                .chunks_exact($w)
                .map(|c| <$t>::from_le_bytes(c.try_into().expect("chunk width")))
                .collect())
        }
    };
}

impl ArtifactReader {
    pub fn open(dir: &Path, stem: &str) -> Result<Self> {
        let path = dir.join(format!("{stem}.safetensors"));
        let store = WeightStore::open_files(std::slice::from_ref(&path))?;
        let meta_path = dir.join(format!("{stem}.json"));
        let text = std::fs::read_to_string(&meta_path).map_err(|e| Error::io(&meta_path, e))?;
        let meta = serde_json::from_str(&text)
            .map_err(|e| Error::corrupt(&meta_path, format!("invalid JSON: {e}")))?;
        Ok(Self { store, meta, path })
    }

    /// Metadata of one op, or a clear error naming it.
    pub fn meta(&self, key: &str) -> Result<&serde_json::Value> {
        self.meta
            .get(key)
            .ok_or_else(|| Error::corrupt(&self.path, format!("no metadata for `{key}`")))
    }

    fn checked(&self, key: &str, dtype: Dtype, shape: &[usize]) -> Result<&[u8]> {
        let (dt, sh, bytes) = self.store.raw(key)?;
        if dt != dtype {
            return Err(Error::corrupt(
                &self.path,
                format!("`{key}` is {dt:?}, expected {dtype:?}"),
            ));
        }
        if sh != shape {
            return Err(Error::TensorShape {
                name: key.to_string(),
                actual: sh.to_vec(),
                expected: shape.to_vec(),
            });
        }
        Ok(bytes)
    }

    /// Shape of an array, if present.
    pub fn shape(&self, key: &str) -> Option<&[usize]> {
        self.store.shape(key)
    }

    get_fn!(get_i8, i8, Dtype::I8, 1);
    get_fn!(get_u8, u8, Dtype::U8, 1);
    get_fn!(get_i16, i16, Dtype::I16, 2);
    get_fn!(get_u16, u16, Dtype::U16, 2);
    get_fn!(get_i32, i32, Dtype::I32, 4);
    get_fn!(get_i64, i64, Dtype::I64, 8);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_checked_errors() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = ArtifactWriter::new();
        w.put_i8("a.q", &[2, 2], &[-8, 7, 0, 1]).unwrap();
        w.put_i64("a.bias", &[2], &[i64::MIN, 5]).unwrap();
        w.put_u16("a.group_mult", &[1], &[256]).unwrap();
        w.meta
            .insert("a".into(), serde_json::json!({"kind": "linear"}));
        assert!(w.put_i8("a.q", &[1], &[0]).is_err());
        assert!(w.put_i8("b", &[3], &[0]).is_err());
        assert_eq!(w.data_bytes(), 4 + 16 + 2);
        w.write(dir.path(), "quantized").unwrap();
        let r = ArtifactReader::open(dir.path(), "quantized").unwrap();
        assert_eq!(r.get_i8("a.q", &[2, 2]).unwrap(), vec![-8, 7, 0, 1]);
        assert_eq!(r.get_i64("a.bias", &[2]).unwrap(), vec![i64::MIN, 5]);
        assert_eq!(r.meta("a").unwrap()["kind"], "linear");
        assert!(r
            .get_i8("a.q", &[4])
            .unwrap_err()
            .to_string()
            .contains("a.q"));
        assert!(r
            .get_i16("a.q", &[2, 2])
            .unwrap_err()
            .to_string()
            .contains("expected I16"));
        assert!(r
            .get_i8("missing", &[1])
            .unwrap_err()
            .to_string()
            .contains("missing"));
        assert!(r.meta("zzz").is_err());
    }
}
