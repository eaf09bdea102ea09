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
//!
//! DNS discovery (discovery.rs) changes the servers the same way: the addresses it found for
//! an entry are kept beside the config as written, and a snapshot is built from both.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::watch;

use crate::access::Access;
use crate::backend::{Backend, ServerState};
use crate::config::{Config, Limits, Routing, ServerConfig, Settings};
use crate::policy::{self, Policies};
use crate::retry::RetryBudget;
use crate::stats::Stats;

/// The token cache's budget until the first request reads `[routing] tokenize_cache_mib`.
const TOKEN_CACHE_BYTES: usize = 16 << 20;

/// The config in force.
pub struct Snapshot {
    pub backends: Vec<Backend>,
    pub settings: Settings,
    pub routing: Routing,
    pub policy: Policies,
    /// What client connections may take (`[limits]`).
    pub limits: Limits,
    /// Client keys and the admin key (`[auth]`).
    pub access: Arc<Access>,
    /// Local tokenizers by model (`[routing] tokenizers`).
    pub tokenizers: HashMap<String, Arc<crate::prompt_tokens::local::LocalTokenizer>>,
}

impl Snapshot {
    /// The server whose state is `state`, if it is still in this config.
    pub fn backend_of(&self, state: &Arc<ServerState>) -> Option<&Backend> {
        self.backends.iter().find(|b| Arc::ptr_eq(&b.state, state))
    }
}

/// The config as written, and the addresses DNS discovery found for its `dns_discovery`
/// entries (by entry URL, sorted).
struct Written {
    config: Config,
    discovered: HashMap<String, Vec<IpAddr>>,
}

/// The snapshot in force, and what makes the next one.
pub struct Cluster {
    current: ArcSwap<Snapshot>,
    /// What the snapshot was built from. Locked for a whole rebuild, so a reload and a
    /// discovery never interleave.
    written: Mutex<Written>,
    stats: Arc<Stats>,
    /// Counts reloads; background services wait on it to follow a new config.
    reloads: watch::Sender<u64>,
    /// Why the last edit of the config file was refused, until a valid one arrives.
    config_error: ArcSwapOption<String>,
    /// Retries of the last seconds, router-wide (it outlives reloads).
    retry_budget: RetryBudget,
    /// Prompts' token ids for precise prefix routing, and their cache (outlives reloads).
    tokenization: Arc<crate::prompt_tokens::Tokenization>,
}

impl Cluster {
    pub fn new(config: Config, stats: Arc<Stats>) -> Result<Cluster, String> {
        let written = Written {
            config,
            discovered: HashMap::new(),
        };
        let snapshot = build(&written, None, &stats)?;
        Ok(Cluster {
            current: ArcSwap::from_pointee(snapshot),
            written: Mutex::new(written),
            stats,
            reloads: watch::Sender::new(0),
            config_error: ArcSwapOption::empty(),
            retry_budget: RetryBudget::default(),
            tokenization: crate::prompt_tokens::Tokenization::new(TOKEN_CACHE_BYTES),
        })
    }

    pub fn retry_budget(&self) -> &RetryBudget {
        &self.retry_budget
    }

