//! `random`: a candidate drawn at random in proportion to its capacity; load is not looked at.
//! A baseline for benchmarks, and for users who want the simplest spread.

use super::{weighted_index, Policy};
use crate::backend::Backend;
use crate::features::RequestFeatures;

pub struct Random;

impl Policy for Random {
    fn name(&self) -> &'static str {
        "random"
    }

    fn pick<'a>(&self, candidates: &[&'a Backend], _request: &RequestFeatures) -> &'a Backend {
        candidates[weighted_index(candidates, fastrand::f64(), None)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::tests::healthy;

    #[test]
    fn draws_follow_capacity_not_load() {
        let small = healthy("http://small", 4, &["m"], 0.0);
        let large = healthy("http://large", 12, &["m"], 12.0);
        let all = [&small, &large];
        let to_small = (0..4000)
            .filter(|_| Random.pick(&all, &RequestFeatures::default()).cfg.url == "http://small")
            .count();
        assert!(
            (850..1150).contains(&to_small),
            "{to_small} of 4000, expected 1000"
        );
    }
}
