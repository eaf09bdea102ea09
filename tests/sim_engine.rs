//! `mvllm sim`'s engine as a router sees it: /metrics under load, slots freed on disconnect,
//! data-parallel engines, the prefix cache, and start-up validation.

mod common;

use std::time::Duration;

use common::{client, run_mvllm, Sim};
use futures_util::StreamExt;
use serde_json::json;

fn long_stream(max_tokens: u32) -> serde_json::Value {
    json!({"messages": [{"role": "user", "content": "tell me everything"}],
           "max_tokens": max_tokens, "stream": true})
}

#[tokio::test]
async fn metrics_parse_and_running_rises_under_concurrent_load() {
    let sim = Sim::start(&[
        "--max-num-seqs",
        "4",
        "--itl-ms",
        "20",
        "--served-model-name",
        "m",
    ])
    .await;
    let text = client().get(sim.at("/metrics")).send().await.unwrap();
    assert_eq!(
        text.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = text.text().await.unwrap();
    // Every sample line is `name{labels} value` with a number a Prometheus parser accepts.
    let samples = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("vllm:cache_config_info"));
    for line in samples {
        let (series, value) = line.rsplit_once(' ').unwrap();
        assert!(value.parse::<f64>().is_ok() || value == "+Inf", "{line}");
        assert!(
            series.starts_with("vllm:") && series.ends_with('}'),
            "{line}"
        );
        assert!(
            series.contains("model_name=\"m\"") && series.contains("engine=\"0\""),
            "{line}"
        );
    }
    for family in [
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:prefix_cache_queries_total",
        "vllm:prefix_cache_hits_total",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
        "vllm:request_success_total",
        "vllm:num_preemptions_total",
        "vllm:time_to_first_token_seconds",
        "vllm:e2e_request_latency_seconds",
        "vllm:request_queue_time_seconds",
    ] {
        let kind = if family.ends_with("_seconds") {
            "histogram"
        } else if family.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        assert!(
            text.contains(&format!("# TYPE {family} {kind}\n")),
            "{family} {kind}"
        );
    }

    // Eight long streams on four slots: four run, four wait.
    let mut streams = Vec::new();
    for _ in 0..8 {
        let r = client()
            .post(sim.at("/v1/chat/completions"))
            .json(&long_stream(8_000))
            .send();
        streams.push(tokio::spawn(r));
    }
    sim.wait_metric("vllm:num_requests_running", |v| v == 4.0)
        .await;
    sim.wait_metric("vllm:num_requests_waiting", |v| v == 4.0)
        .await;
    assert!(sim.metric("vllm:kv_cache_usage_perc").await > 0.0);
    for s in streams {
        s.abort();
    }
}

#[tokio::test]
async fn disconnecting_a_stream_frees_its_slot() {
    let sim = Sim::start(&["--max-num-seqs", "1", "--itl-ms", "5"]).await;
    let response = client()
        .post(sim.at("/v1/chat/completions"))
        .json(&long_stream(8_000))
        .send()
        .await
        .unwrap();
    let mut body = response.bytes_stream();
    body.next().await.unwrap().unwrap();
    assert_eq!(sim.metric("vllm:num_requests_running").await, 1.0);
    drop(body);

    sim.wait_metric("vllm:num_requests_running", |v| v == 0.0)
        .await;
    assert_eq!(sim.metric("vllm:kv_cache_usage_perc").await, 0.0);
    let aborted = sim.metric("vllm:request_success_total").await;
    assert!(aborted >= 1.0);
    // The single slot is free again.
    let r = client()
        .post(sim.at("/v1/completions"))
        .json(&json!({"prompt": "x", "max_tokens": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn disconnecting_a_non_stream_request_frees_its_slot() {
    let sim = Sim::start(&["--max-num-seqs", "1", "--itl-ms", "5"]).await;
    let impatient = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let attempt = impatient
        .post(sim.at("/v1/completions"))
        .json(&json!({"prompt": "x", "max_tokens": 8_000}))
        .send()
        .await;
    assert!(attempt.unwrap_err().is_timeout());
    sim.wait_metric("vllm:num_requests_running", |v| v == 0.0)
        .await;
    let text = sim.get_text("/metrics").await;
    assert!(
        text.contains("finished_reason=\"abort\",model_name=\"mvllm/sim-model\"} 1.0"),
        "{text}"
    );
}

#[tokio::test]
async fn data_parallel_engines_report_their_own_series_and_share_load() {
    let sim = Sim::start(&["--data-parallel-size", "2", "--itl-ms", "20"]).await;
    let mut streams = Vec::new();
    for _ in 0..6 {
        streams.push(tokio::spawn(
            client()
                .post(sim.at("/v1/chat/completions"))
                .json(&long_stream(8_000))
                .send(),
        ));
    }
    sim.wait_metric("vllm:num_requests_running", |v| v == 6.0)
        .await;
    let text = sim.get_text("/metrics").await;
    for engine in ["0", "1"] {
        let line = format!(
            "vllm:num_requests_running{{engine=\"{engine}\",model_name=\"mvllm/sim-model\"}} 3.0"
        );
        assert!(text.contains(&line), "missing {line} in\n{text}");
    }
    for s in streams {
        s.abort();
    }
}

#[tokio::test]
async fn repeated_prefix_hits_the_prefix_cache() {
    let sim = Sim::start(&["--itl-ms", "0"]).await;
    let system = "You are a careful assistant. ".repeat(20);
    for question in ["first question", "second question"] {
        let r = client()
            .post(sim.at("/v1/chat/completions"))
            .json(&json!({"messages": [{"role": "system", "content": system},
                                       {"role": "user", "content": question}], "max_tokens": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let queried = sim.metric("vllm:prefix_cache_queries_total").await;
    let hits = sim.metric("vllm:prefix_cache_hits_total").await;
    // ~150 tokens of shared system prompt: every full block of it is reused the second time.
    assert!(hits >= 128.0, "hits {hits} of {queried}");
    assert!(hits < queried / 2.0);
}

#[tokio::test]
async fn invalid_flags_are_refused_with_the_flag_named() {
    let (code, _, err) = run_mvllm(&["sim", "--max-model-len", "100000", "--num-gpu-blocks", "10"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("--max-model-len 100000 needs 6250 KV cache blocks"),
        "{err}"
    );
    assert!(err.contains("--num-gpu-blocks"), "{err}");

    let (code, _, err) = run_mvllm(&["sim", "--fault-error-rate", "1.5"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("--fault-error-rate must be between 0 and 1"),
        "{err}"
    );

    let (code, _, err) = run_mvllm(&["sim", "--lora-modules", "nopath"]);
    assert_ne!(code, 0);
    assert!(err.contains("NAME=PATH"), "{err}");

    let (code, _, err) = run_mvllm(&["sim", "--max-num-seqs", "0"]);
    assert_ne!(code, 0);
    assert!(err.contains("--max-num-seqs must be at least 1"), "{err}");
}
