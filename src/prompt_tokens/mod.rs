//! A request's prompt as token ids, exactly as the server will see them, for matching it
//! against what the servers' KV cache events say they hold. Asked only when the policy uses
//! them (`cache-aware`) and some server serving the model has its events followed.
//!
//! Two sources:
//! - a local tokenizer configured for the model (`[routing] tokenizers`, local.rs): the
//!   model's `tokenizer.json` and chat template, applied in the router;
//! - otherwise the server's own `/tokenize` (vLLM takes a chat's `messages`, with the
//!   request's template options, or a completion's `prompt`), through a bounded cache
//!   (cache.rs). A chat is keyed by a hash chained over its messages, so the next turn of a
//!   conversation (its earlier messages plus the new ones) finds the tokens of the turn before
//!   at once: it is routed on those (the history is the prefix that matters) while the whole
//!   prompt is tokenized in the background for the turn after. Only a prompt with no cached
//!   prefix waits for `/tokenize`, at most `tokenize_timeout`; past it, or when it fails, the
//!   request is routed on the approximate estimate.

pub mod cache;
pub mod local;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use xxhash_rust::xxh3::Xxh3;

use crate::backend::Backend;
use crate::cluster::Snapshot;
use crate::features::RequestFeatures;
use crate::scrape::Scraper;
use cache::TokenCache;

/// The request fields that change how a prompt is tokenized, besides the prompt itself
/// (vLLM's `/tokenize` takes the same ones).
#[derive(Deserialize, Serialize, Default, Clone, Copy)]
pub(crate) struct Options<'a> {
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub(crate) add_generation_prompt: Option<&'a RawValue>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub(crate) continue_final_message: Option<&'a RawValue>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub(crate) add_special_tokens: Option<&'a RawValue>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub(crate) chat_template: Option<&'a RawValue>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub(crate) chat_template_kwargs: Option<&'a RawValue>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub(crate) tools: Option<&'a RawValue>,
}

/// What a request's body holds for tokenizing. (The options are read as fields of their own:
/// serde's `flatten` cannot borrow raw JSON.)
#[derive(Deserialize)]
struct Request<'a> {
    #[serde(default, borrow)]
    messages: Option<Vec<&'a RawValue>>,
    #[serde(default, borrow)]
    prompt: Option<&'a RawValue>,
    #[serde(default, borrow)]
    add_generation_prompt: Option<&'a RawValue>,
    #[serde(default, borrow)]
    continue_final_message: Option<&'a RawValue>,
    #[serde(default, borrow)]
    add_special_tokens: Option<&'a RawValue>,
    #[serde(default, borrow)]
    chat_template: Option<&'a RawValue>,
    #[serde(default, borrow)]
    chat_template_kwargs: Option<&'a RawValue>,
    #[serde(default, borrow)]
    tools: Option<&'a RawValue>,
}

impl<'a> Request<'a> {
    fn options(&self) -> Options<'a> {
        Options {
            add_generation_prompt: self.add_generation_prompt,
            continue_final_message: self.continue_final_message,
            add_special_tokens: self.add_special_tokens,
            chat_template: self.chat_template,
            chat_template_kwargs: self.chat_template_kwargs,
            tools: self.tools,
        }
    }
}

/// The body sent to `/tokenize`.
#[derive(Serialize)]
struct TokenizeBody<'a> {
    model: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    messages: Option<&'a [&'a RawValue]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    add_generation_prompt: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    continue_final_message: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    add_special_tokens: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    chat_template: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    chat_template_kwargs: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tools: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Tokenized {
    tokens: Vec<u32>,
}

/// How prompts were tokenized, for `/load-stats`.
#[derive(Default)]
pub struct Counts {
    pub local: AtomicU64,
    pub given: AtomicU64,
    pub cached: AtomicU64,
    pub cached_prefix: AtomicU64,
    pub fetched: AtomicU64,
    pub failed: AtomicU64,
}

