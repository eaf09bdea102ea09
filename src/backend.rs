//! One server behind the router: its entry in servers.toml ([`Backend`]) and what the router
//! knows about it ([`ServerState`]: health, load, models, in-flight requests, stats).
//!
//! The state is keyed by the server's URL and outlives reloads: a reload that edits an entry
//! (its capacity, its key) makes a new `Backend` around the same `ServerState`, so requests in
//! flight keep counting against it and a retry still knows it was tried. Everything in it is
//! an atomic or a small `ArcSwap`: the request path reads it without a lock. The poller is the
//! only writer of scraped values; the request path changes in-flight counts and reports
//! failures of real requests.

use std::net::SocketAddr;
use std::sync::atomic::{
    AtomicBool, AtomicU32, AtomicU64, Ordering::Acquire, Ordering::Relaxed, Ordering::Release,
};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::{ArcSwap, ArcSwapOption};

use crate::config::{ServerConfig, Settings};
use crate::ejection::Ejection;
use crate::headers::ServerHeaders;
use crate::scrape::{LoadSample, ModelCard};
use crate::speed::Speed;
use crate::stats::{ServerStats, ServerTotals};

/// How much of a new scrape's gap enters the smoothed one: about the last five scrapes count.
const GAP_SMOOTHING: f64 = 0.2;

/// A server as the running config lists it.
pub struct Backend {
    pub cfg: ServerConfig,
    pub state: Arc<ServerState>,
    /// The headers its requests always carry (host, its key), made once.
    pub headers: ServerHeaders,
    /// For an `https://` server: what its connections need (SNI, trust, client certificate).
    pub tls: Option<crate::tls::BackendTls>,
}

impl Backend {
    pub fn new(cfg: ServerConfig, state: Arc<ServerState>) -> Backend {
        let headers = ServerHeaders::new(&cfg);
        let tls = cfg.tls.as_ref().map(crate::tls::BackendTls::new);
        Backend {
            cfg,
            state,
            headers,
            tls,
        }
    }

    /// The load estimate in request units, right whichever is fresher: the server's own
    /// numbers or the router's.
    ///
    /// - From the server: scraped running + 0.5 × scraped waiting + the requests the router
    ///   sent since that scrape. Scraped numbers are up to one poll interval old; without the
    ///   correction every request of a burst would see the same "least loaded" server.
    /// - From the router: its own requests in flight to the server are there whatever the
    ///   server's `/metrics` says yet — a floor. vLLM's gauges lag its engine by up to seconds,
    ///   so a scrape can still say "idle" while requests sent just before it run; the
    ///   since-scrape correction no longer counts those. Up to capacity they count as
    ///   running, beyond it as waiting.
    ///
    /// The estimate is the larger: the floor when the router is the only client and the
    /// scrape lags, the scrape when other clients (or router replicas) add load.
    pub fn load_units(&self) -> f64 {
        let scraped = self.state.scraped_units() + f64::from(self.state.unscraped.load(Relaxed));
        let in_flight = f64::from(self.state.in_flight());
        let capacity = f64::from(self.cfg.max_concurrent_requests.max(1));
        let floor = in_flight.min(capacity) + 0.5 * (in_flight - capacity).max(0.0);
        scraped.max(floor)
    }

    /// The utilisation: [`load_units`](Self::load_units) over capacity. `/load-stats` shows it
    /// as `utilization_percent`; the least-load policy's cost adds the request it is choosing
    /// for and the server's learned speed (policy/least_load.rs).
    pub fn score(&self) -> f64 {
        self.load_units() / f64::from(self.cfg.max_concurrent_requests.max(1))
    }
}

/// Models a server may serve and still be checked without reading its list (most serve one,
/// some a few LoRA adapters).
const MODEL_SLOTS: usize = 4;

/// A model id and its hash, computed once per request.
pub struct ModelId<'a> {
    id: &'a str,
    hash: u64,
}

