//! Routes, handlers and middleware of the server (see the module docs of `server`).

use super::api::{self, ApiError, ChatRequest, Content, Part, Usage};
use super::fetch::{Fetcher, ImageUrls};
use super::images::{self, EmbeddingCache, ImageSource};
use super::scheduler::{self, Work};
use super::session::{self, CancelGuard, Event, Job, RequestImage};
use super::{Loaded, ServeOptions};
use crate::chat::ChatTokens;
use crate::chat_template::{Segment, Turn};
use crate::error::Error;
use crate::generate::{GenerateOptions, SamplingParams};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};

struct AppState {
    opts: ServeOptions,
    loaded: OnceLock<Arc<Loaded>>,
    /// The batching scheduler's inbox (`--batch-decode on`), set once the model is loaded.
    scheduler: OnceLock<std::sync::mpsc::Sender<Work>>,
    slots: Arc<Semaphore>,
    /// Requests waiting for a slot or generating.
    pending: Arc<AtomicUsize>,
    cache: Arc<EmbeddingCache>,
    /// Fetches `image_url`s that are http(s) URLs; `None` when `--image-urls off`.
    fetcher: Option<Arc<Fetcher>>,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    next_id: AtomicU64,
}

type Shared = Arc<AppState>;

impl AppState {
    fn loaded(&self) -> Result<Arc<Loaded>, ApiError> {
        self.loaded
            .get()
            .cloned()
            .ok_or_else(|| ApiError::unavailable("the model is still loading", Some(1)))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = (status, Json(self.body())).into_response();
        if let Some(s) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

/// Binds, answers `/health` with 503 while the model loads in the background, then serves until
/// Ctrl-C. `ready` receives the bound address (tests bind port 0).
pub async fn serve(
    opts: ServeOptions,
    ready: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> crate::Result<()> {
    let fetcher = Fetcher::new(
        opts.image_urls,
        opts.image_url_timeout,
        opts.image_url_redirects,
        opts.max_image_bytes,
    )?
    .map(Arc::new);
    let listener = tokio::net::TcpListener::bind((opts.host.as_str(), opts.port))
        .await
        .map_err(|e| Error::io(format!("{}:{}", opts.host, opts.port), e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::io("listener", e))?;
    let state = Arc::new(AppState {
        slots: Arc::new(Semaphore::new(opts.parallel.max(1))),
        pending: Arc::new(AtomicUsize::new(0)),
        cache: Arc::new(EmbeddingCache::new(opts.image_cache)),
        fetcher,
        metrics: install_metrics(),
        next_id: AtomicU64::new(1),
        loaded: OnceLock::new(),
        scheduler: OnceLock::new(),
        opts,
    });
    if let Some(h) = state.metrics.clone() {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                h.run_upkeep();
            }
        });
    }
    tracing::info!("listening on http://{addr}");
    eprintln!("autoneural serve: listening on http://{addr} (loading the model)");
    match state.opts.image_urls {
        ImageUrls::Off => {}
        ImageUrls::Public => eprintln!(
            "autoneural serve: image URLs are fetched from public addresses only \
             (--image-urls public)"
        ),
        ImageUrls::Any => eprintln!(
            "autoneural serve: image URLs are fetched from any address, loopback and private \
             networks included (--image-urls any)"
        ),
    }
    if let Some(tx) = ready {
        let _ = tx.send(addr);
    }
    let app = router(state.clone());
    // Streamed tokens are small writes: without TCP_NODELAY, Nagle's algorithm and the client's
    // delayed ACK hold each one back for ~40 ms.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
    });
    let st = state.clone();
    let loaded = tokio::task::spawn_blocking(move || Loaded::load(&st.opts))
        .await
        .map_err(|e| Error::input(format!("loading the model failed: {e}")))??;
    eprintln!(
        "autoneural serve: model `{}` loaded ({} path, context {}, decode steps {})",
        loaded.model_id,
        if loaded.engine.is_integer() {
            "integer"
        } else {
            "float"
        },
        loaded.context,
        if state.opts.batch_decode {
            "batched"
        } else {
            "one sequence per thread"
        }
    );
    let loaded = Arc::new(loaded);
    if state.opts.batch_decode {
        let tx = scheduler::spawn(loaded.clone(), state.cache.clone())
            .map_err(|e| Error::io("the scheduler thread", e))?;
        let _ = state.scheduler.set(tx);
    }
    let _ = state.loaded.set(loaded);
    server
        .await
        .map_err(|e| Error::input(format!("server task failed: {e}")))?
        .map_err(|e| Error::io("server", e))
}

