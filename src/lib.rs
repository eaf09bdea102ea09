//! mvllm: one OpenAI-compatible endpoint in front of many vLLM servers.
//!
//! Layout:
//! - `api`: the router's own endpoints (/health, /load-stats, /v1/models).
//! - `balance`: which backends may take a request, and the policy that picks one.
//! - `cli`: the command line (`mvllm run | sim | demo | check-config | version`).
//! - `cluster`: the backends' live state (health, load, models, in-flight requests).
//! - `config`: `servers.toml`, validated, with errors that say where.
//! - `demo`: `mvllm demo`, the router and three simulated servers in one process.
//! - `forward`: one request to a backend, with retries and unbuffered streaming.
//! - `openai`: OpenAI-shaped error bodies, shared by every server in the binary.
//! - `poller`: background scrapes of /metrics and /v1/models, DNS refresh.
//! - `probe`: `mvllm probe URL`, one server as the router sees it.
//! - `proxy`: the Pingora request path: local endpoints or forward.
//! - `run`: `mvllm run`, the Pingora server with the router and its background services.
//! - `scrape`: reading a backend's `/metrics` (load) and `/v1/models`.
//! - `watcher`: reloads servers.toml when it changes.
//! - `sim`: `mvllm sim`, a simulated vLLM server for tests, benchmarks and demos.

pub mod api;
pub mod balance;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod forward;
pub mod openai;
pub mod poller;
pub mod probe;
pub mod proxy;
pub mod run;
pub mod scrape;
pub mod sim;
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