/// The router's tokenizing of prompts: the cache, the clients for servers' `/tokenize`, and
/// counts. Lives as long as the router (across reloads).
pub struct Tokenization {
    cache: Mutex<TokenCache>,
    /// Keys whose tokens are being fetched in the background.
    fetching: Mutex<HashSet<u64>>,
    /// A client per server URL (its TLS settings), with the timeout it was made for.
    clients: Mutex<HashMap<String, (Duration, Arc<Scraper>)>>,
    pub counts: Counts,
}

/// Where a prompt's tokens are to come from.
enum Source {
    /// Known already.
    Ready(Arc<[u32]>),
    /// A chat's earlier messages are known: their tokens, while the whole is fetched.
    Prefix(Arc<[u32]>),
    /// To be fetched (and cached).
    Fetch,
}

impl Tokenization {
    pub fn new(budget: usize) -> Arc<Tokenization> {
        Arc::new(Tokenization {
            cache: Mutex::new(TokenCache::new(budget)),
            fetching: Mutex::default(),
            clients: Mutex::default(),
            counts: Counts::default(),
        })
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, TokenCache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What `/load-stats` shows: how prompts were tokenized, and the cache.
    pub fn report(&self) -> serde_json::Value {
        let cache = self.cache();
        let count = |c: &AtomicU64| c.load(Relaxed);
        let c = &self.counts;
        serde_json::json!({
            "local": count(&c.local),
            "token_ids_given": count(&c.given),
            "cached": count(&c.cached),
            "cached_prefix": count(&c.cached_prefix),
            "fetched": count(&c.fetched),
            "failed": count(&c.failed),
            "cache_entries": cache.len(),
            "cache_bytes": cache.bytes(),
        })
    }

    /// The request's prompt tokens, when the policy can use them: some eligible server has its
    /// KV cache events followed. `None` routes on the approximate estimate.
    pub async fn for_request(
        self: &Arc<Self>,
        snapshot: &Arc<Snapshot>,
        features: &RequestFeatures,
        candidates: &[&Backend],
    ) -> Option<Arc<[u32]>> {
        if !candidates.iter().any(|b| !b.state.kv.is_empty()) {
            return None;
        }
        let model = features.model.as_deref()?;
        self.cache()
            .set_budget(budget_bytes(snapshot.routing.tokenize_cache_mib));
        if let Some(local) = snapshot.tokenizers.get(model) {
            // Off the proxy's threads: a long prompt takes milliseconds (bench/tokenize.rs).
            let local = Arc::clone(local);
            let body = features.body.clone();
            let tokens = tokio::task::spawn_blocking(move || tokenize_body(&local, &body)).await;
            match tokens {
                Ok(Ok(tokens)) => {
                    self.counts.local.fetch_add(1, Relaxed);
                    return Some(tokens.into());
                }
                Ok(Err(why)) => {
                    tracing::debug!(%why, model, "the local tokenizer could not tokenize the prompt");
                    self.counts.failed.fetch_add(1, Relaxed);
                    return None;
                }
                Err(_) => {
                    self.counts.failed.fetch_add(1, Relaxed);
                    return None;
                }
            }
        }
        let request: Request = serde_json::from_slice(&features.body).ok()?;
        match self.lookup(model, &request) {
            Some(Source::Ready(tokens)) => return Some(tokens),
            Some(Source::Prefix(tokens)) => {
                self.complete_in_background(snapshot, features, candidates);
                return Some(tokens);
            }
            Some(Source::Fetch) => {}
            None => return None,
        }
        let server = tokenizing_server(candidates)?;
        let timeout = snapshot.routing.tokenize_timeout;
        let fetched =
            tokio::time::timeout(timeout, self.fetch(server, model, &request, timeout)).await;
        match fetched {
            Ok(Ok(tokens)) => {
                self.counts.fetched.fetch_add(1, Relaxed);
                self.store(model, &request, &tokens);
                Some(tokens)
            }
            Ok(Err(why)) => {
                self.counts.failed.fetch_add(1, Relaxed);
                tracing::debug!(server = %server.cfg.url, %why, "/tokenize failed: routing on the approximate estimate");
                None
            }
            Err(_) => {
                self.counts.failed.fetch_add(1, Relaxed);
                None
            }
        }
    }

    /// The tokens the cache holds for a request body (its own, or its conversation's earlier
    /// turn), without fetching anything: what a request whose tokens are cached costs (timed
    /// by bench/tokenize.rs), and a way to look at the cache.
    pub fn cached(self: &Arc<Self>, model: &str, body: &[u8]) -> Option<Arc<[u32]>> {
        let request: Request = serde_json::from_slice(body).ok()?;
        match self.lookup(model, &request)? {
            Source::Ready(tokens) | Source::Prefix(tokens) => Some(tokens),
            Source::Fetch => None,
        }
    }

    /// Stores a body's tokens as `/tokenize` gave them (as a fetch does).
    pub fn remember(self: &Arc<Self>, model: &str, body: &[u8], tokens: Arc<[u32]>) {
        if let Ok(request) = serde_json::from_slice::<Request>(body) {
            self.store(model, &request, &tokens);
        }
    }

    /// Caches a request's tokens: under its own key, and for a chat also, as prefix entries,
    /// under the keys of its leading messages (where nothing is yet): their share of the
    /// tokens, estimated by their share of the messages' bytes less a tenth, so that it stays
    /// inside them. Another user's question after the same system prompt then finds that
    /// prompt's tokens without waiting for `/tokenize`.
    fn store(&self, model: &str, request: &Request, tokens: &Arc<[u32]>) {
        let base = options_hash(model, &request.options());
        let mut cache = self.cache();
        match (&request.messages, request.prompt) {
            (Some(messages), _) if !messages.is_empty() => {
                let keys = message_keys(base, messages);
                let total: usize = messages.iter().map(|m| m.get().len()).sum();
                let mut bytes = 0;
                for (k, (&key, message)) in keys.iter().zip(messages).enumerate() {
                    bytes += message.get().len();
                    if k + 1 == keys.len() {
                        cache.insert(key, Arc::clone(tokens), true);
                    } else {
                        let share = tokens.len() * bytes / total.max(1) * 9 / 10;
                        if share > 0 {
                            cache.insert(key, tokens[..share].into(), false);
                        }
                    }
                }
            }
            (_, Some(prompt)) => {
                let key = chain(base, prompt.get().as_bytes());
                cache.insert(key, Arc::clone(tokens), true);
            }
            _ => {}
        }
    }

    /// The tokens already known for the request, or the key to fetch them under. A chat whose
    /// earlier messages were tokenized gets those tokens now, and the whole prompt is fetched in
    /// the background (see the module's doc).
    fn lookup(self: &Arc<Self>, model: &str, request: &Request) -> Option<Source> {
        let base = options_hash(model, &request.options());
        match (&request.messages, request.prompt) {
            (Some(messages), _) if !messages.is_empty() => {
                let keys = message_keys(base, messages);
                let whole = *keys.last()?;
                let mut cache = self.cache();
                // The whole prompt's own tokens; else the longest run of leading messages
                // with any (a prefix entry under the whole key counts as a prefix too).
                let prefix = match cache.get(whole) {
                    Some((tokens, true)) => {
                        self.counts.cached.fetch_add(1, Relaxed);
                        return Some(Source::Ready(tokens));
                    }
                    Some((tokens, false)) => Some(tokens),
                    None => keys[..keys.len() - 1]
                        .iter()
                        .rev()
                        .find_map(|&key| cache.get(key))
                        .map(|(tokens, _)| tokens),
                };
                drop(cache);
                match prefix {
                    Some(tokens) => {
                        self.counts.cached_prefix.fetch_add(1, Relaxed);
                        Some(Source::Prefix(tokens))
                    }
                    None => Some(Source::Fetch),
                }
            }
            (_, Some(prompt)) => {
                // Token ids given by the client are the prompt itself.
                if let Ok(tokens) = serde_json::from_str::<Vec<u32>>(prompt.get()) {
                    self.counts.given.fetch_add(1, Relaxed);
                    return Some(Source::Ready(tokens.into()));
                }
                let key = chain(base, prompt.get().as_bytes());
                match self.cache().get(key) {
                    Some((tokens, _)) => {
                        self.counts.cached.fetch_add(1, Relaxed);
                        Some(Source::Ready(tokens))
                    }
                    None => Some(Source::Fetch),
                }
            }
            _ => None,
        }
    }

    /// Fetches the whole prompt's tokens in the background and caches them, unless that is
    /// already under way; for the next turn of a conversation.
    fn complete_in_background(
        self: &Arc<Self>,
        snapshot: &Arc<Snapshot>,
        features: &RequestFeatures,
        candidates: &[&Backend],
    ) {
        let Some(model) = features.model.clone() else {
            return;
        };
        if snapshot.tokenizers.contains_key(&model) {
            return;
        }
        let Ok(request) = serde_json::from_slice::<Request>(&features.body) else {
            return;
        };
        let Some(messages) = &request.messages else {
            return;
        };
        let Some(&whole) = message_keys(options_hash(&model, &request.options()), messages).last()
        else {
            return;
        };
        if self.cache().has_exact(whole) {
            return;
        }
        if !self
            .fetching
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(whole)
        {
            return;
        }
        let Some(server) = tokenizing_server(candidates) else {
            self.done_fetching(whole);
            return;
        };
        let url = server.cfg.url.clone();
        let snapshot = Arc::clone(snapshot);
        let body = features.body.clone();
        let timeout = snapshot
            .routing
            .tokenize_timeout
            .max(Duration::from_secs(5));
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let server = snapshot.backends.iter().find(|b| b.cfg.url == url);
            let request = serde_json::from_slice::<Request>(&body);
            if let (Some(server), Ok(request)) = (server, request) {
                let fetched =
                    tokio::time::timeout(timeout, this.fetch(server, &model, &request, timeout))
                        .await;
                if let Ok(Ok(tokens)) = fetched {
                    this.counts.fetched.fetch_add(1, Relaxed);
                    this.store(&model, &request, &tokens);
                }
            }
            this.done_fetching(whole);
        });
    }

    fn done_fetching(&self, key: u64) {
        self.fetching
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
    }

    /// Asks `server`'s `/tokenize` for the request's prompt.
    async fn fetch(
        &self,
        server: &Backend,
        model: &str,
        request: &Request<'_>,
        timeout: Duration,
    ) -> Result<Arc<[u32]>, String> {
        let body = TokenizeBody {
            model,
            messages: request.messages.as_deref(),
            prompt: if request.messages.is_some() {
                None
            } else {
                request.prompt
            },
            add_generation_prompt: request.add_generation_prompt,
            continue_final_message: request.continue_final_message,
            add_special_tokens: request.add_special_tokens,
            chat_template: request.chat_template,
            chat_template_kwargs: request.chat_template_kwargs,
            tools: request.tools,
        };
        let body = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
        let client = self.client(server, timeout);
        let base = crate::poller::scrape_base(server);
        let answer = client
            .post_json(
                &format!("{base}/tokenize"),
                server.cfg.api_key.as_deref(),
                body,
            )
            .await
            .map_err(|e| e.to_string())?;
        let tokenized: Tokenized = serde_json::from_slice(&answer)
            .map_err(|e| format!("/tokenize answered something else than token ids: {e}"))?;
        Ok(tokenized.tokens.into())
    }

    /// The client for `server`, made again when its timeout changed.
    fn client(&self, server: &Backend, timeout: Duration) -> Arc<Scraper> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((made_for, client)) = clients.get(&server.cfg.url) {
            if *made_for == timeout {
                return Arc::clone(client);
            }
        }
        let client = Arc::new(crate::poller::scraper_for(server, timeout));
        clients.insert(server.cfg.url.clone(), (timeout, Arc::clone(&client)));
        client
    }
}

