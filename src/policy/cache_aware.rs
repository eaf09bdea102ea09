//! `cache-aware`: the server expected to give the first token soonest, counting what of the
//! prompt its KV cache already holds.
//!
//! A server that has the prompt's prefix cached skips that part of the prefill; a server that
//! is busier makes the request wait. Both are put in one unit, the expected time to first
//! token in decode steps of the fastest candidate, so there is no threshold to tune: a cached
//! server wins while its saving is larger than its extra wait, and loses to an idle one as soon
//! as it is not. What each server holds comes from its KV cache events when they are followed
//! and the request's token ids are known (kv_events/, prompt_tokens/): exactly, per
//! data-parallel engine. Otherwise, and for a server whose event index is not trusted right
//! now, from the prefix index (prefix_index.rs), fed by the requests this policy routes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::pending::Pending;
use super::prefix_index::{chunk_hashes, PrefixIndex, BYTES_PER_TOKEN, CHUNK_BYTES};
use super::Policy;
use crate::backend::Backend;
use crate::features::RequestFeatures;
use crate::speed::Relative;

/// What a prompt token's prefill costs, in decode steps. On its own a prompt token is about a
/// hundredth of a step (vLLM on current GPUs prefills 10,000+ prompt tokens a second and runs
/// 50–100 decode steps a second; `mvllm sim` defaults alike), but a prefill holds up the whole
/// running batch while it runs (prefill shares the engine's steps), so the cluster pays for a
/// cache miss more than once. Three hundredths measured best on the routing benchmark among
/// 0.01, 0.03 and 0.06 (multi-turn chats at 80 %: prefix hits 70 → 76 %, lower p50 and p99;
/// 0.06 made the shared-prompt p99 worse): BENCHMARKS.md.
const PREFILL_STEPS_PER_TOKEN: f64 = 0.03;

/// The answer length assumed until a server's is learned (speed.rs), in tokens.
const DEFAULT_ANSWER_TOKENS: f64 = 128.0;

/// Picks the server with the lowest expected time to first token (see [`expected_ttft`]).
pub struct CacheAware {
    index: Arc<Mutex<PrefixIndex>>,
    /// Prefixes just sent, not yet in the servers' KV cache events (pending.rs).
    pending: Mutex<Pending>,
}

impl CacheAware {
    /// A policy with a prefix index of `budget` bytes that forgets prefixes idle for
    /// `max_idle`; `previous` (the policy a reload replaces) passes its index on when its
    /// budget is the same, so a reload does not forget what the servers hold.
    pub fn new(budget: usize, max_idle: Duration, previous: Option<&dyn Policy>) -> CacheAware {
        let kept = previous
            .and_then(|p| p.prefix_index())
            .filter(|index| index.lock().is_ok_and(|i| i.budget() == budget));
        CacheAware {
            index: kept
                .cloned()
                .unwrap_or_else(|| Arc::new(Mutex::new(PrefixIndex::new(budget, max_idle)))),
            pending: Mutex::default(),
        }
    }

    fn index(&self) -> std::sync::MutexGuard<'_, PrefixIndex> {
        // The index is only ever left half-updated by a panic in its own code; what it holds
        // is advice, so a poisoned lock is taken as it is.
        self.index
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Each candidate's expected time to first token (and, where its events say exactly, the
    /// engine that gives it), the prompt, and how deep each server holding some of it matches
    /// in the approximate index.
    fn estimate(
        &self,
        candidates: &[&Backend],
        request: &RequestFeatures,
    ) -> (Vec<Cost>, Prompt, Vec<(u32, usize)>) {
        // Hashing the prompt needs no lock.
        let prompt = Prompt::of(request);
        let depths = self.index().matched(&prompt.hashes);
        let relative = Relative::among(candidates);
        // What each server's events say it has cached (per trusted engine), when the tokens
        // are known.
        let exact: Vec<Option<Vec<(usize, usize)>>> = candidates
            .iter()
            .map(|b| exact_cached(b, request))
            .collect();
        // A prefix no server's events know yet may be on its way into one: sent there in the
        // last seconds, and being prefilled (pending.rs). Only then does that count.
        let unknown = exact
            .iter()
            .flatten()
            .flatten()
            .all(|&(_, cached)| cached == 0);
        let pending = (request.tokens.is_some() && unknown).then(|| {
            self.pending
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
        });
        let now = std::time::Instant::now();
        let costs = candidates
            .iter()
            .zip(exact)
            .map(|(b, exact)| {
                if let (Some(tokens), Some(engines)) = (request.tokens.as_deref(), exact) {
                    let sent = pending.as_ref().map_or(0.0, |p| {
                        prompt.cached_tokens(p.depth(b.state.id, &prompt.hashes, now))
                    });
                    return precise_ttft(b, &relative, tokens.len() as f64, engines, sent);
                }
                let depth = depth_of(&depths, b.state.id);
                let cost = expected_ttft(b, &relative, prompt.tokens, prompt.cached_tokens(depth));
                (cost, None)
            })
            .collect();
        (costs, prompt, depths)
    }
}

