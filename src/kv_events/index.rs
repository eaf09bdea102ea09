//! One engine's prefix cache, as its KV cache events describe it: which full blocks of tokens
//! it holds, and so how long a prefix of a new prompt it already has.
//!
//! Blocks are keyed by the router's own chained hash of their token ids (each block's hash
//! seeds the next one's), not by vLLM's block hashes: those depend on a per-process seed
//! (`PYTHONHASHSEED`, the hash algorithm), so they mean nothing outside the server and change
//! when it restarts. vLLM's hash of each stored block is kept only to find the block again when
//! a `BlockRemoved` names it, and to chain a `BlockStored` onto its parent block.
//!
//! The memory is bounded: past `budget` bytes new blocks are not recorded (counted in
//! `dropped`), so the index under-states what the server holds rather than growing; the server
//! evicts by itself and says so, which frees room again.

use std::collections::HashMap;

use nohash_hasher::BuildNoHashHasher;
use xxhash_rust::xxh3::Xxh3;

use super::wire::{BlockHash, Event};

/// What one recorded block costs: two hash-map entries (8 + 8 and 8 + 4 bytes) with the maps'
/// control bytes and spare capacity.
pub const BYTES_PER_BLOCK: usize = 64;

/// The seed of a prompt's first block: a constant, or the LoRA adapter's name (vLLM keys an
/// adapter's blocks apart from the base model's).
fn first_seed(lora: Option<&str>) -> u64 {
    match lora {
        None => 0x6d76_6c6c_6d5f_6b76, // "mvllm_kv"
        Some(name) => xxhash_rust::xxh3::xxh3_64(name.as_bytes()),
    }
}

/// The router's hash of a block: its tokens, chained onto the hash of the block before.
pub fn chain(previous: u64, tokens: &[u32]) -> u64 {
    // The tokens' little-endian bytes, fed 64 tokens at a time (one update per token costs
    // three times as much).
    let mut hasher = Xxh3::with_seed(previous);
    let mut bytes = [0u8; 256];
    for group in tokens.chunks(64) {
        for (slot, token) in bytes.chunks_exact_mut(4).zip(group) {
            slot.copy_from_slice(&token.to_le_bytes());
        }
        hasher.update(&bytes[..group.len() * 4]);
    }
    hasher.digest()
}

/// What applying an event did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    pub stored: usize,
    pub removed: usize,
    /// Blocks whose parent block is not in the index (an event was missed): not recorded.
    pub orphaned: usize,
    /// Blocks not recorded for the memory budget.
    pub dropped: usize,
    pub cleared: bool,
}

/// One engine's cached blocks.
#[derive(Debug)]
pub struct CacheIndex {
    /// Tokens per block, from the events (vLLM's `--block-size`).
    block_size: Option<usize>,
    /// vLLM's hash of each recorded block → the router's.
    by_vllm: HashMap<BlockHash, u64, BuildNoHashHasher<u64>>,
    /// The router's hash of each recorded block → how many of vLLM's blocks have it (the same
    /// tokens can be cached twice, e.g. with different multimodal inputs).
    blocks: HashMap<u64, u32, BuildNoHashHasher<u64>>,
    max_blocks: usize,
    /// Blocks not recorded for the budget, since the start.
    pub dropped: u64,
}

impl CacheIndex {
    /// An empty index holding at most `budget` bytes.
    pub fn new(budget: usize) -> CacheIndex {
        CacheIndex {
            block_size: None,
            by_vllm: HashMap::default(),
            blocks: HashMap::default(),
            max_blocks: budget / BYTES_PER_BLOCK,
            dropped: 0,
        }
    }

    /// Changes the budget (a reload); blocks already recorded past it stay until removed.
    pub fn set_budget(&mut self, budget: usize) {
        self.max_blocks = budget / BYTES_PER_BLOCK;
    }

    /// The budget, in bytes.
    pub fn budget(&self) -> usize {
        self.max_blocks * BYTES_PER_BLOCK
    }

