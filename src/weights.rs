//! Memory-mapped safetensors checkpoints (single file or sharded with an index).
//!
//! [`WeightStore`] maps every file once and indexes tensors by name; [`Weights`] is a prefixed
//! view of it (like candle's `VarBuilder`) so model code asks for `conv_stem.conv.weight` while the
//! store holds `model.vision_tower.timm_model.conv_stem.conv.weight`. Tensors are converted to f32
//! on load; F32, F16, BF16 and F64 are accepted.

use crate::error::{Error, Result};
use crate::tensor::Tensor;
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

struct Entry {
    file: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    /// Byte range inside the mapped file (header already accounted for).
    start: usize,
    end: usize,
}

pub struct WeightStore {
    paths: Vec<PathBuf>,
    maps: Vec<Mmap>,
    index: HashMap<String, Entry>,
    /// The `__metadata__` string map of each file's header.
    metadata: Vec<HashMap<String, String>>,
}

impl WeightStore {
    /// A store with no tensors (models over generated weights).
    pub fn empty() -> Self {
        WeightStore {
            paths: Vec::new(),
            maps: Vec::new(),
            index: HashMap::new(),
            metadata: Vec::new(),
        }
    }

    /// Opens the checkpoint of a model directory: `model.safetensors`, or
    /// `model.safetensors.index.json` with its shards.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        // `exists`: a FIFO or directory in their place gets open_regular's error, not "missing".
        if single.exists() {
            Self::open_files(&[single])
        } else if index.exists() {
            let text = crate::files::read_text(&index, crate::files::limits::JSON)?;
            let json: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| Error::corrupt(&index, e.to_string()))?;
            let map = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| Error::corrupt(&index, "no `weight_map` object"))?;
            let mut files = BTreeSet::new();
            for v in map.values() {
                let f = v.as_str().ok_or_else(|| {
                    Error::corrupt(&index, "weight_map values must be file names")
                })?;
                // A shard is a file beside the index: no directories, no `..`, no absolute paths.
                if Path::new(f).file_name() != Some(std::ffi::OsStr::new(f)) {
                    return Err(Error::corrupt(
                        &index,
                        format!("shard `{f}` is not a plain file name in the model directory"),
                    ));
                }
                files.insert(dir.join(f));
            }
            let files: Vec<PathBuf> = files.into_iter().collect();
            let store = Self::open_files(&files)?;
            for name in map.keys() {
                if !store.index.contains_key(name) {
                    return Err(Error::corrupt(
                        &index,
                        format!("index lists `{name}` but no shard holds it"),
                    ));
                }
            }
            Ok(store)
        } else {
            Err(Error::io(
                &single,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no model.safetensors or model.safetensors.index.json in the model directory",
                ),
            ))
        }
    }

    /// Maps the given safetensors files and indexes their tensors.
    pub fn open_files(paths: &[PathBuf]) -> Result<Self> {
        let mut store = WeightStore::empty();
        for path in paths {
            let (file, _) = crate::files::open_regular(path)?;
            // SAFETY: the file is opened read-only and the map is never written; as with every
            // mmap-based loader, modifying the file while it is mapped is the caller's problem.
            let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
            let (header_len, meta) = SafeTensors::read_metadata(&map)
                .map_err(|e| Error::corrupt(path, format!("not a valid safetensors file: {e}")))?;
            let base = 8 + header_len;
            let file_idx = store.maps.len();
            for (name, info) in meta.tensors() {
                let (s, e) = info.data_offsets;
                if base + e > map.len() {
                    return Err(Error::corrupt(
                        path,
                        format!("tensor `{name}` extends past the end of the file (truncated?)"),
                    ));
                }
                if store.index.contains_key(&name) {
                    return Err(Error::corrupt(
                        path,
                        format!("tensor `{name}` appears twice"),
                    ));
                }
                store.index.insert(
                    name,
                    Entry {
                        file: file_idx,
                        dtype: info.dtype,
                        shape: info.shape.clone(),
                        start: base + s,
                        end: base + e,
                    },
                );
            }
            store
                .metadata
                .push(meta.metadata().clone().unwrap_or_default());
            store.paths.push(path.clone());
            store.maps.push(map);
        }
        Ok(store)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.index.get(name).map(|e| e.shape.as_slice())
    }

    /// The header metadata (`__metadata__`) of the `i`-th file.
    pub fn file_metadata(&self, i: usize) -> Option<&HashMap<String, String>> {
        self.metadata.get(i)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(|s| s.as_str())
    }

    /// Total bytes of tensor data across all files.
    pub fn data_bytes(&self) -> usize {
        self.index.values().map(|e| e.end - e.start).sum()
    }

    /// Bytes the float tensors take once decoded to f32 (from the headers alone).
    pub fn f32_bytes(&self) -> u64 {
        self.index
            .values()
            .map(|e| 4 * e.shape.iter().map(|&d| d as u64).product::<u64>())
            .sum()
    }

    /// The stored dtype, shape and raw little-endian bytes of a tensor (integer tensors of
    /// quantized artifacts are read through this).
    pub fn raw(&self, name: &str) -> Result<(Dtype, &[usize], &[u8])> {
        let e = self
            .index
            .get(name)
            .ok_or_else(|| Error::MissingTensor(name.to_string()))?;
        Ok((e.dtype, &e.shape, &self.maps[e.file][e.start..e.end]))
    }

    /// Loads a tensor as f32, whatever its stored float dtype.
    pub fn load(&self, name: &str) -> Result<Tensor> {
        let e = self
            .index
            .get(name)
            .ok_or_else(|| Error::MissingTensor(name.to_string()))?;
        let bytes = &self.maps[e.file][e.start..e.end];
        let numel: usize = e.shape.iter().product();
        let data = decode_floats(name, e.dtype, bytes, numel).map_err(|err| match err {
            Error::CorruptFile { msg, .. } => Error::corrupt(&self.paths[e.file], msg),
            other => other,
        })?;
        // F64 values beyond f32's range become infinite here too, so this is checked after the
        // conversion: a non-finite weight would only turn into NaN logits and garbage answers.
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            return Err(Error::corrupt(
                &self.paths[e.file],
                format!(
                    "tensor `{name}` holds a non-finite value ({}) at flat index {i}",
                    data[i]
                ),
            ));
        }
        Tensor::new(&e.shape, data)
    }

    /// Loads a tensor and checks its shape.
    pub fn load_shaped(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.load(name)?;
        if t.shape() != shape {
            return Err(Error::TensorShape {
                name: name.to_string(),
                actual: t.shape().to_vec(),
                expected: shape.to_vec(),
            });
        }
        Ok(t)
    }
}

