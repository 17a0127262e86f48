//! Shared by the multi-file targets: one fuzz input holds several files, separated by
//! [`SEP`]; they are written into a fresh directory (on tmpfs when there is one) that the
//! loader under test reads.

use std::path::Path;

/// Separates the files of one input (`fuzz/run.sh` builds the seeds with it).
pub const SEP: &[u8] = b"\n\x00--autoneural-fuzz-file--\x00\n";

/// Splits `data` into exactly `n` files (missing ones are empty, extra separators stay in the
/// last file).
pub fn split(data: &[u8], n: usize) -> Vec<&[u8]> {
    let mut parts = Vec::with_capacity(n);
    let mut rest = data;
    while parts.len() + 1 < n {
        match rest.windows(SEP.len()).position(|w| w == SEP) {
            Some(i) => {
                parts.push(&rest[..i]);
                rest = &rest[i + SEP.len()..];
            }
            None => break,
        }
    }
    parts.push(rest);
    parts.resize(n, &[][..]);
    parts
}

/// A temporary directory holding `files` (name, bytes); empty files are left out, so a
/// missing file is one of the cases.
pub fn write_dir(files: &[(&str, &[u8])]) -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .expect("temporary directory");
    for (name, bytes) in files {
        if !bytes.is_empty() {
            std::fs::write(dir.path().join(name), bytes).expect("write fuzz file");
        }
    }
    dir
}
