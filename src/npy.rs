//! NumPy `.npy` files for float32 arrays: the exchange format of `dump` and the golden tests.

use crate::error::{Error, Result};
use crate::tensor::Tensor;
use npyz::WriterBuilder;
use std::path::Path;

/// Reads a float32 (or float64, converted) C-order array.
pub fn read_f32(path: &Path) -> Result<Tensor> {
    let bytes = crate::files::read_bytes(path, crate::files::limits::NPY)?;
    parse_f32(&bytes, path)
}

/// [`read_f32`] of bytes already in memory; `path` names them in errors.
pub fn parse_f32(bytes: &[u8], path: &Path) -> Result<Tensor> {
    let npy = npyz::NpyFile::new(bytes)
        .map_err(|e| Error::corrupt(path, format!("not a .npy file: {e}")))?;
    if npy.order() != npyz::Order::C {
        return Err(Error::corrupt(
            path,
            "Fortran-order arrays are not supported",
        ));
    }
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let type_str = npy.dtype().descr();
    // The header's shape must be backed by data: a 100-byte file may not declare a 1e12-element
    // array (the reader would reserve memory for it first).
    let width = if type_str.contains("f8") { 8 } else { 4 };
    let bytes_needed = shape
        .iter()
        .try_fold(width, |acc: usize, &d| acc.checked_mul(d));
    if bytes_needed.is_none_or(|n| n > bytes.len()) {
        return Err(Error::corrupt(
            path,
            format!(
                "header declares shape {shape:?}, more than the file's {} bytes hold",
                bytes.len()
            ),
        ));
    }
    let data: Vec<f32> = if type_str.contains("f4") {
        npy.into_vec::<f32>()
            .map_err(|e| Error::corrupt(path, e.to_string()))?
    } else if type_str.contains("f8") {
        npy.into_vec::<f64>()
            .map_err(|e| Error::corrupt(path, e.to_string()))?
            .into_iter()
            .map(|v| v as f32)
            .collect()
    } else {
        return Err(Error::corrupt(
            path,
            format!("expected a float32 array, found dtype {type_str}"),
        ));
    };
    Tensor::new(&shape, data).map_err(|e| Error::corrupt(path, e.to_string()))
}

/// Writes a tensor as a little-endian float32 C-order array.
pub fn write_f32(path: &Path, t: &Tensor) -> Result<()> {
    let shape: Vec<u64> = t.shape().iter().map(|&d| d as u64).collect();
    let mut buf = Vec::new();
    {
        let mut w = npyz::WriteOptions::<f32>::new()
            .default_dtype()
            .shape(&shape)
            .writer(&mut buf)
            .begin_nd()
            .map_err(|e| Error::io(path, e))?;
        w.extend(t.data().iter().copied())
            .map_err(|e| Error::io(path, e))?;
        w.finish().map_err(|e| Error::io(path, e))?;
    }
    std::fs::write(path, buf).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.npy");
        let t = Tensor::new(&[2, 3], vec![1.0, -2.0, 3.5, 0.0, 1e-8, 7.0]).unwrap();
        write_f32(&p, &t).unwrap();
        assert_eq!(read_f32(&p).unwrap(), t);
        std::fs::write(&p, b"garbage").unwrap();
        assert!(read_f32(&p).is_err());
    }
}
