//! `autoneural run`: stream an answer, or print ids and timings with `--json`.

use super::InputArgs;
use anyhow::{Context, Result};
use autoneural::chat::StreamDecoder;
use autoneural::generate::{generate, GenerateOptions, SamplingParams};
use autoneural::observe::NoObserver;
use autoneural::pipeline::Pipeline;
use clap::Args;
use std::io::Write;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    input: InputArgs,
    /// Maximum number of tokens to generate.
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Nucleus sampling threshold (with --temperature > 0).
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Random seed for sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Context length limit (prompt + generated); default: the model's max_position_embeddings.
    #[arg(long)]
    context: Option<usize>,
    /// Print token ids, text and timings as JSON instead of streaming text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: RunArgs) -> Result<()> {
    let dir = args.input.model_dir()?;
    let t_load = Instant::now();
    let pipe = Pipeline::load(&dir).with_context(|| format!("loading model {}", dir.display()))?;
    let load_s = t_load.elapsed().as_secs_f64();

    let start = Instant::now();
    let pixels = pipe.load_pixels(&args.input.image_inputs())?;
    let prompt_ids = pipe.prompt_ids(&args.input.prompt_input(), pixels.len())?;
    let context = args
        .context
        .unwrap_or(pipe.model.config.text.max_position_embeddings);
    if prompt_ids.len() >= context {
        anyhow::bail!(autoneural::Error::ContextOverflow {
            tokens: prompt_ids.len(),
            max_new: args.max_tokens,
            context
        });
    }
    let t_vision = Instant::now();
    let encodings = pipe.encode_images(&pixels, &mut NoObserver)?;
    let vision_s = t_vision.elapsed().as_secs_f64();
    let image_embeddings: Vec<_> = encodings.into_iter().map(|e| e.embeddings).collect();
    let embeds = pipe.model.embed_prompt(&prompt_ids, &image_embeddings)?;

    let opts = GenerateOptions {
        max_new_tokens: args.max_tokens,
        stop_tokens: pipe.stop_tokens(),
        sampling: SamplingParams {
            temperature: args.temperature,
            top_p: args.top_p,
            seed: args.seed,
        },
        context,
    };
    let mut cache = pipe.model.new_cache();
    let mut stream = StreamDecoder::new(&pipe.tokenizer);
    let stdout = std::io::stdout();
    let json = args.json;
    let gen = generate(
        &pipe.model.language_model,
        &mut cache,
        embeds,
        &opts,
        &mut |id| {
            if !json {
                if let Some(text) = stream.push(id)? {
                    let mut out = stdout.lock();
                    let _ = out.write_all(text.as_bytes());
                    let _ = out.flush();
                }
            }
            Ok(())
        },
    )?;
    let ttft_s = start.elapsed().as_secs_f64() - gen.timings.decode_s;
    if json {
        let text = pipe.tokenizer.decode(&gen.tokens)?;
        let report = serde_json::json!({
            "model": dir.display().to_string(),
            "prompt_tokens": prompt_ids.len(),
            "images": pixels.len(),
            "tokens": gen.tokens,
            "text": text,
            "stop_reason": gen.stop_reason,
            "timings": {
                "load_s": load_s,
                "vision_s": vision_s,
                "prefill_s": gen.timings.prefill_s,
                "time_to_first_token_s": ttft_s,
                "decode_s": gen.timings.decode_s,
                "prefill_tokens_per_s": gen.timings.prefill_tokens_per_s(),
                "decode_tokens_per_s": gen.timings.decode_tokens_per_s(),
            }
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!();
        tracing::info!(
            ttft_s,
            prefill_tok_s = gen.timings.prefill_tokens_per_s(),
            decode_tok_s = gen.timings.decode_tokens_per_s(),
            "done"
        );
    }
    Ok(())
}
