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
//! - `kv_publisher`: KV cache events over ZeroMQ, as vLLM's `--kv-events-config`.
//! - `tokenize`: `/tokenize` (the engines' own token ids) and `/reset_prefix_cache`.
//! - `metrics`: vLLM's Prometheus families; `lagged`: the same, served late on purpose.

pub mod args;
pub mod engine;
pub mod faults;
pub mod inference;
pub mod kv_cache;
pub mod kv_publisher;
pub mod lagged;
pub mod logprobs;
pub mod metrics;
pub mod protocol;
pub mod responses;
pub mod scheduler;
pub mod server;
pub mod tokenize;
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
    let scheme = if cfg.tls.is_some() { "https" } else { "http" };
    let (address, serving) = bind(cfg).await?;
    // Tests and scripts wait for this line to learn the address (with --port 0).
    println!("mvllm sim: serving {names} on {scheme}://{address}");
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
    let tls = match &cfg.tls {
        Some((cert, key, client_ca)) => Some(tls_acceptor(cert, key, client_ca.as_deref())?),
        None => None,
    };
    let faults = std::sync::Arc::new(faults::FaultState::new(cfg.faults.clone(), cfg.seed));
    let kv_events = match &cfg.kv_events {
        Some(kv) => {
            let (senders, endpoints) =
                kv_publisher::start(kv, cfg.engines, std::sync::Arc::clone(&faults)).await?;
            for (rank, endpoint) in endpoints.iter().enumerate() {
                // Scripts with port 0 read the endpoints from here.
                println!("mvllm sim: KV cache events of engine {rank} on {endpoint}");
            }
            senders
        }
        None => Vec::new(),
    };
    let state = server::SimState::start(cfg, faults, &kv_events);
    let serving = server::serve(listener, tls, server::router(state), std::future::pending());
    Ok((address, serving))
}

/// The sim's TLS: its certificate, and (with `client_ca`) client certificates required.
fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
    client_ca: Option<&std::path::Path>,
) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let pair = crate::config::load_cert_and_key(cert, key)
        .map_err(|e| anyhow::anyhow!("mvllm sim: {e}"))?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in crate::config::load_certificates(ca).map_err(anyhow::Error::msg)? {
                roots.add(cert)?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                std::sync::Arc::new(roots),
                std::sync::Arc::new(rustls::crypto::ring::default_provider()),
            )
            .build()?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder.with_single_cert(pair.chain.clone(), pair.key.clone_key())?;
    Ok(tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config)))
}
