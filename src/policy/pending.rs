//! The prompt prefixes the cache-aware policy sent to each server in the last [`WINDOW`], for
//! routing on KV cache events: a server holds a prefix once it has prefilled it, but its
//! events say so only after that step, so requests for the same new prefix arriving before
//! then (a burst of users of a new system prompt) would otherwise be spread over servers that
//! each prefill it again. Within the window, a prefix sent to a server counts as cached there.
//!
//! Prefixes are the prefix index's chunk hashes (prefix_index.rs), at most [`MAX_CHUNKS`] of
//! a prompt (the shared head is what matters), of at most [`MAX_PROMPTS`] prompts.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use nohash_hasher::BuildNoHashHasher;
use smallvec::SmallVec;

/// How long a sent prefix counts as cached before the server's events must confirm it.
pub const WINDOW: Duration = Duration::from_secs(2);
const MAX_CHUNKS: usize = 64;
const MAX_PROMPTS: usize = 4096;

/// The servers a chunk was sent to, with when it last was to each.
type SentTo = SmallVec<[(u32, Instant); 2]>;

#[derive(Default)]
pub struct Pending {
    chunks: HashMap<u64, SentTo, BuildNoHashHasher<u64>>,
    /// What was sent, oldest first.
    sent: VecDeque<(Instant, u32, Vec<u64>)>,
}

impl Pending {
    /// Notes that the prompt with chunks `hashes` was sent to `server` at `now`.
    pub fn record(&mut self, server: u32, hashes: &[u64], now: Instant) {
        while self
            .sent
            .front()
            .is_some_and(|(at, _, _)| *at + WINDOW < now)
        {
            self.pop_oldest();
        }
        let hashes = &hashes[..hashes.len().min(MAX_CHUNKS)];
        for &hash in hashes {
            let holders = self.chunks.entry(hash).or_default();
            match holders.iter_mut().find(|(s, _)| *s == server) {
                Some(holder) => holder.1 = now,
                None => holders.push((server, now)),
            }
        }
        self.sent.push_back((now, server, hashes.to_vec()));
        while self.sent.len() > MAX_PROMPTS {
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        let Some((at, server, hashes)) = self.sent.pop_front() else {
            return;
        };
        for hash in hashes {
            if let Some(holders) = self.chunks.get_mut(&hash) {
                // Sent again since: still pending.
                holders.retain(|(s, t)| *s != server || *t > at);
                if holders.is_empty() {
                    self.chunks.remove(&hash);
                }
            }
        }
    }

    /// How many leading chunks of `hashes` were sent to `server` within the window.
    pub fn depth(&self, server: u32, hashes: &[u64], now: Instant) -> usize {
        hashes
            .iter()
            .take(MAX_CHUNKS)
            .take_while(|h| {
                self.chunks.get(h).is_some_and(|holders| {
                    holders
                        .iter()
                        .any(|(s, t)| *s == server && now.saturating_duration_since(*t) <= WINDOW)
                })
            })
            .count()
    }

    /// Chunks held, for the tests of the bound.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.chunks.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sent_prefix_counts_for_its_server_within_the_window_only() {
        let mut pending = Pending::default();
        let start = Instant::now();
        pending.record(1, &[10, 11, 12], start);
        assert_eq!(pending.depth(1, &[10, 11, 99], start), 2);
        assert_eq!(pending.depth(2, &[10, 11, 12], start), 0, "another server");
        let later = start + WINDOW + Duration::from_millis(1);
        assert_eq!(pending.depth(1, &[10, 11, 12], later), 0, "past the window");
        // Sent again: counts again, and the old record leaving does not take it away.
        pending.record(1, &[10, 11], later);
        let much_later = later + WINDOW / 2;
        pending.record(2, &[50], much_later);
        assert_eq!(pending.depth(1, &[10, 11, 12], much_later), 2);
        // Bounded: old prompts go.
        for i in 0..(MAX_PROMPTS as u64 + 10) {
            pending.record(3, &[1000 + i], much_later);
        }
        assert!(pending.len() <= MAX_PROMPTS + 3, "{}", pending.len());
    }
}
