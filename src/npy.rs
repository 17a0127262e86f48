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
    check_header(bytes).map_err(|m| Error::corrupt(path, format!("not a .npy file: {m}")))?;
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

/// The header dictionary of a `.npy` file is a Python literal that npyz parses with a general
/// backtracking parser, which takes exponential time on nested garbage (found by fuzzing: a
/// 226-byte file took over 30 s). Real headers are one flat dict with one shape tuple: anything
/// else is refused before it reaches that parser.
fn check_header(bytes: &[u8]) -> std::result::Result<(), String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("no .npy magic".into());
    }
    let (len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(format!("unsupported format version {v}")),
    };
    if len > 65_536 || start + len > bytes.len() {
        return Err(format!("header length {len} is out of range"));
    }
    let header = &bytes[start..start + len];
    let count = |c: u8| header.iter().filter(|&&b| b == c).count();
    if !header
        .iter()
        .all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace())
        || count(b'{') != 1
        || count(b'}') != 1
        || count(b'(') > 1
        || count(b')') > 1
        || count(b'[') > 0
    {
        return Err("the header is not a flat dict with one shape tuple".into());
    }
    // The shape's product must be computable and fit the file: npyz multiplies the dimensions
    // unchecked (an overflow there panicked under the fuzzer's debug assertions).
    let text = String::from_utf8_lossy(header);
    if let (Some(open), Some(close)) = (text.find('('), text.find(')')) {
        let mut elems: u64 = 1;
        for d in text[open + 1..close.max(open + 1)]
            .split(',')
            .map(str::trim)
            .filter(|d| !d.is_empty())
        {
            let d: u64 = d
                .parse()
                .map_err(|_| format!("bad dimension `{d}` in the shape"))?;
            elems = elems
                .checked_mul(d)
                .filter(|&n| n <= bytes.len() as u64)
                .ok_or_else(|| "the shape holds more elements than the file".to_string())?;
        }
    }
    Ok(())
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

    fn with_header(h: &str) -> Vec<u8> {
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend((h.len() as u16).to_le_bytes());
        b.extend(h.as_bytes());
        b.extend([0u8; 16]);
        b
    }

    /// Found by the `npy` fuzz target: nested braces in the shape made the header parser run
    /// for more than 30 s; a shape whose product overflows made the reader panic.
    #[test]
    fn nested_header_garbage_is_refused_at_once() {
        let nested = format!(
            "{{'descr': '<i4', 'fortran_order': False, 'shape': (0,{}), }}",
            "{".repeat(70)
        );
        let t = std::time::Instant::now();
        let e = parse_f32(&with_header(&nested), Path::new("x.npy"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("flat dict"), "{e}");
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
        let huge = "{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4, 6555555555555553, 155553, 4, 65553, 1, 6), }";
        let e = parse_f32(&with_header(huge), Path::new("x.npy"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("more elements"), "{e}");
        let ok = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fuzz/seeds/npy/pixels_3x8x8_f4.npy"
        ))
        .unwrap();
        assert_eq!(
            parse_f32(&ok, Path::new("ok.npy")).unwrap().shape(),
            &[3, 8, 8]
        );
    }
}
