//! SGLang servers behind the router, end to end against `mvllm sim --engine sglang`: one
//! with `--enable-metrics` (told apart by its `sglang:` metrics, routed by the load they
//! report), one without metrics (declared `engine = "sglang"`, checked on its `/health`).

mod common;

use common::{client, get_json, poll_until, RouterProcess, Sim};
use serde_json::{json, Value};

async fn load_stats(router: &RouterProcess) -> Vec<Value> {
    let stats: Value = get_json(router.at("/load-stats")).await;
    stats["servers"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn sglang_servers_with_and_without_metrics_are_routed() {
    let metered = Sim::start(&[
        "--engine",
        "sglang",
        "--enable-metrics",
        "--model",
        "qwen/qwen2.5-7b",
        "--itl-ms",
        "20",
    ])
    .await;
    let bare = Sim::start(&[
        "--engine",
        "sglang",
        "--model",
        "qwen/qwen2.5-7b",
        "--itl-ms",
        "1",
    ])
    .await;

    // What the sim serves is SGLang's: its metric names, no /metrics without the flag, its
    // model info.
    let text = metered.get_text("/metrics").await;
    assert!(text.contains("\nsglang:num_running_reqs{engine_type=\"unified\",model_name=\"qwen/qwen2.5-7b\",pp_rank=\"0\",tp_rank=\"0\"} 0.0\n"), "{text}");
    assert!(!text.contains("vllm:"));
    assert_eq!(bare.get_status("/metrics").await, 404);
    assert_eq!(
        bare.get_json("/get_model_info").await["model_path"],
        "qwen/qwen2.5-7b"
    );

    let router = RouterProcess::launch_toml(&format!(
        "[servers]\nservers = [\n  {{ url = \"{}\", max_concurrent_requests = 4 }},\n  \
         {{ url = \"{}\", max_concurrent_requests = 4, engine = \"sglang\" }},\n]\n\
         [config]\nmetrics_interval = 0.1\nexpose_routing_headers = true\n",
        metered.url, bare.url
    ))
    .await;
    router.wait_healthy(2).await;
    let servers = load_stats(&router).await;
    assert_eq!(servers[0]["engine"], "sglang", "told by its metrics");
    assert_eq!(servers[1]["engine"], "sglang", "declared");

    // A long stream on the metered server shows in the load it reports, and the next
    // requests go to the other server. (Long enough to last on either server: 300 tokens at
    // the bare one's 1 ms a token ended before the requests that must avoid it were sent,
    // and it failed so once in CI.)
    let long = client()
        .post(router.at("/v1/completions"))
        .json(
            &json!({"model": "qwen/qwen2.5-7b", "prompt": "x", "max_tokens": 3000, "stream": true}),
        )
        .send()
        .await
        .unwrap();
    let first = long.headers()["x-mvllm-upstream"]
        .to_str()
        .unwrap()
        .to_string();
    let (busy, idle) = if first == metered.url {
        (0, &bare.url)
    } else {
        (1, &metered.url)
    };
    poll_until("the busy server's load never showed".into(), || async {
        load_stats(&router).await[busy]["running"] == 1.0
    })
    .await;
    for _ in 0..4 {
        let r = client()
            .post(router.at("/v1/chat/completions"))
            .json(&json!({"model": "qwen/qwen2.5-7b", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-mvllm-upstream"].to_str().unwrap(), idle);
    }
    drop(long);

    // The bare server going down is seen at the next check.
    let mut bare = bare;
    bare.kill();
    poll_until(
        "the router never saw the bare server go down".into(),
        || async { load_stats(&router).await[1]["healthy"] == false },
    )
    .await;
}
