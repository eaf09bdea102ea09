//! How a server is chosen for a request.
//!
//! [`eligible`] decides which servers may take the request at all: healthy, serving the
//! requested model, not already tried for it, and not ejected (unless all of those are). Every policy starts from that list and picks
//! one; a policy sees the request's [`RequestFeatures`] (model, stream, prompt, session key,
//! client), so a new input does not change every signature. Policies are one file each; the
//! one in force is named by `[routing] policy` in servers.toml and built by [`build`], and a
//! reload can replace it.

mod least_load;

pub use least_load::LeastLoad;

use crate::backend::Backend;
use crate::config::Routing;
use crate::features::RequestFeatures;

/// Picks one server among the eligible ones.
pub trait Policy: Send + Sync {
    /// The name `[routing] policy` gives it.
    fn name(&self) -> &'static str;

    /// Picks one of `candidates`, which is never empty.
    fn pick<'a>(&self, candidates: &[&'a Backend], request: &RequestFeatures) -> &'a Backend;

    /// The figure this policy compares for `backend` (lower is better), as the monitor's why
    /// view shows it.
    fn score(&self, backend: &Backend, request: &RequestFeatures) -> f64;
}

/// The policies `[routing] policy` may name.
pub const NAMES: &[&str] = &["least-load"];

/// Builds the policy a `[routing]` section names.
pub fn build(routing: &Routing) -> Result<Box<dyn Policy>, String> {
    match routing.policy {
        "least-load" => Ok(Box::new(LeastLoad)),
        other => Err(format!(
            "unknown policy {other:?}; the policies are: {}",
            NAMES.join(", ")
        )),
    }
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
    let mut eligible = Vec::with_capacity(backends.len());
    eligible.extend(
        backends.iter().filter(|b| {
            b.state.is_healthy() && model.is_none_or(|m| b.state.serves(m)) && !tried(b)
        }),
    );
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
        assert_eq!(build(&routing).unwrap().name(), "least-load");
        let err = build(&Routing { policy: "fastest" }).err().unwrap();
        assert_eq!(
            err,
            "unknown policy \"fastest\"; the policies are: least-load"
        );
        for name in NAMES {
            assert_eq!(build(&Routing { policy: name }).unwrap().name(), *name);
        }
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
