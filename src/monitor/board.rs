//! What the monitor shows, sampled from the servers' views once a second: one row per
//! server with its rates and recent percentiles, the cluster's totals, and a short history
//! per server for the detail view's sparklines. Pure: it is handed the views and the time,
//! so it is tested without a terminal.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::backend::ServerView;
use crate::stats::{quantile_between, ServerTotals};

/// How far back rates and the recent TTFT median look.
pub const WINDOW: Duration = Duration::from_secs(10);

/// Values kept for a server's sparklines (one per sample).
pub const HISTORY: usize = 120;

/// A server's state, as a word (colour is never the only sign).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Healthy, taking requests.
    Up,
    /// Taken out by health checks.
    Down,
    /// Taken out for a while for failing real requests.
    Ejected,
    /// Not checked yet.
    New,
}

impl Health {
    pub fn word(self) -> &'static str {
        match self {
            Health::Up => "up",
            Health::Down => "DOWN",
            Health::Ejected => "EJECTED",
            Health::New => "new",
        }
    }
}

/// One server's row.
#[derive(Debug, Clone)]
pub struct Row {
    pub view: ServerView,
    pub health: Health,
    /// Requests per second over the window.
    pub requests_per_s: f64,
    /// Completion tokens per second over the window.
    pub tokens_per_s: f64,
    /// Median time to first token over the window, in seconds.
    pub ttft_p50: Option<f64>,
    /// Recent median TTFT per sample (ms; 0 where there was none), oldest first.
    pub ttft_history: Vec<u64>,
    /// Utilisation per sample (percent), oldest first.
    pub load_history: Vec<u64>,
}

/// The cluster as a whole.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    pub healthy: usize,
    pub servers: usize,
    pub requests_per_s: f64,
    pub tokens_per_s: f64,
    pub errors: u64,
    pub retries: u64,
    pub in_flight: u64,
}

/// One server's past samples.
#[derive(Default)]
struct Past {
    /// (when, totals) for the last `WINDOW` and a bit.
    samples: VecDeque<(Instant, ServerTotals)>,
    ttft: VecDeque<u64>,
    load: VecDeque<u64>,
    /// The sample generation it was last seen in (servers removed by a reload are forgotten).
    seen: u64,
}

/// One client key (`[auth] keys`), by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClientLine {
    pub name: String,
    pub in_flight: u32,
    /// Since the start: requests, refusals (its limits, its models), tokens.
    pub requests: u64,
    pub refused: u64,
    pub tokens: u64,
}

/// The sampled board.
#[derive(Default)]
pub struct Board {
    pub rows: Vec<Row>,
    pub totals: Totals,
    /// The client keys, when the router checks them.
    pub clients: Vec<ClientLine>,
    past: HashMap<String, Past>,
    generation: u64,
}

impl Board {
    /// Takes a new sample of `views` at `now`.
    pub fn sample(&mut self, views: Vec<ServerView>, now: Instant) {
        self.generation += 1;
        let mut totals = Totals {
            servers: views.len(),
            ..Totals::default()
        };
        let mut rows = Vec::with_capacity(views.len());
        for view in views {
            let past = self.past.entry(view.url.clone()).or_default();
            past.seen = self.generation;
            let row = Self::row(view, past, now);
            totals.healthy += usize::from(row.health == Health::Up);
            totals.requests_per_s += row.requests_per_s;
            totals.tokens_per_s += row.tokens_per_s;
            totals.errors += row.view.totals.errors;
            totals.retries += row.view.totals.retries;
            totals.in_flight += u64::from(row.view.in_flight);
            rows.push(row);
        }
        let generation = self.generation;
        self.past.retain(|_, past| past.seen == generation);
        self.rows = rows;
        self.totals = totals;
    }

    /// Takes a new sample of the client keys.
    pub fn sample_clients(&mut self, clients: &[std::sync::Arc<crate::access::Client>]) {
        self.clients = clients
            .iter()
            .map(|c| ClientLine {
                name: c.name.to_string(),
                in_flight: c.state.in_flight(),
                requests: c.state.stats.requests(),
                refused: c.state.stats.refusals(),
                tokens: c.state.stats.tokens(),
            })
            .collect();
    }

