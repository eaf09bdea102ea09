//! Routing policies through the real router: `session` keeps a session on its server and
//! moves it only when that server goes; `cache-aware` keeps a shared prompt prefix where it is
//! cached; learned speed follows a server that slows down; `model_policies` gives a model its
//! own policy; `/load-stats` says which policies are in force.

mod common;

use std::collections::HashMap;

use common::{client, get_json, RouterProcess, Sim};
use serde_json::json;

/// Sends one chat request with `session` as its X-Session-Id; the server that answered.
async fn answered_by(router: &RouterProcess, model: &str, session: Option<&str>) -> String {
    answered_after(router, model, session, 1).await
}

/// The same, for an answer of `tokens` tokens.
async fn answered_after(
    router: &RouterProcess,
    model: &str,
    session: Option<&str>,
    tokens: u32,
) -> String {
    let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": tokens});
    answered(router, &body, session).await
}

/// Sends one chat request `body`, with `session` as its X-Session-Id; the server that answered.
async fn answered(
    router: &RouterProcess,
    body: &serde_json::Value,
    session: Option<&str>,
) -> String {
    let mut request = client().post(router.at("/v1/chat/completions")).json(body);
    if let Some(session) = session {
        request = request.header("x-session-id", session);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    let server = response.headers()["x-mvllm-upstream"]
        .to_str()
        .unwrap()
        .to_string();
    response.bytes().await.unwrap();
    server
}

/// Three sims serving `model` (capacity 8 each) behind a router with `policy`.
async fn three_behind(model: &str, policy: &str) -> (Vec<Sim>, RouterProcess) {
    let mut sims = Vec::new();
    for _ in 0..3 {
        sims.push(Sim::start(&["--model", model, "--itl-ms", "1"]).await);
    }
    let servers: Vec<(&str, u32)> = sims.iter().map(|s| (s.url.as_str(), 8)).collect();
    let router = RouterProcess::start(
        &servers,
        &format!(
            "expose_routing_headers = true\nmetrics_interval = 0.2\n[routing]\npolicy = \"{policy}\"\n"
        ),
    )
    .await;
    (sims, router)
}

#[tokio::test]
async fn a_session_stays_on_its_server_until_that_server_goes() {
    let (mut sims, router) = three_behind("llama", "session").await;

    // 30 sessions, 3 requests each, one at a time: each session's requests on one server,
    // and the sessions over all three.
    let mut home = HashMap::new();
    for round in 0..3 {
        for s in 0..30 {
            let key = format!("conversation-{s}");
            let server = answered_by(&router, "llama", Some(&key)).await;
            let first = home.entry(key.clone()).or_insert(server.clone());
            assert_eq!(*first, server, "{key} moved in round {round}");
        }
    }
    for sim in &sims {
        let n = home.values().filter(|h| **h == sim.url).count();
        assert!(n >= 3, "{n} of 30 sessions on {}", sim.url);
    }

    // Its server killed: its sessions move, the others stay.
    let gone = sims[0].url.clone();
    sims[0].kill();
    router.wait_healthy(2).await;
    for (key, was) in &home {
        let now = answered_by(&router, "llama", Some(key)).await;
        if *was == gone {
            assert_ne!(now, gone);
        } else {
            assert_eq!(now, *was, "{key} moved though its server stayed");
        }
    }

    let stats = get_json(router.at("/load-stats")).await;
    assert_eq!(stats["policy"], "session (load bound 1.25)");
}

#[tokio::test]
async fn a_model_can_have_its_own_policy() {
    let a = Sim::start(&["--served-model-name", "chat", "embed", "--itl-ms", "1"]).await;
    let b = Sim::start(&["--served-model-name", "chat", "embed", "--itl-ms", "1"]).await;
    let router = RouterProcess::start(
        &[(&a.url, 8), (&b.url, 8)],
        "expose_routing_headers = true\nmetrics_interval = 0.2\n[routing]\nmodel_policies = { embed = \"round-robin\" }\n",
    )
    .await;
    // Round-robin alternates (least-load would keep an idle server's tie random).
    let mut turns = Vec::new();
    for _ in 0..6 {
        turns.push(answered_by(&router, "embed", None).await);
    }
    for pair in turns.windows(2) {
        assert_ne!(pair[0], pair[1], "{turns:?}");
    }
    let stats = get_json(router.at("/load-stats")).await;
    assert_eq!(stats["policy"], "least-load");
    assert_eq!(stats["model_policies"], json!({"embed": "round-robin"}));
}

#[tokio::test]
async fn with_equal_queues_the_faster_server_wins() {
    let fast = Sim::start(&["--model", "m", "--itl-ms", "2"]).await;
    let slow = Sim::start(&["--model", "m", "--itl-ms", "20"]).await;
    let router = RouterProcess::start(
        &[(&fast.url, 4), (&slow.url, 4)],
        "expose_routing_headers = true\n",
    )
    .await;
    // One at a time: every request finds both servers idle, so only speed tells them apart.
    let mut to_fast = 0;
    for i in 0..40 {
        let server = answered_after(&router, "m", None, 10).await;
        if i >= 10 && server == fast.url {
            to_fast += 1;
        }
    }
    assert!(
        to_fast >= 28,
        "{to_fast} of the last 30 to the faster server"
    );
    let stats = get_json(router.at("/load-stats")).await;
    let speed = |url: &str| {
        stats["servers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["url"] == url)
            .unwrap()["seconds_per_token"]
            .as_f64()
            .unwrap()
    };
    let (f, s) = (speed(&fast.url), speed(&slow.url));
    assert!(s > 3.0 * f, "learned {f} and {s} seconds per token");
}

/// Sends one chat request whose system prompt is `system` (long) and question `question`;
/// the server that answered.
async fn chat_answered_by(router: &RouterProcess, system: &str, question: &str) -> String {
    let body = json!({"model": "m", "max_tokens": 2, "messages": [
        {"role": "system", "content": system},
        {"role": "user", "content": question}]});
    answered(router, &body, None).await
}

/// The sims' prefix-cache hit rate: hit tokens over looked-up tokens, all sims together.
async fn hit_rate(sims: &[Sim]) -> f64 {
    let (mut hits, mut queries) = (0.0, 0.0);
    for sim in sims {
        hits += sim.metric("vllm:prefix_cache_hits_total").await;
        queries += sim.metric("vllm:prefix_cache_queries_total").await;
    }
    hits / queries
}

#[tokio::test]
async fn cache_aware_sends_a_shared_prefix_where_it_is_cached() {
    let (sims, router) = three_behind("m", "cache-aware").await;

    // Six long system prompts, five questions each, interleaved and one at a time: each
    // prompt's requests stay on one server, and the prompts spread over the servers.
    let systems: Vec<String> = (0..6)
        .map(|p| format!("You are assistant number {p}. ").repeat(150))
        .collect();
    let mut home = HashMap::new();
    for q in 0..5 {
        for (p, system) in systems.iter().enumerate() {
            let server = chat_answered_by(&router, system, &format!("question {q}")).await;
            let first = home.entry(p).or_insert(server.clone());
            assert_eq!(*first, server, "system prompt {p} moved at question {q}");
        }
    }
    let used: std::collections::HashSet<_> = home.values().collect();
    assert!(used.len() >= 2, "six prompts on one server: {home:?}");
    // All but each prompt's first request find its system prompt cached: the ideal is 4 of 5
    // prompts' worth (the questions are a few tokens).
    let rate = hit_rate(&sims).await;
    assert!(rate > 0.7, "prefix-cache hit rate {rate:.2}");

    let stats = get_json(router.at("/load-stats")).await;
    let policy = stats["policy"].as_str().unwrap();
    assert!(policy.starts_with("cache-aware (prefix index"), "{policy}");
}

#[tokio::test]
async fn a_server_that_slows_down_gets_less_traffic() {
    let a = Sim::start(&["--model", "m", "--itl-ms", "2"]).await;
    let b = Sim::start(&["--model", "m", "--itl-ms", "2"]).await;
    let router = RouterProcess::start(
        &[(&a.url, 4), (&b.url, 4)],
        "expose_routing_headers = true\n",
    )
    .await;
    // Both servers' speeds are learned first: batches of 8 at once (twice the capacity of
    // one) spread over both, whatever timing noise says of two equal servers. (One request at
    // a time would all go to whichever measured a little faster, and a slowdown of a server
    // that gets no traffic could not be seen.)
    let mut to_a = 0;
    for _ in 0..3 {
        let batch = (0..8).map(|_| answered_after(&router, "m", None, 10));
        let servers = futures_util::future::join_all(batch).await;
        to_a += servers.iter().filter(|s| **s == a.url).count();
    }
    assert!(
        (6..=18).contains(&to_a),
        "equal servers share: {to_a} of 24 to a"
    );

    // a throttles to a tenth of its speed: within a few of its answers, b takes nearly all.
    let (status, _) = a.post_json("/sim/faults", &json!({"slowdown": 10.0})).await;
    assert_eq!(status, 200);
    let mut late_to_a = 0;
    for i in 0..40 {
        let server = answered_after(&router, "m", None, 10).await;
        if i >= 20 && server == a.url {
            late_to_a += 1;
        }
    }
    assert!(
        late_to_a <= 2,
        "{late_to_a} of the last 20 to the slowed server"
    );
}
