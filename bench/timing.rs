//! The benchmarks' one timer (shared with `#[path = "timing.rs"] mod timing;`).
use std::time::{Duration, Instant};

/// The best of 5 rounds of `calls` calls of `f`, per call, after `calls / 10` warm-up calls.
pub fn time_per_call(calls: u32, mut f: impl FnMut()) -> Duration {
    for _ in 0..calls / 10 {
        f();
    }
    let mut best = Duration::MAX;
    for _ in 0..5 {
        let started = Instant::now();
        for _ in 0..calls {
            f();
        }
        best = best.min(started.elapsed() / calls);
    }
    best
}
