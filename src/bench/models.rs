//! Whole-model benchmarks on random weights of real shapes (or a checkpoint): language-model
//! prefill and decode, vision-encoder latency, and time to first token for an image plus a prompt,
//! float and integer schemes, at given thread counts.

use super::time_median;
use crate::engine::calibrate_on_request;
use crate::error::{Error, Result};
use crate::exec::{FloatProgram, IntProgram, QVal, Val};
use crate::generate::{argmax, generate_with, Decoder, FloatDecoder, GenerateOptions, Timings};
use crate::graph::builder::FromConfig;
use crate::models::autoneural::AutoNeuralModel;
use crate::observe::NoObserver;
use crate::quant::calibrate::{CalibrationObserver, CalibrationStats, Rounding, DEFAULT_BINS};
use crate::quant::int_model::{IntModel, QDecoder};
use crate::quant::lower::lower;
use crate::quant::scheme::{Part, Precision, Scheme};
use crate::quant::tensor::QTensor;
use crate::tensor::Tensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::time::Instant;

#[derive(Clone, Debug, Serialize)]
pub struct LmRow {
    pub model: String,
    pub precision: String,
    pub threads: usize,
    pub prompt_tokens: usize,
    pub decode_tokens: usize,
    pub prefill_ms: f64,
    pub prefill_tok_s: f64,
    pub decode_tok_s: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct VisionRow {
    pub model: String,
    pub precision: String,
    pub image_size: usize,
    pub threads: usize,
    pub latency_ms: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct TtftRow {
    pub model: String,
    pub precision: String,
    pub image_size: usize,
    pub prompt_tokens: usize,
    pub threads: usize,
    /// Encoder + connector.
    pub vision_ms: f64,
    /// Image tokens and prompt through the LM, first token chosen.
    pub prefill_ms: f64,
    pub ttft_ms: f64,
}

/// Calibration for benchmarks: nearest rounding (GPTQ would only add conversion time).
fn observer() -> Result<CalibrationObserver> {
    Ok(CalibrationObserver::new(DEFAULT_BINS)?.with_rounding(Rounding::Nearest))
}

fn random_ids(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // Skip the first ids: specials (and the image token) live there.
    (0..n)
        .map(|_| rng.random_range(512.min(vocab - 1)..vocab) as u32)
        .collect()
}

fn random_pixels(size: usize, seed: u64) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let data = (0..3 * size * size)
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    Tensor::new(&[3, size, size], data).expect("3 x size x size values")
}

fn options(decode: usize, context: usize) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens: decode,
        stop_tokens: Vec::new(),
        sampling: Default::default(),
        context,
    }
}

/// The integer language model of `model` for `precision` (a vision-language model's vision
/// part is left out: the LM benchmark calibrates text only).
fn int_model(model: &AutoNeuralModel, stats: &CalibrationStats, p: Precision) -> Result<IntModel> {
    let lm = AutoNeuralModel {
        config: crate::models::autoneural::AutoNeuralConfig {
            vision: None,
            ..model.config.clone()
        },
        store: model.store.clone(),
        text: model.text.clone(),
        vision: None,
    };
    IntModel::build(&lm, stats, &Scheme::uniform(p), None)
}

/// Prefill `prompt` random tokens and decode `decode` more, once to warm up (first products
/// compute per-matrix sums), then measured.
fn time_lm(
    model: &AutoNeuralModel,
    q: Option<&IntModel>,
    prompt: usize,
    decode: usize,
) -> Result<Timings> {
    let ids = random_ids(prompt, model.config.text.vocab_size(), 7);
    let context = prompt + decode + 1;
    let once = |ids: &[u32], decode: usize| -> Result<Timings> {
        let opts = options(decode, context);
        let gen = match q {
            None => {
                let mut state = model.new_state(context);
                let mut dec = FloatDecoder {
                    lm: &model.text,
                    state: &mut state,
                    prompt: Some(model.embed(ids)?),
                    obs: &mut NoObserver,
                };
                generate_with(&mut dec, ids.len(), &opts, &mut |_| Ok(()))?
            }
            Some(q) => {
                let mut state = q.new_state(context);
                let mut dec = QDecoder {
                    lm: &q.text,
                    state: &mut state,
                    prompt: Some(q.embed(ids)?),
                };
                generate_with(&mut dec, ids.len(), &opts, &mut |_| Ok(()))?
            }
        };
        Ok(gen.timings)
    };
    once(&ids[..prompt.min(8)], 2)?;
    once(&ids, decode)
}

