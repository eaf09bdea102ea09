//! DNS discovery: a server entry with `dns_discovery = true` names a DNS name (a headless
//! Kubernetes Service of vLLM pods, say) whose every address is a server of its own.
//!
//! A background service looks every such name up at start (before traffic), every
//! `dns_refresh_interval`, and at every reload, and hands the addresses to
//! [`Cluster::discovered`], which adds and removes servers as a reload does: a new address
//! waits for its first scrape, a vanished one finishes the requests it has in flight.
//!
//! What a lookup's failure means:
//! - the name has no addresses (NXDOMAIN, or no A/AAAA records: a headless Service with no
//!   ready pods): the entry has no servers until it has addresses again;
//! - anything else (timeout, a DNS server failing): the last addresses stay, so a DNS hiccup
//!   never takes working servers out.
//!
//! The lookups use hickory's resolver rather than the system's `getaddrinfo`, which returns
//! addresses but cannot tell "no such name" from "the DNS server failed", and which cannot be
//! pointed at another DNS server (`dns_server`; the tests run their own on loopback). Its cache
//! is off: the refresh interval is the schedule.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::join_all;
use hickory_resolver::config::{NameServerConfigGroup, ResolveHosts, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::TokioResolver;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::cluster::Cluster;

pub struct Discovery {
    cluster: Arc<Cluster>,
}

/// What one lookup found.
#[derive(Debug, PartialEq)]
enum Found {
    Addresses(Vec<IpAddr>),
    /// Neither the name nor any address of it exists.
    Nothing,
    /// The lookup failed; nothing is known.
    Failed(String),
}

impl Discovery {
    pub fn new(cluster: Arc<Cluster>) -> Discovery {
        Discovery { cluster }
    }

    /// Looks up every `dns_discovery` entry once, concurrently, and applies what changed.
    /// Returns the entries it looked up.
    pub async fn refresh(&self) -> Vec<(String, String)> {
        let entries = self.cluster.discovery_entries();
        if entries.is_empty() {
            return entries;
        }
        let settings = self.cluster.snapshot().settings.clone();
        let resolver = match resolver(settings.dns_server, settings.health_check_timeout) {
            Ok(resolver) => resolver,
            Err(why) => {
                tracing::warn!(%why, "dns discovery: no resolver");
                return entries;
            }
        };
        let timeout = settings.health_check_timeout;
        let found = join_all(
            entries
                .iter()
                .map(|(_, host)| lookup(&resolver, host, timeout)),
        )
        .await;
        for ((url, host), found) in entries.iter().zip(found) {
            let addresses = match found {
                Found::Addresses(addresses) => addresses,
                Found::Nothing => Vec::new(),
                Found::Failed(why) => {
                    tracing::warn!(server = %url, %why, "dns discovery: lookup failed; keeping the last addresses");
                    continue;
                }
            };
            let count = addresses.len();
            if let Some(summary) = self.cluster.discovered(url, addresses) {
                tracing::info!(server = %url, %host, addresses = count, "dns discovery: {summary}");
            }
        }
        entries
    }
}

#[async_trait]
impl BackgroundService for Discovery {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut reloads = self.cluster.reloads();
        loop {
            let looked_up = self.refresh().await;
            // What refresh() itself changed is no reason to look again; a reload during it
            // that changed the entries is.
            reloads.borrow_and_update();
            if self.cluster.discovery_entries() != looked_up {
                continue;
            }
            let every = self.cluster.snapshot().settings.dns_refresh_interval;
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(every) => {}
                changed = reloads.changed() => if changed.is_err() { return },
            }
        }
    }
}

/// A resolver asking `server`, or the system's DNS servers (with its search domains and
/// hosts file) if none.
fn resolver(server: Option<SocketAddr>, timeout: Duration) -> Result<TokioResolver, String> {
    let provider = TokioConnectionProvider::default();
    let mut builder = match server {
        Some(addr) => {
            let servers = NameServerConfigGroup::from_ips_clear(&[addr.ip()], addr.port(), true);
            let mut b = TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, Vec::new(), servers),
                provider,
            );
            b.options_mut().use_hosts_file = ResolveHosts::Never;
            b
        }
        None => TokioResolver::builder(provider)
            .map_err(|e| format!("cannot read the system's DNS config: {e}"))?,
    };
    let options = builder.options_mut();
    options.cache_size = 0;
    options.timeout = timeout;
    options.attempts = 2;
    Ok(builder.build())
}

async fn lookup(resolver: &TokioResolver, host: &str, timeout: Duration) -> Found {
    // Bounded as a whole: retries across several DNS servers must not hold the refresh.
    let answer = tokio::time::timeout(timeout * 2, resolver.lookup_ip(host)).await;
    match answer {
        Err(_) => Found::Failed(format!("looking up {host} timed out")),
        Ok(Ok(ips)) => Found::Addresses(ips.iter().collect()),
        Ok(Err(e)) if e.is_nx_domain() || e.is_no_records_found() => Found::Nothing,
        Ok(Err(e)) => Found::Failed(format!("looking up {host}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ip_literals_and_the_hosts_file_need_no_dns_server() {
        let resolver = resolver(None, Duration::from_secs(2)).unwrap();
        assert_eq!(
            lookup(&resolver, "127.0.0.7", Duration::from_secs(2)).await,
            Found::Addresses(vec!["127.0.0.7".parse().unwrap()])
        );
    }

    #[tokio::test]
    async fn a_dns_server_that_does_not_answer_is_a_failure_not_an_empty_list() {
        // A bound UDP socket that never answers.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let timeout = Duration::from_millis(100);
        let resolver = resolver(Some(silent.local_addr().unwrap()), timeout).unwrap();
        let found = lookup(&resolver, "vllm.example.", timeout).await;
        assert!(matches!(found, Found::Failed(_)), "{found:?}");
    }
}
