//! `autoneural eval`: the JSON report holds what it documents, its answers are the ones `run`
//! gives, the majority baseline is the train split's most common answer per type, and bad input
//! fails with one clear error line.

mod common;

use autoneural::dataset::{self, GenerateOptions, Record};
use common::assert_fails_with;
use common::{arg as s, repo_root as root, run_cli as run};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

fn model() -> String {
    s(&root().join("models/autoneural-tiny-random"))
}

fn make_dataset(dir: &Path) {
    let opts = GenerateOptions {
        count: 40,
        seed: 11,
        ..GenerateOptions::default()
    };
    dataset::generate_cockpit(dir, &opts).unwrap();
}

#[test]
fn json_report_matches_run_and_the_majority_baseline() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = tmp.path().join("ds");
    make_dataset(&ds);
    let out = run(&[
        "eval",
        "--model",
        &model(),
        "--dataset",
        &s(&ds),
        "--precision",
        "float",
        "--precision",
        "default",
        "--limit",
        "6",
        "--show-errors",
        "6",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["questions"], 6);
    assert_eq!(v["split"], "test");
    for p in ["float", "default"] {
        let a = v["accuracy"][p].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&a), "{p}: {a}");
    }

    // The majority baseline, recomputed here from the files.
    let test: Vec<Record> = dataset::read_split(&ds, "test").unwrap()[..6].to_vec();
    let train = dataset::read_split(&ds, "train").unwrap();
    let mut counts: BTreeMap<&str, BTreeMap<&str, usize>> = BTreeMap::new();
    for r in &train {
        *counts
            .entry(&r.kind)
            .or_default()
            .entry(&r.answer)
            .or_default() += 1;
    }
    let mut hits = 0;
    let per_type = v["per_type"].as_object().unwrap();
    let mut total = 0;
    for (kind, entry) in per_type {
        let answers = &counts[kind.as_str()];
        let best = answers.values().max().unwrap();
        let majority = answers.iter().find(|(_, c)| *c == best).unwrap().0;
        assert_eq!(entry["majority_answer"], *majority, "{kind}");
        let n = test.iter().filter(|r| &r.kind == kind).count();
        let h = test
            .iter()
            .filter(|r| &r.kind == kind && r.answer == *majority)
            .count();
        assert_eq!(entry["questions"], n);
        assert!((entry["majority_baseline"].as_f64().unwrap() - h as f64 / n as f64).abs() < 1e-12);
        assert!(entry["float"].as_f64().is_some() && entry["default"].as_f64().is_some());
        hits += h;
        total += n;
    }
    assert_eq!(total, 6);
    assert!((v["majority_baseline"].as_f64().unwrap() - hits as f64 / 6.0).abs() < 1e-12);

    // Agreement with float: the random-weight model gets all six wrong at both precisions, so
    // both error lists hold every answer and the share of identical answers follows from them.
    let (fw, dw) = (
        v["errors"]["float"].as_array().unwrap(),
        v["errors"]["default"].as_array().unwrap(),
    );
    assert_eq!((fw.len(), dw.len()), (6, 6));
    let same = fw
        .iter()
        .zip(dw)
        .filter(|(a, b)| {
            assert_eq!(a["question"], b["question"]);
            a["got"] == b["got"]
        })
        .count();
    let agreement = v["agreement_with_float"]["default"].as_f64().unwrap();
    assert!(
        (agreement - same as f64 / 6.0).abs() < 1e-12,
        "{agreement} vs {same}/6"
    );
    assert!(v["agreement_with_float"].get("float").is_none());

    // Every wrong answer is exactly what `run` prints for that image and question.
    let wrong = v["errors"]["float"].as_array().unwrap();
    let acc = v["accuracy"]["float"].as_f64().unwrap();
    assert_eq!(wrong.len(), 6 - (acc * 6.0).round() as usize);
    for w in wrong.iter().take(2) {
        let image = ds.join(w["image"].as_str().unwrap());
        let out = run(&[
            "run",
            "--model",
            &model(),
            "--image",
            &s(&image),
            "--prompt",
            w["question"].as_str().unwrap(),
            "--max-tokens",
            "32",
        ]);
        assert!(out.status.success());
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            w["got"].as_str().unwrap()
        );
    }
}

#[test]
fn table_output_lists_every_type_and_precision() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = tmp.path().join("ds");
    make_dataset(&ds);
    let out = run(&[
        "eval",
        "--model",
        &model(),
        "--dataset",
        &s(&ds),
        "--precision",
        "float",
        "--limit",
        "4",
    ]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("majority") && text.contains("float"),
        "{text}"
    );
    assert!(text.lines().any(|l| l.starts_with("all ")), "{text}");
}

#[test]
fn bad_input_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = tmp.path().join("ds");
    make_dataset(&ds);
    let m = model();
    let d = s(&ds);
    let missing = s(&tmp.path().join("nope"));
    assert_fails_with(
        &run(&["eval", "--model", &m, "--dataset", &missing]),
        "test split",
    );
    assert_fails_with(
        &run(&["eval", "--model", &m, "--dataset", &d, "--split", "dev"]),
        "unknown split",
    );
    assert_fails_with(
        &run(&[
            "eval",
            "--model",
            &m,
            "--dataset",
            &d,
            "--precision",
            "w3a5",
        ]),
        "--precision w3a5",
    );
    assert_fails_with(
        &run(&["eval", "--model", &m, "--dataset", &d, "--limit", "0"]),
        "--limit",
    );
    // A missing image is reported before any evaluation starts.
    std::fs::remove_file(ds.join("images/test/000010.png")).unwrap();
    assert_fails_with(
        &run(&["eval", "--model", &m, "--dataset", &d]),
        "000010.png",
    );
}

#[test]
fn a_quantized_directory_is_evaluated_as_is() {
    let tmp = tempfile::tempdir().unwrap();
    let ds = tmp.path().join("ds");
    make_dataset(&ds);
    let q = tmp.path().join("q");
    let calib = ds.join("images/train");
    let out = run(&[
        "quantize",
        "--model",
        &model(),
        "--calibration",
        &s(&calib),
        "--out",
        &s(&q),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&[
        "eval",
        "--model",
        &s(&q),
        "--dataset",
        &s(&ds),
        "--limit",
        "3",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let acc = v["accuracy"].as_object().unwrap();
    assert_eq!(acc.len(), 1, "{v}");
    assert_fails_with(
        &run(&[
            "eval",
            "--model",
            &s(&q),
            "--dataset",
            &s(&ds),
            "--precision",
            "w8a8",
        ]),
        "already quantized",
    );
}
