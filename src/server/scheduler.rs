//! Continuous batching (`--batch-decode on`): one thread owns every sequence in flight and
//! advances all of them with one batched forward pass per step ([`Engine::decode_batch`]), so
//! each weight is read once per step for all of them instead of once per sequence.
//!
//! Each iteration of the loop: take the requests that arrived, prefill at most one of them
//! (encode its images, run its prompt, sample its first token; one per iteration so a burst of
//! new prompts delays the running sequences by one prefill per step, not by all of them),
//! retire sequences whose client went away, then run one batched decode step over every
//! sequence still generating and hand each its own logits. Sampling, stop tokens, stop
//! sequences, `max_tokens` and the context limit are those of a sequence generated alone
//! ([`Progress`], [`Output`]), and a batched step gives each sequence the logits it would get
//! alone, bit for bit, so every answer is the same with or without batching.
//!
//! The HTTP side keeps its slot semaphore and queue: a request enters here holding its slot
//! ([`Work::hold`]), so at most `--parallel` sequences are in flight, and releases it when its
//! sequence retires.

use super::images::EmbeddingCache;
use super::session::{self, Event, Events, Job, Output};
use super::Loaded;
use crate::engine::Engine;
use crate::exec::SequenceState;
use crate::generate::{Next, Progress, StopReason};
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;

/// A request for the scheduler.
pub struct Work {
    pub job: Job,
    pub tx: Events,
    /// What the request holds until its sequence retires (its slot and its place in the queue).
    pub hold: Box<dyn Send>,
}

/// Starts the scheduler thread; requests go in through the returned sender. The thread ends
/// when every sender is dropped and the sequences in flight are done.
pub fn spawn(loaded: Arc<Loaded>, cache: Arc<EmbeddingCache>) -> std::io::Result<Sender<Work>> {
    let (tx, rx) = channel();
    std::thread::Builder::new()
        .name("autoneural-scheduler".into())
        .spawn(move || run(&loaded.engine, &cache, rx))?;
    Ok(tx)
}

/// A sequence between batched steps.
struct Active<'e> {
    state: SequenceState,
    progress: Progress,
    out: Output<'e>,
    /// The token its next step runs.
    next: u32,
    tx: Events,
    _hold: Box<dyn Send>,
}

impl Active<'_> {
    /// Ends the sequence: flushes its text and reports `Done` (or the error).
    fn retire(self, reason: StopReason) {
        let gen = self.progress.finish(reason);
        session::report(self.out.finish(gen.tokens.len(), gen.stop_reason), &self.tx);
    }

    /// Takes the logits of its latest position; `None` when it is done (and reported).
    fn accept(mut self, logits: &[f32]) -> Option<Self> {
        let out = &mut self.out;
        match self
            .progress
            .accept(logits, self.state.len(), &mut |id| out.on_token(id))
        {
            Ok(Next::Step(token)) => {
                self.next = token;
                Some(self)
            }
            Ok(Next::Done(reason)) => {
                self.retire(reason);
                None
            }
            Err(e) => {
                session::report(Err(e), &self.tx);
                None
            }
        }
    }
}

fn run(engine: &Engine, cache: &EmbeddingCache, rx: Receiver<Work>) {
    let mut waiting: VecDeque<Work> = VecDeque::new();
    let mut active: Vec<Active> = Vec::new();
    loop {
        // Block only when there is nothing to do.
        if active.is_empty() && waiting.is_empty() {
            match rx.recv() {
                Ok(w) => waiting.push_back(w),
                Err(_) => return,
            }
        }
        waiting.extend(rx.try_iter());
        if let Some(w) = waiting.pop_front() {
            if let Some(a) = rayon::scope(|_| start(engine, cache, w)) {
                active.push(a);
            }
        }
        // A client that went away stops its sequence before the next step.
        let (gone, kept): (Vec<_>, Vec<_>) = active.into_iter().partition(|a| a.out.cancelled());
        active = kept;
        for a in gone {
            a.retire(StopReason::Stopped);
        }
        metrics::gauge!("autoneural_sequences_in_flight").set(active.len() as f64);
        if active.is_empty() {
            continue;
        }
        metrics::histogram!("autoneural_decode_batch_size").record(active.len() as f64);
        let tokens: Vec<u32> = active.iter().map(|a| a.next).collect();
        let mut states: Vec<&mut SequenceState> = active.iter_mut().map(|a| &mut a.state).collect();
        // On a pool worker: the kernels' parallel loops inside the step then run as local
        // rayon jobs instead of each handing work over from this thread and waiting for it.
        match rayon::scope(|_| guarded(|| engine.decode_batch(&tokens, &mut states))) {
            Ok(Ok(logits)) => {
                active = active
                    .into_iter()
                    .zip(&logits)
                    .filter_map(|(a, l)| a.accept(l))
                    .collect();
            }
            Ok(Err(e)) => fail_all(&mut active, &e.to_string()),
            Err(panic) => fail_all(&mut active, &panic),
        }
        metrics::gauge!("autoneural_sequences_in_flight").set(active.len() as f64);
    }
}

/// A failed step fails every sequence in it (their states are no longer consistent): a server
/// error, since the requests were valid when admitted.
fn fail_all(active: &mut Vec<Active>, message: &str) {
    for a in active.drain(..) {
        let _ = a.tx.send(Event::Failed {
            message: message.to_string(),
            client: false,
        });
    }
}

/// Prefills a new request and takes its first token; `None` when it is already done (one token
/// asked for, a stop, an error: all reported).
fn start<'e>(engine: &'e Engine, cache: &EmbeddingCache, w: Work) -> Option<Active<'e>> {
    let Work { job, tx, hold } = w;
    let r = guarded(|| -> crate::Result<_> {
        let images = session::embed_images(engine, cache, job.images)?;
        let out = Output::new(engine, &job.stop_strings, job.cancel.clone(), tx.clone());
        let mut progress = Progress::new(job.ids.len(), 0, &job.opts)?;
        if !progress.wants_tokens() {
            return Ok(Err(out.finish(0, StopReason::MaxTokens)));
        }
        let (state, logits) = engine.prefill(&images, &job.ids, &job.opts)?;
        progress.prefilled();
        Ok(Ok((progress, out, state, logits)))
    });
    let (progress, out, state, logits) = match r {
        Ok(Ok(Ok(r))) => r,
        Ok(Ok(Err(done))) => {
            session::report(done, &tx);
            return None;
        }
        Ok(Err(e)) => {
            session::report(Err(e), &tx);
            return None;
        }
        Err(panic) => {
            let _ = tx.send(Event::Failed {
                message: panic,
                client: false,
            });
            return None;
        }
    };
    Active {
        state,
        progress,
        out,
        next: 0,
        tx,
        _hold: hold,
    }
    .accept(&logits)
}

/// Runs `f`; a panic becomes `Err(message)`, so one bad request cannot take the scheduler (and
/// every sequence in flight) down with it.
fn guarded<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| {
        let msg = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        format!("internal error: {msg}")
    })
}
