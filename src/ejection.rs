//! Outlier ejection: a server that keeps failing real requests is taken out of rotation for a
//! while, longer each time it fails again, even while its `/metrics` answer (health follows
//! scrapes, so a server whose inference fails while its probes pass would otherwise flap back
//! in every few seconds).
//!
//! After `ejection_threshold` failures in a row that count against a server (connect errors,
//! resets, first-byte timeouts, 5xx, answers broken off — never a client's 4xx or a 429), it is
//! ejected for `ejection_time`, doubled at each further ejection in a row, at most
//! `ejection_max_time`. When the time is up it takes requests again; one success ends the
//! series. An ejected server is still used when no other can take a request (policy/mod.rs):
//! the least-bad server beats a 503 for nothing.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

static START: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Milliseconds since the process started (the ejection clock), from 1.
pub fn now_ms() -> u64 {
    START.elapsed().as_millis() as u64 + 1
}

/// How long the `times`-th ejection in a row lasts (0: the first): `base` doubled each time,
/// at most `max`.
pub fn ejection_time(times: u32, base: Duration, max: Duration) -> Duration {
    base.saturating_mul(1u32 << times.min(20)).min(max)
}

/// One server's ejection state (atomics: read on every request, no lock).
#[derive(Default)]
pub struct Ejection {
    /// Failures in a row that count against the server.
    failures: AtomicU32,
    /// Ejections in a row (each one longer).
    times: AtomicU32,
    /// Ejected until this `now_ms()`; 0 when never.
    until_ms: AtomicU64,
    /// Ejections so far.
    total: AtomicU64,
}

impl Ejection {
    /// A failure that counts against the server, at `now`. Returns how long it is ejected for,
    /// if this failure ejected it. `threshold` 0 turns ejection off.
    pub fn failed(
        &self,
        now: u64,
        threshold: u32,
        base: Duration,
        max: Duration,
    ) -> Option<Duration> {
        if threshold == 0 {
            return None;
        }
        let failures = self.failures.fetch_add(1, Relaxed) + 1;
        if failures < threshold || self.is_ejected(now) {
            return None;
        }
        self.failures.store(0, Relaxed);
        let times = self.times.fetch_add(1, Relaxed);
        let time = ejection_time(times, base, max);
        self.until_ms.store(now + time.as_millis() as u64, Relaxed);
        self.total.fetch_add(1, Relaxed);
        Some(time)
    }

    /// A good answer: the series ends.
    pub fn succeeded(&self) {
        self.failures.store(0, Relaxed);
        self.times.store(0, Relaxed);
    }

    pub fn is_ejected(&self, now: u64) -> bool {
        now < self.until_ms.load(Relaxed)
    }

    /// How long it stays out, if it is out.
    pub fn remaining(&self, now: u64) -> Option<Duration> {
        let until = self.until_ms.load(Relaxed);
        (now < until).then(|| Duration::from_millis(until - now))
    }

    /// Ejections so far.
    pub fn total(&self) -> u64 {
        self.total.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(30);

    #[test]
    fn ejection_times_double_up_to_the_cap() {
        let times: Vec<u64> = (0..7)
            .map(|t| ejection_time(t, BASE, MAX).as_secs())
            .collect();
        assert_eq!(times, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(ejection_time(1000, BASE, MAX), MAX);
    }

    #[test]
    fn failures_in_a_row_eject_for_longer_each_time() {
        let e = Ejection::default();
        assert_eq!(e.failed(1_000, 3, BASE, MAX), None);
        assert_eq!(e.failed(1_000, 3, BASE, MAX), None);
        assert_eq!(
            e.failed(1_000, 3, BASE, MAX),
            Some(BASE),
            "the third in a row"
        );
        assert!(e.is_ejected(1_999));
        assert!(!e.is_ejected(2_000));
        assert_eq!(
            e.failed(1_500, 3, BASE, MAX),
            None,
            "no ejection while ejected"
        );
        // Back after the time; failing again ejects for twice as long.
        for _ in 0..3 {
            e.failed(2_500, 3, BASE, MAX);
        }
        assert_eq!(e.remaining(2_500), Some(Duration::from_secs(2)));
        assert_eq!(e.total(), 2);
        // A success ends the series: the next ejection is short again.
        e.succeeded();
        for _ in 0..3 {
            e.failed(10_000, 3, BASE, MAX);
        }
        assert_eq!(e.remaining(10_000), Some(BASE));
    }

    #[test]
    fn a_success_between_failures_resets_the_count_and_zero_turns_it_off() {
        let e = Ejection::default();
        e.failed(1, 3, BASE, MAX);
        e.failed(1, 3, BASE, MAX);
        e.succeeded();
        assert_eq!(e.failed(1, 3, BASE, MAX), None);
        let off = Ejection::default();
        for _ in 0..100 {
            assert_eq!(off.failed(1, 0, BASE, MAX), None);
        }
    }
}
