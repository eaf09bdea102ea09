//! `mvllm sim`: a simulated vLLM server.
//!
//! It answers the OpenAI endpoints vLLM answers, streams like vLLM, and exposes vLLM's
//! `/metrics`, while a continuous-batching engine model decides when each token comes out:
//! requests queue for sequence slots and KV cache blocks, steps slow down as the batch grows,
//! and prompts whose prefix is cached skip that part of their prefill. No GPU, no model.
//!
//! Layout:
//! - `args`: the command-line flags and their validation.
//! - `kv_cache`: KV blocks, prefix hashing, LRU eviction.
//! - `scheduler`: one engine's admission and batching, one step at a time (no clock).
//! - `engine`: engine tasks in real time, and the per-request token streams.
//! - `tokenizer`: deterministic tokens, chat template, generated text, embeddings.
//! - `protocol`: request and response bodies in vLLM's shapes.
//! - `inference`: the chat, completion and embedding handlers.
//! - `server`: connections, routes, API key, the small endpoints.
//! - `faults`: fault injection for reliability tests.
//! - `metrics`: vLLM's Prometheus families; `lagged`: the same, served late on purpose.

pub mod args;
pub mod engine;
pub mod faults;
pub mod inference;
pub mod kv_cache;
pub mod lagged;
pub mod logprobs;
pub mod metrics;
pub mod protocol;
pub mod responses;
pub mod scheduler;
pub mod server;
pub mod tokenizer;
pub mod tools;

pub use args::SimArgs;

use anyhow::Context as _;

/// Runs a simulated server until Ctrl-C or SIGTERM.
pub async fn run(args: SimArgs) -> anyhow::Result<()> {
    let cfg = args
        .validate()
        .map_err(|e| anyhow::anyhow!("mvllm sim: {e}"))?;
    let names = cfg.served_model_names.join(", ");
    let (address, serving) = bind(cfg).await?;
    // Tests and scripts wait for this line to learn the address (with --port 0).
    println!("mvllm sim: serving {names} on http://{address}");
    tokio::select! {
        () = serving => {}
        () = crate::shutdown_signal() => {}
    }
    tracing::info!("mvllm sim: stopped");
    Ok(())
}

/// Binds a simulated server and starts its engines on the current runtime; the returned
/// future serves connections until dropped.
pub async fn bind(
    cfg: args::SimConfig,
) -> anyhow::Result<(std::net::SocketAddr, impl std::future::Future<Output = ()>)> {
    let listener = tokio::net::TcpListener::bind((cfg.host.as_str(), cfg.port))
        .await
        .with_context(|| format!("mvllm sim: cannot listen on {}:{}", cfg.host, cfg.port))?;
    let address = listener.local_addr()?;
    let state = server::SimState::start(cfg);
    let serving = server::serve(listener, server::router(state), std::future::pending());
    Ok((address, serving))
}
