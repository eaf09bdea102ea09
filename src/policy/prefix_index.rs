//! The cache-aware policy's memory of which server has which prompt prefix in its KV cache.
//!
//! A prompt is cut into fixed-size chunks of its bytes as sent (for chat, the whole `messages`
//! list in order); chunk i is named by a hash chained over the model and every chunk before it,
//! so one hash stands for a whole prefix, as vLLM names its KV blocks. The index maps each
//! chunk hash to the servers it was sent to. A request's match on a server is how many of its
//! leading chunks that server holds.
//!
//! It follows each server's own cache turnover: per server, an LRU list of its chunks, at most
//! as many as the server's KV cache holds (its `cache_config_info`, shrunk when the server's
//! own prefix-cache hits fall short of what the index predicted), and none older than the idle
//! limit. A server whose prefix-cache counters go back to zero restarted with an empty cache:
//! its chunks are forgotten. On top, a hard memory budget over everything: past it, the server
//! with the most chunks loses its oldest.
//!
//! Touching a chunk moves it to the back of its server's list lazily: a new record is appended
//! and the old one is skipped when it reaches the front (its sequence number is stale). The
//! lists are compacted when stale records outnumber live ones, so memory stays bounded.

use std::collections::{HashMap, VecDeque};
use std::mem::size_of;
use std::time::{Duration, Instant};

use nohash_hasher::BuildNoHashHasher;
use smallvec::SmallVec;
use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// Bytes of prompt per chunk: about 64 tokens, four of vLLM's default KV blocks.
pub const CHUNK_BYTES: usize = 256;

/// Bytes of prompt text per token, roughly, for English text and JSON around it.
pub const BYTES_PER_TOKEN: usize = 4;

/// The most memory one (chunk, server) pair can take, all structures counted at their worst:
/// its map slot and control byte (a map's buckets are a power of two, at most 7/8 full: up to
/// 16/7 slots per entry), up to four list records (stale ones, and a list's doubling growth)
/// and two holders' worth of a spilled holder list.
const WORST_BYTES_PER_PAIR: usize =
    (size_of::<(u64, Holders)>() + 1) * 16 / 7 + 4 * size_of::<Record>() + 2 * size_of::<Holder>();

/// The chained hashes of `prompt`'s full chunks for `model`; the last, partial chunk is not
/// named (like vLLM's partial blocks, it is not shared).
pub fn chunk_hashes(model: &str, prompt: &[u8]) -> Vec<u64> {
    let mut parent = xxh3_64(model.as_bytes());
    prompt
        .chunks_exact(CHUNK_BYTES)
        .map(|chunk| {
            // The chunk's own hash, then that chained onto the prefix's. (Seeding the chunk's
            // hash with the parent directly would make xxh3 derive a new 192-byte secret for
            // every chunk longer than 240 bytes: a third of the time of a 100 KB prompt.)
            parent = xxh3_64_with_seed(&xxh3_64(chunk).to_le_bytes(), parent);
            parent
        })
        .collect()
}

/// One server holding one chunk, as of touch number `seq`.
#[derive(Debug, Clone, Copy)]
struct Holder {
    server: u32,
    seq: u64,
}

/// The servers holding a chunk, sorted by server id; most chunks have one or two.
type Holders = SmallVec<[Holder; 2]>;

/// A touch of a chunk on a server's list; stale when the holder's `seq` moved on.
#[derive(Debug, Clone, Copy)]
struct Record {
    hash: u64,
    seq: u64,
    /// Seconds since the index started.
    at: u32,
}

/// One server's part of the index.
#[derive(Debug, Default)]
struct ServerChunks {
    /// Touches, oldest first.
    order: VecDeque<Record>,
    /// Chunks it holds (live records).
    live: usize,
    /// Its last prefix-cache counters (queries, hits), to see turnover and restarts.
    counters: Option<(f64, f64)>,
    /// Prompt tokens sent to it since those counters, and how many the index expected to hit.
    sent_tokens: f64,
    expected_hits: f64,
    /// How much of its KV size really keeps prefixes, learned from its hit counters (0..=1).
    keep: f64,
}