/// A request body's prompt tokens by a local tokenizer (the sim's `--tokenizer`).
pub fn tokenize_body(local: &local::LocalTokenizer, body: &[u8]) -> Result<Vec<u32>, String> {
    let request: Request = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    local.tokenize(
        request.messages.as_deref(),
        request.prompt,
        &request.options(),
    )
}

/// The server asked for a prompt's tokens: the least loaded candidate (they serve the same
/// model, so any gives the same tokens).
fn tokenizing_server<'a>(candidates: &[&'a Backend]) -> Option<&'a Backend> {
    candidates
        .iter()
        .copied()
        .min_by(|a, b| a.score().total_cmp(&b.score()))
}

fn budget_bytes(mib: f64) -> usize {
    (mib * 1024.0 * 1024.0) as usize
}

/// A hash of the model and the options that change tokenizing: the seed of a prompt's keys.
fn options_hash(model: &str, options: &Options) -> u64 {
    let mut hasher = Xxh3::new();
    hasher.update(model.as_bytes());
    for option in [
        options.add_generation_prompt,
        options.continue_final_message,
        options.add_special_tokens,
        options.chat_template,
        options.chat_template_kwargs,
        options.tools,
    ] {
        hasher.update(&[0xff]);
        if let Some(raw) = option {
            hasher.update(raw.get().as_bytes());
        }
    }
    hasher.digest()
}

