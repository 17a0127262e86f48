//! Time per op kind, for `autoneural bench --profile`: off unless [`enable`]d, then every node
//! an executor runs adds its wall time under its kind.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

static ON: AtomicBool = AtomicBool::new(false);
static TIMES: Mutex<BTreeMap<String, (Duration, u64)>> = Mutex::new(BTreeMap::new());

pub fn enable(on: bool) {
    ON.store(on, Ordering::Relaxed);
}

#[inline]
pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

pub fn add(kind: &str, d: Duration) {
    let mut t = TIMES.lock().unwrap_or_else(|e| e.into_inner());
    let e = t.entry(kind.to_string()).or_default();
    e.0 += d;
    e.1 += 1;
}

/// The accumulated `(kind, seconds, calls)`, largest first; resets the counters.
pub fn take() -> Vec<(String, f64, u64)> {
    let mut t = TIMES.lock().unwrap_or_else(|e| e.into_inner());
    let mut v: Vec<_> = std::mem::take(&mut *t)
        .into_iter()
        .map(|(k, (d, n))| (k, d.as_secs_f64(), n))
        .collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v
}
