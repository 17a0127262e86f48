//! Autoregressive generation: one prefill over the prompt, then one token per step that reuses
//! the sequence state (rolling conv windows + attention K/V), never recomputing the prompt.

use crate::error::{Error, Result};
use crate::exec::{FloatProgram, SequenceState, Val};
use crate::observe::{NoObserver, Observer};
use crate::tensor::Tensor;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Instant;

/// How the next token is chosen. `temperature == 0` is greedy (argmax, lowest id on ties, like
/// `torch.argmax`).
#[derive(Clone, Copy, Debug)]
pub struct SamplingParams {
    pub temperature: f32,
    pub top_p: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
        }
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Self> {
        if !(params.temperature >= 0.0 && params.temperature.is_finite()) {
            return Err(Error::input(format!(
                "temperature must be a finite number >= 0, got {}",
                params.temperature
            )));
        }
        if !(params.top_p > 0.0 && params.top_p <= 1.0) {
            return Err(Error::input(format!(
                "top-p must be in (0, 1], got {}",
                params.top_p
            )));
        }
        Ok(Self {
            params,
            rng: ChaCha8Rng::seed_from_u64(params.seed),
        })
    }

    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.params.temperature == 0.0 {
            return argmax(logits);
        }
        // Softmax at the temperature, in f64 for a stable cumulative sum.
        let inv_t = 1.0 / self.params.temperature as f64;
        let max = logits.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
        let mut probs: Vec<(u32, f64)> = logits
            .iter()
            .enumerate()
            .map(|(i, &x)| (i as u32, ((x as f64 - max) * inv_t).exp()))
            .collect();
        let z: f64 = probs.iter().map(|p| p.1).sum();
        probs.iter_mut().for_each(|p| p.1 /= z);
        // Nucleus: the smallest prefix of the descending distribution whose mass reaches top_p.
        probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut keep = probs.len();
        if self.params.top_p < 1.0 {
            let mut cum = 0.0;
            for (i, p) in probs.iter().enumerate() {
                cum += p.1;
                if cum >= self.params.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
        }
        let kept = &probs[..keep];
        let mass: f64 = kept.iter().map(|p| p.1).sum();
        let mut u = self.rng.random::<f64>() * mass;
        for p in kept {
            if u < p.1 {
                return p.0;
            }
            u -= p.1;
        }
        kept[keep - 1].0
    }
}

/// Index of the largest value; the first one on ties.
pub fn argmax(xs: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best as u32
}

#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    /// Generation stops after producing one of these (the stop token is included in the output).
    pub stop_tokens: Vec<u32>,
    pub sampling: SamplingParams,
    /// Upper bound on prompt + generated tokens.
    pub context: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    Eos,
    MaxTokens,
    Context,
    /// The token callback returned [`Error::Stopped`].
    Stopped,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Timings {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    /// Prompt forward pass (the caller adds vision time for time-to-first-token).
    pub prefill_s: f64,
    /// Prefill plus sampling the first token.
    pub first_token_s: f64,
    /// All steps after the first token.
    pub decode_s: f64,
}

impl Timings {
    pub fn prefill_tokens_per_s(&self) -> f64 {
        rate(self.prompt_tokens, self.prefill_s)
    }
    pub fn decode_tokens_per_s(&self) -> f64 {
        rate(self.generated_tokens.saturating_sub(1), self.decode_s)
    }
}

fn rate(n: usize, s: f64) -> f64 {
    if s > 0.0 {
        n as f64 / s
    } else {
        0.0
    }
}

pub struct Generation {
    pub tokens: Vec<u32>,
    pub stop_reason: StopReason,
    pub timings: Timings,
}

/// A language model seen by the generation loop: it consumes the prompt once, then one token per
/// step, and hands back the last position's logits. The float and the integer LMs implement it.
pub trait Decoder {
    /// Positions already in the cache.
    fn cache_len(&self) -> usize;
    /// Runs the whole prompt; returns the logits of its last position.
    fn prefill(&mut self) -> Result<Vec<f32>>;
    /// Runs one generated token; returns its logits.
    fn step(&mut self, token: u32) -> Result<Vec<f32>>;
}

