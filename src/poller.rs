//! The poller: a background service that keeps every backend's state current.
//!
//! - every `metrics_interval`: scrape each server's `/metrics`, concurrently, and feed the
//!   health state machine (`cluster::Backend::scrape_succeeded` / `scrape_failed`);
//! - every `health_check_interval`: refresh each server's `/v1/models` (and at every metrics
//!   tick for servers that are not healthy, so a server that comes back with another model is
//!   routed by its new list);
//! - every `dns_refresh_interval`: resolve the servers' host names, so the request path never
//!   does a DNS lookup.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use async_trait::async_trait;
use futures_util::future::join_all;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::time::{interval, MissedTickBehavior};

use crate::cluster::{Backend, Cluster};
use crate::scrape::Scraper;

pub struct Poller {
    cluster: Arc<Cluster>,
}

impl Poller {
    pub fn new(cluster: Arc<Cluster>) -> Poller {
        Poller { cluster }
    }

    /// Resolves, reads model lists and scrapes every server once, before the router takes
    /// traffic (also before an upgrading process takes over the listening socket), so the
    /// first requests are routed on real state. Bounded by `health_check_timeout`.
    pub async fn warm_up(&self) {
        let scraper = Scraper::new(self.cluster.settings().health_check_timeout);
        self.resolve_all().await;
        self.refresh_models_all(&scraper).await;
        self.scrape_all(&scraper).await;
    }

    /// One round of `/metrics` scrapes.
    pub async fn scrape_all(&self, scraper: &Scraper) {
        let settings = self.cluster.settings();
        let backends = self.cluster.backends();
        join_all(backends.iter().map(|b| async {
            if b.addr.load().is_none() {
                // Added by a config reload: resolve it before it can be picked.
                resolve_backend(b, &settings).await;
            }
            if !b.is_healthy() {
                refresh_models(b, scraper).await;
            }
            match scraper.load(&b.cfg.url, b.cfg.api_key.as_deref()).await {
                Ok(load) => b.scrape_succeeded(load, &settings),
                Err(e) => b.scrape_failed(format!("/metrics: {e}"), &settings),
            }
        }))
        .await;
    }

    /// One round of `/v1/models` refreshes.
    pub async fn refresh_models_all(&self, scraper: &Scraper) {
        let backends = self.cluster.backends();
        join_all(backends.iter().map(|b| refresh_models(b, scraper))).await;
    }

    /// Resolves every backend's host name.
    pub async fn resolve_all(&self) {
        let settings = self.cluster.settings();
        let backends = self.cluster.backends();
        join_all(backends.iter().map(|b| resolve_backend(b, &settings))).await;
    }
}

async fn resolve_backend(b: &Backend, settings: &crate::config::Settings) {
    match resolve(&b.cfg.host, b.cfg.port).await {
        Ok(addr) => b.addr.store(Some(Arc::new(addr))),
        Err(why) => {
            // Keep the last good address, if any: a DNS hiccup must not take a working
            // server out.
            tracing::warn!(server = %b.cfg.url, %why, "cannot resolve");
            if b.addr.load().is_none() {
                b.record_failure(why, settings);
            }
        }
    }
}

async fn refresh_models(backend: &Backend, scraper: &Scraper) {
    match scraper
        .models(&backend.cfg.url, backend.cfg.api_key.as_deref())
        .await
    {
        Ok(models) => backend.set_models(models),
        Err(e) => {
            // The metrics scrape decides health; a model-list failure is only remembered.
            backend
                .last_error
                .store(Some(Arc::new(format!("/v1/models: {e}"))));
        }
    }
}

/// The first address of `host:port`; IP literals need no lookup.
async fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
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

/// The poller's timers, rebuilt when a config reload changes their periods.
struct Timers {
    metrics: tokio::time::Interval,
    models: tokio::time::Interval,
    dns: tokio::time::Interval,
    periods: [std::time::Duration; 3],
}

impl Timers {
    fn periods(settings: &crate::config::Settings) -> [std::time::Duration; 3] {
        [
            settings.metrics_interval,
            settings.health_check_interval,
            settings.dns_refresh_interval,
        ]
    }

    fn new(settings: &crate::config::Settings) -> Timers {
        let periods = Timers::periods(settings);
        let timer = |period| {
            let mut timer = interval(period);
            timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
            timer
        };
        Timers {
            metrics: timer(periods[0]),
            models: timer(periods[1]),
            dns: timer(periods[2]),
            periods,
        }
    }
}

#[async_trait]
impl BackgroundService for Poller {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut settings = self.cluster.settings();
        let mut scraper = Scraper::new(settings.health_check_timeout);
        let mut timers = Timers::new(&settings);
        // The first tick of an interval is immediate; warm_up() has just done all three.
        timers.metrics.tick().await;
        timers.models.tick().await;
        timers.dns.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = timers.metrics.tick() => self.scrape_all(&scraper).await,
                _ = timers.models.tick() => self.refresh_models_all(&scraper).await,
                _ = timers.dns.tick() => self.resolve_all().await,
            }
            let current = self.cluster.settings();
            if !Arc::ptr_eq(&current, &settings) {
                if current.health_check_timeout != settings.health_check_timeout {
                    scraper = Scraper::new(current.health_check_timeout);
                }
                if Timers::periods(&current) != timers.periods {
                    timers = Timers::new(&current);
                }
                settings = current;
            }
        }
    }
}
