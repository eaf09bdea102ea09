//! Who may use the router: client API keys (`[auth] keys`), their models and limits, and the
//! operator's key for `/load-stats` and `/metrics`.
//!
//! With no client keys the router is open, as the Python mvllm was. With keys, every
//! inference request needs `Authorization: Bearer <key>`: the key is compared with each
//! configured key in constant time (no early exit on the first differing byte, nor on the
//! first matching key), and the request then carries its key's [`Pass`] in its context,
//! which holds the key's concurrency slot until the request ends and names the key (never
//! the key itself) in logs, metrics and the monitor.
//!
//! A key's limit state (its rate bucket, its tokens of the last minute, its requests in
//! flight) lives in [`ClientState`], kept by name across reloads, so that editing
//! servers.toml does not hand every client a fresh minute.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::header::AUTHORIZATION;
use pingora::http::RequestHeader;
use subtle::ConstantTimeEq;

use crate::config::{ClientKey, Config, SecretKey};
use crate::openai::ApiError;
use crate::stats::{ClientStats, Refusal, Stats};

/// The keys in force (part of the cluster's snapshot).
#[derive(Default)]
pub struct Access {
    clients: Vec<Arc<Client>>,
    admin_key: Option<SecretKey>,
    /// Pass the client's `Authorization` on to the servers instead of checking it.
    forward_authorization: bool,
}

/// One client key and its limit state.
pub struct Client {
    pub name: Arc<str>,
    key: SecretKey,
    models: Vec<String>,
    requests_per_minute: u32,
    max_concurrent: u32,
    tokens_per_minute: u64,
    pub state: Arc<ClientState>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Client({:?})", self.name)
    }
}

/// What a key has used: kept by name across reloads.
pub struct ClientState {
    in_flight: AtomicU32,
    bucket: Mutex<RateBucket>,
    tokens: Mutex<TokenWindow>,
    pub stats: ClientStats,
}

impl ClientState {
    fn new(name: &str, stats: &Stats) -> ClientState {
        ClientState {
            in_flight: AtomicU32::new(0),
            bucket: Mutex::new(RateBucket::default()),
            tokens: Mutex::new(TokenWindow::default()),
            stats: stats.client(name),
        }
    }

    /// Requests of this key being answered now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Relaxed)
    }
}

/// A request's admission: names its key and holds its concurrency slot until dropped.
pub struct Pass {
    pub client: Arc<Client>,
}

impl Drop for Pass {
    fn drop(&mut self) {
        self.client.state.in_flight.fetch_sub(1, Relaxed);
    }
}

