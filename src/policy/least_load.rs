//! `least-load`: the server with the lowest load score wins.

use super::Policy;
use crate::backend::Backend;
use crate::features::RequestFeatures;

/// Lowest load score wins (see [`Backend::score`]): live load from the last scrape plus the
/// requests sent since, over capacity. A server under 50 % always beats one above it, as in
/// the Python mvllm, because its score is lower. Ties are broken at random, so equal servers
/// share the load instead of the first in the list taking it all.
pub struct LeastLoad;

impl Policy for LeastLoad {
    fn name(&self) -> &'static str {
        "least-load"
    }

    fn pick<'a>(&self, candidates: &[&'a Backend], _request: &RequestFeatures) -> &'a Backend {
        // One pass, no allocation: keep the best so far; among equal scores, the k-th one seen
        // replaces the choice with probability 1/k, so each tied server is equally likely.
        let mut chosen = candidates[0];
        let mut best = chosen.score();
        let mut ties = 1;
        for &backend in &candidates[1..] {
            let score = backend.score();
            if score < best - 1e-9 {
                (chosen, best, ties) = (backend, score, 1);
            } else if score <= best + 1e-9 {
                ties += 1;
                if fastrand::usize(..ties) == 0 {
                    chosen = backend;
                }
            }
        }
        chosen
    }

    fn score(&self, backend: &Backend, _request: &RequestFeatures) -> f64 {
        backend.score()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::tests::healthy;

    #[test]
    fn a_burst_splits_in_proportion_to_capacity() {
        let small = healthy("http://small", 4, &["m"], 0.0);
        let large = healthy("http://large", 16, &["m"], 0.0);
        let all = [&small, &large];
        let mut guards = Vec::new();
        for _ in 0..40 {
            let chosen = LeastLoad.pick(&all, &RequestFeatures::default());
            guards.push(chosen.state.start_request());
        }
        let to_small = guards
            .iter()
            .filter(|g| std::sync::Arc::ptr_eq(g.server(), &small.state))
            .count();
        assert!(
            (7..=9).contains(&to_small),
            "{to_small} of 40 went to the small server"
        );
        drop(guards);
        assert_eq!((small.state.in_flight(), large.state.in_flight()), (0, 0));
    }

    #[test]
    fn lowest_score_wins_and_ties_are_shared() {
        let busy = healthy("http://busy", 4, &["m"], 3.0);
        let idle = healthy("http://idle", 4, &["m"], 0.0);
        let all = [&busy, &idle];
        for _ in 0..10 {
            let chosen = LeastLoad.pick(&all, &RequestFeatures::default());
            assert_eq!(chosen.cfg.url, "http://idle");
        }
        let (a, b) = (
            healthy("http://a", 4, &["m"], 1.0),
            healthy("http://b", 4, &["m"], 1.0),
        );
        let twins = [&a, &b];
        let firsts = (0..200)
            .filter(|_| LeastLoad.pick(&twins, &RequestFeatures::default()).cfg.url == "http://a")
            .count();
        assert!(
            (50..150).contains(&firsts),
            "list order must not win ties: {firsts} of 200"
        );
    }
}
