//! What the router knows of one server's KV caches from its events: one [`EngineCache`] per
//! data-parallel engine (each engine has its own cache and publishes on its own socket), and
//! whether that knowledge can be trusted right now.
//!
//! An engine's index is trusted while its subscription is live and in order: every gap was
//! filled from the replay socket. It is not trusted while the router is not connected, after
//! events were lost for good (the index is cleared, and it must see the cache turn over
//! before it is complete again: [`REBUILD`]), or while the server itself is unhealthy. An
//! untrusted engine is routed on the approximate estimate, and `/load-stats` says why.

use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use super::index::CacheIndex;
use super::wire::EventBatch;

/// How long an index rebuilt after lost events is not trusted: the events that were lost
/// may have stored blocks the index now lacks (the router would under-state that server's
/// cache) until the cache has turned over.
pub const REBUILD: Duration = Duration::from_secs(30);

/// The state of one engine's subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Not connected yet, or connecting again; the reason.
    Connecting(String),
    /// Live and in order.
    Live,
    /// Events were lost and could not be replayed: the index was cleared at `since`.
    Rebuilding { since: Instant, why: String },
}

/// One engine's index and its subscription's counters.
#[derive(Debug)]
pub struct EngineCache {
    pub index: CacheIndex,
    pub status: Status,
    /// Messages applied (live and replayed).
    pub messages: u64,
    /// Events applied.
    pub events: u64,
    /// Sequence gaps seen on the live socket.
    pub gaps: u64,
    /// Gaps filled from the replay socket.
    pub replays: u64,
    /// Gaps that could not be filled (no replay socket, or it no longer had them).
    pub lost: u64,
    /// Times the publisher started numbering again (the server or engine restarted).
    pub restarts: u64,
    /// Messages that could not be decoded.
    pub malformed: u64,
    /// Stored blocks whose parent block the index did not have (an event was missed).
    pub orphaned: u64,
    /// When the last message arrived.
    pub last_event: Option<Instant>,
    /// Whether the index holds the engine's whole history (the replay reached back to its
    /// first message), not just what happened since the router subscribed.
    pub complete: bool,
    /// The sequence number expected next from the publisher.
    pub next_seq: Option<u64>,
}

impl EngineCache {
    fn new(budget: usize) -> EngineCache {
        EngineCache {
            index: CacheIndex::new(budget),
            status: Status::Connecting("not connected yet".into()),
            messages: 0,
            events: 0,
            gaps: 0,
            replays: 0,
            lost: 0,
            restarts: 0,
            malformed: 0,
            orphaned: 0,
            last_event: None,
            complete: false,
            next_seq: None,
        }
    }

    /// Applies a batch's events.
    pub fn apply(&mut self, batch: &EventBatch) {
        self.messages += 1;
        self.last_event = Some(Instant::now());
        for event in &batch.events {
            self.events += 1;
            self.orphaned += self.index.apply(event).orphaned as u64;
        }
    }

    /// Forgets everything (the engine's cache is gone, or the index cannot be trusted).
    pub fn clear(&mut self) {
        self.index.clear();
        self.complete = false;
        self.next_seq = None;
    }

    /// Whether the index may be used for routing now.
    pub fn trusted(&self) -> bool {
        match &self.status {
            Status::Live => true,
            Status::Connecting(_) => false,
            Status::Rebuilding { since, .. } => since.elapsed() >= REBUILD,
        }
    }

    /// Why the index is not used, if it is not.
    pub fn distrust(&self) -> Option<String> {
        match &self.status {
            Status::Live => None,
            Status::Connecting(why) => Some(why.clone()),
            Status::Rebuilding { since, why } if since.elapsed() < REBUILD => Some(format!(
                "{why}; index rebuilt from new events, trusted again in {:.0} s",
                (REBUILD - since.elapsed()).as_secs_f64()
            )),
            Status::Rebuilding { .. } => None,
        }
    }
}

/// A server's engines' indexes and subscriptions, summed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvSummary {
    pub engines: usize,
    pub trusted: usize,
    pub blocks: usize,
    pub bytes: usize,
    pub budget: usize,
    pub events: u64,
    pub gaps: u64,
    pub replays: u64,
    pub lost: u64,
    pub restarts: u64,
}

