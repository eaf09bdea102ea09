//! The simulated GPU KV cache: fixed-size blocks, reference counts, and prefix caching.
//!
//! Like vLLM's automatic prefix caching, every *full* block of a prompt is named by a chained
//! hash of its tokens (block i's hash covers block i-1's hash and block i's tokens), so two
//! prompts that share a prefix share the blocks of that prefix. A block whose last user finished
//! keeps its content and stays findable by hash until its space is needed; then the least
//! recently released one is evicted first.
//!
//! Blocks are reserved for the whole request (prompt + every output token) when it is admitted,
//! so the simulation never has to preempt a running request.

use std::collections::{BTreeSet, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};

use crate::kv_events::wire::Event;

/// Index of a block in the cache.
pub type BlockId = u32;

/// The hashes of a prompt's full blocks, in order; each one covers everything before it.
pub fn prefix_block_hashes(tokens: &[u32], block_size: usize) -> Vec<u64> {
    let mut parent = 0u64;
    tokens
        .chunks_exact(block_size)
        .map(|block| {
            let mut hasher = DefaultHasher::new();
            parent.hash(&mut hasher);
            block.hash(&mut hasher);
            parent = hasher.finish();
            parent
        })
        .collect()
}

#[derive(Debug, Clone, Copy, Default)]
struct Block {
    ref_count: u32,
    /// Set while the block holds a full prompt block that others may reuse.
    hash: Option<u64>,
    /// When it was last released (for LRU eviction).
    released_at: u64,
}

/// What an admitted request got from the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    pub blocks: Vec<BlockId>,
    /// Prompt tokens whose KV was already cached (their prefill is skipped).
    pub cached_tokens: usize,
}

#[derive(Debug)]
pub struct KvCache {
    block_size: usize,
    blocks: Vec<Block>,
    /// Unused blocks holding nothing worth keeping.
    empty: Vec<BlockId>,
    /// Unused blocks that still hold a cached prefix, oldest release first.
    evictable: BTreeSet<(u64, BlockId)>,
    by_hash: HashMap<u64, BlockId>,
    clock: u64,
    in_use: usize,
    /// With KV cache events on: what changed since the engine last took them, as vLLM reports
    /// it (blocks stored with their tokens, blocks evicted, the cache cleared).
    events: Option<Vec<Event>>,
}

