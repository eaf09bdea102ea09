//! The load of the streaming benchmark (bench/stream_scale.py): many concurrent streamed chat
//! completions, each timed event by event.
//!
//!   cargo bench --bench stream_load -- URL STREAMS TOKENS RAMP_SECONDS [HOLD_FILE]
//!
//! Opens STREAMS streams to URL (`/v1/chat/completions`, `max_tokens` TOKENS), spread evenly
//! over RAMP_SECONDS, and reads each to its end. Once every stream has its first event it
//! writes HOLD_FILE (if given), so that the caller can read the router's memory with all the
//! streams open. Prints one JSON line: how many streams completed (every token and `[DONE]`)
//! and how many were lost, the time to the first event, and the gaps between consecutive
//! events (ms, percentiles over all streams' gaps), which with a simulated server's fixed
//! inter-token latency show what a proxy adds.
//!
//! A client of its own because no stock load tool times each SSE event of thousands of
//! concurrent streams; the HTTP client is reqwest's.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct StreamResult {
    first_event: Option<Duration>,
    gaps: Vec<f64>,
    events: usize,
    done: bool,
    error: Option<String>,
}

async fn one(
    client: reqwest::Client,
    url: String,
    tokens: usize,
    started_events: Arc<AtomicUsize>,
) -> StreamResult {
    let body = format!(
        "{{\"model\":\"mvllm/sim-model\",\"messages\":[{{\"role\":\"user\",\"content\":\"Say hi\"}}],\"max_tokens\":{tokens},\"stream\":true}}"
    );
    let mut out = StreamResult {
        first_event: None,
        gaps: Vec::with_capacity(tokens),
        events: 0,
        done: false,
        error: None,
    };
    let sent = Instant::now();
    let response = client
        .post(format!("{url}/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await;
    let mut response = match response {
        Ok(r) if r.status().is_success() => r,
        Ok(r) => {
            out.error = Some(format!("status {}", r.status()));
            return out;
        }
        Err(e) => {
            out.error = Some(e.to_string());
            return out;
        }
    };
    let mut last: Option<Instant> = None;
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let now = Instant::now();
                let text = String::from_utf8_lossy(&chunk);
                for _ in text.matches("data: ") {
                    out.events += 1;
                    match last {
                        None => {
                            out.first_event = Some(now - sent);
                            started_events.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(t) => out.gaps.push((now - t).as_secs_f64() * 1e3),
                    }
                    last = Some(now);
                }
                if text.contains("data: [DONE]") {
                    out.done = true;
                }
            }
            Ok(None) => break,
            Err(e) => {
                out.error = Some(e.to_string());
                break;
            }
        }
    }
    out
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i]
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.len() < 4 {
        eprintln!("usage: stream_load URL STREAMS TOKENS RAMP_SECONDS [HOLD_FILE]");
        std::process::exit(2);
    }
    let url = args[0].clone();
    let streams: usize = args[1].parse().expect("STREAMS is a number");
    let tokens: usize = args[2].parse().expect("TOKENS is a number");
    let ramp: f64 = args[3].parse().expect("RAMP_SECONDS is a number");
    let hold = args.get(4).cloned();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async move {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(600))
            .build()
            .expect("an HTTP client");
        let started_events = Arc::new(AtomicUsize::new(0));
        let begin = Instant::now();
        let mut tasks = Vec::with_capacity(streams);
        for i in 0..streams {
            let at = begin + Duration::from_secs_f64(ramp * i as f64 / streams as f64);
            tokio::time::sleep_until(at.into()).await;
            tasks.push(tokio::spawn(one(
                client.clone(),
                url.clone(),
                tokens,
                Arc::clone(&started_events),
            )));
        }
        if let Some(hold) = hold {
            let counter = Arc::clone(&started_events);
            tokio::spawn(async move {
                // Every stream open and streaming (or given up on after 60 s).
                let deadline = Instant::now() + Duration::from_secs(60);
                while counter.load(Ordering::Relaxed) < streams && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let _ = std::fs::write(&hold, counter.load(Ordering::Relaxed).to_string());
            });
        }
        let mut gaps = Vec::new();
        let mut firsts = Vec::new();
        let (mut completed, mut events) = (0, 0);
        let mut errors: Vec<String> = Vec::new();
        for task in tasks {
            let r = task.await.expect("a stream task");
            events += r.events;
            // Complete: `[DONE]` after at least one event per token, and no error.
            if r.done && r.events > tokens && r.error.is_none() {
                completed += 1;
            }
            if let Some(e) = r.error {
                if errors.len() < 5 {
                    errors.push(e);
                }
            }
            if let Some(f) = r.first_event {
                firsts.push(f.as_secs_f64() * 1e3);
            }
            gaps.extend(r.gaps);
        }
        gaps.sort_by(f64::total_cmp);
        firsts.sort_by(f64::total_cmp);
        let report = serde_json::json!({
            "streams": streams,
            "completed": completed,
            "lost": streams - completed,
            "events": events,
            "seconds": begin.elapsed().as_secs_f64(),
            "first_event_ms": {"p50": percentile(&firsts, 0.5), "p99": percentile(&firsts, 0.99)},
            "gap_ms": {"p50": percentile(&gaps, 0.5), "p90": percentile(&gaps, 0.9),
                       "p99": percentile(&gaps, 0.99), "max": gaps.last().copied().unwrap_or(f64::NAN)},
            "errors": errors,
        });
        println!("{report}");
    });
}
