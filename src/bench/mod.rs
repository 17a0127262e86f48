//! `autoneural bench`: what this engine does on this machine, measured. Instruction peaks
//! ([`peak`]), integer and float kernels on real layer shapes ([`kernels`]), and whole models of
//! real shapes on random weights ([`models`]). Benchmarks report; they never assert a speed (the
//! tests check correctness, `docs/PERFORMANCE.md` records the numbers with their commands).

pub mod kernels;
pub mod models;
pub mod peak;

use serde::Serialize;
use std::time::{Duration, Instant};

/// Median seconds of `f`, after one warm-up call: at least 3 timed calls, more while the total
/// stays under a second (at most 50); calls of more than [`LONG_CALL`] are timed once more only
/// (their run-to-run spread is small next to their length, and three more would take minutes).
pub fn time_median(mut f: impl FnMut()) -> f64 {
    let warm = Instant::now();
    f();
    if warm.elapsed() > LONG_CALL {
        let t = Instant::now();
        f();
        return t.elapsed().as_secs_f64();
    }
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < 3 || (start.elapsed() < Duration::from_secs(1) && times.len() < 50) {
        let t = Instant::now();
        f();
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// A call this long is timed once after its warm-up.
pub const LONG_CALL: Duration = Duration::from_secs(10);

/// The machine a report was measured on.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    /// Kernel level the integer ops ran at.
    pub kernel_level: String,
    pub version: String,
}

impl Machine {
    pub fn this() -> Self {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|v| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        Self {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel_level: crate::quant::kernels::level().name().into(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }
}

/// Peak resident memory of this process so far (`VmHWM`), in MiB, where the OS reports it.
pub fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Everything one `bench` run measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub machine: Option<Machine>,
    pub peaks: Vec<peak::Peak>,
    pub kernels: Vec<kernels::KernelRow>,
    pub lm: Vec<models::LmRow>,
    pub vision: Vec<models::VisionRow>,
    pub ttft: Vec<models::TtftRow>,
    /// Peak resident memory after each section, MiB.
    pub peak_rss_mib: Vec<(String, f64)>,
    /// With `--profile`: integer op kind, seconds, calls (every integer run, warm-ups included).
    pub profile: Vec<(String, f64, u64)>,
}

impl Report {
    /// Plain-text tables, one per measured section.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        if let Some(m) = &self.machine {
            let _ = writeln!(
                s,
                "machine: {} ({} cores), integer kernels: {}, autoneural {}\n",
                m.cpu, m.cores, m.kernel_level, m.version
            );
        }
        if !self.peaks.is_empty() {
            let _ = writeln!(
                s,
                "{:<28} {:>8} {:>10}",
                "instruction peak", "threads", "GMAC/s"
            );
            for p in &self.peaks {
                let _ = writeln!(
                    s,
                    "{:<28} {:>8} {:>10.1}",
                    p.instruction, p.threads, p.gmacs
                );
            }
            s.push('\n');
        }
        if !self.kernels.is_empty() {
            let _ = writeln!(
                s,
                "{:<7} {:<22} {:>14} {:>7} {:>8} {:>10} {:>10}",
                "kernel", "level", "shape", "tokens", "threads", "ms", "GMAC/s"
            );
            for k in &self.kernels {
                let _ = writeln!(
                    s,
                    "{:<7} {:<22} {:>14} {:>7} {:>8} {:>10.3} {:>10.1}",
                    k.kernel,
                    k.level,
                    format!("[{}, {}]", k.shape[0], k.shape[1]),
                    k.tokens,
                    k.threads,
                    k.ms,
                    k.gmacs
                );
            }
            s.push('\n');
        }
        if !self.lm.is_empty() {
            let _ = writeln!(
                s,
                "{:<12} {:<10} {:>8} {:>14} {:>14} {:>14}",
                "LM", "precision", "threads", "prefill tok/s", "(tokens)", "decode tok/s"
            );
            for r in &self.lm {
                let _ = writeln!(
                    s,
                    "{:<12} {:<10} {:>8} {:>14.1} {:>14} {:>14.2}",
                    r.model,
                    r.precision,
                    r.threads,
                    r.prefill_tok_s,
                    r.prompt_tokens,
                    r.decode_tok_s
                );
            }
            s.push('\n');
        }
        if !self.vision.is_empty() {
            let _ = writeln!(
                s,
                "{:<20} {:<10} {:>6} {:>8} {:>12}",
                "vision", "precision", "size", "threads", "latency ms"
            );
            for r in &self.vision {
                let _ = writeln!(
                    s,
                    "{:<20} {:<10} {:>6} {:>8} {:>12.1}",
                    r.model, r.precision, r.image_size, r.threads, r.latency_ms
                );
            }
            s.push('\n');
        }
        if !self.ttft.is_empty() {
            let _ = writeln!(
                s,
                "{:<16} {:<22} {:>6} {:>7} {:>8} {:>10} {:>11} {:>9}",
                "first token",
                "scheme",
                "size",
                "prompt",
                "threads",
                "vision ms",
                "prefill ms",
                "TTFT ms"
            );
            for r in &self.ttft {
                let _ = writeln!(
                    s,
                    "{:<16} {:<22} {:>6} {:>7} {:>8} {:>10.1} {:>11.1} {:>9.1}",
                    r.model,
                    r.precision,
                    r.image_size,
                    r.prompt_tokens,
                    r.threads,
                    r.vision_ms,
                    r.prefill_ms,
                    r.ttft_ms
                );
            }
            s.push('\n');
        }
        if !self.profile.is_empty() {
            let total: f64 = self.profile.iter().map(|p| p.1).sum();
            let _ = writeln!(
                s,
                "{:<24} {:>10} {:>7} {:>8}",
                "integer op", "s", "%", "calls"
            );
            for (kind, secs, n) in &self.profile {
                let _ = writeln!(
                    s,
                    "{kind:<24} {secs:>10.3} {:>7.1} {n:>8}",
                    100.0 * secs / total.max(1e-12)
                );
            }
            s.push('\n');
        }
        for (what, mib) in &self.peak_rss_mib {
            let _ = writeln!(s, "peak resident memory after {what}: {mib:.0} MiB");
        }
        s
    }
}
