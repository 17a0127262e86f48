//! Outputs that never cost a user a file.
//!
//! Every command that writes goes through here, under four rules:
//! 1. An output may not be, contain or lie inside one of the command's inputs (after resolving
//!    symlinks), so `quantize --out MODEL_DIR` cannot clobber the model it reads.
//! 2. An existing non-empty directory is refused unless `--force`. With `--force`, only what
//!    autoneural itself wrote there (the files its manifest, [`MANIFEST`], lists) is replaced or
//!    deleted; a file of the user's in the way of an output is an error, never overwritten.
//! 3. Everything is written into a hidden temporary sibling first and renamed into place when
//!    complete, so a failure or a kill never leaves a half-written artifact where a good one was.
//! 4. Single files ([`write_file`]) are not overwritten unless `--force`, and are replaced by a
//!    rename too.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fs;
use std::path::{Component, Path, PathBuf};

/// The manifest every output directory gets: which files autoneural wrote there.
pub const MANIFEST: &str = ".autoneural-manifest.json";

#[derive(Serialize, Deserialize, Debug, Default)]
struct Manifest {
    /// The command that wrote the directory (`quantize`, `dump`, `dataset cockpit`).
    kind: String,
    /// Files written, relative to the directory, `/`-separated.
    files: Vec<String>,
}

/// A directory output being written: write into [`OutputDir::path`], then [`OutputDir::commit`].
/// Dropped without a commit, it removes its temporary directory and leaves the destination as it
/// was.
pub struct OutputDir {
    dest: PathBuf,
    staging: PathBuf,
    kind: String,
    /// The destination's manifest when it already held an autoneural output (with `--force`).
    previous: Option<Manifest>,
    committed: bool,
}

impl OutputDir {
    /// Checks `dest` against the rules above and creates the temporary directory.
    pub fn begin(dest: &Path, kind: &str, inputs: &[&Path], force: bool) -> Result<Self> {
        check_not_input(dest, inputs)?;
        let mut previous = None;
        match fs::symlink_metadata(dest) {
            Ok(m) if m.is_dir() || (m.file_type().is_symlink() && dest.is_dir()) => {
                if !dir_is_empty(dest)? {
                    let manifest = read_manifest(dest)?;
                    if !force {
                        let what = match &manifest {
                            Some(m) => format!("an earlier `{}` output", m.kind),
                            None => "files autoneural did not write".to_string(),
                        };
                        return Err(Error::input(format!(
                            "output directory {} is not empty (it holds {what}); choose another \
                             directory or pass --force to replace what autoneural wrote there",
                            dest.display()
                        )));
                    }
                    previous = Some(manifest.unwrap_or_default());
                }
            }
            Ok(_) => {
                return Err(Error::input(format!(
                    "output {} exists and is not a directory",
                    dest.display()
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(dest, e)),
        }
        let parent = parent_of(dest);
        fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
        let staging = temp_sibling(dest);
        fs::create_dir(&staging).map_err(|e| Error::io(&staging, e))?;
        Ok(Self {
            dest: dest.to_path_buf(),
            staging,
            kind: kind.to_string(),
            previous,
            committed: false,
        })
    }

    /// Where to write the output's files (the temporary directory until [`Self::commit`]).
    pub fn path(&self) -> &Path {
        &self.staging
    }

    /// The final destination.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Moves the written files into the destination and writes its manifest. Before anything
    /// moves, refuses (leaving the destination untouched) when a file it would replace is not
    /// one autoneural wrote.
    pub fn commit(mut self) -> Result<PathBuf> {
        let files = list_files(&self.staging)?;
        let manifest = Manifest {
            kind: self.kind.clone(),
            files: files.clone(),
        };
        let text = serde_json::to_string_pretty(&manifest)
            .map_err(|e| Error::input(format!("manifest: {e}")))?;
        let Some(previous) = self.previous.take() else {
            // A new (or empty) destination: one rename moves the whole output into place.
            write_in(&self.staging, MANIFEST, text.as_bytes())?;
            if self.dest.is_dir() {
                // An empty directory (or a symlink to one): rename the files into it instead.
                move_files(&self.staging, &self.dest, &files)?;
                write_replacing(&self.dest.join(MANIFEST), text.as_bytes())?;
            } else {
                fs::rename(&self.staging, &self.dest).map_err(|e| Error::io(&self.dest, e))?;
            }
            self.committed = true;
            return Ok(self.dest.clone());
        };
        let ours: BTreeSet<&str> = previous.files.iter().map(String::as_str).collect();
        // The usual case, a directory holding only an earlier output of ours: swap the two
        // directories in one atomic step, so a kill leaves either the old output or the new.
        let present = list_files(&self.dest)?;
        let is_link = fs::symlink_metadata(&self.dest).is_ok_and(|m| m.file_type().is_symlink());
        if !is_link && present.iter().all(|f| ours.contains(f.as_str())) {
            write_in(&self.staging, MANIFEST, text.as_bytes())?;
            if exchange(&self.staging, &self.dest).is_ok() {
                self.committed = true;
                let _ = fs::remove_dir_all(&self.staging); // now the old output
                return Ok(self.dest.clone());
            }
            // No atomic exchange on this filesystem: fall through to file-by-file renames.
            let _ = fs::remove_file(self.staging.join(MANIFEST));
        }
        for f in &files {
            let target = self.dest.join(f);
            if fs::symlink_metadata(&target).is_ok() && !ours.contains(f.as_str()) {
                return Err(Error::input(format!(
                    "{} exists and autoneural did not write it; move it away (nothing was changed)",
                    target.display()
                )));
            }
        }
        // The old manifest goes first: if the process dies halfway, the directory no longer
        // claims files it may not hold, and the new manifest arrives last.
        let old_manifest = self.dest.join(MANIFEST);
        if old_manifest.exists() {
            fs::remove_file(&old_manifest).map_err(|e| Error::io(&old_manifest, e))?;
        }
        let new: BTreeSet<&str> = files.iter().map(String::as_str).collect();
        for f in previous.files.iter().filter(|f| !new.contains(f.as_str())) {
            if !is_plain_relative(f) {
                continue; // a hand-edited manifest never reaches outside the directory
            }
            let p = self.dest.join(f);
            if fs::symlink_metadata(&p)
                .map(|m| m.is_file())
                .unwrap_or(false)
            {
                fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
                remove_empty_parents(&self.dest, &p);
            }
        }
        move_files(&self.staging, &self.dest, &files)?;
        write_replacing(&self.dest.join(MANIFEST), text.as_bytes())?;
        self.committed = true;
        let _ = fs::remove_dir_all(&self.staging);
        Ok(self.dest.clone())
    }
}

impl Drop for OutputDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.staging);
        }
    }
}

