//! Each server's speed, learned from the answers the router forwards: seconds per output
//! token, smoothed (an EWMA). Capacity says how many requests a server takes, not how fast it
//! serves them, and a cluster mixes GPU generations; a server that slows down (thermal
//! throttling, a noisy neighbour) shows it here within a few answers.
//!
//! A sample is one 2xx answer whose token count the server reported (`usage`: always for
//! non-streamed answers, for streams when the client asked for `include_usage`): for a stream,
//! the time from its first byte to its end over the tokens after the first (the decode speed);
//! otherwise the whole wait over all tokens.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::backend::Backend;
use crate::context::{Outcome, RequestContext};

/// Weight of a new sample: about the last ten answers count.
const SMOOTHING: f64 = 0.2;

/// The largest slowdown factor a server gets, however slow it looks.
pub const MAX_FACTOR: f64 = 10.0;

/// How long a slowdown factor lasts without a new sample: it fades linearly to 1 over this
/// time, so that a server that recovered while it got no traffic is tried again (and
/// relearned) rather than kept out for good. Under load every server answers often enough
/// for this never to matter.
const FORGET_MS: f64 = 60_000.0;

/// A server's learned speed (seconds per output token) and answer length (output tokens per
/// answer); each 0 until its first sample.
#[derive(Default)]
pub struct Speed {
    seconds_per_token: Ewma,
    tokens_per_answer: Ewma,
    /// When the last speed sample came (`ejection::now_ms`), 0 before the first.
    sampled_ms: AtomicU64,
}

impl Speed {
    /// Seconds per output token, if learned.
    pub fn seconds_per_token(&self) -> Option<f64> {
        self.seconds_per_token.get()
    }

    /// Folds one speed sample in.
    pub fn observe(&self, seconds_per_token: f64) {
        self.seconds_per_token.observe(seconds_per_token);
        self.sampled_ms.store(crate::ejection::now_ms(), Relaxed);
    }

    /// Output tokens per answer, if learned: how long a queued request waits for a slot is
    /// about this many decode steps.
    pub fn tokens_per_answer(&self) -> Option<f64> {
        self.tokens_per_answer.get()
    }
}

/// An exponentially weighted mean in an atomic (f64 bits; 0 = no sample yet).
#[derive(Default)]
struct Ewma(AtomicU64);

impl Ewma {
    fn get(&self) -> Option<f64> {
        Some(f64::from_bits(self.0.load(Relaxed))).filter(|s| *s > 0.0)
    }

    fn observe(&self, sample: f64) {
        if !(sample.is_finite() && sample > 0.0) {
            return;
        }
        // One writer wins a race; a lost sample among many does not matter.
        let next = match self.get() {
            None => sample,
            Some(now) => now + SMOOTHING * (sample - now),
        };
        self.0.store(next.to_bits(), Relaxed);
    }
}

/// Learns from a finished request: a sample for the server that answered it, if it can give
/// one.
pub fn learn(request: &RequestContext) {
    if let (Outcome::Ok, Some(tokens), Some(answer)) = (
        request.outcome,
        request.usage.completion_tokens,
        request.attempts.last(),
    ) {
        answer
            .server()
            .speed
            .tokens_per_answer
            .observe(tokens as f64);
    }
    let Some(sample) = sample(request) else {
        return;
    };
    if let Some(answer) = request.attempts.last() {
        answer.server().speed.observe(sample);
    }
}

fn sample(request: &RequestContext) -> Option<f64> {
    if request.outcome != Outcome::Ok || request.resumed {
        return None;
    }
    let tokens = request.usage.completion_tokens?;
    let answer = request.attempts.last()?;
    let ended = request.ended?;
    if request.features.stream {
        let first = request.first_byte?;
        (tokens >= 2).then(|| (ended - first).as_secs_f64() / (tokens - 1) as f64)
    } else {
        let sent = answer.sent?;
        (tokens >= 1).then(|| (ended - sent).as_secs_f64() / tokens as f64)
    }
}

/// How much slower than the fastest of `candidates` each one is (1 for the fastest and for
/// servers not learned yet; at most `MAX_FACTOR`), computed once per choice.
pub struct Relative {
    fastest: Option<f64>,
    now_ms: u64,
}

impl Relative {
    pub fn among(candidates: &[&Backend]) -> Relative {
        let fastest = candidates
            .iter()
            .filter_map(|b| b.state.speed.seconds_per_token())
            .min_by(f64::total_cmp);
        Relative {
            fastest,
            now_ms: crate::ejection::now_ms(),
        }
    }

    /// The factors relative to a `fastest` found earlier (least-load's shortlist), at `now_ms`.
    pub fn with_fastest(fastest: Option<f64>, now_ms: u64) -> Relative {
        Relative { fastest, now_ms }
    }

    /// The fastest learned speed (seconds per token) the factors are relative to.
    pub fn fastest(&self) -> Option<f64> {
        self.fastest
    }

    pub fn factor(&self, backend: &Backend) -> f64 {
        let speed = &backend.state.speed;
        match (self.fastest, speed.seconds_per_token()) {
            (Some(fastest), Some(own)) => {
                let factor = (own / fastest).clamp(1.0, MAX_FACTOR);
                if factor == 1.0 {
                    return 1.0;
                }
                let age = self.now_ms.saturating_sub(speed.sampled_ms.load(Relaxed)) as f64;
                1.0 + (factor - 1.0) * (1.0 - age * (1.0 / FORGET_MS)).max(0.0)
            }
            _ => 1.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::tests::healthy;

    #[test]
    fn the_speed_follows_the_answers() {
        let speed = Speed::default();
        assert_eq!(speed.seconds_per_token(), None);
        speed.observe(0.02);
        assert_eq!(speed.seconds_per_token(), Some(0.02));
        // The server slows down to 0.1 s a token: within ten answers it is mostly that.
        for _ in 0..10 {
            speed.observe(0.1);
        }
        let now = speed.seconds_per_token().unwrap();
        assert!((0.09..0.1).contains(&now), "{now}");
        speed.observe(f64::NAN);
        speed.observe(-1.0);
        assert_eq!(speed.seconds_per_token(), Some(now), "nonsense is ignored");
    }

    #[test]
    fn factors_are_relative_to_the_fastest_and_bounded() {
        let fast = healthy("http://fast", 4, &["m"], 0.0);
        let slow = healthy("http://slow", 4, &["m"], 0.0);
        let crawling = healthy("http://crawling", 4, &["m"], 0.0);
        let new = healthy("http://new", 4, &["m"], 0.0);
        fast.state.speed.observe(0.01);
        slow.state.speed.observe(0.03);
        crawling.state.speed.observe(1.0);
        let relative = Relative::among(&[&fast, &slow, &crawling, &new]);
        assert_eq!(relative.factor(&fast), 1.0);
        assert!((relative.factor(&slow) - 3.0).abs() < 1e-9);
        assert_eq!(relative.factor(&crawling), MAX_FACTOR);
        assert_eq!(relative.factor(&new), 1.0, "not learned yet: no penalty");

        // No answer from the slow one for half the forgetting time: half its penalty left;
        // for all of it, none (it is tried again and relearned).
        let later = |ms: f64| Relative {
            now_ms: relative.now_ms + ms as u64,
            ..relative
        };
        let half = later(FORGET_MS / 2.0).factor(&slow);
        assert!((half - 2.0).abs() < 0.01, "{half}");
        assert_eq!(later(FORGET_MS * 2.0).factor(&slow), 1.0);
    }
}