fn install_metrics() -> Option<metrics_exporter_prometheus::PrometheusHandle> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    let buckets = [
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ];
    let batch = [1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0, 64.0];
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("seconds".into()), &buckets)
        .ok()?
        .set_buckets_for_metric(Matcher::Full("autoneural_decode_batch_size".into()), &batch)
        .ok()?
        .build_recorder();
    let handle = recorder.handle();
    // Only one recorder per process; a second server in the same process shares the first's.
    metrics::set_global_recorder(recorder).ok()?;
    Some(handle)
}

fn router(state: Shared) -> Router {
    let protected = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/models", get(models))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    let mut app = Router::new()
        .route("/health", get(health))
        .route("/v1/health", get(health))
        .route("/metrics", get(metrics_route))
        .route("/", get(page))
        .merge(protected)
        .fallback(|| async { ApiError::new(404, "not_found_error", "no such endpoint") })
        .layer(DefaultBodyLimit::max(state.opts.max_body_bytes))
        .with_state(state.clone());
    if !state.opts.cors_origins.is_empty() {
        let origins: Vec<HeaderValue> = state
            .opts
            .cors_origins
            .iter()
            .filter_map(|o| HeaderValue::from_str(o).ok())
            .collect();
        app = app.layer(
            tower_http::cors::CorsLayer::new()
                .allow_origin(origins)
                .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
                .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE]),
        );
    }
    app
}

