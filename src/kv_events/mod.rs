//! vLLM's KV cache events: what each server has cached, told by the server itself over
//! ZeroMQ, for precise prefix routing (the `cache-aware` policy; README "KV cache events").
//!
//! - `wire`: the message and msgpack layouts, decoded by tag and field name (every layout vLLM
//!   has used) and encoded as vLLM 0.32 does.
//! - `index`: one engine's cached blocks, keyed by the router's own chained hash of their
//!   tokens; how long a prefix of a prompt is cached.
//! - `sequence`: a publisher's sequence numbers: in order, a gap to replay, a duplicate from
//!   a replay, a restart.
//! - `engines`: a server's engines' indexes, their subscriptions' counters, and whether each
//!   index is trusted now.
//! - `subscriber`: the background service that follows every server's events.
//! - `zmtp`: the SUB and DEALER sockets it uses, bounded against a hostile peer.

pub mod engines;
pub mod index;
pub mod sequence;
pub mod subscriber;
pub mod wire;
pub mod zmtp;
