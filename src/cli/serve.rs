//! `autoneural serve`: the OpenAI-compatible server (see `autoneural::server`).

use anyhow::{Context, Result};
use autoneural::server::{serve as run_server, ImageUrls, ServeOptions};
use clap::{Args, ValueEnum};
use std::path::PathBuf;
use std::time::Duration;

/// What `image_url` parts may be besides `data:` URIs.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum ImageUrlsArg {
    /// data: URIs only.
    Off,
    /// Also http(s) URLs whose host resolves only to globally routable addresses (no
    /// loopback, private, link-local, CGNAT, multicast, documentation ... ranges).
    Public,
    /// Also http(s) URLs to any address, loopback and private networks included: for trusted
    /// networks and tests only.
    Any,
}

/// On or off.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Switch {
    On,
    Off,
}

/// Seconds, fractions allowed, more than 0 and at most an hour.
fn seconds_arg(s: &str) -> std::result::Result<Duration, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !(v > 0.0 && v <= 3600.0) {
        return Err(format!("{s} s: must be more than 0 and at most 3600"));
    }
    Ok(Duration::from_secs_f64(v))
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Model directory (float or quantized).
    #[arg(long, default_value = super::DEFAULT_MODEL)]
    model: PathBuf,
    /// Address to bind (loopback by default; 0.0.0.0 exposes the server to the network).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Require `Authorization: Bearer KEY` (everything but /health, /metrics and the page).
    /// Also read from AUTONEURAL_API_KEY.
    #[arg(long, env = "AUTONEURAL_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Generations in flight at once.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    parallel: u16,
    /// Run the decode steps of the generations in flight as one batched forward pass (`on`),
    /// or each generation on its own thread (`off`). Answers are the same either way.
    #[arg(long, value_enum, default_value = "on")]
    batch_decode: Switch,
    /// Requests that may wait for a free slot; beyond them the server answers 503.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(0..=4096))]
    queue: u16,
    /// Context length per sequence (default: the model's max_position_embeddings).
    #[arg(long, value_parser = super::context_arg)]
    context: Option<usize>,
    /// `max_tokens` of requests that give none.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    default_max_tokens: u32,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 32 << 20)]
    max_body_bytes: usize,
    /// Images per request.
    #[arg(long, default_value_t = 8)]
    max_images: usize,
    /// Largest image (decoded from its data: URI, or fetched) in bytes.
    #[arg(long, default_value_t = 16 << 20)]
    max_image_bytes: usize,
    /// Whether `image_url` parts may be http(s) URLs the server fetches (within
    /// --max-image-bytes, --image-url-timeout and 3 redirects).
    #[arg(long, value_enum, default_value = "off")]
    image_urls: ImageUrlsArg,
    /// Seconds to fetch one image URL, redirects and body included.
    #[arg(long, default_value = "10", value_name = "SECONDS", value_parser = seconds_arg)]
    image_url_timeout: Duration,
    /// Allow browsers on this origin (repeatable; CORS is off by default).
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    cors_origins: Vec<String>,
    /// Image embeddings cached by content hash.
    #[arg(long, default_value_t = 32)]
    image_cache: usize,
    /// Serve a float model on the integer path with this scheme (`default`, `w8a8`, ...),
    /// calibrated at start-up on --calibration. Quantized directories need no flag.
    #[arg(long, requires = "calibration")]
    precision: Option<String>,
    /// Calibration set for --precision (see `quantize --calibration`).
    #[arg(long, requires = "precision")]
    calibration: Option<PathBuf>,
}

pub fn serve(a: ServeArgs) -> Result<()> {
    let opts = ServeOptions {
        model_dir: super::resolve_model_dir(&a.model)?,
        host: a.host,
        port: a.port,
        api_key: a.api_key.filter(|k| !k.is_empty()),
        parallel: a.parallel as usize,
        batch_decode: matches!(a.batch_decode, Switch::On),
        queue: a.queue as usize,
        context: a.context,
        default_max_tokens: a.default_max_tokens as usize,
        max_body_bytes: a.max_body_bytes,
        max_images: a.max_images,
        max_image_bytes: a.max_image_bytes,
        image_urls: match a.image_urls {
            ImageUrlsArg::Off => ImageUrls::Off,
            ImageUrlsArg::Public => ImageUrls::Public,
            ImageUrlsArg::Any => ImageUrls::Any,
        },
        image_url_timeout: a.image_url_timeout,
        cors_origins: a.cors_origins,
        image_cache: a.image_cache,
        precision: a.precision.zip(a.calibration),
        ..ServeOptions::default()
    };
    // `main` lets SIGPIPE end the CLI quietly on a closed stdout; a server must instead see a
    // client's closed socket as a write error (EPIPE) and carry on.
    #[cfg(unix)]
    // SAFETY: changing a signal disposition before any server thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    // The HTTP side needs little; generation runs on blocking threads and the rayon pool.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(run_server(opts, None))?;
    Ok(())
}
