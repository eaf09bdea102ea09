//! What happens when an attempt fails: the pure decision, with no I/O, and the router-wide
//! limits on retrying (the retry budget, the backoff between attempts).
//!
//! The forwarding loop (forward.rs) describes what happened — how the attempt ended, whether
//! the client already has bytes of an answer, how many attempts and how much time are left —
//! and [`decide`] says what to do. [`counts_against_server`] says whether the server's health
//! should suffer for it. Both are tables, tested as tables below.
//!
//! The rules: a server's answer other than 5xx or 429 is the answer (a 4xx is the client's
//! problem and goes to the client unchanged). A failure before the client got a byte is retried
//! on a server not yet tried while attempts and time remain, and the router-wide budget has a
//! retry to spare, after a short jittered wait. Once the client has a byte there is no retry:
//! the answer cannot be taken back.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// How one attempt on one server ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptResult {
    /// The server's host name has not been resolved.
    NoAddress,
    /// No connection could be made.
    ConnectFailed,
    /// The connection failed while the request was sent, or before a response header came.
    Reset,
    /// No response header within `first_byte_timeout`.
    FirstByteTimeout,
    /// The server answered with this status (the header is in; the body may follow).
    Status(u16),
    /// The whole answer reached the client.
    Delivered,
    /// The server broke off after the client had part of the answer.
    BrokeOff,
    /// `request_timeout` ran out after the client had part of the answer.
    DeadlineMidBody,
    /// The client went away.
    ClientGone,
}

impl AttemptResult {
    /// The label used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptResult::NoAddress => "no_address",
            AttemptResult::ConnectFailed => "connect_error",
            AttemptResult::Reset => "reset",
            AttemptResult::FirstByteTimeout => "first_byte_timeout",
            AttemptResult::Status(s) if s >= 500 => "status_5xx",
            AttemptResult::Status(429) => "status_429",
            AttemptResult::Status(_) => "answered",
            AttemptResult::Delivered => "delivered",
            AttemptResult::BrokeOff => "broke_off",
            AttemptResult::DeadlineMidBody => "request_timeout",
            AttemptResult::ClientGone => "client_gone",
        }
    }

    /// Whether this is a failure of the server (as opposed to an answer, or the client
    /// leaving), for counting errors by cause.
    pub fn is_error(self) -> bool {
        !matches!(self, AttemptResult::Delivered | AttemptResult::ClientGone)
            && !matches!(self, AttemptResult::Status(s) if s < 500 && s != 429)
    }
}

/// What the forwarding loop knows when an attempt has ended (or its header has come).
#[derive(Debug, Clone, Copy)]
pub struct Facts {
    pub result: AttemptResult,
    /// Whether any byte of an answer was written to the client.
    pub client_has_bytes: bool,
    /// Attempts that may still be made (`max_retries` minus retries made).
    pub attempts_left: u32,
    /// Whether `request_timeout` still leaves time for another attempt.
    pub time_left: bool,
}

/// What to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// This server's answer is the answer: send it to the client.
    Deliver,
    /// Try another server.
    Retry,
    /// Stop trying and answer the client with the best failure seen.
    GiveUp,
    /// Nothing more to do: the answer went out (whole or in part), or the client left.
    Done,
}

/// The decision table.
pub fn decide(facts: &Facts) -> Decision {
    use AttemptResult::*;
    match facts.result {
        Delivered | BrokeOff | DeadlineMidBody | ClientGone => Decision::Done,
        // An answer the client should see as it is (2xx, 3xx, a client's 4xx).
        Status(s) if s < 500 && s != 429 => Decision::Deliver,
        // Nothing reached the client yet: another server may do better.
        NoAddress | ConnectFailed | Reset | FirstByteTimeout | Status(_) => {
            if facts.client_has_bytes {
                Decision::Done
            } else if facts.attempts_left > 0 && facts.time_left {
                Decision::Retry
            } else {
                Decision::GiveUp
            }
        }
    }
}

