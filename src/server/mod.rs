//! `autoneural serve`: an OpenAI-compatible HTTP server (axum) over one model.
//!
//! - `POST /v1/chat/completions`: multi-turn chat rendered by the model's chat template
//!   ([`crate::chat_template`]), `image_url` parts as `data:` URIs (and http(s) URLs with
//!   `--image-urls public|any`, [`fetch`]), streamed (SSE) or not, `max_tokens` (finite
//!   default), `temperature`, `top_p`, `seed`, `stop`.
//! - `GET /v1/models`, `GET /health` (503 until the model is loaded), `GET /metrics`
//!   (Prometheus), `POST /tokenize`, `POST /detokenize`.
//! - Up to `--parallel` generations are in flight at once, each with its own state, a bounded
//!   queue waits behind them, and beyond it requests get 503 with `Retry-After`. With
//!   `--batch-decode on` (the default) one scheduler thread advances all of them with one
//!   batched forward pass per decode step ([`scheduler`]); with `off` each runs on its own
//!   blocking thread ([`session::run`]; the kernels share the rayon pool). Either way a client
//!   that disconnects cancels its generation within one decode step
//!   ([`session::CancelGuard`]) and each answer is the one the request gets alone.
//! - `--api-key` is checked as a Bearer token on everything but `/health`, `/metrics` and `/`;
//!   bodies are capped; CORS is off unless origins are given; the default bind is loopback.

pub mod api;
pub mod fetch;
mod http;
pub mod images;
pub mod scheduler;
pub mod session;

use crate::chat_template::ChatTemplate;
use crate::engine::Engine;
use std::path::PathBuf;
use std::time::Duration;

pub use fetch::ImageUrls;
pub use http::serve;

/// Everything `autoneural serve` is configured with.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub model_dir: PathBuf,
    pub host: String,
    pub port: u16,
    pub api_key: Option<String>,
    /// Generations in flight at once.
    pub parallel: usize,
    /// Advance the generations in flight with one batched decode step (one scheduler thread)
    /// instead of one thread per generation.
    pub batch_decode: bool,
    /// Requests that may wait for a free slot before 503.
    pub queue: usize,
    /// Context length per sequence (default and maximum: the model's).
    pub context: Option<usize>,
    /// `max_tokens` when a request gives none.
    pub default_max_tokens: usize,
    pub max_body_bytes: usize,
    pub max_images: usize,
    /// Largest image in bytes, from a data: URI or fetched from a URL.
    pub max_image_bytes: usize,
    /// Whether `image_url` may be an http(s) URL, and to which addresses.
    pub image_urls: ImageUrls,
    /// Total time to fetch one image URL (connect, redirects, body).
    pub image_url_timeout: Duration,
    /// Redirects followed per image URL.
    pub image_url_redirects: usize,
    pub cors_origins: Vec<String>,
    /// Image embeddings kept by content hash.
    pub image_cache: usize,
    /// Serve a float model on the integer path: (scheme, calibration set), calibrated at
    /// start-up as `autoneural quantize` does.
    pub precision: Option<(String, PathBuf)>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            model_dir: PathBuf::new(),
            host: "127.0.0.1".into(),
            port: 8080,
            api_key: None,
            parallel: 2,
            batch_decode: true,
            queue: 16,
            context: None,
            default_max_tokens: 256,
            max_body_bytes: 32 << 20,
            max_images: 8,
            max_image_bytes: 16 << 20,
            image_urls: ImageUrls::Off,
            image_url_timeout: Duration::from_secs(10),
            image_url_redirects: 3,
            cors_origins: Vec::new(),
            image_cache: 32,
            precision: None,
        }
    }
}

/// The loaded model and what requests need from it.
pub struct Loaded {
    pub engine: Engine,
    pub template: ChatTemplate,
    pub model_id: String,
    pub context: usize,
    pub stop_tokens: Vec<u32>,
}

impl Loaded {
    pub fn load(opts: &ServeOptions) -> crate::Result<Self> {
        let mut engine = Engine::load(&opts.model_dir)?;
        if let Some((scheme, calibration)) = &opts.precision {
            engine = quantize(engine, scheme, calibration)?;
        }
        let template = engine.template().clone();
        let limit = engine.config().text.max_position_embeddings();
        let context = opts.context.unwrap_or(limit);
        if context == 0 || context > limit {
            return Err(crate::Error::input(format!(
                "--context {context} must be in 1..={limit} (the model's max_position_embeddings)"
            )));
        }
        let model_id = opts
            .model_dir
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "autoneural".into());
        let stop_tokens = engine.stop_tokens();
        Ok(Self {
            engine,
            template,
            model_id,
            context,
            stop_tokens,
        })
    }
}

/// A float engine moved to the integer path for `scheme`, calibrated on `calibration`.
fn quantize(engine: Engine, scheme: &str, calibration: &std::path::Path) -> crate::Result<Engine> {
    use crate::quant::calibrate::{calibrate, CalibrationOptions, Rounding, DEFAULT_BINS};
    let Engine::Float(pipe) = engine else {
        return Err(crate::Error::input(
            "--precision applies to a float model directory; this one is already quantized",
        ));
    };
    let scheme = crate::quant::scheme::Scheme::parse(scheme)?;
    let samples = crate::quant::calibset::read_calibration_set(calibration)?;
    let stats = calibrate(
        &pipe,
        &samples,
        &CalibrationOptions {
            bins: DEFAULT_BINS,
            progress: false,
            system: None,
            rounding: Rounding::Gptq,
        },
    )?;
    let model = crate::quant::int_model::IntModel::build(&pipe.model, &stats, &scheme, None)?;
    Ok(Engine::Integer(Box::new(crate::engine::IntegerPipeline {
        model,
        config: pipe.model.config.clone(),
        tokenizer: pipe.tokenizer,
        template: pipe.template,
    })))
}
