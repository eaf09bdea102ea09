//! `mvllm run` in front of real `mvllm sim` servers on loopback: routing, balancing,
//! streaming, bodies of any size, retries and failures, as a client sees them.

mod common;

use std::time::{Duration, Instant};

use common::{client, get_json, sse_payloads, RouterProcess, Sim};
use futures_util::StreamExt;
use serde_json::{json, Value};

fn chat(model: &str, max_tokens: u32) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens})
}

async fn post(router: &RouterProcess, path: &str, body: &Value) -> (u16, Value) {
    let r = client()
        .post(router.at(path))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Requests a sim has completed (any finish reason), from its /metrics.
async fn served(sim: &Sim) -> f64 {
    sim.metric("vllm:request_success_total").await
}

#[tokio::test]
async fn routes_by_model_and_answers_its_own_endpoints() {
    let a = Sim::start(&[
        "--served-model-name",
        "llama",
        "--lora-modules",
        "sql=/a",
        "--itl-ms",
        "1",
    ])
    .await;
    let b = Sim::start(&["--served-model-name", "qwen", "--itl-ms", "1"]).await;
    let router = RouterProcess::start(&[(&a.url, 4), (&b.url, 4)], "").await;

    for _ in 0..5 {
        let (status, body) = post(&router, "/v1/chat/completions", &chat("qwen", 2)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["model"], "qwen");
        let (status, _) = post(&router, "/v1/chat/completions", &chat("sql", 2)).await;
        assert_eq!(status, 200);
    }
    assert_eq!(served(&a).await, 5.0, "only the LoRA requests went to a");
    assert_eq!(served(&b).await, 5.0, "only the qwen requests went to b");

    let models: Value = get_json(router.at("/v1/models")).await;
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["llama", "sql", "qwen"]);
    assert_eq!(
        models["data"][1]["parent"], "llama",
        "vLLM's card fields are kept"
    );

    let (status, body) = post(&router, "/v1/chat/completions", &chat("gpt-4", 2)).await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["param"], "model");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("llama, qwen, sql"),
        "{body}"
    );

    let health = client().get(router.at("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let health: Value = health.json().await.unwrap();
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["servers"][1]["models"], json!(["qwen"]));

    let stats: Value = get_json(router.at("/load-stats")).await;
    assert_eq!(stats["summary"]["total_capacity"], 8);
    assert_eq!(stats["servers"][0]["max_capacity"], 4);

    let unknown = client().get(router.at("/admin")).send().await.unwrap();
    assert_eq!(unknown.status(), 404);
    let unknown: Value = unknown.json().await.unwrap();
    assert_eq!(unknown["error"]["code"], 404);
}

#[tokio::test]
async fn malformed_json_is_400_and_costs_the_server_nothing() {
    let a = Sim::start(&["--itl-ms", "1"]).await;
    let router = RouterProcess::start(&[(&a.url, 4)], "").await;
    for _ in 0..5 {
        let r = client()
            .post(router.at("/v1/chat/completions"))
            .header("content-type", "application/json")
            .body("{\"model\": \"mvllm/sim-model\", \"messages\": [")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["type"], "BadRequestError");
    }
    // A 4xx from the backend itself (prompt too long) is passed on and not held against it.
    for _ in 0..5 {
        let (status, body) = post(
            &router,
            "/v1/completions",
            &json!({"prompt": "x", "max_tokens": 100000}),
        )
        .await;
        assert_eq!(status, 400, "{body}");
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("maximum context length"));
    }
    let health: Value = get_json(router.at("/health")).await;
    assert_eq!(health["healthy_servers"], 1);
    assert_eq!(health["servers"][0]["consecutive_failures"], 0);
    assert_eq!(served(&a).await, 0.0, "nothing malformed was forwarded");
}

