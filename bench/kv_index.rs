//! What the KV-event index costs (issue 13): applying a `BlockStored` event, and finding how
//! much of a prompt a server has cached.
//!
//!   cargo bench --bench kv_index
//!
//! An index holding 100,000 blocks of 16 tokens (1.6M cached tokens, about vLLM's default on
//! one large GPU); lookups of an 8,192-token prompt (512 blocks) that is fully cached, and of
//! one whose first block is not; and storing 512 blocks as one event. Baseline: hashing the
//! prompt's blocks alone, which every lookup does.
#[path = "timing.rs"]
mod timing;

use std::hint::black_box;

use mvllm::kv_events::index::{chain, CacheIndex};
use mvllm::kv_events::wire::Event;
use timing::time_per_call;

const BLOCK: usize = 16;

fn stored(first_hash: u64, tokens: &[u32]) -> Event {
    let blocks = tokens.len() / BLOCK;
    Event::BlockStored {
        block_hashes: (first_hash..first_hash + blocks as u64).collect(),
        parent_block_hash: None,
        token_ids: tokens.to_vec(),
        block_size: BLOCK as u32,
        lora_id: None,
        medium: None,
        lora_name: None,
    }
}

fn main() {
    let mut index = CacheIndex::new(64 << 20);
    // 195 other prompts of 512 blocks (~100,000 blocks), then the one looked up.
    for p in 0..195u32 {
        let tokens: Vec<u32> = (0..8192).map(|t| t * 7 + p * 100_003).collect();
        index.apply(&stored(u64::from(p) << 20, &tokens));
    }
    let prompt: Vec<u32> = (0..8192).map(|t| t * 13 + 1).collect();
    index.apply(&stored(u64::MAX / 2, &prompt));
    let mut other = prompt.clone();
    other[0] += 1;
    println!(
        "index: {} blocks, {} MiB by its own count",
        index.len(),
        index.bytes() >> 20
    );

    let hash_only = time_per_call(2_000, || {
        let mut h = 0;
        for block in black_box(&prompt).chunks_exact(BLOCK) {
            h = chain(h, block);
        }
        black_box(h);
    });
    let hit = time_per_call(2_000, || {
        black_box(index.cached_prefix(black_box(&prompt), None));
    });
    let miss = time_per_call(2_000, || {
        black_box(index.cached_prefix(black_box(&other), None));
    });
    assert_eq!(index.cached_prefix(&prompt, None), 8192);
    assert_eq!(index.cached_prefix(&other, None), 0);
    let event = stored(1 << 62, &other);
    let mut scratch = CacheIndex::new(64 << 20);
    let store = time_per_call(200, || {
        scratch.apply(black_box(&event));
        scratch.clear();
    });
    println!("hashing 512 blocks (baseline)      {hash_only:>10.2?}");
    println!("cached_prefix, 8,192 tokens cached {hit:>10.2?}");
    println!("cached_prefix, first block missing {miss:>10.2?}");
    println!("apply BlockStored of 512 blocks    {store:>10.2?} (clear included)");
}