impl<'a> ModelId<'a> {
    pub fn new(id: &'a str) -> ModelId<'a> {
        ModelId {
            id,
            hash: xxhash_rust::xxh3::xxh3_64(id.as_bytes()),
        }
    }

    /// The id's hash (xxh3).
    pub fn hash(&self) -> u64 {
        self.hash
    }
}

/// What the router knows about one server.
///
/// `repr(C)` with the fields every choice of a server reads for every candidate first
/// (eligibility, load, speed), so that they share the allocation's first cache lines: with a
/// thousand servers, a choice is bound by how many lines it touches.
#[repr(C)]
pub struct ServerState {
    /// Requests the router is forwarding to this server right now.
    in_flight: AtomicU32,
    /// Of those, the ones started since the last scrape: the scrape does not count them yet.
    unscraped: AtomicU32,
    /// A number no other server of this process has: a key for per-server tables that is
    /// cheaper than the URL (the cache-aware policy's prefix index).
    pub id: u32,
    healthy: AtomicBool,
    /// Its running + 0.5 × waiting (f64 bits), kept beside it because every choice of a
    /// server reads it for every candidate: an atomic is cheaper to read than the sample.
    scraped_units: AtomicU64,
    /// How fast it answers, learned from its answers (speed.rs).
    pub speed: Speed,
    /// What its engines have cached, from its KV cache events (kv_events/).
    pub kv: crate::kv_events::engines::ServerCaches,
    /// Whether real traffic has taken it out for a while (ejection.rs).
    pub ejection: Ejection,
    /// The models the server serves, from its last good `/v1/models`.
    pub models: ArcSwap<Vec<ModelCard>>,
    /// The same models' ids hashed ([`ModelId`]), while there are at most [`MODEL_SLOTS`]:
    /// `serves` runs for every server on every request, and reading atomics beside the load
    /// is much cheaper than loading the list. `model_slots` is how many are valid, or
    /// `u32::MAX` when the list is longer (or being changed): then the list is read.
    model_hashes: [AtomicU64; MODEL_SLOTS],
    model_slots: AtomicU32,
    pub url: Arc<str>,
    /// The server's address, resolved off the request path (see poller.rs).
    pub addr: ArcSwapOption<SocketAddr>,
    /// A server that has never been healthy joins at its first good scrape; one that failed
    /// needs `recovery_threshold` good scrapes in a row.
    ever_healthy: AtomicBool,
    consecutive_failures: AtomicU32,
    consecutive_successes: AtomicU32,
    /// The last scraped load, if any scrape succeeded.
    pub load: ArcSwapOption<LoadSample>,
    /// Whether `/v1/models` ever answered: until then the server's models are unknown.
    models_known: AtomicBool,
    /// Unix time (ms) of the last scrape attempt, 0 if none.
    last_check_ms: AtomicU64,
    /// Why the server is not healthy, or the last failure seen.
    pub last_error: ArcSwapOption<String>,
    /// Incremented at every scrape; an in-flight request started in an older epoch is already
    /// part of the scraped numbers.
    epoch: AtomicU64,
    /// What the server reports (running + waiting) minus what this router has in flight to
    /// it, smoothed over scrapes (f64 bits): persistently above 0, others use the server too
    /// (other clients, other router replicas); persistently below 0, the router counts
    /// requests the server does not have (a leak, or a server that lost them).
    load_gap: AtomicU64,
    /// Its handles into the stats hub.
    pub stats: ServerStats,
}

impl ServerState {
    pub fn new(url: &str, stats: ServerStats) -> ServerState {
        static NEXT_ID: AtomicU32 = AtomicU32::new(0);
        ServerState {
            url: url.into(),
            id: NEXT_ID.fetch_add(1, Relaxed),
            addr: ArcSwapOption::empty(),
            // Not routable until its first scrape succeeds.
            healthy: AtomicBool::new(false),
            ever_healthy: AtomicBool::new(false),
            consecutive_failures: AtomicU32::new(0),
            consecutive_successes: AtomicU32::new(0),
            load: ArcSwapOption::empty(),
            scraped_units: AtomicU64::new(0f64.to_bits()),
            models: ArcSwap::from_pointee(Vec::new()),
            model_hashes: Default::default(),
            model_slots: AtomicU32::new(0),
            models_known: AtomicBool::new(false),
            last_check_ms: AtomicU64::new(0),
            last_error: ArcSwapOption::from_pointee("not checked yet".to_string()),
            in_flight: AtomicU32::new(0),
            unscraped: AtomicU32::new(0),
            epoch: AtomicU64::new(0),
            load_gap: AtomicU64::new(0f64.to_bits()),
            stats,
            ejection: Ejection::default(),
            speed: Speed::default(),
            kv: Default::default(),
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Relaxed)
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Relaxed)
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Relaxed)
    }

    /// The last scrape's running + 0.5 × waiting; 0 before the first.
    pub fn scraped_units(&self) -> f64 {
        f64::from_bits(self.scraped_units.load(Relaxed))
    }

    /// The smoothed gap between the server's own count and the router's (see the field).
    pub fn load_gap(&self) -> f64 {
        f64::from_bits(self.load_gap.load(Relaxed))
    }

    /// Unix time in milliseconds of the last scrape, if any.
    pub fn last_check_ms(&self) -> Option<u64> {
        Some(self.last_check_ms.load(Relaxed)).filter(|&t| t > 0)
    }

    /// Whether the server lists `model` (an exact id: served names, aliases, LoRA adapters).
    pub fn serves(&self, model: &str) -> bool {
        self.serves_id(&ModelId::new(model))
    }

    /// [`serves`](Self::serves), for a model id hashed once for many servers.
    pub fn serves_id(&self, model: &ModelId) -> bool {
        let slots = self.model_slots.load(Acquire);
        if slots as usize <= MODEL_SLOTS {
            return self.model_hashes[..slots as usize]
                .iter()
                .any(|h| h.load(Relaxed) == model.hash);
        }
        self.models.load().iter().any(|m| m.id == model.id)
    }

    /// Counts a request as in flight to this server until the guard ends (on success,
    /// error, retry or client disconnect alike).
    pub fn start_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Relaxed);
        self.unscraped.fetch_add(1, Relaxed);
        InFlight {
            server: Arc::clone(self),
            epoch: self.epoch.load(Relaxed),
            ended: false,
        }
    }

    /// Records a successful scrape of `/metrics`.
    pub fn scrape_succeeded(&self, load: LoadSample, settings: &Settings) {
        // Requests in flight now are in the scraped numbers; only later ones are not.
        self.epoch.fetch_add(1, Relaxed);
        let gap = load.running + load.waiting - f64::from(self.in_flight());
        let smoothed = f64::from_bits(self.load_gap.load(Relaxed));
        self.load_gap.store(
            (smoothed + GAP_SMOOTHING * (gap - smoothed)).to_bits(),
            Relaxed,
        );
        // The new numbers first, then the reset of what they now include: a reader in between
        // counts some requests twice (for an instant), never none.
        // A server without metrics: its load is the router's live count alone (load_units'
        // floor); a copy of it would count a request that just ended until the next check.
        let units = if load.counted_by_router {
            0.0
        } else {
            load.running + 0.5 * load.waiting
        };
        self.scraped_units.store(units.to_bits(), Relaxed);
        self.unscraped.store(0, Relaxed);
        self.load.store(Some(Arc::new(load)));
        self.touch();
        self.consecutive_failures.store(0, Relaxed);
        let successes = self.consecutive_successes.fetch_add(1, Relaxed) + 1;
        let needed = if self.ever_healthy.load(Relaxed) {
            settings.recovery_threshold
        } else {
            1
        };
        if !self.is_healthy() && successes >= needed && self.has_models() {
            self.healthy.store(true, Relaxed);
            self.ever_healthy.store(true, Relaxed);
            self.last_error.store(None);
            tracing::info!(server = %self.url, "server is healthy");
        }
    }

    /// Records a failed scrape, or a failure of a real request (connect error, reset, timeout,
    /// 5xx). A client's 4xx is never reported here.
    pub fn record_failure(&self, why: String, settings: &Settings) {
        self.consecutive_successes.store(0, Relaxed);
        let failures = self.consecutive_failures.fetch_add(1, Relaxed) + 1;
        if self.is_healthy() && failures >= settings.failure_threshold {
            self.healthy.store(false, Relaxed);
            tracing::warn!(server = %self.url, failures, reason = %why, "server is unhealthy");
        }
        self.last_error.store(Some(Arc::new(why)));
    }

    /// Records a scrape attempt that failed.
    pub fn scrape_failed(&self, why: String, settings: &Settings) {
        self.touch();
        self.record_failure(why, settings);
    }

    /// A real request to the server got a good answer: the failure streak ends.
    pub fn record_success(&self) {
        self.consecutive_failures.store(0, Relaxed);
        self.ejection.succeeded();
    }

    /// A real request failed in a way that counts against the server: health and ejection.
    pub fn request_failed(&self, why: String, settings: &Settings) {
        let ejected = self.ejection.failed(
            crate::ejection::now_ms(),
            settings.ejection_threshold,
            settings.ejection_time,
            settings.ejection_max_time,
        );
        if let Some(time) = ejected {
            self.stats.ejected();
            tracing::warn!(server = %self.url, reason = %why, ?time, "server ejected: it keeps failing requests");
        }
        self.record_failure(why, settings);
    }

    pub fn set_models(&self, models: Vec<ModelCard>) {
        // Readers go to the list while the hashes change.
        self.model_slots.store(u32::MAX, Release);
        self.models.store(Arc::new(models));
        let models = self.models.load();
        if models.len() <= MODEL_SLOTS {
            for (slot, model) in self.model_hashes.iter().zip(models.iter()) {
                slot.store(ModelId::new(&model.id).hash, Relaxed);
            }
            self.model_slots.store(models.len() as u32, Release);
        }
        self.models_known.store(true, Relaxed);
    }

    /// Whether the server's model list has been read at least once.
    pub fn models_known(&self) -> bool {
        self.models_known.load(Relaxed)
    }

    fn has_models(&self) -> bool {
        !self.models.load().is_empty()
    }

    fn touch(&self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        self.last_check_ms.store(now.as_millis() as u64, Relaxed);
    }
}