/// For each engine of `backend` whose KV event index is trusted: the tokens of the request's
/// prompt it has cached. `None` when the request's tokens are not known or no engine's index
/// is trusted (then the approximate estimate is used).
fn exact_cached(backend: &Backend, request: &RequestFeatures) -> Option<Vec<(usize, usize)>> {
    let tokens = request.tokens.as_deref()?;
    let lora = lora_of(backend, request.model.as_deref());
    backend.state.kv.cached_prefixes(tokens, lora)
}

/// The expected time to first token on `backend` from its KV cache events: for each of its
/// `engines` (rank, tokens cached) with its own share of the load, the cached tokens being
/// `sent` instead when more (a prefix sent there in the last seconds that no events show
/// yet); the best engine, and its rank.
fn precise_ttft(
    backend: &Backend,
    relative: &Relative,
    prompt: f64,
    engines: Vec<(usize, usize)>,
    sent: f64,
) -> Cost {
    let sample = backend.state.load.load();
    let loads = sample.as_ref().map(|s| s.engines).unwrap_or_default();
    let count = usize::from(loads.count).max(engines.len()).max(1);
    let total_units: f64 = (0..count).filter_map(|r| loads.of(r)).sum();
    let units = backend.load_units();
    let capacity = f64::from(backend.cfg.max_concurrent_requests.max(1)) / count as f64;
    engines
        .into_iter()
        .map(|(rank, cached)| {
            // The engine's share of the server's load (the router's own count included).
            let share = match loads.of(rank) {
                Some(own) if total_units > 0.0 => own / total_units,
                _ => 1.0 / count as f64,
            };
            let cached = (cached as f64).max(sent.min(prompt));
            let cost = ttft_at(backend, relative, units * share, capacity, prompt, cached);
            (cost, (count > 1).then_some(rank))
        })
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .unwrap_or((f64::INFINITY, None))
}

/// The LoRA adapter a request for `model` uses on `backend`: the model itself when the
/// server lists it with a parent (vLLM keys an adapter's cached blocks by its name).
fn lora_of<'a>(backend: &Backend, model: Option<&'a str>) -> Option<&'a str> {
    let model = model?;
    backend
        .state
        .models
        .load()
        .iter()
        .any(|m| m.id == model && m.card.get("parent").is_some_and(|p| !p.is_null()))
        .then_some(model)
}

/// A candidate's expected time to first token, and the data-parallel engine that gives it
/// (when its KV cache events say which).
type Cost = (f64, Option<usize>);

/// A request's prompt as the index sees it.
struct Prompt {
    hashes: Vec<u64>,
    /// Its length in tokens, estimated from its bytes.
    tokens: f64,
}

impl Prompt {
    fn of(request: &RequestFeatures) -> Prompt {
        let text = request.prompt().unwrap_or_default();
        Prompt {
            hashes: chunk_hashes(request.model.as_deref().unwrap_or(""), text),
            tokens: (text.len() / BYTES_PER_TOKEN) as f64,
        }
    }

    /// Tokens cached on a server holding its first `depth` chunks.
    fn cached_tokens(&self, depth: usize) -> f64 {
        ((depth * CHUNK_BYTES / BYTES_PER_TOKEN) as f64).min(self.tokens)
    }
}

