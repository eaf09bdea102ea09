//! The background service that follows every server's KV cache events: one task per server,
//! and under it one per data-parallel engine (engine N publishes on the endpoint's port + N),
//! each with its own ZeroMQ SUB socket, feeding that engine's index (engines.rs).
//!
//! On every (re)connection an engine task first asks the replay socket for everything from
//! the next sequence number it expects (from 0 the first time), so what was published before
//! it subscribed (ZeroMQ drops a PUB's messages until the subscription is in place) is not
//! lost. On the live socket, a gap is filled from the replay socket; a sequence number going
//! back means the publisher restarted: the index is cleared. Events lost for good clear the
//! index and mark it rebuilding (engines.rs says when it is trusted again).
//!
//! The sockets are the router's own (zmtp.rs: bounded frames, no panic on what a peer sends).
//! Each engine's subscription is a task of its own, which the server's task starts again if
//! it ever ends; a broken connection, a subscription quiet for [`SILENCE`] (a publisher can
//! go away without the connection saying so) and a server turning unhealthy all make it
//! connect again.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::task::JoinHandle;

use super::engines::{lock, EngineCache, Status};
use super::sequence::{classify, Next};
use super::wire::{self, EventBatch};
use super::zmtp::{Connection, SocketType};
use crate::backend::ServerState;
use crate::cluster::Cluster;
use crate::config::KvEventsSource;

/// How long a connection or a replay may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const REPLAY_TIMEOUT: Duration = Duration::from_secs(5);
/// A subscription with no message for this long is made again (cheap: one connection and an
/// empty replay), since the socket does not notice a publisher that went away.
pub const SILENCE: Duration = Duration::from_secs(10);
/// How often a server's task looks at its settings and its engines' tasks.
const TICK: Duration = Duration::from_secs(1);

pub struct KvSubscriber {
    cluster: Arc<Cluster>,
}

impl KvSubscriber {
    pub fn new(cluster: Arc<Cluster>) -> KvSubscriber {
        KvSubscriber { cluster }
    }
}

#[async_trait]
impl BackgroundService for KvSubscriber {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut reloads = self.cluster.reloads();
        let mut servers: Vec<(Arc<ServerState>, JoinHandle<()>)> = Vec::new();
        loop {
            // A task per server in the config; a removed server's task ends by itself.
            servers.retain(|(_, task)| !task.is_finished());
            for backend in &self.cluster.snapshot().backends {
                if !servers.iter().any(|(s, _)| Arc::ptr_eq(s, &backend.state)) {
                    let task = tokio::spawn(follow_server(
                        Arc::clone(&self.cluster),
                        Arc::clone(&backend.state),
                    ));
                    servers.push((Arc::clone(&backend.state), task));
                }
            }
            tokio::select! {
                _ = shutdown.changed() => break,
                changed = reloads.changed() => if changed.is_err() { break },
            }
        }
        for (_, task) in servers {
            task.abort();
        }
    }
}

/// One engine's task, and what it was started for.
struct EngineTask {
    task: JoinHandle<()>,
    source: KvEventsSource,
}