/// A request in flight to a server; ending it (or dropping it) ends the request's share of
/// the server's load, once.
pub struct InFlight {
    server: Arc<ServerState>,
    epoch: u64,
    ended: bool,
}

impl InFlight {
    pub fn server(&self) -> &Arc<ServerState> {
        &self.server
    }

    pub fn end(&mut self) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        let s = &self.server;
        s.in_flight.fetch_sub(1, Relaxed);
        if s.epoch.load(Relaxed) == self.epoch {
            // Not yet absorbed by a scrape: take it back out of the correction. (A scrape
            // racing with this can leave the correction one too low until the next scrape
            // resets it; that is tolerated.)
            let _ = s
                .unscraped
                .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1));
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.end();
    }
}

/// What every renderer shows of one server, read once from its live state and its stats:
/// one struct, so that `/load-stats`, `/health`, `/metrics` and the monitor agree.
#[derive(Debug, Clone)]
pub struct ServerView {
    pub url: String,
    /// The `dns_discovery` entry that found it, if one did.
    pub discovered_from: Option<String>,
    /// The server software, as its last metrics showed ("vllm", "sglang", "llama.cpp").
    pub engine: Option<&'static str>,
    pub healthy: bool,
    pub running: f64,
    pub waiting: f64,
    pub kv_cache_usage: Option<f64>,
    pub capacity: u32,
    /// Requests the router is forwarding to it now.
    pub in_flight: u32,
    /// The load estimate in request units, as the policy sees it (see `Backend::load_units`).
    pub load_units: f64,
    /// `load_units / capacity`: the score the least-load policy compares.
    pub utilization: f64,
    pub last_check_ms: Option<u64>,
    pub last_error: Option<String>,
    pub consecutive_failures: u32,
    pub models: Vec<String>,
    pub totals: ServerTotals,
    /// How long it stays ejected, if it is (ejection.rs).
    pub ejected_for: Option<Duration>,
    /// Ejections so far.
    pub ejections: u64,
    /// The server's own count minus the router's in-flight, smoothed (`ServerState::load_gap`).
    pub load_gap: f64,
    /// Its learned seconds per output token (speed.rs), once learned.
    pub seconds_per_token: Option<f64>,
    /// Its KV cache event indexes, when its events are followed.
    pub kv_index: Option<crate::kv_events::engines::KvSummary>,
}