/// How many leading chunks the server with `id` holds, from [`PrefixIndex::matched`]'s list.
fn depth_of(depths: &[(u32, usize)], id: u32) -> usize {
    depths
        .binary_search_by_key(&id, |&(server, _)| server)
        .map_or(0, |i| depths[i].1)
}

/// The expected time to first token on `backend`, in decode steps of the fastest candidate:
///
/// - its utilisation with this request, u = (load + 1) / capacity, slows every step: a full
///   batch steps about twice as slowly as an empty one, so the request's first step (which
///   holds its prefill) takes (1 + u) steps;
/// - the prefill is the prompt tokens not in its cache, at [`PREFILL_STEPS_PER_TOKEN`];
/// - past capacity the request queues: each request ahead in the queue waits for a slot, and
///   slots free up at capacity per answer length (the server's learned tokens per answer);
/// - all of it times how much slower than the fastest candidate the server decodes.
pub fn expected_ttft(
    backend: &Backend,
    relative: &Relative,
    prompt_tokens: f64,
    cached_tokens: f64,
) -> f64 {
    let capacity = f64::from(backend.cfg.max_concurrent_requests.max(1));
    ttft_at(
        backend,
        relative,
        backend.load_units(),
        capacity,
        prompt_tokens,
        cached_tokens,
    )
}

/// [`expected_ttft`] for a load of `load_units` on a capacity of `capacity` (a server's, or
/// one data-parallel engine's share).
fn ttft_at(
    backend: &Backend,
    relative: &Relative,
    load_units: f64,
    capacity: f64,
    prompt_tokens: f64,
    cached_tokens: f64,
) -> f64 {
    let utilisation = (load_units + 1.0) / capacity.max(1e-9);
    let prefill = (prompt_tokens - cached_tokens).max(0.0) * PREFILL_STEPS_PER_TOKEN;
    let answer = backend
        .state
        .speed
        .tokens_per_answer()
        .unwrap_or(DEFAULT_ANSWER_TOKENS);
    let queue = (utilisation - 1.0).max(0.0) * answer;
    relative.factor(backend) * ((1.0 + utilisation) * (1.0 + prefill) + queue)
}

