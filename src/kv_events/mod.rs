//! vLLM's KV cache events (issue 13, in progress): what each server has cached, told by the
//! server itself over ZeroMQ, for precise prefix routing.
//!
//! - `wire`: the message and msgpack layouts, decoded by tag and field name (every layout vLLM
//!   has used) and encoded as vLLM 0.32 does.
//! - `index`: one engine's cached blocks, keyed by the router's own chained hash of their
//!   tokens; how long a prefix of a prompt is cached.
//! - `sequence`: a publisher's sequence numbers: in order, a gap to replay, a restart.
//!
//! Still to come (see the issue): the ZeroMQ subscriber per server and rank with replay, the
//! config keys, tokenizing requests, the cache-aware policy's use of the index, per-engine
//! routing, and the sim publishing its cache's events.

pub mod index;
pub mod sequence;
pub mod wire;
