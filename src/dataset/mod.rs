//! Procedurally rendered visual-question-answering datasets.
//!
//! [`generate_cockpit`] writes the `cockpit` set (instrument cluster, cabin and road scenes,
//! see [`cockpit`]) as
//!
//! ```text
//! DIR/images/{train,validation,test}/{id:06}.png
//! DIR/{train,validation,test}.jsonl   one {"image","question","answer","type"} per line
//! DIR/dataset.json                    count, seed, size, per-kind and per-type counts, version
//! ```
//!
//! Image `i` (0-based) is drawn from its own ChaCha8 stream (`seed`, stream `i`), so the output
//! is byte-identical for the same arguments however many threads render it. Splits are by
//! image (`i % 10`: 0–7 train, 8 validation, 9 test), so no image is in two splits.
//! [`validate`] checks a directory written by this module (or any set in the same layout).

pub mod cockpit;
pub mod raster;

use crate::error::{Error, Result};
use cockpit::{Scene, SceneKind};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{BufWriter, Write};
use std::path::{Component, Path};

/// Written to `dataset.json`; bump when the rendering or the templates change.
pub const GENERATOR_VERSION: &str = "cockpit-4";
pub const MIN_SIZE: u32 = 64;
pub const MAX_SIZE: u32 = 2048;
/// Image ids are six digits.
pub const MAX_COUNT: usize = 999_999;
pub const SPLITS: [&str; 3] = ["train", "validation", "test"];
const INFO_FILE: &str = "dataset.json";

/// A one-line I/O error naming the action and the path (the message already holds the OS
/// error, so it is not repeated as a cause).
fn io_error(action: &str, path: &Path, e: std::io::Error) -> Error {
    Error::input(format!("{action} {}: {e}", path.display()))
}

/// The split of image `i`: 80/10/10 by `i % 10`.
pub fn split_of(i: usize) -> &'static str {
    match i % 10 {
        8 => "validation",
        9 => "test",
        _ => "train",
    }
}

/// The scene kind of image `i` (round robin).
pub fn kind_of(i: usize) -> SceneKind {
    SceneKind::ALL[i % SceneKind::ALL.len()]
}

/// The scene of image `i` for a seed.
pub fn scene_of(seed: u64, i: usize) -> Scene {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(i as u64);
    Scene::sample(kind_of(i), &mut rng)
}

/// One JSONL line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub image: String,
    pub question: String,
    pub answer: String,
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub count: usize,
    pub seed: u64,
    /// Square image side in pixels.
    pub size: u32,
    /// Replace a dataset already in the output directory.
    pub force: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            count: 1000,
            seed: 0,
            size: 256,
            force: false,
        }
    }
}

/// `dataset.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DatasetInfo {
    pub name: String,
    pub generator_version: String,
    pub count: usize,
    pub seed: u64,
    pub size: u32,
    /// Images per split.
    pub splits: BTreeMap<String, usize>,
    /// Images per scene kind.
    pub scene_kinds: BTreeMap<String, usize>,
    /// Questions per question type.
    pub question_types: BTreeMap<String, usize>,
}

/// What [`validate`] (and [`generate_cockpit`]) found.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DatasetSummary {
    /// Images per split.
    pub images: BTreeMap<String, usize>,
    /// Questions per split.
    pub questions: BTreeMap<String, usize>,
    /// Answer counts per question type.
    pub answers: BTreeMap<String, BTreeMap<String, usize>>,
}

impl DatasetSummary {
    pub fn total_images(&self) -> usize {
        self.images.values().sum()
    }

    pub fn total_questions(&self) -> usize {
        self.questions.values().sum()
    }

    /// Accuracy of always answering the most common answer of a question type.
    pub fn majority_baseline(&self, kind: &str) -> Option<f64> {
        let counts = self.answers.get(kind)?;
        let total: usize = counts.values().sum();
        let best = counts.values().max()?;
        Some(*best as f64 / total.max(1) as f64)
    }

    fn add(&mut self, split: &str, r: &Record) {
        *self.questions.entry(split.into()).or_default() += 1;
        *self
            .answers
            .entry(r.kind.clone())
            .or_default()
            .entry(r.answer.clone())
            .or_default() += 1;
    }
}

fn check_options(opts: &GenerateOptions) -> Result<()> {
    if opts.count == 0 {
        return Err(Error::input("--count must be at least 1"));
    }
    if opts.count > MAX_COUNT {
        return Err(Error::input(format!(
            "--count {} is too large (at most {MAX_COUNT})",
            opts.count
        )));
    }
    if !(MIN_SIZE..=MAX_SIZE).contains(&opts.size) {
        return Err(Error::input(format!(
            "--size {} is out of range ({MIN_SIZE}..={MAX_SIZE})",
            opts.size
        )));
    }
    Ok(())
}