impl ServerView {
    pub fn of(backend: &Backend) -> ServerView {
        let state = &backend.state;
        let (running, waiting, kv_cache_usage) = match &*state.load.load() {
            Some(s) => (s.running, s.waiting, s.kv_cache_usage),
            None => (0.0, 0.0, None),
        };
        ServerView {
            url: backend.cfg.url.clone(),
            discovered_from: backend.cfg.discovered_from.clone(),
            engine: state.load.load().as_ref().map(|l| l.flavor.name()),
            healthy: state.is_healthy(),
            running,
            waiting,
            kv_cache_usage,
            capacity: backend.cfg.max_concurrent_requests,
            in_flight: state.in_flight(),
            load_units: backend.load_units(),
            utilization: backend.score(),
            last_check_ms: state.last_check_ms(),
            last_error: state.last_error.load().as_deref().cloned(),
            consecutive_failures: state.consecutive_failures(),
            models: state.models.load().iter().map(|m| m.id.clone()).collect(),
            totals: state.stats.totals(),
            ejected_for: state.ejection.remaining(crate::ejection::now_ms()),
            ejections: state.ejection.total(),
            load_gap: state.load_gap(),
            seconds_per_token: state.speed.seconds_per_token(),
            kv_index: state.kv.summary(),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::scrape::Flavor;
    use crate::stats::Stats;

    pub fn server(url: &str, capacity: u32) -> ServerConfig {
        ServerConfig {
            url: url.into(),
            host: "127.0.0.1".into(),
            port: 1,
            max_concurrent_requests: capacity,
            api_key: None,
            ..Default::default()
        }
    }

    pub fn sample(running: f64, waiting: f64) -> LoadSample {
        LoadSample {
            flavor: Flavor::Vllm,
            running,
            waiting,
            kv_cache_usage: None,
            kv_tokens: None,
            prefix_cache: None,
            engines: Default::default(),
            counted_by_router: false,
        }
    }

    pub fn model(id: &str) -> ModelCard {
        ModelCard {
            id: id.into(),
            card: serde_json::json!({"id": id}),
        }
    }

    /// A backend that has never been checked.
    pub fn unchecked(url: &str, capacity: u32) -> Backend {
        Backend::new(
            server(url, capacity),
            Arc::new(ServerState::new(url, Stats::new().server(url))),
        )
    }

    /// A healthy backend serving `models`, with a scraped load.
    pub fn healthy(url: &str, capacity: u32, models: &[&str], running: f64) -> Backend {
        let b = unchecked(url, capacity);
        b.state
            .set_models(models.iter().map(|m| model(m)).collect());
        let settings = Settings::default();
        for _ in 0..settings.recovery_threshold {
            b.state.scrape_succeeded(sample(running, 0.0), &settings);
        }
        assert!(b.state.is_healthy());
        b
    }

    #[test]
    fn serves_reads_the_hashes_or_a_long_list() {
        let few = healthy("http://few", 4, &["llama", "lora-1"], 0.0);
        assert!(few.state.serves("lora-1"));
        assert!(!few.state.serves("lora"));
        let names = ["a", "b", "c", "d", "e", "f"];
        let many = healthy("http://many", 4, &names, 0.0);
        assert!(names.iter().all(|m| many.state.serves(m)));
        assert!(!many.state.serves("g"));
        // Shrinking back to a few: the hashes are current again.
        many.state.set_models(vec![model("g")]);
        assert!(many.state.serves("g"));
        assert!(!many.state.serves("a"));
        many.state.set_models(Vec::new());
        assert!(!many.state.serves("g"));
    }

    #[test]
    fn health_needs_consecutive_failures_and_successes() {
        let settings = Settings::default(); // 2 and 2
        let b = healthy("http://a", 4, &["m"], 0.0);
        let s = &b.state;
        s.record_failure("reset".into(), &settings);
        assert!(s.is_healthy(), "one failure is not enough");
        s.scrape_succeeded(sample(0.0, 0.0), &settings);
        s.record_failure("reset".into(), &settings);
        assert!(s.is_healthy(), "a success in between resets the streak");
        s.record_failure("reset".into(), &settings);
        assert!(!s.is_healthy());
        assert_eq!(
            s.last_error.load().as_deref().map(String::as_str),
            Some("reset")
        );
        s.scrape_succeeded(sample(0.0, 0.0), &settings);
        assert!(!s.is_healthy(), "one success is not enough");
        s.scrape_succeeded(sample(0.0, 0.0), &settings);
        assert!(s.is_healthy());
    }

    #[test]
    fn a_new_server_joins_at_its_first_good_scrape() {
        let b = unchecked("http://a", 4);
        b.state.set_models(vec![model("m")]);
        b.state
            .scrape_succeeded(sample(0.0, 0.0), &Settings::default());
        assert!(b.state.is_healthy());
    }

    #[test]
    fn a_server_without_models_does_not_become_healthy() {
        let b = unchecked("http://a", 4);
        let settings = Settings::default();
        for _ in 0..5 {
            b.state.scrape_succeeded(sample(0.0, 0.0), &settings);
        }
        assert!(!b.state.is_healthy());
    }

    #[test]
    fn the_routers_own_requests_are_a_floor_when_the_scrape_lags() {
        let settings = Settings::default();
        let b = healthy("http://a", 4, &["m"], 0.0);
        let guards: Vec<_> = (0..6).map(|_| b.state.start_request()).collect();
        // A lagging scrape still says idle: the six are counted anyway, four as running and
        // two as waiting.
        b.state.scrape_succeeded(sample(0.0, 0.0), &settings);
        assert_eq!(b.load_units(), 5.0);
        // Another client's load shows in the scrape: it wins when it is higher.
        b.state.scrape_succeeded(sample(4.0, 8.0), &settings);
        assert_eq!(b.load_units(), 8.0);
        drop(guards);
        assert_eq!(b.load_units(), 8.0, "the scrape stands until the next one");
    }

    #[test]
    fn a_server_without_metrics_is_loaded_by_the_live_count_only() {
        let settings = Settings::default();
        let b = healthy("http://a", 4, &["m"], 0.0);
        let request = b.state.start_request();
        let copy = LoadSample::counted_by_router(crate::scrape::Flavor::Sglang, 1);
        b.state.scrape_succeeded(copy, &settings);
        assert_eq!(b.load_units(), 1.0);
        drop(request);
        assert_eq!(
            b.load_units(),
            0.0,
            "the request ended: not counted until the next check"
        );
    }

    #[test]
    fn score_counts_requests_sent_since_the_scrape() {
        let settings = Settings::default();
        let b = healthy("http://a", 4, &["m"], 1.0);
        assert_eq!(b.score(), 0.25);
        let first = b.state.start_request();
        let mut second = b.state.start_request();
        assert_eq!(b.score(), 0.75);
        drop(first);
        assert_eq!(b.score(), 0.5);
        // The scrape now sees the remaining request in `running`: no double counting.
        b.state.scrape_succeeded(sample(2.0, 2.0), &settings);
        assert_eq!(b.score(), 0.75);
        assert_eq!(b.state.in_flight(), 1);
        second.end();
        assert_eq!(
            b.score(),
            0.75,
            "it left after the scrape: the next scrape will show it"
        );
        assert_eq!(b.state.in_flight(), 0);
        drop(second);
        assert_eq!(b.state.in_flight(), 0, "ending twice counts once");
    }

    #[test]
    fn the_load_gap_follows_what_others_put_on_the_server() {
        let settings = Settings::default();
        let b = healthy("http://a", 8, &["m"], 0.0);
        let _mine = b.state.start_request();
        // The server runs 3: the router's 1 and 2 from someone else, scrape after scrape.
        for _ in 0..30 {
            b.state.scrape_succeeded(sample(3.0, 0.0), &settings);
        }
        assert!(
            (b.state.load_gap() - 2.0).abs() < 0.01,
            "{}",
            b.state.load_gap()
        );
        // The router thinks 1 is in flight, the server has none: a gap below 0.
        for _ in 0..30 {
            b.state.scrape_succeeded(sample(0.0, 0.0), &settings);
        }
        assert!(
            (b.state.load_gap() + 1.0).abs() < 0.01,
            "{}",
            b.state.load_gap()
        );
    }
}
