//! `mvllm sim` over HTTP: every endpoint, every error, and SSE framing byte for byte.

mod common;

use common::{client, sse_payloads, Sim};
use serde_json::{json, Value};

const MODEL: &str = "org/sim-7b";

async fn sim() -> Sim {
    Sim::start(&[
        "--model",
        MODEL,
        "--served-model-name",
        MODEL,
        "alias",
        "--lora-modules",
        "sql-lora=/adapters/sql",
        "--itl-ms",
        "1",
        "--max-model-len",
        "256",
        "--num-gpu-blocks",
        "512",
    ])
    .await
}

async fn post(sim: &Sim, path: &str, body: Value) -> (u16, Value) {
    let r = client()
        .post(sim.at(path))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

fn assert_openai_error(body: &Value, code: u16, param: Option<&str>) {
    let e = &body["error"];
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(e["type"].is_string(), "{body}");
    assert_eq!(e["code"], code, "{body}");
    assert_eq!(e["param"], param.map_or(Value::Null, Value::from), "{body}");
}

#[tokio::test]
async fn health_version_and_model_cards() {
    let sim = sim().await;
    let c = client();
    let health = c.get(sim.at("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), "");

    let version: Value = sim.get_json("/version").await;
    assert!(version["version"].is_string());

    let models: Value = sim.get_json("/v1/models").await;
    assert_eq!(models["object"], "list");
    let cards = models["data"].as_array().unwrap();
    let ids: Vec<&str> = cards.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [MODEL, "alias", "sql-lora"]);
    for card in &cards[..2] {
        assert_eq!(card["object"], "model");
        assert_eq!(card["owned_by"], "vllm");
        assert_eq!(card["root"], MODEL);
        assert_eq!(card["parent"], Value::Null);
        assert_eq!(card["max_model_len"], 256);
        assert!(card["created"].is_u64());
        assert_eq!(card["permission"][0]["object"], "model_permission");
    }
    assert_eq!(cards[2]["root"], "/adapters/sql");
    assert_eq!(cards[2]["parent"], MODEL);
    assert_eq!(cards[2]["max_model_len"], Value::Null);
}

#[tokio::test]
async fn chat_completion_with_limit_alias_request_id_and_n() {
    let sim = sim().await;
    let r = client()
        .post(sim.at("/v1/chat/completions"))
        .header("X-Request-Id", "trace-42")
        .json(
            &json!({"model": "alias", "messages": [{"role": "user", "content": "Hello"}],
                      "max_tokens": 7, "n": 2}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "trace-42");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["id"], "chatcmpl-trace-42");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "alias");
    let choices = body["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2);
    for (i, choice) in choices.iter().enumerate() {
        assert_eq!(choice["index"], i);
        assert_eq!(choice["message"]["role"], "assistant");
        assert!(!choice["message"]["content"].as_str().unwrap().is_empty());
        assert_eq!(choice["finish_reason"], "length");
    }
    let usage = &body["usage"];
    assert_eq!(usage["completion_tokens"], 14);
    let prompt = usage["prompt_tokens"].as_u64().unwrap();
    assert!(prompt > 0);
    assert_eq!(usage["total_tokens"], prompt + 14);
}

#[tokio::test]
async fn default_length_finishes_with_stop_and_content_parts_count() {
    let sim = Sim::start(&["--itl-ms", "0", "--default-max-tokens", "5"]).await;
    let (status, body) = post(
        &sim,
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "Describe"}]}]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["model"], "mvllm/sim-model",
        "no model means the served one"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["completion_tokens"], 5);
}

