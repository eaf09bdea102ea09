//! The chaos suite: the router and simulated servers on loopback under steady mixed load
//! (streams and not, two models), with a failure injected mid-run, and exact counts of what
//! the clients saw. Each scenario prints a row: sent / ok / failed / streams cut / resumed.
//!
//! "Failed" is what must not happen: a non-200 answer, a connection error, or a stream that
//! ended neither with `[DONE]` nor with the router's error event. "Cut" is a stream that had
//! started on a server that then failed: the client got the error event (see upstream.rs),
//! since nothing can be retried once a client has bytes.

mod common;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{client, signal, RouterProcess, Sim};
use serde_json::json;

#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    cut: AtomicU64,
}

impl Tally {
    /// A row of the table: sent / ok / failed / streams cut / streams resumed.
    fn row(&self, scenario: &str, resumed: f64) -> String {
        format!(
            "| {scenario} | {} | {} | {} | {} | {resumed} |",
            self.sent.load(Relaxed),
            self.ok.load(Relaxed),
            self.failed.load(Relaxed),
            self.cut.load(Relaxed)
        )
    }
}

/// Runs `workers` clients against `router` for `duration`, alternating short answers and
/// streams, over `models`. Bounded in time; returns the tally.
async fn load(url: String, models: &[&str], workers: usize, duration: Duration) -> Arc<Tally> {
    let tally = Arc::new(Tally::default());
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for worker in 0..workers {
        let (url, tally) = (url.clone(), Arc::clone(&tally));
        let models: Vec<String> = models.iter().map(|m| m.to_string()).collect();
        tasks.push(tokio::spawn(async move {
            let mut i = worker;
            while Instant::now() < deadline {
                i += 1;
                let model = &models[i % models.len()];
                let stream = i % 2 == 0;
                let body = json!({"model": model, "messages": [{"role": "user", "content": format!("hello {i}")}],
                                  "max_tokens": if stream { 20 } else { 4 }, "stream": stream});
                tally.sent.fetch_add(1, Relaxed);
                let outcome = match client().post(format!("{url}/v1/chat/completions")).json(&body).send().await {
                    Ok(r) if r.status() == 200 => match r.text().await {
                        Ok(text) if !stream || text.ends_with("data: [DONE]\n\n") => &tally.ok,
                        Ok(text) if text.contains("data: {\"error\"") => &tally.cut,
                        _ => &tally.failed,
                    },
                    _ => &tally.failed,
                };
                outcome.fetch_add(1, Relaxed);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    tally
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().parse().unwrap()
}

/// Kills one of three servers a second into 3 s of load; returns the tally, what was resumed,
/// and that the killed server rejoined after a restart on its address.
async fn kill_9_one_of_three(config_lines: &str, scenario: &str) -> Arc<Tally> {
    let flags = ["--itl-ms", "10", "--served-model-name", "llama", "qwen"];
    let a = Sim::start(&flags).await;
    let b = Sim::start(&flags).await;
    let mut c = Sim::start(&flags).await;
    let servers = [
        (a.url.as_str(), 8),
        (b.url.as_str(), 8),
        (c.url.as_str(), 8),
    ];
    let router = RouterProcess::start(&servers, config_lines).await;
    let run = tokio::spawn(load(
        router.url.clone(),
        &["llama", "qwen"],
        8,
        Duration::from_secs(3),
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.kill();
    let tally = run.await.unwrap();
    let resumed = common::series(&router.metrics().await, "mvllm_streams_resumed_total", &[]);
    println!("{}", tally.row(scenario, resumed));
    // It rejoins after a restart on its old address.
    let _c = Sim::start_on(port_of(&c.url), &flags).await;
    router.wait_healthy(3).await;
    tally
}

#[tokio::test]
async fn kill_9_one_server_mid_run() {
    let tally = kill_9_one_of_three("", "kill -9 one of 3 servers").await;
    assert_eq!(
        tally.failed.load(Relaxed),
        0,
        "nothing another server could serve was lost"
    );
    assert!(tally.ok.load(Relaxed) > 50);
}

#[tokio::test]
async fn sigstop_one_server_mid_run() {
    let flags = ["--itl-ms", "10", "--served-model-name", "llama", "qwen"];
    let a = Sim::start(&flags).await;
    let b = Sim::start(&flags).await;
    let frozen = Sim::start(&flags).await;
    // A frozen server answers nothing: the first byte times out, the scrape too; streams
    // already running on it are ended by request_timeout with the error event.
    let lines = "first_byte_timeout = 0.3\nhealth_check_timeout = 0.3\nrequest_timeout = 2\n\
                 ejection_threshold = 1\nejection_time = 0.5\n";
    let router = RouterProcess::start(&[(&a.url, 8), (&b.url, 8), (&frozen.url, 8)], lines).await;
    let run = tokio::spawn(load(
        router.url.clone(),
        &["llama", "qwen"],
        8,
        Duration::from_secs(3),
    ));
    tokio::time::sleep(Duration::from_millis(800)).await;
    signal(frozen.pid(), "STOP");
    let tally = run.await.unwrap();
    signal(frozen.pid(), "CONT");
    let resumed = common::series(&router.metrics().await, "mvllm_streams_resumed_total", &[]);
    println!("{}", tally.row("SIGSTOP one of 3 servers", resumed));
    assert_eq!(tally.failed.load(Relaxed), 0);
    assert!(
        common::series(&router.metrics().await, "mvllm_ejections_total", &[]) >= 1.0,
        "it was ejected"
    );
    assert!(tally.ok.load(Relaxed) > 50);
    router.wait_healthy(3).await;
}

#[tokio::test]
async fn fault_modes_cost_nothing_while_a_healthy_server_exists() {
    let model = ["--itl-ms", "5", "--served-model-name", "llama", "qwen"];
    let with = |extra: &'static [&'static str]| {
        let mut flags = model.to_vec();
        flags.extend_from_slice(extra);
        flags
    };
    let errors = Sim::start(&with(&["--fault-error-rate", "0.3"])).await;
    let busy = Sim::start(&with(&[
        "--fault-error-rate",
        "0.3",
        "--fault-error-status",
        "503",
    ]))
    .await;
    let resets = Sim::start(&with(&["--fault-close-rate", "0.3"])).await;
    let garbage = Sim::start(&with(&["--fault-metrics", "garbage"])).await;
    let slow = Sim::start(&with(&["--fault-metrics-delay-ms", "60000"])).await;
    let healthy = Sim::start(&model).await;
    // Every server may be tried, and the budget leaves room for this many failures.
    let lines = "max_retries = 5\nretry_budget_percent = 100\nhealth_check_timeout = 0.3\n\
                 failure_threshold = 100\nejection_threshold = 0\n";
    let servers = [
        (errors.url.as_str(), 8),
        (busy.url.as_str(), 8),
        (resets.url.as_str(), 8),
        (garbage.url.as_str(), 8),
        (slow.url.as_str(), 8),
        (healthy.url.as_str(), 8),
    ];
    let router = RouterProcess::launch(&servers, lines, 0, &[]).await;
    router.wait_healthy(4).await;
    let tally = load(
        router.url.clone(),
        &["llama", "qwen"],
        8,
        Duration::from_secs(3),
    )
    .await;
    let resumed = common::series(&router.metrics().await, "mvllm_streams_resumed_total", &[]);
    println!(
        "{}",
        tally.row("500s, 503s, resets, garbage and slow metrics", resumed)
    );
    assert_eq!(tally.failed.load(Relaxed), 0);
    assert_eq!(tally.cut.load(Relaxed), 0);
    assert!(tally.ok.load(Relaxed) > 50);
}

async fn set_faults(sims: &[&Sim], faults: Option<serde_json::Value>) {
    for sim in sims {
        let request = match &faults {
            Some(f) => client().put(sim.at("/sim/faults")).json(f),
            None => client().delete(sim.at("/sim/faults")),
        };
        assert!(request.send().await.unwrap().status().is_success());
    }
}

#[tokio::test]
async fn every_server_failing_at_once_then_recovering() {
    let flags = ["--itl-ms", "5", "--served-model-name", "llama", "qwen"];
    let (a, b, c) = (
        Sim::start(&flags).await,
        Sim::start(&flags).await,
        Sim::start(&flags).await,
    );
    let lines = "failure_threshold = 100\nejection_threshold = 0\nretry_backoff = 0\n";
    let router = RouterProcess::start(&[(&a.url, 8), (&b.url, 8), (&c.url, 8)], lines).await;
    let sims = [&a, &b, &c];

    set_faults(&sims, Some(json!({"error_rate": 1.0, "error_status": 503}))).await;
    let (requests, attempts) = (
        common::series(&router.metrics().await, "mvllm_requests_total", &[]),
        common::series(&router.metrics().await, "mvllm_attempts_total", &[]),
    );
    let outage = load(
        router.url.clone(),
        &["llama", "qwen"],
        8,
        Duration::from_secs(2),
    )
    .await;
    let (requests, attempts) = (
        common::series(&router.metrics().await, "mvllm_requests_total", &[]) - requests,
        common::series(&router.metrics().await, "mvllm_attempts_total", &[]) - attempts,
    );
    let resumed = common::series(&router.metrics().await, "mvllm_streams_resumed_total", &[]);
    println!("{}", outage.row("every server failing (503)", resumed));
    println!("  during the outage: {requests} client requests, {attempts} upstream attempts");
    assert_eq!(outage.ok.load(Relaxed), 0);
    assert!(
        attempts < 2.0 * requests,
        "the retry budget holds the upstream rate under twice the client rate"
    );

    set_faults(&sims, None).await;
    let recovered = Instant::now();
    let after = load(
        router.url.clone(),
        &["llama", "qwen"],
        8,
        Duration::from_secs(1),
    )
    .await;
    let resumed = common::series(&router.metrics().await, "mvllm_streams_resumed_total", &[]);
    println!("{}", after.row("after recovery", resumed));
    assert_eq!(after.failed.load(Relaxed), 0, "service resumes at once");
    assert!(recovered.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn sigterm_under_load_lets_every_stream_finish() {
    let flags = [
        "--itl-ms",
        "50",
        "--batch-slope",
        "0",
        "--served-model-name",
        "llama",
    ];
    let (a, b) = (Sim::start(&flags).await, Sim::start(&flags).await);
    let mut router = RouterProcess::start(&[(&a.url, 16), (&b.url, 16)], "").await;
    // 12 streams of 20 tokens at 50 ms (about 1 s each), started before the SIGTERM.
    let body = json!({"model": "llama", "messages": [{"role": "user", "content": "hi"}],
                      "max_tokens": 20, "stream": true});
    let mut streams = Vec::new();
    for _ in 0..12 {
        let r = client()
            .post(router.at("/v1/chat/completions"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        streams.push(tokio::spawn(async move {
            let text = r.text().await.unwrap_or_default();
            (text.ends_with("data: [DONE]\n\n"), Instant::now())
        }));
    }
    signal(router.pid(), "TERM");
    let mut last_end = Instant::now();
    let mut complete = 0;
    for stream in streams {
        let (done, ended) = stream.await.unwrap();
        complete += usize::from(done);
        last_end = last_end.max(ended);
    }
    let status = router.wait_exit_status(Duration::from_secs(5)).await;
    let after_last = last_end.elapsed();
    println!(
        "| SIGTERM with 12 streams in flight | 12 | {complete} | {} | 0 | 0 |",
        12 - complete
    );
    assert_eq!(complete, 12, "every stream in flight finished");
    assert_eq!(status, Some(0), "exit status 0");
    assert!(
        after_last < Duration::from_secs(1),
        "exited {after_last:?} after the last stream"
    );
}

#[tokio::test]
async fn a_hundred_config_rewrites_under_load() {
    let flags = ["--itl-ms", "5", "--served-model-name", "llama", "qwen"];
    let (a, b, c) = (
        Sim::start(&flags).await,
        Sim::start(&flags).await,
        Sim::start(&flags).await,
    );
    let lines = "config_reload_interval = 0.2\n";
    let router = RouterProcess::start(&[(&a.url, 8), (&b.url, 8)], lines).await;
    let path = router.config_path().to_path_buf();
    let run = tokio::spawn(load(
        router.url.clone(),
        &["llama", "qwen"],
        8,
        Duration::from_secs(4),
    ));
    // Add and remove servers, change capacities and settings, and break the file now and
    // then; there is always at least one server.
    let sets: [&[(&str, u32)]; 4] = [
        &[(&a.url, 8), (&b.url, 8)],
        &[(&a.url, 4), (&b.url, 8), (&c.url, 8)],
        &[(&b.url, 8), (&c.url, 16)],
        &[(&c.url, 8), (&a.url, 8)],
    ];
    for i in 0..100 {
        let text = if i % 7 == 3 {
            "[servers]\nservers = [{ url = \"not a url\" }]\n".to_string()
        } else {
            common::servers_file(
                sets[i % 4],
                &format!("{lines}max_retries = {}\n", i % 4 + 1),
            )
        };
        common::save_like_an_editor(&path, &text);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    // The last file (i = 99: set 3, servers c and a) is followed within a second.
    let written = Instant::now();
    loop {
        let health = common::get_json(router.at("/health")).await;
        let urls: Vec<&str> = health["servers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["url"].as_str().unwrap())
            .collect();
        if urls == [c.url.as_str(), a.url.as_str()] {
            break;
        }
        assert!(written.elapsed() < Duration::from_secs(1), "still {urls:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let tally = run.await.unwrap();
    let resumed = common::series(&router.metrics().await, "mvllm_streams_resumed_total", &[]);
    println!(
        "{}",
        tally.row("100 servers.toml rewrites (1 in 7 invalid)", resumed)
    );
    assert_eq!(tally.failed.load(Relaxed), 0);
    assert_eq!(tally.cut.load(Relaxed), 0);
}

#[tokio::test]
async fn zero_downtime_upgrade_under_load() {
    let flags = ["--itl-ms", "5", "--served-model-name", "llama", "qwen"];
    let (a, b) = (Sim::start(&flags).await, Sim::start(&flags).await);
    let upgrade = common::Upgrade::prepare("chaos-upgrade");
    let mut old = RouterProcess::start_with(
        &[(&a.url, 8), (&b.url, 8)],
        "",
        upgrade.port,
        &["--conf", &upgrade.conf],
    )
    .await;
    let run = tokio::spawn(load(
        old.url.clone(),
        &["llama", "qwen"],
        8,
        Duration::from_secs(8),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;

    let new = upgrade.hand_over(&old).await;
    let tally = run.await.unwrap();
    println!("{}", tally.row("zero-downtime binary upgrade", 0.0));
    assert_eq!(
        tally.failed.load(Relaxed),
        0,
        "no request failed, no connection was refused"
    );
    assert_eq!(tally.cut.load(Relaxed), 0, "streams in flight finished");
    assert!(
        old.wait_exit(Duration::from_secs(20)).await,
        "the old process left after draining"
    );
    new.wait_healthy(2).await;
}

#[tokio::test]
async fn kill_9_one_server_mid_run_with_resume_streams() {
    let scenario = "kill -9 one of 3 servers, resume_streams on";
    let tally = kill_9_one_of_three("resume_streams = true\n", scenario).await;
    assert_eq!(tally.failed.load(Relaxed), 0);
    assert_eq!(
        tally.cut.load(Relaxed),
        0,
        "the streams on it went on elsewhere"
    );
}
