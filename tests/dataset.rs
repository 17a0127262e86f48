//! The procedural `cockpit` dataset: layout, validation, determinism, answers by construction,
//! non-degenerate answer distributions, and clear errors (library and binary).

use autoneural::dataset::cockpit::{
    CabinSpec, ClusterSpec, LightColour, Look, RoadSpec, Scene, SceneKind, Seat, Sign, WarningLight,
};
use autoneural::dataset::{self, GenerateOptions, Record, SPLITS};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::process::{Command, Output};

fn opts(count: usize, seed: u64) -> GenerateOptions {
    GenerateOptions {
        count,
        seed,
        size: 96,
        force: false,
    }
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_autoneural"))
        .args(args)
        .output()
        .expect("spawn autoneural")
}

fn records(dir: &Path, split: &str) -> Vec<Record> {
    std::fs::read_to_string(dir.join(format!("{split}.jsonl")))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Every file under `dir`, relative path -> bytes.
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, d: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

#[test]
fn library_generates_a_valid_disjoint_set() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("set");
    let made = dataset::generate_cockpit(&out, &opts(30, 7)).unwrap();
    assert_eq!(made.total_images(), 30);
    assert_eq!(made.images["train"], 24);
    assert_eq!(made.images["validation"], 3);
    assert_eq!(made.images["test"], 3);
    for f in [
        "dataset.json",
        "train.jsonl",
        "validation.jsonl",
        "test.jsonl",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }
    let checked = dataset::validate(&out).unwrap();
    assert_eq!(checked, made);

    let mut seen: HashSet<String> = HashSet::new();
    for split in SPLITS {
        let images: HashSet<String> = records(&out, split).into_iter().map(|r| r.image).collect();
        for img in &images {
            assert!(img.starts_with(&format!("images/{split}/")), "{img}");
            assert!(out.join(img).is_file());
            assert!(seen.insert(img.clone()), "{img} is in two splits");
        }
    }
    assert_eq!(seen.len(), 30);
    let png = image::open(out.join("images/train/000001.png")).unwrap();
    assert_eq!((png.width(), png.height()), (96, 96));

    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("dataset.json")).unwrap()).unwrap();
    assert_eq!(info["count"], 30);
    assert_eq!(info["seed"], 7);
    assert_eq!(info["size"], 96);
    assert_eq!(info["generator_version"], dataset::GENERATOR_VERSION);
    assert_eq!(info["scene_kinds"]["cluster"], 10);
}

#[test]
fn generation_is_deterministic_and_seed_dependent() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("c"),
    );
    dataset::generate_cockpit(&a, &opts(12, 3)).unwrap();
    dataset::generate_cockpit(&b, &opts(12, 3)).unwrap();
    dataset::generate_cockpit(&c, &opts(12, 4)).unwrap();
    let (sa, sb, sc) = (snapshot(&a), snapshot(&b), snapshot(&c));
    assert_eq!(sa.len(), 12 + 4 + 1); // images, three splits + dataset.json, the manifest
    assert_eq!(sa, sb, "same arguments must give byte-identical files");
    assert_ne!(sa["train.jsonl"], sc["train.jsonl"]);
    assert_ne!(sa["images/train/000001.png"], sc["images/train/000001.png"]);
}

#[test]
fn cluster_answers_follow_the_spec() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut spec = ClusterSpec::sample(&mut rng);
    spec.lights_on = [true, true, false, false, false, false];
    spec.speed = 85;
    spec.fuel = Some(0.05);
    spec.ask = WarningLight::LowFuel;
    let q = spec.questions();
    let answer = |kind: &str| q.iter().find(|x| x.kind == kind).unwrap().answer.clone();
    assert_eq!(answer("warning_lights"), "Seatbelt and low fuel.");
    assert_eq!(answer("speed"), "85 km/h.");
    assert_eq!(answer("light_status"), "Yes.");
    let q2 = q.iter().find(|x| x.kind == "light_status").unwrap();
    assert_eq!(q2.question, "Is the low fuel light on?");

    let scene = Scene::Cluster(spec.clone());
    let img = scene.render(128);
    assert_eq!(
        img,
        scene.render(128),
        "rendering must be a pure function of the spec"
    );

    // A different speed changes the pixels (needle + digits); no lights gives "None.".
    spec.speed = 86;
    assert_ne!(img, Scene::Cluster(spec.clone()).render(128));
    spec.lights_on = [false; 6];
    spec.ask = WarningLight::Brake;
    let q = spec.questions();
    assert_eq!(q[0].answer, "None.");
    assert_eq!(q[2].answer, "No.");
}

