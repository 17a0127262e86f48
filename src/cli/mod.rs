//! Command definitions (clap) and dispatch. Each subcommand lives in its own file.

/// `println!` that returns an error instead of panicking when standard output cannot be written
/// (`> /dev/full`); a closed pipe ends the process quietly through SIGPIPE (see `main`).
macro_rules! outln {
    () => {
        $crate::cli::write_stdout(format_args!("\n"))
    };
    ($($t:tt)*) => {
        $crate::cli::write_stdout(format_args!("{}\n", format_args!($($t)*)))
    };
}

/// `print!` with the error handling of [`outln!`].
#[allow(unused_macros)]
macro_rules! out {
    ($($t:tt)*) => {
        $crate::cli::write_stdout(format_args!($($t)*))
    };
}

mod bench;
mod compare;
mod dataset;
mod dump;
mod eval;
mod export;
mod graph;
mod inspect;
mod npu;
mod quantize;
mod report;
mod run;
mod serve;

use anyhow::{bail, Context, Result};
use autoneural::engine::Engine;
use autoneural::pipeline::{ImageInput, PromptInput};
use autoneural::quant::scheme::Scheme;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// Most worker threads a command may ask for (far beyond any useful count, far below one that
/// takes seconds to spawn).
pub const MAX_THREADS: usize = 1024;

/// The embedded default model, relative to the working directory or to the source tree.
pub const DEFAULT_MODEL: &str = "models/autoneural-cockpit-tiny";

#[derive(Parser, Debug)]
#[command(
    name = "autoneural",
    version,
    about = "Run and analyse AutoNeural vision-language models (MobileNetV5 + LFM2)"
)]
pub struct Cli {
    /// Worker threads (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Answer a prompt about zero or more images, streaming the text to stdout.
    Run(run::RunArgs),
    /// Write intermediate tensors (pixels, vision features, image embeddings, logits) as .npy.
    Dump(dump::DumpArgs),
    /// Print the architecture, parameter counts and memory needs of a model.
    Inspect(inspect::InspectArgs),
    /// List every node of the model's graphs: shapes, parameters, MACs, weight and activation
    /// bytes (text: a prefill and one decode step).
    Graph(graph::GraphArgs),
    /// Calibrate and write an integer-only quantized model directory.
    Quantize(quantize::QuantizeArgs),
    /// Quantization error of an integer model vs its float model: per-op SQNR, perplexity, chart.
    Report(report::ReportArgs),
    /// Exact-match accuracy per question type on a dataset split, float vs integer schemes.
    Eval(eval::EvalArgs),
    /// Render or check procedural VQA datasets (`dataset cockpit`, `dataset validate`).
    Dataset(dataset::DatasetArgs),
    /// Serve the model over an OpenAI-compatible HTTP API (chat completions with images,
    /// streaming, concurrency, metrics) with a chat page at `/`.
    Serve(serve::ServeArgs),
    /// Measure this machine: instruction peaks, kernels, LM prefill/decode, vision latency and
    /// time to first token on real shapes (random weights).
    Bench(bench::BenchArgs),
    /// Predict latency, memory and limits of a model on an NPU (or this CPU) from its config;
    /// `npu fit` fits a profile to published measurements.
    Npu(npu::NpuArgs),
    /// The paper's claims table from this engine: the paper's numbers, this machine's
    /// measurements and the NPU cost model's predictions side by side.
    Compare(compare::CompareArgs),
    /// Export a quantized model as ONNX QDQ (or a float model as float ONNX) for NPU
    /// toolchains and ONNX Runtime.
    Export(export::ExportArgs),
}

