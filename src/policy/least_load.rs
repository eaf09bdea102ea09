//! `least-load`: the server with the lowest cost wins.

use super::shortlist::Shortlists;
use super::{NoBackend, Policy};
use crate::backend::Backend;
use crate::features::RequestFeatures;
use crate::speed::Relative;

/// The cost of sending one more request to `backend`: its load with this request counted,
/// over its capacity (the utilisation it would have), times how much slower than the fastest
/// candidate it answers (speed.rs; 1 until learned). With equal queues the faster server wins;
/// a server that slows down gets less traffic. A server under 50 % still beats an equally
/// fast one above it, as in the Python mvllm.
pub fn cost(backend: &Backend, relative: &Relative) -> f64 {
    let capacity = f64::from(backend.cfg.max_concurrent_requests.max(1));
    (backend.load_units() + 1.0) / capacity * relative.factor(backend)
}

/// [`cost`] of each candidate, the relative speeds computed once.
pub fn costs(candidates: &[&Backend]) -> Vec<f64> {
    let relative = Relative::among(candidates);
    candidates.iter().map(|b| cost(b, &relative)).collect()
}

/// The candidate of lowest [`cost`], ties broken at random.
pub fn cheapest<'a>(candidates: &[&'a Backend]) -> &'a Backend {
    let relative = Relative::among(candidates);
    super::lowest(candidates, |i| cost(candidates[i], &relative))
}

/// Lowest cost wins (see [`cost`]): live load from the last scrape, the requests sent since
/// and the router's own in flight (see [`Backend::load_units`]), over capacity, and the learned
/// speed. Ties are broken at random, so equal servers share the load instead of the first in
/// the list taking it all. A first attempt is chosen from a shortlist of the cheapest servers
/// (shortlist.rs): the same choice, without costing every server each time.
#[derive(Default)]
pub struct LeastLoad {
    shortlists: Shortlists,
}

impl Policy for LeastLoad {
    fn name(&self) -> &'static str {
        "least-load"
    }

    fn pick<'a>(&self, candidates: &[&'a Backend], _request: &RequestFeatures) -> &'a Backend {
        cheapest(candidates)
    }

    fn scores(&self, candidates: &[&Backend], _request: &RequestFeatures) -> Vec<f64> {
        costs(candidates)
    }

    fn choose<'a>(
        &self,
        backends: &'a [Backend],
        model: Option<&str>,
        _request: &RequestFeatures,
    ) -> Result<&'a Backend, NoBackend> {
        self.shortlists.choose(backends, model)
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
            let chosen = LeastLoad::default().pick(&all, &RequestFeatures::default());
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
    fn with_equal_queues_the_faster_server_wins() {
        let fast = healthy("http://fast", 4, &["m"], 1.0);
        let slow = healthy("http://slow", 4, &["m"], 1.0);
        fast.state.speed.observe(0.01);
        slow.state.speed.observe(0.02);
        let all = [&slow, &fast];
        for _ in 0..10 {
            assert_eq!(
                LeastLoad::default()
                    .pick(&all, &RequestFeatures::default())
                    .cfg
                    .url,
                "http://fast"
            );
        }
        // Twice as slow: it wins once its queue is well under half the fast one's.
        let busy_fast = healthy("http://busy-fast", 4, &["m"], 3.0);
        busy_fast.state.speed.observe(0.01);
        let idle_slow = healthy("http://idle-slow", 4, &["m"], 0.0);
        idle_slow.state.speed.observe(0.02);
        let chosen =
            LeastLoad::default().pick(&[&busy_fast, &idle_slow], &RequestFeatures::default());
        assert_eq!(
            chosen.cfg.url, "http://idle-slow",
            "(0+1)/4 x 2 < (3+1)/4 x 1"
        );
        assert_eq!(
            LeastLoad::default().scores(&[&busy_fast, &idle_slow], &RequestFeatures::default()),
            [1.0, 0.5]
        );
    }

    #[test]
    fn lowest_score_wins_and_ties_are_shared() {
        let busy = healthy("http://busy", 4, &["m"], 3.0);
        let idle = healthy("http://idle", 4, &["m"], 0.0);
        let all = [&busy, &idle];
        for _ in 0..10 {
            let chosen = LeastLoad::default().pick(&all, &RequestFeatures::default());
            assert_eq!(chosen.cfg.url, "http://idle");
        }
        let (a, b) = (
            healthy("http://a", 4, &["m"], 1.0),
            healthy("http://b", 4, &["m"], 1.0),
        );
        let twins = [&a, &b];
        let firsts = (0..200)
            .filter(|_| {
                LeastLoad::default()
                    .pick(&twins, &RequestFeatures::default())
                    .cfg
                    .url
                    == "http://a"
            })
            .count();
        assert!(
            (50..150).contains(&firsts),
            "list order must not win ties: {firsts} of 200"
        );
    }
}