#[test]
fn cluster_lit_lights_are_bright_in_the_image() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let mut spec = ClusterSpec::sample(&mut rng);
    spec.look = Look::plain([20, 24, 40], [5, 5, 10]);
    // The battery icon is a filled rectangle at slot 3: sample its centre.
    let size = 256u32;
    let centre = |spec: &ClusterSpec| {
        let (jx, jy) = spec.light_jitter[3];
        let x = (0.1 + 0.16 * 3.0 + jx) * size as f32;
        let y = (spec.light_y + jy - 0.3 * spec.light_size) * size as f32;
        (x as u32, y as u32)
    };
    spec.lights_on = [false; 6];
    spec.lights_on[3] = true;
    let (x, y) = centre(&spec);
    let on = spec.render(size).get_pixel(x, y).0;
    spec.lights_on[3] = false;
    let off = spec.render(size).get_pixel(x, y).0;
    assert_eq!(on, [235, 35, 30]);
    assert!(off[0] < 80, "an off light is dim: {off:?}");
}

#[test]
fn cabin_and_road_answers_follow_the_spec() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut cabin = CabinSpec::sample(&mut rng);
    cabin.seats = [
        Seat::Person { belted: true },
        Seat::Empty,
        Seat::Person { belted: true },
        Seat::ChildSeat,
        Seat::Person { belted: false },
    ];
    cabin.phone = true;
    let answers: Vec<String> = cabin.questions().into_iter().map(|q| q.answer).collect();
    assert_eq!(answers, ["Two.", "Yes.", "Yes.", "No."]);
    let scene = Scene::Cabin(cabin.clone());
    assert_eq!(scene.render(100), scene.render(100));
    cabin.phone = false;
    assert_ne!(scene.render(100), Scene::Cabin(cabin).render(100));

    let mut road = RoadSpec::sample(&mut rng);
    road.traffic_light = Some(LightColour::Red);
    road.sign = Some(Sign::SpeedLimit(60));
    let q = road.questions();
    let pairs: Vec<(&str, &str)> = q.iter().map(|q| (q.kind, q.answer.as_str())).collect();
    assert_eq!(
        pairs,
        [
            ("traffic_light", "Red."),
            ("sign", "A speed limit sign."),
            ("speed_limit", "60 km/h.")
        ]
    );
    road.traffic_light = None;
    road.sign = Some(Sign::NoParking);
    let q = road.questions();
    assert_eq!(q.last().unwrap().question, "Can I park here?");
    assert_eq!(q.last().unwrap().answer, "No.");
    let img = Scene::Road(road.clone()).render(100);
    road.sign = Some(Sign::SpeedLimit(70));
    assert_ne!(img, Scene::Road(road).render(100), "the limit is drawn");
}

#[test]
fn answer_distributions_are_not_degenerate() {
    // Specs and questions only (no rendering): 200 images as `--count 200` would draw them.
    let mut answers: BTreeMap<&str, BTreeMap<String, usize>> = BTreeMap::new();
    let mut kinds = BTreeMap::new();
    for i in 0..200 {
        let scene = dataset::scene_of(1, i);
        *kinds.entry(scene.kind()).or_insert(0) += 1;
        for q in scene.questions() {
            assert!(!q.answer.is_empty() && q.answer.ends_with('.'));
            *answers
                .entry(q.kind)
                .or_default()
                .entry(q.answer)
                .or_default() += 1;
        }
    }
    assert_eq!(kinds.len(), SceneKind::ALL.len());
    let expected = [
        "child_seat",
        "driver_phone",
        "light_status",
        "parking",
        "rear_passengers",
        "seatbelts",
        "sign",
        "speed",
        "speed_limit",
        "traffic_light",
        "warning_lights",
    ];
    assert_eq!(answers.keys().copied().collect::<Vec<_>>(), expected);
    for (kind, counts) in &answers {
        let total: usize = counts.values().sum();
        let best = *counts.values().max().unwrap();
        assert!(counts.len() >= 2, "{kind}: only {counts:?}");
        assert!(
            (best as f64) / (total as f64) < 0.8,
            "{kind}: majority answer is {best}/{total}"
        );
    }
}

#[test]
fn library_errors_are_clear() {
    let tmp = tempfile::tempdir().unwrap();
    let err = |r: autoneural::Result<_>| {
        r.map(|_: dataset::DatasetSummary| ())
            .unwrap_err()
            .to_string()
    };
    let out = tmp.path().join("x");
    assert!(err(dataset::generate_cockpit(&out, &opts(0, 1))).contains("--count"));
    let mut o = opts(1, 1);
    o.size = 32;
    assert!(err(dataset::generate_cockpit(&out, &o)).contains("--size"));
    o.size = 4096;
    assert!(err(dataset::generate_cockpit(&out, &o)).contains("--size"));

    let file = tmp.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    assert!(dataset::generate_cockpit(&file.join("sub"), &opts(2, 1)).is_err());
    assert!(dataset::generate_cockpit(&file, &opts(2, 1)).is_err());

    dataset::generate_cockpit(&out, &opts(3, 1)).unwrap();
    assert!(err(dataset::generate_cockpit(&out, &opts(3, 1))).contains("--force"));
    let mut forced = opts(2, 9);
    forced.force = true;
    dataset::generate_cockpit(&out, &forced).unwrap();
    assert_eq!(dataset::validate(&out).unwrap().total_images(), 2);
    assert!(
        !out.join("images/train/000003.png").exists(),
        "stale images are removed"
    );
}

