//! least-load's shortlist: the servers worth looking at, so that a choice among a thousand
//! does not look at a thousand.
//!
//! A full choice lists the eligible servers and costs each one (about 10 µs with 1,000
//! servers: two passes over every server's state). Most of that is wasted: only the few
//! cheapest can win. So a [`Shortlists`] keeps, per model asked for, the [`SIZE`] servers that
//! were cheapest at the last full look, and the cost of the cheapest one left out (the
//! *threshold*). A choice then costs only the shortlisted servers, live (their load, health,
//! ejection and models read now, as a full look would), and takes the cheapest — unless
//! even that one now costs more than the threshold, when a server left out may be cheaper:
//! then it looks at all of them again.
//!
//! What the router's own requests add only raises costs, so a server left out cannot
//! overtake the shortlist through them (the threshold check catches the shortlist filling
//! up). What lowers a left-out server's cost — its requests ending, a scrape, a server
//! coming back — is seen at the next full look, at most [`REFRESH_MS`] later. At low request
//! rates every choice is a full look; the shortlist pays off exactly when choices are many.

use std::sync::Mutex;

use super::least_load::{cheapest, cost};
use super::{eligible, NoBackend};
use crate::backend::{Backend, ModelId};
use crate::speed::Relative;

/// How many servers a shortlist holds.
pub const SIZE: usize = 16;

/// How old a shortlist may get before a choice looks at every server again.
pub const REFRESH_MS: u64 = 2;

/// Models whose shortlists are kept at once (the oldest is dropped for a new one).
const MODELS: usize = 16;

/// The shortlists of one least-load policy, one per model asked for.
#[derive(Default)]
pub struct Shortlists {
    lists: Mutex<Vec<Shortlist>>,
}

struct Shortlist {
    /// Which servers (the snapshot's list: its address and length) and which model.
    backends: (usize, usize),
    model: Option<u64>,
    /// Indices into the servers, the cheapest first at the time of the full look.
    members: Vec<usize>,
    /// The cost of the cheapest server left out (infinite if none was).
    threshold: f64,
    /// The fastest learned speed among all eligible servers (speed.rs's relative factor).
    fastest: Option<f64>,
    built_ms: u64,
}

impl Shortlists {
    /// The server for a first attempt at a request for `model` among `backends`: the same
    /// choice as listing the eligible ones and picking the cheapest (least_load.rs), from the
    /// shortlist when it can be trusted.
    pub fn choose<'a>(
        &self,
        backends: &'a [Backend],
        model: Option<&str>,
    ) -> Result<&'a Backend, NoBackend> {
        self.choose_at(backends, model, crate::ejection::now_ms())
    }

    /// [`choose`](Self::choose) at the time `now` (`ejection::now_ms`).
    fn choose_at<'a>(
        &self,
        backends: &'a [Backend],
        model: Option<&str>,
        now: u64,
    ) -> Result<&'a Backend, NoBackend> {
        if backends.len() <= SIZE {
            // A shortlist of everyone: the plain choice is as cheap.
            return eligible(backends, model, |_| false).map(|c| cheapest(&c));
        }
        let id = model.map(ModelId::new);
        let key = (backends.as_ptr() as usize, backends.len());
        let model_hash = id.as_ref().map(ModelId::hash);
        let mut lists = self.lists.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(list) = lists
            .iter()
            .find(|l| l.backends == key && l.model == model_hash)
        {
            if now.saturating_sub(list.built_ms) <= REFRESH_MS {
                if let Some(chosen) = list.pick(backends, id.as_ref(), now) {
                    return Ok(chosen);
                }
            }
        }
        let (list, chosen) = Shortlist::build(backends, model, now)?;
        let list = Shortlist {
            backends: key,
            model: model_hash,
            ..list
        };
        let same = lists
            .iter()
            .position(|l| l.backends == key && l.model == model_hash);
        let oldest = || (0..lists.len()).min_by_key(|&i| lists[i].built_ms);
        match same.or_else(|| (lists.len() >= MODELS).then(oldest).flatten()) {
            Some(i) => lists[i] = list,
            None => lists.push(list),
        }
        Ok(chosen)
    }
}