/// Which servers hold which prompt prefixes. Not thread-safe; the policy locks it.
pub struct PrefixIndex {
    chunks: HashMap<u64, Holders, BuildNoHashHasher<u64>>,
    servers: HashMap<u32, ServerChunks, BuildNoHashHasher<u32>>,
    seq: u64,
    /// (chunk, server) pairs held.
    pairs: usize,
    max_pairs: usize,
    /// Bytes of list records (capacities) and of spilled holder lists, kept up to date.
    list_bytes: usize,
    spilled_bytes: usize,
    budget: usize,
    started: Instant,
    max_idle: Duration,
}

impl PrefixIndex {
    /// An index that never takes more than `budget` bytes and forgets chunks untouched for
    /// `max_idle`.
    pub fn new(budget: usize, max_idle: Duration) -> PrefixIndex {
        // The map is sized once, for the most pairs the budget allows, so it never doubles
        // past the budget; its control bytes are written now, the slots only when used.
        // A sixteenth is left for the per-server table.
        let max_pairs = (budget - budget / 16) / WORST_BYTES_PER_PAIR;
        let max_pairs = max_pairs.max(16);
        PrefixIndex {
            chunks: HashMap::with_capacity_and_hasher(max_pairs, Default::default()),
            servers: HashMap::default(),
            seq: 0,
            pairs: 0,
            max_pairs,
            list_bytes: 0,
            spilled_bytes: 0,
            budget,
            started: Instant::now(),
            max_idle,
        }
    }

    /// The budget, in bytes.
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Memory the index holds now, in bytes: every allocation it owns, at its capacity.
    pub fn bytes(&self) -> usize {
        // hashbrown: a power of two of buckets, at most 7/8 used, one control byte each plus
        // a group's worth at the end.
        fn map_bytes(capacity: usize, slot: usize) -> usize {
            if capacity == 0 {
                return 0;
            }
            (capacity * 8).div_ceil(7).next_power_of_two() * (slot + 1) + 16
        }
        map_bytes(self.chunks.capacity(), size_of::<(u64, Holders)>())
            + map_bytes(self.servers.capacity(), size_of::<(u32, ServerChunks)>())
            + self.list_bytes
            + self.spilled_bytes
    }

    /// (chunk, server) pairs held.
    pub fn pairs(&self) -> usize {
        self.pairs
    }

    /// For each server holding at least the first chunk: how many leading chunks of `hashes`
    /// it holds, sorted by server id.
    ///
    /// A server's chunks of one prompt are touched together, the first last, so what it holds
    /// of a prompt is a prefix: bisection finds each server's depth with O(log n) lookups per
    /// group of servers that share a depth, instead of walking every chunk.
    pub fn matched(&self, hashes: &[u64]) -> Vec<(u32, usize)> {
        let mut depths = Vec::new();
        let Some(first) = hashes.first().and_then(|h| self.chunks.get(h)) else {
            return depths;
        };
        let group: Vec<u32> = first.iter().map(|h| h.server).collect();
        self.bisect(hashes, group, 0, hashes.len(), &mut depths);
        depths.sort_unstable();
        depths
    }

    /// Every server of `group` holds chunk `held`; none is known to hold chunk `missing`.
    fn bisect(
        &self,
        hashes: &[u64],
        group: Vec<u32>,
        held: usize,
        missing: usize,
        depths: &mut Vec<(u32, usize)>,
    ) {
        if group.is_empty() {
            return;
        }
        if missing == held + 1 {
            depths.extend(group.into_iter().map(|s| (s, missing)));
            return;
        }
        let mid = held + (missing - held) / 2;
        let holders = self.chunks.get(&hashes[mid]);
        let (deeper, shallower): (Vec<u32>, Vec<u32>) = group.into_iter().partition(|s| {
            holders.is_some_and(|h| h.binary_search_by_key(s, |h| h.server).is_ok())
        });
        self.bisect(hashes, deeper, mid, missing, depths);
        self.bisect(hashes, shallower, held, mid, depths);
    }

