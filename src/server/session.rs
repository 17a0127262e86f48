//! One chat request's generation, on a blocking thread: encodes the images it does not find in
//! the cache, generates, turns tokens into text (holding back what could be the start of a stop
//! sequence), and reports through a channel. A [`CancelGuard`] dropped by the HTTP side (the
//! client went away) stops the generation at the next token.

use super::images::{EmbeddingCache, ImageKey};
use crate::chat::StreamDecoder;
use crate::engine::{Engine, ImageEmbeddings};
use crate::error::Error;
use crate::generate::{GenerateOptions, StopReason};
use crate::tensor::Tensor;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

/// An image of the request: its content hash, and its pixels unless the cache had its embedding.
pub struct RequestImage {
    pub key: ImageKey,
    pub pixels: Option<Tensor>,
}

pub struct Job {
    pub ids: Vec<u32>,
    pub images: Vec<RequestImage>,
    pub opts: GenerateOptions,
    pub stop_strings: Vec<String>,
    pub cancel: Arc<AtomicBool>,
}

/// What a generation reports, in order: text pieces, then one `Done` or `Failed`.
#[derive(Debug)]
pub enum Event {
    Text(String),
    Done {
        finish_reason: &'static str,
        completion_tokens: usize,
    },
    /// `client`: the request was at fault (a bad image, say), not the server.
    Failed {
        message: String,
        client: bool,
    },
}

/// Sets the cancel flag when dropped: held by whatever answers the client (the handler's future
/// or the SSE stream), which the HTTP server drops when the connection closes.
pub struct CancelGuard(pub Arc<AtomicBool>);

impl Drop for CancelGuard {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The channel a generation reports on. Unbounded, so a slow reader never stalls the thread
/// generating (with batching, that thread serves every sequence); what it can hold is bounded by
/// the request's `max_tokens`.
pub type Events = mpsc::UnboundedSender<Event>;

/// Runs a job to its end on the calling thread, alone; every outcome is reported on `tx`.
pub fn run(engine: &Engine, cache: &EmbeddingCache, job: Job, tx: Events) {
    let r = embed_images(engine, cache, job.images).and_then(|images| {
        let mut out = Output::new(engine, &job.stop_strings, job.cancel.clone(), tx.clone());
        let gen = engine.generate_from(&images, &job.ids, &job.opts, &mut |id| out.on_token(id))?;
        out.finish(gen.tokens.len(), gen.stop_reason)
    });
    report(r, &tx);
}

/// Sends a generation's outcome: `Done`, or `Failed` saying whether the request was at fault.
pub fn report(r: crate::Result<(&'static str, usize)>, tx: &Events) {
    let _ = tx.send(match r {
        Ok((finish_reason, completion_tokens)) => Event::Done {
            finish_reason,
            completion_tokens,
        },
        Err(e) => Event::Failed {
            client: matches!(
                e,
                Error::Input(_) | Error::Image { .. } | Error::ContextOverflow { .. }
            ),
            message: e.to_string(),
        },
    });
}

/// The embeddings of a request's images: from the cache, or encoded (and cached).
pub fn embed_images(
    engine: &Engine,
    cache: &EmbeddingCache,
    images: Vec<RequestImage>,
) -> crate::Result<ImageEmbeddings> {
    let mut parts = Vec::with_capacity(images.len());
    for img in images {
        let e = match (cache.get(&img.key), img.pixels) {
            (Some(e), _) => {
                metrics::counter!("autoneural_image_cache_hits_total").increment(1);
                e
            }
            (None, Some(p)) => {
                let e = Arc::new(engine.encode_images(std::slice::from_ref(&p))?);
                metrics::counter!("autoneural_images_encoded_total").increment(1);
                cache.insert(img.key, e.clone());
                e
            }
            (None, None) => {
                return Err(Error::input(
                    "an image left the cache before it was used; send the request again",
                ))
            }
        };
        parts.push(e);
    }
    ImageEmbeddings::join(&parts, engine.is_integer())
}

/// The text side of one generation: turns tokens into text, holds back what could start a stop
/// sequence, sends the rest, stops on a stop sequence or a cancelled request, and records the
/// latency metrics. The same for a sequence generated alone or in a batch.
pub struct Output<'e> {
    decoder: StreamDecoder<'e>,
    stops: Vec<String>,
    cancel: Arc<AtomicBool>,
    tx: Events,
    text: String,
    sent: usize,
    stopped_by_string: bool,
    started: Instant,
    last: Instant,
    first: bool,
}

impl<'e> Output<'e> {
    /// Starts the time-to-first-token clock.
    pub fn new(engine: &'e Engine, stops: &[String], cancel: Arc<AtomicBool>, tx: Events) -> Self {
        let now = Instant::now();
        Self {
            decoder: StreamDecoder::new(engine.tokenizer()),
            stops: stops.to_vec(),
            cancel,
            tx,
            text: String::new(),
            sent: 0,
            stopped_by_string: false,
            started: now,
            last: now,
            first: true,
        }
    }

