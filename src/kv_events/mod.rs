//! vLLM's KV cache events (issue 13, in progress): what each server has cached, told by the
//! server itself over ZeroMQ, for precise prefix routing.
//!
//! - `wire`: the message and msgpack layouts, decoded by tag and field name (every layout vLLM
//!   has used) and encoded as vLLM 0.32 does.

pub mod wire;
