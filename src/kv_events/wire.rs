//! vLLM's KV cache events on the wire: what a ZeroMQ subscriber receives from
//! `--kv-events-config '{"enable_kv_cache_events": true, "publisher": "zmq", ...}'`.
//!
//! A message has three parts: the topic, an 8-byte big-endian sequence number, and a msgpack
//! payload, the batch `[ts, events, data_parallel_rank]`. vLLM encodes it with msgspec, and its
//! layout has changed between releases: each event was a tagged array (`["BlockStored",
//! block_hashes, parent_block_hash, token_ids, block_size, lora_id, medium]`) and is a map with a
//! `type` tag and named fields in recent ones (0.32 adds `lora_name`, `extra_keys`, `group_idx`,
//! `kv_cache_spec_kind`). So events are decoded as msgpack values, by tag and by field name or
//! position, and fields not known here are ignored; block hashes are 64-bit integers, or bytes
//! with some hash algorithms (taken as their xxh3). The replay socket answers a request
//! `["", seq]` with frames `["", seq, payload]` and ends with an empty payload.
//!
//! [`encode_batch`] writes the map layout exactly as vLLM 0.32 does (the simulator publishes
//! with it); the tests check both against a capture from a real vLLM.

use std::fmt;

use rmpv::Value;

/// msgpack nesting allowed in a payload (a batch is 4 deep; the rest is hostile).
const MAX_DEPTH: usize = 16;

/// Why a message or a payload was not understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError(pub String);

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WireError {}

fn error<T>(why: impl Into<String>) -> Result<T, WireError> {
    Err(WireError(why.into()))
}

/// One message from the publisher.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub topic: Vec<u8>,
    pub seq: u64,
    pub batch: EventBatch,
}

/// A block's hash as vLLM gives it, as a 64-bit key.
pub type BlockHash = u64;

/// One batch: when it was made, its events, and the data-parallel engine they happened in.
#[derive(Debug, Clone, PartialEq)]
pub struct EventBatch {
    pub ts: f64,
    pub events: Vec<Event>,
    /// `None` when the publisher did not say (a server without data parallelism).
    pub data_parallel_rank: Option<u32>,
}

/// One KV cache event.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Blocks were filled and are now cached: their hashes, the hash of the block before the
    /// first of them (none for a prompt's first block), and their tokens.
    BlockStored {
        block_hashes: Vec<BlockHash>,
        parent_block_hash: Option<BlockHash>,
        token_ids: Vec<u32>,
        block_size: u32,
        lora_id: Option<i64>,
        medium: Option<String>,
        lora_name: Option<String>,
    },
    /// Blocks were evicted.
    BlockRemoved {
        block_hashes: Vec<BlockHash>,
        medium: Option<String>,
    },
    /// The whole cache was dropped (a reset, a restart of the engine).
    AllBlocksCleared,
}

/// Parses a message's parts: topic, sequence number, payload.
pub fn decode_message(parts: &[&[u8]]) -> Result<Message, WireError> {
    let [topic, seq, payload] = parts else {
        return error(format!(
            "a message has 3 parts (topic, sequence, payload), this one {}",
            parts.len()
        ));
    };
    Ok(Message {
        topic: topic.to_vec(),
        seq: sequence(seq)?,
        batch: decode_batch(payload)?,
    })
}

/// An 8-byte big-endian sequence number.
pub fn sequence(bytes: &[u8]) -> Result<u64, WireError> {
    match <[u8; 8]>::try_from(bytes) {
        Ok(bytes) => Ok(u64::from_be_bytes(bytes)),
        Err(_) => error(format!(
            "a sequence number is 8 bytes, this one {}",
            bytes.len()
        )),
    }
}

/// Decodes a payload: `[ts, events, data_parallel_rank]`.
pub fn decode_batch(payload: &[u8]) -> Result<EventBatch, WireError> {
    let mut reader = payload;
    let value = rmpv::decode::read_value_with_max_depth(&mut reader, MAX_DEPTH)
        .or_else(|e| error(format!("not msgpack: {e}")))?;
    if !reader.is_empty() {
        return error(format!("{} bytes after the batch", reader.len()));
    }
    let Some(fields) = value.as_array() else {
        return error("a batch is an array [ts, events, data_parallel_rank]");
    };
    let ts = fields.first().and_then(Value::as_f64).unwrap_or(0.0);
    let Some(events) = fields.get(1).and_then(Value::as_array) else {
        return error("a batch's second field is its list of events");
    };
    let data_parallel_rank = match fields.get(2) {
        None | Some(Value::Nil) => None,
        Some(rank) => Some(
            rank.as_u64()
                .and_then(|r| u32::try_from(r).ok())
                .map_or_else(
                    || error("data_parallel_rank is not a small whole number"),
                    Ok,
                )?,
        ),
    };
    let mut decoded = Vec::with_capacity(events.len());
    for event in events {
        if let Some(event) = decode_event(event)? {
            decoded.push(event);
        }
    }
    Ok(EventBatch {
        ts,
        events: decoded,
        data_parallel_rank,
    })
}