#[tokio::test]
async fn a_burst_splits_by_capacity() {
    let small = Sim::start(&["--itl-ms", "20", "--max-num-seqs", "64"]).await;
    let large = Sim::start(&["--itl-ms", "20", "--max-num-seqs", "64"]).await;
    // A long poll interval: the split must come from the router's own accounting.
    let router = RouterProcess::start(
        &[(&small.url, 4), (&large.url, 16)],
        "metrics_interval = 30\n",
    )
    .await;
    let requests: Vec<_> = (0..40)
        .map(|_| {
            let r = client()
                .post(router.at("/v1/chat/completions"))
                .json(&chat("mvllm/sim-model", 10))
                .send();
            tokio::spawn(r)
        })
        .collect();
    for r in requests {
        assert_eq!(r.await.unwrap().unwrap().status(), 200);
    }
    let (to_small, to_large) = (served(&small).await, served(&large).await);
    println!("burst of 40 split {to_small}:{to_large} over capacities 4:16");
    assert_eq!(to_small + to_large, 40.0);
    assert!((6.0..=10.0).contains(&to_small), "{to_small}:{to_large}");
}

#[tokio::test]
async fn a_burst_splits_by_capacity_while_metrics_lag() {
    // Like vLLM's, these servers' /metrics lag their engines (by 3 s here); the router scrapes
    // every 50 ms, so most of the burst is sent to servers whose last scrape says "idle".
    let flags = [
        "--itl-ms",
        "100",
        "--max-num-seqs",
        "64",
        "--fault-metrics-lag-ms",
        "3000",
    ];
    let small = Sim::start(&flags).await;
    let large = Sim::start(&flags).await;
    let router = RouterProcess::start(
        &[(&small.url, 4), (&large.url, 16)],
        "metrics_interval = 0.05\n",
    )
    .await;
    let mut requests = Vec::new();
    for _ in 0..40 {
        let r = client()
            .post(router.at("/v1/chat/completions"))
            .json(&chat("mvllm/sim-model", 20))
            .send();
        requests.push(tokio::spawn(r));
        // Spread over 0.8 s: scrapes happen in between, each resetting the count of
        // requests sent since the last one.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for r in requests {
        assert_eq!(r.await.unwrap().unwrap().status(), 200);
    }
    // Counted from the sims' own /metrics, without the lag.
    for sim in [&small, &large] {
        let cleared = client().delete(sim.at("/sim/faults")).send().await.unwrap();
        assert!(cleared.status().is_success());
    }
    let (to_small, to_large) = (served(&small).await, served(&large).await);
    println!("burst of 40 with lagging metrics split {to_small}:{to_large} over capacities 4:16");
    assert_eq!(to_small + to_large, 40.0);
    assert!((6.0..=10.0).contains(&to_small), "{to_small}:{to_large}");
}

/// A completion request body of exactly `size` bytes.
fn body_of_size(size: usize) -> Vec<u8> {
    let head = br#"{"model":"mvllm/sim-model","max_tokens":1,"prompt":""#;
    let tail = br#""}"#;
    let mut body = head.to_vec();
    let filler = size - head.len() - tail.len();
    body.extend((0..filler).map(|i| b"abcdefghij"[i % 10]));
    body.extend_from_slice(tail);
    assert_eq!(body.len(), size);
    body
}

#[tokio::test]
async fn large_bodies_arrive_intact_also_on_retry() {
    let flags = [
        "--itl-ms",
        "0",
        "--prefill-us-per-token",
        "0",
        "--max-model-len",
        "2000000",
        "--num-gpu-blocks",
        "200000",
    ];
    let good = Sim::start(&flags).await;
    let mut failing_flags = flags.to_vec();
    failing_flags.extend(["--fault-error-rate", "1", "--fault-error-status", "503"]);
    let failing = Sim::start(&failing_flags).await;
    let router = RouterProcess::start(
        &[(&good.url, 4), (&failing.url, 4)],
        "failure_threshold = 100\n",
    )
    .await;

    for size in [65_536, 65_537, 4 << 20] {
        let body = body_of_size(size);
        let direct: Value = client()
            .post(good.at("/v1/completions"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let expected = &direct["usage"]["prompt_tokens"];
        assert!(expected.as_u64().unwrap() > 10_000);
        // Half of these land on the failing server first and are retried on the good one.
        for _ in 0..4 {
            let r = client()
                .post(router.at("/v1/completions"))
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "size {size}");
            let answer: Value = r.json().await.unwrap();
            assert_eq!(
                &answer["usage"]["prompt_tokens"], expected,
                "size {size}: the body changed on the way"
            );
        }
    }
    let failing_saw = failing.metric("vllm:prompt_tokens_total").await;
    assert_eq!(failing_saw, 0.0, "the failing server never ran a request");
}

#[tokio::test]
async fn too_large_bodies_get_413() {
    let a = Sim::start(&["--itl-ms", "0"]).await;
    let router = RouterProcess::start(&[(&a.url, 4)], "max_body_bytes = 100000\n").await;
    let r = client()
        .post(router.at("/v1/completions"))
        .header("content-type", "application/json")
        .body(body_of_size(100_001))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], 413);
}

