//! Reading files a user hands us: regular files only (a FIFO, a device or a directory would
//! block or read forever), and never more bytes than the kind of file can sensibly hold.

use crate::error::{Error, Result};
use std::fs::File;
use std::io::Read;
use std::path::Path;

const MIB: u64 = 1 << 20;

/// How large each kind of input may be. Generous for real files, small enough that a wrong path
/// (`/dev/zero`, a video, a disk image) fails at once instead of filling memory.
pub mod limits {
    use super::MIB;
    /// `config.json`, `graph.json`, overrides, manifests, calibration statistics.
    pub const JSON: u64 = 64 * MIB;
    /// `tokenizer.json` (real ones are 2-20 MB).
    pub const TOKENIZER: u64 = 256 * MIB;
    /// An encoded image file.
    pub const IMAGE: u64 = 256 * MIB;
    /// A `.npy` tensor (a [3, 4096, 4096] float32 image is 192 MiB).
    pub const NPY: u64 = 512 * MIB;
    /// A dataset split or calibration list (JSONL or text).
    pub const TEXT_LIST: u64 = 1024 * MIB;
}

/// Opens `path` for reading after checking it is a regular file (following symlinks); returns the
/// file and its length.
pub fn open_regular(path: &Path) -> Result<(File, u64)> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        let ft = meta.file_type();
        let what = if ft.is_dir() {
            "a directory"
        } else {
            use std::os::unix::fs::FileTypeExt;
            if ft.is_fifo() {
                "a FIFO"
            } else if ft.is_char_device() || ft.is_block_device() {
                "a device"
            } else if ft.is_socket() {
                "a socket"
            } else {
                "not a file"
            }
        };
        return Err(Error::input(format!(
            "{}: is {what}; expected a regular file",
            path.display()
        )));
    }
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    Ok((file, meta.len()))
}

/// Reads a whole regular file of at most `max` bytes.
pub fn read_bytes(path: &Path, max: u64) -> Result<Vec<u8>> {
    let (file, len) = open_regular(path)?;
    if len > max {
        return Err(too_large(path, len, max));
    }
    let mut buf = Vec::with_capacity(len as usize);
    // `take` bounds a file that grows while it is read.
    file.take(max + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io(path, e))?;
    if buf.len() as u64 > max {
        return Err(too_large(path, buf.len() as u64, max));
    }
    Ok(buf)
}

/// Reads a whole regular UTF-8 text file of at most `max` bytes.
pub fn read_text(path: &Path, max: u64) -> Result<String> {
    let bytes = read_bytes(path, max)?;
    String::from_utf8(bytes).map_err(|e| {
        Error::corrupt(
            path,
            format!(
                "not UTF-8 text (invalid byte at {})",
                e.utf8_error().valid_up_to()
            ),
        )
    })
}

fn too_large(path: &Path, len: u64, max: u64) -> Error {
    Error::input(format!(
        "{}: {} bytes is larger than the {} MiB this kind of file may have",
        path.display(),
        len,
        max / MIB
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_regular_files_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = read_bytes(&fifo, 10).unwrap_err().to_string();
        assert!(e.contains("is a FIFO"), "{e}");
        let e = read_bytes(dir.path(), 10).unwrap_err().to_string();
        assert!(e.contains("is a directory"), "{e}");
        let e = read_bytes(Path::new("/dev/zero"), 10)
            .unwrap_err()
            .to_string();
        assert!(e.contains("is a device"), "{e}");
    }

    #[test]
    fn sizes_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.txt");
        std::fs::write(&p, "hello").unwrap();
        assert_eq!(read_text(&p, 5).unwrap(), "hello");
        assert!(read_text(&p, 4).unwrap_err().to_string().contains("larger"));
        std::fs::write(&p, [0xff, 0xfe]).unwrap();
        assert!(read_text(&p, 5).unwrap_err().to_string().contains("UTF-8"));
    }
}