#[tokio::test]
async fn chat_stream_is_framed_like_vllm() {
    let sim = sim().await;
    let r = client()
        .post(sim.at("/v1/chat/completions"))
        .header("X-Request-Id", "s1")
        .json(
            &json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}],
                      "max_tokens": 4, "stream": true, "stream_options": {"include_usage": true}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "text/event-stream; charset=utf-8"
    );
    let body = r.text().await.unwrap();
    let payloads = sse_payloads(&body);
    assert_eq!(payloads.last().unwrap(), "[DONE]");
    assert_eq!(
        payloads.len(),
        1 + 4 + 1 + 1,
        "role, 4 tokens, usage, [DONE]: {body}"
    );

    let chunks: Vec<Value> = payloads[..payloads.len() - 1]
        .iter()
        .map(|p| serde_json::from_str(p).unwrap())
        .collect();
    let created = chunks[0]["created"].clone();
    for chunk in &chunks {
        assert_eq!(chunk["id"], "chatcmpl-s1");
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["model"], MODEL);
        assert_eq!(chunk["created"], created);
    }
    // The first chunk carries the role and empty content, exactly as vLLM writes it.
    let prefix = format!(
        "{{\"id\":\"chatcmpl-s1\",\"object\":\"chat.completion.chunk\",\"created\":{created},\"model\":\"{MODEL}\","
    );
    assert_eq!(
        payloads[0],
        format!("{prefix}\"choices\":[{{\"index\":0,\"delta\":{{\"role\":\"assistant\",\"content\":\"\"}},\"logprobs\":null,\"finish_reason\":null}}]}}")
    );
    for chunk in &chunks[1..4] {
        assert_eq!(chunk["choices"][0]["finish_reason"], Value::Null);
        assert!(chunk["choices"][0]["delta"].get("role").is_none());
        assert!(
            chunk.get("usage").is_none(),
            "no per-chunk usage unless asked"
        );
    }
    let last = &chunks[4]["choices"][0];
    assert_eq!(last["finish_reason"], "length");
    assert_eq!(last["stop_reason"], Value::Null);
    assert!(last.as_object().unwrap().contains_key("stop_reason"));
    let usage_chunk = &chunks[5];
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"]["completion_tokens"], 4);

    // The streamed text equals what the same request returns without streaming.
    let streamed: String = chunks[1..5]
        .iter()
        .map(|c| c["choices"][0]["delta"]["content"].as_str().unwrap())
        .collect();
    let (_, whole) = post(
        &sim,
        "/v1/chat/completions",
        json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}),
    )
    .await;
    assert_eq!(whole["choices"][0]["message"]["content"], streamed);
}

#[tokio::test]
async fn stream_without_usage_and_with_continuous_usage() {
    let sim = sim().await;
    let body = client()
        .post(sim.at("/v1/chat/completions"))
        .json(&json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 2, "stream": true}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let payloads = sse_payloads(&body);
    assert_eq!(payloads.len(), 4, "role, 2 tokens, [DONE]: {body}");
    assert!(!body.contains("usage"));

    let body = client()
        .post(sim.at("/v1/chat/completions"))
        .json(
            &json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 2, "stream": true,
                      "stream_options": {"include_usage": true, "continuous_usage_stats": true}}),
        )
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let payloads = sse_payloads(&body);
    let second: Value = serde_json::from_str(&payloads[2]).unwrap();
    assert_eq!(second["usage"]["completion_tokens"], 2);
}