/// An event's fields by name, whichever layout it came in; `None` for an event type not
/// known here (skipped).
fn decode_event(event: &Value) -> Result<Option<Event>, WireError> {
    let fields = Fields::of(event)?;
    let event = match fields.tag {
        "BlockStored" => Event::BlockStored {
            block_hashes: hashes(fields.get("block_hashes", 0))?,
            parent_block_hash: optional_hash(fields.get("parent_block_hash", 1))?,
            token_ids: token_ids(fields.get("token_ids", 2))?,
            block_size: fields
                .get("block_size", 3)
                .and_then(Value::as_u64)
                .and_then(|n| u32::try_from(n).ok())
                .map_or_else(|| error("BlockStored has no block_size"), Ok)?,
            lora_id: fields.get("lora_id", 4).and_then(Value::as_i64),
            medium: text(fields.get("medium", 5)),
            lora_name: text(fields.get("lora_name", 6)),
        },
        "BlockRemoved" => Event::BlockRemoved {
            block_hashes: hashes(fields.get("block_hashes", 0))?,
            medium: text(fields.get("medium", 1)),
        },
        "AllBlocksCleared" => Event::AllBlocksCleared,
        _ => return Ok(None),
    };
    Ok(Some(event))
}

/// An event's tag and fields: a map with `type`, or an array whose first item is the tag and
/// whose other items are the fields in vLLM's declaration order.
struct Fields<'a> {
    tag: &'a str,
    named: Option<&'a [(Value, Value)]>,
    positional: &'a [Value],
}

impl<'a> Fields<'a> {
    fn of(event: &'a Value) -> Result<Fields<'a>, WireError> {
        match event {
            Value::Map(pairs) => {
                let tag = pairs
                    .iter()
                    .find(|(k, _)| k.as_str() == Some("type"))
                    .and_then(|(_, v)| v.as_str());
                match tag {
                    Some(tag) => Ok(Fields {
                        tag,
                        named: Some(pairs),
                        positional: &[],
                    }),
                    None => error("an event map has no `type`"),
                }
            }
            Value::Array(items) => match items.split_first() {
                Some((tag, rest)) if tag.as_str().is_some() => Ok(Fields {
                    tag: tag.as_str().unwrap_or_default(),
                    named: None,
                    positional: rest,
                }),
                _ => error("an event array does not start with its type"),
            },
            _ => error("an event is a map or a tagged array"),
        }
    }

    /// The field `name` (map layout) or at `position` after the tag (array layout); nil is
    /// absent.
    fn get(&self, name: &str, position: usize) -> Option<&'a Value> {
        let value = match self.named {
            Some(pairs) => pairs
                .iter()
                .find(|(k, _)| k.as_str() == Some(name))
                .map(|(_, v)| v),
            None => self.positional.get(position),
        };
        value.filter(|v| !v.is_nil())
    }
}

fn hash(value: &Value) -> Result<BlockHash, WireError> {
    match value {
        // Python ints: vLLM's 64-bit hashes, signed or not.
        Value::Integer(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => Ok(u),
            (None, Some(i)) => Ok(i as u64),
            _ => error("a block hash is out of range"),
        },
        Value::Binary(bytes) => Ok(xxhash_rust::xxh3::xxh3_64(bytes)),
        _ => error("a block hash is an integer or bytes"),
    }
}

fn hashes(value: Option<&Value>) -> Result<Vec<BlockHash>, WireError> {
    match value.and_then(Value::as_array) {
        Some(items) => items.iter().map(hash).collect(),
        None => error("an event has no block_hashes list"),
    }
}

fn optional_hash(value: Option<&Value>) -> Result<Option<BlockHash>, WireError> {
    value.map(hash).transpose()
}

fn token_ids(value: Option<&Value>) -> Result<Vec<u32>, WireError> {
    let Some(items) = value.and_then(Value::as_array) else {
        return error("BlockStored has no token_ids list");
    };
    items
        .iter()
        .map(|t| {
            t.as_u64()
                .and_then(|t| u32::try_from(t).ok())
                .map_or_else(|| error("a token id is not a 32-bit whole number"), Ok)
        })
        .collect()
}

fn text(value: Option<&Value>) -> Option<String> {
    value.and_then(Value::as_str).map(str::to_string)
}