fn chain(previous: u64, bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(bytes, previous)
}

/// The key of each leading run of messages: key k covers messages 0..=k.
fn message_keys(base: u64, messages: &[&RawValue]) -> Vec<u64> {
    let mut key = base;
    messages
        .iter()
        .map(|m| {
            key = chain(key, m.get().as_bytes());
            key
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: &str) -> Request<'_> {
        serde_json::from_str(body).unwrap()
    }

    #[test]
    fn a_conversation_finds_its_earlier_turn_and_options_change_the_key() {
        let t = Tokenization::new(1 << 20);
        let turn1 = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
        let turn2 = r#"{"model":"m","messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"yo"},{"role":"user","content":"more"}]}"#;
        assert!(matches!(
            t.lookup("m", &request(turn1)),
            Some(Source::Fetch)
        ));
        t.store("m", &request(turn1), &vec![1, 2, 3].into());
        let Some(Source::Ready(tokens)) = t.lookup("m", &request(turn1)) else {
            panic!("the same prompt is cached");
        };
        assert_eq!(&*tokens, &[1, 2, 3]);
        let Some(Source::Prefix(tokens)) = t.lookup("m", &request(turn2)) else {
            panic!("the next turn starts with the cached one");
        };
        assert_eq!(&*tokens, &[1, 2, 3]);
        assert_eq!(t.counts.cached_prefix.load(Relaxed), 1);
        let other_model = t.lookup("other", &request(turn1));
        assert!(matches!(other_model, Some(Source::Fetch)));
        let with_tools = r#"{"model":"m","tools":[],"messages":[{"role":"user","content":"hi"}]}"#;
        assert!(matches!(
            t.lookup("m", &request(with_tools)),
            Some(Source::Fetch)
        ));
        let ids = r#"{"model":"m","prompt":[5,6,7]}"#;
        let Some(Source::Ready(tokens)) = t.lookup("m", &request(ids)) else {
            panic!("token ids are the prompt");
        };
        assert_eq!(&*tokens, &[5, 6, 7]);
    }

    #[test]
    fn another_question_after_the_same_system_prompt_finds_the_prompts_tokens() {
        let t = Tokenization::new(1 << 20);
        let system = "s".repeat(900);
        let ask = |question: &str| {
            format!(
                r#"{{"model":"m","messages":[{{"role":"system","content":"{system}"}},{{"role":"user","content":"{question}"}}]}}"#
            )
        };
        let first = ask("the first question, about fifty bytes of text here");
        let tokens: Arc<[u32]> = (0..1000).collect::<Vec<u32>>().into();
        t.store("m", &request(&first), &tokens);
        let second = ask("another one");
        let Some(Source::Prefix(prefix)) = t.lookup("m", &request(&second)) else {
            panic!("the system prompt's tokens are found");
        };
        // The system message is about 94 % of the bytes: 90 % of that share of the tokens.
        assert!((800..=900).contains(&prefix.len()), "{}", prefix.len());
        assert_eq!(&prefix[..], &tokens[..prefix.len()]);
        let only_system =
            format!(r#"{{"model":"m","messages":[{{"role":"system","content":"{system}"}}]}}"#);
        assert!(
            matches!(
                t.lookup("m", &request(&only_system)),
                Some(Source::Prefix(_))
            ),
            "a prefix entry is never taken for the whole prompt"
        );
    }
}
