//! Calibration sets: the images and prompts activation ranges are measured on.
//!
//! A calibration set `PATH` is either
//!
//! - a directory holding image files (`png`, `jpg`, `jpeg`, `bmp`, `gif`, `webp`, `tif`, `tiff`,
//!   any case; subdirectories are not searched) and optionally `prompts.txt`, one prompt per line
//!   (blank lines skipped). Images are taken in file-name order, prompts in line order. Image `i`
//!   is paired with prompt `i mod P`; prompts left over once every image has one (when there are
//!   more prompts than images) become text-only samples; without prompts every image gets
//!   [`DEFAULT_IMAGE_PROMPT`]. So every image and every prompt is used at least once.
//! - a `.jsonl` file, one sample per line: `{"image": "path", "prompt": "..."}`. `image` is
//!   optional (text-only sample) and relative paths are resolved against the file's directory;
//!   `prompt` is optional when there is an image (then [`DEFAULT_IMAGE_PROMPT`]). A `.npy` image is
//!   taken as an already preprocessed `[3, H, W]` float32 array. Samples keep the file's order;
//!   blank lines are skipped.
//!
//! Every image file must exist when the set is read, so a long calibration run cannot fail on a
//! missing file half-way.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The prompt of image samples that come without one.
pub const DEFAULT_IMAGE_PROMPT: &str = "Describe this image.";

/// File extensions (lowercase) a calibration directory's images may have.
pub const IMAGE_EXTENSIONS: [&str; 8] = ["png", "jpg", "jpeg", "bmp", "gif", "webp", "tif", "tiff"];

/// One calibration input: an optional image and the user prompt that goes with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CalibrationSample {
    pub image: Option<PathBuf>,
    pub prompt: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonlLine {
    #[serde(default)]
    image: Option<PathBuf>,
    #[serde(default)]
    prompt: Option<String>,
}

/// Reads a calibration set (a directory or a `.jsonl` file, see the module documentation).
pub fn read_calibration_set(path: &Path) -> Result<Vec<CalibrationSample>> {
    if !path.exists() {
        return Err(Error::io(
            path,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "calibration set not found (expected a directory of images or a .jsonl file)",
            ),
        ));
    }
    let samples = if path.is_dir() {
        read_dir_set(path)?
    } else if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("jsonl"))
    {
        read_jsonl_set(path)?
    } else {
        return Err(Error::input(format!(
            "{}: a calibration set is a directory of images (plus an optional prompts.txt) or a .jsonl file",
            path.display()
        )));
    };
    if samples.is_empty() {
        return Err(Error::input(format!(
            "{}: the calibration set is empty (no images, no prompts)",
            path.display()
        )));
    }
    Ok(samples)
}

fn is_image_file(p: &Path) -> bool {
    p.is_file()
        && p.extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

fn read_dir_set(dir: &Path) -> Result<Vec<CalibrationSample>> {
    let mut images = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let p = entry.map_err(|e| Error::io(dir, e))?.path();
        if is_image_file(&p) {
            images.push(p);
        }
    }
    // Byte-wise file-name order: the same on every platform and file system.
    images.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    let prompts_path = dir.join("prompts.txt");
    let prompts: Vec<String> = if prompts_path.is_file() {
        crate::files::read_text(&prompts_path, crate::files::limits::TEXT_LIST)?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()
    } else {
        Vec::new()
    };
    let mut samples: Vec<CalibrationSample> = images
        .iter()
        .enumerate()
        .map(|(i, img)| CalibrationSample {
            image: Some(img.clone()),
            prompt: if prompts.is_empty() {
                DEFAULT_IMAGE_PROMPT.to_string()
            } else {
                prompts[i % prompts.len()].clone()
            },
        })
        .collect();
    samples.extend(
        prompts
            .iter()
            .skip(images.len())
            .map(|p| CalibrationSample {
                image: None,
                prompt: p.clone(),
            }),
    );
    Ok(samples)
}

