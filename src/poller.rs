//! The poller: a background service that keeps every server's state current.
//!
//! Each server has its own task, on its own schedule, so a server that hangs (or drops
//! packets) delays nobody else's refresh and shutdown waits for none of them:
//! - every `metrics_interval`: scrape `/metrics`, and feed the health state machine
//!   (`ServerState::scrape_succeeded` / `scrape_failed`);
//! - every `health_check_interval`: refresh `/v1/models` (and at every metrics tick while the
//!   server is not healthy, so one that comes back with another model is routed by its new
//!   list);
//! - every `dns_refresh_interval`: resolve its host name, so the request path never does a
//!   DNS lookup.
//!
//! A reload wakes every task, so new intervals apply at once; the poller starts tasks for
//! added servers and stops those of removed ones.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::join_all;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;

use crate::backend::{Backend, ServerState};
use crate::cluster::Cluster;
use crate::config::{Engine, Settings};
use crate::scrape::{timed, Flavor, LoadSample, ModelCard, ScrapeError, Scraper};
use crate::stats::Scrape;

pub struct Poller {
    cluster: Arc<Cluster>,
}

impl Poller {
    pub fn new(cluster: Arc<Cluster>) -> Poller {
        Poller { cluster }
    }

    /// Resolves, reads the model list of and scrapes every server once, concurrently, before
    /// the router takes traffic (also before an upgrading process takes over the listening
    /// socket), so the first requests are routed on real state. Each step of each server is
    /// bounded by `health_check_timeout`.
    pub async fn warm_up(&self) {
        let snapshot = self.cluster.snapshot();
        let settings = &snapshot.settings;
        join_all(snapshot.backends.iter().map(|b| async {
            let scraper = scraper_for(b, settings.health_check_timeout);
            resolve(b, settings).await;
            refresh_models(b, &scraper).await;
            scrape(b, &scraper, settings).await;
        }))
        .await;
    }
}

#[async_trait]
impl BackgroundService for Poller {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut reloads = self.cluster.reloads();
        let mut tasks = JoinSet::new();
        let mut running: HashMap<usize, AbortHandle> = HashMap::new();
        // The servers checked by warm_up() are not due until their intervals pass.
        let checked_at = Some(Instant::now());
        for backend in &self.cluster.snapshot().backends {
            let task = watch_server(
                Arc::clone(&self.cluster),
                Arc::clone(&backend.state),
                checked_at,
            );
            running.insert(key(&backend.state), tasks.spawn(task));
        }
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                changed = reloads.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    // Start tasks for added servers; a removed server's task ends by itself
                    // when it no longer finds the server in the snapshot.
                    running.retain(|_, handle| !handle.is_finished());
                    for backend in &self.cluster.snapshot().backends {
                        running.entry(key(&backend.state)).or_insert_with(|| {
                            tasks.spawn(watch_server(Arc::clone(&self.cluster), Arc::clone(&backend.state), None))
                        });
                    }
                }
                Some(_) = tasks.join_next() => {}
            }
        }
        // Dropping the set aborts every task, a hung scrape included.
        tasks.abort_all();
    }
}

/// A server's identity while its state lives (its state is keyed by URL across reloads).
fn key(state: &Arc<ServerState>) -> usize {
    Arc::as_ptr(state) as usize
}

/// Keeps one server current until it leaves the config. `checked_at` is when it was last
/// fully checked (`None`: never, so everything is due at once).
async fn watch_server(cluster: Arc<Cluster>, state: Arc<ServerState>, checked_at: Option<Instant>) {
    let mut reloads = cluster.reloads();
    let (mut last_metrics, mut last_models, mut last_dns) = (checked_at, checked_at, checked_at);
    // The scraper follows the server's settings: rebuilt when its timeout or TLS changes.
    let mut made_for = None;
    let mut scraper = Scraper::new(Duration::from_secs(5));
    loop {
        let snapshot = cluster.snapshot();
        let Some(backend) = snapshot.backend_of(&state) else {
            return; // removed from the config
        };
        let settings = &snapshot.settings;
        let wanted = (settings.health_check_timeout, backend.cfg.tls.clone());
        if made_for.as_ref() != Some(&wanted) {
            scraper = scraper_for(backend, wanted.0);
            made_for = Some(wanted);
        }
        let due = |last: Option<Instant>, every: Duration| {
            last.is_none_or(|t| t + every <= Instant::now())
        };

        if due(last_dns, settings.dns_refresh_interval) || state.addr.load().is_none() {
            last_dns = Some(Instant::now());
            resolve(backend, settings).await;
        }
        let metrics_due = due(last_metrics, settings.metrics_interval);
        if due(last_models, settings.health_check_interval) || (metrics_due && !state.is_healthy())
        {
            last_models = Some(Instant::now());
            refresh_models(backend, &scraper).await;
        }
        if metrics_due {
            last_metrics = Some(Instant::now());
            scrape(backend, &scraper, settings).await;
        }

        let next = [
            (last_metrics, settings.metrics_interval),
            (last_models, settings.health_check_interval),
            (last_dns, settings.dns_refresh_interval),
        ]
        .into_iter()
        .map(|(last, every)| last.map_or_else(Instant::now, |t| t + every))
        .min()
        .unwrap_or_else(Instant::now);
        drop(snapshot);
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            // A reload: look again with the new settings (or find the server gone).
            _ = reloads.changed() => {}
        }
    }
}