/// Disk space a generated set takes: the rendered scenes' PNGs are about three fifths of their
/// raw RGB size (~115 KB per 256 px image), plus ~1 KB of JSONL per image.
fn estimated_bytes(opts: &GenerateOptions) -> u64 {
    let raw = 3 * opts.size as u64 * opts.size as u64;
    opts.count as u64 * (raw * 3 / 5 + 1024)
}

fn write_png(path: &Path, img: &image::RgbImage) -> Result<()> {
    let file = fs::File::create(path).map_err(|e| io_error("creating", path, e))?;
    let mut w = BufWriter::new(file);
    img.write_to(&mut w, image::ImageFormat::Png)
        .map_err(|e| Error::Image {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
    w.flush().map_err(|e| io_error("writing", path, e))
}

/// Renders and writes the cockpit set; see the module docs for the layout.
pub fn generate_cockpit(out: &Path, opts: &GenerateOptions) -> Result<DatasetSummary> {
    generate_cockpit_with_progress(out, opts, &|| {})
}

/// [`generate_cockpit`], calling `tick` once per written image (from any thread).
pub fn generate_cockpit_with_progress(
    out: &Path,
    opts: &GenerateOptions,
    tick: &(dyn Fn() + Sync),
) -> Result<DatasetSummary> {
    check_options(opts)?;
    // Written into a temporary sibling and moved into place when complete; a non-empty `out` is
    // refused unless `force`, and then only files an earlier autoneural output listed are
    // replaced (see `files::output`).
    let staged = crate::files::OutputDir::begin(out, "dataset cockpit", &[], opts.force)?;
    crate::files::check_space(
        out,
        estimated_bytes(opts),
        &format!("a {}-image dataset", opts.count),
    )?;
    let final_out = out;
    let out = staged.path();
    for split in SPLITS {
        let d = out.join("images").join(split);
        fs::create_dir_all(&d).map_err(|e| io_error("creating directory", &d, e))?;
    }
    let per_image: Vec<(SceneKind, Vec<Record>)> = (0..opts.count)
        .into_par_iter()
        .map(|i| {
            let scene = scene_of(opts.seed, i);
            let rel = format!("images/{}/{:06}.png", split_of(i), i + 1);
            write_png(&out.join(&rel), &scene.render(opts.size))?;
            tick();
            let records = scene
                .questions()
                .into_iter()
                .map(|q| Record {
                    image: rel.clone(),
                    question: q.question,
                    answer: q.answer,
                    kind: q.kind.to_string(),
                })
                .collect();
            Ok((scene.kind(), records))
        })
        .collect::<Result<_>>()?;

    let mut summary = DatasetSummary::default();
    let mut info = DatasetInfo {
        name: "cockpit".into(),
        generator_version: GENERATOR_VERSION.into(),
        count: opts.count,
        seed: opts.seed,
        size: opts.size,
        splits: BTreeMap::new(),
        scene_kinds: BTreeMap::new(),
        question_types: BTreeMap::new(),
    };
    for split in SPLITS {
        summary.images.insert(split.into(), 0);
        summary.questions.insert(split.into(), 0);
        info.splits.insert(split.into(), 0);
    }
    let mut lines: BTreeMap<&str, String> = SPLITS.iter().map(|s| (*s, String::new())).collect();
    for (i, (kind, records)) in per_image.iter().enumerate() {
        let split = split_of(i);
        *summary.images.entry(split.into()).or_default() += 1;
        *info.splits.entry(split.into()).or_default() += 1;
        *info.scene_kinds.entry(kind.name().into()).or_default() += 1;
        let buf = lines.entry(split).or_default();
        for r in records {
            summary.add(split, r);
            *info.question_types.entry(r.kind.clone()).or_default() += 1;
            let line = serde_json::to_string(r).map_err(|e| Error::input(e.to_string()))?;
            buf.push_str(&line);
            buf.push('\n');
        }
    }
    for (split, text) in &lines {
        let p = out.join(format!("{split}.jsonl"));
        fs::write(&p, text).map_err(|e| io_error("writing", &p, e))?;
    }
    let p = out.join(INFO_FILE);
    let mut json = serde_json::to_string_pretty(&info).map_err(|e| Error::input(e.to_string()))?;
    json.push('\n');
    fs::write(&p, json).map_err(|e| io_error("writing", &p, e))?;
    staged.commit()?;
    debug_assert!(final_out.join(INFO_FILE).is_file());
    Ok(summary)
}

/// One JSONL line as a [`Record`] (`None` for a blank line): question, answer and type
/// non-empty, image path relative and inside the dataset.
fn parse_line(path: &Path, n: usize, line: &str) -> Result<Option<Record>> {
    if line.trim().is_empty() {
        return Ok(None);
    }
    let bad = |msg: String| Error::corrupt(path, format!("line {}: {msg}", n + 1));
    let r: Record = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
    if r.answer.trim().is_empty() {
        return Err(bad("empty answer".into()));
    }
    if r.question.trim().is_empty() {
        return Err(bad("empty question".into()));
    }
    if r.kind.trim().is_empty() {
        return Err(bad("empty type".into()));
    }
    let rel = Path::new(&r.image);
    if r.image.is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(bad(format!(
            "image path `{}` must be relative and inside the dataset",
            r.image
        )));
    }
    Ok(Some(r))
}

/// Reads `{split}.jsonl` of a dataset directory (the layout [`generate_cockpit`] writes): every
/// line a [`Record`] with a non-empty question and answer and a relative image path inside
/// `dir` that exists. Images are not decoded here (see [`validate`]).
pub fn read_split(dir: &Path, split: &str) -> Result<Vec<Record>> {
    if !SPLITS.contains(&split) {
        return Err(Error::input(format!(
            "unknown split `{split}` (expected one of {})",
            SPLITS.join(", ")
        )));
    }
    let path = dir.join(format!("{split}.jsonl"));
    let text = crate::files::read_text(&path, crate::files::limits::TEXT_LIST)?;
    let mut records = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let Some(r) = parse_line(&path, n, line)? else {
            continue;
        };
        if !dir.join(&r.image).is_file() {
            return Err(Error::corrupt(
                &path,
                format!(
                    "line {}: image {} not found",
                    n + 1,
                    dir.join(&r.image).display()
                ),
            ));
        }
        records.push(r);
    }
    if records.is_empty() {
        return Err(Error::input(format!(
            "{}: the split has no questions",
            path.display()
        )));
    }
    Ok(records)
}