#[tokio::test]
async fn errors_and_hangs_are_retried_on_another_server() {
    let good = Sim::start(&["--itl-ms", "1"]).await;
    let broken = Sim::start(&["--itl-ms", "1", "--fault-error-rate", "1"]).await;
    let hanging = Sim::start(&["--itl-ms", "1", "--fault-hang-rate", "1"]).await;
    let router = RouterProcess::start(
        &[(&good.url, 4), (&broken.url, 4), (&hanging.url, 4)],
        "first_byte_timeout = 0.5\nmax_retries = 3\n",
    )
    .await;
    for _ in 0..6 {
        let started = Instant::now();
        let (status, body) =
            post(&router, "/v1/chat/completions", &chat("mvllm/sim-model", 2)).await;
        assert_eq!(status, 200, "{body}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    // The broken and hanging servers are marked unhealthy by those failures.
    let health: Value = get_json(router.at("/health")).await;
    let healthy: Vec<bool> = health["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["healthy"].as_bool().unwrap())
        .collect();
    assert!(healthy[0]);
}

#[tokio::test]
async fn when_every_server_fails_the_last_error_is_returned() {
    let broken = Sim::start(&[
        "--itl-ms",
        "1",
        "--fault-error-rate",
        "1",
        "--fault-error-status",
        "503",
    ])
    .await;
    let router = RouterProcess::start(&[(&broken.url, 4)], "failure_threshold = 100\n").await;
    let (status, body) = post(&router, "/v1/chat/completions", &chat("mvllm/sim-model", 2)).await;
    assert_eq!(status, 503);
    assert!(
        body["error"]["message"].as_str().unwrap().contains("busy"),
        "the backend's own error: {body}"
    );
}

#[tokio::test]
async fn a_server_killed_mid_test_costs_no_request() {
    let survivor = Sim::start(&["--itl-ms", "2"]).await;
    let mut victim = Sim::start(&["--itl-ms", "2"]).await;
    let router = RouterProcess::start(&[(&survivor.url, 8), (&victim.url, 8)], "").await;
    let mut tasks = Vec::new();
    for i in 0..60 {
        let url = router.at("/v1/chat/completions");
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(i * 10)).await;
            client()
                .post(url)
                .json(&chat("mvllm/sim-model", 20))
                .send()
                .await
                .map(|r| r.status().as_u16())
        }));
    }
    tokio::time::sleep(Duration::from_millis(250)).await;
    victim.kill();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap(), 200);
    }
    router.wait_healthy(1).await;
}

#[tokio::test]
async fn no_healthy_server_is_503_with_retry_after() {
    let mut only = Sim::start(&["--itl-ms", "1"]).await;
    let router = RouterProcess::start(&[(&only.url, 4)], "").await;
    only.kill();
    router.wait_healthy(0).await;
    let r = client()
        .post(router.at("/v1/chat/completions"))
        .json(&chat("mvllm/sim-model", 1))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let health = client().get(router.at("/health")).send().await.unwrap();
    assert_eq!(health.status(), 503);
}

