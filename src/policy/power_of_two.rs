//! `power-of-two`: two candidates drawn at random (in proportion to capacity), the one with the
//! lower cost (least-load's: load and learned speed) wins. Nearly as good as comparing all servers, from two looks: it keeps
//! working when load figures are stale or when several router replicas choose at once (they
//! do not all pick the same "least loaded" server).

use super::least_load::{cost, costs};
use super::{weighted_index, Policy};
use crate::backend::Backend;
use crate::features::RequestFeatures;
use crate::speed::Relative;

pub struct PowerOfTwo;

impl Policy for PowerOfTwo {
    fn name(&self) -> &'static str {
        "power-of-two"
    }

    fn pick<'a>(&self, candidates: &[&'a Backend], _request: &RequestFeatures) -> &'a Backend {
        if candidates.len() == 1 {
            return candidates[0];
        }
        let first = weighted_index(candidates, fastrand::f64(), None);
        let second = weighted_index(candidates, fastrand::f64(), Some(first));
        let (a, b) = (candidates[first], candidates[second]);
        // The same cost as least-load's, between the two.
        let relative = Relative::among(&[a, b]);
        if cost(b, &relative) < cost(a, &relative) {
            b
        } else {
            a
        }
    }

    fn scores(&self, candidates: &[&Backend], _request: &RequestFeatures) -> Vec<f64> {
        costs(candidates)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::tests::healthy;

    #[test]
    fn the_less_loaded_of_two_wins_and_the_busiest_never_does() {
        let servers: Vec<Backend> = (0..4)
            .map(|i| healthy(&format!("http://s{i}"), 4, &["m"], f64::from(i)))
            .collect();
        let all: Vec<&Backend> = servers.iter().collect();
        let mut counts = [0; 4];
        for _ in 0..4000 {
            let chosen = PowerOfTwo.pick(&all, &RequestFeatures::default());
            counts[servers
                .iter()
                .position(|s| s.cfg.url == chosen.cfg.url)
                .unwrap()] += 1;
        }
        // Two distinct draws of four: the idlest wins whenever drawn (1/2 of the time), the
        // busiest never.
        assert_eq!(counts[3], 0, "{counts:?}");
        assert!((1800..2200).contains(&counts[0]), "{counts:?}");
        assert!(counts[0] > counts[1] && counts[1] > counts[2], "{counts:?}");
    }

    #[test]
    fn one_candidate_is_chosen() {
        let only = healthy("http://only", 4, &["m"], 3.0);
        assert_eq!(
            PowerOfTwo
                .pick(&[&only], &RequestFeatures::default())
                .cfg
                .url,
            "http://only"
        );
    }
}
