//! Fault injection: make the simulated server misbehave on purpose, to test what a router does
//! when a backend fails, hangs, resets, or reports nonsense.
//!
//! Faults are set at start-up (`--fault-*` flags) and changed while running through the admin
//! endpoint `/sim/faults` (GET shows them, POST merges a JSON object of fields into them, PUT
//! replaces them, DELETE clears them). Which requests a rate hits is decided by a hash of the
//! request's sequence number and `--seed`, so a run is repeatable.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use super::tokenizer::splitmix64;

/// What `/metrics` serves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum MetricsFault {
    /// The real metrics.
    #[default]
    Ok,
    /// 200 with text that is not Prometheus exposition.
    Garbage,
    /// 200 with an empty body.
    Empty,
    /// 500 Internal Server Error.
    Error,
}

/// The faults in force. Every field is optional in JSON; a missing field means "no fault".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Fraction (0..1) of inference requests answered with `--fault-error-status` instead.
    #[arg(
        long = "fault-error-rate",
        default_value_t = 0.0,
        value_name = "FRACTION"
    )]
    pub error_rate: f64,
    /// Status of injected errors: 500, 503 (vLLM's "engine busy"), 429, or any 4xx/5xx.
    #[arg(
        long = "fault-error-status",
        default_value_t = 500,
        value_name = "STATUS"
    )]
    pub error_status: u16,
    /// `Retry-After` of injected 429s, in seconds (what a rate limiter in front of vLLM says).
    #[arg(
        long = "fault-retry-after",
        default_value_t = 7,
        value_name = "SECONDS"
    )]
    pub retry_after: u64,
    /// Delay before an inference request is handled at all, in milliseconds.
    #[arg(long = "fault-delay-ms", default_value_t = 0, value_name = "MS")]
    pub delay_ms: u64,
    /// Fraction of inference requests that never get an answer (held until the client leaves).
    #[arg(
        long = "fault-hang-rate",
        default_value_t = 0.0,
        value_name = "FRACTION"
    )]
    pub hang_rate: f64,
    /// Fraction of inference requests whose connection is closed without any answer.
    #[arg(
        long = "fault-close-rate",
        default_value_t = 0.0,
        value_name = "FRACTION"
    )]
    pub close_rate: f64,
    /// Cut every stream's connection after this many tokens (no final chunk, no [DONE]).
    #[arg(long = "fault-cut-stream-after", value_name = "TOKENS")]
    pub cut_stream_after: Option<u32>,
    /// What /metrics serves.
    #[arg(long = "fault-metrics", value_enum, default_value_t = MetricsFault::Ok)]
    pub metrics: MetricsFault,
    /// Delay before /metrics answers, in milliseconds.
    #[arg(
        long = "fault-metrics-delay-ms",
        default_value_t = 0,
        value_name = "MS"
    )]
    pub metrics_delay_ms: u64,
    /// /metrics shows the numbers as they were this long ago, in milliseconds (vLLM's gauges
    /// lag its engine by up to seconds).
    #[arg(long = "fault-metrics-lag-ms", default_value_t = 0, value_name = "MS")]
    pub metrics_lag_ms: u64,
    /// Every engine step takes this many times as long (1: as configured; 3: a GPU throttled
    /// to a third of its speed, or sharing it with a noisy neighbour).
    #[arg(long = "fault-slowdown", default_value_t = 1.0, value_name = "FACTOR")]
    pub slowdown: f64,
    /// Serve these model names instead of the configured ones (on /v1/models and for routing
    /// requests), as if the server had been restarted with another model.
    #[arg(long = "fault-models", value_delimiter = ',', num_args = 1.., value_name = "NAMES")]
    pub models: Option<Vec<String>>,
    /// Fraction (0..1) of KV cache event messages not sent (kept for replay), as if the
    /// network or a full queue lost them.
    #[arg(
        long = "fault-kv-events-drop-rate",
        default_value_t = 0.0,
        value_name = "FRACTION"
    )]
    pub kv_events_drop_rate: f64,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            error_rate: 0.0,
            error_status: 500,
            retry_after: 7,
            delay_ms: 0,
            hang_rate: 0.0,
            close_rate: 0.0,
            cut_stream_after: None,
            metrics: MetricsFault::Ok,
            metrics_delay_ms: 0,
            metrics_lag_ms: 0,
            slowdown: 1.0,
            models: None,
            kv_events_drop_rate: 0.0,
        }
    }
}

impl Faults {
    /// Checks ranges; the message names the field and what is allowed.
    pub fn validate(&self) -> Result<(), String> {
        for (name, rate) in [
            ("error_rate", self.error_rate),
            ("hang_rate", self.hang_rate),
            ("close_rate", self.close_rate),
            ("kv_events_drop_rate", self.kv_events_drop_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("{name} must be between 0 and 1, got {rate}"));
            }
        }
        if !(400..=599).contains(&self.error_status) {
            return Err(format!(
                "error_status must be an HTTP error status (400-599), got {}",
                self.error_status
            ));
        }
        if !(0.01..=1000.0).contains(&self.slowdown) {
            return Err(format!(
                "slowdown must be a factor between 0.01 and 1000, got {}",
                self.slowdown
            ));
        }
        if self.models.as_ref().is_some_and(|m| m.is_empty()) {
            return Err("models must name at least one model (or be null)".into());
        }
        Ok(())
    }
}