/// Bearer-token check in constant time (for the key's length).
async fn auth(State(st): State<Shared>, req: Request, next: Next) -> Response {
    if let Some(key) = &st.opts.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let same = given.len() == key.len()
            && given
                .bytes()
                .zip(key.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if !same {
            count("auth", 401);
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(req).await
}

fn count(endpoint: &'static str, status: u16) {
    metrics::counter!("autoneural_requests_total", "endpoint" => endpoint, "status" => status.to_string())
        .increment(1);
}

async fn health(State(st): State<Shared>) -> Response {
    match st.loaded() {
        Ok(_) => Json(serde_json::json!({"status": "ok"})).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn metrics_route(State(st): State<Shared>) -> Response {
    let body = st.metrics.as_ref().map(|h| h.render()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

async fn page() -> Html<&'static str> {
    Html(include_str!("page.html"))
}

async fn models(State(st): State<Shared>) -> Result<Json<serde_json::Value>, ApiError> {
    let l = st.loaded()?;
    let vision = l.engine.config().vision.is_some();
    Ok(Json(serde_json::json!({
        "object": "list",
        "data": [{
            "id": l.model_id,
            "object": "model",
            "created": 0,
            "owned_by": "autoneural",
            "meta": {
                "context": l.context,
                "path": if l.engine.is_integer() { "integer" } else { "float" },
                "vision": vision,
                "chat_template": if l.template.from_model { "model" } else { "builtin" },
            },
        }],
    })))
}

fn parse_body<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<T, ApiError> {
    let body = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                413,
                "invalid_request_error",
                format!("the request body is larger than the {limit}-byte limit"),
            )
        } else {
            ApiError::bad_request(format!("cannot read the request body: {r}"))
        }
    })?;
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
}

#[derive(Deserialize)]
struct TokenizeRequest {
    content: String,
    /// Recognise special-token strings in `content` (default: encode it as text).
    #[serde(default)]
    parse_special: bool,
}

async fn tokenize(
    State(st): State<Shared>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let l = st.loaded()?;
    let r: TokenizeRequest = parse_body(body, st.opts.max_body_bytes)?;
    let tok = l.engine.tokenizer();
    tok.check_fits(r.content.len(), l.context)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let ids = if r.parse_special {
        tok.encode(&r.content)
    } else {
        tok.encode_literal(&r.content)
    }
    .map_err(|e| ApiError::server(e.to_string()))?;
    Ok(Json(serde_json::json!({"tokens": ids})))
}

#[derive(Deserialize)]
struct DetokenizeRequest {
    tokens: Vec<u32>,
}

async fn detokenize(
    State(st): State<Shared>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let l = st.loaded()?;
    let r: DetokenizeRequest = parse_body(body, st.opts.max_body_bytes)?;
    let vocab = l.engine.config().text.vocab_size();
    if let Some(bad) = r.tokens.iter().find(|&&t| t as usize >= vocab) {
        return Err(ApiError::bad_request(format!(
            "token {bad} is outside the vocabulary ({vocab})"
        ))
        .param("tokens"));
    }
    let text = l
        .engine
        .tokenizer()
        .decode(&r.tokens)
        .map_err(|e| ApiError::server(e.to_string()))?;
    Ok(Json(serde_json::json!({"content": text})))
}

/// Releases a request's place in the queue when dropped.
struct Pending(Arc<AtomicUsize>);

impl Drop for Pending {
    fn drop(&mut self) {
        let now = self.0.fetch_sub(1, Ordering::Relaxed) - 1;
        metrics::gauge!("autoneural_requests_pending").set(now as f64);
    }
}

async fn chat(State(st): State<Shared>, body: Result<Bytes, BytesRejection>) -> Response {
    let r = chat_inner(st, body).await;
    let status = match &r {
        Ok(resp) => resp.status().as_u16(),
        Err(e) => e.status,
    };
    count("chat_completions", status);
    match r {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

/// A validated request, ready for a slot.
struct Prepared {
    job: Job,
    prompt_tokens: usize,
    stream: bool,
    include_usage: bool,
}

async fn chat_inner(st: Shared, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let loaded = st.loaded()?;
    let req: ChatRequest = parse_body(body, st.opts.max_body_bytes)?;
    let (prepared, sources) = prepare(&st.opts, &loaded, req)?;
    let Prepared {
        mut job,
        prompt_tokens,
        stream,
        include_usage,
    } = prepared;

    // A place in the queue first: a full server answers 503 at once, before fetching or decoding
    // anything, and the images in flight are bounded by (parallel + queue) requests.
    let before = st.pending.fetch_add(1, Ordering::Relaxed);
    let pending = Pending(st.pending.clone());
    metrics::gauge!("autoneural_requests_pending").set((before + 1) as f64);
    if before >= st.opts.parallel + st.opts.queue {
        return Err(ApiError::unavailable(
            format!(
                "the server is busy ({} generating, {} waiting); retry later",
                st.opts.parallel, st.opts.queue
            ),
            Some(1),
        ));
    }

    // Images: URLs fetched (all at once), then hashed, looked up, the misses decoded off the
    // async threads.
    let datas = fetch_images(st.fetcher.as_deref(), sources).await?;
    if !datas.is_empty() {
        let size = loaded
            .engine
            .config()
            .vision
            .as_ref()
            .map(|v| v.image_size())
            .unwrap_or(0);
        let cache = st.cache.clone();
        let norm = loaded.engine.config().image_norm.clone();
        job.images = tokio::task::spawn_blocking(move || {
            datas
                .iter()
                .enumerate()
                .map(|(i, bytes)| {
                    let key = images::key_of(bytes);
                    if cache.get(&key).is_some() {
                        return Ok(RequestImage { key, pixels: None });
                    }
                    let img = crate::preprocess::decode_image(bytes).map_err(|m| {
                        ApiError::bad_request(format!("image {}: {m}", i + 1)).param("messages")
                    })?;
                    let mut pixels = crate::preprocess::preprocess(&img, size);
                    if let Some(n) = &norm {
                        n.apply(&mut pixels);
                    }
                    Ok(RequestImage {
                        key,
                        pixels: Some(pixels),
                    })
                })
                .collect::<Result<Vec<_>, ApiError>>()
        })
        .await
        .map_err(|e| ApiError::server(format!("image decoding failed: {e}")))??;
    }

    // A slot (the queue place was taken before the images).
    let permit = st
        .slots
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| ApiError::server("the server is shutting down"))?;
    metrics::counter!("autoneural_prompt_tokens_total").increment(prompt_tokens as u64);

    let cancel = job.cancel.clone();
    let guard = CancelGuard(cancel);
    let (tx, mut rx) = mpsc::unbounded_channel();
    // The slot and the queue place are held until the generation has really ended.
    let hold = (permit, pending);
    if let Some(sched) = st.scheduler.get() {
        let work = Work {
            job,
            tx,
            hold: Box::new(hold),
        };
        if sched.send(work).is_err() {
            return Err(ApiError::server("the scheduler has stopped"));
        }
    } else {
        let (l, cache) = (loaded.clone(), st.cache.clone());
        tokio::task::spawn_blocking(move || {
            let _hold = hold;
            session::run(&l.engine, &cache, job, tx);
        });
    }

    let id = format!(
        "chatcmpl-{:x}{:04x}",
        now_secs(),
        st.next_id.fetch_add(1, Ordering::Relaxed)
    );
    let created = now_secs();
    let model = loaded.model_id.clone();

    // Errors before the first token are HTTP errors, for streams too.
    let first = rx.recv().await;
    if let Some(Event::Failed { message, client }) = &first {
        return Err(if *client {
            ApiError::bad_request(message.clone())
        } else {
            ApiError::server(message.clone())
        });
    }
    if !stream {
        let _guard = guard; // dropped with this future if the client goes away
        let mut text = String::new();
        let mut next = first;
        loop {
            match next {
                Some(Event::Text(t)) => text.push_str(&t),
                Some(Event::Done {
                    finish_reason,
                    completion_tokens,
                }) => {
                    let usage = Usage::new(prompt_tokens, completion_tokens);
                    return Ok(Json(api::completion(
                        &id,
                        &model,
                        created,
                        &text,
                        finish_reason,
                        usage,
                    ))
                    .into_response());
                }
                Some(Event::Failed { message, .. }) => return Err(ApiError::server(message)),
                None => return Err(ApiError::server("the generation ended without a result")),
            }
            next = rx.recv().await;
        }
    }
    let s = StreamState {
        rx,
        first,
        _guard: guard,
        id,
        model,
        created,
        include_usage,
        prompt_tokens,
        phase: Phase::Role,
    };
    let events = futures_util::stream::unfold(s, next_event);
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// The bytes of every image: `data:` URIs as decoded, URLs fetched concurrently.
async fn fetch_images(
    fetcher: Option<&Fetcher>,
    sources: Vec<ImageSource>,
) -> Result<Vec<Vec<u8>>, ApiError> {
    let fetches = sources.into_iter().enumerate().map(|(i, src)| async move {
        match src {
            ImageSource::Bytes(b) => Ok(b),
            ImageSource::Url(url) => {
                // `prepare` refuses URLs when there is no fetcher.
                let f = fetcher.ok_or_else(|| super::fetch::FetchError::Disabled.into_api(i))?;
                let r = f.fetch(&url).await;
                let outcome = match &r {
                    Ok(_) => "ok",
                    Err(e) => e.code(),
                };
                metrics::counter!("autoneural_image_url_fetches_total", "result" => outcome)
                    .increment(1);
                r.map_err(|e| e.into_api(i))
            }
        }
    });
    futures_util::future::try_join_all(fetches).await
}

/// Validates a request and renders its prompt; returns the job (without images yet) and where
/// its images come from.
fn prepare(
    opts: &ServeOptions,
    loaded: &Loaded,
    req: ChatRequest,
) -> Result<(Prepared, Vec<ImageSource>), ApiError> {
    if req.n.unwrap_or(1) != 1 {
        return Err(ApiError::bad_request("only n = 1 is supported").param("n"));
    }
    if req.messages.is_empty() {
        return Err(ApiError::bad_request("`messages` is empty").param("messages"));
    }
    let temperature = req.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::bad_request("`temperature` must be in [0, 2]").param("temperature"));
    }
    let top_p = req.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::bad_request("`top_p` must be in (0, 1]").param("top_p"));
    }
    let max_tokens = match req.max_tokens {
        Some(0) => {
            return Err(ApiError::bad_request("`max_tokens` must be at least 1").param("max_tokens"))
        }
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
        None => opts.default_max_tokens,
    };
    let stop_strings = req.stop.map(api::Stop::into_vec).unwrap_or_default();
    if stop_strings.len() > 4 {
        return Err(ApiError::bad_request("at most 4 stop sequences").param("stop"));
    }

    let mut turns = Vec::with_capacity(req.messages.len());
    let mut sources = Vec::new();
    let mut text_bytes = 0usize;
    for m in req.messages {
        let role = match m.role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            other => {
                return Err(ApiError::bad_request(format!(
                    "unsupported message role `{other}` (system, user, assistant)"
                ))
                .param("messages"))
            }
        };
        let mut content = Vec::new();
        match m.content {
            None => {}
            Some(Content::Text(t)) => {
                text_bytes += t.len();
                content.push(Segment::Text(t));
            }
            Some(Content::Parts(parts)) => {
                for p in parts {
                    match p {
                        Part::Text { text } => {
                            text_bytes += text.len();
                            content.push(Segment::Text(text));
                        }
                        Part::ImageUrl { image_url } => {
                            if sources.len() == opts.max_images {
                                return Err(ApiError::bad_request(format!(
                                    "at most {} images per request",
                                    opts.max_images
                                ))
                                .param("messages"));
                            }
                            sources.push(images::source_of(
                                image_url.url(),
                                opts.image_urls,
                                opts.max_image_bytes,
                                sources.len(),
                            )?);
                            content.push(Segment::Image);
                        }
                    }
                }
            }
        }
        turns.push(Turn {
            role: role.into(),
            content,
        });
    }
    let engine = &loaded.engine;
    if !sources.is_empty() && engine.config().vision.is_none() {
        return Err(
            ApiError::bad_request("this is a text-only model: it cannot take images")
                .param("messages"),
        );
    }
    let tok = engine.tokenizer();
    tok.check_fits(text_bytes, loaded.context)
        .map_err(|e| ApiError::bad_request(e.to_string()).code("context_length_exceeded"))?;
    let pieces = loaded
        .template
        .render(
            &turns,
            true,
            engine.tokens_per_image(),
            &ChatTokens::for_model(engine.config(), tok),
        )
        .map_err(|e| ApiError::bad_request(e.to_string()).param("messages"))?;
    let ids = tok
        .encode_pieces(&pieces)
        .map_err(|e| ApiError::server(e.to_string()))?;
    if ids.len() >= loaded.context {
        return Err(ApiError::bad_request(format!(
            "the prompt is {} tokens; the context is {} tokens",
            ids.len(),
            loaded.context
        ))
        .code("context_length_exceeded")
        .param("messages"));
    }
    let seed = req.seed.map_or(0, |s| s as u64);
    let prompt_tokens = ids.len();
    let job = Job {
        ids,
        images: Vec::new(),
        opts: GenerateOptions {
            max_new_tokens: max_tokens.min(loaded.context),
            stop_tokens: loaded.stop_tokens.clone(),
            sampling: SamplingParams {
                temperature: temperature as f32,
                top_p: top_p as f32,
                seed,
            },
            context: loaded.context,
        },
        stop_strings,
        cancel: Arc::new(AtomicBool::new(false)),
    };
    let include_usage = req.stream_options.is_some_and(|o| o.include_usage);
    Ok((
        Prepared {
            job,
            prompt_tokens,
            stream: req.stream,
            include_usage,
        },
        sources,
    ))
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

