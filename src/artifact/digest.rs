//! Integrity of a quantized directory: SHA-256 digests of `config.json`, `graph.json` and every
//! array, stored in the header metadata of `quantized.safetensors` and all checked on load, so
//! a flipped byte anywhere (or a `config.json` edited after quantization) is an error naming the
//! file or array instead of a silently different answer.

use super::array::Array;
use crate::error::{Error, Result};
use crate::weights::WeightStore;
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

const FILE_PREFIX: &str = "file-sha256:";
const ARRAY_PREFIX: &str = "array-sha256:";

pub fn sha256_hex(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// The header metadata recording the digests of `files` (name, bytes) and `arrays`.
pub fn metadata(
    files: &[(&str, &[u8])],
    arrays: &BTreeMap<String, Array>,
) -> HashMap<String, String> {
    let mut m: HashMap<String, String> = arrays
        .par_iter()
        .map(|(k, a)| (format!("{ARRAY_PREFIX}{k}"), sha256_hex(&a.bytes)))
        .collect();
    for (name, bytes) in files {
        m.insert(format!("{FILE_PREFIX}{name}"), sha256_hex(bytes));
    }
    m
}

/// Checks `files` (name, path, bytes) and every array of `store` (the opened arrays file at
/// `arrays_path`) against the digests in its header.
pub fn verify(
    store: &WeightStore,
    arrays_path: &Path,
    files: &[(&str, &Path, &[u8])],
) -> Result<()> {
    let empty = HashMap::new();
    let meta = store.file_metadata(0).unwrap_or(&empty);
    for (name, path, bytes) in files {
        let Some(want) = meta.get(&format!("{FILE_PREFIX}{name}")) else {
            return Err(Error::corrupt(
                arrays_path,
                format!("records no digest of {name}"),
            ));
        };
        if sha256_hex(bytes) != *want {
            return Err(Error::corrupt(
                path,
                "does not match the digest recorded when the model was quantized (the file was \
                 modified or damaged); re-quantize the model",
            ));
        }
    }
    let mut names: Vec<&str> = store.names().collect();
    names.sort_unstable();
    names.par_iter().try_for_each(|name| {
        let Some(want) = meta.get(&format!("{ARRAY_PREFIX}{name}")) else {
            return Err(Error::corrupt(
                arrays_path,
                format!("array `{name}` has no recorded digest"),
            ));
        };
        let (_, _, bytes) = store.raw(name)?;
        if sha256_hex(bytes) != *want {
            return Err(Error::corrupt(
                arrays_path,
                format!(
                    "array `{name}` does not match its recorded digest (the file was modified or \
                     damaged); re-quantize the model"
                ),
            ));
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digest() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