    /// Notes that `hashes` (the chunks of a prompt of about `prompt_tokens` tokens) were sent
    /// to `server`, whose KV cache holds about `capacity` chunks (`None`: unknown).
    /// `expected_hits` is how many of the prompt's chunks the index expected the server to have.
    pub fn record(
        &mut self,
        server: u32,
        hashes: &[u64],
        prompt_tokens: f64,
        capacity: Option<usize>,
        expected_hits: usize,
    ) {
        // A prompt larger than the whole budget keeps its first chunks: the shared part.
        let hashes = &hashes[..hashes.len().min(self.max_pairs / 2)];
        let at = self.started.elapsed().as_secs() as u32;
        self.expire(server, at);
        // Room first, so the map never grows past the size it was made with.
        while self.pairs + hashes.len() > self.max_pairs {
            if !self.evict_from_largest() {
                break;
            }
        }
        let chunks = self.servers.entry(server).or_insert_with(|| ServerChunks {
            keep: 1.0,
            ..Default::default()
        });
        // The whole prompt, partial last chunk and short prompts included: the server's
        // prefix-cache queries count every prompt token, so the prediction must too.
        chunks.sent_tokens += prompt_tokens;
        chunks.expected_hits += (expected_hits * CHUNK_BYTES / BYTES_PER_TOKEN) as f64;
        let newer_half = match (chunks.order.front(), chunks.order.back()) {
            (Some(front), Some(back)) => front.seq + (back.seq - front.seq) / 2 + 1,
            _ => u64::MAX,
        };
        // The deepest chunk first: the first chunks, shared most, are the newest and go last.
        let mut touched = false;
        for &hash in hashes.iter().rev() {
            self.seq += 1;
            let holders = self.chunks.entry(hash).or_default();
            let before = heap_bytes(holders);
            match holders.binary_search_by_key(&server, |h| h.server) {
                // Already in the newer half of the server's list: close enough to the back
                // for LRU, and not touching it spares a record (a hot system prompt would
                // otherwise append one per chunk per request). Only while no deeper chunk
                // was touched: a prefix's head must never be older than its tail.
                Ok(i) if holders[i].seq >= newer_half && !touched => continue,
                Ok(i) => holders[i].seq = self.seq,
                Err(i) => {
                    holders.insert(
                        i,
                        Holder {
                            server,
                            seq: self.seq,
                        },
                    );
                    self.pairs += 1;
                    chunks.live += 1;
                }
            }
            self.spilled_bytes = self.spilled_bytes + heap_bytes(holders) - before;
            touched = true;
            let old_capacity = chunks.order.capacity();
            chunks.order.push_back(Record {
                hash,
                seq: self.seq,
                at,
            });
            self.list_bytes += (chunks.order.capacity() - old_capacity) * size_of::<Record>();
        }
        let limit = capacity.map(|c| ((c as f64 * chunks.keep) as usize).max(hashes.len()));
        while limit.is_some_and(|limit| self.server_live(server) > limit) {
            self.pop_oldest(server);
        }
        self.compact_if_stale(server);
        // The accounting is exact over what the index owns; this only trims if the constant
        // above ever understates a structure's slack.
        while self.bytes() > self.budget && self.evict_from_largest() {}
    }

