//! The live state of the servers behind the router, shared by the request path (reads on
//! every request) and the poller (writes once per scrape).
//!
//! The set of backends is an immutable snapshot behind an `ArcSwap`; each backend's changing
//! state is in atomics or small `ArcSwap`s, so the request path takes no lock. The poller is
//! the only writer of scraped values; the request path only changes in-flight counts and
//! reports passive failures.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::{ArcSwap, ArcSwapOption};

use crate::config::{ServerConfig, Settings};
use crate::scrape::{LoadSample, ModelCard};

/// One server and what the router knows about it.
pub struct Backend {
    pub cfg: ServerConfig,
    /// The server's address, resolved off the request path (see poller.rs).
    pub addr: ArcSwapOption<SocketAddr>,
    healthy: AtomicBool,
    /// A server that has never been healthy joins at its first good scrape; one that failed
    /// needs `recovery_threshold` good scrapes in a row.
    ever_healthy: AtomicBool,
    consecutive_failures: AtomicU32,
    consecutive_successes: AtomicU32,
    /// The last scraped load, if any scrape succeeded.
    pub load: ArcSwapOption<LoadSample>,
    /// The models the server serves, from its last good `/v1/models`.
    pub models: ArcSwap<Vec<ModelCard>>,
    /// Whether `/v1/models` ever answered: until then the server's models are unknown.
    models_known: AtomicBool,
    /// Unix time (ms) of the last scrape attempt, 0 if none.
    last_check_ms: AtomicU64,
    /// Why the server is not healthy, or the last failure seen.
    pub last_error: ArcSwapOption<String>,
    /// Requests the router is forwarding to this server right now.
    in_flight: AtomicU32,
    /// Of those, the ones started since the last scrape: the scrape does not count them yet.
    unscraped: AtomicU32,
    /// Incremented at every scrape; an in-flight request started in an older epoch is already
    /// part of the scraped numbers.
    epoch: AtomicU64,
}

impl Backend {
    pub fn new(cfg: ServerConfig) -> Backend {
        Backend {
            cfg,
            addr: ArcSwapOption::empty(),
            // Not routable until its first scrape succeeds.
            healthy: AtomicBool::new(false),
            ever_healthy: AtomicBool::new(false),
            consecutive_failures: AtomicU32::new(0),
            consecutive_successes: AtomicU32::new(0),
            load: ArcSwapOption::empty(),
            models: ArcSwap::from_pointee(Vec::new()),
            models_known: AtomicBool::new(false),
            last_check_ms: AtomicU64::new(0),
            last_error: ArcSwapOption::from_pointee("not checked yet".to_string()),
            in_flight: AtomicU32::new(0),
            unscraped: AtomicU32::new(0),
            epoch: AtomicU64::new(0),
        }
    }

