//! The router's life around its requests: each server scraped on its own schedule (a hung
//! server delays nobody), state kept across reloads by URL, servers.toml read once, the drain
//! that returns, and running as a daemon.

mod common;

use std::io::Write as _;
use std::time::{Duration, Instant, SystemTime};

use common::{client, get_json, send_json, servers_file, signal, RouterProcess, Sim};
use futures_util::StreamExt;
use serde_json::{json, Value};

fn last_check(health: &Value, server: usize) -> Option<SystemTime> {
    humantime::parse_rfc3339(health["servers"][server]["last_check"].as_str()?).ok()
}

/// A stream through the router that stays open until dropped.
async fn open_stream(router: &RouterProcess) -> OpenStream {
    let body = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5000, "stream": true});
    let r = send_json(router.at("/v1/chat/completions"), &body).await;
    assert_eq!(r.status(), 200);
    let mut stream = Box::pin(r.bytes_stream());
    stream.next().await.unwrap().unwrap();
    OpenStream(stream)
}

/// An open response stream; dropping it disconnects.
struct OpenStream(
    #[allow(dead_code)] // held only to keep the connection open
    std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
);

async fn wait_for(what: &str, mut ok: impl FnMut(&Value) -> bool, url: String) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // Connection refused counts as not yet: the router may still be starting.
        let body = match client().get(&url).send().await {
            Ok(r) => r.json::<Value>().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        if ok(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "{what}: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_stopped_server_delays_no_other_servers_refresh_nor_shutdown() {
    let good = Sim::start(&["--itl-ms", "1"]).await;
    let frozen = Sim::start(&["--itl-ms", "1"]).await;
    let mut router = RouterProcess::start(
        &[(&good.url, 4), (&frozen.url, 4)],
        "metrics_interval = 0.2\nhealth_check_timeout = 5\n",
    )
    .await;
    // SIGSTOP: the kernel still accepts its connections, nobody answers. Each scrape of it
    // hangs for the whole health_check_timeout (5 s).
    signal(frozen.pid(), "STOP");
    let mut seen: Vec<SystemTime> = Vec::new();
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(3) {
        let health = get_json(router.at("/health")).await;
        if let Some(t) = last_check(&health, 0) {
            if seen.last() != Some(&t) {
                seen.push(t);
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let gaps: Vec<Duration> = seen
        .windows(2)
        .map(|w| w[1].duration_since(w[0]).unwrap_or_default())
        .collect();
    let longest = gaps.iter().max().copied().unwrap_or_default();
    println!(
        "good server refreshed {} times in 3 s; longest gap {longest:?}",
        gaps.len()
    );
    assert!(
        gaps.len() >= 8,
        "refreshed every 0.2 s, not every 5 s: {gaps:?}"
    );
    assert!(longest < Duration::from_millis(1000), "{gaps:?}");

    // A scrape of the frozen server is in flight: shutdown does not wait for it.
    let stopping = Instant::now();
    signal(router.pid(), "TERM");
    assert!(
        router.wait_exit(Duration::from_secs(3)).await,
        "exits without waiting out the hung scrape"
    );
    println!("exited {:?} after SIGTERM", stopping.elapsed());
    router.output.wait_stdout("mvllm: stopped").await;
    signal(frozen.pid(), "CONT");
}

#[tokio::test]
async fn an_edited_entry_keeps_its_requests_in_flight() {
    let sim = Sim::start(&["--itl-ms", "20"]).await;
    let lines = "metrics_interval = 30\n";
    let router = RouterProcess::start(&[(&sim.url, 4)], lines).await;
    let stream = open_stream(&router).await;
    let stats = get_json(router.at("/load-stats")).await;
    assert_eq!(stats["servers"][0]["router_in_flight"], 1);

    common::save_like_an_editor(router.config_path(), &servers_file(&[(&sim.url, 8)], lines));
    let stats = wait_for(
        "the new capacity",
        |s| s["servers"][0]["max_capacity"] == 8,
        router.at("/load-stats"),
    )
    .await;
    assert_eq!(
        stats["servers"][0]["router_in_flight"], 1,
        "the edit kept the request in flight"
    );
    assert_eq!(stats["servers"][0]["utilization_percent"], 12.5, "1 of 8");

    drop(stream);
    wait_for(
        "the request's end on the edited entry",
        |s| s["servers"][0]["router_in_flight"] == 0,
        router.at("/load-stats"),
    )
    .await;
}

#[tokio::test]
async fn load_stats_utilisation_is_load_over_capacity() {
    let small = Sim::start(&["--itl-ms", "20"]).await;
    let large = Sim::start(&["--itl-ms", "20"]).await;
    // No scrape after start-up: the load is what the router itself sent.
    let router = RouterProcess::start(
        &[(&small.url, 4), (&large.url, 16)],
        "metrics_interval = 30\n",
    )
    .await;
    let mut streams = Vec::new();
    for _ in 0..5 {
        streams.push(open_stream(&router).await);
    }
    let stats = get_json(router.at("/load-stats")).await;
    let servers = stats["servers"].as_array().unwrap();
    let mut units = 0.0;
    for s in servers {
        let (u, cap) = (
            s["load_units"].as_f64().unwrap(),
            s["max_capacity"].as_f64().unwrap(),
        );
        assert_eq!(
            u,
            s["router_in_flight"].as_f64().unwrap(),
            "sent since the scrape: {s}"
        );
        assert_eq!(
            s["utilization_percent"].as_f64().unwrap(),
            (u / cap * 10000.0).round() / 100.0
        );
        units += u;
    }
    assert_eq!(units, 5.0);
    let overall = stats["summary"]["overall_utilization_percent"]
        .as_f64()
        .unwrap();
    assert_eq!(overall, 25.0, "5 over 20, the same estimate: {stats}");
    drop(streams);
}

#[tokio::test]
async fn servers_toml_is_read_once_so_an_edit_during_start_up_is_applied() {
    // A server that accepts connections and says nothing holds the start-up check; the test
    // edits the file while the router waits on it.
    let stall = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let stall_url = format!("http://{}", stall.local_addr().unwrap());
    let sim = Sim::start(&["--itl-ms", "1"]).await;
    let lines = "health_check_timeout = 30\nconfig_reload_interval = 0.2\n";
    let path = RouterProcess::write_config(&[(&stall_url, 4)], lines);
    let config = path.to_string_lossy().into_owned();
    let router = tokio::spawn(async move {
        let args = [
            "run",
            "--console",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--config",
            &config,
        ];
        RouterProcess::spawn_unowned(&args).await
    });

    // The router has read the file and is checking the servers: edit now, then release it.
    let (connection, _) = tokio::task::spawn_blocking(move || stall.accept().unwrap())
        .await
        .unwrap();
    common::save_like_an_editor(
        &path,
        &servers_file(&[(&stall_url, 4), (&sim.url, 4)], lines),
    );
    drop(connection);
    let router = router.await.unwrap();
    wait_for(
        "the edit made during start-up",
        |h| h["total_servers"] == 2 && h["healthy_servers"] == 1,
        router.at("/health"),
    )
    .await;
    std::fs::remove_file(&path).ok();
}

#[tokio::test]
async fn as_a_daemon_it_detaches_writes_its_pid_and_drains_on_sigterm() {
    let sim = Sim::start(&["--itl-ms", "1"]).await;
    let dir = std::env::temp_dir().join(format!("mvllm-daemon-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("pingora.yaml");
    let pid_file = dir.join("mvllm.pid");
    let mut yaml = std::fs::File::create(&conf).unwrap();
    writeln!(
        yaml,
        "---\nversion: 1\nthreads: 1\npid_file: {}\nupgrade_sock: {}/upgrade.sock\nerror_log: {}/error.log\ngrace_period_seconds: 30\n",
        pid_file.display(),
        dir.display(),
        dir.display()
    )
    .unwrap();
    let config = RouterProcess::write_config(&[(&sim.url, 4)], "");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let port_arg = port.to_string();
    let (code, out, err) = common::run_mvllm(&[
        "run",
        "--daemon",
        "--host",
        "127.0.0.1",
        "--port",
        &port_arg,
        "--conf",
        conf.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "the launching process returns: {out} {err}");
    assert!(out.contains("as a daemon"), "{out}");

    let url = format!("http://127.0.0.1:{port}");
    let health = wait_for(
        "the daemon serving",
        |h| h["healthy_servers"] == 1,
        format!("{url}/health"),
    )
    .await;
    assert_eq!(health["total_servers"], 1);
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let daemon = KillOnDrop(pid);

    signal(pid, "TERM");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < deadline, "the daemon did not stop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::mem::forget(daemon);
    let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
    assert!(
        log.contains("stopped"),
        "it stopped by returning, logs flushed: {log}"
    );
    std::fs::remove_dir_all(&dir).ok();
    std::fs::remove_file(&config).ok();
}

/// Kills a process that no handle owns (a daemon) if the test fails before it stops it.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &self.0.to_string()])
            .status();
    }
}

#[tokio::test]
async fn a_refused_edit_is_shown_in_health_until_a_valid_one_arrives() {
    let sim = Sim::start(&["--itl-ms", "1"]).await;
    let router = RouterProcess::start(&[(&sim.url, 4)], "").await;
    common::save_like_an_editor(
        router.config_path(),
        &servers_file(&[(&sim.url, 4)], "max_retries = -1\n"),
    );
    let health = wait_for(
        "the refused edit in /health",
        |h| h["config_error"].is_string(),
        router.at("/health"),
    )
    .await;
    let error = health["config_error"].as_str().unwrap();
    assert!(
        error.contains("line 6, key config.max_retries: must be a whole number from 0 to 100"),
        "{error}"
    );
    assert_eq!(health["healthy_servers"], 1, "the running config stays");
    common::save_like_an_editor(
        router.config_path(),
        &servers_file(&[(&sim.url, 4)], "max_retries = 1\n"),
    );
    wait_for(
        "the error cleared by a valid edit",
        |h| h["config_error"].is_null(),
        router.at("/health"),
    )
    .await;
}

#[tokio::test]
async fn sighup_reads_the_config_again() {
    let a = Sim::start(&["--itl-ms", "1"]).await;
    let b = Sim::start(&["--itl-ms", "1"]).await;
    // An hourly check, and an edit the file watch cannot see: made through a hard link in
    // another directory (inotify reports changes under the path that was written).
    let lines = "config_reload_interval = 3600\n";
    let router = RouterProcess::start(&[(&a.url, 4)], lines).await;
    let elsewhere = std::env::temp_dir().join(format!("mvllm-hup-{}", std::process::id()));
    std::fs::create_dir_all(&elsewhere).unwrap();
    let link = elsewhere.join("servers.toml");
    std::fs::hard_link(router.config_path(), &link).unwrap();
    std::fs::write(&link, servers_file(&[(&a.url, 4), (&b.url, 4)], lines)).unwrap();
    signal(router.pid(), "HUP");
    wait_for(
        "the edit read on SIGHUP",
        |h| h["total_servers"] == 2 && h["healthy_servers"] == 2,
        router.at("/health"),
    )
    .await;
    std::fs::remove_dir_all(&elsewhere).ok();
}

#[tokio::test]
async fn load_stats_shows_what_other_clients_put_on_a_server() {
    let sim = Sim::start(&["--itl-ms", "20"]).await;
    let router = RouterProcess::start(&[(&sim.url, 8)], "metrics_interval = 0.1\n").await;
    // One stream through the router, three straight to the server (another client).
    let _mine = open_stream(&router).await;
    let body = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5000, "stream": true});
    let mut theirs = Vec::new();
    for _ in 0..3 {
        let r = send_json(sim.at("/v1/chat/completions"), &body).await;
        let mut stream = Box::pin(r.bytes_stream());
        stream.next().await.unwrap().unwrap();
        theirs.push(stream);
    }
    let stats = wait_for(
        "a load gap of about 3",
        |s| {
            s["servers"][0]["load_gap"]
                .as_f64()
                .is_some_and(|g| g > 2.8)
        },
        router.at("/load-stats"),
    )
    .await;
    assert_eq!(stats["servers"][0]["router_in_flight"], 1);
    assert_eq!(stats["servers"][0]["running"], 4.0);
    drop(theirs);
}
