//! `mvllm probe URL`: what the router would see of one server, and whether it would route
//! to it. The first thing to run when a box misbehaves.

use std::fmt::Write as _;
use std::time::Duration;

use clap::Args;

use crate::config::{
    load_cert_and_key, load_certificates as certificates, parse_server_url, ServerTls,
};
use crate::scrape::{timed, Flavor, Scraper};

#[derive(Debug, Clone, Args)]
pub struct ProbeArgs {
    /// The server, e.g. http://10.0.0.5:8000.
    pub url: String,
    /// Sent as `Authorization: Bearer <key>` (the server's --api-key).
    #[arg(long, env = "MVLLM_PROBE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Seconds to wait for each answer.
    #[arg(long, default_value_t = 5.0)]
    pub timeout: f64,
    /// For an https:// server: the CA certificates (PEM) to trust instead of the system's.
    #[arg(long)]
    pub ca_file: Option<std::path::PathBuf>,
    /// For an https:// server that wants a client certificate: the certificate chain (PEM).
    #[arg(long, requires = "client_key")]
    pub client_cert: Option<std::path::PathBuf>,
    /// The private key (PEM) of --client-cert.
    #[arg(long, requires = "client_cert")]
    pub client_key: Option<std::path::PathBuf>,
}

/// The TLS settings the flags give, read and checked like servers.toml's.
fn tls_of(args: &ProbeArgs) -> Result<Option<ServerTls>, String> {
    let url = parse_server_url(args.url.trim_end_matches('/'))?;
    if !url.tls {
        return Ok(None);
    }
    let ca = args.ca_file.as_deref().map(certificates).transpose()?;
    let client = match (&args.client_cert, &args.client_key) {
        (Some(cert), Some(key)) => Some(load_cert_and_key(cert, key)?),
        _ => None,
    };
    Ok(Some(ServerTls {
        server_name: url.host,
        ca,
        client,
    }))
}

/// Probes the server; returns the report and whether the router would route to it.
pub async fn probe(args: &ProbeArgs) -> (String, bool) {
    let base = args.url.trim_end_matches('/');
    let timeout = Duration::from_secs_f64(args.timeout.clamp(0.01, 3600.0));
    let scraper =
        match tls_of(args).and_then(|tls| Scraper::for_server(timeout, tls.as_ref(), None)) {
            Ok(scraper) => scraper,
            Err(why) => return (format!("{base}\n  error       {why}\n"), false),
        };
    let key = args.api_key.as_deref();
    let ((load, load_time), (models, models_time)) = tokio::join!(
        timed(scraper.load(base, key)),
        timed(scraper.models(base, key))
    );

    let mut out = String::new();
    let _ = writeln!(out, "{base}");
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    match &load {
        Ok(s) => {
            let flavor = match s.flavor {
                Flavor::Vllm => "vLLM",
                Flavor::Sglang => "SGLang",
                Flavor::LlamaCpp => "llama.cpp",
            };
            let kv = s
                .kv_cache_usage
                .map_or("not reported".to_string(), |u| format!("{:.1}%", u * 100.0));
            let _ = writeln!(
                out,
                "  /metrics    ok ({flavor}) in {:.0} ms: running {}, waiting {}, KV cache {kv}",
                ms(load_time),
                s.running,
                s.waiting
            );
        }
        Err(e) => {
            let _ = writeln!(
                out,
                "  /metrics    FAILED after {:.0} ms: {e}",
                ms(load_time)
            );
        }
    }
    match &models {
        Ok(cards) => {
            let names: Vec<String> = cards
                .iter()
                .map(|m| match m.card.get("parent").and_then(|p| p.as_str()) {
                    Some(parent) => format!("{} (adapter of {parent})", m.id),
                    None => m.id.clone(),
                })
                .collect();
            let list = if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            };
            let _ = writeln!(out, "  /v1/models  ok in {:.0} ms: {list}", ms(models_time));
        }
        Err(e) => {
            let _ = writeln!(
                out,
                "  /v1/models  FAILED after {:.0} ms: {e}",
                ms(models_time)
            );
        }
    }
    let routable = match (&load, &models) {
        (Ok(_), Ok(cards)) if !cards.is_empty() => {
            let _ = writeln!(
                out,
                "  verdict     healthy: the router would send it requests for these models"
            );
            true
        }
        (Ok(_), Ok(_)) => {
            let _ = writeln!(out, "  verdict     not routable: it serves no models");
            false
        }
        (Err(_), _) => {
            let _ = writeln!(
                out,
                "  verdict     unhealthy: its load cannot be read, so no requests would go to it"
            );
            false
        }
        (Ok(_), Err(_)) => {
            let _ = writeln!(out, "  verdict     unhealthy: its model list cannot be read, so no requests would go to it");
            false
        }
    };
    (out, routable)
}