/// Prefill and decode rates of the language model for each precision and thread pool.
pub fn lm(
    name: &str,
    model: &AutoNeuralModel,
    precisions: &[Precision],
    pools: &[rayon::ThreadPool],
    prompt: usize,
    decode: usize,
    progress: &dyn Fn(&str),
) -> Result<Vec<LmRow>> {
    if prompt == 0 || decode < 2 {
        return Err(Error::input("bench needs --prompt >= 1 and --decode >= 2"));
    }
    let mut stats = None;
    let mut rows = Vec::new();
    for &p in precisions {
        let q = if p.is_float() {
            None
        } else {
            if stats.is_none() {
                progress(&format!("{name}: calibrating"));
                let ids = random_ids(32, model.config.text.vocab_size(), 3);
                stats = Some(calibrate_on_request(model, &[], &ids, &[], 8, observer()?)?);
            }
            progress(&format!("{name}: lowering to {p}"));
            Some(int_model(model, stats.as_ref().expect("set above"), p)?)
        };
        for pool in pools {
            let threads = pool.current_num_threads();
            progress(&format!(
                "{name} {p}: prefill {prompt} + decode {decode}, {threads} thread(s)"
            ));
            let t = pool.install(|| time_lm(model, q.as_ref(), prompt, decode))?;
            rows.push(LmRow {
                model: name.into(),
                precision: p.to_string(),
                threads,
                prompt_tokens: prompt,
                decode_tokens: decode,
                prefill_ms: t.prefill_s * 1e3,
                prefill_tok_s: t.prefill_tokens_per_s(),
                decode_tok_s: t.decode_tokens_per_s(),
            });
        }
    }
    Ok(rows)
}

/// The encoder of `model` at `size` px (a size the tower takes), and whether it runs on the
/// model's own weights: InternViT's position table is per grid, so other sizes get a tower of
/// random weights trained at that size.
pub fn encoder_at(model: &AutoNeuralModel, size: usize) -> Result<(FloatProgram, bool)> {
    let v = model
        .vision
        .as_ref()
        .ok_or_else(|| Error::input("the model has no vision encoder"))?;
    let g = v
        .config
        .at_size(size)
        .build(&FromConfig, &v.root, (size, size))?;
    let shared = g.params.iter().all(|p| {
        v.encoder
            .graph
            .params
            .iter()
            .any(|q| q.key == p.key && q.shape == p.shape)
    });
    Ok(if shared {
        (FloatProgram::with_params_of(g, &v.encoder)?, true)
    } else {
        (FloatProgram::random(g, 1)?, false)
    })
}

/// Vision-encoder latency (pixels to features, MSFA included) at each size and precision.
pub fn vision(
    name: &str,
    model: &AutoNeuralModel,
    sizes: &[usize],
    precisions: &[Precision],
    pool: &rayon::ThreadPool,
    progress: &dyn Fn(&str),
) -> Result<Vec<VisionRow>> {
    let v = model
        .vision
        .as_ref()
        .ok_or_else(|| Error::input("the model has no vision encoder"))?;
    let threads = pool.current_num_threads();
    let mut rows = Vec::new();
    for &asked in sizes {
        // InternViT takes whole pixel-shuffle blocks of patches, and its position table is per
        // grid: other sizes run a tower trained at the nearest size it takes (random weights).
        let size = v.config.nearest_size(asked);
        let enc = encoder_at(model, size)?;
        if !enc.1 {
            progress(&format!("{name} {size}px: random weights for this grid"));
        }
        let enc = enc.0;
        let (pix_port, feat_port) = (enc.graph.port("pixels")?, enc.graph.port("features")?);
        let pixels = random_pixels(size, 5);
        let mut stats = None;
        for &p in precisions {
            let latency = if p.is_float() {
                progress(&format!("{name} {size}px float"));
                pool.install(|| {
                    time_median(|| {
                        enc.run(
                            vec![(pix_port, Val::F(pixels.clone()))],
                            &[feat_port],
                            None,
                            &mut NoObserver,
                        )
                        .expect("the encoder runs on its own input size");
                    })
                })
            } else {
                if stats.is_none() {
                    progress(&format!("{name} {size}px: calibrating"));
                    let mut obs = observer()?;
                    obs.set_part(Part::Vision);
                    pool.install(|| {
                        enc.run(
                            vec![(pix_port, Val::F(pixels.clone()))],
                            &[feat_port],
                            None,
                            &mut obs,
                        )
                    })?;
                    stats = Some(obs.into_stats());
                }
                progress(&format!("{name} {size}px {p}"));
                let stats = stats.as_ref().expect("set above");
                let prog = IntProgram::new(lower(
                    &enc,
                    Part::Vision,
                    stats,
                    &Scheme::uniform(p),
                    None,
                    &[],
                )?);
                let qx = QTensor::quantize(&pixels, prog.quant(pix_port)?);
                pool.install(|| {
                    time_median(|| {
                        prog.run(
                            vec![(pix_port, QVal::Q(qx.clone()))],
                            &[feat_port],
                            None,
                            &mut NoObserver,
                        )
                        .expect("the encoder runs on its own input size");
                    })
                })
            };
            rows.push(VisionRow {
                model: name.into(),
                precision: p.to_string(),
                image_size: size,
                threads,
                latency_ms: latency * 1e3,
            });
        }
    }
    Ok(rows)
}

