//! `session`: the requests of one session go to the same server, so its KV cache (the
//! conversation so far) is reused; consistent hashing with bounded load.
//!
//! The session key is the request's `session_header` (default `X-Session-Id`), else the OpenAI
//! `user` field (features.rs); a request without one is routed by least load. Keys are placed
//! on a ketama ring (Pingora's `pingora-ketama`, as nginx's `hash … consistent`) of the
//! candidates; the first server on the ring from the key's point that is within the load bound
//! takes it. The bound is `session_load_bound` × its fair share of the candidates' load
//! (by capacity), counting this request: a session moves only when its server is down or over
//! that bound, and a hot session cannot pile load on one server. Adding or removing a server
//! moves only the sessions whose point it owned, about 1/N of them.
//!
//! Rings are built per candidate set (ketama points depend only on each server's identity, so
//! a ring of the candidates maps keys exactly as a ring of all servers with the others skipped)
//! and the last few are kept, so a request does not rebuild one.

use std::collections::HashMap;
use std::hash::{BuildHasher, DefaultHasher, Hash, Hasher};
use std::net::{Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use pingora_ketama::{Bucket, Continuum};

use super::least_load::cheapest;
use super::Policy;
use crate::backend::Backend;
use crate::features::RequestFeatures;

/// Rings kept (one per distinct candidate set: per model, and while servers are down).
const RINGS_KEPT: usize = 8;

/// Ring points looked at before giving up on the ring for least load (ketama places 160 per
/// server, so this passes many servers).
const MAX_STEPS: usize = 4096;

/// One candidate set's ring.
struct Ring {
    /// Which candidate set: the candidates' server ids, hashed in order.
    fingerprint: u64,
    continuum: Continuum,
    /// A server's ring identity → its index among the candidates.
    index: HashMap<SocketAddr, usize>,
}

pub struct SessionAffinity {
    load_bound: f64,
    rings: ArcSwap<Vec<Arc<Ring>>>,
    /// Serialises building a ring (rare: only a new candidate set builds one).
    building: Mutex<()>,
}

impl SessionAffinity {
    pub fn new(load_bound: f64) -> SessionAffinity {
        SessionAffinity {
            load_bound,
            rings: ArcSwap::from_pointee(Vec::new()),
            building: Mutex::new(()),
        }
    }

    /// The ring of these candidates, made if not kept.
    fn ring(&self, candidates: &[&Backend]) -> Arc<Ring> {
        // A fast hash (foldhash: one multiply per server) over the servers' ids: this runs
        // for every request, over every candidate; SipHash here cost more than the lookup.
        let mut hasher = foldhash::fast::FixedState::with_seed(0).build_hasher();
        for b in candidates {
            hasher.write_u32(b.state.id);
        }
        let fingerprint = hasher.finish();
        let find =
            |rings: &[Arc<Ring>]| rings.iter().find(|r| r.fingerprint == fingerprint).cloned();
        if let Some(ring) = find(&self.rings.load()) {
            return ring;
        }
        let _building = self.building.lock().unwrap_or_else(|e| e.into_inner());
        let kept = self.rings.load_full();
        if let Some(ring) = find(&kept) {
            return ring;
        }
        let ids: Vec<SocketAddr> = candidates.iter().map(|b| identity(&b.cfg.url)).collect();
        let buckets: Vec<Bucket> = ids.iter().map(|&id| Bucket::new(id, 1)).collect();
        let ring = Arc::new(Ring {
            fingerprint,
            continuum: Continuum::new(&buckets),
            index: ids.into_iter().enumerate().map(|(i, id)| (id, i)).collect(),
        });
        let mut next: Vec<Arc<Ring>> = Vec::with_capacity(RINGS_KEPT);
        next.push(Arc::clone(&ring));
        next.extend(kept.iter().take(RINGS_KEPT - 1).cloned());
        self.rings.store(Arc::new(next));
        ring
    }
}

/// A server's identity on the ring: an address made from its URL (ketama hashes addresses;
/// the URL, not the resolved address, is what stays when DNS changes).
fn identity(url: &str) -> SocketAddr {
    let mut high = DefaultHasher::new();
    (0u8, url).hash(&mut high);
    let mut low = DefaultHasher::new();
    (1u8, url).hash(&mut low);
    let bits = (u128::from(high.finish()) << 64) | u128::from(low.finish());
    SocketAddr::new(Ipv6Addr::from(bits).into(), 0)
}

impl Policy for SessionAffinity {
    fn name(&self) -> &'static str {
        "session"
    }

    fn describe(&self) -> String {
        format!("session (load bound {})", self.load_bound)
    }

    fn pick<'a>(&self, candidates: &[&'a Backend], request: &RequestFeatures) -> &'a Backend {
        let Some(key) = request.session.as_deref() else {
            return cheapest(candidates);
        };
        if candidates.len() == 1 {
            return candidates[0];
        }
        let (total_load, total_capacity) = candidates.iter().fold((0.0, 0.0), |(l, c), b| {
            (
                l + b.load_units(),
                c + f64::from(b.cfg.max_concurrent_requests.max(1)),
            )
        });
        let within_bound = |b: &Backend| {
            let share = f64::from(b.cfg.max_concurrent_requests.max(1)) / total_capacity;
            // Counting this request; rounded up, so that an idle cluster takes it anywhere.
            b.load_units() + 1.0 <= (self.load_bound * (total_load + 1.0) * share).ceil()
        };
        let ring = self.ring(candidates);
        let mut last = None;
        for id in ring.continuum.node_iter(key.as_bytes()).take(MAX_STEPS) {
            if last == Some(id) {
                continue;
            }
            last = Some(id);
            if let Some(&i) = ring.index.get(id) {
                if within_bound(candidates[i]) {
                    return candidates[i];
                }
            }
        }
        cheapest(candidates)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::tests::healthy;

    fn session(key: &str) -> RequestFeatures {
        let mut features = RequestFeatures::default();
        features.session = Some(key.into());
        features
    }

    fn servers(n: usize) -> Vec<Backend> {
        (0..n)
            .map(|i| healthy(&format!("http://10.0.0.{i}:8000"), 1000, &["m"], 0.0))
            .collect()
    }

    fn owners(policy: &SessionAffinity, all: &[&Backend], keys: usize) -> Vec<String> {
        (0..keys)
            .map(|k| {
                policy
                    .pick(all, &session(&format!("user-{k}")))
                    .cfg
                    .url
                    .clone()
            })
            .collect()
    }

    #[test]
    fn a_session_stays_and_sessions_spread() {
        let servers = servers(4);
        let all: Vec<&Backend> = servers.iter().collect();
        let policy = SessionAffinity::new(1.25);
        let first = owners(&policy, &all, 2000);
        assert_eq!(
            first,
            owners(&policy, &all, 2000),
            "the same key, the same server"
        );
        for s in &servers {
            let n = first.iter().filter(|u| **u == s.cfg.url).count();
            assert!(
                (300..700).contains(&n),
                "{n} of 2000 sessions on one of 4 servers"
            );
        }
    }

    #[test]
    fn adding_or_removing_a_server_moves_about_one_in_n() {
        let servers = servers(5);
        let policy = SessionAffinity::new(1.25);
        let four: Vec<&Backend> = servers[..4].iter().collect();
        let five: Vec<&Backend> = servers.iter().collect();
        let before = owners(&policy, &four, 2000);
        let after = owners(&policy, &five, 2000);
        let moved: Vec<usize> = (0..2000).filter(|&k| before[k] != after[k]).collect();
        // About 1/5 move, and every one of them to the new server.
        assert!(
            (250..550).contains(&moved.len()),
            "{} of 2000 moved",
            moved.len()
        );
        assert!(moved.iter().all(|&k| after[k] == servers[4].cfg.url));
        // A server leaving (down): only its sessions move.
        let without: Vec<&Backend> = servers[1..].iter().collect();
        let later = owners(&policy, &without, 2000);
        for k in 0..2000 {
            if after[k] != servers[0].cfg.url {
                assert_eq!(
                    later[k], after[k],
                    "session {k} moved though its server stayed"
                );
            }
        }
    }

    #[test]
    fn a_loaded_server_gives_its_new_sessions_away_within_the_bound() {
        let servers = servers(2);
        let all: Vec<&Backend> = servers.iter().collect();
        let policy = SessionAffinity::new(1.25);
        let key = session("hot");
        let home = policy.pick(&all, &key).cfg.url.clone();
        let other = all.iter().find(|b| b.cfg.url != home).unwrap();
        // Every request of one hot session: it stays home only while home is within 1.25 × its
        // fair half of the load.
        let mut guards = Vec::new();
        for _ in 0..100 {
            let chosen = policy.pick(&all, &key);
            guards.push(chosen.state.start_request());
        }
        let at_home = guards
            .iter()
            .filter(|g| &*g.server().url == home.as_str())
            .count();
        assert!((55..=65).contains(&at_home), "{at_home} of 100 at home");
        assert_eq!(other.state.in_flight() as usize, 100 - at_home);
    }

    #[test]
    fn without_a_key_it_is_least_load() {
        let busy = healthy("http://busy", 4, &["m"], 3.0);
        let idle = healthy("http://idle", 4, &["m"], 0.0);
        let policy = SessionAffinity::new(1.25);
        for _ in 0..20 {
            let chosen = policy.pick(&[&busy, &idle], &RequestFeatures::default());
            assert_eq!(chosen.cfg.url, "http://idle");
        }
    }

    #[test]
    fn rings_are_kept_per_candidate_set_and_bounded() {
        let servers = servers(12);
        let policy = SessionAffinity::new(1.25);
        for n in 2..12 {
            let some: Vec<&Backend> = servers[..n].iter().collect();
            policy.pick(&some, &session("k"));
        }
        assert_eq!(policy.rings.load().len(), RINGS_KEPT);
    }
}