    /// Blocks recorded.
    pub fn len(&self) -> usize {
        self.by_vllm.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_vllm.is_empty()
    }

    /// What the index takes, by the same count as the budget.
    pub fn bytes(&self) -> usize {
        self.len() * BYTES_PER_BLOCK
    }

    pub fn block_size(&self) -> Option<usize> {
        self.block_size
    }

    /// Forgets everything (the server cleared its cache, restarted, or its events were lost).
    pub fn clear(&mut self) {
        self.by_vllm.clear();
        self.blocks.clear();
    }

    /// Applies one event.
    pub fn apply(&mut self, event: &Event) -> Applied {
        let mut applied = Applied::default();
        match event {
            Event::BlockStored {
                block_hashes,
                parent_block_hash,
                token_ids,
                block_size,
                lora_id,
                lora_name,
                ..
            } => {
                let size = *block_size as usize;
                if size == 0 || token_ids.len() < block_hashes.len() * size {
                    applied.orphaned = block_hashes.len();
                    return applied;
                }
                self.block_size = Some(size);
                let lora = lora_name
                    .clone()
                    .or_else(|| lora_id.map(|id| id.to_string()));
                let mut previous = match parent_block_hash {
                    None => first_seed(lora.as_deref()),
                    Some(parent) => match self.by_vllm.get(parent) {
                        Some(ours) => *ours,
                        None => {
                            applied.orphaned = block_hashes.len();
                            return applied;
                        }
                    },
                };
                for (hash, tokens) in block_hashes.iter().zip(token_ids.chunks_exact(size)) {
                    let ours = chain(previous, tokens);
                    previous = ours;
                    if self.by_vllm.contains_key(hash) {
                        continue;
                    }
                    if self.by_vllm.len() >= self.max_blocks {
                        applied.dropped += 1;
                        self.dropped += 1;
                        continue;
                    }
                    self.by_vllm.insert(*hash, ours);
                    *self.blocks.entry(ours).or_insert(0) += 1;
                    applied.stored += 1;
                }
            }
            Event::BlockRemoved { block_hashes, .. } => {
                for hash in block_hashes {
                    let Some(ours) = self.by_vllm.remove(hash) else {
                        continue;
                    };
                    applied.removed += 1;
                    if let Some(count) = self.blocks.get_mut(&ours) {
                        *count -= 1;
                        if *count == 0 {
                            self.blocks.remove(&ours);
                        }
                    }
                }
            }
            Event::AllBlocksCleared => {
                self.clear();
                applied.cleared = true;
            }
        }
        applied
    }