impl Drop for EngineTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Follows one server's engines until it leaves the config.
async fn follow_server(cluster: Arc<Cluster>, state: Arc<ServerState>) {
    let mut reloads = cluster.reloads();
    let mut engines: Vec<EngineTask> = Vec::new();
    loop {
        let snapshot = cluster.snapshot();
        let Some(backend) = snapshot.backend_of(&state) else {
            return; // removed: its tasks stop, its state (and index) goes with the last Arc
        };
        let Some(source) = backend.cfg.kv_events(&snapshot.routing) else {
            engines.clear();
            state.kv.forget();
            drop(snapshot);
            let _ = reloads.changed().await;
            continue;
        };
        // One task per engine the server reports (its `engine` labels), at least one.
        let count = state
            .load
            .load()
            .as_ref()
            .map_or(1, |s| usize::from(s.engines.count).max(1));
        let budget = (snapshot.routing.kv_index_budget_mib * 1024.0 * 1024.0) as usize / count;
        for rank in 0..count {
            let cache = state.kv.engine(rank, budget);
            lock(&cache).index.set_budget(budget);
            let stale = engines.get(rank).is_some_and(|e| e.source != source);
            let stopped = engines.get(rank).is_some_and(|e| e.task.is_finished());
            if rank < engines.len() && !stale && !stopped {
                continue;
            }
            if stopped && !stale {
                // Its socket panicked or gave up: say so, and start again after the tick.
                lock(&cache).status =
                    Status::Connecting("the subscription stopped; reconnecting".into());
            }
            let task = EngineTask {
                task: tokio::spawn(follow_engine(
                    Arc::clone(&state),
                    cache,
                    endpoint_for_rank(&source.live, rank),
                    source.replay.as_deref().map(|r| endpoint_for_rank(r, rank)),
                )),
                source: source.clone(),
            };
            if rank < engines.len() {
                engines[rank] = task;
            } else {
                engines.push(task);
            }
        }
        drop(snapshot);
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = reloads.changed() => {}
        }
    }
}

/// Engine `rank`'s endpoint: the port plus the rank, as vLLM offsets it.
fn endpoint_for_rank(endpoint: &str, rank: usize) -> String {
    if rank == 0 {
        return endpoint.to_string();
    }
    match endpoint.rsplit_once(':') {
        Some((host, port)) => match port.parse::<usize>() {
            Ok(port) => format!("{host}:{}", port + rank),
            Err(_) => endpoint.to_string(),
        },
        None => endpoint.to_string(),
    }
}

