//! Runs the real `mobilenetv5_300m_enc` architecture (84 blocks, 294M params) on one image and
//! prints the output shape and timings.
//!
//! ```text
//! cargo run --release --example real_vision_shape                 # random weights, 768x768
//! cargo run --release --example real_vision_shape -- --size 512 --runs 3
//! cargo run --release --example real_vision_shape -- --model <dir>  # a real checkpoint dir
//! ```
//!
//! Without `--model`, deterministic random weights (shaped from the architecture's key list) are
//! written to a temporary safetensors file. With `--model`, `<dir>/config.json`'s `vision_config`
//! is used when present (else the 300M config) and tensors are read under
//! `model.vision_tower.timm_model.` (or at the root when that prefix is absent).

use autoneural::models::mobilenetv5::{MobileNetV5Encoder, VisionConfig};
use autoneural::observe::NoObserver;
use autoneural::weights::{WeightStore, Weights};
use autoneural::Tensor;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
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

/// splitmix64 -> uniform in [-1, 1).
fn uniform(seed: u64) -> f32 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 40) as f32 / (1u64 << 23) as f32 - 1.0
}

fn random_checkpoint(cfg: &VisionConfig, path: &std::path::Path) -> autoneural::Result<()> {
    use rayon::prelude::*;
    let arch = cfg.arch()?;
    let tensors = arch.tensors();
    let bufs: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .par_iter()
        .enumerate()
        .map(|(ti, (k, shape))| {
            let n: usize = shape.iter().product();
            let fan_in: usize = shape.iter().skip(1).product::<usize>().max(1);
            let amp = (3.0 / fan_in as f32).sqrt();
            let mut bytes = Vec::with_capacity(n * 4);
            for i in 0..n {
                let u = uniform(((ti as u64) << 32) ^ i as u64);
                let v = if shape.len() == 1 {
                    1.0 + 0.1 * u
                } else {
                    u * amp
                };
                bytes.extend_from_slice(&v.to_le_bytes());
            }
            (format!("{PREFIX}.{k}"), shape.clone(), bytes)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = bufs
        .iter()
        .map(|(k, s, b)| {
            let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                .expect("consistent buffer");
            (k.clone(), v)
        })
        .collect();
    safetensors::serialize_to_file(views, None, path)
        .map_err(|e| autoneural::Error::input(format!("writing {}: {e}", path.display())))
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
    let _tmp;
    let (cfg, store) = match &model {
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
            (cfg, WeightStore::open_dir(dir)?)
        }
        None => {
            let cfg = VisionConfig::mobilenetv5_300m_enc();
            let dir = tempfile::tempdir().map_err(|e| autoneural::Error::io("/tmp", e))?;
            let path = dir.path().join("model.safetensors");
            let t = Instant::now();
            random_checkpoint(&cfg, &path)?;
            println!("wrote random weights in {:.1}s", t.elapsed().as_secs_f64());
            let store = WeightStore::open_files(&[path])?;
            _tmp = dir;
            (cfg, store)
        }
    };
    let root = Weights::new(Arc::new(store));
    let w = if root.contains(&format!("{PREFIX}.conv_stem.conv.weight")) {
        root.pp(PREFIX)
    } else {
        root
    };
    let t = Instant::now();
    let enc = MobileNetV5Encoder::load(&cfg, &w)?;
    println!("loaded in {:.1}s", t.elapsed().as_secs_f64());
    println!("{}", enc.summary());
    println!("loaded params: {}", enc.param_count());
    let n = 3 * size * size;
    let px = Tensor::new(
        &[3, size, size],
        (0..n).map(|i| (uniform(i as u64) + 1.0) * 0.5).collect(),
    )?;
    if profile {
        let mut p = Profiler {
            last: Instant::now(),
            totals: BTreeMap::new(),
        };
        enc.forward(&px, &mut p)?;
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
        let y = enc.forward(&px, &mut NoObserver)?;
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
        assert_eq!(
            y.shape(),
            &[
                enc.out_channels(),
                cfg.msfa_output_resolution,
                cfg.msfa_output_resolution
            ]
        );
        assert!(y.data().iter().all(|v| v.is_finite()));
    }
    Ok(())
}