/// Encodes a batch in vLLM 0.32's layout: each event a map tagged with `type`, its fields in
/// vLLM's order (the ones this router does not model written as vLLM's defaults). `BlockStored`
/// is checked byte for byte against a real vLLM's; the other two carry the fields vLLM's
/// documented event types have (no capture of them yet).
pub fn encode_batch(batch: &EventBatch) -> Vec<u8> {
    let events = batch.events.iter().map(event_value).collect();
    let rank = batch
        .data_parallel_rank
        .map_or(Value::Nil, |r| Value::from(u64::from(r)));
    let value = Value::Array(vec![Value::F64(batch.ts), Value::Array(events), rank]);
    let mut out = Vec::new();
    // Writing to a Vec cannot fail.
    let _ = rmpv::encode::write_value(&mut out, &value);
    out
}

fn event_value(event: &Event) -> Value {
    let field = |name: &str, value: Value| (Value::from(name), value);
    let hashes = |h: &[BlockHash]| Value::Array(h.iter().map(|&h| Value::from(h)).collect());
    let optional = |s: &Option<String>| s.as_deref().map_or(Value::Nil, Value::from);
    let pairs = match event {
        Event::BlockStored {
            block_hashes,
            parent_block_hash,
            token_ids,
            block_size,
            lora_id,
            medium,
            lora_name,
        } => vec![
            field("type", Value::from("BlockStored")),
            field("block_hashes", hashes(block_hashes)),
            field(
                "parent_block_hash",
                parent_block_hash.map_or(Value::Nil, Value::from),
            ),
            field(
                "token_ids",
                Value::Array(token_ids.iter().map(|&t| Value::from(t)).collect()),
            ),
            field("block_size", Value::from(*block_size)),
            field("lora_id", lora_id.map_or(Value::Nil, Value::from)),
            field("medium", optional(medium)),
            field("lora_name", optional(lora_name)),
            field(
                "extra_keys",
                Value::Array(vec![Value::Nil; block_hashes.len()]),
            ),
            field("group_idx", Value::from(0)),
            field("kv_cache_spec_kind", Value::from("full_attention")),
        ],
        Event::BlockRemoved {
            block_hashes,
            medium,
        } => vec![
            field("type", Value::from("BlockRemoved")),
            field("block_hashes", hashes(block_hashes)),
            field("medium", optional(medium)),
        ],
        Event::AllBlocksCleared => vec![field("type", Value::from("AllBlocksCleared"))],
    };
    Value::Map(pairs)
}

/// The request a replay socket takes: everything from `seq` on.
pub fn replay_request(seq: u64) -> [Vec<u8>; 2] {
    [Vec::new(), seq.to_be_bytes().to_vec()]
}