/// Whether the server's health should suffer: connect errors, resets, timeouts, 5xx and
/// answers broken off count; a 429 (busy, not broken), a client's 4xx, the client leaving and
/// the router's own `request_timeout` do not. A reset on a pooled connection the server had
/// closed while idle is not the server's fault either.
pub fn counts_against_server(result: AttemptResult, reused_connection: bool) -> bool {
    use AttemptResult::*;
    match result {
        NoAddress | ConnectFailed | FirstByteTimeout | BrokeOff => true,
        Reset => !reused_connection,
        Status(s) => s >= 500,
        Delivered | DeadlineMidBody | ClientGone => false,
    }
}

/// Whether a retry fits the budget: retries in the window may be `percent` % of the requests
/// in it, plus `floor` (so that a quiet router can always retry). Envoy's idea: a brownout of
/// the whole cluster must not be multiplied by `max_retries`.
pub fn within_budget(requests: u64, retries: u64, percent: u32, floor: u32) -> bool {
    retries < u64::from(floor) + requests * u64::from(percent) / 100
}

/// Seconds in the budget's window.
const WINDOW: usize = 10;

/// The router-wide retry budget: requests and retries of the last ten seconds, in one-second
/// buckets of atomics (no lock). A bucket is reset when a new second reuses it; a request
/// counted during that reset may be lost, which only loosens the budget by one.
pub struct RetryBudget {
    buckets: [Bucket; WINDOW],
    started: std::time::Instant,
}

#[derive(Default)]
struct Bucket {
    second: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            buckets: Default::default(),
            started: std::time::Instant::now(),
        }
    }
}

impl RetryBudget {
    fn now(&self) -> u64 {
        // Seconds since start, from 1 (0 marks a bucket never used).
        self.started.elapsed().as_secs() + 1
    }

    fn bucket(&self, second: u64) -> &Bucket {
        let bucket = &self.buckets[(second % WINDOW as u64) as usize];
        let was = bucket.second.load(Relaxed);
        if was != second
            && bucket
                .second
                .compare_exchange(was, second, Relaxed, Relaxed)
                .is_ok()
        {
            bucket.requests.store(0, Relaxed);
            bucket.retries.store(0, Relaxed);
        }
        bucket
    }

    /// Counts a request that may need retries.
    pub fn request(&self) {
        self.request_at(self.now());
    }

    /// Takes one retry from the budget, if it has one.
    pub fn try_retry(&self, percent: u32, floor: u32) -> bool {
        self.try_retry_at(self.now(), percent, floor)
    }

    fn request_at(&self, second: u64) {
        self.bucket(second).requests.fetch_add(1, Relaxed);
    }

    fn try_retry_at(&self, second: u64, percent: u32, floor: u32) -> bool {
        let current = self.bucket(second);
        let (mut requests, mut retries) = (0, 0);
        for bucket in &self.buckets {
            if second.saturating_sub(bucket.second.load(Relaxed)) < WINDOW as u64 {
                requests += bucket.requests.load(Relaxed);
                retries += bucket.retries.load(Relaxed);
            }
        }
        let allowed = within_budget(requests, retries, percent, floor);
        if allowed {
            current.retries.fetch_add(1, Relaxed);
        }
        allowed
    }
}

