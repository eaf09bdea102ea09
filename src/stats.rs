//! The stats hub: the one place where requests are counted.
//!
//! Every finished request is recorded here once, when its context is dropped (context.rs):
//! per server, model, status class and outcome — requests, attempts, retries, errors by
//! cause, time to first token, total time, the latency the router added, and tokens when the
//! response told them. The store is the `prometheus` crate's registry; `/metrics`,
//! `/load-stats`, `/health` and the fullscreen monitor only render it, so a figure means the
//! same thing everywhere. The live gauges (in flight, health, scraped load, utilisation) are
//! the servers' own atomics, read at render time through `backend::ServerView`, never copied.
//!
//! Recording takes no lock and allocates nothing: each server's state holds its
//! [`ServerStats`], handles into the registry made when a (server, model, status, outcome)
//! combination is first seen and kept. Label values are bounded: servers come from
//! servers.toml, models from the servers' own model lists (anything else is `unlisted`),
//! statuses and outcomes from fixed lists. No prompt, key or user id is ever a label.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus::core::Collector;
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts,
    Registry, TextEncoder,
};

use crate::backend::ServerView;
use crate::context::{LocalRoute, Outcome, RequestContext};

/// Status classes, as the `status_class` label writes them.
const STATUS_CLASSES: [&str; 6] = ["none", "1xx", "2xx", "3xx", "4xx", "5xx"];

/// Causes of failed attempts, as the `cause` label writes them (`AttemptResult::as_str`).
const CAUSES: [&str; 8] = [
    "no_address",
    "connect_error",
    "reset",
    "first_byte_timeout",
    "status_5xx",
    "status_429",
    "broke_off",
    "request_timeout",
];

/// Most distinct model labels kept per server; more are counted as `other`.
const MAX_MODELS_PER_SERVER: usize = 256;

/// The metric families, shared by every server's handles.
#[derive(Clone)]
struct Families {
    requests: IntCounterVec,
    attempts: IntCounterVec,
    retries: IntCounterVec,
    upstream_errors: IntCounterVec,
    ttft: HistogramVec,
    duration: HistogramVec,
    router_added: HistogramVec,
    prompt_tokens: IntCounterVec,
    completion_tokens: IntCounterVec,
    scrape_duration: HistogramVec,
    scrape_failures: IntCounterVec,
    ejections: IntCounterVec,
    upstream_header: HistogramVec,
}

/// What the poller reads of a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scrape {
    /// `/metrics`: its load.
    Metrics,
    /// `/v1/models`: what it serves.
    Models,
}

impl Scrape {
    fn as_str(self) -> &'static str {
        match self {
            Scrape::Metrics => "metrics",
            Scrape::Models => "models",
        }
    }
}

/// The hub.
pub struct Stats {
    registry: Registry,
    families: Families,
    /// Requests that reached no server (refused, unknown model, no healthy server).
    unrouted: ServerStats,
    /// Requests the router answered itself, by route.
    local: Vec<IntCounter>,
    /// Config reloads applied, and refused.
    reloads_ok: IntCounter,
    reloads_failed: IntCounter,
    /// Retries not made because the retry budget was spent.
    retries_denied: IntCounter,
    /// Streams completed on another server after theirs broke off.
    streams_resumed: IntCounter,
    /// Per client key (`[auth] keys`): requests, tokens, refusals.
    clients: ClientFamilies,
    /// Requests refused for a missing or wrong key.
    unauthorized: IntCounter,
}

/// Why the router refused a client's request before routing it (`reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No key, or a wrong one (401).
    Unauthorized,
    /// A model its key may not use (404).
    Model,
    /// Its key's `max_concurrent_requests` (429).
    Concurrency,
    /// Its key's `requests_per_minute` (429).
    RateLimit,
    /// Its key's `tokens_per_minute` (429).
    TokenBudget,
}

impl Refusal {
    /// The refusals of a known key, in `ClientStats::refused` order.
    const OF_A_KEY: [Refusal; 4] = [
        Refusal::Model,
        Refusal::Concurrency,
        Refusal::RateLimit,
        Refusal::TokenBudget,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Unauthorized => "unauthorized",
            Refusal::Model => "model",
            Refusal::Concurrency => "concurrency",
            Refusal::RateLimit => "rate_limit",
            Refusal::TokenBudget => "token_budget",
        }
    }
}