    /// Whether the client has gone away.
    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// A new token: `Err(Stopped)` when the request is cancelled or a stop sequence appeared.
    pub fn on_token(&mut self, id: u32) -> crate::Result<()> {
        if self.cancelled() {
            return Err(Error::Stopped);
        }
        let now = Instant::now();
        if self.first {
            metrics::histogram!("autoneural_time_to_first_token_seconds")
                .record(now.duration_since(self.started).as_secs_f64());
            self.first = false;
        } else {
            metrics::histogram!("autoneural_inter_token_latency_seconds")
                .record(now.duration_since(self.last).as_secs_f64());
        }
        self.last = now;
        if let Some(piece) = self.decoder.push(id)? {
            self.text.push_str(&piece);
        }
        if self.emit(false) {
            self.stopped_by_string = true;
            return Err(Error::Stopped);
        }
        Ok(())
    }

    /// The end of the generation (`tokens` generated, stopped for `reason`): flushes the text
    /// still held back; returns the finish reason and the completion tokens.
    pub fn finish(
        mut self,
        tokens: usize,
        reason: StopReason,
    ) -> crate::Result<(&'static str, usize)> {
        if !self.stopped_by_string && !self.cancelled() {
            if let Some(rest) = self.decoder.finish()? {
                self.text.push_str(&rest);
            }
            self.stopped_by_string = self.emit(true);
        }
        metrics::counter!("autoneural_generated_tokens_total").increment(tokens as u64);
        let finish = match reason {
            _ if self.stopped_by_string => "stop",
            StopReason::Eos | StopReason::Stopped => "stop",
            StopReason::MaxTokens | StopReason::Context => "length",
        };
        Ok((finish, tokens))
    }

    fn emit(&mut self, last: bool) -> bool {
        let tx = &self.tx;
        emit(&mut self.text, &mut self.sent, &self.stops, last, &|e| {
            tx.send(e).is_ok()
        })
    }
}

/// Sends the text that is safe to show: everything before a stop string (then returns true), or
/// everything but a tail that could still become one (all of it when `last`).
fn emit(
    text: &mut String,
    sent: &mut usize,
    stops: &[String],
    last: bool,
    send: &dyn Fn(Event) -> bool,
) -> bool {
    let hit = stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min();
    let (upto, stop) = match hit {
        Some(at) => (at, true),
        None if last => (text.len(), false),
        None => (text.len() - held_back(text, stops), false),
    };
    let upto = upto.max(*sent);
    if upto > *sent && text.is_char_boundary(upto) {
        if !send(Event::Text(text[*sent..upto].to_string())) {
            return true; // nobody is listening any more
        }
        *sent = upto;
    }
    if stop {
        text.truncate(upto);
    }
    stop
}

/// Bytes at the end of `text` that are a proper prefix of some stop string.
fn held_back(text: &str, stops: &[String]) -> usize {
    stops
        .iter()
        .flat_map(|s| {
            (1..s.len())
                .rev()
                .filter(move |&n| s.is_char_boundary(n) && text.ends_with(&s[..n]))
                .take(1)
        })
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    fn run_pieces(pieces: &[&str], stops: &[&str]) -> (Vec<String>, bool) {
        let out = RefCell::new(Vec::new());
        let send = |e: Event| {
            if let Event::Text(t) = e {
                out.borrow_mut().push(t);
            }
            true
        };
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let (mut text, mut sent) = (String::new(), 0);
        for (i, p) in pieces.iter().enumerate() {
            text.push_str(p);
            if emit(&mut text, &mut sent, &stops, i + 1 == pieces.len(), &send) {
                return (out.into_inner(), true);
            }
        }
        (out.into_inner(), false)
    }

    #[test]
    fn stop_strings_are_cut_and_never_shown_in_part() {
        let (out, stopped) = run_pieces(&["Hel", "lo\n", "\nBye"], &["\n\n"]);
        assert!(stopped);
        assert_eq!(out.concat(), "Hello");
        // "lo\n" could start "\n\n": the newline is held back until it is known not to.
        assert_eq!(out, ["Hel", "lo"]);
        let (out, stopped) = run_pieces(&["a\n", "b"], &["\n\n"]);
        assert!(!stopped);
        assert_eq!(out, ["a", "\nb"]);
        let (out, _) = run_pieces(&["ab", "cd"], &[]);
        assert_eq!(out, ["ab", "cd"]);
    }
}
