//! mvllm: one OpenAI-compatible endpoint in front of many vLLM servers.
//!
//! Layout:
//! - `cli`: the command line (`mvllm run | sim | demo | check-config | version`).
//! - `config`: `servers.toml`, validated, with errors that say where.
//! - `openai`: OpenAI-shaped error bodies, shared by every server in the binary.
//! - `probe`: `mvllm probe URL`, one server as the router sees it.
//! - `scrape`: reading a backend's `/metrics` (load) and `/v1/models`.
//! - `sim`: `mvllm sim`, a simulated vLLM server for tests, benchmarks and demos.

pub mod cli;
pub mod config;
pub mod openai;
pub mod probe;
pub mod scrape;
pub mod sim;

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