/// Arguments shared by `run` and `dump`: model, images, prompt.
#[derive(Args, Debug)]
pub struct InputArgs {
    /// Model directory (config.json, model.safetensors, tokenizer.json).
    #[arg(long, default_value = DEFAULT_MODEL)]
    pub model: PathBuf,
    /// Image file(s), in prompt order.
    #[arg(long = "image", value_name = "PATH")]
    pub images: Vec<PathBuf>,
    /// Preprocessed [3,H,W] float32 .npy input(s), instead of --image.
    #[arg(long = "pixels", value_name = "FILE.npy", conflicts_with = "images")]
    pub pixels: Vec<PathBuf>,
    /// User prompt; `<image>` marks where each image goes (default: images first).
    #[arg(long, required_unless_present = "tokens", conflicts_with = "tokens")]
    pub prompt: Option<String>,
    /// Optional system prompt (chat mode only).
    #[arg(long, conflicts_with = "tokens")]
    pub system: Option<String>,
    /// Raw comma-separated token ids, taken literally (no chat template).
    #[arg(long, value_delimiter = ',')]
    pub tokens: Option<Vec<u32>>,
    /// Run a float model on the integer path with this scheme (e.g. `default`, `w8a8`),
    /// calibrated on this request's own inputs and the float model's answer. Quantized model
    /// directories need no flag.
    #[arg(long)]
    pub precision: Option<String>,
}

impl InputArgs {
    pub fn image_inputs(&self) -> Vec<ImageInput> {
        if self.pixels.is_empty() {
            self.images.iter().cloned().map(ImageInput::File).collect()
        } else {
            self.pixels
                .iter()
                .cloned()
                .map(ImageInput::Pixels)
                .collect()
        }
    }

    pub fn prompt_input(&self) -> PromptInput {
        match (&self.tokens, &self.prompt) {
            (Some(ids), _) => PromptInput::Tokens(ids.clone()),
            (None, Some(user)) => PromptInput::Chat {
                user: user.clone(),
                system: self.system.clone(),
            },
            (None, None) => unreachable!("clap requires --prompt or --tokens"),
        }
    }

    /// Applies `--precision` (a no-op without it, or for an already quantized model).
    pub fn apply_precision(
        &self,
        engine: Engine,
        pixels: &[autoneural::Tensor],
        ids: &[u32],
    ) -> Result<Engine> {
        match &self.precision {
            None => Ok(engine),
            Some(s) => {
                let scheme = Scheme::parse(s)?;
                Ok(engine.quantize_for(&scheme, pixels, ids)?)
            }
        }
    }

    /// The model directory; the default resolves against the source tree when it is not in
    /// the working directory, so the README command works from anywhere inside the checkout.
    pub fn model_dir(&self) -> Result<PathBuf> {
        resolve_model_dir(&self.model)
    }
}

/// Parses a `--context` value: 1 up to the largest context any config may declare.
pub fn context_arg(s: &str) -> std::result::Result<usize, String> {
    let max = autoneural::models::limits::POSITIONS;
    match s.parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!("expected a number of tokens in 1..={max}")),
    }
}

/// Writes to standard output and flushes, naming standard output in the error.
pub fn write_stdout(args: std::fmt::Arguments) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_fmt(args)
        .and_then(|()| out.flush())
        .context("writing to standard output")
}

pub fn resolve_model_dir(model: &std::path::Path) -> Result<PathBuf> {
    if model.exists() {
        return Ok(model.to_path_buf());
    }
    if model == std::path::Path::new(DEFAULT_MODEL) {
        let in_tree = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_MODEL);
        if in_tree.exists() {
            return Ok(in_tree);
        }
    }
    bail!("model directory {} not found", model.display())
}

pub fn main(cli: Cli) -> Result<()> {
    autoneural::quant::kernels::level_from_env().map_err(anyhow::Error::msg)?;
    if let Some(n) = cli.threads {
        if n == 0 || n > MAX_THREADS {
            bail!("--threads must be in 1..={MAX_THREADS}, got {n}");
        }
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .context("configuring the thread pool")?;
    }
    match cli.command {
        Command::Run(a) => run::run(a),
        Command::Dump(a) => dump::dump(a),
        Command::Inspect(a) => inspect::inspect(a),
        Command::Graph(a) => graph::graph(a),
        Command::Quantize(a) => quantize::quantize(a),
        Command::Report(a) => report::report(a),
        Command::Eval(a) => eval::eval(a),
        Command::Dataset(a) => dataset::dataset(a),
        Command::Bench(a) => bench::bench(a, cli.threads),
        Command::Npu(a) => npu::npu(a),
        Command::Compare(a) => compare::compare(a),
        Command::Serve(a) => serve::serve(a),
        Command::Export(a) => export::export(a),
    }
}