fn read_jsonl_set(path: &Path) -> Result<Vec<CalibrationSample>> {
    let text = crate::files::read_text(path, crate::files::limits::TEXT_LIST)?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut samples = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let lineno = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let entry: JsonlLine = serde_json::from_str(line)
            .map_err(|e| Error::corrupt(path, format!("line {lineno}: {e}")))?;
        let image = entry
            .image
            .map(|p| if p.is_absolute() { p } else { base.join(p) });
        if let Some(img) = &image {
            if !img.is_file() {
                return Err(Error::corrupt(
                    path,
                    format!("line {lineno}: image {} not found", img.display()),
                ));
            }
        }
        let prompt = match (entry.prompt, &image) {
            (Some(p), _) => p,
            (None, Some(_)) => DEFAULT_IMAGE_PROMPT.to_string(),
            (None, None) => {
                return Err(Error::corrupt(
                    path,
                    format!("line {lineno}: a sample needs an `image`, a `prompt` or both"),
                ))
            }
        };
        samples.push(CalibrationSample { image, prompt });
    }
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(path: &Path) {
        image::RgbImage::new(4, 4).save(path).unwrap();
    }

    #[test]
    fn directory_sets_pair_images_and_prompts_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for n in ["b.png", "a.JPG", "c.webp.png"] {
            png(&d.join(n));
        }
        std::fs::write(d.join("notes.md"), "not an image").unwrap();
        std::fs::create_dir(d.join("sub.png")).unwrap(); // a directory, not an image
                                                         // Only images, no prompts: default prompt.
        let s = read_calibration_set(d).unwrap();
        let names: Vec<_> = s
            .iter()
            .map(|x| x.image.as_ref().unwrap().file_name().unwrap().to_owned())
            .collect();
        assert_eq!(names, ["a.JPG", "b.png", "c.webp.png"]);
        assert!(s.iter().all(|x| x.prompt == DEFAULT_IMAGE_PROMPT));
        // Fewer prompts than images: cycled.
        std::fs::write(d.join("prompts.txt"), "first\n\n  second  \n").unwrap();
        let s = read_calibration_set(d).unwrap();
        let prompts: Vec<_> = s.iter().map(|x| x.prompt.as_str()).collect();
        assert_eq!(prompts, ["first", "second", "first"]);
        // More prompts than images: the rest are text-only.
        std::fs::write(d.join("prompts.txt"), "p1\np2\np3\np4\np5\n").unwrap();
        let s = read_calibration_set(d).unwrap();
        assert_eq!(s.len(), 5);
        assert!(s[..3].iter().all(|x| x.image.is_some()));
        assert_eq!(
            s[3],
            CalibrationSample {
                image: None,
                prompt: "p4".into()
            }
        );
        assert_eq!(s[4].prompt, "p5");
        // Deterministic.
        assert_eq!(read_calibration_set(d).unwrap(), s);
    }

    #[test]
    fn text_only_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("prompts.txt"), "hello\nworld\n").unwrap();
        let s = read_calibration_set(dir.path()).unwrap();
        assert_eq!(s.len(), 2);
        assert!(s.iter().all(|x| x.image.is_none()));
    }

    #[test]
    fn jsonl_sets() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("imgs")).unwrap();
        png(&d.join("imgs/x.png"));
        let abs = d.join("abs.png");
        png(&abs);
        let p = d.join("set.jsonl");
        std::fs::write(
            &p,
            format!(
                "{{\"image\": \"imgs/x.png\", \"prompt\": \"What is shown?\"}}\n\n{{\"prompt\": \"text only\"}}\n{{\"image\": {:?}}}\n",
                abs.display().to_string()
            ),
        )
        .unwrap();
        let s = read_calibration_set(&p).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].image.as_deref(), Some(d.join("imgs/x.png").as_path()));
        assert_eq!(s[0].prompt, "What is shown?");
        assert_eq!(s[1].image, None);
        assert_eq!(s[2].image.as_deref(), Some(abs.as_path()));
        assert_eq!(s[2].prompt, DEFAULT_IMAGE_PROMPT);
    }

    #[test]
    fn calibration_set_errors() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // Missing path.
        let e = read_calibration_set(&d.join("missing"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing") && e.contains("not found"), "{e}");
        // Empty directory (an empty prompts.txt does not help).
        let empty = d.join("empty");
        std::fs::create_dir(&empty).unwrap();
        std::fs::write(empty.join("prompts.txt"), "\n\n").unwrap();
        let e = read_calibration_set(&empty).unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
        // Empty JSONL.
        let p = d.join("empty.jsonl");
        std::fs::write(&p, "\n").unwrap();
        let e = read_calibration_set(&p).unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
        // Missing image in JSONL, named, with its line.
        let p = d.join("set.jsonl");
        std::fs::write(
            &p,
            "{\"prompt\": \"ok\"}\n{\"image\": \"ghost.png\", \"prompt\": \"x\"}\n",
        )
        .unwrap();
        let e = read_calibration_set(&p).unwrap_err().to_string();
        assert!(e.contains("ghost.png") && e.contains("line 2"), "{e}");
        // Bad JSON line, numbered.
        std::fs::write(&p, "{\"prompt\": \"ok\"}\n\n{\"prompt\": oops}\n").unwrap();
        let e = read_calibration_set(&p).unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("set.jsonl"), "{e}");
        // Unknown field (a typo) and a line with neither image nor prompt.
        std::fs::write(&p, "{\"images\": \"a.png\"}\n").unwrap();
        let e = read_calibration_set(&p).unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("images"), "{e}");
        std::fs::write(&p, "{}\n").unwrap();
        let e = read_calibration_set(&p).unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
        // Neither a directory nor a .jsonl file.
        let p = d.join("set.txt");
        std::fs::write(&p, "x").unwrap();
        let e = read_calibration_set(&p).unwrap_err().to_string();
        assert!(e.contains("set.txt"), "{e}");
    }
}
