//! The sim's KV cache events, published as vLLM publishes them: `--kv-events-config` takes
//! vLLM's JSON; each engine gets a ZeroMQ PUB socket on the endpoint (its port plus the
//! engine's data-parallel rank, as vLLM offsets it) and, with `replay_endpoint`, a ROUTER
//! socket that sends back buffered batches from a requested sequence number on.
//!
//! Every engine step's events go out as one message: topic, 8-byte big-endian sequence number
//! (from 0, per engine), msgpack batch in vLLM 0.32's layout (kv_events::wire). The
//! `kv_events_drop_rate` fault skips sending a fraction of messages (they stay in the replay
//! buffer), so a subscriber's gap handling can be tested.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::mpsc;
use zeromq::{Socket, SocketRecv, SocketSend, ZmqMessage};

use super::faults::FaultState;
use crate::kv_events::wire::{encode_batch, Event, EventBatch};

/// vLLM's `--kv-events-config` (its `KVEventsConfig` fields; `hwm` and `max_queue_size`
/// are accepted and have no use here).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvEventsConfig {
    #[serde(default)]
    pub enable_kv_cache_events: bool,
    #[serde(default = "default_publisher")]
    pub publisher: String,
    #[serde(default = "default_endpoint")]
    pub endpoint: String,
    #[serde(default)]
    pub replay_endpoint: Option<String>,
    #[serde(default = "default_buffer_steps")]
    pub buffer_steps: usize,
    #[serde(default)]
    pub topic: String,
    #[serde(default)]
    pub hwm: Option<u64>,
    #[serde(default)]
    pub max_queue_size: Option<u64>,
}

fn default_publisher() -> String {
    "zmq".into()
}

fn default_endpoint() -> String {
    "tcp://*:5557".into()
}

fn default_buffer_steps() -> usize {
    10_000
}

impl KvEventsConfig {
    /// Parses and checks the flag's JSON. `None`: events are off.
    pub fn parse(json: &str) -> Result<Option<KvEventsConfig>, String> {
        let cfg: KvEventsConfig = serde_json::from_str(json)
            .map_err(|e| format!("--kv-events-config is not vLLM's KVEventsConfig JSON: {e}"))?;
        if !cfg.enable_kv_cache_events || cfg.publisher == "null" {
            return Ok(None);
        }
        if cfg.publisher != "zmq" {
            return Err(format!(
                "--kv-events-config: publisher must be \"zmq\" or \"null\", got {:?}",
                cfg.publisher
            ));
        }
        for endpoint in std::iter::once(&cfg.endpoint).chain(&cfg.replay_endpoint) {
            tcp_port(endpoint)?;
        }
        Ok(Some(cfg))
    }
}

/// The port of a `tcp://HOST:PORT` endpoint.
fn tcp_port(endpoint: &str) -> Result<u16, String> {
    endpoint
        .strip_prefix("tcp://")
        .and_then(|rest| rest.rsplit_once(':'))
        .and_then(|(_, port)| port.parse().ok())
        .ok_or_else(|| {
            format!("--kv-events-config: endpoints are tcp://HOST:PORT, got {endpoint:?}")
        })
}

/// The endpoint of data-parallel engine `rank`: the port plus the rank (vLLM's
/// `offset_endpoint_port`), `*` as every interface.
fn for_rank(endpoint: &str, rank: usize) -> Result<String, String> {
    let port = tcp_port(endpoint)?;
    let host = endpoint["tcp://".len()..endpoint.len() - port.to_string().len() - 1].to_string();
    let host = if host == "*" { "0.0.0.0".into() } else { host };
    if port == 0 {
        return Ok(format!("tcp://{host}:0"));
    }
    let port = usize::from(port) + rank;
    u16::try_from(port)
        .map(|port| format!("tcp://{host}:{port}"))
        .map_err(|_| format!("--kv-events-config: endpoint port + rank {rank} is past 65535"))
}

/// Batches kept for replay, by sequence number.
type ReplayBuffer = Arc<Mutex<VecDeque<(u64, Bytes)>>>;

