//! What the router says about each request: the request id round trip, the access log line,
//! the stats hub as `/metrics` shows it, and the honest ends of requests that fail (a stream
//! cut by `request_timeout`, every server answering 429).

mod common;

use std::time::{Duration, Instant};

use common::{client, get_json, send_json, series, RouterProcess, Sim};
use futures_util::StreamExt;
use serde_json::{json, Value};

fn chat(content: &str, max_tokens: u32) -> Value {
    json!({"model": "mvllm/sim-model", "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens})
}

/// `/metrics` once `ready` accepts it. A request is recorded when its context is dropped,
/// just after its answer went out, so a client can be a moment ahead of the counters.
async fn metrics_when(router: &RouterProcess, ready: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = router.metrics().await;
        if ready(&text) || Instant::now() > deadline {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn the_request_id_goes_to_the_server_and_back() {
    let sim = Sim::start(&["--itl-ms", "1"]).await;
    let router = RouterProcess::start(&[(&sim.url, 4)], "").await;

    // The client's id: sent to the server (vLLM makes it the completion's id) and returned.
    let r = client()
        .post(router.at("/v1/chat/completions"))
        .header("x-request-id", "trace-42.a_b")
        .json(&chat("hi", 2))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "trace-42.a_b");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["id"], "chatcmpl-trace-42.a_b");

    // No id, or one that is not usable: the router makes one, and the server gets that one.
    for sent in [None, Some("has spaces in it"), Some(&*"x".repeat(129))] {
        let mut request = client()
            .post(router.at("/v1/chat/completions"))
            .json(&chat("hi", 2));
        if let Some(id) = sent {
            request = request.header("x-request-id", id);
        }
        let r = request.send().await.unwrap();
        let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
        assert_eq!(id.len(), 32, "a generated id for {sent:?}: {id}");
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        let body: Value = r.json().await.unwrap();
        assert_eq!(
            body["id"],
            format!("chatcmpl-{id}"),
            "the server got the same id"
        );
    }

    // The router's own answers carry one too.
    let r = client().get(router.at("/health")).send().await.unwrap();
    assert_eq!(r.headers()["x-request-id"].len(), 32);
    let r = client()
        .post(router.at("/v1/chat/completions"))
        .header("x-request-id", "bad-json-1")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(
        (
            r.status().as_u16(),
            r.headers()["x-request-id"].to_str().unwrap()
        ),
        (400, "bad-json-1")
    );
}

/// The fields every access line carries.
const FIELDS: [&str; 13] = [
    "request_id",
    "method",
    "path",
    "model",
    "servers",
    "attempts",
    "status",
    "outcome",
    "ttft_ms",
    "total_ms",
    "prompt_tokens",
    "completion_tokens",
    "timestamp",
];

#[tokio::test]
async fn one_access_line_per_request_in_text() {
    let sim = Sim::start(&["--itl-ms", "1"]).await;
    let router =
        RouterProcess::launch_with_env(&[(&sim.url, 4)], "", 0, &[], &[("RUST_LOG", "info")]).await;
    router.wait_healthy(1).await;
    let secret = "SECRET-PROMPT-7f3a";
    let r = client()
        .post(router.at("/v1/chat/completions?api_key=SECRET-QUERY"))
        .header("x-request-id", "text-log-1")
        .header("authorization", "Bearer SECRET-KEY")
        .json(&chat(secret, 3))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let line = router
        .output
        .wait_stderr_line(&["access", "request_id=text-log-1"])
        .await;
    for field in FIELDS.iter().filter(|f| **f != "timestamp") {
        assert!(
            line.contains(&format!(" {field}=")),
            "{field} missing: {line}"
        );
    }
    assert!(line.starts_with("20"), "starts with the time: {line}");
    for expected in [
        "method=POST",
        "path=/v1/chat/completions ",
        "model=mvllm/sim-model",
        &format!("servers={}", sim.url),
        "attempts=delivered",
        "status=200",
        "outcome=ok",
        "prompt_tokens=",
        "completion_tokens=3",
    ] {
        assert!(line.contains(expected), "{expected:?} missing: {line}");
    }
    let stderr = router.output.stderr();
    for never in [secret, "SECRET-QUERY", "SECRET-KEY"] {
        assert!(!stderr.contains(never), "{never} was logged");
    }
    assert!(
        !stderr.contains('\u{1b}'),
        "no ANSI codes when stderr is a pipe"
    );
}

#[tokio::test]
async fn one_access_line_per_request_in_json() {
    let sim = Sim::start(&["--itl-ms", "1"]).await;
    let router = RouterProcess::launch_with_env(
        &[(&sim.url, 4)],
        "",
        0,
        &["--log-format", "json"],
        &[("RUST_LOG", "info")],
    )
    .await;
    router.wait_healthy(1).await;
    let body = json!({"model": "mvllm/sim-model", "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 4, "stream": true, "stream_options": {"include_usage": true}});
    let r = client()
        .post(router.at("/v1/chat/completions"))
        .header("x-request-id", "json-log-1")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.text().await.unwrap().ends_with("data: [DONE]\n\n"));
    let (status, _) = (
        client()
            .post(router.at("/v1/chat/completions"))
            .header("x-request-id", "json-log-2")
            .json(&json!({"model": "gpt-4", "messages": []}))
            .send()
            .await
            .unwrap()
            .status(),
        (),
    );
    assert_eq!(status, 404);

    let line = router.output.wait_stderr_line(&["\"json-log-1\""]).await;
    let entry: Value = serde_json::from_str(&line).expect("a JSON line");
    for field in FIELDS {
        assert!(entry.get(field).is_some(), "{field} missing: {entry}");
    }
    assert_eq!(entry["target"], "access");
    assert_eq!(entry["status"], 200);
    assert_eq!(entry["servers"], json!([sim.url]));
    assert_eq!(
        entry["completion_tokens"], 4,
        "usage from the stream's last chunk"
    );
    assert!(entry["ttft_ms"].as_f64().unwrap() <= entry["total_ms"].as_f64().unwrap());

    let line = router.output.wait_stderr_line(&["\"json-log-2\""]).await;
    let entry: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        (entry["status"].as_u64(), entry["outcome"].as_str()),
        (Some(404), Some("rejected"))
    );
    assert_eq!(entry["servers"], json!([]));
    assert_eq!(entry["prompt_tokens"], Value::Null, "unknown is null");
    // Every line of the log is JSON, the router's own messages included.
    for line in router.output.stderr().lines() {
        serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }
}

#[tokio::test]
async fn metrics_count_requests_retries_errors_and_tokens() {
    let good = Sim::start(&["--itl-ms", "1"]).await;
    let broken = Sim::failing(500).await;
    let router = RouterProcess::start(
        &[(&good.url, 4), (&broken.url, 4)],
        "failure_threshold = 100\n",
    )
    .await;
    for _ in 0..8 {
        let r = send_json(router.at("/v1/chat/completions"), &chat("hi", 3)).await;
        assert_eq!(r.status(), 200);
    }
    let r = client()
        .post(router.at("/v1/chat/completions"))
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    let all_recorded = |text: &str| series(text, "mvllm_requests_total", &[]) == 9.0;
    let text = metrics_when(&router, all_recorded).await;
    let ok = [
        ("server", good.url.as_str()),
        ("outcome", "ok"),
        ("status_class", "2xx"),
        ("model", "mvllm/sim-model"),
    ];
    assert_eq!(series(&text, "mvllm_requests_total", &ok), 8.0, "{text}");
    assert_eq!(
        series(
            &text,
            "mvllm_requests_total",
            &[("server", "none"), ("outcome", "rejected")]
        ),
        1.0
    );
    let on_broken = series(&text, "mvllm_attempts_total", &[("server", &broken.url)]);
    assert!(
        on_broken >= 1.0,
        "some requests tried the broken server first"
    );
    assert_eq!(
        series(&text, "mvllm_retries_total", &[("server", &broken.url)]),
        on_broken
    );
    assert_eq!(
        series(
            &text,
            "mvllm_upstream_errors_total",
            &[("server", &broken.url), ("cause", "status_5xx")]
        ),
        on_broken
    );
    assert_eq!(
        series(&text, "mvllm_attempts_total", &[("server", &good.url)]),
        8.0
    );
    assert_eq!(
        series(
            &text,
            "mvllm_completion_tokens_total",
            &[("server", &good.url)]
        ),
        24.0
    );
    assert!(series(&text, "mvllm_prompt_tokens_total", &[("server", &good.url)]) > 0.0);
    assert_eq!(
        series(
            &text,
            "mvllm_time_to_first_token_seconds_count",
            &[("server", &good.url)]
        ),
        8.0
    );
    assert_eq!(
        series(&text, "mvllm_server_healthy", &[("server", &good.url)]),
        1.0
    );

    // /load-stats reads the same counts.
    let stats = get_json(router.at("/load-stats")).await;
    assert_eq!(stats["servers"][0]["requests_total"], 8);
    assert_eq!(
        stats["servers"][1]["errors_total"].as_f64(),
        Some(on_broken)
    );
    assert_eq!(
        stats["servers"][1]["retries_total"].as_f64(),
        Some(on_broken)
    );
}

#[tokio::test]
async fn a_stream_cut_by_request_timeout_is_a_timeout_not_a_success() {
    let slow = Sim::start(&["--itl-ms", "200", "--batch-slope", "0"]).await;
    let router = RouterProcess::start(&[(&slow.url, 4)], "request_timeout = 1\n").await;
    let body =
        json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 30, "stream": true});
    let started = Instant::now();
    let r = send_json(router.at("/v1/chat/completions"), &body).await;
    assert_eq!(r.status(), 200);
    let mut stream = r.bytes_stream();
    let mut text = String::new();
    let mut broken = false;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(bytes) => text.push_str(std::str::from_utf8(&bytes).unwrap()),
            Err(_) => {
                broken = true;
                break;
            }
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "cut at about 1 s, not after 6 s"
    );
    assert!(
        broken || !text.ends_with("data: [DONE]\n\n"),
        "the client sees an incomplete stream: {text}"
    );
    assert!(text.contains("data: {"), "it had part of the answer");
    if !broken {
        let events = common::sse_payloads(&text);
        let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
        assert_eq!(last["error"]["code"], 504, "told why it ended: {text}");
    }

    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = router.metrics().await;
        if series(&text, "mvllm_requests_total", &[("outcome", "timeout")]) == 1.0 {
            assert_eq!(
                series(&text, "mvllm_requests_total", &[("outcome", "ok")]),
                0.0
            );
            assert_eq!(
                series(
                    &text,
                    "mvllm_upstream_errors_total",
                    &[("cause", "request_timeout")]
                ),
                1.0
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never recorded as a timeout: {text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let health = get_json(router.at("/health")).await;
    assert_eq!(
        health["servers"][0]["consecutive_failures"], 0,
        "the router's own limit is not the server's fault"
    );
}

#[tokio::test]
async fn when_every_server_says_429_its_retry_after_reaches_the_client() {
    let a = Sim::failing(429).await;
    let b = Sim::failing(429).await;
    let router = RouterProcess::start(&[(&a.url, 4), (&b.url, 4)], "").await;
    let r = send_json(router.at("/v1/chat/completions"), &chat("hi", 2)).await;
    assert_eq!(r.status(), 429);
    assert_eq!(
        r.headers()["retry-after"],
        "7",
        "the server's own Retry-After"
    );
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["type"], "RateLimitError");

    let text = metrics_when(&router, |t| series(t, "mvllm_requests_total", &[]) == 1.0).await;
    assert_eq!(
        series(
            &text,
            "mvllm_requests_total",
            &[("outcome", "upstream_failed"), ("status_class", "4xx")]
        ),
        1.0
    );
    assert_eq!(
        series(
            &text,
            "mvllm_upstream_errors_total",
            &[("cause", "status_429")]
        ),
        2.0,
        "both were tried"
    );
    let health = get_json(router.at("/health")).await;
    assert_eq!(health["healthy_servers"], 2, "busy is not broken");
}

#[tokio::test]
async fn routing_headers_only_when_asked_for() {
    let good = Sim::start(&["--itl-ms", "1"]).await;
    let broken = Sim::failing(503).await;
    let servers = [(good.url.as_str(), 4), (broken.url.as_str(), 4)];
    let quiet = RouterProcess::start(&servers, "failure_threshold = 100\n").await;
    let r = send_json(quiet.at("/v1/chat/completions"), &chat("hi", 2)).await;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers().get("x-mvllm-upstream").is_none(),
        "off by default"
    );
    assert!(r.headers().get("x-mvllm-attempts").is_none());

    let lines = "failure_threshold = 100\nexpose_routing_headers = true\n";
    let router = RouterProcess::start(&servers, lines).await;
    let mut seen_retry = false;
    for _ in 0..8 {
        let r = send_json(router.at("/v1/chat/completions"), &chat("hi", 2)).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-mvllm-upstream"], good.url.as_str());
        let attempts = r.headers()["x-mvllm-attempts"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(attempts == "1" || attempts == "2", "{attempts}");
        seen_retry |= attempts == "2";
    }
    assert!(seen_retry, "some requests tried the broken server first");

    // A request every server fails: the last one tried, and how many were.
    let only_broken = RouterProcess::start(&[(&broken.url, 4)], lines).await;
    let r = send_json(only_broken.at("/v1/chat/completions"), &chat("hi", 2)).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["x-mvllm-upstream"], broken.url.as_str());
    assert_eq!(r.headers()["x-mvllm-attempts"], "1");
}