#[test]
fn validate_rejects_broken_sets() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    dataset::generate_cockpit(&base, &opts(10, 2)).unwrap();
    let copy = |name: &str| {
        let d = tmp.path().join(name);
        for (rel, bytes) in snapshot(&base) {
            let p = d.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, bytes).unwrap();
        }
        d
    };
    let msg = |d: &Path| dataset::validate(d).unwrap_err().to_string();

    let d = copy("missing_image");
    std::fs::remove_file(d.join("images/train/000001.png")).unwrap();
    assert!(msg(&d).contains("000001.png"));

    let d = copy("corrupt_image");
    std::fs::write(d.join("images/train/000002.png"), b"not a png").unwrap();
    assert!(msg(&d).contains("000002.png"));

    let d = copy("bad_line");
    let p = d.join("test.jsonl");
    let mut t = std::fs::read_to_string(&p).unwrap();
    t.push_str("{not json\n");
    std::fs::write(&p, t).unwrap();
    assert!(msg(&d).contains("test.jsonl"));

    let d = copy("empty_answer");
    let p = d.join("validation.jsonl");
    let t = std::fs::read_to_string(&p).unwrap();
    let first: Record = serde_json::from_str(t.lines().next().unwrap()).unwrap();
    let t = t.replacen(
        &format!("\"answer\":\"{}\"", first.answer),
        "\"answer\":\"\"",
        1,
    );
    std::fs::write(&p, t).unwrap();
    assert!(msg(&d).contains("empty answer"));

    let d = copy("shared_image");
    let train = records(&d, "train");
    let mut leaked = train[0].clone();
    leaked.question = "Leaked?".into();
    let p = d.join("test.jsonl");
    let mut t = std::fs::read_to_string(&p).unwrap();
    t.push_str(&serde_json::to_string(&leaked).unwrap());
    t.push('\n');
    std::fs::write(&p, t).unwrap();
    assert!(msg(&d).contains("also in the train split"));

    let d = copy("escape");
    let p = d.join("train.jsonl");
    let t = std::fs::read_to_string(&p).unwrap().replacen(
        "images/train/000001.png",
        "../base/images/train/000001.png",
        1,
    );
    std::fs::write(&p, t).unwrap();
    assert!(msg(&d).contains("inside the dataset"));
}

#[test]
fn binary_generates_validates_and_reports_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("cli");
    let o = out.to_str().unwrap();
    let r = run(&[
        "dataset", "cockpit", "--count", "30", "--seed", "5", "--out", o, "--size", "64",
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert!(stdout.contains("wrote 30 images"), "{stdout}");
    assert_eq!(stdout.lines().count(), 1);

    // The library with the same arguments writes the same bytes.
    let lib = tmp.path().join("lib");
    let mut lo = opts(30, 5);
    lo.size = 64;
    dataset::generate_cockpit(&lib, &lo).unwrap();
    assert_eq!(snapshot(&out), snapshot(&lib));

    let r = run(&["dataset", "validate", "--dir", o, "--answers"]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(String::from_utf8_lossy(&r.stdout).contains("ok: 30 images"));

    let fails = |args: &[&str], needle: &str| {
        let r = run(args);
        let stderr = String::from_utf8_lossy(&r.stderr).into_owned();
        assert_eq!(r.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    };
    fails(
        &["dataset", "cockpit", "--count", "30", "--out", o],
        "--force",
    );
    let fresh = tmp.path().join("fresh");
    let f = fresh.to_str().unwrap();
    fails(
        &["dataset", "cockpit", "--count", "0", "--out", f],
        "--count",
    );
    fails(
        &[
            "dataset", "cockpit", "--count", "3", "--size", "8", "--out", f,
        ],
        "--size",
    );
    let file = tmp.path().join("plain_file");
    std::fs::write(&file, b"x").unwrap();
    let under = file.join("sub");
    fails(
        &[
            "dataset",
            "cockpit",
            "--count",
            "3",
            "--out",
            under.to_str().unwrap(),
        ],
        "plain_file",
    );
    fails(&["dataset", "validate", "--dir", f], "error:");

    let r = run(&[
        "dataset", "cockpit", "--count", "3", "--out", o, "--force", "--size", "64",
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(dataset::validate(&out).unwrap().total_images(), 3);
}