/// Free bytes for an unprivileged writer on the filesystem that holds `path` (or its nearest
/// existing ancestor); `None` when it cannot be asked.
pub fn available_space(path: &Path) -> Option<u64> {
    let mut p = resolve(path).ok()?;
    while fs::metadata(&p).is_err() {
        if !p.pop() {
            return None;
        }
    }
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a properly sized out-parameter.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Refuses an output estimated at `need` bytes where the filesystem has less free space.
pub fn check_space(dest: &Path, need: u64, what: &str) -> Result<()> {
    match available_space(dest) {
        Some(free) if need > free => Err(Error::input(format!(
            "{what} needs about {:.1} GB but only {:.1} GB are free at {}",
            need as f64 / 1e9,
            free as f64 / 1e9,
            dest.display()
        ))),
        _ => Ok(()),
    }
}

/// Writes one output file: refuses an input or (without `force`) an existing file, writes a
/// temporary sibling and renames it into place.
pub fn write_file(dest: &Path, bytes: &[u8], inputs: &[&Path], force: bool) -> Result<()> {
    check_not_input(dest, inputs)?;
    match fs::symlink_metadata(dest) {
        Ok(m) if m.is_dir() => {
            return Err(Error::input(format!(
                "output {} is a directory",
                dest.display()
            )))
        }
        Ok(_) if !force => {
            return Err(Error::input(format!(
                "output {} already exists; pass --force to replace it",
                dest.display()
            )))
        }
        _ => {}
    }
    write_replacing(dest, bytes)
}

/// Refuses a destination that is, contains or lies inside one of `inputs`.
pub fn check_not_input(dest: &Path, inputs: &[&Path]) -> Result<()> {
    let d = resolve(dest)?;
    for input in inputs {
        let Ok(i) = fs::canonicalize(input) else {
            continue; // an input that does not exist cannot be overwritten
        };
        let how = if d == i {
            "is"
        } else if i.starts_with(&d) {
            "contains"
        } else if d.starts_with(&i) {
            "lies inside"
        } else {
            continue;
        };
        return Err(Error::input(format!(
            "output {} {how} the input {}; choose an output outside the inputs",
            dest.display(),
            input.display()
        )));
    }
    Ok(())
}

/// The absolute path `p` names with every symlink resolved, also when its last components do not
/// exist yet (they are appended to the resolved deepest existing ancestor).
fn resolve(p: &Path) -> Result<PathBuf> {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| Error::io(".", e))?
            .join(p)
    };
    let mut existing = abs.clone();
    let mut rest: Vec<std::ffi::OsString> = Vec::new();
    loop {
        if let Ok(mut out) = fs::canonicalize(&existing) {
            for part in rest.iter().rev() {
                if part == ".." {
                    out.pop();
                } else if part != "." {
                    out.push(part);
                }
            }
            return Ok(out);
        }
        let Some(last) = existing.components().next_back() else {
            return Ok(abs);
        };
        rest.push(last.as_os_str().to_os_string());
        if !existing.pop() {
            return Ok(abs);
        }
    }
}