/// A server's engines' caches, as its events tell them.
#[derive(Debug, Default)]
pub struct ServerCaches {
    engines: RwLock<Vec<Arc<Mutex<EngineCache>>>>,
}

impl ServerCaches {
    /// Engine `rank`'s cache, made (with `budget` bytes) if it is new.
    pub fn engine(&self, rank: usize, budget: usize) -> Arc<Mutex<EngineCache>> {
        if let Some(engine) = self.read().get(rank) {
            return Arc::clone(engine);
        }
        let mut engines = self.engines.write().unwrap_or_else(|e| e.into_inner());
        while engines.len() <= rank {
            engines.push(Arc::new(Mutex::new(EngineCache::new(budget))));
        }
        Arc::clone(&engines[rank])
    }

    /// Drops every engine's cache (events were turned off for the server).
    pub fn forget(&self) {
        self.engines
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// The engines' caches, by rank.
    pub fn engines(&self) -> Vec<Arc<Mutex<EngineCache>>> {
        self.read().clone()
    }

    /// Whether any engine's events are followed.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// For each engine whose index is trusted: (rank, tokens of `prompt` it has cached).
    /// `None` when no engine's index is trusted (route on the approximate estimate).
    pub fn cached_prefixes(
        &self,
        prompt: &[u32],
        lora: Option<&str>,
    ) -> Option<Vec<(usize, usize)>> {
        let engines = self.read();
        let found: Vec<(usize, usize)> = engines
            .iter()
            .enumerate()
            .filter_map(|(rank, engine)| {
                let engine = lock(engine);
                engine
                    .trusted()
                    .then(|| (rank, engine.index.cached_prefix(prompt, lora)))
            })
            .collect();
        (!found.is_empty()).then_some(found)
    }

    /// What `/load-stats` shows of it: per engine, whether its index is used and why not,
    /// its size, and its subscription's counters. `None` when its events are not followed.
    pub fn report(&self) -> Option<serde_json::Value> {
        let engines = self.read();
        if engines.is_empty() {
            return None;
        }
        let engines: Vec<serde_json::Value> = engines
            .iter()
            .enumerate()
            .map(|(rank, engine)| {
                let e = lock(engine);
                serde_json::json!({
                    "rank": rank,
                    "trusted": e.trusted(),
                    "not_trusted_because": e.distrust(),
                    "complete_history": e.complete,
                    "blocks": e.index.len(),
                    "index_bytes": e.index.bytes(),
                    "index_budget_bytes": e.index.budget(),
                    "blocks_not_recorded": e.index.dropped,
                    "messages_received": e.messages,
                    "events_received": e.events,
                    "gaps": e.gaps,
                    "replays": e.replays,
                    "lost": e.lost,
                    "restarts": e.restarts,
                    "malformed": e.malformed,
                    "orphaned_blocks": e.orphaned,
                    "last_event_age_seconds": e.last_event.map(|t| (t.elapsed().as_secs_f64() * 100.0).round() / 100.0),
                })
            })
            .collect();
        Some(serde_json::json!({ "engines": engines }))
    }

    /// Its engines summed, for `/metrics`; `None` when its events are not followed.
    pub fn summary(&self) -> Option<KvSummary> {
        let engines = self.read();
        if engines.is_empty() {
            return None;
        }
        let mut sum = KvSummary::default();
        for engine in engines.iter() {
            let e = lock(engine);
            sum.engines += 1;
            sum.trusted += usize::from(e.trusted());
            sum.blocks += e.index.len();
            sum.bytes += e.index.bytes();
            sum.budget += e.index.budget();
            sum.events += e.events;
            sum.gaps += e.gaps;
            sum.replays += e.replays;
            sum.lost += e.lost;
            sum.restarts += e.restarts;
        }
        Some(sum)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<Mutex<EngineCache>>>> {
        self.engines.read().unwrap_or_else(|e| e.into_inner())
    }
}

/// An engine's cache, locked. (Only the index's own code can leave it half-updated by a
/// panic; what it holds is advice, so a poisoned lock is taken as it is.)
pub fn lock(engine: &Mutex<EngineCache>) -> MutexGuard<'_, EngineCache> {
    engine.lock().unwrap_or_else(|e| e.into_inner())
}
