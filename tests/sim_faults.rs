//! `mvllm sim`'s fault injection, switched at start-up and at run time.

mod common;

use std::time::{Duration, Instant};

use common::{client, sse_payloads, Sim};
use futures_util::StreamExt;
use serde_json::{json, Value};

fn chat(max_tokens: u32, stream: bool) -> Value {
    json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens, "stream": stream})
}

async fn set_faults(sim: &Sim, patch: Value) -> Value {
    let r = client()
        .post(sim.at("/sim/faults"))
        .json(&patch)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test]
async fn error_status_from_flags_and_at_run_time() {
    let sim = Sim::start(&[
        "--itl-ms",
        "0",
        "--fault-error-rate",
        "1",
        "--fault-error-status",
        "503",
    ])
    .await;
    let r = client()
        .post(sim.at("/v1/chat/completions"))
        .json(&chat(1, false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], 503);
    assert!(body["error"]["message"].as_str().unwrap().contains("busy"));

    let faults = set_faults(&sim, json!({"error_status": 500})).await;
    assert_eq!(faults["error_rate"], 1.0, "a merge keeps the other fields");
    let r = client()
        .post(sim.at("/v1/completions"))
        .json(&json!({"prompt": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);

    let cleared = client().delete(sim.at("/sim/faults")).send().await.unwrap();
    assert_eq!(cleared.status(), 200);
    let r = client()
        .post(sim.at("/v1/completions"))
        .json(&json!({"prompt": "x", "max_tokens": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // About half the requests fail at rate 0.5.
    set_faults(&sim, json!({"error_rate": 0.5})).await;
    let mut failed = 0;
    for _ in 0..100 {
        let r = client()
            .post(sim.at("/v1/embeddings"))
            .json(&json!({"input": "x"}))
            .send()
            .await
            .unwrap();
        if r.status() == 500 {
            failed += 1;
        }
    }
    assert!((25..=75).contains(&failed), "{failed} of 100 failed");
}

#[tokio::test]
async fn bad_fault_settings_are_refused_and_change_nothing() {
    let sim = Sim::start(&["--itl-ms", "0"]).await;
    for patch in [
        json!({"eror_rate": 1}),
        json!({"hang_rate": -1}),
        json!({"error_status": 200}),
        json!({"slowdown": 0}),
        json!([1]),
    ] {
        let r = client()
            .post(sim.at("/sim/faults"))
            .json(&patch)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{patch}");
        let body: Value = r.json().await.unwrap();
        assert!(body["error"]["message"].is_string());
    }
    let unknown: Value = client()
        .post(sim.at("/sim/faults"))
        .json(&json!({"eror_rate": 1}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        unknown["error"]["message"]
            .as_str()
            .unwrap()
            .contains("error_rate"),
        "names the allowed fields"
    );
    let current: Value = sim.get_json("/sim/faults").await;
    assert_eq!(current["error_rate"], 0.0);
    assert_eq!(current["hang_rate"], 0.0);

    let replaced = client()
        .put(sim.at("/sim/faults"))
        .json(&json!({"delay_ms": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(replaced.status(), 200);
    let current: Value = replaced.json().await.unwrap();
    assert_eq!(current["delay_ms"], 5);
    assert_eq!(current["error_status"], 500);
}

#[tokio::test]
async fn delay_holds_the_first_byte() {
    let sim = Sim::start(&["--itl-ms", "0", "--fault-delay-ms", "300"]).await;
    let started = Instant::now();
    let r = client()
        .post(sim.at("/v1/chat/completions"))
        .json(&chat(1, false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn hang_never_answers_and_the_server_stays_up() {
    let sim = Sim::start(&["--itl-ms", "0", "--fault-hang-rate", "1"]).await;
    let impatient = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(400))
        .build()
        .unwrap();
    let err = impatient
        .post(sim.at("/v1/chat/completions"))
        .json(&chat(1, false))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert_eq!(sim.get_status("/health").await, 200);
}

#[tokio::test]
async fn close_drops_the_connection_without_an_answer() {
    let sim = Sim::start(&["--itl-ms", "0", "--fault-close-rate", "1"]).await;
    let err = client()
        .post(sim.at("/v1/chat/completions"))
        .json(&chat(1, false))
        .send()
        .await
        .unwrap_err();
    assert!(!err.is_timeout() && err.status().is_none(), "{err}");
    assert_eq!(sim.get_status("/health").await, 200);
}

#[tokio::test]
async fn cut_stream_ends_mid_body_without_done() {
    let sim = Sim::start(&["--itl-ms", "1", "--fault-cut-stream-after", "3"]).await;
    let r = client()
        .post(sim.at("/v1/chat/completions"))
        .json(&chat(50, true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    let mut received = Vec::new();
    let mut failed = false;
    while let Some(piece) = body.next().await {
        match piece {
            Ok(bytes) => received.extend_from_slice(&bytes),
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    assert!(failed, "the body must end in an error, not a clean end");
    let text = String::from_utf8(received).unwrap();
    let payloads = sse_payloads(&text);
    assert_eq!(payloads.len(), 4, "role chunk + 3 tokens: {text}");
    assert!(!text.contains("[DONE]"));
}

#[tokio::test]
async fn metrics_faults_garbage_empty_error_and_slow() {
    let sim = Sim::start(&["--itl-ms", "0"]).await;
    let get = || client().get(sim.at("/metrics")).send();

    set_faults(&sim, json!({"metrics": "garbage"})).await;
    let r = get().await.unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(text.contains("502 Bad Gateway"));

    set_faults(&sim, json!({"metrics": "empty"})).await;
    assert_eq!(get().await.unwrap().text().await.unwrap(), "");

    set_faults(&sim, json!({"metrics": "error"})).await;
    assert_eq!(get().await.unwrap().status(), 500);

    set_faults(&sim, json!({"metrics": "ok", "metrics_delay_ms": 300})).await;
    let started = Instant::now();
    let text = get().await.unwrap().text().await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(text.contains("vllm:num_requests_running"));
    // Inference is not slowed by a metrics fault.
    let r = client()
        .post(sim.at("/v1/chat/completions"))
        .json(&chat(1, false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn reported_models_can_change_at_run_time() {
    let sim = Sim::start(&["--itl-ms", "0", "--served-model-name", "a"]).await;
    set_faults(&sim, json!({"models": ["b", "c"]})).await;
    let models: Value = sim.get_json("/v1/models").await;
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["b", "c"]);
    for (model, status) in [("a", 404), ("c", 200)] {
        let request = json!({"model": model, "messages": [{"role": "user", "content": "x"}], "max_tokens": 1});
        let (got, _) = sim.post_json("/v1/chat/completions", &request).await;
        assert_eq!(got, status, "model {model}");
    }
}