#[derive(Clone)]
struct ClientFamilies {
    requests: IntCounterVec,
    tokens: IntCounterVec,
    refused: IntCounterVec,
}

/// One client key's handles, made when the key is first configured and kept across reloads.
pub struct ClientStats {
    /// Per `Outcome`.
    requests: Vec<IntCounter>,
    prompt_tokens: IntCounter,
    completion_tokens: IntCounter,
    /// Per `Refusal::OF_A_KEY`.
    refused: Vec<IntCounter>,
}

impl ClientStats {
    /// Requests of this key so far, whatever their outcome.
    pub fn requests(&self) -> u64 {
        self.requests.iter().map(IntCounter::get).sum()
    }

    /// Requests refused by this key's limits or models so far.
    pub fn refusals(&self) -> u64 {
        self.refused.iter().map(IntCounter::get).sum()
    }

    /// Prompt and completion tokens so far.
    pub fn tokens(&self) -> u64 {
        self.prompt_tokens.get() + self.completion_tokens.get()
    }
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let vec = IntCounterVec::new(Opts::new(name, help), labels)
        .expect("metric names and labels are valid constants");
    registry
        .register(Box::new(vec.clone()))
        .expect("each metric is registered once");
    vec
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let vec = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
    .expect("metric names, labels and buckets are valid constants");
    registry
        .register(Box::new(vec.clone()))
        .expect("each metric is registered once");
    vec
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new()
    }
}