#[tokio::test]
async fn with_an_admin_address_the_operators_endpoints_move_there() {
    let sim = Sim::start(&["--itl-ms", "1"]).await;
    let admin_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let lines = format!("admin_address = \"127.0.0.1:{admin_port}\"\n");
    let router = RouterProcess::start(&[(&sim.url, 4)], &lines).await;
    let admin = format!("http://127.0.0.1:{admin_port}");
    let status = |url: String| async move {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match client().get(&url).send().await {
                Ok(r) => return r.status().as_u16(),
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Err(e) => panic!("{url}: {e}"),
            }
        }
    };
    // The public port: inference and /health, not the operator's endpoints.
    assert_eq!(status(router.at("/metrics")).await, 404);
    assert_eq!(status(router.at("/load-stats")).await, 404);
    assert_eq!(status(router.at("/health")).await, 200);
    let r = send_json(router.at("/v1/chat/completions"), &chat("hi", 2)).await;
    assert_eq!(r.status(), 200);
    // The admin address: the operator's endpoints and /health, no inference.
    assert_eq!(status(format!("{admin}/metrics")).await, 200);
    assert_eq!(status(format!("{admin}/load-stats")).await, 200);
    assert_eq!(status(format!("{admin}/health")).await, 200);
    let r = send_json(format!("{admin}/v1/chat/completions"), &chat("hi", 2)).await;
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("admin address"),
        "{body}"
    );
}

