//! Every key of servers.toml, declared once (see `key.rs` for what a declaration gives).
//! A key's doc comment is its description in `check-config`; keep the first sentence short.

use std::time::Duration;

use super::key::{
    section, DnsServer, Endpoint, EnvName, FilePath, Flag, Header, ListenAddress, ModelPaths,
    ModelPolicies, Models, Name, Number, OneOf, Seconds, Secret, ServerUrl, TableList, Url, Whole,
    ZmqEndpoint,
};

section! {
    /// One entry of `[servers] servers = [...]`.
    pub struct ServerEntry in "servers.servers" {
        /// The server, `http://HOST[:PORT]` or `https://HOST[:PORT]`; host names are resolved
        /// in the background.
        url: Option<Url> = ServerUrl,
        /// How many requests the server is sized for: the denominator of its load score.
        max_concurrent_requests: u32 = Whole { default: 3, min: 1, max: 1_000_000 },
        /// Sent to that server as `Authorization: Bearer <api_key>` (its `--api-key`).
        api_key: Option<String> = Secret,
        /// What serves it: `vllm`, `sglang`, or `auto` (told apart by its `/metrics`). An
        /// `sglang` server without `--enable-metrics` is checked on its `/health` instead.
        engine: &'static str = OneOf { default: "auto", allowed: crate::config::ENGINES },
        /// Every address the host name resolves to is a server of its own, with this entry's
        /// settings (a headless Kubernetes Service of vLLM pods); looked up again every
        /// `dns_refresh_interval`, added and removed like a reload.
        dns_discovery: bool = Flag { default: false },
        /// For an `https://` server: the CA certificates (PEM) its certificate must chain to,
        /// instead of the system's.
        ca_file: Option<String> = FilePath,
        /// For an `https://` server that asks for a client certificate (mTLS): the router's
        /// certificate chain (PEM); with `client_key_file`.
        client_cert_file: Option<String> = FilePath,
        /// The private key (PEM) of `client_cert_file`.
        client_key_file: Option<String> = FilePath,
        /// The server's KV cache events (its `--kv-events-config` `endpoint`, as the router
        /// reaches it): `tcp://HOST:PORT`; data-parallel engine N publishes on PORT + N.
        /// Overrides `[routing] kv_events_port`.
        kv_events: Option<String> = ZmqEndpoint,
        /// The server's KV event replay socket (`replay_endpoint`), `tcp://HOST:PORT`, for
        /// fetching events the router missed. Overrides `[routing] kv_events_replay_port`.
        kv_events_replay: Option<String> = ZmqEndpoint,
    }
}

section! {
    /// Client API keys and the operator's key (`[auth]`).
    pub struct Auth in "auth" {
        /// The client keys, `{ name = "...", key = "..." }` each (or `key_file`, `key_env`
        /// instead of `key`), with optional limits; with any, every inference request needs
        /// `Authorization: Bearer <key>`.
        keys: usize = TableList { entry: "client key" },
        /// The operator's key, required on `/load-stats` and `/metrics` when set.
        admin_key: Option<String> = Secret,
        /// Read the operator's key from this file instead (reloaded with the config).
        admin_key_file: Option<String> = FilePath,
        /// Read the operator's key from this environment variable instead.
        admin_key_env: Option<String> = EnvName,
        /// Pass the client's `Authorization` header on to the servers as it came (vLLM checks
        /// its own `--api-key`) instead of checking client keys here; a server's `api_key` is
        /// then used only for the router's own reads of `/metrics` and `/v1/models`.
        forward_client_authorization: bool = Flag { default: false },
    }
}

section! {
    /// One entry of `[auth] keys = [...]`.
    pub struct ClientKeyEntry in "auth.keys" {
        /// The key's name: what logs, `/metrics` and the monitor show (never the key).
        name: Option<String> = Name,
        /// The key itself, as clients send it (`Authorization: Bearer <key>`).
        key: Option<String> = Secret,
        /// Read the key from this file instead (surrounding whitespace is dropped).
        key_file: Option<String> = FilePath,
        /// Read the key from this environment variable instead.
        key_env: Option<String> = EnvName,
        /// The models this key may use; others answer 404 as if they did not exist.
        models: Vec<String> = Models,
        /// Requests per minute (a bucket holding a minute's worth, refilled steadily);
        /// over it, 429 with `Retry-After`. 0: no limit.
        requests_per_minute: u32 = Whole { default: 0, min: 0, max: 100_000_000 },
        /// Requests of this key being answered at once; over it, 429. 0: no limit.
        max_concurrent_requests: u32 = Whole { default: 0, min: 0, max: 1_000_000 },
        /// Tokens (prompt and completion, from the answers' usage) per rolling minute; over
        /// it, 429 until enough of the last minute's tokens age out. 0: no limit.
        tokens_per_minute: u64 = Whole { default: 0, min: 0, max: 1u64 << 40 },
    }
}