/// What happens to one inference request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Serve,
    Fail(u16),
    Hang,
    Close,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub delay: Option<Duration>,
    pub action: Action,
    pub cut_stream_after: Option<u32>,
}

/// The live fault settings of a server.
pub struct FaultState {
    current: ArcSwap<Faults>,
    sequence: AtomicU64,
    seed: u64,
    /// The current `slowdown` (f64 bits), shared with the engines, which read it every step.
    slowdown: Arc<AtomicU64>,
}

impl FaultState {
    pub fn new(initial: Faults, seed: u64) -> Self {
        FaultState {
            slowdown: Arc::new(AtomicU64::new(initial.slowdown.to_bits())),
            current: ArcSwap::from_pointee(initial),
            sequence: AtomicU64::new(0),
            seed,
        }
    }

    /// The step-time factor, as the engines read it.
    pub fn slowdown(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.slowdown)
    }

    pub fn get(&self) -> Arc<Faults> {
        self.current.load_full()
    }

    pub fn set(&self, faults: Faults) -> Result<(), String> {
        faults.validate()?;
        self.slowdown.store(faults.slowdown.to_bits(), Relaxed);
        self.current.store(Arc::new(faults));
        Ok(())
    }

    /// Merges a JSON object's fields into the current faults.
    pub fn merge(&self, patch: serde_json::Value) -> Result<Faults, String> {
        let serde_json::Value::Object(patch) = patch else {
            return Err("expected a JSON object of fault fields".into());
        };
        let mut merged = serde_json::to_value(&*self.get()).map_err(|e| e.to_string())?;
        if let serde_json::Value::Object(fields) = &mut merged {
            fields.extend(patch);
        }
        let faults: Faults = serde_json::from_value(merged).map_err(|e| e.to_string())?;
        self.set(faults.clone())?;
        Ok(faults)
    }

    /// Whether the next KV cache event message is dropped (`kv_events_drop_rate`).
    pub fn drop_kv_event(&self) -> bool {
        let rate = self.current.load().kv_events_drop_rate;
        if rate <= 0.0 {
            return false;
        }
        let n = self.sequence.fetch_add(1, Relaxed);
        let x = splitmix64(self.seed ^ splitmix64(n) ^ 4);
        ((x >> 11) as f64 / (1u64 << 53) as f64) < rate
    }

    /// Decides the fate of the next inference request.
    pub fn plan(&self) -> Plan {
        let faults = self.current.load();
        let n = self.sequence.fetch_add(1, Relaxed);
        let roll = |salt: u64, rate: f64| -> bool {
            if rate <= 0.0 {
                return false;
            }
            let x = splitmix64(self.seed ^ splitmix64(n) ^ salt);
            ((x >> 11) as f64 / (1u64 << 53) as f64) < rate
        };
        let action = if roll(1, faults.close_rate) {
            Action::Close
        } else if roll(2, faults.hang_rate) {
            Action::Hang
        } else if roll(3, faults.error_rate) {
            Action::Fail(faults.error_status)
        } else {
            Action::Serve
        };
        Plan {
            delay: (faults.delay_ms > 0).then(|| Duration::from_millis(faults.delay_ms)),
            action,
            cut_stream_after: faults.cut_stream_after,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_hit_about_their_fraction_and_repeat_with_the_seed() {
        let faults = Faults {
            error_rate: 0.3,
            ..Faults::default()
        };
        let run = || {
            let state = FaultState::new(faults.clone(), 42);
            (0..10_000)
                .map(|_| state.plan().action)
                .filter(|a| *a == Action::Fail(500))
                .count()
        };
        let hits = run();
        assert!((2_700..3_300).contains(&hits), "{hits} of 10000");
        assert_eq!(hits, run());
    }

    #[test]
    fn merge_changes_only_named_fields_and_rejects_bad_ones() {
        let state = FaultState::new(Faults::default(), 0);
        let merged = state
            .merge(serde_json::json!({"hang_rate": 1.0, "models": ["x"]}))
            .unwrap();
        assert_eq!(merged.hang_rate, 1.0);
        assert_eq!(merged.error_status, 500);
        assert_eq!(state.plan().action, Action::Hang);

        let err = state.merge(serde_json::json!({"hang": 1})).unwrap_err();
        assert!(err.contains("unknown field `hang`"), "{err}");
        assert!(err.contains("hang_rate"), "lists the allowed fields: {err}");
        let err = state
            .merge(serde_json::json!({"error_rate": 2}))
            .unwrap_err();
        assert!(err.contains("between 0 and 1"), "{err}");
        assert_eq!(
            state.get().hang_rate,
            1.0,
            "a rejected patch changes nothing"
        );
    }
}