#[tokio::test]
async fn completions_text_batch_and_token_prompts() {
    let sim = sim().await;
    let (status, body) = post(
        &sim,
        "/v1/completions",
        json!({"model": "sql-lora", "prompt": "SELECT", "max_tokens": 3}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "text_completion");
    assert!(body["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(body["model"], "sql-lora");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["usage"]["completion_tokens"], 3);

    let (_, body) = post(
        &sim,
        "/v1/completions",
        json!({"prompt": ["a", "b", "c"], "max_tokens": 1}),
    )
    .await;
    assert_eq!(body["choices"].as_array().unwrap().len(), 3);

    let (_, body) = post(
        &sim,
        "/v1/completions",
        json!({"prompt": [1, 2, 3, 4, 5], "max_tokens": 1}),
    )
    .await;
    assert_eq!(
        body["usage"]["prompt_tokens"], 5,
        "token ids are used as given"
    );

    let r = client()
        .post(sim.at("/v1/completions"))
        .json(&json!({"prompt": "go", "max_tokens": 3, "stream": true}))
        .send()
        .await
        .unwrap();
    let body = r.text().await.unwrap();
    let payloads = sse_payloads(&body);
    assert_eq!(payloads.len(), 4, "3 tokens and [DONE]: {body}");
    let first: Value = serde_json::from_str(&payloads[0]).unwrap();
    assert_eq!(first["object"], "text_completion");
    assert!(first["choices"][0]["text"].is_string());
}

#[tokio::test]
async fn embeddings_as_floats_and_base64() {
    let sim = Sim::start(&["--embedding-dim", "8", "--itl-ms", "0"]).await;
    let (status, body) = post(&sim, "/v1/embeddings", json!({"input": ["one", "two"]})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "list");
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(data[1]["index"], 1);
    assert_eq!(data[0]["object"], "embedding");
    let floats = data[0]["embedding"].as_array().unwrap();
    assert_eq!(floats.len(), 8);
    assert_eq!(body["usage"]["completion_tokens"], 0);

    let (_, body) = post(
        &sim,
        "/v1/embeddings",
        json!({"input": "one", "encoding_format": "base64"}),
    )
    .await;
    let encoded = body["data"][0]["embedding"].as_str().unwrap();
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap();
    assert_eq!(bytes.len(), 8 * 4, "eight little-endian f32");
    let first = f32::from_le_bytes(bytes[..4].try_into().unwrap());
    assert!((first as f64 - floats[0].as_f64().unwrap()).abs() < 1e-6);
}

#[tokio::test]
async fn bad_requests_get_openai_errors() {
    let sim = sim().await;
    let c = client();
    let r = c
        .post(sim.at("/v1/chat/completions"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_openai_error(&r.json().await.unwrap(), 400, None);

    let cases = [
        (
            "/v1/chat/completions",
            json!({"model": MODEL}),
            400,
            Some("messages"),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": []}),
            400,
            Some("messages"),
        ),
        ("/v1/chat/completions", json!({"messages": "hi"}), 400, None),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}),
            400,
            Some("max_tokens"),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "x"}], "n": 0}),
            400,
            Some("n"),
        ),
        (
            "/v1/chat/completions",
            json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]}),
            404,
            Some("model"),
        ),
        (
            "/v1/completions",
            json!({"model": MODEL}),
            400,
            Some("prompt"),
        ),
        (
            "/v1/completions",
            json!({"prompt": []}),
            400,
            Some("prompt"),
        ),
        (
            "/v1/completions",
            json!({"prompt": "x", "model": "nope"}),
            404,
            Some("model"),
        ),
        ("/v1/embeddings", json!({}), 400, Some("input")),
        (
            "/v1/embeddings",
            json!({"input": "x", "encoding_format": "int8"}),
            400,
            Some("encoding_format"),
        ),
    ];
    for (path, body, status, param) in cases {
        let (got, answer) = post(&sim, path, body.clone()).await;
        assert_eq!(got, status, "{path} {body} -> {answer}");
        assert_openai_error(&answer, status, param);
    }

    // Prompt + max_tokens over --max-model-len (256): vLLM's message.
    let long = "word ".repeat(200); // 250 tokens
    let (status, body) = post(
        &sim,
        "/v1/completions",
        json!({"prompt": long, "max_tokens": 10}),
    )
    .await;
    assert_eq!(status, 400);
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.starts_with("This model's maximum context length is 256 tokens. However, you requested 260 tokens (250 in the messages, 10 in the completion)."), "{message}");

    let unknown = c.get(sim.at("/v2/whatever")).send().await.unwrap();
    assert_eq!(unknown.status(), 404);
    assert_openai_error(&unknown.json().await.unwrap(), 404, None);
    let wrong_method = c.get(sim.at("/v1/chat/completions")).send().await.unwrap();
    assert_eq!(wrong_method.status(), 405);
    assert_openai_error(&wrong_method.json().await.unwrap(), 405, None);
}

#[tokio::test]
async fn oversized_body_is_413_and_large_bodies_are_read_whole() {
    let sim = Sim::start(&[
        "--itl-ms",
        "0",
        "--prefill-us-per-token",
        "0",
        "--max-model-len",
        "2000000",
        "--num-gpu-blocks",
        "200000",
    ])
    .await;
    // 4 MiB of prompt is accepted and counted.
    let prompt = "abcd".repeat(1 << 20);
    let (status, body) = post(
        &sim,
        "/v1/completions",
        json!({"prompt": prompt, "max_tokens": 1}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["usage"]["prompt_tokens"], 1 << 20);

    let huge = vec![b' '; 65 * 1024 * 1024];
    let r = client()
        .post(sim.at("/v1/completions"))
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_openai_error(&r.json().await.unwrap(), 413, None);
}

#[tokio::test]
async fn api_key_guards_v1_only() {
    let sim = Sim::start(&["--api-key", "sekret", "--itl-ms", "0"]).await;
    let c = client();
    for auth in [None, Some("Bearer wrong"), Some("sekret")] {
        let mut request = c.get(sim.at("/v1/models"));
        if let Some(auth) = auth {
            request = request.header("Authorization", auth);
        }
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), 401, "{auth:?}");
        assert_eq!(r.text().await.unwrap(), r#"{"error":"Unauthorized"}"#);
    }
    let r = c
        .post(sim.at("/v1/chat/completions"))
        .bearer_auth("sekret")
        .json(&json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(sim.get_status("/metrics").await, 200);
    assert_eq!(sim.get_status("/health").await, 200);
}
