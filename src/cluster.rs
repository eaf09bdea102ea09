//! The running configuration: the servers, the settings and the policy in force, as one
//! immutable [`Snapshot`] swapped atomically on reload. A request loads the snapshot once and
//! uses it throughout, so it sees one consistent config; the servers' changing state (health,
//! load, in-flight) is in their [`ServerState`]s, which the snapshot shares.
//!
//! How a reload works: [`Cluster::apply`] builds the next snapshot from the new config. A
//! server whose URL was there before keeps its `ServerState` — its health, load, models,
//! in-flight requests and stats — even if its entry changed; a new URL gets a new state that
//! waits for its first scrape; a removed server's state lives on only as long as requests in
//! flight to it. Then the snapshot is swapped in one store, and the poller and watcher are told.

use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::watch;

use crate::backend::{Backend, ServerState};
use crate::config::{Config, Routing, Settings};
use crate::policy::{self, Policies};
use crate::retry::RetryBudget;
use crate::stats::Stats;

/// The config in force.
pub struct Snapshot {
    pub backends: Vec<Backend>,
    pub settings: Settings,
    pub routing: Routing,
    pub policy: Policies,
}

/// The snapshot in force, and what makes the next one.
pub struct Cluster {
    current: ArcSwap<Snapshot>,
    stats: Arc<Stats>,
    /// Counts reloads; background services wait on it to follow a new config.
    reloads: watch::Sender<u64>,
    /// Why the last edit of the config file was refused, until a valid one arrives.
    config_error: ArcSwapOption<String>,
    /// Retries of the last seconds, router-wide (it outlives reloads).
    retry_budget: RetryBudget,
}

impl Cluster {
    pub fn new(config: Config, stats: Arc<Stats>) -> Result<Cluster, String> {
        let snapshot = build(config, None, &stats)?;
        Ok(Cluster {
            current: ArcSwap::from_pointee(snapshot),
            stats,
            reloads: watch::Sender::new(0),
            config_error: ArcSwapOption::empty(),
            retry_budget: RetryBudget::default(),
        })
    }

    pub fn retry_budget(&self) -> &RetryBudget {
        &self.retry_budget
    }

    /// Why the last edit of the config file was refused, if the running config is older than
    /// the file.
    pub fn config_error(&self) -> Option<Arc<String>> {
        self.config_error.load_full()
    }

    pub fn set_config_error(&self, error: Option<String>) {
        self.config_error.store(error.map(Arc::new));
    }

    /// The config in force now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Completes its `changed()` at every reload.
    pub fn reloads(&self) -> watch::Receiver<u64> {
        self.reloads.subscribe()
    }

    /// Applies a reloaded config (see the module doc). Returns a one-line summary, or why it
    /// was refused (the running config then stays).
    pub fn apply(&self, config: Config) -> Result<String, String> {
        let old = self.current.load_full();
        let next = build(config, Some(&old), &self.stats)?;
        let (mut added, mut changed, mut kept) = (0, 0, 0);
        for backend in &next.backends {
            match old.backends.iter().find(|b| b.cfg.url == backend.cfg.url) {
                Some(b) if b.cfg == backend.cfg => kept += 1,
                Some(_) => changed += 1,
                None => added += 1,
            }
        }
        let removed = old
            .backends
            .iter()
            .filter(|b| !next.backends.iter().any(|n| n.cfg.url == b.cfg.url))
            .count();
        let policy = next.policy.describe();
        let restart = if next.settings.admin_address != old.settings.admin_address {
            "; admin_address changes at the next start"
        } else if next.settings.otlp_endpoint != old.settings.otlp_endpoint {
            "; otlp_endpoint changes at the next start"
        } else {
            ""
        };
        self.current.store(Arc::new(next));
        self.reloads.send_modify(|n| *n += 1);
        Ok(format!(
            "{added} added, {removed} removed, {changed} changed, {kept} unchanged; policy {policy}{restart}"
        ))
    }

