//! The router's own endpoints: `/health`, `/load-stats` and `/v1/models` (the union of what
//! the healthy servers serve). Shapes follow the Python mvllm's, with fields added. Every
//! per-server figure comes from [`ServerView`], as in `/metrics` and the monitor.

use std::collections::HashSet;
use std::time::{Duration, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::backend::ServerView;
use crate::cluster::Snapshot;

/// `GET /health`: 200 while at least one server is healthy, 503 otherwise (so a load
/// balancer or Kubernetes probe in front of the router can act on it).
pub fn health(snapshot: &Snapshot, config_error: Option<&str>) -> (u16, Value) {
    let views: Vec<ServerView> = snapshot.backends.iter().map(ServerView::of).collect();
    let settings = &snapshot.settings;
    let total = views.len();
    let healthy = views.iter().filter(|v| v.healthy).count();
    let ratio = if total == 0 {
        0.0
    } else {
        healthy as f64 / total as f64
    };
    let status = match total {
        0 => "no_servers",
        _ if ratio >= 0.8 => "healthy",
        _ if ratio >= 0.5 => "degraded",
        _ => "unhealthy",
    };
    let servers: Vec<Value> = views
        .iter()
        .map(|v| {
            json!({
                "url": v.url,
                "discovered_from": v.discovered_from,
                "healthy": v.healthy,
                "status": if v.healthy { "healthy" } else { "unhealthy" },
                "last_check": v.last_check_ms.map(rfc3339),
                "consecutive_failures": v.consecutive_failures,
                "ejected": v.ejected_for.is_some(),
                "last_error": v.last_error,
                "models": v.models,
            })
        })
        .collect();
    let body = json!({
        "status": status,
        "health_score": ratio,
        "total_servers": total,
        "healthy_servers": healthy,
        "unhealthy_servers": total - healthy,
        "servers": servers,
        "config_error": config_error,
        "config": {
            "metrics_interval": settings.metrics_interval.as_secs_f64(),
            "health_check_interval": settings.health_check_interval.as_secs_f64(),
            "failure_threshold": settings.failure_threshold,
            "recovery_threshold": settings.recovery_threshold,
            "policy": snapshot.policy.describe(),
        },
    });
    (if healthy > 0 { 200 } else { 503 }, body)
}

/// `GET /load-stats`: each server's scraped load, the router's own in-flight requests to
/// it, its utilisation (load units over capacity, in percent) and what the stats hub counted.
pub fn load_stats(snapshot: &Snapshot, tokenization: &crate::prompt_tokens::Tokenization) -> Value {
    let views: Vec<ServerView> = snapshot.backends.iter().map(ServerView::of).collect();
    let servers: Vec<Value> = views
        .iter()
        .zip(&snapshot.backends)
        .map(|(v, b)| {
            json!({
                "url": v.url,
                "discovered_from": v.discovered_from,
                "engine": v.engine,
                "healthy": v.healthy,
                "status": if v.healthy { "healthy" } else { "unhealthy" },
                "running": v.running,
                "waiting": v.waiting,
                "current_load": v.running + v.waiting,
                "max_capacity": v.capacity,
                "available_capacity": (f64::from(v.capacity) - v.running).max(0.0),
                "router_in_flight": v.in_flight,
                "load_units": round2(v.load_units),
                "utilization_percent": round2(v.utilization * 100.0),
                "kv_cache_usage_percent": v.kv_cache_usage.map(|u| round2(u * 100.0)),
                "last_updated": v.last_check_ms.map(rfc3339),
                "requests_total": v.totals.requests,
                "attempts_total": v.totals.attempts,
                "retries_total": v.totals.retries,
                "errors_total": v.totals.errors,
                "ejected_for_seconds": v.ejected_for.map(|d| round2(d.as_secs_f64())),
                "ejections_total": v.ejections,
                "load_gap": round2(v.load_gap),
                "ttft_p50_seconds": v.totals.ttft_p50,
                "seconds_per_token": v.seconds_per_token.map(|s| (s * 1e6).round() / 1e6),
                "kv_events": b.state.kv.report(),
                "detailed_metrics": {
                    "num_requests_running": v.running,
                    "num_requests_waiting": v.waiting,
                    "kv_cache_usage_perc": v.kv_cache_usage,
                },
            })
        })
        .collect();
    // Totals over the healthy servers: what the cluster can serve right now. The overall
    // utilisation is the same estimate as each server's (load units over capacity).
    let healthy: Vec<&ServerView> = views.iter().filter(|v| v.healthy).collect();
    let running: f64 = healthy.iter().map(|v| v.running).sum();
    let waiting: f64 = healthy.iter().map(|v| v.waiting).sum();
    let units: f64 = healthy.iter().map(|v| v.load_units).sum();
    let capacity: u64 = healthy.iter().map(|v| u64::from(v.capacity)).sum();
    let in_flight: u32 = healthy.iter().map(|v| v.in_flight).sum();
    json!({
        "policy": snapshot.policy.default_policy().describe(),
        "model_policies": snapshot
            .policy
            .per_model()
            .map(|(model, policy)| (model.to_string(), json!(policy)))
            .collect::<serde_json::Map<_, _>>(),
        "servers": servers,
        "tokenization": tokenization.report(),
        "summary": {
            "total_servers": views.len(),
            "healthy_servers": healthy.len(),
            "total_running": running,
            "total_waiting": waiting,
            "total_active_load": running + waiting,
            "total_load_units": round2(units),
            "total_capacity": capacity,
            "total_router_in_flight": in_flight,
            "overall_utilization_percent": if capacity > 0 {
                round2(units / capacity as f64 * 100.0)
            } else {
                0.0
            },
            "total_requests": views.iter().map(|v| v.totals.requests).sum::<u64>(),
            "total_errors": views.iter().map(|v| v.totals.errors).sum::<u64>(),
        },
    })
}

/// `GET /v1/models`: every model a healthy server lists, once, with the card as the first
/// server listing it wrote it (vLLM's fields — root, parent, max_model_len — kept); only
/// those `allowed` (a client key's models).
pub fn models(snapshot: &Snapshot, allowed: impl Fn(&str) -> bool) -> Value {
    let mut seen = HashSet::new();
    let mut data = Vec::new();
    for backend in snapshot.backends.iter().filter(|b| b.state.is_healthy()) {
        for model in backend.state.models.load().iter() {
            if allowed(&model.id) && seen.insert(model.id.clone()) {
                data.push(model.card.clone());
            }
        }
    }
    json!({"object": "list", "data": data})
}

/// `GET /v1/models/{id}`: the card `/v1/models` lists for `id`, if a healthy server serves it.
pub fn model(snapshot: &Snapshot, id: &str) -> Option<Value> {
    snapshot
        .backends
        .iter()
        .filter(|b| b.state.is_healthy())
        .find_map(|b| {
            b.state
                .models
                .load()
                .iter()
                .find(|m| m.id == id)
                .map(|m| m.card.clone())
        })
}

/// The model id of a `/v1/models/{id}` path, percent-decoded (ids such as
/// `meta-llama/Llama-3.1-8B` hold a slash, which clients may send as is or as `%2F`).
pub fn model_id(path: &str) -> String {
    let raw = path
        .strip_prefix("/v1/models/")
        .unwrap_or_default()
        .as_bytes();
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            raw[i],
            raw.get(i + 1).copied().and_then(hex),
            raw.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn rfc3339(unix_ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(unix_ms)).to_string()
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::tests::healthy;
    use crate::cluster::Cluster;
    use crate::config::Settings;

    #[test]
    fn model_ids_in_paths() {
        assert_eq!(model_id("/v1/models/llama"), "llama");
        assert_eq!(
            model_id("/v1/models/meta-llama/Llama-3.1-8B"),
            "meta-llama/Llama-3.1-8B"
        );
        assert_eq!(
            model_id("/v1/models/meta-llama%2FLlama-3.1-8B"),
            "meta-llama/Llama-3.1-8B"
        );
        assert_eq!(model_id("/v1/models/100%"), "100%");
        assert_eq!(model_id("/v1/models/%zz"), "%zz");
    }

    #[test]
    fn health_status_and_code() {
        let (code, body) = health(&Cluster::of(vec![]).snapshot(), None);
        assert_eq!((code, body["status"].as_str()), (503, Some("no_servers")));

        let a = healthy("http://a", 4, &["m"], 0.0);
        let b = healthy("http://b", 4, &["m"], 0.0);
        let settings = Settings::default();
        for _ in 0..settings.failure_threshold {
            b.state.record_failure("connect refused".into(), &settings);
        }
        let (code, body) = health(
            &Cluster::of(vec![a, b]).snapshot(),
            Some("servers.toml: line 2"),
        );
        assert_eq!(code, 200);
        assert_eq!(body["status"], "degraded");
        assert_eq!(body["servers"][1]["healthy"], false);
        assert_eq!(body["servers"][1]["last_error"], "connect refused");
        assert_eq!(body["servers"][0]["models"], json!(["m"]));
        assert_eq!(body["config"]["policy"], "least-load");
        assert_eq!(body["config_error"], "servers.toml: line 2");
        assert!(body["servers"][0]["last_check"]
            .as_str()
            .unwrap()
            .ends_with('Z'));
    }

    #[test]
    fn models_are_the_union_of_healthy_servers_without_duplicates() {
        let a = healthy("http://a", 4, &["llama", "shared"], 0.0);
        let b = healthy("http://b", 4, &["qwen", "shared"], 0.0);
        let snapshot = Cluster::of(vec![a, b]).snapshot();
        let ids = |list: Value| -> Vec<String> {
            list["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["id"].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(
            ids(models(&snapshot, |_| true)),
            ["llama", "shared", "qwen"]
        );
        // A client key limited to some models sees only those.
        assert_eq!(ids(models(&snapshot, |m| m == "qwen")), ["qwen"]);
    }

    #[test]
    fn load_stats_shows_router_in_flight() {
        let a = healthy("http://a", 4, &["m"], 2.0);
        let _guard = a.state.start_request();
        let cluster = Cluster::of(vec![a]);
        let stats = load_stats(&cluster.snapshot(), cluster.tokenization());
        let s = &stats["servers"][0];
        assert_eq!(s["running"], 2.0);
        assert_eq!(s["router_in_flight"], 1);
        assert_eq!(s["utilization_percent"], 75.0);
        assert_eq!(stats["summary"]["total_capacity"], 4);
    }

    #[test]
    fn utilisation_is_load_over_capacity_per_server_and_overall() {
        let a = healthy("http://a", 4, &["m"], 1.0);
        let b = healthy("http://b", 16, &["m"], 0.0);
        let guards: Vec<_> = (0..3).map(|_| b.state.start_request()).collect();
        let (score_a, score_b) = (a.score(), b.score());
        let cluster = Cluster::of(vec![a, b]);
        let stats = load_stats(&cluster.snapshot(), cluster.tokenization());
        assert_eq!(
            stats["servers"][0]["utilization_percent"],
            round2(score_a * 100.0)
        );
        assert_eq!(
            stats["servers"][1]["utilization_percent"],
            round2(score_b * 100.0)
        );
        assert_eq!(score_b, 3.0 / 16.0, "requests sent since the scrape count");
        // (1 running + 3 sent since the scrape) over 20: the since-scrape term included.
        assert_eq!(stats["summary"]["overall_utilization_percent"], 20.0);
        drop(guards);
    }
}