/// One frame of a replay answer: a batch, or the end (`None`).
pub fn decode_replay_frame(parts: &[&[u8]]) -> Result<Option<(u64, EventBatch)>, WireError> {
    let [_, seq, payload] = parts else {
        return error(format!(
            "a replay frame has 3 parts (empty, sequence, payload), this one {}",
            parts.len()
        ));
    };
    if payload.is_empty() {
        return Ok(None);
    }
    Ok(Some((sequence(seq)?, decode_batch(payload)?)))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const CAPTURE: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/kv-events/vllm-0.32-cpu"
    );

    /// A captured message: a 4-byte part count, then each part as a 4-byte length and bytes.
    pub(crate) fn captured(name: &str) -> Vec<Vec<u8>> {
        let bytes = std::fs::read(format!("{CAPTURE}/{name}")).unwrap();
        let count = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
        let mut parts = Vec::new();
        let mut at = 4;
        for _ in 0..count {
            let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            parts.push(bytes[at + 4..at + 4 + len].to_vec());
            at += 4 + len;
        }
        assert_eq!(at, bytes.len());
        parts
    }

    fn refs(parts: &[Vec<u8>]) -> Vec<&[u8]> {
        parts.iter().map(Vec::as_slice).collect()
    }

    #[test]
    fn a_real_vllm_capture_decodes_as_msgspec_read_it() {
        let decoded: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(format!("{CAPTURE}/decoded.json")).unwrap(),
        )
        .unwrap();
        for (i, expected) in decoded.as_array().unwrap().iter().enumerate() {
            let parts = captured(&format!("msg-{i:03}.bin"));
            let message = decode_message(&refs(&parts)).unwrap();
            assert_eq!(message.topic, b"kv");
            assert_eq!(message.seq, expected["seq"].as_u64().unwrap());
            let payload = &expected["payload"];
            assert_eq!(message.batch.ts, payload[0].as_f64().unwrap());
            assert_eq!(message.batch.data_parallel_rank, Some(0));
            let events = payload[1].as_array().unwrap();
            assert_eq!(message.batch.events.len(), events.len());
            for (got, want) in message.batch.events.iter().zip(events) {
                let Event::BlockStored {
                    block_hashes,
                    parent_block_hash,
                    token_ids,
                    block_size,
                    medium,
                    ..
                } = got
                else {
                    panic!("{got:?}");
                };
                let want_hashes: Vec<u64> = want["block_hashes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|h| h.as_u64().unwrap())
                    .collect();
                assert_eq!(block_hashes, &want_hashes);
                assert_eq!(*parent_block_hash, want["parent_block_hash"].as_u64());
                assert_eq!(token_ids.len(), want["token_ids"].as_array().unwrap().len());
                assert_eq!(token_ids[0] as u64, want["token_ids"][0].as_u64().unwrap());
                assert_eq!(*block_size, 128);
                assert_eq!(token_ids.len(), block_hashes.len() * 128);
                assert_eq!(medium.as_deref(), Some("GPU"));
            }
            // The encoder writes what vLLM wrote, byte for byte.
            assert_eq!(encode_batch(&message.batch), parts[2], "msg-{i:03}");
        }
    }

    #[test]
    fn the_older_array_layout_and_unknown_fields_and_types() {
        use rmpv::Value as V;
        let stored = V::Array(vec![
            V::from("BlockStored"),
            V::Array(vec![V::from(7u64), V::from(-3i64)]),
            V::from(5u64),
            V::Array((0..8u64).map(V::from).collect()),
            V::from(4u64),
            V::Nil,
        ]);
        let removed = V::Array(vec![V::from("BlockRemoved"), V::Array(vec![V::from(7u64)])]);
        let future = V::Map(vec![
            (V::from("type"), V::from("BlockMoved")),
            (V::from("block_hashes"), V::Array(vec![])),
        ]);
        let extra = V::Map(vec![
            (V::from("type"), V::from("BlockRemoved")),
            (V::from("somefield"), V::from(1)),
            (
                V::from("block_hashes"),
                V::Array(vec![V::Binary(vec![1, 2, 3])]),
            ),
        ]);
        let batch = V::Array(vec![
            V::F64(1.5),
            V::Array(vec![
                stored,
                removed,
                future,
                extra,
                V::Array(vec![V::from("AllBlocksCleared")]),
            ]),
        ]);
        let mut bytes = Vec::new();
        rmpv::encode::write_value(&mut bytes, &batch).unwrap();
        let decoded = decode_batch(&bytes).unwrap();
        assert_eq!(
            decoded.data_parallel_rank, None,
            "two-field batches have no rank"
        );
        assert_eq!(
            decoded.events,
            vec![
                Event::BlockStored {
                    block_hashes: vec![7, (-3i64) as u64],
                    parent_block_hash: Some(5),
                    token_ids: (0..8).collect(),
                    block_size: 4,
                    lora_id: None,
                    medium: None,
                    lora_name: None,
                },
                Event::BlockRemoved {
                    block_hashes: vec![7],
                    medium: None
                },
                Event::BlockRemoved {
                    block_hashes: vec![xxhash_rust::xxh3::xxh3_64(&[1, 2, 3])],
                    medium: None
                },
                Event::AllBlocksCleared,
            ]
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode_batch(b"").is_err());
        assert!(decode_batch(&[0x93, 0xcb]).is_err());
        assert!(
            decode_batch(&[0x92, 0x01, 0x02]).is_err(),
            "events not a list"
        );
        assert!(decode_batch(&[0x91, 0x01, 0x01]).is_err(), "trailing bytes");
        // 100 nested arrays: past the depth limit.
        let deep = [vec![0x91u8; 100], vec![0xc0]].concat();
        assert!(decode_batch(&deep).is_err());
        // A huge claimed length with no items behind it.
        assert!(decode_batch(&[0xdd, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(decode_message(&[b"kv", b"short", b"\x90"]).is_err());
        assert!(decode_message(&[b"kv"]).is_err());
    }

    #[test]
    fn replay_frames_and_their_end() {
        assert_eq!(replay_request(5)[1], 5u64.to_be_bytes());
        let parts = captured("msg-000.bin");
        let seq = 9u64.to_be_bytes();
        let frame = decode_replay_frame(&[b"", &seq, &parts[2]]).unwrap();
        assert_eq!(frame.map(|(s, b)| (s, b.events.len())), Some((9, 1)));
        assert_eq!(decode_replay_frame(&[b"", &seq, b""]).unwrap(), None);
    }
}