impl Pass {
    /// Counts the tokens of the finished request against its key's minute.
    pub fn used_tokens(&self, tokens: u64, now: Instant) {
        if self.client.tokens_per_minute > 0 && tokens > 0 {
            lock(&self.client.state.tokens).add(tokens, now);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Why a request was refused: the error the client gets, and the refusal's label.
#[derive(Debug)]
pub struct Refused {
    pub error: ApiError,
    /// Seconds the client should wait (`Retry-After`), for a limit.
    pub retry_after: Option<u64>,
    pub why: Refusal,
    /// The key refused by its own limits (none for a wrong key).
    pub client: Option<Arc<Client>>,
}

impl Access {
    /// The keys of `config`; the limit state of keys `previous` already had (by name) is kept.
    pub fn build(config: &Config, previous: Option<&Access>, stats: &Stats) -> Access {
        let clients = config
            .clients
            .iter()
            .map(|key: &ClientKey| {
                let state = previous
                    .and_then(|p| p.clients.iter().find(|c| *c.name == *key.name))
                    .map(|c| Arc::clone(&c.state))
                    .unwrap_or_else(|| Arc::new(ClientState::new(&key.name, stats)));
                Arc::new(Client {
                    name: Arc::from(key.name.as_str()),
                    key: key.key.clone(),
                    models: key.models.clone(),
                    requests_per_minute: key.requests_per_minute,
                    max_concurrent: key.max_concurrent_requests,
                    tokens_per_minute: key.tokens_per_minute,
                    state,
                })
            })
            .collect();
        Access {
            clients,
            admin_key: config.admin_key.clone(),
            forward_authorization: config.auth.forward_client_authorization,
        }
    }

    /// Whether inference requests need a client key.
    pub fn checks_clients(&self) -> bool {
        !self.clients.is_empty() && !self.forward_authorization
    }

    pub fn clients(&self) -> &[Arc<Client>] {
        &self.clients
    }

    /// The client key a request presents; `Ok(None)` when the router is open.
    pub fn identify(&self, header: &RequestHeader) -> Result<Option<Arc<Client>>, Refused> {
        if !self.checks_clients() {
            return Ok(None);
        }
        let Some(presented) = bearer(header) else {
            return Err(unauthorized(
                "You didn't provide an API key. You need to provide your API key in an \
                 Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            ));
        };
        // Every key is compared, whatever matched before: the time taken does not tell
        // which key (or how much of one) matched.
        let mut found = None;
        for client in &self.clients {
            let same = presented.as_bytes().ct_eq(client.key.expose().as_bytes());
            if bool::from(same) {
                found = Some(client);
            }
        }
        match found {
            Some(client) => Ok(Some(Arc::clone(client))),
            None => Err(unauthorized(
                "Incorrect API key provided. Check the key you were given for this router.",
            )),
        }
    }

    /// Whether the operator's endpoints may be served to this request: always without an
    /// admin key, else only with it.
    pub fn admin_allows(&self, header: &RequestHeader) -> Result<(), Refused> {
        let Some(admin) = &self.admin_key else {
            return Ok(());
        };
        let ok = bearer(header)
            .is_some_and(|p| bool::from(p.as_bytes().ct_eq(admin.expose().as_bytes())));
        if ok {
            Ok(())
        } else {
            Err(unauthorized(
                "This endpoint needs the router's admin key (Authorization: Bearer <admin_key>).",
            ))
        }
    }
}

/// The token of `Authorization: Bearer <token>` (the scheme in any case).
fn bearer(header: &RequestHeader) -> Option<&str> {
    let value = header.headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn unauthorized(message: &str) -> Refused {
    Refused {
        error: ApiError::new(401, "AuthenticationError", message.to_string()),
        retry_after: None,
        why: Refusal::Unauthorized,
        client: None,
    }
}

fn too_many(client: &Arc<Client>, message: String, wait: Duration, why: Refusal) -> Refused {
    // Whole seconds, rounded up, at least 1: what Retry-After can say.
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    Refused {
        error: ApiError::new(429, "RateLimitError", message),
        retry_after: Some(seconds.max(1)),
        why,
        client: Some(Arc::clone(client)),
    }
}

impl Client {
    /// Whether the key may use `model` (every model when its list is empty).
    pub fn allows_model(&self, model: Option<&str>) -> bool {
        self.models.is_empty() || model.is_some_and(|m| self.models.iter().any(|a| a == m))
    }

    /// The models the key may use; empty: every model.
    pub fn models(&self) -> &[String] {
        &self.models
    }

    /// Admits a request under the key's limits: its concurrency, its rate, its tokens. The
    /// [`Pass`] holds the concurrency slot until the request ends.
    pub fn admit(self: &Arc<Client>, now: Instant) -> Result<Pass, Refused> {
        let state = &self.state;
        let before = state.in_flight.fetch_add(1, Relaxed);
        // From here the slot is held; dropping `pass` gives it back on every refusal below.
        let pass = Pass {
            client: Arc::clone(self),
        };
        if self.max_concurrent > 0 && before >= self.max_concurrent {
            return Err(too_many(
                self,
                format!(
                    "The key {:?} has {} requests in progress, its limit (max_concurrent_requests).",
                    self.name, self.max_concurrent
                ),
                Duration::from_secs(1),
                Refusal::Concurrency,
            ));
        }
        if self.tokens_per_minute > 0 {
            let mut window = lock(&state.tokens);
            if let Some(wait) = window.wait_for(self.tokens_per_minute, now) {
                return Err(too_many(
                    self,
                    format!(
                        "The key {:?} used its {} tokens per minute (tokens_per_minute).",
                        self.name, self.tokens_per_minute
                    ),
                    wait,
                    Refusal::TokenBudget,
                ));
            }
        }
        if self.requests_per_minute > 0 {
            let mut bucket = lock(&state.bucket);
            if let Err(wait) = bucket.take(self.requests_per_minute, now) {
                return Err(too_many(
                    self,
                    format!(
                        "The key {:?} is over its {} requests per minute (requests_per_minute).",
                        self.name, self.requests_per_minute
                    ),
                    wait,
                    Refusal::RateLimit,
                ));
            }
        }
        Ok(pass)
    }
}

/// A token bucket holding a minute's worth of requests, refilled steadily
/// (`per_minute / 60` a second). It starts full.
#[derive(Default)]
struct RateBucket {
    /// Requests that may be made now; `None` before the first (then full).
    tokens: Option<f64>,
    last: Option<Instant>,
}

impl RateBucket {
    /// Takes one request, or says how long until one may be made.
    fn take(&mut self, per_minute: u32, now: Instant) -> Result<(), Duration> {
        let capacity = f64::from(per_minute);
        let rate = capacity / 60.0;
        let elapsed = self
            .last
            .map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64());
        let tokens = (self.tokens.unwrap_or(capacity) + elapsed * rate).min(capacity);
        self.last = Some(now);
        if tokens >= 1.0 {
            self.tokens = Some(tokens - 1.0);
            Ok(())
        } else {
            self.tokens = Some(tokens);
            Err(Duration::from_secs_f64((1.0 - tokens) / rate))
        }
    }
}

/// Tokens used over the last minute, by second.
#[derive(Default)]
struct TokenWindow {
    /// (when, tokens), oldest first; at most one entry per second.
    used: VecDeque<(Instant, u64)>,
}

const MINUTE: Duration = Duration::from_secs(60);

impl TokenWindow {
    fn forget_old(&mut self, now: Instant) {
        while self
            .used
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) >= MINUTE)
        {
            self.used.pop_front();
        }
    }

    fn add(&mut self, tokens: u64, now: Instant) {
        self.forget_old(now);
        match self.used.back_mut() {
            Some((t, n)) if now.saturating_duration_since(*t) < Duration::from_secs(1) => {
                *n += tokens;
            }
            _ => self.used.push_back((now, tokens)),
        }
    }

    /// `None` if a request may start now (the last minute used less than `budget`), else how
    /// long until enough of that minute's tokens age out.
    fn wait_for(&mut self, budget: u64, now: Instant) -> Option<Duration> {
        self.forget_old(now);
        let mut total: u64 = self.used.iter().map(|(_, n)| n).sum();
        if total < budget {
            return None;
        }
        for (t, n) in &self.used {
            total -= n;
            if total < budget {
                return Some(MINUTE.saturating_sub(now.saturating_duration_since(*t)));
            }
        }
        Some(MINUTE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(text: &str) -> Config {
        Config::parse(text, Path::new("servers.toml")).unwrap()
    }

    fn request(auth: Option<&str>) -> RequestHeader {
        let mut h = RequestHeader::build("POST", b"/v1/chat/completions", None).unwrap();
        if let Some(auth) = auth {
            h.insert_header("authorization", auth).unwrap();
        }
        h
    }

    const KEYS: &str = r#"
[auth]
admin_key = "root-key"
keys = [
  { name = "team-a", key = "sk-a", models = ["llama"], max_concurrent_requests = 1 },
  { name = "team-b", key = "sk-b", requests_per_minute = 2, tokens_per_minute = 100 },
]
"#;

    #[test]
    fn open_without_keys_and_keys_identify_by_name() {
        let stats = Stats::new();
        let open = Access::build(&config(""), None, &stats);
        assert!(open.identify(&request(None)).unwrap().is_none());
        assert!(open.admin_allows(&request(None)).is_ok());

        let access = Access::build(&config(KEYS), None, &stats);
        let refused = access.identify(&request(None)).err().unwrap();
        assert_eq!(refused.error.status, 401);
        let refused = access
            .identify(&request(Some("Bearer sk-c")))
            .err()
            .unwrap();
        assert!(
            !refused.error.message.contains("sk-c"),
            "keys are never echoed"
        );
        let a = access
            .identify(&request(Some("bearer sk-a")))
            .unwrap()
            .unwrap();
        assert_eq!(&*a.name, "team-a");
        assert!(access.identify(&request(Some("Basic sk-a"))).is_err());
        assert!(access.admin_allows(&request(Some("Bearer sk-a"))).is_err());
        assert!(access
            .admin_allows(&request(Some("Bearer root-key")))
            .is_ok());
        assert!(a.allows_model(Some("llama")) && !a.allows_model(Some("qwen")));
        assert!(
            !a.allows_model(None),
            "a key limited to models must name one"
        );
    }

    #[test]
    fn concurrency_rate_and_tokens_limit_with_a_wait() {
        let stats = Stats::new();
        let access = Access::build(&config(KEYS), None, &stats);
        let now = Instant::now();
        let a = access
            .identify(&request(Some("Bearer sk-a")))
            .unwrap()
            .unwrap();
        let first = a.admit(now).ok().unwrap();
        let second = a.admit(now).err().unwrap();
        assert_eq!((second.error.status, second.retry_after), (429, Some(1)));
        drop(first);
        assert_eq!(
            a.state.in_flight(),
            0,
            "refusals and ended requests give slots back"
        );
        assert!(a.admit(now).is_ok());

        let b = access
            .identify(&request(Some("Bearer sk-b")))
            .unwrap()
            .unwrap();
        let pass = b.admit(now).ok().unwrap();
        drop(b.admit(now).ok().unwrap());
        let over = b.admit(now).err().unwrap();
        assert_eq!(over.retry_after, Some(30), "2 a minute: one more in 30 s");
        let later = now + Duration::from_secs(30);
        pass.used_tokens(150, later);
        let spent = b.admit(later).err().unwrap();
        assert!(matches!(spent.why, Refusal::TokenBudget));
        assert_eq!(spent.retry_after, Some(60));
        assert!(b.admit(later + MINUTE).is_ok(), "the tokens age out");
    }

    #[test]
    fn limit_state_survives_a_reload() {
        let stats = Stats::new();
        let first = Access::build(&config(KEYS), None, &stats);
        let b = first
            .identify(&request(Some("Bearer sk-b")))
            .unwrap()
            .unwrap();
        let now = Instant::now();
        drop(b.admit(now).ok().unwrap());
        drop(b.admit(now).ok().unwrap());
        let second = Access::build(&config(KEYS), Some(&first), &stats);
        let b = second
            .identify(&request(Some("Bearer sk-b")))
            .unwrap()
            .unwrap();
        assert!(b.admit(now).is_err(), "a reload is not a fresh minute");
    }
}