    /// A backend for a changed entry of a reloaded config, starting from the state the old
    /// entry had (health, load, models), so a capacity edit does not take a server out.
    pub fn carrying_over(cfg: ServerConfig, old: &Backend) -> Backend {
        let same_address = cfg.host == old.cfg.host && cfg.port == old.cfg.port;
        let backend = Backend::new(cfg);
        if same_address {
            backend.addr.store(old.addr.load_full());
        }
        backend.healthy.store(old.healthy.load(Relaxed), Relaxed);
        backend
            .ever_healthy
            .store(old.ever_healthy.load(Relaxed), Relaxed);
        backend
            .consecutive_failures
            .store(old.consecutive_failures.load(Relaxed), Relaxed);
        backend
            .consecutive_successes
            .store(old.consecutive_successes.load(Relaxed), Relaxed);
        backend.load.store(old.load.load_full());
        backend.models.store(old.models.load_full());
        backend
            .models_known
            .store(old.models_known.load(Relaxed), Relaxed);
        backend
            .last_check_ms
            .store(old.last_check_ms.load(Relaxed), Relaxed);
        backend.last_error.store(old.last_error.load_full());
        backend
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

    /// Unix time in milliseconds of the last scrape, if any.
    pub fn last_check_ms(&self) -> Option<u64> {
        Some(self.last_check_ms.load(Relaxed)).filter(|&t| t > 0)
    }

    /// Whether the server lists `model` (an exact id: served names, aliases, LoRA adapters).
    pub fn serves(&self, model: &str) -> bool {
        self.models.load().iter().any(|m| m.id == model)
    }

    /// The load score: (running + 0.5 × waiting + requests sent since the scrape) / capacity.
    ///
    /// Scraped numbers are up to one poll interval old. Without the correction every request
    /// of a burst would see the same "least loaded" server and go to it; with it, each request
    /// sent counts at once, and a burst spreads in proportion to capacity.
    pub fn score(&self) -> f64 {
        let (running, waiting) = match &*self.load.load() {
            Some(s) => (s.running, s.waiting),
            None => (0.0, 0.0),
        };
        let unscraped = self.unscraped.load(Relaxed) as f64;
        (running + 0.5 * waiting + unscraped) / self.cfg.max_concurrent_requests.max(1) as f64
    }

    /// Utilisation in percent, as `/load-stats` shows it.
    pub fn utilisation_percent(&self) -> f64 {
        self.score() * 100.0
    }

    /// Counts a request as in flight to this server until the guard is dropped (on success,
    /// error, retry or client disconnect alike).
    pub fn start_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Relaxed);
        self.unscraped.fetch_add(1, Relaxed);
        InFlight {
            backend: Arc::clone(self),
            epoch: self.epoch.load(Relaxed),
        }
    }

    /// Records a successful scrape of `/metrics`.
    pub fn scrape_succeeded(&self, load: LoadSample, settings: &Settings) {
        // Requests in flight now are in the scraped numbers; only later ones are not.
        self.epoch.fetch_add(1, Relaxed);
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
            tracing::info!(server = %self.cfg.url, "server is healthy");
        }
    }

    /// Records a failed scrape, or a failure of a real request (connect error, reset, timeout,
    /// 5xx). A client's 4xx is never reported here.
    pub fn record_failure(&self, why: String, settings: &Settings) {
        self.consecutive_successes.store(0, Relaxed);
        let failures = self.consecutive_failures.fetch_add(1, Relaxed) + 1;
        if self.is_healthy() && failures >= settings.failure_threshold {
            self.healthy.store(false, Relaxed);
            tracing::warn!(server = %self.cfg.url, failures, reason = %why, "server is unhealthy");
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
    }

    pub fn set_models(&self, models: Vec<ModelCard>) {
        self.models.store(Arc::new(models));
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

/// A request in flight to a backend; dropping it ends the request's share of the load.
pub struct InFlight {
    backend: Arc<Backend>,
    epoch: u64,
}

impl InFlight {
    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let b = &self.backend;
        b.in_flight.fetch_sub(1, Relaxed);
        if b.epoch.load(Relaxed) == self.epoch {
            // Not yet absorbed by a scrape: take it back out of the correction. (A scrape
            // racing with this drop can leave the correction one too low until the next
            // scrape resets it; that is tolerated.)
            let _ = b
                .unscraped
                .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1));
        }
    }
}

/// All backends and the settings in force.
pub struct Cluster {
    backends: ArcSwap<Vec<Arc<Backend>>>,
    settings: ArcSwap<Settings>,
}

impl Cluster {
    pub fn new(servers: Vec<ServerConfig>, settings: Settings) -> Cluster {
        Cluster {
            backends: ArcSwap::from_pointee(
                servers
                    .into_iter()
                    .map(|s| Arc::new(Backend::new(s)))
                    .collect(),
            ),
            settings: ArcSwap::from_pointee(settings),
        }
    }

    pub fn backends(&self) -> arc_swap::Guard<Arc<Vec<Arc<Backend>>>> {
        self.backends.load()
    }

    /// Applies a reloaded config: unchanged servers keep their state, changed ones carry it
    /// over, new ones start unchecked, removed ones go (their in-flight requests finish).
    /// Returns a one-line summary.
    pub fn apply(&self, config: crate::config::Config) -> String {
        let old = self.backends.load_full();
        let (mut added, mut changed, mut kept) = (0, 0, 0);
        let next: Vec<Arc<Backend>> = config
            .servers
            .into_iter()
            .map(
                |server| match old.iter().find(|b| b.cfg.url == server.url) {
                    Some(b) if b.cfg == server => {
                        kept += 1;
                        Arc::clone(b)
                    }
                    Some(b) => {
                        changed += 1;
                        Arc::new(Backend::carrying_over(server, b))
                    }
                    None => {
                        added += 1;
                        Arc::new(Backend::new(server))
                    }
                },
            )
            .collect();
        let removed = old
            .iter()
            .filter(|b| !next.iter().any(|n| n.cfg.url == b.cfg.url))
            .count();
        self.settings.store(Arc::new(config.settings));
        self.backends.store(Arc::new(next));
        format!("{added} added, {removed} removed, {changed} changed, {kept} unchanged")
    }

    /// Replaces the set of backends (tests).
    pub fn replace_backends(&self, backends: Vec<Arc<Backend>>) {
        self.backends.store(Arc::new(backends));
    }

    pub fn settings(&self) -> Arc<Settings> {
        self.settings.load_full()
    }