#[tokio::test]
async fn a_stream_the_server_breaks_off_ends_with_an_error_event() {
    let cut = Sim::start(&["--itl-ms", "1", "--fault-cut-stream-after", "3"]).await;
    let router = RouterProcess::start(&[(&cut.url, 4)], "").await;
    let body =
        json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 20, "stream": true});
    let r = send_json(router.at("/v1/chat/completions"), &body).await;
    assert_eq!(r.status(), 200);
    let text = r
        .text()
        .await
        .expect("the stream ends cleanly, with the error told");
    let events = common::sse_payloads(&text);
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], 502, "{text}");
    assert!(
        last["error"]["message"]
            .as_str()
            .unwrap()
            .contains("broke off"),
        "{last}"
    );
    assert!(
        events.len() >= 4,
        "the tokens before the break came through: {text}"
    );
    assert!(!text.contains("[DONE]"), "never a clean end");
    let text = metrics_when(&router, |t| {
        series(t, "mvllm_requests_total", &[("outcome", "broke_off")]) == 1.0
    })
    .await;
    assert_eq!(
        series(&text, "mvllm_requests_total", &[("outcome", "broke_off")]),
        1.0
    );
}

#[tokio::test]
async fn when_every_server_fails_the_retry_budget_bounds_the_retries() {
    let (a, b, c) = (
        Sim::failing(500).await,
        Sim::failing(500).await,
        Sim::failing(500).await,
    );
    let lines = "failure_threshold = 100\nmax_retries = 3\nretry_budget_percent = 20\n\
                 retry_budget_floor = 5\nretry_backoff = 0\n";
    let router = RouterProcess::start(&[(&a.url, 4), (&b.url, 4), (&c.url, 4)], lines).await;
    let sent = 60;
    for _ in 0..sent / 6 {
        let batch: Vec<_> = (0..6)
            .map(|_| {
                let url = router.at("/v1/chat/completions");
                tokio::spawn(async move { send_json(url, &chat("hi", 2)).await })
            })
            .collect();
        for r in batch {
            assert_eq!(r.await.unwrap().status(), 500, "the servers' own answer");
        }
    }
    let text = metrics_when(&router, |t| {
        series(t, "mvllm_requests_total", &[]) == f64::from(sent)
    })
    .await;
    let attempts = series(&text, "mvllm_attempts_total", &[]);
    let denied = series(&text, "mvllm_retries_denied_total", &[]);
    println!("{sent} requests, {attempts} attempts, {denied} retries refused by the budget");
    // Without a budget each request would try all three servers: 180 attempts. With it:
    // 20 % of the requests plus 5 (and a few more where concurrent requests both took the
    // last retry), well under twice the client's rate.
    assert!(
        attempts <= f64::from(sent) * 1.2 + 5.0 + 6.0,
        "{attempts} attempts for {sent} requests"
    );
    assert!(attempts < f64::from(sent) * 2.0);
    assert!(denied > 0.0);
}

