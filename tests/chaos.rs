//! The chaos suite: the router and simulated servers on loopback under steady mixed load
//! (streams and not, two models), with a failure injected mid-run, and exact counts of what
//! the clients saw. Each scenario prints a row: sent / ok / failed / streams cut.
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
    fn row(&self, scenario: &str) -> String {
        format!(
            "| {scenario} | {} | {} | {} | {} |",
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

#[tokio::test]
async fn kill_9_one_server_mid_run() {
    let flags = ["--itl-ms", "10", "--served-model-name", "llama", "qwen"];
    let a = Sim::start(&flags).await;
    let b = Sim::start(&flags).await;
    let mut c = Sim::start(&flags).await;
    let router = RouterProcess::start(&[(&a.url, 8), (&b.url, 8), (&c.url, 8)], "").await;
    let run = tokio::spawn(load(
        router.url.clone(),
        &["llama", "qwen"],
        8,
        Duration::from_secs(3),
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.kill();
    let tally = run.await.unwrap();
    println!("{}", tally.row("kill -9 one of 3 servers"));
    assert_eq!(
        tally.failed.load(Relaxed),
        0,
        "nothing another server could serve was lost"
    );
    assert!(tally.ok.load(Relaxed) > 50);
    // It rejoins after a restart on its old address.
    let _c = Sim::start_on(port_of(&c.url), &flags).await;
    router.wait_healthy(3).await;
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
    println!("{}", tally.row("SIGSTOP one of 3 servers"));
    assert_eq!(tally.failed.load(Relaxed), 0);
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
    println!(
        "{}",
        tally.row("500s, 503s, resets, garbage and slow metrics")
    );
    assert_eq!(tally.failed.load(Relaxed), 0);
    assert_eq!(tally.cut.load(Relaxed), 0);
    assert!(tally.ok.load(Relaxed) > 50);
}

/// The sum of a metric's series in the router's /metrics.
async fn metric_sum(router: &RouterProcess, name: &str) -> f64 {
    let text = client()
        .get(router.at("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
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
        metric_sum(&router, "mvllm_requests_total").await,
        metric_sum(&router, "mvllm_attempts_total").await,
    );
    let outage = load(
        router.url.clone(),
        &["llama", "qwen"],
        8,
        Duration::from_secs(2),
    )
    .await;
    let (requests, attempts) = (
        metric_sum(&router, "mvllm_requests_total").await - requests,
        metric_sum(&router, "mvllm_attempts_total").await - attempts,
    );
    println!("{}", outage.row("every server failing (503)"));
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
    println!("{}", after.row("after recovery"));
    assert_eq!(after.failed.load(Relaxed), 0, "service resumes at once");
    assert!(recovered.elapsed() < Duration::from_secs(5));
}
