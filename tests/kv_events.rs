//! Precise prefix routing from KV cache events: the router subscribes to each sim's events
//! (vLLM's wire format, over ZeroMQ) and routes a prompt to the server whose cache holds its
//! prefix, even when the cache was filled by another client, follows evictions, fills gaps
//! from the replay socket, forgets a restarted server's cache, and picks the data-parallel
//! engine that holds the prefix.

mod common;

use common::{client, free_port, poll_until, RouterProcess, Sim};
use serde_json::{json, Value};

/// A sim publishing KV cache events on two free ports: live, replay (engine N on each + N).
async fn kv_sim(extra: &[&str]) -> (Sim, u16, u16) {
    let (live, replay) = if extra.contains(&"--data-parallel-size") {
        (consecutive_free_ports(), consecutive_free_ports())
    } else {
        (free_port(), free_port())
    };
    let config = json!({
        "enable_kv_cache_events": true,
        "publisher": "zmq",
        "endpoint": format!("tcp://127.0.0.1:{live}"),
        "replay_endpoint": format!("tcp://127.0.0.1:{replay}"),
    })
    .to_string();
    let sim = Sim::start(&kv_sim_args(&config, extra)).await;
    (sim, live, replay)
}

fn kv_sim_args<'a>(config: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--itl-ms",
        "1",
        "--default-max-tokens",
        "2",
        "--block-size",
        "16",
        "--num-gpu-blocks",
        "200",
        "--max-model-len",
        "2048",
        "--kv-events-config",
        config,
    ];
    args.extend_from_slice(extra);
    args
}