/// Time to first token for one image at the model's size plus `prompt` text tokens: encoder,
/// connector, prefill of image and text tokens, first token chosen. `schemes`: float or integer.
pub fn ttft(
    name: &str,
    model: &AutoNeuralModel,
    schemes: &[(String, Scheme)],
    prompt: usize,
    pool: &rayon::ThreadPool,
    progress: &dyn Fn(&str),
) -> Result<Vec<TtftRow>> {
    let v = model
        .vision
        .as_ref()
        .ok_or_else(|| Error::input("the model has no vision encoder"))?;
    let size = v.config.image_size();
    let pixels = random_pixels(size, 9);
    let mut ids = vec![model.config.image_token_id; model.tokens_per_image()];
    ids.extend(random_ids(prompt, model.config.text.vocab_size(), 11));
    let context = ids.len() + 2;
    let threads = pool.current_num_threads();
    let mut stats = None;
    let mut rows = Vec::new();
    for (label, scheme) in schemes {
        progress(&format!("{name}: time to first token, {label}"));
        let (vision_s, prefill_s) = if scheme.text.is_float() && scheme.vision.is_float() {
            pool.install(|| -> Result<(f64, f64)> {
                let run = || -> Result<(f64, f64)> {
                    let t0 = Instant::now();
                    let e = model.encode_image(&pixels, &mut NoObserver)?;
                    let t1 = Instant::now();
                    let x = model.embed_prompt(&ids, &[e.embeddings])?;
                    let mut state = model.new_state(context);
                    let mut dec = FloatDecoder {
                        lm: &model.text,
                        state: &mut state,
                        prompt: Some(x),
                        obs: &mut NoObserver,
                    };
                    std::hint::black_box(argmax(&dec.prefill()?));
                    Ok(((t1 - t0).as_secs_f64(), t1.elapsed().as_secs_f64()))
                };
                run()?;
                run()
            })?
        } else {
            if stats.is_none() {
                progress(&format!("{name}: calibrating"));
                let text = random_ids(16, model.config.text.vocab_size(), 13);
                let mut cal_ids = vec![model.config.image_token_id; model.tokens_per_image()];
                cal_ids.extend(text);
                stats = Some(pool.install(|| {
                    calibrate_on_request(
                        model,
                        std::slice::from_ref(&pixels),
                        &cal_ids,
                        &[],
                        4,
                        observer()?,
                    )
                })?);
            }
            progress(&format!("{name}: lowering to {label}"));
            let q = IntModel::build(model, stats.as_ref().expect("set above"), scheme, None)?;
            pool.install(|| -> Result<(f64, f64)> {
                let run = || -> Result<(f64, f64)> {
                    let t0 = Instant::now();
                    let e = q.encode_image(&pixels, &mut NoObserver)?;
                    let t1 = Instant::now();
                    let x = q.embed_prompt(&ids, &[e.embeddings])?;
                    let mut state = q.new_state(context);
                    let mut dec = QDecoder {
                        lm: &q.text,
                        state: &mut state,
                        prompt: Some(x),
                    };
                    std::hint::black_box(argmax(&dec.prefill()?));
                    Ok(((t1 - t0).as_secs_f64(), t1.elapsed().as_secs_f64()))
                };
                run()?;
                run()
            })?
        };
        rows.push(TtftRow {
            model: name.into(),
            precision: label.clone(),
            image_size: size,
            prompt_tokens: prompt,
            threads,
            vision_ms: vision_s * 1e3,
            prefill_ms: prefill_s * 1e3,
            ttft_ms: (vision_s + prefill_s) * 1e3,
        });
    }
    Ok(rows)
}
