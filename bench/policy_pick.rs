//! What choosing a server costs each policy, with 1,000 candidate servers.
//!
//!   cargo bench --bench policy_pick
//!
//! Each policy picks among 1,000 healthy servers with different loads, capacities and learned
//! speeds, for a chat request with a 100 KB prompt and a session key. Baseline: the least the
//! router does before any policy runs, listing the eligible servers (`policy::eligible`).
//! Target (issue 8): at most 2 µs a pick for the policies that look at load alone.
#[path = "servers.rs"]
mod servers;
#[path = "timing.rs"]
mod timing;

use std::hint::black_box;

use mvllm::config::Routing;
use mvllm::features::RequestFeatures;
use mvllm::policy::{self, eligible};
use mvllm::scrape::{Flavor, LoadSample, ModelCard};
use serde_json::json;
use timing::time_per_call;

const SERVERS: usize = 1000;

fn main() {
    let cluster = servers::cluster_of(SERVERS, |i| 4 + (i % 13) as u32);
    let snapshot = cluster.snapshot();
    // Healthy (two good scrapes), serving "m", with loads and learned speeds that differ.
    let settings = mvllm::config::Settings::default();
    for (i, b) in snapshot.backends.iter().enumerate() {
        let card = json!({"id": "m", "object": "model"});
        b.state.set_models(vec![ModelCard {
            id: "m".into(),
            card,
        }]);
        for _ in 0..settings.recovery_threshold {
            let load = LoadSample {
                flavor: Flavor::Vllm,
                running: (i % 7) as f64,
                waiting: (i % 3) as f64,
                kv_cache_usage: None,
                kv_tokens: None,
                prefix_cache: None,
                engines: Default::default(),
                counted_by_router: false,
            };
            b.state.scrape_succeeded(load, &settings);
        }
        b.state.speed.observe(0.01 + (i % 5) as f64 * 0.005);
    }

    let prompt = "x".repeat(100 * 1024);
    let body = format!(
        "{{\"model\":\"m\",\"user\":\"session-42\",\"messages\":[{{\"role\":\"user\",\"content\":\"{prompt}\"}}]}}"
    );
    let header =
        pingora::http::RequestHeader::build("POST", b"/v1/chat/completions", None).unwrap();
    let request: RequestFeatures = mvllm::features::extract(
        &header,
        bytes::Bytes::from(body),
        None,
        mvllm::features::SESSION_HEADER,
    )
    .unwrap();

    let list = time_per_call(2_000, || {
        black_box(eligible(&snapshot.backends, Some("m"), |_| false).ok());
    });
    println!("{SERVERS} servers: listing the eligible ones (baseline): {list:?}");
    let candidates = eligible(&snapshot.backends, Some("m"), |_| false).unwrap();
    for name in policy::NAMES {
        let routing = Routing {
            policy: name,
            ..Routing::default()
        };
        let policies = policy::build(&routing, None).unwrap();
        let policy = policies.default_policy();
        let pick = time_per_call(2_000, || {
            black_box(policy.pick(black_box(&candidates), &request));
        });
        println!(
            "{name:>13}: {pick:?} a pick ({:.2}x listing)",
            pick.as_secs_f64() / list.as_secs_f64()
        );
    }
}