    pub fn tokenization(&self) -> &Arc<crate::prompt_tokens::Tokenization> {
        &self.tokenization
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

    /// The files the running config names (keys, certificates), for the watcher.
    pub fn config_files(&self) -> Vec<std::path::PathBuf> {
        self.lock_written().config.files.clone()
    }

    /// Completes its `changed()` at every reload.
    pub fn reloads(&self) -> watch::Receiver<u64> {
        self.reloads.subscribe()
    }

    /// Applies a reloaded config (see the module doc). Returns a one-line summary, or why it
    /// was refused (the running config then stays).
    pub fn apply(&self, config: Config) -> Result<String, String> {
        let mut written = self.lock_written();
        let mut discovered = written.discovered.clone();
        discovered.retain(|url, _| {
            config
                .servers
                .iter()
                .any(|s| s.dns_discovery && &s.url == url)
        });
        let next_written = Written { config, discovered };
        let old = self.current.load_full();
        let next = build(&next_written, Some(&old), &self.stats)?;
        let policy = next.policy.describe();
        let restart = if next.settings.admin_address != old.settings.admin_address {
            "; admin_address changes at the next start"
        } else if next_written.config.tls != written.config.tls {
            "; [tls] changes at the next start (a certificate renewed in its files is taken at once)"
        } else if next.settings.otlp_endpoint != old.settings.otlp_endpoint {
            "; otlp_endpoint changes at the next start"
        } else {
            ""
        };
        let summary = format!("{}; policy {policy}{restart}", differences(&old, &next));
        *written = next_written;
        self.swap(next);
        Ok(summary)
    }

    /// The `dns_discovery` entries of the config in force: (entry URL, host name).
    pub fn discovery_entries(&self) -> Vec<(String, String)> {
        self.lock_written()
            .config
            .servers
            .iter()
            .filter(|s| s.dns_discovery)
            .map(|s| (s.url.clone(), s.host.clone()))
            .collect()
    }

    /// Records the addresses DNS discovery found for the entry `entry_url`, and rebuilds the
    /// servers if they changed. Returns a summary of the change, or `None` if nothing changed
    /// (or the entry is no longer in the config).
    pub fn discovered(&self, entry_url: &str, mut addresses: Vec<IpAddr>) -> Option<String> {
        addresses.sort_unstable();
        addresses.dedup();
        let mut written = self.lock_written();
        let listed = written
            .config
            .servers
            .iter()
            .any(|s| s.dns_discovery && s.url == entry_url);
        if !listed || written.discovered.get(entry_url) == Some(&addresses) {
            return None;
        }
        written.discovered.insert(entry_url.to_string(), addresses);
        let old = self.current.load_full();
        // The config was valid when applied, and discovery adds only IP-literal servers.
        let next = build(&written, Some(&old), &self.stats).ok()?;
        let summary = differences(&old, &next);
        self.swap(next);
        Some(summary)
    }

    fn swap(&self, next: Snapshot) {
        self.current.store(Arc::new(next));
        self.reloads.send_modify(|n| *n += 1);
    }

    fn lock_written(&self) -> std::sync::MutexGuard<'_, Written> {
        // A panic while holding it cannot leave `Written` half-changed (it is replaced whole).
        self.written
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A cluster of ready-made backends (tests).
    #[cfg(test)]
    pub fn of(backends: Vec<Backend>) -> Cluster {
        let routing = Routing::default();
        Cluster {
            written: Mutex::new(Written {
                config: Config::empty("servers.toml".as_ref()),
                discovered: HashMap::new(),
            }),
            current: ArcSwap::from_pointee(Snapshot {
                backends,
                settings: Settings::default(),
                policy: policy::build(&routing, None).expect("the default policy builds"),
                routing,
                limits: Limits::default(),
                access: Arc::default(),
                tokenizers: HashMap::new(),
            }),
            stats: Arc::new(Stats::new()),
            reloads: watch::Sender::new(0),
            config_error: ArcSwapOption::empty(),
            retry_budget: RetryBudget::default(),
            tokenization: crate::prompt_tokens::Tokenization::new(TOKEN_CACHE_BYTES),
        }
    }
}

/// "N added, N removed, N changed, N unchanged" from `old` to `next`.
fn differences(old: &Snapshot, next: &Snapshot) -> String {
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
    format!("{added} added, {removed} removed, {changed} changed, {kept} unchanged")
}

/// The servers of `written`: each entry as written, except that a `dns_discovery` entry
/// stands for one server per address found for it. A URL is listed once: as written if it is,
/// else as the first entry that found it.
fn servers(written: &Written) -> Vec<ServerConfig> {
    let mut servers: Vec<ServerConfig> = Vec::with_capacity(written.config.servers.len());
    let written_out = |url: &str| {
        written
            .config
            .servers
            .iter()
            .any(|s| !s.dns_discovery && s.url == url)
    };
    for entry in &written.config.servers {
        let found = match entry.dns_discovery {
            false => vec![entry.clone()],
            true => written
                .discovered
                .get(&entry.url)
                .into_iter()
                .flatten()
                .map(|ip| ServerConfig {
                    url: format!(
                        "{}://{}",
                        if entry.tls.is_some() { "https" } else { "http" },
                        SocketAddr::new(*ip, entry.port)
                    ),
                    host: ip.to_string(),
                    dns_discovery: false,
                    discovered_from: Some(entry.url.clone()),
                    ..entry.clone()
                })
                .collect(),
        };
        for server in found {
            let listed = match server.discovered_from {
                Some(_) => written_out(&server.url),
                None => false,
            };
            if !listed && !servers.iter().any(|s| s.url == server.url) {
                servers.push(server);
            }
        }
    }
    servers
}

/// The snapshot for `written`, reusing the state of servers that were in `previous` and what
/// its policies learned.
fn build(
    written: &Written,
    previous: Option<&Snapshot>,
    stats: &Stats,
) -> Result<Snapshot, String> {
    let config = &written.config;
    let policy = policy::build(&config.routing, previous.map(|p| &p.policy))?;
    let previous_access = previous.map(|p| &*p.access);
    let previous = previous.map_or(&[][..], |p| &p.backends[..]);
    let backends = servers(written)
        .into_iter()
        .map(|cfg| {
            let state = match previous.iter().find(|b| b.cfg.url == cfg.url) {
                Some(b) => Arc::clone(&b.state),
                None => Arc::new(ServerState::new(&cfg.url, stats.server(&cfg.url))),
            };
            let mut backend = Backend::new(cfg, state);
            if config.auth.forward_client_authorization {
                backend.headers.forward_client_authorization();
            }
            backend
        })
        .collect();
    let access = Access::build(config, previous_access, stats);
    Ok(Snapshot {
        backends,
        settings: config.settings.clone(),
        routing: config.routing.clone(),
        policy,
        limits: config.limits.clone(),
        access: Arc::new(access),
        tokenizers: config.tokenizers.iter().cloned().collect(),
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
    fn discovered_addresses_are_servers_of_their_entry() {
        let mut entry = server("http://pods:8000", 4);
        entry.host = "pods".into();
        entry.port = 8000;
        entry.dns_discovery = true;
        let cluster = Cluster::new(
            config(vec![entry.clone(), server("http://10.0.0.2:8000", 2)]),
            Arc::new(Stats::new()),
        )
        .unwrap();
        assert_eq!(cluster.snapshot().backends.len(), 1, "nothing found yet");
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let summary = cluster.discovered(
            "http://pods:8000",
            vec![ip("10.0.0.3"), ip("10.0.0.2"), ip("10.0.0.3")],
        );
        assert_eq!(
            summary.as_deref(),
            Some("1 added, 0 removed, 0 changed, 1 unchanged"),
            "10.0.0.2 is listed already"
        );
        let now = cluster.snapshot();
        let found = &now.backends[0];
        assert_eq!(found.cfg.url, "http://10.0.0.3:8000");
        assert_eq!(found.cfg.max_concurrent_requests, 4);
        assert_eq!(
            found.cfg.discovered_from.as_deref(),
            Some("http://pods:8000")
        );
        assert_eq!(
            cluster.discovered("http://pods:8000", vec![ip("10.0.0.2"), ip("10.0.0.3")]),
            None,
            "same set"
        );
        assert_eq!(
            cluster.discovered("http://other:8000", vec![ip("10.0.0.9")]),
            None,
            "not an entry"
        );

        // A reload keeps what was found (and the found server's state); one that drops the
        // entry drops its servers.
        let kept = Arc::clone(&found.state);
        cluster
            .apply(config(vec![entry, server("http://10.0.0.2:8000", 2)]))
            .unwrap();
        assert!(Arc::ptr_eq(&cluster.snapshot().backends[0].state, &kept));
        cluster
            .apply(config(vec![server("http://10.0.0.2:8000", 2)]))
            .unwrap();
        assert_eq!(cluster.snapshot().backends.len(), 1);
        assert!(cluster.discovery_entries().is_empty());
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
