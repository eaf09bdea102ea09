//! The bounded cache of prompts' token ids: keyed by a hash of what the tokens were made
//! from, least recently used out first once the token bytes pass the budget.
//!
//! Touching an entry appends a new record to the order list and leaves the old one to be
//! skipped when it reaches the front (its stamp is stale), as the prefix index does; the list
//! is compacted when stale records outnumber live ones.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use nohash_hasher::BuildNoHashHasher;

/// What an entry costs beside its tokens: its map slot, its order records, the Arc's counts.
const ENTRY_OVERHEAD: usize = 64;

struct Entry {
    tokens: Arc<[u32]>,
    /// The tokens of exactly what the key names; else the leading tokens of a longer prompt
    /// that starts the same (a shared system prompt's, say), good as a prefix only.
    exact: bool,
    stamp: u64,
}

pub struct TokenCache {
    map: HashMap<u64, Entry, BuildNoHashHasher<u64>>,
    order: VecDeque<(u64, u64)>,
    clock: u64,
    bytes: usize,
    budget: usize,
}

impl TokenCache {
    pub fn new(budget: usize) -> TokenCache {
        TokenCache {
            map: HashMap::default(),
            order: VecDeque::new(),
            clock: 0,
            bytes: 0,
            budget,
        }
    }

    fn cost(tokens: &[u32]) -> usize {
        tokens.len() * 4 + ENTRY_OVERHEAD
    }

    /// The tokens stored under `key` and whether they are exact, marked as just used.
    pub fn get(&mut self, key: u64) -> Option<(Arc<[u32]>, bool)> {
        self.clock += 1;
        let entry = self.map.get_mut(&key)?;
        entry.stamp = self.clock;
        self.order.push_back((key, self.clock));
        let found = (Arc::clone(&entry.tokens), entry.exact);
        self.compact();
        Some(found)
    }

    /// Whether `key` is stored (not counted as a use).
    pub fn contains(&self, key: u64) -> bool {
        self.map.contains_key(&key)
    }

    /// Whether `key`'s own tokens are stored (not a prefix entry).
    pub fn has_exact(&self, key: u64) -> bool {
        self.map.get(&key).is_some_and(|e| e.exact)
    }

    /// Stores `tokens` under `key` (`exact`: of exactly what the key names; a prefix entry is
    /// stored only where nothing is), evicting the least recently used entries past the
    /// budget. A prompt larger than the whole budget is not stored.
    pub fn insert(&mut self, key: u64, tokens: Arc<[u32]>, exact: bool) {
        let cost = Self::cost(&tokens);
        if cost > self.budget || (!exact && self.map.contains_key(&key)) {
            return;
        }
        self.clock += 1;
        if let Some(old) = self.map.insert(
            key,
            Entry {
                tokens,
                exact,
                stamp: self.clock,
            },
        ) {
            self.bytes -= Self::cost(&old.tokens);
        }
        self.bytes += cost;
        self.order.push_back((key, self.clock));
        while self.bytes > self.budget {
            let Some((key, stamp)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&key).is_some_and(|e| e.stamp == stamp) {
                if let Some(gone) = self.map.remove(&key) {
                    self.bytes -= Self::cost(&gone.tokens);
                }
            }
        }
        self.compact();
    }

    /// Drops stale order records once they outnumber live entries.
    fn compact(&mut self) {
        if self.order.len() > 2 * self.map.len() + 16 {
            let map = &self.map;
            self.order
                .retain(|(key, stamp)| map.get(key).is_some_and(|e| e.stamp == *stamp));
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn set_budget(&mut self, budget: usize) {
        self.budget = budget;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(n: u32) -> Arc<[u32]> {
        (0..n).collect::<Vec<_>>().into()
    }

    #[test]
    fn least_recently_used_goes_first_and_the_budget_holds() {
        // Room for three entries of 100 tokens.
        let mut cache = TokenCache::new(3 * (400 + ENTRY_OVERHEAD));
        for key in 1..=3 {
            cache.insert(key, tokens(100), true);
        }
        assert!(cache.get(1).is_some(), "1 is now the most recently used");
        cache.insert(4, tokens(100), true);
        assert!(!cache.contains(2), "2 was the least recently used");
        assert!(cache.contains(1) && cache.contains(3) && cache.contains(4));
        assert!(cache.bytes() <= 3 * (400 + ENTRY_OVERHEAD));
        cache.insert(5, tokens(10_000), true);
        assert!(
            !cache.contains(5),
            "larger than the whole budget: not stored"
        );
        // Many touches keep the order list bounded.
        for _ in 0..1000 {
            cache.get(1);
        }
        assert!(cache.order.len() <= 2 * cache.len() + 17);
        cache.insert(1, tokens(50), true);
        assert_eq!(cache.get(1).unwrap().0.len(), 50, "replaced");
        cache.insert(1, tokens(20), false);
        assert_eq!(
            cache.get(1).unwrap(),
            (tokens(50), true),
            "a prefix never replaces"
        );
        cache.insert(6, tokens(20), false);
        cache.insert(6, tokens(30), true);
        assert_eq!(
            cache.get(6).unwrap(),
            (tokens(30), true),
            "exact replaces a prefix"
        );
    }
}