#[tokio::test]
async fn streams_are_not_buffered() {
    // 300 ms per token: buffering anything would show as whole token intervals.
    let slow = Sim::start(&["--itl-ms", "300", "--batch-slope", "0"]).await;
    let router = RouterProcess::start(&[(&slow.url, 4)], "").await;
    let body =
        json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": true});

    async fn first_token_and_total(url: String, body: &Value) -> (Duration, Duration, String) {
        let started = Instant::now();
        let r = client().post(url).json(body).send().await.unwrap();
        let mut stream = r.bytes_stream();
        let mut text = String::new();
        let mut first = None;
        while let Some(chunk) = stream.next().await {
            text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
            if first.is_none() && text.contains("\"content\":\" ") {
                first = Some(started.elapsed());
            }
        }
        (first.expect("a content chunk"), started.elapsed(), text)
    }
    let (direct_first, _, direct_text) =
        first_token_and_total(slow.at("/v1/chat/completions"), &body).await;
    let (routed_first, routed_total, routed_text) =
        first_token_and_total(router.at("/v1/chat/completions"), &body).await;
    println!("first token: direct {direct_first:?}, through the router {routed_first:?}");
    assert!(
        routed_first < direct_first + Duration::from_millis(100),
        "{routed_first:?} vs {direct_first:?}"
    );
    assert!(
        routed_first < routed_total - Duration::from_millis(500),
        "the first token came long before the end"
    );
    assert_eq!(
        sse_payloads(&routed_text).len(),
        sse_payloads(&direct_text).len()
    );
    assert!(routed_text.ends_with("data: [DONE]\n\n"));
}

