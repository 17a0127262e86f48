//! Runs the real `mobilenetv5_300m_enc` architecture (84 blocks, 294M params) on one image and
//! prints the output shape and timings.
//!
//! ```text
//! cargo run --release --example real_vision_shape                 # random weights, 768x768
//! cargo run --release --example real_vision_shape -- --size 512 --runs 3
//! cargo run --release --example real_vision_shape -- --model <dir>  # a real checkpoint dir
//! ```
//!
//! The encoder is its graph (`mobilenetv5::graph::build` at the input size). Without `--model`,
//! its weights are deterministic random ones (`FloatProgram::random`, nothing written to disk).
//! With `--model`, `<dir>/config.json`'s `vision_config` is used when present (else the 300M
//! config) and tensors are read under `model.vision_tower.timm_model.` (or at the root when that
//! prefix is absent).

use autoneural::exec::{FloatProgram, Val};
use autoneural::graph::builder::FromConfig;
use autoneural::models::mobilenetv5::{self, VisionConfig};
use autoneural::observe::NoObserver;
use autoneural::weights::WeightStore;
use autoneural::Tensor;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

/// Attributes the time between consecutive observations to the op just observed, grouped by
/// stage and op name (`s2:pw_exp.conv`, ...).
struct Profiler {
    last: Instant,
    totals: BTreeMap<String, (f64, usize)>,
}

impl autoneural::observe::Observer for Profiler {
    fn observe(&mut self, name: &str, _t: &Tensor) {
        let now = Instant::now();
        let dt = (now - self.last).as_secs_f64();
        let key = match name.strip_prefix("blocks.") {
            Some(rest) => {
                let mut it = rest.splitn(3, '.');
                let stage = it.next().unwrap_or("");
                let _block = it.next();
                format!("s{stage}:{}", it.next().unwrap_or("(block)"))
            }
            None => name.to_string(),
        };
        let e = self.totals.entry(key).or_default();
        e.0 += dt;
        e.1 += 1;
        self.last = Instant::now();
    }
}

const PREFIX: &str = "model.vision_tower.timm_model";

/// Deterministic pixels in [0, 1).
fn pixel(i: u64) -> f32 {
    let z = (i.wrapping_add(1)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let z = (z ^ (z >> 31)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    (z >> 40) as f32 / (1u64 << 24) as f32
}

fn main() -> autoneural::Result<()> {
    let mut size = 768usize;
    let mut runs = 2usize;
    let mut model: Option<PathBuf> = None;
    let mut profile = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--size" => size = args.next().and_then(|v| v.parse().ok()).expect("--size N"),
            "--runs" => runs = args.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            "--profile" => profile = true,
            "--model" => model = Some(PathBuf::from(args.next().expect("--model DIR"))),
            other => panic!("unknown argument {other}"),
        }
    }
    println!("rayon threads: {}", rayon::current_num_threads());
    let t = Instant::now();
    let (cfg, enc) = match &model {
        Some(dir) => {
            let cfg_path = dir.join("config.json");
            let cfg = match std::fs::read_to_string(&cfg_path) {
                Ok(text) => {
                    let v: serde_json::Value = serde_json::from_str(&text)
                        .map_err(|e| autoneural::Error::corrupt(&cfg_path, e.to_string()))?;
                    match v.get("vision_config") {
                        Some(vc) => serde_json::from_value(vc.clone())
                            .map_err(|e| autoneural::Error::config(e.to_string()))?,
                        None => VisionConfig::mobilenetv5_300m_enc(),
                    }
                }
                Err(_) => VisionConfig::mobilenetv5_300m_enc(),
            };
            let store = WeightStore::open_dir(dir)?;
            let root = if store.contains(&format!("{PREFIX}.conv_stem.conv.weight")) {
                PREFIX
            } else {
                ""
            };
            let g = mobilenetv5::graph::build(&cfg, &store, root, (size, size))?;
            let enc = FloatProgram::load(g, &store)?;
            println!("loaded in {:.1}s", t.elapsed().as_secs_f64());
            (cfg, enc)
        }
        None => {
            let cfg = VisionConfig::mobilenetv5_300m_enc();
            let g = mobilenetv5::graph::build(&cfg, &FromConfig, PREFIX, (size, size))?;
            let enc = FloatProgram::random(g, 0)?;
            println!("random weights in {:.1}s", t.elapsed().as_secs_f64());
            (cfg, enc)
        }
    };
    println!("{}", cfg.arch()?.summary().trim_end());
    let g = &enc.graph;
    println!("graph: {} nodes, {} params", g.nodes.len(), g.param_count());
    let (pixels, features) = (g.port("pixels")?, g.port("features")?);
    let n = 3 * size * size;
    let px = Tensor::new(&[3, size, size], (0..n).map(|i| pixel(i as u64)).collect())?;
    let forward = |obs: &mut dyn autoneural::observe::Observer| {
        let y = enc.run(vec![(pixels, Val::F(px.clone()))], &[features], None, obs);
        y.map(|mut y| y.remove(0))
    };
    if profile {
        let mut p = Profiler {
            last: Instant::now(),
            totals: BTreeMap::new(),
        };
        forward(&mut p)?;
        let mut rows: Vec<_> = p.totals.into_iter().collect();
        rows.sort_by(|a, b| b.1 .0.partial_cmp(&a.1 .0).unwrap());
        let total: f64 = rows.iter().map(|r| r.1 .0).sum();
        println!("profile (total {total:.2}s):");
        for (k, (secs, n)) in rows.iter().take(40) {
            println!("  {k:<32} {secs:>7.3}s  x{n}");
        }
    }
    for r in 0..runs {
        let t = Instant::now();
        let y = forward(&mut NoObserver)?;
        let secs = t.elapsed().as_secs_f64();
        let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
        for &v in y.data() {
            lo = lo.min(v);
            hi = hi.max(v);
        }
        println!(
            "run {r}: {size}x{size} -> {:?} in {secs:.2}s (min {lo:.3}, max {hi:.3})",
            y.shape()
        );
        let r = cfg.msfa_output_resolution;
        assert_eq!(y.shape(), &[r * r, cfg.num_features]);
        assert!(y.data().iter().all(|v| v.is_finite()));
    }
    Ok(())
}
