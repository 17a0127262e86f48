//! `autoneural run`: stream an answer, or print ids and timings with `--json`. A quantized model
//! directory, or `--precision`, runs the integer path.

use super::InputArgs;
use anyhow::{Context, Result};
use autoneural::chat::StreamDecoder;
use autoneural::engine::Engine;
use autoneural::generate::{GenerateOptions, SamplingParams};
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
    #[arg(long, value_parser = super::context_arg)]
    context: Option<usize>,
    /// Print token ids, text and timings as JSON instead of streaming text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: RunArgs) -> Result<()> {
    let dir = args.input.model_dir()?;
    let t_load = Instant::now();
    let engine = Engine::load(&dir).with_context(|| format!("loading model {}", dir.display()))?;
    let load_s = t_load.elapsed().as_secs_f64();

    let start = Instant::now();
    let pixels = engine.load_pixels(&args.input.image_inputs())?;
    let prompt_ids = engine.prompt_ids(&args.input.prompt_input(), pixels.len())?;
    let engine = args.input.apply_precision(engine, &pixels, &prompt_ids)?;
    let limit = engine.config().text.max_position_embeddings();
    let context = args.context.unwrap_or(limit);
    if context > limit {
        anyhow::bail!(
            "--context {context} is larger than the model's {limit} positions \
             (max_position_embeddings)"
        );
    }
    if prompt_ids.len() >= context {
        anyhow::bail!(autoneural::Error::ContextOverflow {
            tokens: prompt_ids.len(),
            max_new: args.max_tokens,
            context
        });
    }
    let opts = GenerateOptions {
        max_new_tokens: args.max_tokens,
        stop_tokens: engine.stop_tokens(),
        sampling: SamplingParams {
            temperature: args.temperature,
            top_p: args.top_p,
            seed: args.seed,
        },
        context,
    };
    let mut stream = StreamDecoder::new(engine.tokenizer());
    let stdout = std::io::stdout();
    let json = args.json;
    let (gen, vision_s) = engine.generate(&pixels, &prompt_ids, &opts, &mut |id| {
        if !json {
            if let Some(text) = stream.push(id)? {
                // A write error stops the generation at once instead of dropping the answer.
                let mut out = stdout.lock();
                out.write_all(text.as_bytes())
                    .and_then(|()| out.flush())
                    .map_err(|e| autoneural::Error::io("standard output", e))?;
            }
        }
        Ok(())
    })?;
    if !json {
        if let Some(rest) = stream.finish()? {
            let mut out = stdout.lock();
            out.write_all(rest.as_bytes())
                .and_then(|()| out.flush())
                .context("writing to standard output")?;
        }
    }
    let ttft_s = start.elapsed().as_secs_f64() - gen.timings.decode_s;
    if json {
        let text = engine.tokenizer().decode(&gen.tokens)?;
        let report = serde_json::json!({
            "model": dir.display().to_string(),
            "path": if engine.is_integer() { "integer" } else { "float" },
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
        outln!("{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        outln!()?;
        tracing::info!(
            ttft_s,
            prefill_tok_s = gen.timings.prefill_tokens_per_s(),
            decode_tok_s = gen.timings.decode_tokens_per_s(),
            "done"
        );
    }
    Ok(())
}
