//! What choosing a server costs each policy, with 1,000 candidate servers (criterion).
//!
//!   cargo bench --bench policy_pick
//!   cargo bench --bench policy_pick -- least-load    # one policy
//!
//! Each policy picks among 1,000 healthy servers with different loads, capacities and learned
//! speeds, for a chat request with a 100 KB prompt and a session key. Three measurements:
//!
//! - `listing`: the baseline, listing the eligible servers (`policy::eligible`), which every
//!   choice but least-load's first did before its policy ran;
//! - `POLICY/pick`: the policy's pick among the listed servers (retries, explained choices);
//! - `POLICY/choose`: a request's whole first choice as the router makes it
//!   (`Policy::choose`: the listing and the pick, or least-load's shortlist), in steady state:
//!   each choice starts a request on the chosen server and the oldest of 256 in flight ends,
//!   so loads rise and fall as under traffic.
//!
//! Target (issues 8 and 9): at most 2 µs a choice for least-load.
#[path = "servers.rs"]
mod servers;

use std::collections::VecDeque;
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use mvllm::config::Routing;
use mvllm::features::RequestFeatures;
use mvllm::policy::{self, eligible};
use mvllm::scrape::{Flavor, LoadSample, ModelCard};
use serde_json::json;

const SERVERS: usize = 1000;

/// Requests in flight in the `choose` measurements.
const IN_FLIGHT: usize = 256;

fn request() -> RequestFeatures {
    let prompt = "x".repeat(100 * 1024);
    let body = format!(
        "{{\"model\":\"m\",\"user\":\"session-42\",\"messages\":[{{\"role\":\"user\",\"content\":\"{prompt}\"}}]}}"
    );
    let header =
        pingora::http::RequestHeader::build("POST", b"/v1/chat/completions", None).unwrap();
    mvllm::features::extract(
        &header,
        bytes::Bytes::from(body),
        None,
        mvllm::features::SESSION_HEADER,
    )
    .unwrap()
}

fn choices(c: &mut Criterion) {
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
    let request = request();
    let backends = &snapshot.backends;

    let mut group = c.benchmark_group(format!("{SERVERS} servers"));
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    group.bench_function("listing", |b| {
        b.iter(|| black_box(eligible(backends, Some("m"), |_| false).ok()))
    });
    let candidates = eligible(backends, Some("m"), |_| false).unwrap();
    for name in policy::NAMES {
        let routing = Routing {
            policy: name,
            ..Routing::default()
        };
        let policies = policy::build(&routing, None).unwrap();
        let policy = policies.default_policy();
        group.bench_function(format!("{name}/pick"), |b| {
            b.iter(|| black_box(policy.pick(black_box(&candidates), &request)))
        });
        let mut in_flight = VecDeque::with_capacity(IN_FLIGHT + 1);
        group.bench_function(format!("{name}/choose"), |b| {
            b.iter(|| {
                let chosen = policy.choose(backends, Some("m"), &request).unwrap();
                in_flight.push_back(chosen.state.start_request());
                if in_flight.len() > IN_FLIGHT {
                    in_flight.pop_front();
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, choices);
criterion_main!(benches);
