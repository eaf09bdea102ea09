//! `mvllm health`: asks a running router's `/health`, for a container's HEALTHCHECK (the image
//! needs no curl): exit 0 when it answers 200 (at least one server healthy), 1 otherwise.

use std::time::Duration;

use clap::Args;

#[derive(Debug, Clone, Args)]
pub struct HealthArgs {
    /// The router's health URL.
    #[arg(long, default_value = "http://127.0.0.1:8888/health")]
    pub url: String,
    /// How long to wait for the answer, in seconds.
    #[arg(long, default_value_t = 3.0)]
    pub timeout: f64,
}

/// One line saying what the router answered; `Ok` if it answered 200.
pub async fn check(args: &HealthArgs) -> Result<String, String> {
    let timeout = Duration::try_from_secs_f64(args.timeout).map_err(|_| {
        format!(
            "--timeout must be a positive number of seconds, got {}",
            args.timeout
        )
    })?;
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .no_proxy()
        .build()
        .map_err(|e| format!("cannot make an HTTP client: {e}"))?;
    let response = client
        .get(&args.url)
        .send()
        .await
        .map_err(|e| format!("{}: no answer: {e}", args.url))?;
    let status = response.status();
    let body = response.bytes().await.unwrap_or_default();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    // A router says how many servers are healthy; anything else (a sim) just answers.
    let line = match body["status"].as_str() {
        Some(state) => format!(
            "{}: {state} ({} of {} servers healthy)",
            args.url, body["healthy_servers"], body["total_servers"],
        ),
        None => format!("{}: HTTP {}", args.url, status.as_u16()),
    };
    match status.as_u16() {
        200 => Ok(line),
        code => Err(format!("{line}, HTTP {code}")),
    }
}