#[tokio::test]
async fn client_disconnect_frees_the_backend_slot() {
    let sim = Sim::start(&["--itl-ms", "10", "--max-num-seqs", "1"]).await;
    let router = RouterProcess::start(&[(&sim.url, 4)], "").await;
    let body = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5000, "stream": true});
    let r = client()
        .post(router.at("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let mut stream = r.bytes_stream();
    stream.next().await.unwrap().unwrap();
    assert_eq!(sim.metric("vllm:num_requests_running").await, 1.0);
    drop(stream);
    sim.wait_metric("vllm:num_requests_running", |v| v == 0.0)
        .await;

    // The same for a request still waiting for its first byte.
    let impatient = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let err = impatient
        .post(router.at("/v1/completions"))
        .json(&json!({"prompt": "x", "max_tokens": 5000}))
        .send()
        .await;
    assert!(err.is_err());
    sim.wait_metric("vllm:num_requests_running", |v| v == 0.0)
        .await;
    let stats: Value = get_json(router.at("/load-stats")).await;
    assert_eq!(stats["servers"][0]["router_in_flight"], 0);
}

fn sigterm(pid: u32) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn sigterm_lets_in_flight_streams_finish_then_exits() {
    let sim = Sim::start(&["--itl-ms", "100", "--batch-slope", "0"]).await;
    let mut router = RouterProcess::start(&[(&sim.url, 4)], "").await;
    let body =
        json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10, "stream": true});
    let r = client()
        .post(router.at("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let mut stream = r.bytes_stream();
    let mut text = String::from_utf8(stream.next().await.unwrap().unwrap().to_vec()).unwrap();
    sigterm(router.pid());
    while let Some(chunk) = stream.next().await {
        text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    assert!(
        text.ends_with("data: [DONE]\n\n"),
        "the stream finished: {text}"
    );
    let exited = router.wait_exit(Duration::from_secs(5)).await;
    assert!(exited, "the router exits once nothing is in flight");
}

#[tokio::test]
async fn demo_runs_a_cluster_and_stops_on_sigterm() {
    let mut demo = RouterProcess::spawn_demo().await;
    demo.wait_healthy(3).await;
    let (status, body) = post(&demo, "/v1/chat/completions", &chat("demo-qwen", 3)).await;
    assert_eq!(status, 200, "{body}");
    sigterm(demo.pid());
    assert!(demo.wait_exit(Duration::from_secs(5)).await);
}

#[tokio::test]
async fn binary_upgrade_hands_over_without_dropping_a_request() {
    let sim = Sim::start(&["--itl-ms", "50", "--batch-slope", "0"]).await;
    let upgrade = common::Upgrade::prepare("upgrade");
    let mut old = RouterProcess::start_with(
        &[(&sim.url, 4)],
        "",
        upgrade.port,
        &["--conf", &upgrade.conf],
    )
    .await;

    // A stream in flight across the hand-over.
    let body =
        json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 40, "stream": true});
    let stream = tokio::spawn(
        client()
            .post(old.at("/v1/chat/completions"))
            .json(&body)
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The new process listens on the upgrade socket for the old one's listeners; once the
    // socket exists, SIGQUIT tells the old process to hand them over and drain.
    let new = upgrade.hand_over(&old).await;

    // Requests keep succeeding on the same address throughout.
    for _ in 0..20 {
        let (status, body) = post(&old, "/v1/chat/completions", &chat("mvllm/sim-model", 2)).await;
        assert_eq!(status, 200, "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = stream.await.unwrap().unwrap().text().await.unwrap();
    assert!(
        text.ends_with("data: [DONE]\n\n"),
        "the stream in flight finished"
    );
    assert!(
        old.wait_exit(Duration::from_secs(20)).await,
        "the old process left after draining"
    );
    new.wait_healthy(1).await;
    let (status, _) = post(&new, "/v1/chat/completions", &chat("mvllm/sim-model", 2)).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn servers_toml_reloads_without_a_restart() {
    let a = Sim::start(&["--itl-ms", "1", "--served-model-name", "llama"]).await;
    let b = Sim::start(&["--itl-ms", "1", "--served-model-name", "qwen"]).await;
    let router = RouterProcess::start(&[(&a.url, 4)], "").await;
    let (status, _) = post(&router, "/v1/chat/completions", &chat("qwen", 1)).await;
    assert_eq!(status, 404, "qwen is not served yet");

    // Add b.
    common::save_like_an_editor(
        router.config_path(),
        &common::servers_file(&[(&a.url, 4), (&b.url, 4)], ""),
    );
    router.wait_healthy(2).await;
    let (status, body) = post(&router, "/v1/chat/completions", &chat("qwen", 1)).await;
    assert_eq!(status, 200, "{body}");

    // A broken edit changes nothing.
    common::save_like_an_editor(
        router.config_path(),
        "[servers]\nservers = [{ url = \"gpu-9\" }]\n",
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let health = get_json(router.at("/health")).await;
    assert_eq!(
        health["total_servers"], 2,
        "the running config stays: {health}"
    );

    // Remove a.
    common::save_like_an_editor(
        router.config_path(),
        &common::servers_file(&[(&b.url, 4)], ""),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while get_json(router.at("/health")).await["total_servers"] != 1 {
        assert!(Instant::now() < deadline, "a was never removed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, _) = post(&router, "/v1/chat/completions", &chat("llama", 1)).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn the_first_request_after_start_is_routed() {
    let sim = Sim::start(&["--itl-ms", "1"]).await;
    // No waiting for /health to report the server healthy: as soon as the router accepts
    // connections it must already know the server and its models (a slow poll interval makes
    // sure no scrape after start-up helps).
    let router = RouterProcess::launch(&[(&sim.url, 4)], "metrics_interval = 30\n", 0, &[]).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while client().get(router.at("/health")).send().await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the router never accepted a connection"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (status, body) = post(&router, "/v1/chat/completions", &chat("mvllm/sim-model", 1)).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn garbage_or_slow_metrics_keep_a_server_out_without_stalling_the_rest() {
    let good = Sim::start(&["--itl-ms", "1"]).await;
    let garbage = Sim::start(&["--itl-ms", "1", "--fault-metrics", "garbage"]).await;
    let slow = Sim::start(&["--itl-ms", "1", "--fault-metrics-delay-ms", "60000"]).await;
    let router = RouterProcess::launch(
        &[(&good.url, 4), (&garbage.url, 4), (&slow.url, 4)],
        "health_check_timeout = 0.3\n",
        0,
        &[],
    )
    .await;
    router.wait_healthy(1).await;
    for _ in 0..6 {
        let (status, body) =
            post(&router, "/v1/chat/completions", &chat("mvllm/sim-model", 1)).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(served(&good).await, 6.0, "only the good server was used");
    let health = get_json(router.at("/health")).await;
    let servers = health["servers"].as_array().unwrap();
    assert_eq!(servers[0]["healthy"], true);
    assert_eq!(servers[1]["healthy"], false);
    assert!(
        servers[1]["last_error"]
            .as_str()
            .unwrap()
            .contains("no vLLM"),
        "{health}"
    );
    assert_eq!(servers[2]["healthy"], false);
    assert!(
        servers[2]["last_error"]
            .as_str()
            .unwrap()
            .contains("timed out"),
        "{health}"
    );
    // The hanging scrape does not stop the others: the good server keeps being checked.
    let first_check = servers[0]["last_check"].clone();
    let deadline = Instant::now() + Duration::from_secs(5);
    while get_json(router.at("/health")).await["servers"][0]["last_check"] == first_check {
        assert!(
            Instant::now() < deadline,
            "the good server was not checked again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