/// Binds every engine's sockets and starts its publisher; returns the channels the engines
/// send their events to, and the bound endpoints (live, replay) per engine.
pub async fn start(
    cfg: &KvEventsConfig,
    engines: usize,
    faults: Arc<FaultState>,
) -> anyhow::Result<(Vec<mpsc::UnboundedSender<Vec<Event>>>, Vec<String>)> {
    if engines > 1 && tcp_port(&cfg.endpoint) == Ok(0) {
        anyhow::bail!("--kv-events-config: port 0 cannot be offset per data-parallel rank; give a port with --data-parallel-size above 1");
    }
    let mut senders = Vec::with_capacity(engines);
    let mut endpoints = Vec::with_capacity(engines);
    for rank in 0..engines {
        let live = for_rank(&cfg.endpoint, rank).map_err(anyhow::Error::msg)?;
        let mut socket = zeromq::PubSocket::new();
        let bound = socket
            .bind(&live)
            .await
            .with_context(|| format!("mvllm sim: cannot bind KV cache events on {live}"))?;
        let buffer: ReplayBuffer = Arc::default();
        let mut described = bound.to_string();
        if let Some(replay) = &cfg.replay_endpoint {
            let replay = for_rank(replay, rank).map_err(anyhow::Error::msg)?;
            let mut router = zeromq::RouterSocket::new();
            let bound = router.bind(&replay).await.with_context(|| {
                format!("mvllm sim: cannot bind the KV event replay on {replay}")
            })?;
            described.push_str(&format!(" (replay {bound})"));
            tokio::spawn(serve_replay(router, Arc::clone(&buffer)));
        }
        let (sender, batches) = mpsc::unbounded_channel();
        let publisher = Publisher {
            socket,
            topic: Bytes::from(cfg.topic.clone().into_bytes()),
            rank: rank as u32,
            next_seq: 0,
            buffer,
            buffer_steps: cfg.buffer_steps.max(1),
            faults: Arc::clone(&faults),
        };
        tokio::spawn(publisher.run(batches));
        senders.push(sender);
        endpoints.push(described);
    }
    Ok((senders, endpoints))
}

struct Publisher {
    socket: zeromq::PubSocket,
    topic: Bytes,
    rank: u32,
    next_seq: u64,
    buffer: ReplayBuffer,
    buffer_steps: usize,
    faults: Arc<FaultState>,
}

impl Publisher {
    async fn run(mut self, mut batches: mpsc::UnboundedReceiver<Vec<Event>>) {
        while let Some(events) = batches.recv().await {
            let seq = self.next_seq;
            self.next_seq += 1;
            let ts = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64());
            let payload = Bytes::from(encode_batch(&EventBatch {
                ts,
                events,
                data_parallel_rank: Some(self.rank),
            }));
            {
                let mut buffer = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
                if buffer.len() == self.buffer_steps {
                    buffer.pop_front();
                }
                buffer.push_back((seq, payload.clone()));
            }
            if self.faults.drop_kv_event() {
                continue;
            }
            let parts = vec![
                self.topic.clone(),
                Bytes::copy_from_slice(&seq.to_be_bytes()),
                payload,
            ];
            if let Ok(message) = ZmqMessage::try_from(parts) {
                // No subscriber, or one too slow: PUB drops, as ZeroMQ does.
                let _ = self.socket.send(message).await;
            }
        }
    }
}

/// Answers replay requests: `[identity, "", start]` gets every buffered batch from `start`
/// on as `[identity, "", seq, payload]`, then `[identity, "", -1, ""]`.
async fn serve_replay(mut router: zeromq::RouterSocket, buffer: ReplayBuffer) {
    while let Ok(request) = router.recv().await {
        let parts = request.into_vec();
        let (Some(identity), Some(start)) = (parts.first(), parts.last()) else {
            continue;
        };
        let Ok(start) = <[u8; 8]>::try_from(start.as_ref()).map(u64::from_be_bytes) else {
            continue;
        };
        let frames: Vec<(u64, Bytes)> = buffer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(seq, _)| *seq >= start)
            .cloned()
            .collect();
        let end = (u64::MAX, Bytes::new());
        for (seq, payload) in frames.into_iter().chain(std::iter::once(end)) {
            let parts = vec![
                identity.clone(),
                Bytes::new(),
                Bytes::copy_from_slice(&seq.to_be_bytes()),
                payload,
            ];
            let Ok(message) = ZmqMessage::try_from(parts) else {
                break;
            };
            if router.send(message).await.is_err() {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vllm_json_and_offsets_ports_per_rank() {
        let cfg = KvEventsConfig::parse(
            r#"{"enable_kv_cache_events": true, "publisher": "zmq", "endpoint": "tcp://*:5557", "replay_endpoint": "tcp://*:5558", "hwm": 1000}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(for_rank(&cfg.endpoint, 0).unwrap(), "tcp://0.0.0.0:5557");
        assert_eq!(for_rank(&cfg.endpoint, 2).unwrap(), "tcp://0.0.0.0:5559");
        assert_eq!(
            for_rank("tcp://127.0.0.1:5558", 1).unwrap(),
            "tcp://127.0.0.1:5559"
        );
        assert!(
            KvEventsConfig::parse(r#"{"enable_kv_cache_events": false}"#)
                .unwrap()
                .is_none()
        );
        let typo = KvEventsConfig::parse(r#"{"enable_kv_cache_event": true}"#).unwrap_err();
        assert!(typo.contains("enable_kv_cache_event"), "{typo}");
        let bad =
            KvEventsConfig::parse(r#"{"enable_kv_cache_events": true, "endpoint": "ipc:///x"}"#)
                .unwrap_err();
        assert!(bad.contains("tcp://HOST:PORT"), "{bad}");
    }
}