/// A float language-model program with its sequence state and the prompt embeddings
/// (`[T, hidden]`) still to prefill.
pub struct FloatDecoder<'a> {
    pub lm: &'a FloatProgram,
    pub state: &'a mut SequenceState,
    pub prompt: Option<Tensor>,
    /// Sees every op of the prefill and of each step: `NoObserver` for inference, a calibration
    /// observer to calibrate on the generated positions too.
    pub obs: &'a mut dyn Observer,
}

impl Decoder for FloatDecoder<'_> {
    fn cache_len(&self) -> usize {
        self.state.len()
    }
    fn prefill(&mut self) -> Result<Vec<f32>> {
        let prompt = self
            .prompt
            .take()
            .ok_or_else(|| Error::input("the prompt was already consumed"))?;
        let g = &self.lm.graph;
        let (embeds, hidden, logits) = (g.port("embeds")?, g.port("hidden")?, g.port("logits")?);
        if self.obs.enabled() {
            // An observer sees the head on every prompt row, as on any other op.
            let out = self.lm.run(
                vec![(embeds, Val::F(prompt))],
                &[logits],
                Some(self.state),
                self.obs,
            )?;
            return Ok(last_row(&out[0]).into_data());
        }
        let h = self.lm.run(
            vec![(embeds, Val::F(prompt))],
            &[hidden],
            Some(self.state),
            &mut NoObserver,
        )?;
        let out = self.lm.run(
            vec![(hidden, Val::F(last_row(&h[0])))],
            &[logits],
            None,
            &mut NoObserver,
        )?;
        Ok(out.into_iter().next().expect("one output").into_data())
    }
    fn step(&mut self, token: u32) -> Result<Vec<f32>> {
        let g = &self.lm.graph;
        let out = self.lm.run(
            vec![(g.port("ids")?, Val::Ids(vec![token]))],
            &[g.port("logits")?],
            Some(self.state),
            self.obs,
        )?;
        Ok(out.into_iter().next().expect("one output").into_data())
    }
}

/// Prefills `prompt` (`[T, hidden]` input embeddings) into `state` and generates. `on_token` sees
/// every new token as soon as it is chosen (for streaming).
pub fn generate(
    lm: &FloatProgram,
    state: &mut SequenceState,
    prompt: Tensor,
    opts: &GenerateOptions,
    on_token: &mut dyn FnMut(u32) -> Result<()>,
) -> Result<Generation> {
    let prompt_len = prompt.dim(0);
    let mut dec = FloatDecoder {
        lm,
        state,
        prompt: Some(prompt),
        obs: &mut NoObserver,
    };
    generate_with(&mut dec, prompt_len, opts, on_token)
}

/// The generation loop over any [`Decoder`] whose prompt holds `prompt_len` positions.
pub fn generate_with(
    dec: &mut dyn Decoder,
    prompt_len: usize,
    opts: &GenerateOptions,
    on_token: &mut dyn FnMut(u32) -> Result<()>,
) -> Result<Generation> {
    let mut progress = Progress::new(prompt_len, dec.cache_len(), opts)?;
    if !progress.wants_tokens() {
        return Ok(progress.finish(StopReason::MaxTokens));
    }
    let mut logits = dec.prefill()?;
    progress.prefilled();
    let stop_reason = loop {
        match progress.accept(&logits, dec.cache_len(), on_token)? {
            Next::Step(token) => logits = dec.step(token)?,
            Next::Done(reason) => break reason,
        }
    };
    Ok(progress.finish(stop_reason))
}

/// What a sequence does after [`Progress::accept`]: run `token` as its next position, or stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    Step(u32),
    Done(StopReason),
}

/// One sequence's generation, advanced by whoever runs the model: it samples from the logits it
/// is handed, reports each token, and says when to stop. [`generate_with`] drives one over a
/// [`Decoder`]; the server's scheduler drives several, one batched forward per step, with the
/// same sampling and stopping rules, so each sequence gets the tokens it would get alone.
pub struct Progress {
    sampler: Sampler,
    stop_tokens: Vec<u32>,
    max_new_tokens: usize,
    context: usize,
    tokens: Vec<u32>,
    timings: Timings,
    start: Instant,
    decode_start: Instant,
}