/// Checks a dataset directory: every `{split}.jsonl` line parses as a [`Record`] with a
/// non-empty question and answer, every image path is relative, stays inside `dir`, exists
/// and decodes, no image appears in two splits, and `dataset.json` (when present) agrees with
/// the number of images.
pub fn validate(dir: &Path) -> Result<DatasetSummary> {
    if !dir.is_dir() {
        return Err(Error::input(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    let mut summary = DatasetSummary::default();
    let mut owner: HashMap<String, &str> = HashMap::new();
    for split in SPLITS {
        let path = dir.join(format!("{split}.jsonl"));
        let text = crate::files::read_text(&path, crate::files::limits::TEXT_LIST)?;
        summary.images.insert(split.into(), 0);
        summary.questions.insert(split.into(), 0);
        for (n, line) in text.lines().enumerate() {
            let bad = |msg: String| Error::corrupt(&path, format!("line {}: {msg}", n + 1));
            let Some(r) = parse_line(&path, n, line)? else {
                continue;
            };
            match owner.get(&r.image) {
                Some(&other) if other != split => {
                    return Err(bad(format!(
                        "image {} is also in the {other} split",
                        r.image
                    )));
                }
                Some(_) => {}
                None => {
                    owner.insert(r.image.clone(), split);
                    *summary.images.entry(split.into()).or_default() += 1;
                }
            }
            summary.add(split, &r);
        }
    }
    // Decode every distinct image once, in parallel.
    let mut images: Vec<&String> = owner.keys().collect();
    images.sort();
    images.par_iter().try_for_each(|rel| {
        let p = dir.join(rel);
        let bytes = crate::files::read_bytes(&p, crate::files::limits::IMAGE)?;
        crate::preprocess::decode_image(&bytes).map_err(|msg| Error::Image {
            path: p.clone(),
            msg,
        })?;
        Ok::<(), Error>(())
    })?;
    let info_path = dir.join(INFO_FILE);
    if info_path.exists() {
        let text = crate::files::read_text(&info_path, crate::files::limits::JSON)?;
        let info: DatasetInfo =
            serde_json::from_str(&text).map_err(|e| Error::corrupt(&info_path, e.to_string()))?;
        if info.count != summary.total_images() {
            return Err(Error::corrupt(
                &info_path,
                format!(
                    "count is {} but the splits reference {} images",
                    info.count,
                    summary.total_images()
                ),
            ));
        }
    }
    Ok(summary)
}
