//! How a server is chosen for a request.
//!
//! [`eligible`] decides which servers may take the request at all: healthy, serving the
//! requested model, not already tried for it, and not ejected (unless all of those are). Every
//! policy picks one from that list ([`Policy::pick`]); a request's first choice goes through
//! [`Policy::choose`], where least-load looks at a shortlist instead (shortlist.rs). A policy
//! sees the request's [`RequestFeatures`] (model, stream, prompt, session key, client), so a
//! new input does not change every signature. Policies are one file each; the
//! one in force is named by `[routing] policy` in servers.toml and built by [`build`], and a
//! reload can replace it.

mod cache_aware;
mod least_load;
mod pending;
mod power_of_two;
mod prefix_index;
mod random;
mod round_robin;
mod session;
mod shortlist;

pub use cache_aware::CacheAware;
pub use least_load::LeastLoad;
pub use power_of_two::PowerOfTwo;
pub use random::Random;
pub use round_robin::RoundRobin;
pub use session::SessionAffinity;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::backend::{Backend, ModelId};
use crate::config::Routing;
use crate::features::RequestFeatures;
use prefix_index::PrefixIndex;

/// Picks one server among the eligible ones.
pub trait Policy: Send + Sync {
    /// The name `[routing] policy` gives it.
    fn name(&self) -> &'static str;

    /// Picks one of `candidates`, which is never empty.
    fn pick<'a>(&self, candidates: &[&'a Backend], request: &RequestFeatures) -> &'a Backend;

    /// The figure this policy compares for each of `candidates` (lower is better), as the
    /// monitor's why view shows it. By default the load score.
    fn scores(&self, candidates: &[&Backend], _request: &RequestFeatures) -> Vec<f64> {
        candidates.iter().map(|b| b.score()).collect()
    }

    /// The server for a first attempt at a request for `model` among all of `backends`
    /// (none tried yet): by default the [`eligible`] ones listed and one picked. A policy may
    /// choose the same server without looking at every one (least-load's shortlist).
    fn choose<'a>(
        &self,
        backends: &'a [Backend],
        model: Option<&str>,
        request: &RequestFeatures,
    ) -> Result<&'a Backend, NoBackend> {
        eligible(backends, model, |_| false).map(|candidates| self.pick(&candidates, request))
    }

    /// The name and the parameters, for `/load-stats` and the logs.
    fn describe(&self) -> String {
        self.name().to_string()
    }

    /// Whether it compares the request's prompt token ids with the servers' KV cache events
    /// (the router then tokenizes the prompt when some server's events are followed).
    fn uses_prompt_tokens(&self) -> bool {
        false
    }

    /// The prefix index, for a policy that keeps one: a reload hands it to the new policy.
    fn prefix_index(&self) -> Option<&Arc<Mutex<PrefixIndex>>> {
        None
    }
}

/// The policies `[routing] policy` may name.
pub const NAMES: &[&str] = &[
    "least-load",
    "power-of-two",
    "round-robin",
    "random",
    "session",
    "cache-aware",
];

/// The policies in force: the default, and the ones `[routing] model_policies` sets for some
/// models.
pub struct Policies {
    default: Box<dyn Policy>,
    per_model: Vec<(String, Box<dyn Policy>)>,
}

impl Policies {
    /// The policy that chooses for a request for `model`.
    pub fn for_model(&self, model: Option<&str>) -> &dyn Policy {
        model
            .and_then(|m| self.per_model.iter().find(|(name, _)| name == m))
            .map_or(&*self.default, |(_, policy)| &**policy)
    }

    /// The default policy.
    pub fn default_policy(&self) -> &dyn Policy {
        &*self.default
    }

    /// Each model with a policy of its own, and that policy's description.
    pub fn per_model(&self) -> impl Iterator<Item = (&str, String)> {
        self.per_model
            .iter()
            .map(|(m, p)| (m.as_str(), p.describe()))
    }

    /// The default and the per-model policies, in words.
    pub fn describe(&self) -> String {
        let mut text = self.default.describe();
        for (model, policy) in self.per_model() {
            text.push_str(&format!("; {model}: {policy}"));
        }
        text
    }
}

/// Builds one policy by name; `previous` is the policy it replaces on a reload.
fn one(
    name: &str,
    routing: &Routing,
    previous: Option<&dyn Policy>,
) -> Result<Box<dyn Policy>, String> {
    Ok(match name {
        "least-load" => Box::new(LeastLoad::default()),
        "power-of-two" => Box::new(PowerOfTwo),
        "round-robin" => Box::new(RoundRobin::default()),
        "random" => Box::new(Random),
        "session" => Box::new(SessionAffinity::new(routing.session_load_bound)),
        "cache-aware" => Box::new(CacheAware::new(
            (routing.cache_budget_mib * 1024.0 * 1024.0) as usize,
            Duration::from_secs_f64(routing.cache_idle_seconds),
            previous,
        )),
        other => {
            return Err(format!(
                "unknown policy {other:?}; the policies are: {}",
                NAMES.join(", ")
            ))
        }
    })
}

