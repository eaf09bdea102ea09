//! `round-robin`: the candidates in turn, whatever their load or capacity (nginx's default).
//! A baseline for benchmarks. The turn is one counter for the whole router; when the candidates
//! differ between requests (another model, a server down), it goes on from where it was.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use super::Policy;
use crate::backend::Backend;
use crate::features::RequestFeatures;

#[derive(Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl Policy for RoundRobin {
    fn name(&self) -> &'static str {
        "round-robin"
    }

    fn pick<'a>(&self, candidates: &[&'a Backend], _request: &RequestFeatures) -> &'a Backend {
        candidates[self.next.fetch_add(1, Relaxed) % candidates.len()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::tests::healthy;

    #[test]
    fn takes_turns() {
        let servers: Vec<Backend> = (0..3)
            .map(|i| healthy(&format!("http://s{i}"), 1 + i, &["m"], 0.0))
            .collect();
        let all: Vec<&Backend> = servers.iter().collect();
        let policy = RoundRobin::default();
        let picked: Vec<String> = (0..6)
            .map(|_| {
                policy
                    .pick(&all, &RequestFeatures::default())
                    .cfg
                    .url
                    .clone()
            })
            .collect();
        assert_eq!(
            picked,
            [
                "http://s0",
                "http://s1",
                "http://s2",
                "http://s0",
                "http://s1",
                "http://s2"
            ]
        );
    }
}
