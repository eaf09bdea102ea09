//! `/metrics` as it was a while ago (`--fault-metrics-lag-ms`). vLLM's gauges lag its engine by
//! up to seconds (its engine core reports stats in batches, more slowly at start-up): a router
//! that trusts them alone sends a burst to a server whose `/metrics` still says it is idle.
//! While a lag is set, the text is rendered every `EVERY` and kept for the lag's length, and
//! `/metrics` serves the newest rendering that is at least that old.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use super::server::SimState;

/// How often the text is rendered while a lag is set.
const EVERY: Duration = Duration::from_millis(20);

/// Renderings kept, newest last.
#[derive(Default)]
pub struct MetricsHistory {
    renders: Mutex<VecDeque<(Instant, Arc<str>)>>,
}

impl MetricsHistory {
    /// Keeps `text`, rendered at `at`, and forgets what is older than `keep` before it (but
    /// one: the newest rendering older than `keep` is what a reader of the lag wants).
    pub fn record(&self, at: Instant, text: String, keep: Duration) {
        let mut renders = self.renders.lock().unwrap_or_else(|e| e.into_inner());
        renders.push_back((at, text.into()));
        while renders.len() > 1 && at.duration_since(renders[1].0) >= keep {
            renders.pop_front();
        }
    }

    /// The newest rendering made at or before `at`, or the oldest one if none is that old
    /// (a server that just started); `None` before the first.
    pub fn as_of(&self, at: Instant) -> Option<Arc<str>> {
        let renders = self.renders.lock().unwrap_or_else(|e| e.into_inner());
        renders
            .iter()
            .rev()
            .find(|(t, _)| *t <= at)
            .or_else(|| renders.front())
            .map(|(_, text)| Arc::clone(text))
    }

    pub fn clear(&self) {
        self.renders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

/// Renders the metrics into the state's history while a lag is set, until the state is gone.
pub fn keep_history(state: Weak<SimState>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            let Some(state) = state.upgrade() else { return };
            let lag = state.faults.get().metrics_lag_ms;
            if lag == 0 {
                state.lagged.clear();
                continue;
            }
            let keep = Duration::from_millis(lag);
            state
                .lagged
                .record(Instant::now(), state.render_metrics(), keep);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_serves_the_newest_rendering_at_least_lag_old() {
        let history = MetricsHistory::default();
        let t0 = Instant::now();
        let keep = Duration::from_millis(100);
        assert_eq!(history.as_of(t0), None);
        for i in 0..20u64 {
            history.record(t0 + Duration::from_millis(i * 20), format!("r{i}"), keep);
        }
        // At t0+380, 100 ms ago is t0+280: rendering 14.
        let now = t0 + Duration::from_millis(380);
        assert_eq!(history.as_of(now - keep).as_deref(), Some("r14"));
        // Too early for any: the oldest kept.
        assert_eq!(history.as_of(t0).as_deref(), Some("r14"));
        assert!(
            history.renders.lock().unwrap().len() <= 7,
            "bounded by the lag"
        );
    }
}