/// Builds the policies a `[routing]` section names. On a reload, `previous` are the ones in
/// force: what they learned passes to the new ones where the policy is the same.
pub fn build(routing: &Routing, previous: Option<&Policies>) -> Result<Policies, String> {
    let previous_for = |model: Option<&str>| {
        previous.map(|p| match model {
            Some(model) => p
                .per_model
                .iter()
                .find(|(m, _)| m == model)
                .map_or(&*p.default, |(_, policy)| &**policy),
            None => &*p.default,
        })
    };
    let per_model = routing
        .model_policies
        .iter()
        .map(|(model, name)| {
            Ok((
                model.clone(),
                one(name, routing, previous_for(Some(model)))?,
            ))
        })
        .collect::<Result<_, String>>()?;
    Ok(Policies {
        default: one(routing.policy, routing, previous_for(None))?,
        per_model,
    })
}

/// The candidate with the lowest `cost` (given its index in `candidates`), in one pass
/// without allocating. Ties are broken at random (the k-th tied one seen replaces the choice
/// with probability 1/k, so each is equally likely): equal servers share the load instead of
/// the first in the list taking it all.
fn lowest<'a>(candidates: &[&'a Backend], mut cost: impl FnMut(usize) -> f64) -> &'a Backend {
    let mut chosen = 0;
    let mut best = cost(0);
    let mut ties = 1;
    for i in 1..candidates.len() {
        let score = cost(i);
        if score < best - 1e-9 {
            (chosen, best, ties) = (i, score, 1);
        } else if score <= best + 1e-9 {
            ties += 1;
            if fastrand::usize(..ties) == 0 {
                chosen = i;
            }
        }
    }
    candidates[chosen]
}

/// Index of a candidate drawn in proportion to capacity from `u` (uniform in [0, 1)),
/// skipping `except`. There are at least two candidates when `except` is set.
fn weighted_index(candidates: &[&Backend], u: f64, except: Option<usize>) -> usize {
    let weight = |i: usize| {
        if Some(i) == except {
            0.0
        } else {
            f64::from(candidates[i].cfg.max_concurrent_requests.max(1))
        }
    };
    let total: f64 = (0..candidates.len()).map(weight).sum();
    let mut left = u * total;
    for i in 0..candidates.len() {
        left -= weight(i);
        if left < 0.0 && Some(i) != except {
            return i;
        }
    }
    // Rounding at the very end: the last one that may be drawn.
    (0..candidates.len())
        .rev()
        .find(|&i| Some(i) != except)
        .unwrap_or(0)
}

/// Why no server can take a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoBackend {
    /// No server lists the model (healthy or not), and every server's list is known: the
    /// client asked for something that does not exist here. Carries the models that do.
    UnknownModel(Vec<String>),
    /// Servers exist for it, but none is healthy and untried right now.
    Unavailable,
}

/// The servers that may take a request for `model` (any model if `None`), skipping those
/// `tried` says were tried.
pub fn eligible<'a>(
    backends: &'a [Backend],
    model: Option<&str>,
    tried: impl Fn(&Backend) -> bool,
) -> Result<Vec<&'a Backend>, NoBackend> {
    let id = model.map(ModelId::new);
    let mut eligible = Vec::with_capacity(backends.len());
    eligible.extend(backends.iter().filter(|b| {
        b.state.is_healthy() && id.as_ref().is_none_or(|m| b.state.serves_id(m)) && !tried(b)
    }));
    let now = crate::ejection::now_ms();
    if eligible.iter().any(|b| b.state.ejection.is_ejected(now)) {
        // Ejected servers sit out, unless no other can take the request: then the one that
        // comes back soonest is tried rather than nobody (a 503 for nothing).
        let soonest = eligible
            .iter()
            .copied()
            .min_by_key(|b| b.state.ejection.remaining(now));
        eligible.retain(|b| !b.state.ejection.is_ejected(now));
        if eligible.is_empty() {
            eligible.extend(soonest);
        }
    }
    if !eligible.is_empty() {
        return Ok(eligible);
    }
    match model {
        Some(model) if is_unknown(backends, model) => {
            let mut known: Vec<String> = backends
                .iter()
                .flat_map(|b| {
                    b.state
                        .models
                        .load()
                        .iter()
                        .map(|m| m.id.clone())
                        .collect::<Vec<_>>()
                })
                .collect();
            known.sort();
            known.dedup();
            Err(NoBackend::UnknownModel(known))
        }
        _ => Err(NoBackend::Unavailable),
    }
}