    /// A cluster of ready-made backends (tests).
    #[cfg(test)]
    pub fn of(backends: Vec<Backend>) -> Cluster {
        let routing = Routing::default();
        Cluster {
            current: ArcSwap::from_pointee(Snapshot {
                backends,
                settings: Settings::default(),
                policy: policy::build(&routing, None).expect("the default policy builds"),
                routing,
            }),
            stats: Arc::new(Stats::new()),
            reloads: watch::Sender::new(0),
            config_error: ArcSwapOption::empty(),
            retry_budget: RetryBudget::default(),
        }
    }
}

/// The snapshot for `config`, reusing the state of servers that were in `previous` and what
/// its policies learned.
fn build(config: Config, previous: Option<&Snapshot>, stats: &Stats) -> Result<Snapshot, String> {
    let policy = policy::build(&config.routing, previous.map(|p| &p.policy))?;
    let previous = previous.map_or(&[][..], |p| &p.backends[..]);
    let backends = config
        .servers
        .into_iter()
        .map(|cfg| {
            let state = match previous.iter().find(|b| b.cfg.url == cfg.url) {
                Some(b) => Arc::clone(&b.state),
                None => Arc::new(ServerState::new(&cfg.url, stats.server(&cfg.url))),
            };
            Backend::new(cfg, state)
        })
        .collect();
    Ok(Snapshot {
        backends,
        settings: config.settings,
        routing: config.routing,
        policy,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::tests::{server, unchecked};

    fn config(servers: Vec<crate::config::ServerConfig>) -> Config {
        Config {
            servers,
            ..Config::empty("servers.toml".as_ref())
        }
    }

    #[test]
    fn a_reload_keeps_each_servers_state_by_url() {
        let cluster = Cluster::new(
            config(vec![server("http://a", 4), server("http://b", 4)]),
            Arc::new(Stats::new()),
        )
        .unwrap();
        let before = cluster.snapshot();
        let (a, b) = (&before.backends[0], &before.backends[1]);
        let settings = Settings::default();
        a.state.set_models(vec![crate::backend::tests::model("m")]);
        a.state
            .scrape_succeeded(crate::backend::tests::sample(1.0, 0.0), &settings);
        let in_flight = a.state.start_request();
        let _ = b;

        let mut a_bigger = server("http://a", 8);
        a_bigger.api_key = Some("k".into());
        let reloads = cluster.reloads();
        let summary = cluster
            .apply(config(vec![a_bigger, server("http://c", 2)]))
            .unwrap();
        assert_eq!(
            summary,
            "1 added, 1 removed, 1 changed, 0 unchanged; policy least-load"
        );
        assert!(reloads.has_changed().unwrap());
        let now = cluster.snapshot();
        assert_eq!(now.backends.len(), 2);
        let a_now = &now.backends[0];
        assert!(Arc::ptr_eq(&a_now.state, &a.state), "same state, new entry");
        assert!(
            a_now.state.is_healthy(),
            "the capacity edit kept a's health"
        );
        assert_eq!(a_now.state.in_flight(), 1, "and its request in flight");
        assert_eq!(a_now.score(), 2.0 / 8.0, "1 running + 1 sent since, over 8");
        drop(in_flight);
        assert_eq!(
            a_now.state.in_flight(),
            0,
            "the guard ends on the live state"
        );
        assert_eq!(a_now.score(), 1.0 / 8.0, "1 running, over the new capacity");
        assert!(
            !now.backends[1].state.is_healthy(),
            "c waits for its first scrape"
        );
    }

    #[test]
    fn test_clusters_hold_what_they_are_given() {
        let cluster = Cluster::of(vec![unchecked("http://x", 1)]);
        assert_eq!(cluster.snapshot().backends.len(), 1);
        assert_eq!(cluster.snapshot().policy.describe(), "least-load");
    }
}