    fn row(view: ServerView, past: &mut Past, now: Instant) -> Row {
        let health = if view.ejected_for.is_some() {
            Health::Ejected
        } else if view.healthy {
            Health::Up
        } else if view.last_check_ms.is_none() {
            Health::New
        } else {
            Health::Down
        };
        let current = view.totals.clone();
        // The recent TTFT median of this sample alone, for the sparkline.
        let since_last = past
            .samples
            .back()
            .map_or(&[][..], |(_, t)| &t.ttft_buckets[..]);
        let ttft_now = quantile_between(since_last, &current.ttft_buckets, 0.5);
        push_bounded(&mut past.ttft, ttft_now.map_or(0, |s| (s * 1000.0) as u64));
        push_bounded(&mut past.load, (view.utilization * 100.0).round() as u64);

        // The oldest sample still inside the window is the base of the rates.
        while past
            .samples
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > WINDOW)
        {
            past.samples.pop_front();
        }
        let (requests_per_s, tokens_per_s, ttft_p50) = match past.samples.front() {
            Some((at, base)) => {
                let secs = now.duration_since(*at).as_secs_f64().max(1e-3);
                let rate = |now: u64, then: u64| now.saturating_sub(then) as f64 / secs;
                (
                    rate(current.requests, base.requests),
                    rate(current.completion_tokens, base.completion_tokens),
                    quantile_between(&base.ttft_buckets, &current.ttft_buckets, 0.5),
                )
            }
            None => (0.0, 0.0, None),
        };
        past.samples.push_back((now, current));
        Row {
            view,
            health,
            requests_per_s,
            tokens_per_s,
            ttft_p50,
            ttft_history: past.ttft.iter().copied().collect(),
            load_history: past.load.iter().copied().collect(),
        }
    }
}

fn push_bounded(values: &mut VecDeque<u64>, value: u64) {
    if values.len() == HISTORY {
        values.pop_front();
    }
    values.push_back(value);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn view(url: &str, healthy: bool, requests: u64) -> ServerView {
        ServerView {
            url: url.into(),
            discovered_from: None,
            engine: Some("vllm"),
            healthy,
            running: 1.0,
            waiting: 0.0,
            kv_cache_usage: Some(0.25),
            capacity: 4,
            in_flight: 1,
            load_units: 1.0,
            utilization: 0.25,
            last_check_ms: Some(1),
            last_error: None,
            consecutive_failures: 0,
            models: vec!["m".into()],
            totals: ServerTotals {
                requests,
                completion_tokens: requests * 10,
                ttft_buckets: vec![(0.1, requests), (1.0, requests)],
                ..ServerTotals::default()
            },
            ejected_for: None,
            ejections: 0,
            load_gap: 0.0,
            seconds_per_token: None,
            kv_index: None,
        }
    }

    #[test]
    fn rates_come_from_the_window_and_health_is_a_word() {
        let mut board = Board::default();
        let t0 = Instant::now();
        board.sample(
            vec![view("http://a", true, 0), view("http://b", false, 0)],
            t0,
        );
        assert_eq!(board.rows[0].requests_per_s, 0.0);
        assert_eq!((board.totals.healthy, board.totals.servers), (1, 2));
        assert_eq!(board.rows[1].health.word(), "DOWN");

        board.sample(
            vec![view("http://a", true, 20), view("http://b", false, 0)],
            t0 + Duration::from_secs(2),
        );
        let a = &board.rows[0];
        assert!((a.requests_per_s - 10.0).abs() < 1e-9);
        assert!((a.tokens_per_s - 100.0).abs() < 1e-9);
        assert!(a.ttft_p50.unwrap() <= 0.1);
        assert_eq!(a.ttft_history.len(), 2);
        assert!((board.totals.requests_per_s - 10.0).abs() < 1e-9);

        // Past the window, old traffic no longer counts.
        board.sample(
            vec![view("http://a", true, 20)],
            t0 + Duration::from_secs(30),
        );
        assert_eq!(board.rows[0].requests_per_s, 0.0);
        assert_eq!(board.rows[0].ttft_p50, None);
        assert_eq!(board.past.len(), 1, "a removed server is forgotten");
    }
}
