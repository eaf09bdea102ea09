//! The operator's tools: `mvllm probe URL` against real simulated servers, and
//! `mvllm check-config` on real files.

mod common;

use common::{run_mvllm, Sim};

#[tokio::test]
async fn probe_reports_load_models_and_verdict() {
    let sim = Sim::start(&[
        "--served-model-name",
        "llama",
        "--lora-modules",
        "sql=/a/sql",
    ])
    .await;
    let url = sim.url.clone();
    let (code, out, _) = tokio::task::spawn_blocking(move || run_mvllm(&["probe", &url]))
        .await
        .unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("/metrics    ok (vLLM)"), "{out}");
    assert!(out.contains("running 0, waiting 0, KV cache 0.0%"), "{out}");
    assert!(out.contains("llama, sql (adapter of llama)"), "{out}");
    assert!(out.contains("verdict     healthy"), "{out}");
}

#[tokio::test]
async fn probe_says_why_a_server_is_unhealthy() {
    let sim = Sim::start(&["--fault-metrics", "garbage", "--api-key", "k"]).await;
    let url = sim.url.clone();
    let (code, out, _) = tokio::task::spawn_blocking(move || run_mvllm(&["probe", &url]))
        .await
        .unwrap();
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("/metrics    FAILED"), "{out}");
    assert!(
        out.contains("no vLLM, SGLang or llama.cpp load metrics"),
        "{out}"
    );
    assert!(out.contains("HTTP 401: wrong or missing api_key"), "{out}");

    let (code, out, _) = run_mvllm(&["probe", "http://127.0.0.1:1", "--timeout", "2"]);
    assert_eq!(code, 1);
    assert!(out.contains("cannot connect"), "{out}");
}

#[test]
fn check_config_accepts_the_example_and_names_mistakes() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/servers.example.toml");
    let (code, out, err) = run_mvllm(&["check-config", "--config", example]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("valid, 3 servers"), "{out}");
    assert!(out.contains("http://localhost:8801"), "{out}");

    let dir = std::env::temp_dir().join(format!("mvllm-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("servers.toml");
    std::fs::write(
        &bad,
        "[servers]\nservers = [\n  { url = \"http://a:1\", max_concurent_requests = 4 },\n]\n",
    )
    .unwrap();
    let (code, _, err) = run_mvllm(&["check-config", "-c", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("servers.toml: line 3"), "{err}");
    assert!(
        err.contains("unknown field `max_concurent_requests`"),
        "{err}"
    );
    assert!(
        err.contains("max_concurrent_requests"),
        "lists the allowed keys: {err}"
    );

    let (code, _, err) = run_mvllm(&[
        "check-config",
        "-c",
        dir.join("missing.toml").to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("missing.toml: cannot read it"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