impl Shortlist {
    /// The full look: every eligible server costed; the cheapest (ties at random) is chosen,
    /// the [`SIZE`] cheapest are kept.
    fn build<'a>(
        backends: &'a [Backend],
        model: Option<&str>,
        now: u64,
    ) -> Result<(Shortlist, &'a Backend), NoBackend> {
        let candidates = eligible(backends, model, |_| false)?;
        let relative = Relative::among(&candidates);
        // (cost, a random tie-breaker, index): equal servers share the load, and which of
        // them make the shortlist changes from one look to the next.
        let mut costed: Vec<(f64, u32, usize)> = candidates
            .iter()
            .map(|b| (cost(b, &relative), fastrand::u32(..), index_of(backends, b)))
            .collect();
        let by_cost =
            |a: &(f64, u32, usize), b: &(f64, u32, usize)| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1));
        let threshold = if costed.len() > SIZE {
            costed.select_nth_unstable_by(SIZE, by_cost);
            let threshold = costed[SIZE].0;
            costed.truncate(SIZE);
            threshold
        } else {
            f64::INFINITY
        };
        costed.sort_unstable_by(by_cost);
        let chosen = &backends[costed[0].2];
        let list = Shortlist {
            backends: (0, 0),
            model: None,
            members: costed.iter().map(|c| c.2).collect(),
            threshold,
            fastest: relative.fastest(),
            built_ms: now,
        };
        Ok((list, chosen))
    }

    /// The cheapest shortlisted server that may still take the request, if the shortlist can
    /// be trusted: none is missing (health, ejection or models changed) and the cheapest is
    /// no dearer than the threshold.
    fn pick<'a>(
        &self,
        backends: &'a [Backend],
        model: Option<&ModelId>,
        now: u64,
    ) -> Option<&'a Backend> {
        let relative = Relative::with_fastest(self.fastest, now);
        let mut best: Option<(&Backend, f64)> = None;
        let mut ties = 1;
        for &i in &self.members {
            let b = backends.get(i)?;
            let state = &b.state;
            let may_take = state.is_healthy()
                && model.is_none_or(|m| state.serves_id(m))
                && !state.ejection.is_ejected(now);
            if !may_take {
                return None;
            }
            let c = cost(b, &relative);
            match best {
                Some((_, lowest)) if c > lowest + 1e-9 => {}
                Some((_, lowest)) if c >= lowest - 1e-9 => {
                    ties += 1;
                    if fastrand::usize(..ties) == 0 {
                        best = Some((b, lowest));
                    }
                }
                _ => {
                    best = Some((b, c));
                    ties = 1;
                }
            }
        }
        best.filter(|(_, c)| *c <= self.threshold + 1e-9)
            .map(|(b, _)| b)
    }
}