/// Two free loopback ports in a row (a data-parallel sim's two engines).
fn consecutive_free_ports() -> u16 {
    for _ in 0..100 {
        let port = free_port();
        if port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no two free ports in a row");
}

fn entry(sim: &Sim, live: u16, replay: u16) -> String {
    format!(
        "  {{ url = \"{}\", max_concurrent_requests = 8, kv_events = \"tcp://127.0.0.1:{live}\", kv_events_replay = \"tcp://127.0.0.1:{replay}\" }},\n",
        sim.url
    )
}

async fn router(entries: &[String]) -> RouterProcess {
    let toml = format!(
        "[servers]\nservers = [\n{}]\n[config]\nmetrics_interval = 0.2\nexpose_routing_headers = true\n[routing]\npolicy = \"cache-aware\"\n",
        entries.concat()
    );
    let router = RouterProcess::launch_toml(&toml).await;
    router.wait_healthy(entries.len()).await;
    router
}

/// A chat whose system prompt is `prefix` (about 400 tokens) and whose question is `question`.
fn chat(prefix: &str, question: &str) -> Value {
    json!({
        "model": "mvllm/sim-model",
        "max_tokens": 2,
        "messages": [
            {"role": "system", "content": prefix.repeat(1600 / prefix.len())},
            {"role": "user", "content": question},
        ],
    })
}

/// Sends a chat straight to a sim (another client: the router does not see it).
async fn direct(sim: &Sim, body: &Value, rank: Option<u32>) {
    let mut request = client().post(sim.at("/v1/chat/completions")).json(body);
    if let Some(rank) = rank {
        request = request.header("x-data-parallel-rank", rank);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
}

/// Sends a chat through the router; returns the server that answered.
async fn routed(router: &RouterProcess, body: &Value) -> String {
    let response = client()
        .post(router.at("/v1/chat/completions"))
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    response.headers()["x-mvllm-upstream"]
        .to_str()
        .unwrap()
        .to_string()
}

async fn load_stats(router: &RouterProcess) -> Value {
    common::get_json(router.at("/load-stats")).await
}

/// The router's KV event report of the server at `url`.
async fn kv_of(router: &RouterProcess, url: &str) -> Value {
    let stats = load_stats(router).await;
    stats["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["url"] == url)
        .unwrap_or_else(|| panic!("{url} not in {stats}"))["kv_events"]
        .clone()
}

/// The events `router` has received from `url`'s engine 0.
async fn events_seen(router: &RouterProcess, url: &str) -> u64 {
    kv_of(router, url).await["engines"][0]["events_received"]
        .as_u64()
        .unwrap_or(0)
}

/// Waits until `check` holds for the KV event report of `url`'s engine `rank`.
async fn wait_engine(
    router: &RouterProcess,
    url: &str,
    rank: usize,
    what: &str,
    check: impl Fn(&Value) -> bool,
) {
    poll_until(format!("{url} engine {rank}: {what}"), || async {
        let kv = kv_of(router, url).await;
        kv["engines"].get(rank).is_some_and(&check)
    })
    .await;
}

/// Warms `sim` with `prefix` directly and waits until the router has seen the blocks.
async fn warm(router: &RouterProcess, sim: &Sim, prefix: &str, rank: Option<u32>) {
    let index = rank.unwrap_or(0) as usize;
    let before = kv_of(router, &sim.url).await["engines"][index]["events_received"]
        .as_u64()
        .unwrap_or(0);
    let _ = events_seen;
    direct(sim, &chat(prefix, "warm-up"), rank).await;
    wait_engine(router, &sim.url, index, "the warm-up's events", |e| {
        e["events_received"].as_u64().unwrap_or(0) > before
    })
    .await;
}

#[tokio::test]
async fn routes_to_the_cache_that_holds_the_prefix_through_evictions_gaps_and_restarts() {
    let (a, a_live, a_replay) = kv_sim(&[]).await;
    let (b, b_live, b_replay) = kv_sim(&[]).await;
    let router = router(&[entry(&a, a_live, a_replay), entry(&b, b_live, b_replay)]).await;
    for sim in [&a, &b] {
        wait_engine(&router, &sim.url, 0, "trusted", |e| e["trusted"] == true).await;
    }

    // Caches filled by another client, alternately: the router never saw these prompts.
    let prefixes = [
        "Alpha context. ",
        "Bravo context. ",
        "Charlie context. ",
        "Delta context. ",
    ];
    for (i, prefix) in prefixes.iter().enumerate() {
        let home = if i % 2 == 0 { &a } else { &b };
        warm(&router, home, prefix, None).await;
        for q in 0..3 {
            let went = routed(&router, &chat(prefix, &format!("question {q}"))).await;
            assert_eq!(went, home.url, "{prefix:?} question {q} went elsewhere");
        }
    }
    let kv = kv_of(&router, &a.url).await;
    assert!(kv["engines"][0]["blocks"].as_u64().unwrap() >= 25, "{kv}");
    // The prompts were tokenized by the servers' /tokenize, each once: a prompt's first
    // question waited for it, the next two were routed on the system prompt's tokens at once
    // (tokenized whole in the background).
    let tokenization = load_stats(&router).await["tokenization"].clone();
    assert_eq!(tokenization["cached_prefix"], 8, "{tokenization}");
    poll_until(
        format!("every prompt tokenized: {tokenization}"),
        || async { load_stats(&router).await["tokenization"]["fetched"] == 12 },
    )
    .await;
    assert_eq!(load_stats(&router).await["tokenization"]["failed"], 0);
    assert_eq!(kv["engines"][0]["complete_history"], true, "{kv}");

    // A evicts everything it had (other prompts fill its 200 blocks); B then gets Alpha and
    // Charlie too. If the router missed A's removals, A would still look as good as B.
    for i in 0..10 {
        direct(
            &a,
            &chat(&format!("Filler {i} with other words. "), "fill"),
            None,
        )
        .await;
    }
    for prefix in [prefixes[0], prefixes[2]] {
        warm(&router, &b, prefix, None).await;
    }
    wait_engine(&router, &a.url, 0, "evictions seen", |e| {
        e["blocks"].as_u64().is_some_and(|b| b <= 200)
    })
    .await;
    for prefix in [prefixes[0], prefixes[2]] {
        for q in 0..2 {
            let went = routed(&router, &chat(prefix, &format!("after eviction {q}"))).await;
            assert_eq!(went, b.url, "{prefix:?}: A evicted it, B has it");
        }
    }

    // B loses half its event messages: the gaps are filled from the replay socket.
    let set_drop_rate = |rate: f64| {
        let url = b.at("/sim/faults");
        async move {
            let response = client()
                .post(url)
                .json(&json!({ "kv_events_drop_rate": rate }))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
        }
    };
    set_drop_rate(0.5).await;
    for i in 0..6 {
        direct(&b, &chat(&format!("Echo {i} context. "), "warm-up"), None).await;
    }
    set_drop_rate(0.0).await;
    // The next message shows the gap (if the last ones were dropped too).
    warm(&router, &b, "Foxtrot context. ", None).await;
    let kv = kv_of(&router, &b.url).await;
    let engine = &kv["engines"][0];
    assert!(engine["gaps"].as_u64().unwrap() >= 1, "{kv}");
    assert_eq!(
        engine["gaps"], engine["replays"],
        "every gap replayed: {kv}"
    );
    assert_eq!(engine["lost"], 0, "{kv}");
    assert_eq!(engine["trusted"], true, "{kv}");
    for i in 0..6 {
        let went = routed(&router, &chat(&format!("Echo {i} context. "), "q")).await;
        assert_eq!(went, b.url, "Echo {i}: its events came by replay");
    }

    // A dies and comes back on the same ports with an empty cache: its index is cleared.
    let a_port: u16 = a.url.rsplit(':').next().unwrap().parse().unwrap();
    let mut a = a;
    // Foxtrot on A too: if A's index outlived the restart, A would look as good as B.
    warm(&router, &a, "Foxtrot context. ", None).await;
    a.kill();
    let config = json!({
        "enable_kv_cache_events": true,
        "endpoint": format!("tcp://127.0.0.1:{a_live}"),
        "replay_endpoint": format!("tcp://127.0.0.1:{a_replay}"),
    })
    .to_string();
    let a = Sim::start_on(a_port, &kv_sim_args(&config, &[])).await;
    wait_engine(
        &router,
        &a.url,
        0,
        "the restarted server's index empty and trusted",
        |e| e["blocks"] == 0 && e["trusted"] == true,
    )
    .await;
    for q in 0..3 {
        let went = routed(
            &router,
            &chat("Foxtrot context. ", &format!("after the restart {q}")),
        )
        .await;
        assert_eq!(went, b.url, "Foxtrot is on B only now");
    }
}

#[tokio::test]
async fn a_data_parallel_server_gets_the_request_on_the_engine_holding_the_prefix() {
    let (sim, live, replay) = kv_sim(&["--data-parallel-size", "2"]).await;
    let router = router(&[entry(&sim, live, replay)]).await;
    for rank in 0..2 {
        wait_engine(&router, &sim.url, rank, "trusted", |e| e["trusted"] == true).await;
    }
    for (rank, prefix) in [(1, "Engine one context. "), (0, "Engine zero context. ")] {
        warm(&router, &sim, prefix, Some(rank)).await;
        let hits = |text: &str, engine: u32| -> f64 {
            text.lines()
                .find(|l| {
                    l.starts_with("vllm:prefix_cache_hits_total{")
                        && l.contains(&format!("engine=\"{engine}\""))
                })
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0)
        };
        let before = sim.get_text("/metrics").await;
        for q in 0..3 {
            routed(&router, &chat(prefix, &format!("question {q}"))).await;
        }
        let after = sim.get_text("/metrics").await;
        let gained = |engine| hits(&after, engine) - hits(&before, engine);
        assert!(
            gained(rank) >= 3.0 * 350.0,
            "engine {rank} served the prefix from its cache: {}",
            gained(rank)
        );
        assert_eq!(gained(1 - rank), 0.0, "the other engine got none of them");
    }
}

#[tokio::test]
async fn two_router_replicas_agree_without_talking_to_each_other() {
    let mut sims = Vec::new();
    let mut entries = Vec::new();
    for _ in 0..3 {
        let (sim, live, replay) = kv_sim(&[]).await;
        entries.push(entry(&sim, live, replay));
        sims.push(sim);
    }
    let first = router(&entries).await;
    let second = router(&entries).await;
    for router in [&first, &second] {
        for sim in &sims {
            wait_engine(router, &sim.url, 0, "trusted", |e| e["trusted"] == true).await;
        }
    }
    // Eight conversations' system prompts, each asked about ten times, through either router
    // in turn. After a prompt's first request, both must send it where it is cached.
    let mut home: std::collections::HashMap<usize, String> = Default::default();
    let (mut agreed, mut compared) = (0, 0);
    for i in 0..80 {
        let prompt = i % 8;
        let replica = if (i / 8) % 2 == 0 { &first } else { &second };
        let body = chat(
            &format!("Conversation {prompt} system prompt. "),
            &format!("turn {i}"),
        );
        let other = if std::ptr::eq(replica, &first) {
            &second
        } else {
            &first
        };
        let mut seen_before = Vec::new();
        for sim in &sims {
            seen_before.push(events_seen(other, &sim.url).await);
        }
        let went = routed(replica, &body).await;
        match home.get(&prompt) {
            Some(expected) => {
                compared += 1;
                agreed += usize::from(*expected == went);
            }
            None => {
                home.insert(prompt, went.clone());
                // The other replica learns of it from the server's events, not from us.
                let at = sims.iter().position(|s| s.url == went).unwrap();
                let before = seen_before[at];
                wait_engine(other, &went, 0, "the first request's events", |e| {
                    e["events_received"].as_u64().unwrap_or(0) > before
                })
                .await;
            }
        }
    }
    assert!(
        agreed * 100 >= compared * 95,
        "the replicas agreed on {agreed} of {compared} requests"
    );
}

#[tokio::test]
async fn a_local_tokenizer_gives_the_servers_own_token_ids() {
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tokenizer");
    let (a, a_live, a_replay) = kv_sim(&["--tokenizer", fixture]).await;
    let (b, b_live, b_replay) = kv_sim(&["--tokenizer", fixture]).await;
    let toml = format!(
        "[servers]\nservers = [\n{}{}]\n[config]\nmetrics_interval = 0.2\nexpose_routing_headers = true\n[routing]\npolicy = \"cache-aware\"\ntokenizers = {{ \"mvllm/sim-model\" = \"{fixture}\" }}\n",
        entry(&a, a_live, a_replay),
        entry(&b, b_live, b_replay)
    );
    let router = RouterProcess::launch_toml(&toml).await;
    router.wait_healthy(2).await;
    for sim in [&a, &b] {
        wait_engine(&router, &sim.url, 0, "trusted", |e| e["trusted"] == true).await;
    }
    for (i, prefix) in ["A router sends each request. ", "The KV cache holds keys. "]
        .iter()
        .enumerate()
    {
        let home = if i == 0 { &b } else { &a };
        warm(&router, home, prefix, None).await;
        for q in 0..3 {
            let went = routed(&router, &chat(prefix, &format!("question {q}"))).await;
            assert_eq!(went, home.url, "{prefix:?} question {q}");
        }
    }
    let tokenization = &load_stats(&router).await["tokenization"];
    assert_eq!(tokenization["local"], 6, "{tokenization}");
    assert_eq!(tokenization["fetched"], 0, "no /tokenize: {tokenization}");
}

#[tokio::test]
async fn each_turn_of_a_conversation_routes_on_the_tokens_of_the_turn_before() {
    let (sim, live, replay) = kv_sim(&[]).await;
    let router = router(&[entry(&sim, live, replay)]).await;
    wait_engine(&router, &sim.url, 0, "trusted", |e| e["trusted"] == true).await;
    let mut messages = vec![json!({"role": "system", "content": "Be brief. ".repeat(100)})];
    let tokenization = || async { load_stats(&router).await["tokenization"].clone() };
    for turn in 0..4u64 {
        messages.push(json!({"role": "user", "content": format!("Question {turn}?")}));
        let body = json!({"model": "mvllm/sim-model", "max_tokens": 2, "messages": messages});
        routed(&router, &body).await;
        let counts = tokenization().await;
        assert_eq!(counts["cached_prefix"], turn, "turn {turn}: {counts}");
        // The whole conversation so far is tokenized (at once on the first turn, in the
        // background after): the next turn finds it.
        poll_until(format!("turn {turn} tokenized"), || async {
            tokenization().await["fetched"] == turn + 1
        })
        .await;
        messages.push(json!({"role": "assistant", "content": format!("Answer {turn}.")}));
    }
    assert_eq!(tokenization().await["failed"], 0);
}