    /// Every model id any backend lists, healthy or not.
    pub fn knows_model(&self, model: &str) -> bool {
        self.backends.load().iter().any(|b| b.serves(model))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::scrape::Flavor;

    pub fn server(url: &str, capacity: u32) -> ServerConfig {
        ServerConfig {
            url: url.into(),
            host: "127.0.0.1".into(),
            port: 1,
            max_concurrent_requests: capacity,
            api_key: None,
        }
    }

    pub fn sample(running: f64, waiting: f64) -> LoadSample {
        LoadSample {
            flavor: Flavor::Vllm,
            running,
            waiting,
            kv_cache_usage: None,
        }
    }

    fn model(id: &str) -> ModelCard {
        ModelCard {
            id: id.into(),
            card: serde_json::json!({"id": id}),
        }
    }

    /// A healthy backend serving `models`, with a scraped load.
    pub fn healthy(url: &str, capacity: u32, models: &[&str], running: f64) -> Arc<Backend> {
        let b = Arc::new(Backend::new(server(url, capacity)));
        b.set_models(models.iter().map(|m| model(m)).collect());
        let settings = Settings::default();
        for _ in 0..settings.recovery_threshold {
            b.scrape_succeeded(sample(running, 0.0), &settings);
        }
        assert!(b.is_healthy());
        b
    }

    #[test]
    fn health_needs_consecutive_failures_and_successes() {
        let settings = Settings::default(); // 2 and 2
        let b = healthy("http://a", 4, &["m"], 0.0);
        b.record_failure("reset".into(), &settings);
        assert!(b.is_healthy(), "one failure is not enough");
        b.scrape_succeeded(sample(0.0, 0.0), &settings);
        b.record_failure("reset".into(), &settings);
        assert!(b.is_healthy(), "a success in between resets the streak");
        b.record_failure("reset".into(), &settings);
        assert!(!b.is_healthy());
        assert_eq!(
            b.last_error.load().as_deref().map(String::as_str),
            Some("reset")
        );
        b.scrape_succeeded(sample(0.0, 0.0), &settings);
        assert!(!b.is_healthy(), "one success is not enough");
        b.scrape_succeeded(sample(0.0, 0.0), &settings);
        assert!(b.is_healthy());
    }

    #[test]
    fn a_reload_keeps_unchanged_servers_and_carries_state_over() {
        let a = healthy("http://a", 4, &["m"], 1.0);
        let b = healthy("http://b", 4, &["m"], 0.0);
        let cluster = Cluster::new(vec![], Settings::default());
        cluster.replace_backends(vec![Arc::clone(&a), Arc::clone(&b)]);
        let mut a_bigger = a.cfg.clone();
        a_bigger.max_concurrent_requests = 8;
        let config = crate::config::Config {
            source: "servers.toml".into(),
            servers: vec![a_bigger, server("http://c", 2)],
            settings: Settings::default(),
            ignored: vec![],
        };
        assert_eq!(
            cluster.apply(config),
            "1 added, 1 removed, 1 changed, 0 unchanged"
        );
        let now = cluster.backends();
        assert_eq!(now.len(), 2);
        assert!(now[0].is_healthy(), "the capacity edit kept a's health");
        assert_eq!(now[0].score(), 1.0 / 8.0);
        assert!(!now[1].is_healthy(), "c waits for its first scrape");
    }

    #[test]
    fn a_new_server_joins_at_its_first_good_scrape() {
        let b = Backend::new(server("http://a", 4));
        b.set_models(vec![model("m")]);
        b.scrape_succeeded(sample(0.0, 0.0), &Settings::default());
        assert!(b.is_healthy());
    }

    #[test]
    fn a_server_without_models_does_not_become_healthy() {
        let b = Backend::new(server("http://a", 4));
        let settings = Settings::default();
        for _ in 0..5 {
            b.scrape_succeeded(sample(0.0, 0.0), &settings);
        }
        assert!(!b.is_healthy());
    }

    #[test]
    fn score_counts_requests_sent_since_the_scrape() {
        let settings = Settings::default();
        let b = healthy("http://a", 4, &["m"], 1.0);
        assert_eq!(b.score(), 0.25);
        let first = b.start_request();
        let second = b.start_request();
        assert_eq!(b.score(), 0.75);
        drop(first);
        assert_eq!(b.score(), 0.5);
        // The scrape now sees the remaining request in `running`: no double counting.
        b.scrape_succeeded(sample(2.0, 2.0), &settings);
        assert_eq!(b.score(), 0.75);
        assert_eq!(b.in_flight(), 1);
        drop(second);
        assert_eq!(
            b.score(),
            0.75,
            "it left after the scrape: the next scrape will show it"
        );
        assert_eq!(b.in_flight(), 0);
    }
}
