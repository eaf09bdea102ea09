//! Client API keys, their models and limits, and the admin key, against the real router and
//! simulated servers on loopback.

mod common;

use common::{client, poll_until, series, RouterProcess, Sim};
use serde_json::{json, Value};

fn chat(model: &str, max_tokens: u32) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": max_tokens,
    })
}

/// POSTs a chat request with `key` (if any): status, `Retry-After`, JSON body.
async fn post(
    router: &RouterProcess,
    key: Option<&str>,
    body: &Value,
) -> (u16, Option<String>, Value) {
    let mut request = client().post(router.at("/v1/chat/completions")).json(body);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (status, retry_after, response.json().await.unwrap())
}

async fn get(router: &RouterProcess, path: &str, key: Option<&str>) -> (u16, String) {
    let mut request = client().get(router.at(path));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// An OpenAI-shaped error with this status.
fn assert_error(body: &Value, status: u16, kind: &str) {
    assert_eq!(body["error"]["code"], status, "{body}");
    assert_eq!(body["error"]["type"], kind, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("mvllm-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn keys_guard_inference_name_the_client_and_limit_its_models() {
    let sim = Sim::start(&["--itl-ms", "1", "--served-model-name", "llama", "qwen"]).await;
    let dir = temp_dir("auth-keys");
    let key_file = dir.join("b.key");
    std::fs::write(&key_file, "sk-b-first\n").unwrap();
    let text = format!(
        r#"[servers]
servers = [{{ url = "{}" }}]
[config]
config_reload_interval = 0.2
[auth]
keys = [
  {{ name = "team-a", key = "sk-a", models = ["llama"] }},
  {{ name = "team-b", key_file = "{}" }},
  {{ name = "team-c", key_env = "MVLLM_TEST_CLIENT_KEY" }},
]
"#,
        sim.url,
        key_file.display()
    );
    let router = RouterProcess::launch_toml_with_env(
        &text,
        &[
            ("MVLLM_TEST_CLIENT_KEY", "sk-c"),
            ("RUST_LOG", "warn,access=info"),
        ],
    )
    .await;
    router.wait_healthy(1).await;

    // /health stays open for load balancers and probes.
    assert_eq!(get(&router, "/health", None).await.0, 200);

    // No key, a wrong key, another scheme: 401 in OpenAI's shape, the key never echoed.
    let (status, _, body) = post(&router, None, &chat("llama", 2)).await;
    assert_eq!(status, 401);
    assert_error(&body, 401, "AuthenticationError");
    let (status, _, body) = post(&router, Some("sk-wrong"), &chat("llama", 2)).await;
    assert_eq!(status, 401);
    assert!(!body.to_string().contains("sk-wrong"), "{body}");
    let (status, body) = get(&router, "/v1/models", None).await;
    assert_eq!(status, 401, "{body}");

    // Each key works, whichever way it was given.
    for key in ["sk-a", "sk-b-first", "sk-c"] {
        let (status, _, body) = post(&router, Some(key), &chat("llama", 2)).await;
        assert_eq!(status, 200, "{key}: {body}");
    }

    // team-a may use llama only: qwen does not exist for it, in the list and in requests.
    let (_, models) = get(&router, "/v1/models", Some("sk-a")).await;
    let models: Value = serde_json::from_str(&models).unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["llama"]);
    assert_eq!(get(&router, "/v1/models/qwen", Some("sk-a")).await.0, 404);
    let (status, _, body) = post(&router, Some("sk-a"), &chat("qwen", 2)).await;
    assert_eq!(status, 404);
    assert_error(&body, 404, "NotFoundError");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("llama") && !message.contains("Available models: llama, qwen"),
        "{message}"
    );
    // Another key sees both.
    let (_, models) = get(&router, "/v1/models", Some("sk-b-first")).await;
    assert!(models.contains("qwen"), "{models}");
    let (status, _, _) = post(&router, Some("sk-b-first"), &chat("qwen", 2)).await;
    assert_eq!(status, 200);

    // Names, never keys, in /metrics and the access log.
    let metrics = router.metrics().await;
    assert_eq!(
        series(
            &metrics,
            "mvllm_client_requests_total",
            &[("client", "team-a"), ("outcome", "ok")]
        ),
        1.0
    );
    assert_eq!(
        series(
            &metrics,
            "mvllm_client_requests_total",
            &[("client", "team-b"), ("outcome", "ok")]
        ),
        2.0
    );
    assert_eq!(
        series(
            &metrics,
            "mvllm_client_refused_total",
            &[("client", "team-a"), ("reason", "model")]
        ),
        1.0
    );
    assert!(
        series(
            &metrics,
            "mvllm_client_tokens_total",
            &[("client", "team-c"), ("kind", "completion")]
        ) >= 2.0
    );
    assert_eq!(
        series(&metrics, "mvllm_unauthorized_requests_total", &[]),
        3.0
    );
    assert!(!metrics.contains("sk-"), "a key leaked into /metrics");
    router
        .output
        .wait_stderr_line(&["access", "client=team-c"])
        .await;
    assert!(
        !router.output.stderr().contains("sk-c"),
        "a key leaked into the logs"
    );

    // The key file is read again: a rotated key takes over without a restart.
    std::fs::write(&key_file, "sk-b-second\n").unwrap();
    poll_until("the rotated key was never taken".into(), || async {
        post(&router, Some("sk-b-second"), &chat("llama", 1))
            .await
            .0
            == 200
    })
    .await;
    assert_eq!(
        post(&router, Some("sk-b-first"), &chat("llama", 1)).await.0,
        401
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn limits_answer_429_with_retry_after_and_free_up() {
    let sim = Sim::start(&["--itl-ms", "20", "--served-model-name", "m"]).await;
    let text = format!(
        r#"[servers]
servers = [{{ url = "{}", max_concurrent_requests = 16 }}]
[auth]
keys = [
  {{ name = "rate", key = "sk-rate", requests_per_minute = 2 }},
  {{ name = "one", key = "sk-one", max_concurrent_requests = 1 }},
  {{ name = "tokens", key = "sk-tokens", tokens_per_minute = 30 }},
]
"#,
        sim.url
    );
    let router = RouterProcess::launch_toml(&text).await;
    router.wait_healthy(1).await;

    // Two a minute: the third waits 30 s.
    for _ in 0..2 {
        assert_eq!(post(&router, Some("sk-rate"), &chat("m", 1)).await.0, 200);
    }
    let (status, retry_after, body) = post(&router, Some("sk-rate"), &chat("m", 1)).await;
    assert_eq!(status, 429);
    assert_error(&body, 429, "RateLimitError");
    let wait: u64 = retry_after.expect("Retry-After").parse().unwrap();
    assert!((1..=30).contains(&wait), "{wait}");

    // One at a time: a second request while a slow one runs is refused, then allowed.
    let slow = tokio::spawn({
        let url = router.at("/v1/chat/completions");
        async move {
            let response = client()
                .post(url)
                .bearer_auth("sk-one")
                .json(&chat("m", 60))
                .send()
                .await
                .unwrap();
            response.status().as_u16()
        }
    });
    poll_until("the slow request never started".into(), || async {
        sim.metric("vllm:num_requests_running").await >= 1.0
    })
    .await;
    let (status, retry_after, _) = post(&router, Some("sk-one"), &chat("m", 1)).await;
    assert_eq!((status, retry_after.as_deref()), (429, Some("1")));
    assert_eq!(slow.await.unwrap(), 200);
    assert_eq!(
        post(&router, Some("sk-one"), &chat("m", 1)).await.0,
        200,
        "the slot came back"
    );

    // 30 tokens a minute: a 40-token answer spends them; the next request waits.
    assert_eq!(
        post(&router, Some("sk-tokens"), &chat("m", 40)).await.0,
        200
    );
    let (status, retry_after, body) = post(&router, Some("sk-tokens"), &chat("m", 1)).await;
    assert_eq!(status, 429, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("tokens per minute"));
    let wait: u64 = retry_after.unwrap().parse().unwrap();
    assert!((50..=60).contains(&wait), "{wait}");

    let metrics = router.metrics().await;
    for (client, reason) in [
        ("rate", "rate_limit"),
        ("one", "concurrency"),
        ("tokens", "token_budget"),
    ] {
        assert_eq!(
            series(
                &metrics,
                "mvllm_client_refused_total",
                &[("client", client), ("reason", reason)]
            ),
            1.0,
            "{client}"
        );
    }
}

#[tokio::test]
async fn the_admin_key_guards_the_operator_endpoints() {
    let sim = Sim::start(&["--itl-ms", "1"]).await;
    let admin_port = common::free_port();
    let text = format!(
        r#"[servers]
servers = [{{ url = "{}" }}]
[config]
admin_address = "127.0.0.1:{admin_port}"
[auth]
admin_key = "sk-admin"
"#,
        sim.url
    );
    let router = RouterProcess::launch_toml(&text).await;
    let admin = format!("http://127.0.0.1:{admin_port}");
    poll_until("the admin address never answered".into(), || async {
        client()
            .get(format!("{admin}/health"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
    })
    .await;
    for path in ["/metrics", "/load-stats"] {
        let url = format!("{admin}{path}");
        let response = client().get(&url).send().await.unwrap();
        assert_eq!(response.status(), 401, "{path}");
        let body: Value = response.json().await.unwrap();
        assert_error(&body, 401, "AuthenticationError");
        let wrong = client()
            .get(&url)
            .bearer_auth("sk-nope")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401);
        let right = client()
            .get(&url)
            .bearer_auth("sk-admin")
            .send()
            .await
            .unwrap();
        assert_eq!(right.status(), 200, "{path}");
    }
    // Without client keys, inference stays open (the Python mvllm's default); the operator's
    // endpoints are not on the public port at all.
    router.wait_healthy(1).await;
    assert_eq!(
        post(&router, None, &chat("mvllm/sim-model", 1)).await.0,
        200
    );
    assert_eq!(get(&router, "/metrics", Some("sk-admin")).await.0, 404);
}

/// A server that looks like vLLM to the router and remembers the `Authorization` each
/// inference request brought (`None`: none).
async fn capturing_server() -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<Option<String>>>>,
) {
    use axum::routing::{get, post};
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = std::sync::Arc::clone(&seen);
    let app = axum::Router::new()
        .route("/metrics", get(|| async { "vllm:num_requests_running{model_name=\"m\"} 0\nvllm:num_requests_waiting{model_name=\"m\"} 0\n" }))
        .route("/v1/models", get(|| async { axum::Json(json!({"object": "list", "data": [{"id": "m", "object": "model"}]})) }))
        .route(
            "/v1/chat/completions",
            post(move |headers: axum::http::HeaderMap| {
                let kept = std::sync::Arc::clone(&kept);
                async move {
                    let auth = headers.get("authorization").map(|v| v.to_str().unwrap().to_string());
                    kept.lock().unwrap().push(auth);
                    axum::Json(json!({"id": "x", "object": "chat.completion", "choices": []}))
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

#[tokio::test]
async fn the_clients_authorization_goes_to_the_server_only_when_asked() {
    let (url, seen) = capturing_server().await;
    let config = |forward: bool, server_key: &str| {
        format!(
            r#"[servers]
servers = [{{ url = "{url}"{server_key} }}]
[auth]
forward_client_authorization = {forward}
keys = [{{ name = "c", key = "sk-client" }}]
"#
        )
    };
    let last = || {
        seen.lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a request reached the server")
    };

    // Checked here: the client's key is for the router, never sent on.
    let checked = RouterProcess::launch_toml(&config(false, "")).await;
    checked.wait_healthy(1).await;
    assert_eq!(
        post(&checked, Some("sk-client"), &chat("m", 1)).await.0,
        200
    );
    assert_eq!(last(), None);
    drop(checked);
    // ... and the server's own api_key goes instead, when it has one.
    let keyed = RouterProcess::launch_toml(&config(false, ", api_key = \"sk-server\"")).await;
    keyed.wait_healthy(1).await;
    assert_eq!(post(&keyed, Some("sk-client"), &chat("m", 1)).await.0, 200);
    assert_eq!(last().as_deref(), Some("Bearer sk-server"));
    drop(keyed);

    // Pass-through: the router checks nothing, and the server sees the client's own header
    // (its api_key is only for the router's reads of /metrics and /v1/models).
    let passed = RouterProcess::launch_toml(&config(true, ", api_key = \"sk-server\"")).await;
    passed.wait_healthy(1).await;
    assert_eq!(
        post(&passed, Some("sk-vllm-user"), &chat("m", 1)).await.0,
        200
    );
    assert_eq!(last().as_deref(), Some("Bearer sk-vllm-user"));
    assert_eq!(post(&passed, None, &chat("m", 1)).await.0, 200);
    assert_eq!(last(), None);
}