    /// How many leading tokens of `tokens` the engine has cached: whole blocks, as long as
    /// each block and all before it are cached. `lora` names the adapter the request uses.
    pub fn cached_prefix(&self, tokens: &[u32], lora: Option<&str>) -> usize {
        let Some(size) = self.block_size else {
            return 0;
        };
        let mut previous = first_seed(lora);
        let mut cached = 0;
        for block in tokens.chunks_exact(size) {
            let ours = chain(previous, block);
            if !self.blocks.contains_key(&ours) {
                break;
            }
            cached += size;
            previous = ours;
        }
        cached
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv_events::wire::decode_batch;
    use crate::kv_events::wire::tests::{captured, CAPTURE};

    fn tokens(name: &str) -> Vec<u32> {
        let text = std::fs::read_to_string(format!("{CAPTURE}/{name}")).unwrap();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        value["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap() as u32)
            .collect()
    }

    /// The captured batches' events, in order.
    fn captured_events() -> Vec<Event> {
        (0..2)
            .flat_map(|i| {
                let parts = captured(&format!("msg-{i:03}.bin"));
                decode_batch(&parts[2]).unwrap().events
            })
            .collect()
    }

    fn stored(hashes: &[u64], parent: Option<u64>, tokens: &[u32], size: u32) -> Event {
        Event::BlockStored {
            block_hashes: hashes.to_vec(),
            parent_block_hash: parent,
            token_ids: tokens.to_vec(),
            block_size: size,
            lora_id: None,
            medium: None,
            lora_name: None,
        }
    }

    #[test]
    fn a_real_servers_events_tell_the_prefix_its_prompts_find() {
        let (prompt, chat) = (
            tokens("tokenize-prompt0.json"),
            tokens("tokenize-chat.json"),
        );
        let mut index = CacheIndex::new(1 << 20);
        assert_eq!(
            index.cached_prefix(&prompt, None),
            0,
            "nothing before the events"
        );
        let events = captured_events();
        index.apply(&events[0]);
        // The first completion (245 tokens) left one full block of 128.
        assert_eq!(index.cached_prefix(&prompt, None), 128);
        assert_eq!(
            index.cached_prefix(&chat, None),
            0,
            "the chat starts differently"
        );
        index.apply(&events[1]);
        // The chat (258 tokens, its template around the same text) left two.
        assert_eq!(index.cached_prefix(&chat, None), 256);
        assert_eq!(index.cached_prefix(&prompt, None), 128);
        assert_eq!(index.cached_prefix(&chat, Some("an-adapter")), 0);
        assert_eq!(index.len(), 3);
        assert_eq!(index.block_size(), Some(128));
    }

    #[test]
    fn removals_chains_clears_and_the_budget() {
        let t: Vec<u32> = (0..12).collect();
        let mut index = CacheIndex::new(1 << 20);
        // Blocks of 4: two stored, then a third chained onto the second.
        assert_eq!(index.apply(&stored(&[10, 11], None, &t[..8], 4)).stored, 2);
        assert_eq!(index.apply(&stored(&[12], Some(11), &t[8..], 4)).stored, 1);
        assert_eq!(index.cached_prefix(&t, None), 12);
        assert_eq!(index.cached_prefix(&t[..10], None), 8, "whole blocks only");
        // The middle block evicted: the prefix stops before it.
        let removed = index.apply(&Event::BlockRemoved {
            block_hashes: vec![11, 999],
            medium: None,
        });
        assert_eq!(removed.removed, 1);
        assert_eq!(index.cached_prefix(&t, None), 4);
        // A block whose parent is unknown (an event was missed) is not recorded.
        let orphan = index.apply(&stored(&[20], Some(777), &t[..4], 4));
        assert_eq!((orphan.stored, orphan.orphaned), (0, 1));
        assert!(index.apply(&Event::AllBlocksCleared).cleared);
        assert!(index.is_empty());
        assert_eq!(index.cached_prefix(&t, None), 0);

        // Room for two blocks: the third is dropped and counted.
        let mut small = CacheIndex::new(2 * BYTES_PER_BLOCK);
        let applied = small.apply(&stored(&[1, 2, 3], None, &t, 4));
        assert_eq!((applied.stored, applied.dropped), (2, 1));
        assert_eq!(small.bytes(), 2 * BYTES_PER_BLOCK);
        assert_eq!(small.cached_prefix(&t, None), 8);
    }

    #[test]
    fn the_same_tokens_cached_twice_survive_one_removal() {
        let t: Vec<u32> = (0..4).collect();
        let mut index = CacheIndex::new(1 << 20);
        index.apply(&stored(&[1], None, &t, 4));
        index.apply(&stored(&[2], None, &t, 4));
        index.apply(&Event::BlockRemoved {
            block_hashes: vec![1],
            medium: None,
        });
        assert_eq!(index.cached_prefix(&t, None), 4);
        index.apply(&Event::BlockRemoved {
            block_hashes: vec![2],
            medium: None,
        });
        assert_eq!(index.cached_prefix(&t, None), 0);
    }

    #[test]
    fn short_or_inconsistent_events_are_refused_not_a_panic() {
        let mut index = CacheIndex::new(1 << 20);
        let short = index.apply(&stored(&[1, 2], None, &[1, 2, 3], 4));
        assert_eq!(short.orphaned, 2);
        let zero = index.apply(&stored(&[1], None, &[], 0));
        assert_eq!(zero.orphaned, 1);
        assert!(index.is_empty());
    }
}