impl Stats {
    pub fn new() -> Stats {
        let r = Registry::new();
        let sm = &["server", "model"];
        let families = Families {
            requests: counter(
                &r,
                "mvllm_requests_total",
                "Requests forwarded (or refused), by the server that answered, model, status class and outcome.",
                &["server", "model", "status_class", "outcome"],
            ),
            attempts: counter(&r, "mvllm_attempts_total", "Attempts made on each server (a retried request makes several).", &["server"]),
            retries: counter(&r, "mvllm_retries_total", "Retries away from each server, after it failed before the client got a byte.", &["server"]),
            upstream_errors: counter(&r, "mvllm_upstream_errors_total", "Failed attempts, by server and cause.", &["server", "cause"]),
            ttft: histogram(&r, "mvllm_time_to_first_token_seconds", "From the request's arrival to the first byte of a server's 2xx answer's body written to the client.", sm,
                &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0]),
            duration: histogram(&r, "mvllm_request_duration_seconds", "From the request's arrival to the end of its answer.", sm,
                &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0]),
            router_added: histogram(&r, "mvllm_router_added_seconds", "Time the router added before the answer's header reached the client: everything but the answering server's own wait for its header (failed attempts included).", &["server"],
                &[0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0]),
            prompt_tokens: counter(&r, "mvllm_prompt_tokens_total", "Prompt tokens, as the answers reported them.", sm),
            completion_tokens: counter(&r, "mvllm_completion_tokens_total", "Completion tokens, as the answers reported them.", sm),
            scrape_duration: histogram(&r, "mvllm_scrape_duration_seconds", "How long reading a server's /metrics or /v1/models took (failures included).", &["server", "endpoint"],
                &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            upstream_header: histogram(&r, "mvllm_upstream_header_seconds", "Each attempt's wait on the server: from the request written to its response header (queueing and, for a stream, the first token included).", &["server"],
                &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0]),
            ejections: counter(&r, "mvllm_ejections_total", "Times a server was ejected for failing real requests in a row.", &["server"]),
            scrape_failures: counter(&r, "mvllm_scrape_failures_total", "Failed reads of a server's /metrics or /v1/models (refused, timed out, an error status, or not understood).", &["server", "endpoint"]),
        };
        let reloads = counter(
            &r,
            "mvllm_config_reloads_total",
            "Changes to servers.toml seen while running: applied (ok) or refused (failed, the running config stays).",
            &["result"],
        );
        let build = prometheus::IntGaugeVec::new(
            Opts::new("mvllm_build_info", "The running build (always 1)."),
            &["version"],
        )
        .expect("a valid constant name and label");
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        r.register(Box::new(build))
            .expect("each metric is registered once");
        let local_vec = counter(
            &r,
            "mvllm_local_requests_total",
            "Requests the router answered itself, by route.",
            &["route"],
        );
        let local = LocalRoute::ALL
            .iter()
            .map(|route| local_vec.with_label_values(&[route.as_str()]))
            .collect();
        let unrouted = ServerStats::new("none", families.clone());
        let retries_denied = counter(
            &r,
            "mvllm_retries_denied_total",
            "Retries not made because the retry budget was spent (the failure went to the client).",
            &[],
        )
        .with_label_values::<&str>(&[]);
        let streams_resumed = counter(
            &r,
            "mvllm_streams_resumed_total",
            "Streams whose server broke off, completed by another server (resume_streams).",
            &[],
        )
        .with_label_values::<&str>(&[]);
        let clients = ClientFamilies {
            requests: counter(&r, "mvllm_client_requests_total", "Requests of each client key (by its name, never the key), by outcome.", &["client", "outcome"]),
            tokens: counter(&r, "mvllm_client_tokens_total", "Tokens of each client key's answers, as they reported them, by kind (prompt, completion).", &["client", "kind"]),
            refused: counter(&r, "mvllm_client_refused_total", "Requests of each client key refused before routing, by reason (model, concurrency, rate_limit, token_budget).", &["client", "reason"]),
        };
        let unauthorized = counter(
            &r,
            "mvllm_unauthorized_requests_total",
            "Requests refused with 401: no client key, or a wrong one (also on the admin endpoints).",
            &[],
        )
        .with_label_values::<&str>(&[]);
        Stats {
            registry: r,
            families,
            clients,
            unauthorized,
            unrouted,
            local,
            reloads_ok: reloads.with_label_values(&["ok"]),
            reloads_failed: reloads.with_label_values(&["failed"]),
            retries_denied,
            streams_resumed,
        }
    }

    /// The handles for one server, made once and kept in its state.
    pub fn server(&self, url: &str) -> ServerStats {
        ServerStats::new(url, self.families.clone())
    }

    /// The handles for one client key (by its name).
    pub fn client(&self, name: &str) -> ClientStats {
        let f = &self.clients;
        ClientStats {
            requests: Outcome::ALL
                .iter()
                .map(|o| f.requests.with_label_values(&[name, o.as_str()]))
                .collect(),
            prompt_tokens: f.tokens.with_label_values(&[name, "prompt"]),
            completion_tokens: f.tokens.with_label_values(&[name, "completion"]),
            refused: Refusal::OF_A_KEY
                .iter()
                .map(|r| f.refused.with_label_values(&[name, r.as_str()]))
                .collect(),
        }
    }

    /// Records a request refused before routing: for a wrong or missing key, or by its
    /// key's models and limits.
    pub fn refused(&self, client: Option<&ClientStats>, why: Refusal) {
        let of_key = Refusal::OF_A_KEY.iter().position(|r| *r == why);
        match (client, of_key) {
            (Some(c), Some(i)) => c.refused[i].inc(),
            _ => self.unauthorized.inc(),
        }
    }

    /// Records a retry the budget refused.
    pub fn retry_denied(&self) {
        self.retries_denied.inc();
    }

    /// Records a change to servers.toml: applied or refused.
    pub fn config_reloaded(&self, applied: bool) {
        if applied {
            self.reloads_ok.inc();
        } else {
            self.reloads_failed.inc();
        }
    }

    /// Records a finished request.
    pub fn record(&self, r: &RequestContext) {
        if let Some(pass) = &r.pass {
            let c = &pass.client.state.stats;
            c.requests[r.outcome as usize].inc();
            c.prompt_tokens.inc_by(r.usage.prompt_tokens.unwrap_or(0));
            c.completion_tokens
                .inc_by(r.usage.completion_tokens.unwrap_or(0));
        }
        if let Some(route) = r.local {
            self.local[route as usize].inc();
            return;
        }
        if r.resumed {
            self.streams_resumed.inc();
        }
        let server = r
            .attempts
            .last()
            .map_or(&self.unrouted, |a| &a.server().stats);
        // Time to first token: of a server's 2xx answers only (an error has no token).
        let answered = !r.attempts.is_empty() && r.status.is_some_and(|s| (200..300).contains(&s));
        server.with_model(r.model_label(), |model| {
            model.request(status_class(r.status), r.outcome).inc();
            if let Some(ttft) = r.time_to_first_byte().filter(|_| answered) {
                model.ttft.observe(ttft.as_secs_f64());
            }
            model.duration.observe(r.elapsed().as_secs_f64());
            if let Some(n) = r.usage.prompt_tokens {
                model.prompt_tokens.inc_by(n);
            }
            if let Some(n) = r.usage.completion_tokens {
                model.completion_tokens.inc_by(n);
            }
        });
        if let Some(added) = r.router_added() {
            server.router_added().observe(added.as_secs_f64());
        }
        for (i, attempt) in r.attempts.iter().enumerate() {
            let stats = &attempt.server().stats;
            stats.attempts().inc();
            if i + 1 < r.attempts.len() {
                stats.retries().inc();
            }
            if let Some(result) = attempt.result.filter(|res| res.is_error()) {
                stats.error(result.as_str()).inc();
            }
            if let (Some(sent), Some(header)) = (attempt.sent, attempt.header) {
                stats
                    .upstream_header()
                    .observe((header - sent).as_secs_f64());
            }
        }
    }

    /// The Prometheus text exposition: every counter and histogram, then the live gauges of
    /// the servers (`views`) and the router's `active` requests.
    pub fn render(&self, views: &[ServerView], active: usize) -> String {
        let mut families = self.registry.gather();
        families.extend(live_gauges(views, active));
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
            tracing::warn!(error = %e, "cannot render the metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

fn status_class(status: Option<u16>) -> usize {
    match status {
        Some(s @ 100..=599) => (s / 100) as usize,
        _ => 0,
    }
}

/// One server's handles into the hub.
pub struct ServerStats {
    server: Arc<str>,
    families: Families,
    /// Made on first use, like every handle here: a series appears once it has a value.
    attempts: OnceLock<IntCounter>,
    retries: OnceLock<IntCounter>,
    router_added: OnceLock<Histogram>,
    upstream_header: OnceLock<Histogram>,
    errors: [OnceLock<IntCounter>; CAUSES.len()],
    /// Per `Scrape`: how long reads take, how many failed.
    scrapes: [OnceLock<(Histogram, IntCounter)>; 2],
    /// Per-model handles; read lock-free, replaced whole when a model is first seen.
    models: ArcSwap<Vec<Arc<ModelStats>>>,
    /// Serialises adding a model (only the first request of each model takes it).
    adding: Mutex<()>,
}

/// One (server, model)'s handles.
struct ModelStats {
    model: Box<str>,
    requests: [[OnceLock<IntCounter>; Outcome::ALL.len()]; STATUS_CLASSES.len()],
    ttft: Histogram,
    duration: Histogram,
    prompt_tokens: IntCounter,
    completion_tokens: IntCounter,
    server: Arc<str>,
    families: Families,
}

impl ModelStats {
    fn request(&self, class: usize, outcome: Outcome) -> &IntCounter {
        self.requests[class][outcome as usize].get_or_init(|| {
            self.families.requests.with_label_values(&[
                &*self.server,
                &*self.model,
                STATUS_CLASSES[class],
                outcome.as_str(),
            ])
        })
    }
}

/// Totals of one server, for `/load-stats` and the monitor.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServerTotals {
    pub requests: u64,
    pub attempts: u64,
    pub retries: u64,
    pub errors: u64,
    /// Completion tokens, as the answers reported them.
    pub completion_tokens: u64,
    /// Median time to first token, from the histogram's buckets (their upper bound).
    pub ttft_p50: Option<f64>,
    /// The time-to-first-token histogram of all its models: (upper bound, cumulative count),
    /// for the monitor's recent percentiles.
    pub ttft_buckets: Vec<(f64, u64)>,
}

/// The `q` quantile (0 to 1) of the observations between two readings of a cumulative
/// histogram (`before` may be empty: from the start), interpolated linearly inside its bucket
/// as Prometheus' `histogram_quantile` does. `None` if nothing was observed in between.
pub fn quantile_between(before: &[(f64, u64)], after: &[(f64, u64)], q: f64) -> Option<f64> {
    let count_at = |i: usize| after[i].1.saturating_sub(before.get(i).map_or(0, |b| b.1));
    let total = count_at(after.len().checked_sub(1)?);
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let (mut lower, mut below) = (0.0, 0u64);
    for (i, &(bound, _)) in after.iter().enumerate() {
        let count = count_at(i);
        if count as f64 >= rank && count > below {
            let fraction = (rank - below as f64) / (count - below) as f64;
            return Some(lower + (bound - lower) * fraction.clamp(0.0, 1.0));
        }
        (lower, below) = (bound, count);
    }
    Some(lower)
}

impl ServerStats {
    fn new(server: &str, families: Families) -> ServerStats {
        ServerStats {
            attempts: OnceLock::new(),
            retries: OnceLock::new(),
            router_added: OnceLock::new(),
            upstream_header: OnceLock::new(),
            errors: std::array::from_fn(|_| OnceLock::new()),
            scrapes: std::array::from_fn(|_| OnceLock::new()),
            models: ArcSwap::from_pointee(Vec::new()),
            adding: Mutex::new(()),
            server: server.into(),
            families,
        }
    }

    fn attempts(&self) -> &IntCounter {
        self.attempts
            .get_or_init(|| self.families.attempts.with_label_values(&[&*self.server]))
    }

    fn retries(&self) -> &IntCounter {
        self.retries
            .get_or_init(|| self.families.retries.with_label_values(&[&*self.server]))
    }

    fn upstream_header(&self) -> &Histogram {
        self.upstream_header.get_or_init(|| {
            self.families
                .upstream_header
                .with_label_values(&[&*self.server])
        })
    }

    fn router_added(&self) -> &Histogram {
        self.router_added.get_or_init(|| {
            self.families
                .router_added
                .with_label_values(&[&*self.server])
        })
    }

    fn error(&self, cause: &str) -> &IntCounter {
        let index = CAUSES.iter().position(|c| *c == cause).unwrap_or(0);
        self.errors[index].get_or_init(|| {
            self.families
                .upstream_errors
                .with_label_values(&[&*self.server, CAUSES[index]])
        })
    }

    /// Records an ejection of the server (ejection.rs).
    pub fn ejected(&self) {
        self.families
            .ejections
            .with_label_values(&[&*self.server])
            .inc();
    }

    /// Records one read of the server's `/metrics` or `/v1/models` by the poller.
    pub fn scraped(&self, what: Scrape, took: Duration, ok: bool) {
        let (duration, failures) = self.scrapes[what as usize].get_or_init(|| {
            let labels = [&*self.server, what.as_str()];
            (
                self.families.scrape_duration.with_label_values(&labels),
                self.families.scrape_failures.with_label_values(&labels),
            )
        });
        duration.observe(took.as_secs_f64());
        if !ok {
            failures.inc();
        }
    }

    /// Runs `f` on the handles of `model`, making them on its first use.
    fn with_model<R>(&self, model: &str, f: impl FnOnce(&ModelStats) -> R) -> R {
        if let Some(m) = self.models.load().iter().find(|m| &*m.model == model) {
            return f(m);
        }
        let _adding = self.adding.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.models.load_full();
        let model = if current.len() >= MAX_MODELS_PER_SERVER {
            "other"
        } else {
            model
        };
        if let Some(m) = current.iter().find(|m| &*m.model == model) {
            return f(m);
        }
        let labels = [&*self.server, model];
        let made = Arc::new(ModelStats {
            model: model.into(),
            requests: std::array::from_fn(|_| std::array::from_fn(|_| OnceLock::new())),
            ttft: self.families.ttft.with_label_values(&labels),
            duration: self.families.duration.with_label_values(&labels),
            prompt_tokens: self.families.prompt_tokens.with_label_values(&labels),
            completion_tokens: self.families.completion_tokens.with_label_values(&labels),
            server: Arc::clone(&self.server),
            families: self.families.clone(),
        });
        let mut next = Vec::with_capacity(current.len() + 1);
        next.extend(current.iter().cloned());
        next.push(Arc::clone(&made));
        self.models.store(Arc::new(next));
        f(&made)
    }

    /// This server's totals so far.
    pub fn totals(&self) -> ServerTotals {
        let models = self.models.load();
        let requests = models
            .iter()
            .flat_map(|m| m.requests.iter().flatten())
            .filter_map(OnceLock::get)
            .map(IntCounter::get)
            .sum();
        let errors = self
            .errors
            .iter()
            .filter_map(OnceLock::get)
            .map(IntCounter::get)
            .sum();
        // Merge the models' TTFT buckets (cumulative counts per upper bound).
        let mut merged: Vec<(f64, u64)> = Vec::new();
        for m in models.iter() {
            for family in m.ttft.collect() {
                for metric in family.get_metric() {
                    let buckets = metric.get_histogram().get_bucket();
                    if merged.is_empty() {
                        merged = buckets.iter().map(|b| (b.upper_bound(), 0)).collect();
                    }
                    for (slot, b) in merged.iter_mut().zip(buckets) {
                        slot.1 += b.cumulative_count();
                    }
                }
            }
        }
        let seen = models
            .iter()
            .map(|m| m.ttft.get_sample_count())
            .sum::<u64>();
        let ttft_p50 = (seen > 0)
            .then(|| {
                merged
                    .iter()
                    .find(|(_, count)| *count * 2 >= seen)
                    .map(|(bound, _)| *bound)
            })
            .flatten();
        ServerTotals {
            requests,
            attempts: self.attempts.get().map_or(0, IntCounter::get),
            retries: self.retries.get().map_or(0, IntCounter::get),
            errors,
            completion_tokens: models.iter().map(|m| m.completion_tokens.get()).sum(),
            ttft_p50,
            ttft_buckets: merged,
        }
    }
}

/// The live gauges, from the servers' views.
fn live_gauges(views: &[ServerView], active: usize) -> Vec<prometheus::proto::MetricFamily> {
    let gauge = |name: &str, help: &str| {
        GaugeVec::new(Opts::new(name, help), &["server"])
            .expect("gauge names and labels are valid constants")
    };
    let healthy = gauge(
        "mvllm_server_healthy",
        "1 while the server takes requests, 0 while it is out.",
    );
    let in_flight = gauge(
        "mvllm_server_in_flight",
        "Requests the router is forwarding to the server now.",
    );
    let running = gauge(
        "mvllm_server_running",
        "Requests running on the server, from its last /metrics scrape.",
    );
    let waiting = gauge(
        "mvllm_server_waiting",
        "Requests waiting on the server, from its last /metrics scrape.",
    );
    let kv = gauge(
        "mvllm_server_kv_cache_usage_ratio",
        "KV cache in use on the server, 0 to 1, from its last scrape.",
    );
    let utilization = gauge(
        "mvllm_server_utilization_ratio",
        "The server's load estimate over its capacity (least-load adds this request and its speed).",
    );
    let capacity = gauge(
        "mvllm_server_capacity",
        "The server's max_concurrent_requests.",
    );
    let ejected = gauge(
        "mvllm_server_ejected",
        "1 while the server is ejected for failing real requests, else 0.",
    );
    let gap = gauge(
        "mvllm_server_load_gap",
        "The server's own running + waiting minus the router's in flight to it, smoothed: above 0, others use it too; below 0, the router counts requests the server does not have.",
    );
    let speed = gauge(
        "mvllm_server_seconds_per_token",
        "The server's learned time per output token, from the answers it gave (smoothed).",
    );
    let kv_bytes = gauge(
        "mvllm_kv_index_bytes",
        "Memory of the server's KV cache event index (all its engines), by the budget's count.",
    );
    let kv_budget = gauge(
        "mvllm_kv_index_budget_bytes",
        "The server's KV cache event index budget (kv_index_budget_mib).",
    );
    let kv_blocks = gauge(
        "mvllm_kv_index_blocks",
        "KV cache blocks the server's engines hold, as their events tell.",
    );
    let kv_trusted = gauge(
        "mvllm_kv_engines_trusted",
        "The server's engines whose KV event index is used for routing now.",
    );
    let kv_counter = |name: &str, help: &str| {
        prometheus::IntCounterVec::new(Opts::new(name, help), &["server"])
            .expect("counter names and labels are valid constants")
    };
    let kv_events = kv_counter(
        "mvllm_kv_events_total",
        "KV cache events received from the server (live and replayed).",
    );
    let kv_gaps = kv_counter(
        "mvllm_kv_event_gaps_total",
        "Gaps in the server's KV event sequence numbers.",
    );
    let kv_replays = kv_counter(
        "mvllm_kv_event_replays_total",
        "Gaps filled from the server's KV event replay socket.",
    );
    let kv_lost = kv_counter(
        "mvllm_kv_events_lost_total",
        "Times KV events were lost for good (the index was cleared and rebuilt).",
    );
    let kv_restarts = kv_counter(
        "mvllm_kv_event_restarts_total",
        "Times the server's KV event publisher started again (its index was cleared).",
    );
    for v in views {
        let label = [v.url.as_str()];
        if let Some(kv) = v.kv_index {
            kv_bytes.with_label_values(&label).set(kv.bytes as f64);
            kv_budget.with_label_values(&label).set(kv.budget as f64);
            kv_blocks.with_label_values(&label).set(kv.blocks as f64);
            kv_trusted.with_label_values(&label).set(kv.trusted as f64);
            kv_events.with_label_values(&label).inc_by(kv.events);
            kv_gaps.with_label_values(&label).inc_by(kv.gaps);
            kv_replays.with_label_values(&label).inc_by(kv.replays);
            kv_lost.with_label_values(&label).inc_by(kv.lost);
            kv_restarts.with_label_values(&label).inc_by(kv.restarts);
        }
        if let Some(s) = v.seconds_per_token {
            speed.with_label_values(&label).set(s);
        }
        healthy
            .with_label_values(&label)
            .set(f64::from(u8::from(v.healthy)));
        in_flight
            .with_label_values(&label)
            .set(f64::from(v.in_flight));
        running.with_label_values(&label).set(v.running);
        waiting.with_label_values(&label).set(v.waiting);
        if let Some(usage) = v.kv_cache_usage {
            kv.with_label_values(&label).set(usage);
        }
        utilization.with_label_values(&label).set(v.utilization);
        capacity
            .with_label_values(&label)
            .set(f64::from(v.capacity));
        ejected
            .with_label_values(&label)
            .set(f64::from(u8::from(v.ejected_for.is_some())));
        gap.with_label_values(&label).set(v.load_gap);
    }
    let active_gauge = prometheus::Gauge::new(
        "mvllm_requests_active",
        "Requests the router is answering now.",
    )
    .expect("a valid constant name");
    active_gauge.set(active as f64);
    let mut families = Vec::new();
    for vec in [
        healthy,
        in_flight,
        running,
        waiting,
        kv,
        utilization,
        capacity,
        ejected,
        gap,
        speed,
        kv_bytes,
        kv_budget,
        kv_blocks,
        kv_trusted,
    ] {
        families.extend(vec.collect());
    }
    for vec in [kv_events, kv_gaps, kv_replays, kv_lost, kv_restarts] {
        families.extend(vec.collect());
    }
    families.extend(active_gauge.collect());
    // A family no server has a value of (no speed learned yet, no KV events followed) is left
    // out: the text encoder refuses an empty family, and with it the whole page.
    families.retain(|family| !family.get_metric().is_empty());
    families
}

/// Renders a duration for logs and JSON: milliseconds with two decimals.
pub fn millis(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_whole_when_some_families_have_no_value() {
        // A server with no speed learned and no KV events followed: their families are empty.
        let backend = crate::backend::tests::healthy("http://a", 4, &["m"], 1.0);
        let views = [crate::backend::ServerView::of(&backend)];
        let text = Stats::new().render(&views, 3);
        assert!(
            text.contains("mvllm_server_healthy{server=\"http://a\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("mvllm_requests_active 3"),
            "the last family: {text}"
        );
        assert!(!text.contains("mvllm_kv_index_bytes"), "{text}");
    }

    #[test]
    fn quantiles_come_from_the_observations_between_two_readings() {
        let bounds = [0.1, 0.5, 1.0];
        let at = |counts: [u64; 3]| -> Vec<(f64, u64)> { bounds.into_iter().zip(counts).collect() };
        // From the start: 4 observations in (0.1, 0.5], the median is inside that bucket.
        let p50 = quantile_between(&[], &at([0, 4, 4]), 0.5).unwrap();
        assert!((p50 - 0.3).abs() < 1e-9, "{p50}");
        // Between two readings only the new ones count: 2 more, both in (0.5, 1.0].
        let p50 = quantile_between(&at([0, 4, 4]), &at([0, 4, 6]), 0.5).unwrap();
        assert!((0.5..=1.0).contains(&p50), "{p50}");
        assert_eq!(quantile_between(&at([1, 2, 3]), &at([1, 2, 3]), 0.5), None);
        assert_eq!(quantile_between(&[], &[], 0.5), None);
    }
}