enum Phase {
    Role,
    Body,
    Usage(Usage),
    Done,
    End,
}

struct StreamState {
    rx: mpsc::UnboundedReceiver<Event>,
    /// The first event, received before the response started.
    first: Option<Event>,
    _guard: CancelGuard,
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    prompt_tokens: usize,
    phase: Phase,
}

fn sse(v: serde_json::Value) -> Result<SseEvent, Infallible> {
    Ok(SseEvent::default().data(v.to_string()))
}

async fn next_event(mut s: StreamState) -> Option<(Result<SseEvent, Infallible>, StreamState)> {
    let chunk = |s: &StreamState, delta: serde_json::Value, finish: Option<&str>| {
        sse(api::chunk(&s.id, &s.model, s.created, delta, finish))
    };
    match std::mem::replace(&mut s.phase, Phase::Body) {
        Phase::Role => {
            let e = chunk(
                &s,
                serde_json::json!({"role": "assistant", "content": ""}),
                None,
            );
            Some((e, s))
        }
        Phase::Body => {
            let ev = match s.first.take() {
                Some(e) => Some(e),
                None => s.rx.recv().await,
            };
            match ev {
                Some(Event::Text(t)) => {
                    let e = chunk(&s, serde_json::json!({"content": t}), None);
                    Some((e, s))
                }
                Some(Event::Done {
                    finish_reason,
                    completion_tokens,
                }) => {
                    s.phase = if s.include_usage {
                        Phase::Usage(Usage::new(s.prompt_tokens, completion_tokens))
                    } else {
                        Phase::Done
                    };
                    let e = chunk(&s, serde_json::json!({}), Some(finish_reason));
                    Some((e, s))
                }
                Some(Event::Failed { message, client }) => {
                    s.phase = Phase::Done;
                    let err = if client {
                        ApiError::bad_request(message)
                    } else {
                        ApiError::server(message)
                    };
                    Some((sse(err.body()), s))
                }
                None => {
                    s.phase = Phase::Done;
                    let err = ApiError::server("the generation ended without a result");
                    Some((sse(err.body()), s))
                }
            }
        }
        Phase::Usage(u) => {
            s.phase = Phase::Done;
            let e = sse(api::usage_chunk(&s.id, &s.model, s.created, u));
            Some((e, s))
        }
        Phase::Done => {
            s.phase = Phase::End;
            Some((Ok(SseEvent::default().data("[DONE]")), s))
        }
        Phase::End => None,
    }
}