/// The index in `backends` of `b`, which is one of them.
fn index_of(backends: &[Backend], b: &Backend) -> usize {
    let offset = b as *const Backend as usize - backends.as_ptr() as usize;
    offset / std::mem::size_of::<Backend>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::tests::healthy;
    use crate::features::RequestFeatures;
    use crate::policy::{LeastLoad, Policy};

    fn servers(n: usize) -> Vec<Backend> {
        (0..n)
            .map(|i| healthy(&format!("http://s{i}"), 4, &["m"], (i % 4) as f64))
            .collect()
    }

    #[test]
    fn it_chooses_what_a_full_look_chooses() {
        let all = servers(100);
        let lists = Shortlists::default();
        let mut guards = Vec::new();
        // 300 requests into 100 servers of capacity 4: the shortlist fills up, is found out
        // by its threshold and rebuilt, again and again; every choice is a cheapest server.
        for _ in 0..300 {
            let chosen = lists.choose(&all, Some("m")).unwrap();
            let candidates = eligible(&all, Some("m"), |_| false).unwrap();
            let relative = Relative::among(&candidates);
            let cheapest = candidates
                .iter()
                .map(|b| cost(b, &relative))
                .fold(f64::INFINITY, f64::min);
            assert!(
                (cost(chosen, &relative) - cheapest).abs() < 1e-9,
                "{} costs {}, the cheapest {cheapest}",
                chosen.cfg.url,
                cost(chosen, &relative)
            );
            guards.push(chosen.state.start_request());
        }
    }

    #[test]
    fn a_shortlisted_server_that_goes_down_is_never_chosen() {
        let all = servers(40);
        let lists = Shortlists::default();
        let first = lists.choose(&all, Some("m")).unwrap();
        let settings = crate::config::Settings::default();
        for _ in 0..settings.failure_threshold {
            first.state.record_failure("down".into(), &settings);
        }
        for _ in 0..50 {
            let chosen = lists.choose(&all, Some("m")).unwrap();
            assert!(chosen.state.is_healthy(), "{} is down", chosen.cfg.url);
        }
    }

    #[test]
    fn equal_servers_share_the_load() {
        let all: Vec<Backend> = (0..64)
            .map(|i| healthy(&format!("http://s{i}"), 4, &["m"], 0.0))
            .collect();
        let lists = Shortlists::default();
        let guards: Vec<_> = (0..64)
            .map(|_| lists.choose(&all, Some("m")).unwrap().state.start_request())
            .collect();
        assert!(
            all.iter().all(|b| b.state.in_flight() == 1),
            "64 requests, one on each of 64 idle servers"
        );
        drop(guards);
    }

    #[test]
    fn a_server_left_out_that_frees_up_is_seen_within_the_refresh() {
        let all = servers(40); // loads 0, 1, 2, 3, 0, 1, …
        let lists = Shortlists::default();
        let t = 1_000;
        let first = lists.choose_at(&all, Some("m"), t).unwrap();
        // A server far from the shortlist (load 3) empties its queue.
        let freed = all
            .iter()
            .find(|b| b.load_units() == 3.0 && !std::ptr::eq(*b, first))
            .unwrap();
        let settings = crate::config::Settings::default();
        freed
            .state
            .scrape_succeeded(crate::backend::tests::sample(0.0, 0.0), &settings);
        let busy = |b: &Backend| b.load_units();
        let chosen = lists.choose_at(&all, Some("m"), t + 1).unwrap();
        assert_eq!(
            busy(chosen),
            0.0,
            "one of the idle ones, from the shortlist"
        );
        // Past the refresh the full look is taken again and the freed server is one of the
        // cheapest; with the shortlist's ties taken up, it gets a request.
        let mut guards = Vec::new();
        let mut got_it = false;
        for _ in 0..20 {
            let chosen = lists
                .choose_at(&all, Some("m"), t + 1 + REFRESH_MS + 1)
                .unwrap();
            got_it |= std::ptr::eq(chosen, freed);
            guards.push(chosen.state.start_request());
        }
        assert!(got_it, "the freed server was never chosen");
    }

    #[test]
    fn unknown_models_and_any_model_are_answered_as_by_a_full_look() {
        let all = servers(30);
        let lists = Shortlists::default();
        assert!(matches!(
            lists.choose(&all, Some("gpt-4")),
            Err(NoBackend::UnknownModel(known)) if known == ["m"]
        ));
        assert_eq!(lists.choose(&all, None).unwrap().load_units(), 0.0);
        let policy = LeastLoad::default();
        let chosen = policy
            .choose(&all, Some("m"), &RequestFeatures::default())
            .unwrap();
        assert_eq!(chosen.load_units(), 0.0);
    }
}