/// Follows one engine's events for as long as the task lives.
async fn follow_engine(
    state: Arc<ServerState>,
    cache: Arc<Mutex<EngineCache>>,
    live: String,
    replay: Option<String>,
) {
    let mut pause = Duration::from_millis(200);
    loop {
        if !state.is_healthy() {
            // Its cache may be gone (a restart) and its socket with it: start from nothing
            // when it is back.
            {
                let mut engine = lock(&cache);
                let unhealthy = Status::Connecting("the server is not healthy".into());
                if engine.status != unhealthy {
                    engine.clear();
                    engine.status = unhealthy;
                }
            }
            tokio::time::sleep(TICK).await;
            continue;
        }
        let connected = match Connection::open(&live, SocketType::Sub, CONNECT_TIMEOUT).await {
            Ok(mut socket) => socket.subscribe_all().await.map(|()| socket),
            Err(why) => Err(why),
        };
        let mut socket = match connected {
            Ok(socket) => socket,
            Err(why) => {
                set_status(&cache, Status::Connecting(why));
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        pause = Duration::from_millis(200);
        let replayed_from = catch_up(&cache, replay.as_deref()).await;
        subscribed(
            &state,
            &cache,
            &mut socket,
            replay.as_deref(),
            replayed_from,
        )
        .await;
    }
}

fn set_status(cache: &Mutex<EngineCache>, status: Status) {
    lock(cache).status = status;
}

/// Right after subscribing: everything the replay socket has from the last message seen on
/// (from 0 the first time). If the publisher no longer has that message, it restarted (its
/// numbering began again; the index is cleared and its new history replayed from 0) or more
/// happened than its buffer holds (events lost). Returns where the replay started: live
/// messages at or above it that were already applied are duplicates.
async fn catch_up(cache: &Mutex<EngineCache>, replay: Option<&str>) -> Option<u64> {
    let replay = replay?;
    for _ in 0..2 {
        let expected = lock(cache).next_seq;
        let from = expected.map_or(0, |next| next.saturating_sub(1));
        let batches = match fetch(replay, from, None).await {
            Ok(batches) => batches,
            Err(why) => {
                tracing::warn!(endpoint = replay, %why, "KV event replay failed; following live events only");
                if expected.is_some() {
                    lose(
                        &mut lock(cache),
                        format!("replay from {replay} failed: {why}"),
                    );
                }
                return None;
            }
        };
        let first = batches.first().map(|(seq, _)| *seq);
        let mut engine = lock(cache);
        let mut next = expected.unwrap_or(0);
        match expected {
            Some(expected) if expected > 0 && first.is_none_or(|f| f < from) => {
                // The last message seen is gone and nothing after it exists: a new process.
                engine.restarts += 1;
                engine.clear();
                tracing::info!(
                    endpoint = replay,
                    "KV event publisher restarted: index cleared"
                );
                continue;
            }
            Some(_) if first.is_some_and(|f| f > from) => {
                let first = first.unwrap_or(from);
                lose(
                    &mut engine,
                    format!("events {next}..{first} were no longer in the replay buffer"),
                );
                next = first;
            }
            None => engine.complete = first.is_none_or(|f| f == 0),
            _ => {}
        }
        if let Some(first) = first.filter(|&f| expected.is_none() && f > 0) {
            next = first;
        }
        let missed = batches.iter().any(|(seq, _)| *seq >= next);
        for (seq, batch) in &batches {
            if *seq >= next {
                engine.apply(batch);
                next = seq + 1;
            }
        }
        if expected.is_some() && missed {
            // Published while the socket was not listening: a gap, filled.
            engine.gaps += 1;
            engine.replays += 1;
        }
        engine.next_seq = Some(next);
        if !matches!(engine.status, Status::Rebuilding { .. }) {
            engine.status = Status::Live;
        }
        return Some(from);
    }
    None
}

/// Whether the server's prefix-cache counters went back since the last look (`seen`): it
/// restarted, and its cache with it.
fn counters_went_back(state: &ServerState, seen: &mut Option<f64>) -> bool {
    let now = state
        .load
        .load()
        .as_ref()
        .and_then(|s| s.prefix_cache)
        .map(|c| c.queries);
    let back = matches!((*seen, now), (Some(before), Some(now)) if now < before);
    if now.is_some() {
        *seen = now;
    }
    back
}

/// Events were lost for good: the index is cleared and rebuilt from what comes next.
fn lose(engine: &mut EngineCache, why: String) {
    tracing::warn!(%why, "KV cache events lost: the index is rebuilt");
    engine.lost += 1;
    let next = engine.next_seq;
    engine.clear();
    engine.next_seq = next;
    engine.status = Status::Rebuilding {
        since: std::time::Instant::now(),
        why,
    };
}

/// Applies live messages until the subscription goes quiet, breaks, or the server turns
/// unhealthy.
async fn subscribed(
    state: &ServerState,
    cache: &Mutex<EngineCache>,
    socket: &mut Connection,
    replay: Option<&str>,
    replayed_from: Option<u64>,
) {
    let mut quiet = Duration::ZERO;
    let mut queries = None;
    counters_went_back(state, &mut queries);
    loop {
        let received = tokio::time::timeout(TICK, socket.recv()).await;
        if !state.is_healthy() {
            return;
        }
        if counters_went_back(state, &mut queries) {
            // Restarted between two scrapes: its socket is a new one, and its cache empty.
            let mut engine = lock(cache);
            engine.restarts += 1;
            engine.clear();
            tracing::info!(
                "the server's prefix-cache counters went back: it restarted, index cleared"
            );
            return;
        }
        let message = match received {
            Err(_) => {
                quiet += TICK;
                if quiet >= SILENCE {
                    return;
                }
                continue;
            }
            Ok(Err(why)) => {
                set_status(
                    cache,
                    Status::Connecting(format!("the subscription broke: {why}")),
                );
                return;
            }
            Ok(Ok(message)) => message,
        };
        quiet = Duration::ZERO;
        let parts: Vec<&[u8]> = message.iter().map(|p| &p[..]).collect();
        let message = match wire::decode_message(&parts) {
            Ok(message) => message,
            Err(why) => {
                let mut engine = lock(cache);
                engine.malformed += 1;
                if engine.malformed.is_power_of_two() {
                    tracing::warn!(%why, "a KV cache event message could not be decoded");
                }
                continue;
            }
        };
        let expected = lock(cache).next_seq;
        match classify(expected, message.seq, replayed_from) {
            Next::Duplicate => continue,
            Next::Restarted => {
                {
                    let mut engine = lock(cache);
                    engine.restarts += 1;
                    engine.clear();
                }
                tracing::info!(
                    seq = message.seq,
                    "KV event publisher restarted: index cleared"
                );
                if message.seq > 0 {
                    if let Some(replay) = replay {
                        fill(cache, replay, 0, message.seq).await;
                    }
                }
            }
            Next::Gap { from, to } => {
                lock(cache).gaps += 1;
                match replay {
                    Some(replay) => fill(cache, replay, from, to).await,
                    None => lose(
                        &mut lock(cache),
                        format!("events {from}..{to} were missed and there is no replay socket"),
                    ),
                }
            }
            Next::InOrder if expected.is_none() => lock(cache).complete = message.seq == 0,
            Next::InOrder => {}
        }
        let mut engine = lock(cache);
        engine.apply(&message.batch);
        engine.next_seq = Some(message.seq + 1);
        // (A rebuilding index stays so until `REBUILD` has passed: engines.rs.)
        if matches!(engine.status, Status::Connecting(_)) {
            engine.status = Status::Live;
        }
    }
}

/// Fills a gap `from..to` from the replay socket.
async fn fill(cache: &Mutex<EngineCache>, replay: &str, from: u64, to: u64) {
    match fetch(replay, from, Some(to)).await {
        Ok(batches)
            if batches.first().map(|(seq, _)| *seq) == Some(from)
                && batches.len() as u64 == to - from =>
        {
            let mut engine = lock(cache);
            engine.replays += 1;
            for (_, batch) in &batches {
                engine.apply(batch);
            }
            engine.next_seq = Some(to);
        }
        Ok(batches) => lose(
            &mut lock(cache),
            format!(
                "the replay socket had {} of the {} missed events {from}..{to}",
                batches.len(),
                to - from
            ),
        ),
        Err(why) => lose(
            &mut lock(cache),
            format!("replay of events {from}..{to} failed: {why}"),
        ),
    }
}

/// Asks a replay socket for the batches from `from` on (below `to`, if given).
async fn fetch(
    endpoint: &str,
    from: u64,
    to: Option<u64>,
) -> Result<Vec<(u64, EventBatch)>, String> {
    let request = async {
        let mut socket = Connection::open(endpoint, SocketType::Dealer, CONNECT_TIMEOUT).await?;
        let [empty, seq] = wire::replay_request(from);
        socket.send(&[&empty, &seq]).await?;
        let mut batches = Vec::new();
        loop {
            let frame = socket.recv().await?;
            let frame: Vec<&[u8]> = frame.iter().map(|p| &p[..]).collect();
            match wire::decode_replay_frame(&frame).map_err(|e| e.to_string())? {
                None => return Ok(batches),
                Some((seq, batch)) => {
                    if to.is_some_and(|to| seq >= to) {
                        continue;
                    }
                    if seq >= from {
                        batches.push((seq, batch));
                    }
                }
            }
        }
    };
    tokio::time::timeout(REPLAY_TIMEOUT, request)
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engines_publish_on_ports_offset_by_rank() {
        assert_eq!(
            endpoint_for_rank("tcp://10.0.0.5:5557", 0),
            "tcp://10.0.0.5:5557"
        );
        assert_eq!(
            endpoint_for_rank("tcp://10.0.0.5:5557", 3),
            "tcp://10.0.0.5:5560"
        );
        assert_eq!(endpoint_for_rank("tcp://[::1]:5557", 1), "tcp://[::1]:5558");
    }
}