impl Progress {
    /// Checks that a prompt of `prompt_len` positions fits after `cache_len` cached ones and the
    /// sampling parameters are valid; starts the clock (call it just before the prefill).
    pub fn new(prompt_len: usize, cache_len: usize, opts: &GenerateOptions) -> Result<Self> {
        if prompt_len == 0 {
            return Err(Error::input("the prompt is empty"));
        }
        if prompt_len + cache_len >= opts.context {
            return Err(Error::ContextOverflow {
                tokens: prompt_len + cache_len,
                max_new: opts.max_new_tokens,
                context: opts.context,
            });
        }
        let now = Instant::now();
        Ok(Self {
            sampler: Sampler::new(opts.sampling)?,
            stop_tokens: opts.stop_tokens.clone(),
            max_new_tokens: opts.max_new_tokens,
            context: opts.context,
            tokens: Vec::new(),
            timings: Timings {
                prompt_tokens: prompt_len,
                ..Default::default()
            },
            start: now,
            decode_start: now,
        })
    }

    /// False when no token is asked for (the prompt need not run at all).
    pub fn wants_tokens(&self) -> bool {
        self.max_new_tokens > 0
    }

    /// Marks the end of the prompt's forward pass.
    pub fn prefilled(&mut self) {
        self.timings.prefill_s = self.start.elapsed().as_secs_f64();
    }

    /// Tokens chosen so far.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Takes the logits of the sequence's latest position (the state now holds `cache_len`
    /// positions): samples the next token, hands it to `on_token` (which may stop the sequence
    /// with [`Error::Stopped`]) and says whether to run it or stop.
    pub fn accept(
        &mut self,
        logits: &[f32],
        cache_len: usize,
        on_token: &mut dyn FnMut(u32) -> Result<()>,
    ) -> Result<Next> {
        // NaN or infinite logits (a diverging model, damaged weights) would sample garbage.
        if let Some(bad) = logits.iter().find(|v| !v.is_finite()) {
            return Err(Error::input(format!(
                "the model produced a non-finite logit ({bad}) at generated token {}; its \
                 weights or inputs are broken",
                self.tokens.len()
            )));
        }
        let next = self.sampler.sample(logits);
        self.tokens.push(next);
        if self.tokens.len() == 1 {
            self.timings.first_token_s = self.start.elapsed().as_secs_f64();
            self.decode_start = Instant::now();
        }
        match on_token(next) {
            Err(Error::Stopped) => return Ok(Next::Done(StopReason::Stopped)),
            r => r?,
        }
        Ok(Next::Done(if self.stop_tokens.contains(&next) {
            StopReason::Eos
        } else if self.tokens.len() >= self.max_new_tokens {
            StopReason::MaxTokens
        } else if cache_len + 1 >= self.context {
            StopReason::Context
        } else {
            return Ok(Next::Step(next));
        }))
    }

    /// The generation, ended for `stop_reason`.
    pub fn finish(mut self, stop_reason: StopReason) -> Generation {
        self.timings.decode_s = if self.tokens.len() > 1 {
            self.decode_start.elapsed().as_secs_f64()
        } else {
            0.0
        };
        self.timings.generated_tokens = self.tokens.len();
        Generation {
            tokens: self.tokens,
            stop_reason,
            timings: self.timings,
        }
    }
}

fn last_row(t: &Tensor) -> Tensor {
    let d = t.dim(1);
    Tensor::from_parts(&[1, d], t.row(t.dim(0) - 1).to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_first_max_and_sampling_is_seeded() {
        assert_eq!(argmax(&[0.0, 3.0, 3.0, -1.0]), 1);
        let logits = [1.0f32, 2.0, 0.5, 1.5, 0.0];
        let p = SamplingParams {
            temperature: 1.0,
            top_p: 0.9,
            seed: 7,
        };
        let a: Vec<u32> = {
            let mut s = Sampler::new(p).unwrap();
            (0..50).map(|_| s.sample(&logits)).collect()
        };
        let b: Vec<u32> = {
            let mut s = Sampler::new(p).unwrap();
            (0..50).map(|_| s.sample(&logits)).collect()
        };
        assert_eq!(a, b);
        assert!(a.iter().collect::<std::collections::HashSet<_>>().len() > 1);
        // top_p tiny keeps only the argmax
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            top_p: 1e-6,
            seed: 1,
        })
        .unwrap();
        assert!((0..20).all(|_| s.sample(&logits) == 1));
        assert!(Sampler::new(SamplingParams {
            temperature: -1.0,
            top_p: 1.0,
            seed: 0
        })
        .is_err());
        assert!(Sampler::new(SamplingParams {
            temperature: 1.0,
            top_p: 0.0,
            seed: 0
        })
        .is_err());
    }
}