    /// Takes a server's newest prefix-cache counters: a reset (the server restarted) forgets
    /// its chunks; hits short of what the index expected shrink how much of its KV size it
    /// is taken to keep, hits as expected let it grow back.
    pub fn observe_counters(&mut self, server: u32, queries: f64, hits: f64) {
        let Some(chunks) = self.servers.get_mut(&server) else {
            return;
        };
        let Some((last_queries, last_hits)) = chunks.counters.replace((queries, hits)) else {
            return;
        };
        if queries < last_queries || hits < last_hits {
            self.forget(server);
            return;
        }
        if queries == last_queries || chunks.sent_tokens < 1.0 {
            return;
        }
        // Hit rates over the same window: the server's, and the index's prediction.
        let seen = (hits - last_hits) / (queries - last_queries);
        let expected = chunks.expected_hits / chunks.sent_tokens;
        chunks.sent_tokens = 0.0;
        chunks.expected_hits = 0.0;
        if expected > 0.05 && seen < expected * 0.8 {
            chunks.keep = (chunks.keep * (seen / expected).max(0.5)).max(0.05);
        } else {
            chunks.keep = (chunks.keep * 1.1).min(1.0);
        }
    }

    /// Forgets everything about `server`.
    pub fn forget(&mut self, server: u32) {
        while self.pop_oldest(server) {}
        if let Some(mut chunks) = self.servers.remove(&server) {
            self.list_bytes -= chunks.order.capacity() * size_of::<Record>();
            chunks.order = VecDeque::new();
        }
    }

    fn server_live(&self, server: u32) -> usize {
        self.servers.get(&server).map_or(0, |c| c.live)
    }

    /// Drops the server's records older than the idle limit.
    fn expire(&mut self, server: u32, now: u32) {
        let limit = self.max_idle.as_secs().min(u64::from(u32::MAX)) as u32;
        while self
            .servers
            .get(&server)
            .and_then(|c| c.order.front())
            .is_some_and(|r| now.saturating_sub(r.at) > limit)
        {
            self.pop_oldest(server);
        }
    }

    /// Removes the server's oldest record, and its chunk if the record is live. False when
    /// the server has none.
    fn pop_oldest(&mut self, server: u32) -> bool {
        let Some(chunks) = self.servers.get_mut(&server) else {
            return false;
        };
        let Some(record) = chunks.order.pop_front() else {
            return false;
        };
        if let Some(holders) = self.chunks.get_mut(&record.hash) {
            if let Ok(i) = holders.binary_search_by_key(&server, |h| h.server) {
                if holders[i].seq == record.seq {
                    let before = heap_bytes(holders);
                    holders.remove(i);
                    self.spilled_bytes = self.spilled_bytes + heap_bytes(holders) - before;
                    if holders.is_empty() {
                        self.spilled_bytes -= heap_bytes(holders);
                        self.chunks.remove(&record.hash);
                    }
                    self.pairs -= 1;
                    chunks.live -= 1;
                }
            }
        }
        true
    }

    /// Evicts a batch of the oldest chunks of the server holding the most. False when the
    /// index is empty.
    fn evict_from_largest(&mut self) -> bool {
        let Some(server) = self
            .servers
            .iter()
            .filter(|(_, c)| !c.order.is_empty())
            .max_by_key(|(_, c)| c.live)
            .map(|(&s, _)| s)
        else {
            return false;
        };
        let batch = (self.server_live(server) / 32).max(1);
        let target = self.server_live(server).saturating_sub(batch);
        while self.server_live(server) > target && self.pop_oldest(server) {}
        self.compact_if_stale(server);
        true
    }

    /// Drops stale records once they outnumber live ones, and returns list memory that the
    /// list no longer needs.
    fn compact_if_stale(&mut self, server: u32) {
        let Some(chunks) = self.servers.get_mut(&server) else {
            return;
        };
        let old_capacity = chunks.order.capacity();
        if chunks.order.len() > 2 * chunks.live + 64 {
            let index = &self.chunks;
            chunks.order.retain(|r| {
                index.get(&r.hash).is_some_and(|holders| {
                    holders
                        .binary_search_by_key(&server, |h| h.server)
                        .is_ok_and(|i| holders[i].seq == r.seq)
                })
            });
        }
        if chunks.order.capacity() > 2 * chunks.order.len() + 64 {
            chunks
                .order
                .shrink_to(chunks.order.len() + chunks.order.len() / 2);
        }
        self.list_bytes = self.list_bytes + chunks.order.capacity() * size_of::<Record>()
            - old_capacity * size_of::<Record>();
    }
}