fn parent_of(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A fresh hidden name beside `dest` (same filesystem, so the final rename is atomic).
fn temp_sibling(dest: &Path) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    parent_of(dest).join(format!(
        ".{name}.autoneural-tmp-{}-{nanos}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ))
}

fn dir_is_empty(d: &Path) -> Result<bool> {
    let mut it = fs::read_dir(d).map_err(|e| Error::io(d, e))?;
    Ok(it.next().is_none())
}

fn read_manifest(d: &Path) -> Result<Option<Manifest>> {
    let p = d.join(MANIFEST);
    match fs::read(&p) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::corrupt(&p, format!("not an autoneural manifest: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(&p, e)),
    }
}

/// Files under `root`, relative, `/`-separated, sorted.
fn list_files(root: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).map_err(|e| Error::io(&d, e))? {
            let e = e.map_err(|e| Error::io(&d, e))?;
            let p = e.path();
            let t = e.file_type().map_err(|e| Error::io(&p, e))?;
            if t.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(root).expect("under root");
                let parts: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                out.push(parts.join("/"));
            }
        }
    }
    out.retain(|f| f != MANIFEST);
    out.sort();
    Ok(out)
}

fn is_plain_relative(f: &str) -> bool {
    let p = Path::new(f);
    !f.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)))
}

fn move_files(from: &Path, to: &Path, files: &[String]) -> Result<()> {
    for f in files {
        let (src, dst) = (from.join(f), to.join(f));
        if let Some(parent) = dst.parent() {
            fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        fs::rename(&src, &dst).map_err(|e| Error::io(&dst, e))?;
    }
    Ok(())
}

/// Removes the now-empty directories between `p` and `root` (never `root` itself).
fn remove_empty_parents(root: &Path, p: &Path) {
    let mut d = p.parent();
    while let Some(dir) = d {
        if dir == root || !dir.starts_with(root) || fs::remove_dir(dir).is_err() {
            break;
        }
        d = dir.parent();
    }
}

/// Atomically swaps two directory entries (Linux `renameat2(RENAME_EXCHANGE)`).
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let ca = std::ffi::CString::new(a.as_os_str().as_bytes())?;
    let cb = std::ffi::CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: two NUL-terminated paths relative to the working directory.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_: &Path, _: &Path) -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
}

fn write_in(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let p = dir.join(name);
    fs::write(&p, bytes).map_err(|e| Error::io(&p, e))
}