fn decode_floats(name: &str, dtype: Dtype, bytes: &[u8], numel: usize) -> Result<Vec<f32>> {
    let width = match dtype {
        Dtype::F32 => 4,
        Dtype::F16 | Dtype::BF16 => 2,
        Dtype::F64 => 8,
        other => {
            return Err(Error::TensorDtype {
                name: name.to_string(),
                dtype: format!("{other:?}"),
            })
        }
    };
    if bytes.len() != numel * width {
        return Err(Error::corrupt(
            "",
            format!(
                "tensor `{name}`: {} bytes of data for {numel} {dtype:?} values",
                bytes.len()
            ),
        ));
    }
    Ok(match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8-byte chunk")) as f32)
            .collect(),
        _ => unreachable!("dtype checked above"),
    })
}

/// A prefixed view of a [`WeightStore`].
#[derive(Clone)]
pub struct Weights {
    store: Arc<WeightStore>,
    prefix: String,
}

impl Weights {
    pub fn new(store: Arc<WeightStore>) -> Self {
        Self {
            store,
            prefix: String::new(),
        }
    }

    /// A view one level deeper: `pp("blocks").pp("0")` reads `blocks.0.*`.
    pub fn pp(&self, sub: impl std::fmt::Display) -> Self {
        let sub = sub.to_string();
        let prefix = if self.prefix.is_empty() {
            sub
        } else if sub.is_empty() {
            self.prefix.clone()
        } else {
            format!("{}.{}", self.prefix, sub)
        };
        Self {
            store: self.store.clone(),
            prefix,
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn store(&self) -> &Arc<WeightStore> {
        &self.store
    }

    /// The full checkpoint key of `name` under this view.
    pub fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{}", self.prefix, name)
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.store.contains(&self.key(name))
    }

    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.store.shape(&self.key(name))
    }

    /// Loads `name` and checks it has exactly `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.store.load_shaped(&self.key(name), shape)
    }

    /// Like [`Weights::get`] but `None` when the tensor is absent.
    pub fn get_opt(&self, name: &str, shape: &[usize]) -> Result<Option<Tensor>> {
        if self.contains(name) {
            self.get(name, shape).map(Some)
        } else {
            Ok(None)
        }
    }
}