impl Policy for CacheAware {
    fn name(&self) -> &'static str {
        "cache-aware"
    }

    fn pick<'a>(&self, candidates: &[&'a Backend], request: &RequestFeatures) -> &'a Backend {
        let (costs, prompt, depths) = self.estimate(candidates, request);
        let chosen = super::lowest(candidates, |i| costs[i].0);
        let rank = candidates
            .iter()
            .position(|b| std::ptr::eq(*b, chosen))
            .and_then(|i| costs[i].1);
        request.engine.set(chosen.state.id, rank);
        if request.tokens.is_some() {
            self.pending
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .record(chosen.state.id, &prompt.hashes, std::time::Instant::now());
        }
        let sample = chosen.state.load.load();
        let kv_chunks = sample
            .as_ref()
            .and_then(|s| s.kv_tokens)
            .map(|tokens| (tokens * BYTES_PER_TOKEN as f64 / CHUNK_BYTES as f64) as usize);
        let mut index = self.index();
        if let Some(counters) = sample.as_ref().and_then(|s| s.prefix_cache) {
            index.observe_counters(chosen.state.id, counters.queries, counters.hits);
        }
        let depth = depth_of(&depths, chosen.state.id);
        index.record(
            chosen.state.id,
            &prompt.hashes,
            prompt.tokens,
            kv_chunks,
            depth,
        );
        chosen
    }

    fn scores(&self, candidates: &[&Backend], request: &RequestFeatures) -> Vec<f64> {
        self.estimate(candidates, request)
            .0
            .into_iter()
            .map(|(cost, _)| cost)
            .collect()
    }

    fn uses_prompt_tokens(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        let index = self.index();
        format!(
            "cache-aware (prefix index {} of {} KiB, {} prefix chunks of {CHUNK_BYTES} B)",
            index.bytes() / 1024,
            index.budget() / 1024,
            index.pairs()
        )
    }

    fn prefix_index(&self) -> Option<&Arc<Mutex<PrefixIndex>>> {
        Some(&self.index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::tests::healthy;
    use bytes::Bytes;

    fn policy() -> CacheAware {
        CacheAware::new(1 << 20, Duration::from_secs(3600), None)
    }

    /// A chat request whose system prompt is `system` repeated to `bytes` bytes.
    fn chat(system: &str, bytes: usize, question: &str) -> RequestFeatures {
        let body = format!(
            r#"{{"model":"m","messages":[{{"role":"system","content":"{}"}},{{"role":"user","content":"{question}"}}]}}"#,
            system.repeat(bytes / system.len())
        );
        crate::features::tests::features_of(Bytes::from(body))
    }

    /// A server whose KV cache events are followed, its engine's index live and empty.
    fn with_events(url: &str) -> Backend {
        let b = healthy(url, 8, &["m"], 0.0);
        let engine = b.state.kv.engine(0, 1 << 20);
        crate::kv_events::engines::lock(&engine).status = crate::kv_events::engines::Status::Live;
        b
    }

    #[test]
    fn a_new_prefix_follows_the_one_just_sent_until_the_events_tell() {
        let servers: Vec<Backend> = (0..4)
            .map(|i| with_events(&format!("http://s{i}")))
            .collect();
        let all: Vec<&Backend> = servers.iter().collect();
        let policy = policy();
        let tokens: Arc<[u32]> = (0..2000).collect::<Vec<u32>>().into();
        let request = |question: &str| {
            let mut r = chat("A new system prompt. ", 8000, question);
            r.tokens = Some(Arc::clone(&tokens));
            r
        };
        // No server's events know the prompt: the first goes by load, the next ones follow it
        // (it is being prefilled there), though the router counts it busier now.
        let first = policy.pick(&all, &request("q0"));
        let _busy = first.state.start_request();
        for i in 1..5 {
            let chosen = policy.pick(&all, &request(&format!("q{i}")));
            assert_eq!(chosen.cfg.url, first.cfg.url, "request {i}");
        }
        // Once a server's events show the prompt cached elsewhere, the events decide.
        let other = servers.iter().find(|b| b.cfg.url != first.cfg.url).unwrap();
        let engine = other.state.kv.engine(0, 1 << 20);
        let stored = crate::kv_events::wire::Event::BlockStored {
            block_hashes: (1..=125).collect(),
            parent_block_hash: None,
            token_ids: tokens.to_vec(),
            block_size: 16,
            lora_id: None,
            medium: None,
            lora_name: None,
        };
        crate::kv_events::engines::lock(&engine)
            .index
            .apply(&stored);
        assert_eq!(policy.pick(&all, &request("q9")).cfg.url, other.cfg.url);
    }

    #[test]
    fn requests_sharing_a_prefix_go_where_it_is_cached() {
        let servers: Vec<Backend> = (0..4)
            .map(|i| healthy(&format!("http://s{i}"), 8, &["m"], 1.0))
            .collect();
        let all: Vec<&Backend> = servers.iter().collect();
        let policy = policy();
        let first = policy.pick(&all, &chat("You are a pirate. ", 8000, "q0"));
        for i in 1..20 {
            let chosen = policy.pick(&all, &chat("You are a pirate. ", 8000, &format!("q{i}")));
            assert_eq!(chosen.cfg.url, first.cfg.url, "request {i}");
        }
        // Another system prompt has no home yet: it goes by load, like the first did.
        let scores = policy.scores(&all, &chat("You are a poet. ", 8000, "q"));
        assert!(
            scores.windows(2).all(|w| (w[0] - w[1]).abs() < 1e-9),
            "{scores:?}"
        );
    }

    #[test]
    fn adding_a_server_moves_no_cached_prefix_and_removing_one_moves_only_its_own() {
        let servers: Vec<Backend> = (0..3)
            .map(|i| healthy(&format!("http://s{i}"), 8, &["m"], 1.0))
            .collect();
        let policy = policy();
        let three: Vec<&Backend> = servers.iter().collect();
        let prompts: Vec<RequestFeatures> = (0..12)
            .map(|p| chat(&format!("Prompt {p}. "), 6000, "q"))
            .collect();
        let homes: Vec<String> = prompts
            .iter()
            .map(|p| policy.pick(&three, p).cfg.url.clone())
            .collect();
        let added = healthy("http://new", 8, &["m"], 1.0);
        let four: Vec<&Backend> = servers.iter().chain([&added]).collect();
        for (prompt, home) in prompts.iter().zip(&homes) {
            assert_eq!(
                &policy.pick(&four, prompt).cfg.url,
                home,
                "a new server took it"
            );
        }
        let without_first: Vec<&Backend> = four.iter().copied().skip(1).collect();
        for (prompt, home) in prompts.iter().zip(&homes) {
            let now = &policy.pick(&without_first, prompt).cfg.url;
            if home != "http://s0" {
                assert_eq!(now, home, "only the removed server's prefixes move");
            }
        }
    }

    #[test]
    fn a_cached_server_much_busier_loses_to_an_idle_one() {
        let cached = healthy("http://cached", 8, &["m"], 0.0);
        let idle = healthy("http://idle", 8, &["m"], 0.0);
        let policy = policy();
        let request = chat("Long shared context. ", 8000, "q");
        assert_eq!(policy.pick(&[&cached], &request).cfg.url, "http://cached");
        let both = [&cached, &idle];
        // Moderately busy: the saved prefill (2,000 tokens, 60 steps) outweighs a fuller batch.
        let _busy: Vec<_> = (0..6).map(|_| cached.state.start_request()).collect();
        assert_eq!(policy.pick(&both, &request).cfg.url, "http://cached");
        // Past its capacity with a queue, the wait is longer than the prefill saved.
        let _queue: Vec<_> = (0..8).map(|_| cached.state.start_request()).collect();
        let scores = policy.scores(&both, &request);
        assert!(scores[0] > scores[1], "{scores:?}");
        assert_eq!(policy.pick(&both, &request).cfg.url, "http://idle");
        // Every turn of a conversation resends the history: the next turn finds it too.
        let next = chat("Long shared context. ", 8000, "q and then more");
        let depths = policy.index().matched(&Prompt::of(&next).hashes);
        assert_eq!(depths.len(), 2, "both have the shared head now: {depths:?}");
    }

    #[test]
    fn with_equal_caches_the_faster_and_idler_server_wins() {
        let fast = healthy("http://fast", 8, &["m"], 2.0);
        let slow = healthy("http://slow", 8, &["m"], 2.0);
        fast.state.speed.observe(0.01);
        slow.state.speed.observe(0.03);
        let policy = policy();
        for i in 0..10 {
            let request = chat("Unique. ", 400, &format!("{i}"));
            assert_eq!(
                policy.pick(&[&slow, &fast], &request).cfg.url,
                "http://fast"
            );
        }
        let idle = healthy("http://idle", 8, &["m"], 0.0);
        let busy = healthy("http://busy", 8, &["m"], 6.0);
        let request = chat("Short. ", 40, "q");
        assert_eq!(
            policy.pick(&[&busy, &idle], &request).cfg.url,
            "http://idle"
        );
    }

    #[test]
    fn requests_without_a_prompt_go_by_load_and_a_reload_keeps_the_index() {
        let busy = healthy("http://busy", 8, &["m"], 6.0);
        let idle = healthy("http://idle", 8, &["m"], 0.0);
        let policy = policy();
        let bare = RequestFeatures::default();
        assert_eq!(policy.pick(&[&busy, &idle], &bare).cfg.url, "http://idle");

        policy.pick(&[&idle], &chat("Kept. ", 4000, "q"));
        let pairs = policy.index().pairs();
        assert!(pairs > 0);
        let reloaded = CacheAware::new(1 << 20, Duration::from_secs(3600), Some(&policy));
        assert_eq!(
            reloaded.index().pairs(),
            pairs,
            "same budget: the index is kept"
        );
        let resized = CacheAware::new(2 << 20, Duration::from_secs(3600), Some(&policy));
        assert_eq!(resized.index().pairs(), 0, "a new budget starts afresh");
        assert!(policy.describe().starts_with("cache-aware (prefix index "));
    }
}