section! {
    /// What a client connection may take (`[limits]`), against slow or hostile clients.
    pub struct Limits in "limits" {
        /// Time from a connection's start (or from the end of the previous request on a
        /// kept-alive one, plus `idle_timeout`) to a complete request header; past it the
        /// connection is closed.
        header_timeout: Duration = Seconds { default: 10.0, min: 0.1 },
        /// Time to receive a whole request body; past it, 408.
        body_timeout: Duration = Seconds { default: 60.0, min: 0.1 },
        /// How long a kept-alive client connection may sit idle between requests.
        idle_timeout: Duration = Seconds { default: 60.0, min: 1.0 },
        /// Largest request header (request line and all fields), in bytes; above it, 431.
        max_header_bytes: u32 = Whole { default: 32 * 1024, min: 1024, max: 1_048_575 },
        /// Most header fields in a request; above it, 431.
        max_headers: u32 = Whole { default: 100, min: 8, max: 256 },
        /// Client connections open at once; a connection over it gets 503 and is closed.
        max_connections: u32 = Whole { default: 10_000, min: 1, max: 10_000_000 },
    }
}

section! {
    /// The TLS listener for clients (`[tls]`).
    pub struct TlsListener in "tls" {
        /// Serve HTTPS on this address too (with `cert_file` and `key_file`). Read at start.
        listen: Option<std::net::SocketAddr> = ListenAddress,
        /// The certificate chain (PEM) the TLS listener presents; read again when it changes.
        cert_file: Option<String> = FilePath,
        /// The private key (PEM) of `cert_file`; read again when it changes.
        key_file: Option<String> = FilePath,
    }
}

section! {
    /// The router's settings (`[config]`).
    pub struct Settings in "config" {
        /// How often each server's `/metrics` is scraped.
        metrics_interval: Duration = Seconds { default: 1.0, min: 0.05 },
        /// How often each server's `/v1/models` is refreshed.
        health_check_interval: Duration = Seconds { default: 10.0, min: 0.1 },
        /// Timeout of one scrape of `/metrics` or `/v1/models`.
        health_check_timeout: Duration = Seconds { default: 5.0, min: 0.01 },
        /// Consecutive failures (scrapes, or real requests: connect errors, resets,
        /// timeouts, 5xx) that make a server unhealthy.
        failure_threshold: u32 = Whole { default: 2, min: 1, max: 100 },
        /// Consecutive good scrapes that make an unhealthy server healthy again (a new
        /// server joins at its first).
        recovery_threshold: u32 = Whole { default: 2, min: 1, max: 100 },
        /// Upper bound on a whole proxied request, first byte to last.
        request_timeout: Duration = Seconds { default: 600.0, min: 0.01 },
        /// How long a server may take to send its response header (queueing and time to
        /// first token included) before the request is retried elsewhere.
        first_byte_timeout: Duration = Seconds { default: 120.0, min: 0.01 },
        /// Further servers tried when one fails before the client got a byte.
        max_retries: u32 = Whole { default: 3, min: 0, max: 100 },
        /// Failures of real requests in a row (connect errors, resets, first-byte timeouts,
        /// 5xx, answers broken off) that eject a server for a while; 0 turns ejection off.
        ejection_threshold: u32 = Whole { default: 3, min: 0, max: 100 },
        /// How long a first ejection lasts; each further one in a row lasts twice as long.
        ejection_time: Duration = Seconds { default: 1.0, min: 0.01 },
        /// The longest ejection.
        ejection_max_time: Duration = Seconds { default: 30.0, min: 0.01 },
        /// The retry budget: retries over the last 10 s may be this percentage of the requests
        /// in them (plus `retry_budget_floor`), so a failing cluster is not sent every request
        /// `max_retries` more times.
        retry_budget_percent: u32 = Whole { default: 20, min: 0, max: 100 },
        /// Retries over the last 10 s always allowed, whatever the traffic (a quiet router can
        /// always retry).
        retry_budget_floor: u32 = Whole { default: 10, min: 0, max: 1_000_000 },
        /// Wait before a retry: a random time up to this, doubled at each further retry (at
        /// most ten times it); 0 retries at once.
        retry_backoff: Duration = Seconds { default: 0.025, min: 0.0 },
        /// Largest request body accepted, in bytes (413 above it).
        max_body_bytes: u64 = Whole { default: 64 * 1024 * 1024, min: 1024, max: 1u64 << 40 },
        /// How often server host names are resolved again.
        dns_refresh_interval: Duration = Seconds { default: 30.0, min: 1.0 },
        /// The DNS server (`IP` or `IP:PORT`) that `dns_discovery` entries are looked up
        /// with, instead of the system's (/etc/resolv.conf).
        dns_server: Option<std::net::SocketAddr> = DnsServer,
        /// How often servers.toml is compared with the running config even without file
        /// events (some network and container file systems deliver none).
        config_reload_interval: Duration = Seconds { default: 30.0, min: 0.1 },
        /// Resume a stream whose server dies on another server, as a continuation of what the
        /// client already has (chat and completions streams with one choice and no logprobs).
        resume_streams: bool = Flag { default: false },
        /// Add `x-mvllm-upstream` (the server that answered) and `x-mvllm-attempts` to
        /// forwarded answers, for debugging from the client side. Off: server addresses are
        /// internal.
        expose_routing_headers: bool = Flag { default: false },
        /// Serve `/metrics` and `/load-stats` on this address only (with `/health`, nothing else),
        /// to keep them off the public port. Read at start: a change needs a restart.
        admin_address: Option<std::net::SocketAddr> = ListenAddress,
        /// Export a trace of every request to this OpenTelemetry collector (OTLP over HTTP,
        /// protobuf; `/v1/traces` is added unless the path is given). Without it, the standard
        /// `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) turns traces on. Read at
        /// start: a change needs a restart.
        otlp_endpoint: Option<String> = Endpoint,
    }
    ignored [
        "auto_recovery_threshold",
        "enable_active_health_check",
        "health_check_max_response_time",
        "health_check_min_success_rate",
        "health_check_window_size",
        "health_check_consecutive_failures",
    ] because "it configured the Python mvllm's active health check; here health follows \
               /metrics scrapes and real requests, see failure_threshold and recovery_threshold"
}