/// How long to wait before retry number `retry` (1 for the first): "full jitter", a random
/// time up to `base` × 2^(retry − 1), at most 10 × `base`. Spreads the retries of a burst that
/// failed together, instead of sending them all at the next server at once.
pub fn backoff(retry: u32, base: Duration, random: f64) -> Duration {
    let ceiling = base
        .saturating_mul(1u32 << retry.saturating_sub(1).min(16))
        .min(base.saturating_mul(10));
    ceiling.mul_f64(random.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::AttemptResult::*;
    use super::Decision::*;
    use super::*;

    #[test]
    fn the_budget_table() {
        // (requests, retries, percent, floor) -> allowed
        let table = [
            (0, 0, 20, 10, true),
            (0, 9, 20, 10, true),
            (0, 10, 20, 10, false),
            (100, 29, 20, 10, true),
            (100, 30, 20, 10, false),
            (1000, 209, 20, 10, true),
            (1000, 210, 20, 10, false),
            (1000, 0, 0, 0, false),
            (1000, 999, 100, 0, true),
        ];
        for (requests, retries, percent, floor, expected) in table {
            assert_eq!(
                within_budget(requests, retries, percent, floor),
                expected,
                "{requests} requests, {retries} retries, {percent}% + {floor}"
            );
        }
    }

    #[test]
    fn the_budget_is_a_sliding_window() {
        let budget = RetryBudget::default();
        for _ in 0..100 {
            budget.request_at(5);
        }
        let granted = (0..100).filter(|_| budget.try_retry_at(5, 20, 10)).count();
        assert_eq!(granted, 30, "20 % of 100, plus 10");
        assert!(
            !budget.try_retry_at(14, 20, 10),
            "still in the window 9 s later"
        );
        assert!(budget.try_retry_at(15, 20, 10), "10 s later it has passed");
    }

    #[test]
    fn backoff_is_jittered_and_capped() {
        let base = Duration::from_millis(25);
        assert_eq!(backoff(1, base, 1.0), base);
        assert_eq!(backoff(2, base, 1.0), base * 2);
        assert_eq!(backoff(3, base, 0.5), base * 2);
        assert_eq!(backoff(10, base, 1.0), base * 10, "capped");
        assert_eq!(backoff(1, base, 0.0), Duration::ZERO);
        assert_eq!(
            backoff(3, Duration::ZERO, 1.0),
            Duration::ZERO,
            "0 turns it off"
        );
    }

    #[test]
    fn decision_table() {
        // (result, client has bytes, attempts left, time left) -> decision
        let table = [
            (Status(200), false, 3, true, Deliver),
            (Status(200), false, 0, false, Deliver),
            (Status(400), false, 3, true, Deliver),
            (Status(404), false, 3, true, Deliver),
            (Status(413), false, 3, true, Deliver),
            (Status(500), false, 3, true, Retry),
            (Status(503), false, 1, true, Retry),
            (Status(503), false, 0, true, GiveUp),
            (Status(503), false, 2, false, GiveUp),
            (Status(429), false, 1, true, Retry),
            (Status(429), false, 0, true, GiveUp),
            (ConnectFailed, false, 1, true, Retry),
            (ConnectFailed, false, 0, true, GiveUp),
            (NoAddress, false, 1, true, Retry),
            (Reset, false, 1, true, Retry),
            (Reset, true, 1, true, Done),
            (FirstByteTimeout, false, 1, true, Retry),
            (FirstByteTimeout, false, 1, false, GiveUp),
            (Delivered, true, 3, true, Done),
            (BrokeOff, true, 3, true, Done),
            (DeadlineMidBody, true, 3, true, Done),
            (ClientGone, false, 3, true, Done),
            (ClientGone, true, 3, true, Done),
        ];
        for (result, client_has_bytes, attempts_left, time_left, expected) in table {
            let facts = Facts {
                result,
                client_has_bytes,
                attempts_left,
                time_left,
            };
            assert_eq!(decide(&facts), expected, "{facts:?}");
        }
    }

    #[test]
    fn what_counts_against_a_server() {
        // (result, on a reused connection) -> counts
        let table = [
            (NoAddress, false, true),
            (ConnectFailed, false, true),
            (Reset, false, true),
            (Reset, true, false),
            (FirstByteTimeout, false, true),
            (FirstByteTimeout, true, true),
            (Status(500), false, true),
            (Status(503), true, true),
            (Status(429), false, false),
            (Status(400), false, false),
            (Status(200), false, false),
            (Delivered, false, false),
            (BrokeOff, true, true),
            (DeadlineMidBody, false, false),
            (ClientGone, false, false),
        ];
        for (result, reused, expected) in table {
            assert_eq!(
                counts_against_server(result, reused),
                expected,
                "{result:?} reused={reused}"
            );
        }
    }

    #[test]
    fn labels_and_errors() {
        assert_eq!(Status(502).as_str(), "status_5xx");
        assert_eq!(Status(429).as_str(), "status_429");
        assert!(Status(429).is_error());
        assert!(!Status(404).is_error());
        assert!(!ClientGone.is_error());
        assert!(DeadlineMidBody.is_error());
        assert!(ConnectFailed.is_error());
    }
}