impl KvCache {
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        assert!(block_size > 0, "block size is validated at start-up");
        KvCache {
            block_size,
            blocks: vec![Block::default(); num_blocks],
            // Popped from the end: hand out low block ids first.
            empty: (0..num_blocks as BlockId).rev().collect(),
            evictable: BTreeSet::new(),
            by_hash: HashMap::new(),
            clock: 0,
            in_use: 0,
            events: None,
        }
    }

    /// Turns KV cache events on: from now on every stored and evicted block is reported.
    pub fn record_events(&mut self) {
        self.events.get_or_insert_with(Vec::new);
    }

    /// The events since the last call (none when events are off).
    pub fn take_events(&mut self) -> Vec<Event> {
        self.events.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Forgets every cached prefix (vLLM's `reset_prefix_cache`). Refused (false) while a
    /// request holds blocks, as vLLM refuses it.
    pub fn reset_prefix_cache(&mut self) -> bool {
        if self.in_use > 0 {
            return false;
        }
        for (_, id) in std::mem::take(&mut self.evictable) {
            self.blocks[id as usize].hash = None;
            self.empty.push(id);
        }
        self.by_hash.clear();
        if let Some(events) = &mut self.events {
            events.push(Event::AllBlocksCleared);
        }
        true
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Blocks referenced by at least one request.
    pub fn blocks_in_use(&self) -> usize {
        self.in_use
    }

    /// Fraction of blocks in use, 0.0..=1.0 (`vllm:kv_cache_usage_perc`).
    pub fn usage(&self) -> f64 {
        if self.blocks.is_empty() {
            return 0.0;
        }
        self.in_use as f64 / self.blocks.len() as f64
    }

    /// Blocks needed to hold `tokens` tokens.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_size)
    }

    /// How many leading prompt blocks are cached, keeping at least one prompt token to compute
    /// (as vLLM does: the last token's logits are needed to sample the first output token).
    fn cached_prefix_len(&self, prompt_hashes: &[u64], prompt_len: usize) -> usize {
        let mut hits = prompt_hashes
            .iter()
            .take_while(|h| self.by_hash.contains_key(h))
            .count();
        if hits > 0 && hits * self.block_size >= prompt_len {
            hits -= 1;
        }
        hits
    }

    /// Reserves blocks for a request of `total_tokens` tokens whose prompt has `prompt_len`
    /// tokens and full-block hashes `prompt_hashes` (`prompt_tokens` are its tokens, for the
    /// events). Returns `None`, changing nothing, when the free space (empty plus evictable
    /// blocks) is too small.
    pub fn allocate(
        &mut self,
        prompt_hashes: &[u64],
        prompt_tokens: &[u32],
        prompt_len: usize,
        total_tokens: usize,
    ) -> Option<Allocation> {
        let hits = self.cached_prefix_len(prompt_hashes, prompt_len);
        let needed = self.blocks_for(total_tokens).max(hits);
        let new_blocks = needed - hits;
        let hit_ids: Vec<BlockId> = prompt_hashes[..hits]
            .iter()
            .map(|h| self.by_hash[h])
            .collect();
        // Cached blocks nobody uses sit in `evictable`; reusing them takes them out of it.
        let revived = hit_ids
            .iter()
            .filter(|&&id| self.blocks[id as usize].ref_count == 0)
            .count();
        if new_blocks > self.empty.len() + self.evictable.len() - revived {
            return None;
        }

        let mut blocks = Vec::with_capacity(needed);
        for id in hit_ids {
            self.take_ref(id);
            blocks.push(id);
        }
        for index in hits..needed {
            let id = self.take_free_block();
            // Newly computed full prompt blocks become findable by later prompts.
            if let Some(&hash) = prompt_hashes.get(index) {
                if let std::collections::hash_map::Entry::Vacant(slot) = self.by_hash.entry(hash) {
                    slot.insert(id);
                    self.blocks[id as usize].hash = Some(hash);
                    self.stored(prompt_hashes, prompt_tokens, index);
                }
            }
            self.take_ref(id);
            blocks.push(id);
        }
        Some(Allocation {
            blocks,
            cached_tokens: hits * self.block_size,
        })
    }

    /// Gives back a request's blocks. The tail is released first, so it is evicted first.
    pub fn release(&mut self, blocks: &[BlockId]) {
        for &id in blocks.iter().rev() {
            let block = &mut self.blocks[id as usize];
            debug_assert!(block.ref_count > 0, "block {id} released twice");
            block.ref_count = block.ref_count.saturating_sub(1);
            if block.ref_count > 0 {
                continue;
            }
            self.in_use -= 1;
            self.clock += 1;
            block.released_at = self.clock;
            if block.hash.is_some() {
                self.evictable.insert((self.clock, id));
            } else {
                self.empty.push(id);
            }
        }
    }

    fn take_ref(&mut self, id: BlockId) {
        let block = &mut self.blocks[id as usize];
        if block.ref_count == 0 {
            self.in_use += 1;
            if block.hash.is_some() {
                self.evictable.remove(&(block.released_at, id));
            }
        }
        block.ref_count += 1;
    }

    /// An unreferenced block: an empty one if any, else the least recently released cached one.
    fn take_free_block(&mut self) -> BlockId {
        if let Some(id) = self.empty.pop() {
            return id;
        }
        let (_, id) = self
            .evictable
            .pop_first()
            .expect("allocate() checked there is a free block");
        if let Some(hash) = self.blocks[id as usize].hash.take() {
            self.by_hash.remove(&hash);
            if let Some(events) = &mut self.events {
                match events.last_mut() {
                    Some(Event::BlockRemoved { block_hashes, .. }) => block_hashes.push(hash),
                    _ => events.push(Event::BlockRemoved {
                        block_hashes: vec![hash],
                        medium: Some("GPU".into()),
                    }),
                }
            }
        }
        id
    }

    /// Reports prompt block `index` as stored: appended to the `BlockStored` just before it
    /// when that one ends with the block's parent (one event per run of blocks, as vLLM sends).
    fn stored(&mut self, hashes: &[u64], tokens: &[u32], index: usize) {
        let Some(events) = &mut self.events else {
            return;
        };
        let size = self.block_size;
        let block_tokens = tokens.get(index * size..(index + 1) * size).unwrap_or(&[]);
        let parent = index.checked_sub(1).map(|i| hashes[i]);
        if let Some(Event::BlockStored {
            block_hashes,
            token_ids,
            ..
        }) = events.last_mut()
        {
            if parent.is_some() && block_hashes.last() == parent.as_ref() {
                block_hashes.push(hashes[index]);
                token_ids.extend_from_slice(block_tokens);
                return;
            }
        }
        events.push(Event::BlockStored {
            block_hashes: vec![hashes[index]],
            parent_block_hash: parent,
            token_ids: block_tokens.to_vec(),
            block_size: size as u32,
            lora_id: None,
            medium: Some("GPU".into()),
            lora_name: None,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt(seed: u32, len: usize) -> Vec<u32> {
        (0..len as u32).map(|i| seed * 100_000 + i).collect()
    }

    #[test]
    fn chained_hashes_depend_on_everything_before() {
        let a = prefix_block_hashes(&[1, 2, 3, 4, 5, 6, 7, 8, 9], 4);
        let b = prefix_block_hashes(&[0, 2, 3, 4, 5, 6, 7, 8], 4);
        assert_eq!(a.len(), 2, "only full blocks are hashed");
        assert_ne!(
            a[1], b[1],
            "same tokens after a different prefix hash differently"
        );
    }

    #[test]
    fn shared_prefix_is_reused_and_counted_once() {
        let mut kv = KvCache::new(10, 4);
        let p = prompt(1, 8);
        let h = prefix_block_hashes(&p, 4);
        let first = kv.allocate(&h, &[], 8, 12).unwrap();
        assert_eq!(first.cached_tokens, 0);
        assert_eq!(kv.blocks_in_use(), 3);

        let mut longer = p.clone();
        longer.extend([7, 7, 7, 7]);
        let h2 = prefix_block_hashes(&longer, 4);
        let second = kv.allocate(&h2, &[], 12, 16).unwrap();
        assert_eq!(second.cached_tokens, 8);
        assert_eq!(&second.blocks[..2], &first.blocks[..2]);
        assert_eq!(kv.blocks_in_use(), 5, "two shared blocks plus two new ones");
    }

    #[test]
    fn fully_cached_prompt_still_computes_its_last_block() {
        let mut kv = KvCache::new(10, 4);
        let p = prompt(2, 8);
        let h = prefix_block_hashes(&p, 4);
        let a = kv.allocate(&h, &[], 8, 9).unwrap();
        kv.release(&a.blocks);
        let b = kv.allocate(&h, &[], 8, 9).unwrap();
        assert_eq!(b.cached_tokens, 4);
    }

    #[test]
    fn refuses_without_changing_anything_when_full() {
        let mut kv = KvCache::new(3, 4);
        let a = kv.allocate(&[], &[], 0, 8).unwrap();
        assert!(kv.allocate(&[], &[], 0, 8).is_none());
        assert_eq!(kv.blocks_in_use(), 2);
        kv.release(&a.blocks);
        assert_eq!(kv.blocks_in_use(), 0);
        assert!(kv.allocate(&[], &[], 0, 12).is_some());
    }

    #[test]
    fn evicts_least_recently_released_prefix_first() {
        let mut kv = KvCache::new(4, 4);
        let (pa, pb) = (prompt(1, 8), prompt(2, 8));
        let (ha, hb) = (prefix_block_hashes(&pa, 4), prefix_block_hashes(&pb, 4));
        let a = kv.allocate(&ha, &[], 8, 8).unwrap();
        kv.release(&a.blocks);
        let b = kv.allocate(&hb, &[], 8, 8).unwrap();
        kv.release(&b.blocks);
        assert_eq!(kv.blocks_in_use(), 0);

        // Two new blocks must come from the cached ones: A's were released first.
        let c = kv.allocate(&[], &[], 0, 8).unwrap();
        kv.release(&c.blocks);
        let b_again = kv.allocate(&hb, &[], 8, 9).unwrap();
        assert_eq!(b_again.cached_tokens, 4, "B's prefix survived");
        kv.release(&b_again.blocks);
        let a_again = kv.allocate(&ha, &[], 8, 8).unwrap();
        assert_eq!(a_again.cached_tokens, 0, "A's prefix was evicted");
    }

    #[test]
    fn reviving_an_evictable_block_counts_against_free_space() {
        let mut kv = KvCache::new(2, 4);
        let p = prompt(3, 8);
        let h = prefix_block_hashes(&p, 4);
        let a = kv.allocate(&h, &[], 8, 8).unwrap();
        kv.release(&a.blocks);
        // Needs 3 blocks: 1 cached hit (revived from evictable) + 2 new; only 1 other is free.
        assert!(kv.allocate(&h, &[], 8, 12).is_none());
        assert_eq!(kv.blocks_in_use(), 0);
        assert!(kv.allocate(&h, &[], 8, 8).is_some());
    }

    #[test]
    fn events_report_stored_runs_evictions_and_resets() {
        let mut kv = KvCache::new(3, 4);
        kv.record_events();
        let tokens: Vec<u32> = (1..=9).collect();
        let h = prefix_block_hashes(&tokens, 4);
        let a = kv.allocate(&h, &tokens, 9, 9).unwrap();
        let events = kv.take_events();
        assert_eq!(
            events,
            vec![Event::BlockStored {
                block_hashes: h.clone(),
                parent_block_hash: None,
                token_ids: tokens[..8].to_vec(),
                block_size: 4,
                lora_id: None,
                medium: Some("GPU".into()),
                lora_name: None,
            }],
            "one event for the run of full blocks; the partial third block is not cached"
        );
        kv.release(&a.blocks);
        // A prompt of other tokens needs every block: both cached ones are evicted.
        let other: Vec<u32> = (100..108).collect();
        let ho = prefix_block_hashes(&other, 4);
        let b = kv.allocate(&ho, &other, 8, 12).unwrap();
        // Each eviction is reported before the block is filled again.
        let mut removed = Vec::new();
        let mut stored = Vec::new();
        for event in kv.take_events() {
            match event {
                Event::BlockRemoved { block_hashes, .. } => removed.extend(block_hashes),
                Event::BlockStored { block_hashes, .. } => stored.extend(block_hashes),
                Event::AllBlocksCleared => panic!("no reset here"),
            }
        }
        removed.sort_unstable();
        let mut old = h.clone();
        old.sort_unstable();
        assert_eq!(removed, old);
        assert_eq!(stored, ho);
        assert!(!kv.reset_prefix_cache(), "refused while blocks are in use");
        kv.release(&b.blocks);
        assert!(kv.reset_prefix_cache());
        assert_eq!(kv.take_events(), vec![Event::AllBlocksCleared]);
        assert_eq!(kv.allocate(&ho, &other, 8, 8).unwrap().cached_tokens, 0);
    }
}