/// Writes `bytes` to a temporary sibling of `dest` and renames it over `dest`.
fn write_replacing(dest: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_sibling(dest);
    let r = fs::write(&tmp, bytes).and_then(|_| fs::rename(&tmp, dest));
    if let Err(e) = r {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(dest, e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(d: &Path) -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<_> = list_files(d)
            .unwrap()
            .into_iter()
            .map(|f| {
                let b = fs::read(d.join(&f)).unwrap();
                (f, b)
            })
            .collect();
        v.sort();
        v
    }

    fn write_output(dest: &Path, force: bool, files: &[(&str, &str)]) -> Result<PathBuf> {
        let out = OutputDir::begin(dest, "test", &[], force)?;
        for (f, text) in files {
            let p = out.path().join(f);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, text).unwrap();
        }
        out.commit()
    }

    #[test]
    fn new_output_appears_complete_with_its_manifest() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("out");
        write_output(&dest, false, &[("a.txt", "a"), ("sub/b.txt", "b")]).unwrap();
        assert_eq!(fs::read_to_string(dest.join("sub/b.txt")).unwrap(), "b");
        let m = read_manifest(&dest).unwrap().unwrap();
        assert_eq!(m.files, ["a.txt", "sub/b.txt"]);
        // Only the destination is left beside it: no temporary directory.
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1);
    }

    #[test]
    fn an_unfinished_output_leaves_nothing_behind() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("out");
        let out = OutputDir::begin(&dest, "test", &[], false).unwrap();
        fs::write(out.path().join("half"), "x").unwrap();
        drop(out); // an error before the commit
        assert!(!dest.exists());
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_users_directory_is_refused_and_with_force_only_our_files_change() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("out");
        fs::create_dir(&dest).unwrap();
        fs::write(dest.join("notes.md"), "mine").unwrap();
        let e = write_output(&dest, false, &[("a.txt", "a")]).unwrap_err();
        assert!(e.to_string().contains("--force"), "{e}");
        // --force: our files are added beside the user's, which stays as it was.
        write_output(&dest, true, &[("a.txt", "a"), ("old.txt", "o")]).unwrap();
        assert_eq!(fs::read_to_string(dest.join("notes.md")).unwrap(), "mine");
        // A file of ours from the last run that this run does not write is removed; one of the
        // user's in the way of an output is an error and nothing changes.
        write_output(&dest, true, &[("a.txt", "a2")]).unwrap();
        assert!(!dest.join("old.txt").exists());
        let before = snapshot(&dest);
        let e = write_output(&dest, true, &[("a.txt", "a3"), ("notes.md", "x")]).unwrap_err();
        assert!(e.to_string().contains("did not write"), "{e}");
        assert_eq!(snapshot(&dest), before);
        // Without --force even our own earlier output is kept.
        let e = write_output(&dest, false, &[("a.txt", "a4")]).unwrap_err();
        assert!(e.to_string().contains("earlier `test` output"), "{e}");
        assert_eq!(snapshot(&dest), before);
    }

    #[test]
    fn replacing_our_own_output_swaps_it_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("out");
        write_output(&dest, false, &[("a.txt", "1"), ("b/c.txt", "1")]).unwrap();
        write_output(&dest, true, &[("a.txt", "2")]).unwrap();
        assert_eq!(fs::read_to_string(dest.join("a.txt")).unwrap(), "2");
        assert!(!dest.join("b").exists());
        assert_eq!(read_manifest(&dest).unwrap().unwrap().files, ["a.txt"]);
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_manifest_cannot_reach_outside_its_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("out");
        fs::create_dir(&dest).unwrap();
        fs::write(tmp.path().join("precious"), "p").unwrap();
        fs::write(
            dest.join(MANIFEST),
            r#"{"kind": "x", "files": ["../precious", "/etc/hostname"]}"#,
        )
        .unwrap();
        write_output(&dest, true, &[("a.txt", "a")]).unwrap();
        assert_eq!(
            fs::read_to_string(tmp.path().join("precious")).unwrap(),
            "p"
        );
    }

    #[test]
    fn outputs_that_are_in_or_around_an_input_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let model = tmp.path().join("model");
        fs::create_dir(&model).unwrap();
        fs::write(model.join("config.json"), "{}").unwrap();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&model, &link).unwrap();
        for (dest, how) in [
            (model.clone(), "is"),
            (link.clone(), "is"),
            (tmp.path().to_path_buf(), "contains"),
            (model.join("q"), "lies inside"),
            (link.join("q/../r"), "lies inside"),
            (model.join("config.json"), "lies inside"),
        ] {
            let e = check_not_input(&dest, &[&model]).unwrap_err().to_string();
            assert!(e.contains(how), "{}: {e}", dest.display());
        }
        check_not_input(&tmp.path().join("elsewhere"), &[&model]).unwrap();
        let e = write_file(&model.join("config.json"), b"x", &[&model], true).unwrap_err();
        assert!(e.to_string().contains("input"), "{e}");
        assert_eq!(fs::read_to_string(model.join("config.json")).unwrap(), "{}");
    }

    #[test]
    fn single_files_are_not_overwritten_without_force() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("chart.svg");
        write_file(&p, b"1", &[], false).unwrap();
        assert!(write_file(&p, b"2", &[], false).is_err());
        assert_eq!(fs::read(&p).unwrap(), b"1");
        write_file(&p, b"3", &[], true).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"3");
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1);
    }
}