section! {
    /// How a server is chosen (`[routing]`).
    pub struct Routing in "routing" {
        /// The policy that picks one of the servers that may take a request (healthy,
        /// serving its model, not yet tried).
        policy: &'static str = OneOf { default: "least-load", allowed: crate::policy::NAMES },
        /// Policies for some models instead of `policy`, e.g. `{ "llama-70b" = "session" }`.
        model_policies: Vec<(String, &'static str)> = ModelPolicies { allowed: crate::policy::NAMES },
        /// The request header that names a session (`session` policy); without it, the
        /// OpenAI `user` field does.
        session_header: String = Header { default: crate::features::SESSION_HEADER },
        /// How far above its fair share of the load (by capacity) a server keeps taking its
        /// sessions (`session` policy) before the next server on the ring takes new requests.
        session_load_bound: f64 = Number { default: 1.25, min: 1.0, max: 10.0 },
        /// The most memory the `cache-aware` policy's prefix index takes, in MiB (one index
        /// per policy: the default and each model's own).
        cache_budget_mib: f64 = Number { default: 32.0, min: 1.0, max: 65536.0 },
        /// How long the `cache-aware` policy remembers a prefix that no request used, in
        /// seconds (servers evict by cache pressure too; the index follows their KV size).
        cache_idle_seconds: f64 = Number { default: 3600.0, min: 1.0, max: 604800.0 },
        /// Subscribe to every server's KV cache events on this port of its host (vLLM's
        /// `--kv-events-config` `endpoint` port); 0: only servers with their own `kv_events`.
        /// The `cache-aware` policy then knows exactly what each server has cached.
        kv_events_port: u16 = Whole { default: 0, min: 0, max: 65535 },
        /// The port of every server's KV event replay socket (`replay_endpoint`); 0: none.
        kv_events_replay_port: u16 = Whole { default: 0, min: 0, max: 65535 },
        /// The most memory the KV cache event index of one server takes, in MiB (all its
        /// data-parallel engines together); past it new blocks are not recorded.
        kv_index_budget_mib: f64 = Number { default: 16.0, min: 0.25, max: 65536.0 },
        /// How long to wait for a server's `/tokenize` when the `cache-aware` policy needs a
        /// prompt's token ids and no local tokenizer is configured; past it, the request is
        /// routed on the approximate estimate.
        tokenize_timeout: Duration = Seconds { default: 0.5, min: 0.01 },
        /// The most memory the cache of prompts' token ids (from servers' `/tokenize`) takes,
        /// in MiB.
        tokenize_cache_mib: f64 = Number { default: 16.0, min: 0.25, max: 65536.0 },
        /// Local tokenizers, `{ "MODEL" = "FOLDER" }`: the folder holds the model's
        /// `tokenizer.json` and `tokenizer_config.json` (its chat template); prompts of that
        /// model are tokenized in the router instead of by a server's `/tokenize`.
        tokenizers: Vec<(String, String)> = ModelPaths,
    }
}