#[tokio::test]
async fn a_server_that_keeps_failing_is_ejected_but_never_the_last_one() {
    let good = Sim::start(&["--itl-ms", "1"]).await;
    let broken = Sim::start(&["--itl-ms", "1", "--fault-error-rate", "1"]).await;
    // Health alone would keep the broken server in: its /metrics answer.
    let lines = "failure_threshold = 100\nejection_threshold = 2\nejection_time = 2\n\
                 retry_backoff = 0\n";
    let router = RouterProcess::start(&[(&good.url, 4), (&broken.url, 4)], lines).await;
    for _ in 0..30 {
        let r = send_json(router.at("/v1/chat/completions"), &chat("hi", 1)).await;
        assert_eq!(r.status(), 200);
    }
    let text = router.metrics().await;
    let on_broken = series(&text, "mvllm_attempts_total", &[("server", &broken.url)]);
    println!("30 requests: {on_broken} attempts on the broken server");
    // Without ejection about half the requests would try it first (ties are random).
    assert!(
        on_broken <= 3.0,
        "{on_broken} attempts on the ejected server"
    );
    assert_eq!(
        series(&text, "mvllm_ejections_total", &[("server", &broken.url)]),
        1.0
    );
    assert_eq!(
        series(&text, "mvllm_server_ejected", &[("server", &broken.url)]),
        1.0
    );
    let stats = get_json(router.at("/load-stats")).await;
    assert!(stats["servers"][1]["ejected_for_seconds"].as_f64().unwrap() > 0.0);
    assert_eq!(stats["servers"][1]["ejections_total"], 1);
    let health = get_json(router.at("/health")).await;
    assert_eq!(health["servers"][1]["ejected"], true);
    assert_eq!(
        health["servers"][1]["healthy"], true,
        "ejected, not unhealthy"
    );

    // The only server for the model, ejected: still tried, its own answer passed on.
    let lines = "failure_threshold = 100\nejection_threshold = 1\nejection_time = 60\n";
    let alone = RouterProcess::start(&[(&broken.url, 4)], lines).await;
    for _ in 0..3 {
        let r = send_json(alone.at("/v1/chat/completions"), &chat("hi", 1)).await;
        assert_eq!(
            r.status(),
            500,
            "the server's answer, not a 503 for nothing"
        );
    }
}