/// Whether no server lists `model` although every server's list is known. (A server whose
/// list was never read might serve it: then it is "unavailable", not "does not exist".)
pub fn is_unknown(backends: &[Backend], model: &str) -> bool {
    backends.iter().all(|b| b.state.models_known())
        && !backends.iter().any(|b| b.state.serves(model))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::tests::{healthy, unchecked};

    #[test]
    fn the_factory_builds_named_policies_and_lists_the_others() {
        let routing = Routing::default();
        assert_eq!(
            build(&routing, None).unwrap().default_policy().name(),
            "least-load"
        );
        let fastest = Routing {
            policy: "fastest",
            ..Routing::default()
        };
        let err = build(&fastest, None).err().unwrap();
        assert_eq!(
            err,
            "unknown policy \"fastest\"; the policies are: least-load, power-of-two, \
             round-robin, random, session, cache-aware"
        );
        for name in NAMES {
            let routing = Routing {
                policy: name,
                ..Routing::default()
            };
            assert_eq!(
                build(&routing, None).unwrap().default_policy().name(),
                *name
            );
        }
    }

    #[test]
    fn a_model_may_have_its_own_policy() {
        let routing = Routing {
            model_policies: vec![("chat".into(), "session")],
            ..Routing::default()
        };
        let policies = build(&routing, None).unwrap();
        assert_eq!(policies.for_model(Some("chat")).name(), "session");
        assert_eq!(policies.for_model(Some("other")).name(), "least-load");
        assert_eq!(policies.for_model(None).name(), "least-load");
        assert_eq!(
            policies.describe(),
            "least-load; chat: session (load bound 1.25)"
        );
    }

    #[test]
    fn weighted_draws_skip_the_excepted_one() {
        let a = healthy("http://a", 1, &["m"], 0.0);
        let b = healthy("http://b", 3, &["m"], 0.0);
        let all = [&a, &b];
        assert_eq!(weighted_index(&all, 0.0, None), 0);
        assert_eq!(weighted_index(&all, 0.3, None), 1);
        assert_eq!(weighted_index(&all, 0.999_999, None), 1);
        assert_eq!(weighted_index(&all, 0.0, Some(0)), 1);
        assert_eq!(weighted_index(&all, 0.999_999, Some(1)), 0);
    }

    #[test]
    fn eligible_follows_models_health_and_tries() {
        let a = healthy("http://a", 4, &["llama", "lora-1"], 0.0);
        let b = healthy("http://b", 4, &["qwen"], 0.0);
        let all = vec![a, b];
        let none_tried = |_: &Backend| false;
        let only = |model| eligible(&all, model, none_tried).unwrap();
        assert_eq!(only(Some("lora-1")).len(), 1);
        assert_eq!(only(Some("qwen"))[0].cfg.url, "http://b");
        assert_eq!(only(None).len(), 2);
        assert_eq!(
            eligible(&all, Some("gpt-4"), none_tried).err(),
            Some(NoBackend::UnknownModel(vec![
                "llama".into(),
                "lora-1".into(),
                "qwen".into()
            ]))
        );
        assert_eq!(
            eligible(&all, Some("qwen"), |b: &Backend| b.cfg.url == "http://b").err(),
            Some(NoBackend::Unavailable)
        );

        let with_unknown = vec![
            healthy("http://a", 4, &["llama"], 0.0),
            unchecked("http://new", 4),
        ];
        assert_eq!(
            eligible(&with_unknown, Some("gpt-4"), none_tried).err(),
            Some(NoBackend::Unavailable),
            "a server whose models are not known yet might serve it"
        );

        let settings = crate::config::Settings::default();
        for _ in 0..settings.failure_threshold {
            all[1].state.record_failure("down".into(), &settings);
        }
        assert_eq!(
            eligible(&all, Some("qwen"), none_tried).err(),
            Some(NoBackend::Unavailable)
        );
        assert_eq!(only(None).len(), 1);
    }

    #[test]
    fn ejected_servers_sit_out_unless_none_other_can_serve() {
        let a = healthy("http://a", 4, &["m"], 0.0);
        let b = healthy("http://b", 4, &["m"], 0.0);
        // Health would take it out after 2 failures; keep it healthy to see ejection alone.
        let settings = crate::config::Settings {
            failure_threshold: 100,
            ..Default::default()
        };
        for _ in 0..settings.ejection_threshold {
            a.state.request_failed("HTTP 500".into(), &settings);
        }
        let all = vec![a, b];
        let picked = eligible(&all, Some("m"), |_| false).unwrap();
        assert_eq!(picked.len(), 1);
        assert_eq!(picked[0].cfg.url, "http://b", "a is ejected");
        let b_tried = eligible(&all, Some("m"), |b: &Backend| b.cfg.url == "http://b").unwrap();
        assert_eq!(b_tried[0].cfg.url, "http://a", "the least bad beats a 503");
    }
}