/// The scraper for one server. A server found by DNS discovery over `https://` is reached at
/// its address under its entry's host name (which its certificate names).
pub(crate) fn scraper_for(b: &Backend, timeout: Duration) -> Scraper {
    let pinned = match (&b.cfg.tls, &b.cfg.discovered_from) {
        (Some(_), Some(_)) => b
            .cfg
            .host
            .parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, b.cfg.port)),
        _ => None,
    };
    match Scraper::for_server(timeout, b.cfg.tls.as_ref(), pinned) {
        Ok(scraper) => scraper,
        Err(why) => {
            tracing::error!(server = %b.cfg.url, %why, "cannot set up the server's TLS for scraping");
            Scraper::new(timeout)
        }
    }
}

/// Where the server's own endpoints are read: its URL, or for a server found by DNS discovery
/// over `https://`, its entry's host name (pinned to its address by the scraper).
pub(crate) fn scrape_base(b: &Backend) -> std::borrow::Cow<'_, str> {
    match (&b.cfg.tls, &b.cfg.discovered_from) {
        (Some(tls), Some(_)) => format!("https://{}:{}", tls.server_name, b.cfg.port).into(),
        _ => b.cfg.url.as_str().into(),
    }
}

async fn scrape(b: &Backend, scraper: &Scraper, settings: &Settings) {
    let (read, took) = timed(read_load(b, scraper)).await;
    b.state.stats.scraped(Scrape::Metrics, took, read.is_ok());
    match read {
        Ok(load) => b.state.scrape_succeeded(load, settings),
        Err(why) => b.state.scrape_failed(why, settings),
    }
}

/// The server's load from its `/metrics`. A server declared `engine = "sglang"` that has no
/// `/metrics` (SGLang serves them only with `--enable-metrics`) is checked on its `/health`
/// instead, and its load is the router's own count of requests in flight to it.
async fn read_load(b: &Backend, scraper: &Scraper) -> Result<LoadSample, String> {
    let (url, key) = (&*scrape_base(b), b.cfg.api_key.as_deref());
    match scraper.load(url, key).await {
        Err(ScrapeError::Status(404)) if b.cfg.engine == Engine::Sglang => {
            match scraper.health(url, key).await {
                Ok(()) => Ok(LoadSample::counted_by_router(
                    Flavor::Sglang,
                    b.state.in_flight(),
                )),
                Err(e) => Err(format!(
                    "/health: {e} (no /metrics: SGLang serves them with --enable-metrics)"
                )),
            }
        }
        read => read.map_err(|e| format!("/metrics: {e}")),
    }
}

/// Whether the server is SGLang: declared so, or (`auto`) its last metrics were SGLang's.
fn is_sglang(b: &Backend) -> bool {
    match b.cfg.engine {
        Engine::Sglang => true,
        Engine::Vllm => false,
        Engine::Auto => b
            .state
            .load
            .load()
            .as_ref()
            .is_some_and(|l| l.flavor == Flavor::Sglang),
    }
}

async fn resolve(b: &Backend, settings: &Settings) {
    // The system resolver has no deadline of its own: a hung DNS server must not hold this
    // server's schedule.
    let looked_up = tokio::time::timeout(
        settings.health_check_timeout,
        lookup(&b.cfg.host, b.cfg.port),
    )
    .await
    .unwrap_or_else(|_| Err(format!("cannot resolve {}: timed out", b.cfg.host)));
    match looked_up {
        Ok(addr) => b.state.addr.store(Some(Arc::new(addr))),
        Err(why) => {
            // Keep the last good address, if any: a DNS hiccup must not take a working
            // server out.
            tracing::warn!(server = %b.cfg.url, %why, "cannot resolve");
            if b.state.addr.load().is_none() {
                b.state.record_failure(why, settings);
            }
        }
    }
}

async fn refresh_models(b: &Backend, scraper: &Scraper) {
    let (read, took) = timed(read_models(b, scraper)).await;
    b.state.stats.scraped(Scrape::Models, took, read.is_ok());
    match read {
        Ok(models) => b.state.set_models(models),
        Err(why) => {
            // The metrics scrape decides health; a model-list failure is only remembered.
            b.state.last_error.store(Some(Arc::new(why)));
        }
    }
}

/// The models from `/v1/models`; an SGLang server without it names its one model in
/// `/get_model_info`.
async fn read_models(b: &Backend, scraper: &Scraper) -> Result<Vec<ModelCard>, String> {
    let (url, key) = (&*scrape_base(b), b.cfg.api_key.as_deref());
    match scraper.models(url, key).await {
        Err(e) if is_sglang(b) => scraper
            .sglang_model_info(url, key)
            .await
            .map_err(|e2| format!("/v1/models: {e}; /get_model_info: {e2}")),
        read => read.map_err(|e| format!("/v1/models: {e}")),
    }
}

/// The first address of `host:port`; IP literals need no lookup.
async fn lookup(host: &str, port: u16) -> Result<SocketAddr, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let mut addrs = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?;
    addrs
        .next()
        .ok_or_else(|| format!("cannot resolve {host}: no addresses"))
}
