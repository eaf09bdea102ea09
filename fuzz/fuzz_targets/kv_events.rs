//! A KV cache event payload as a server's publisher sends it: never a panic, and what decodes
//! re-encodes (in vLLM 0.32's layout) to bytes that decode to the same events.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mvllm::kv_events::wire::{decode_batch, decode_message, encode_batch};

fuzz_target!(|data: &[u8]| {
    if let Ok(batch) = decode_batch(data) {
        let again = decode_batch(&encode_batch(&batch)).expect("our own encoding decodes");
        assert_eq!(again.events, batch.events);
        assert_eq!(again.data_parallel_rank, batch.data_parallel_rank);
    }
    // The same bytes split as a message's parts.
    let (a, rest) = data.split_at(data.len().min(2));
    let (b, c) = rest.split_at(rest.len().min(8));
    let _ = decode_message(&[a, b, c]);
});