/// Heap bytes of a holder list that outgrew its inline room.
fn heap_bytes(holders: &Holders) -> usize {
    if holders.spilled() {
        holders.capacity() * size_of::<Holder>()
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(3600);

    /// The prompt tokens behind `hashes` (whole chunks).
    fn tokens(hashes: &[u64]) -> f64 {
        (hashes.len() * CHUNK_BYTES / BYTES_PER_TOKEN) as f64
    }

    fn prompt(parts: &[&str]) -> Vec<u8> {
        parts
            .iter()
            .map(|p| p.repeat(CHUNK_BYTES))
            .collect::<String>()
            .into_bytes()
    }

    #[test]
    fn hashes_name_whole_prefixes() {
        let a = chunk_hashes("m", &prompt(&["a", "b", "c"]));
        let b = chunk_hashes("m", &prompt(&["a", "b", "d"]));
        let c = chunk_hashes("m", &prompt(&["x", "b", "c"]));
        assert_eq!(a.len(), 3);
        assert_eq!(a[..2], b[..2]);
        assert_ne!(a[2], b[2]);
        assert_ne!(
            a[1], c[1],
            "the same chunk after another prefix is another name"
        );
        assert_ne!(
            a[0],
            chunk_hashes("other", &prompt(&["a"]))[0],
            "models differ"
        );
        assert!(chunk_hashes("m", &[b'x'; CHUNK_BYTES - 1]).is_empty());
    }

    #[test]
    fn each_server_matches_as_deep_as_it_holds() {
        let mut index = PrefixIndex::new(1 << 20, IDLE);
        let long = chunk_hashes("m", &prompt(&["s", "y", "s", "1", "2", "3", "4", "5"]));
        index.record(7, &long, tokens(&long), None, 0);
        index.record(3, &long[..2], tokens(&long[..2]), None, 0);
        index.record(9, &long[..5], tokens(&long[..5]), None, 0);
        assert_eq!(index.matched(&long), vec![(3, 2), (7, 8), (9, 5)]);
        let other = chunk_hashes("m", &prompt(&["s", "y", "x"]));
        assert_eq!(index.matched(&other), vec![(3, 2), (7, 2), (9, 2)]);
        assert!(index
            .matched(&chunk_hashes("m", &prompt(&["q"])))
            .is_empty());
        assert!(index.matched(&[]).is_empty());
    }

    #[test]
    fn a_server_keeps_what_its_cache_holds_newest_and_first_chunks_last() {
        let mut index = PrefixIndex::new(1 << 20, IDLE);
        let first = chunk_hashes("m", &prompt(&["a", "b", "c", "d"]));
        let second = chunk_hashes("m", &prompt(&["e", "f", "g", "h"]));
        index.record(1, &first, tokens(&first), Some(6), 0);
        index.record(1, &second, tokens(&second), Some(6), 0);
        // Two of the first prompt's chunks were evicted: its tail, not its head.
        assert_eq!(index.matched(&first), vec![(1, 2)]);
        assert_eq!(index.matched(&second), vec![(1, 4)]);
        assert_eq!(index.pairs(), 6);
        // Touching the first prompt again refreshes it; now the second loses its tail.
        index.record(1, &first, tokens(&first), Some(6), 2);
        assert_eq!(index.matched(&first), vec![(1, 4)]);
        assert_eq!(index.matched(&second), vec![(1, 2)]);
    }

    #[test]
    fn a_prefix_head_is_never_older_than_its_tail() {
        let mut index = PrefixIndex::new(1 << 20, IDLE);
        let a = chunk_hashes("m", &prompt(&["s", "y", "a", "a"]));
        let b = chunk_hashes("m", &prompt(&["s", "y", "b", "b"]));
        index.record(1, &a, tokens(&a), Some(8), 0);
        // b's head is a's, still in the newer half; b's tail is new, so the head is touched
        // again and stays newer than both tails.
        index.record(1, &b, tokens(&b), Some(8), 2);
        let filler = chunk_hashes("m", &prompt(&["f", "g"]));
        index.record(1, &filler, tokens(&filler), Some(6), 0);
        assert_eq!(index.matched(&b), vec![(1, 4)], "b is whole");
        assert_eq!(
            index.matched(&a),
            vec![(1, 2)],
            "a lost its tail, not its head"
        );
        // The same prompt again touches nothing: its chunks are all in the newer half.
        let records = index.servers[&1].order.len();
        index.record(1, &filler, tokens(&filler), Some(6), 2);
        assert_eq!(index.servers[&1].order.len(), records);
    }

    #[test]
    fn idle_chunks_expire_and_restarts_forget() {
        let mut index = PrefixIndex::new(1 << 20, Duration::ZERO);
        let a = chunk_hashes("m", &prompt(&["a", "b"]));
        index.record(1, &a, tokens(&a), None, 0);
        index.started -= Duration::from_secs(2);
        let z = chunk_hashes("m", &prompt(&["z"]));
        index.record(1, &z, tokens(&z), None, 0);
        assert!(index.matched(&a).is_empty(), "older than the idle limit");

        let mut index = PrefixIndex::new(1 << 20, IDLE);
        index.record(1, &a, tokens(&a), None, 0);
        index.observe_counters(1, 100.0, 50.0);
        index.observe_counters(1, 10.0, 0.0);
        assert!(
            index.matched(&a).is_empty(),
            "the counters reset: it restarted"
        );
        assert_eq!(index.pairs(), 0);
    }

    #[test]
    fn hits_short_of_the_prediction_shrink_what_a_server_keeps() {
        let mut index = PrefixIndex::new(1 << 20, IDLE);
        let a = chunk_hashes("m", &prompt(&["a", "b", "c", "d"]));
        index.record(1, &a, tokens(&a), Some(1000), 0);
        index.observe_counters(1, 0.0, 0.0);
        // The index expected all 4 chunks to hit; the server hit a tenth as many tokens.
        index.record(1, &a, tokens(&a), Some(1000), 4);
        index.observe_counters(1, 256.0, 25.6);
        let keep = index.servers[&1].keep;
        assert_eq!(keep, 0.5, "halved at most per window");
        index.record(1, &a, tokens(&a), Some(1000), 4);
        index.observe_counters(1, 512.0, 281.6);
        assert!(index.servers[&1].keep > keep, "as expected: grows back");
    }

    #[test]
    fn the_index_never_exceeds_its_budget() {
        let budget = 256 * 1024;
        let mut index = PrefixIndex::new(budget, IDLE);
        let mut rng = fastrand::Rng::with_seed(7);
        let mut most = 0;
        // Far past the budget: 20,000 prompts of up to 16 chunks over 50 servers, many
        // sharing heads so that chunks have several holders.
        for i in 0..20_000u32 {
            let head = rng.u32(..40);
            let len = rng.usize(1..=16);
            let mut text = format!("{head:0width$}", width = CHUNK_BYTES).into_bytes();
            for c in 1..len {
                text.extend(
                    format!("{i}-{c:0width$}", width = CHUNK_BYTES)
                        .bytes()
                        .take(CHUNK_BYTES),
                );
            }
            let hashes = chunk_hashes("m", &text);
            index.record(rng.u32(..50), &hashes, tokens(&hashes), None, 0);
            most = most.max(index.bytes());
            assert!(
                index.bytes() <= budget,
                "{} > {budget} at {i}",
                index.bytes()
            );
        }
        assert!(index.pairs() > 100, "it still holds a useful amount");
        assert!(most > budget / 3, "the budget is used: {most}");
        // Every pair is accounted for by exactly one live record.
        let live: usize = index.servers.values().map(|c| c.live).sum();
        assert_eq!(live, index.pairs());
        let held: usize = index.chunks.values().map(|h| h.len()).sum();
        assert_eq!(held, index.pairs());
    }
}
