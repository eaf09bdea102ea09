//! mvllm: one OpenAI-compatible endpoint in front of many vLLM servers.
//!
//! Layout. The request path, top to bottom (calls go down, never back up):
//! - `front_door`: client connections before a request is seen — `max_connections`, the
//!   deadline on a whole request header, the idle keep-alive timeout.
//! - `entry`: where each request starts; makes its context, answers the
//!   router's own endpoints, hands the rest to `forward`.
//! - `access`: **who may use the router** — client keys, their models and limits, the admin
//!   key.
//! - `forward`: one request to a server — choose, try, retry elsewhere while the client has
//!   seen nothing.
//! - `features`: the body, read once and bounded, and what routing reads of it (model, stream,
//!   session key, where the prompt is).
//! - `policy/`: **how a server is chosen** — which servers are eligible, and one file per
//!   policy (`least-load`), built from `[routing]`.
//! - `retry`: **what happens on retry** — the pure decision table, no I/O.
//! - `upstream`: the exchange with one server over the router's pool: send, await the header,
//!   stream the body back.
//! - `pool`: idle connections to the servers, kept for the next request (new ones made by
//!   Pingora's connector).
//! - `headers`: the request as it goes to a server and the response as it comes back.
//! - `tls`: TLS to `https://` servers (trust, client certificates) and for clients (the
//!   listener, its certificate reloaded).
//! - `respond`: the router's own answers (JSON, OpenAI-shaped errors).
//! - `context`: one request's context (id, features, timings, attempts, outcome); its drop
//!   ends the request's in-flight counts and records it.
//! - `stats`: **what is counted** — the stats hub every figure is rendered from.
//! - `access_log`: the line per request. `usage`: token counts read from answers as they pass.
//! - `request_id`: the `X-Request-Id` kept or made.
//!
//! The cluster and its upkeep:
//! - `cluster`: the config in force as one snapshot; **how a reload works**.
//! - `backend`: one server's entry and its live state (health, load, in-flight, stats), keyed
//!   by URL so that it survives reloads.
//! - `speed`: each server's learned seconds per output token.
//! - `ejection`: servers that keep failing real requests are taken out for growing times.
//! - `poller`: each server's own schedule of `/metrics`, `/v1/models` and DNS refreshes.
//! - `discovery`: entries whose DNS name stands for many servers (headless Services).
//! - `scrape`: reading a server's `/metrics` (load) and `/v1/models`.
//! - `watcher`: reloads servers.toml when it changes.
//! - `config/`: servers.toml, every key declared once, errors that say where.
//! - `api`: `/health`, `/load-stats`, `/v1/models`, rendered from the same views as `/metrics`.
//!
//! Around it: `cli` (the command line), `run` (`mvllm run`: Pingora server, shutdown),
//! `daemon` (`--daemon`), `logging` (stderr, text or JSON), `openai` (error bodies), `demo`
//! (`mvllm demo`), `probe` (`mvllm probe`), `sim/` (`mvllm sim`, a simulated vLLM server).

pub mod access;
pub mod access_log;
pub mod api;
pub mod backend;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod context;
pub mod daemon;
pub mod decisions;
pub mod demo;
pub mod discovery;
pub mod ejection;
pub mod entry;
pub mod features;
pub mod forward;
pub mod front_door;
pub mod headers;
pub mod healthcheck;
pub mod kv_events;
pub mod logging;
pub mod monitor;
pub mod openai;
pub mod policy;
pub mod poller;
pub mod pool;
pub mod probe;
pub mod prompt_tokens;
pub mod request_id;
pub mod respond;
pub mod resume;
pub mod retry;
pub mod run;
pub mod scrape;
pub mod sim;
pub mod speed;
pub mod stats;
pub mod tls;
pub mod traces;
pub mod upstream;
pub mod usage;
pub mod watcher;

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
