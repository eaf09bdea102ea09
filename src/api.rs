//! The router's own endpoints: `/health`, `/load-stats` and `/v1/models` (the union of what
//! the healthy servers serve). Shapes follow the Python mvllm's, with fields added.

use std::collections::HashSet;
use std::time::{Duration, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::cluster::Cluster;

/// `GET /health`: 200 while at least one server is healthy, 503 otherwise (so a load
/// balancer or Kubernetes probe in front of the router can act on it).
pub fn health(cluster: &Cluster) -> (u16, Value) {
    let backends = cluster.backends();
    let settings = cluster.settings();
    let total = backends.len();
    let healthy = backends.iter().filter(|b| b.is_healthy()).count();
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
    let servers: Vec<Value> = backends
        .iter()
        .map(|b| {
            json!({
                "url": b.cfg.url,
                "healthy": b.is_healthy(),
                "status": if b.is_healthy() { "healthy" } else { "unhealthy" },
                "last_check": b.last_check_ms().map(rfc3339),
                "consecutive_failures": b.consecutive_failures(),
                "last_error": b.last_error.load().as_deref().cloned(),
                "models": b.models.load().iter().map(|m| m.id.clone()).collect::<Vec<_>>(),
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
        "config": {
            "metrics_interval": settings.metrics_interval.as_secs_f64(),
            "health_check_interval": settings.health_check_interval.as_secs_f64(),
            "failure_threshold": settings.failure_threshold,
            "recovery_threshold": settings.recovery_threshold,
        },
    });
    (if healthy > 0 { 200 } else { 503 }, body)
}

/// `GET /load-stats`: each server's scraped load, the router's own in-flight requests to
/// it, and its utilisation (the balancing score, in percent).
pub fn load_stats(cluster: &Cluster) -> Value {
    let backends = cluster.backends();
    // Totals over the healthy servers: what the cluster can serve right now.
    let (mut running_sum, mut waiting_sum, mut capacity_sum, mut in_flight_sum) =
        (0.0, 0.0, 0u64, 0u32);
    let servers: Vec<Value> = backends
        .iter()
        .map(|b| {
            let load = b.load.load();
            let (running, waiting, kv) = match &*load {
                Some(s) => (s.running, s.waiting, s.kv_cache_usage),
                None => (0.0, 0.0, None),
            };
            let capacity = b.cfg.max_concurrent_requests;
            let in_flight = b.in_flight();
            let current = running + waiting;
            if b.is_healthy() {
                running_sum += running;
                waiting_sum += waiting;
                capacity_sum += capacity as u64;
                in_flight_sum += in_flight;
            }
            json!({
                "url": b.cfg.url,
                "healthy": b.is_healthy(),
                "status": if b.is_healthy() { "healthy" } else { "unhealthy" },
                "running": running,
                "waiting": waiting,
                "current_load": current,
                "max_capacity": capacity,
                "available_capacity": (capacity as f64 - running).max(0.0),
                "router_in_flight": in_flight,
                "utilization_percent": round2(b.utilisation_percent()),
                "kv_cache_usage_percent": kv.map(|u| round2(u * 100.0)),
                "last_updated": b.last_check_ms().map(rfc3339),
                "detailed_metrics": {
                    "num_requests_running": running,
                    "num_requests_waiting": waiting,
                    "kv_cache_usage_perc": kv,
                },
            })
        })
        .collect();
    let healthy = backends.iter().filter(|b| b.is_healthy()).count();
    json!({
        "servers": servers,
        "summary": {
            "total_servers": backends.len(),
            "healthy_servers": healthy,
            "total_running": running_sum,
            "total_waiting": waiting_sum,
            "total_active_load": running_sum + waiting_sum,
            "total_capacity": capacity_sum,
            "total_router_in_flight": in_flight_sum,
            "overall_utilization_percent": if capacity_sum > 0 {
                round2((running_sum + 0.5 * waiting_sum) / capacity_sum as f64 * 100.0)
            } else {
                0.0
            },
        },
    })
}

/// `GET /v1/models`: every model a healthy server lists, once, with the card as the first
/// server listing it wrote it (vLLM's fields — root, parent, max_model_len — kept).
pub fn models(cluster: &Cluster) -> Value {
    let backends = cluster.backends();
    let mut seen = HashSet::new();
    let mut data = Vec::new();
    for backend in backends.iter().filter(|b| b.is_healthy()) {
        for model in backend.models.load().iter() {
            if seen.insert(model.id.clone()) {
                data.push(model.card.clone());
            }
        }
    }
    json!({"object": "list", "data": data})
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
    use crate::cluster::tests::healthy;
    use crate::config::Settings;

    fn cluster_of(backends: Vec<std::sync::Arc<crate::cluster::Backend>>) -> Cluster {
        let cluster = Cluster::new(vec![], Settings::default());
        cluster.replace_backends(backends);
        cluster
    }

    #[test]
    fn health_status_and_code() {
        let (code, body) = health(&Cluster::new(vec![], Settings::default()));
        assert_eq!((code, body["status"].as_str()), (503, Some("no_servers")));

        let a = healthy("http://a", 4, &["m"], 0.0);
        let b = healthy("http://b", 4, &["m"], 0.0);
        let settings = Settings::default();
        for _ in 0..settings.failure_threshold {
            b.record_failure("connect refused".into(), &settings);
        }
        let (code, body) = health(&cluster_of(vec![a, b]));
        assert_eq!(code, 200);
        assert_eq!(body["status"], "degraded");
        assert_eq!(body["servers"][1]["healthy"], false);
        assert_eq!(body["servers"][1]["last_error"], "connect refused");
        assert_eq!(body["servers"][0]["models"], json!(["m"]));
        assert!(body["servers"][0]["last_check"]
            .as_str()
            .unwrap()
            .ends_with('Z'));
    }

    #[test]
    fn models_are_the_union_of_healthy_servers_without_duplicates() {
        let a = healthy("http://a", 4, &["llama", "shared"], 0.0);
        let b = healthy("http://b", 4, &["qwen", "shared"], 0.0);
        let list = models(&cluster_of(vec![a, b]));
        let ids: Vec<&str> = list["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["llama", "shared", "qwen"]);
    }

    #[test]
    fn load_stats_shows_router_in_flight() {
        let a = healthy("http://a", 4, &["m"], 2.0);
        let _guard = a.start_request();
        let stats = load_stats(&cluster_of(vec![a]));
        let s = &stats["servers"][0];
        assert_eq!(s["running"], 2.0);
        assert_eq!(s["router_in_flight"], 1);
        assert_eq!(s["utilization_percent"], 75.0);
        assert_eq!(stats["summary"]["total_capacity"], 4);
    }
}
