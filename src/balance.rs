//! How a backend is chosen for a request.
//!
//! [`candidates`] decides which backends may take the request at all (healthy, serving the
//! requested model, not already tried for it); a [`Policy`] picks one of them. Policies are
//! one type each, so a new one (prefix-aware, say) is a new impl, not a new branch here.

use std::sync::Arc;

use crate::cluster::Backend;

/// What the policy may know about a request.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestInfo<'a> {
    /// The `model` of the request body, if it had one.
    pub model: Option<&'a str>,
}

/// Picks one backend among eligible candidates.
pub trait Policy: Send + Sync {
    /// `candidates` is never empty.
    fn pick(&self, candidates: &[Arc<Backend>], request: &RequestInfo<'_>) -> Arc<Backend>;
}

/// Lowest load score wins (see [`Backend::score`]): live load from the last scrape plus the
/// requests sent since, over capacity. A server under 50 % always beats one above it, as in
/// the Python mvllm, because its score is lower. Ties are broken at random, so equal servers
/// share the load instead of the first in the list taking it all.
pub struct LeastLoad;

impl Policy for LeastLoad {
    fn pick(&self, candidates: &[Arc<Backend>], _request: &RequestInfo<'_>) -> Arc<Backend> {
        // One pass, no allocation: keep the best so far; among equal scores, the k-th one seen
        // replaces the choice with probability 1/k, so each tied server is equally likely.
        let mut chosen = &candidates[0];
        let mut best = chosen.score();
        let mut ties = 1;
        for backend in &candidates[1..] {
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
        Arc::clone(chosen)
    }
}

/// Why no backend can take a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoBackend {
    /// No backend lists the model (healthy or not), and every backend's list is known: the
    /// client asked for something that does not exist here. Carries the models that do.
    UnknownModel(Vec<String>),
    /// Backends exist for it, but none is healthy and untried right now.
    Unavailable,
}

/// The backends that may take a request for `model` (any model if `None`), skipping
/// `tried`.
pub fn candidates(
    backends: &[Arc<Backend>],
    model: Option<&str>,
    tried: &[Arc<Backend>],
) -> Result<Vec<Arc<Backend>>, NoBackend> {
    if let Some(model) = model {
        // A server whose list was never read might serve it: then it is "unavailable", not
        // "does not exist".
        let all_known = backends.iter().all(|b| b.models_known());
        if all_known && !backends.iter().any(|b| b.serves(model)) {
            let mut known: Vec<String> = backends
                .iter()
                .flat_map(|b| {
                    b.models
                        .load()
                        .iter()
                        .map(|m| m.id.clone())
                        .collect::<Vec<_>>()
                })
                .collect();
            known.sort();
            known.dedup();
            return Err(NoBackend::UnknownModel(known));
        }
    }
    let eligible: Vec<Arc<Backend>> = backends
        .iter()
        .filter(|b| b.is_healthy())
        .filter(|b| model.is_none_or(|m| b.serves(m)))
        .filter(|b| !tried.iter().any(|t| Arc::ptr_eq(t, b)))
        .cloned()
        .collect();
    if eligible.is_empty() {
        return Err(NoBackend::Unavailable);
    }
    Ok(eligible)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::tests::healthy;

    #[test]
    fn a_burst_splits_in_proportion_to_capacity() {
        let small = healthy("http://small", 4, &["m"], 0.0);
        let large = healthy("http://large", 16, &["m"], 0.0);
        let all = vec![Arc::clone(&small), Arc::clone(&large)];
        let mut guards = Vec::new();
        for _ in 0..40 {
            let chosen = LeastLoad.pick(&all, &RequestInfo::default());
            guards.push(chosen.start_request());
        }
        let to_small = guards
            .iter()
            .filter(|g| Arc::ptr_eq(g.backend(), &small))
            .count();
        assert!(
            (7..=9).contains(&to_small),
            "{to_small} of 40 went to the small server"
        );
        drop(guards);
        assert_eq!((small.in_flight(), large.in_flight()), (0, 0));
    }

    #[test]
    fn lowest_score_wins_and_ties_are_shared() {
        let busy = healthy("http://busy", 4, &["m"], 3.0);
        let idle = healthy("http://idle", 4, &["m"], 0.0);
        let all = vec![Arc::clone(&busy), Arc::clone(&idle)];
        for _ in 0..10 {
            assert!(Arc::ptr_eq(
                &LeastLoad.pick(&all, &RequestInfo::default()),
                &idle
            ));
        }
        let twins = vec![
            healthy("http://a", 4, &["m"], 1.0),
            healthy("http://b", 4, &["m"], 1.0),
        ];
        let firsts = (0..200)
            .filter(|_| Arc::ptr_eq(&LeastLoad.pick(&twins, &RequestInfo::default()), &twins[0]))
            .count();
        assert!(
            (50..150).contains(&firsts),
            "list order must not win ties: {firsts} of 200"
        );
    }

    #[test]
    fn candidates_follow_models_health_and_tries() {
        let a = healthy("http://a", 4, &["llama", "lora-1"], 0.0);
        let b = healthy("http://b", 4, &["qwen"], 0.0);
        let all = vec![Arc::clone(&a), Arc::clone(&b)];
        let only = |model| candidates(&all, model, &[]).unwrap();
        assert_eq!(only(Some("lora-1")).len(), 1);
        assert!(Arc::ptr_eq(&only(Some("qwen"))[0], &b));
        assert_eq!(only(None).len(), 2);
        assert_eq!(
            candidates(&all, Some("gpt-4"), &[]).err(),
            Some(NoBackend::UnknownModel(vec![
                "llama".into(),
                "lora-1".into(),
                "qwen".into()
            ]))
        );
        assert_eq!(
            candidates(&all, Some("qwen"), &[Arc::clone(&b)]).err(),
            Some(NoBackend::Unavailable)
        );

        let unknown = Arc::new(Backend::new(crate::cluster::tests::server("http://new", 4)));
        let with_unknown = vec![Arc::clone(&a), unknown];
        assert_eq!(
            candidates(&with_unknown, Some("gpt-4"), &[]).err(),
            Some(NoBackend::Unavailable),
            "a server whose models are not known yet might serve it"
        );

        let settings = crate::config::Settings::default();
        for _ in 0..settings.failure_threshold {
            b.record_failure("down".into(), &settings);
        }
        assert_eq!(
            candidates(&all, Some("qwen"), &[]).err(),
            Some(NoBackend::Unavailable)
        );
        assert_eq!(only(None).len(), 1);
    }
}