#[tokio::test]
async fn with_resume_streams_a_broken_stream_goes_on_on_another_server() {
    // This server dies after 3 tokens of every stream; the other is healthy.
    let cut = Sim::start(&["--itl-ms", "1", "--fault-cut-stream-after", "3"]).await;
    let good = Sim::start(&["--itl-ms", "1"]).await;
    let lines = "resume_streams = true\nfailure_threshold = 100\nejection_threshold = 0\n";
    let router = RouterProcess::start(&[(&cut.url, 4), (&good.url, 4)], lines).await;
    for (path, body) in [
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 12, "stream": true}),
        ),
        (
            "/v1/completions",
            json!({"prompt": "Once upon a time", "max_tokens": 12, "stream": true}),
        ),
    ] {
        // Ties are broken at random: some of these start on the server that dies.
        for _ in 0..20 {
            let r = send_json(router.at(path), &body).await;
            assert_eq!(r.status(), 200);
            let text = r.text().await.unwrap();
            assert!(text.ends_with("data: [DONE]\n\n"), "uninterrupted: {text}");
            let events: Vec<Value> = common::sse_payloads(&text)
                .iter()
                .filter(|p| *p != "[DONE]")
                .map(|p| serde_json::from_str(p).unwrap())
                .collect();
            let ids: std::collections::HashSet<&str> =
                events.iter().map(|e| e["id"].as_str().unwrap()).collect();
            assert_eq!(ids.len(), 1, "one response id: {text}");
            let content = events
                .iter()
                .filter(|e| {
                    let choice = &e["choices"][0];
                    let piece = choice["delta"]["content"]
                        .as_str()
                        .or(choice["text"].as_str());
                    piece.is_some_and(|t| !t.is_empty())
                })
                .count();
            assert_eq!(content, 12, "every requested token, once: {text}");
            let openings = events
                .iter()
                .filter(|e| e["choices"][0]["delta"]["role"].is_string())
                .count();
            assert!(openings <= 1, "one opening: {text}");
        }
    }
    let text = router.metrics().await;
    let resumed = series(&text, "mvllm_streams_resumed_total", &[]);
    println!("{resumed} of 40 streams were resumed on another server");
    assert!(resumed >= 1.0);
    assert_eq!(
        series(&text, "mvllm_requests_total", &[("outcome", "broke_off")]),
        0.0
    );
}
