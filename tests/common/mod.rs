//! Starting real `mvllm` processes on loopback ephemeral ports for integration tests.
#![allow(dead_code)] // each test binary uses a different part of this module

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a process may take to print its address and answer /health.
const STARTUP_LIMIT: Duration = Duration::from_secs(20);

/// What a process printed: its stdout lines and its stderr, kept as they come. Stderr is
/// also passed on to the test's own stderr, so a failing test shows the logs.
#[derive(Clone, Default)]
pub struct Output {
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
}

impl Output {
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until stderr holds a line containing every one of `needles`; returns it.
    pub async fn wait_stderr_line(&self, needles: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found = self
                .stderr()
                .lines()
                .find(|line| needles.iter().all(|n| line.contains(n)))
                .map(str::to_string);
            if let Some(line) = found {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "no stderr line with {needles:?} in:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until a stdout line contains `needle`.
    pub async fn wait_stdout(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.stdout_lines().iter().any(|l| l.contains(needle)) {
            assert!(
                Instant::now() < deadline,
                "stdout never said {needle:?}: {:?}",
                self.stdout_lines()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Starts `mvllm <args>` (with `RUST_LOG=warn` unless `env` sets it) and returns it with the
/// first `http://` address it prints, and what it prints.
fn spawn_with_address(
    args: &[String],
    marker: &'static str,
    env: &[(String, String)],
) -> (Child, String, Output) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mvllm"));
    command
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("spawn mvllm");
    let output = Output::default();
    let stderr = child.stderr.take().expect("piped stderr");
    let kept = Arc::clone(&output.stderr);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            eprintln!("{line}");
            let mut all = kept.lock().unwrap();
            all.push_str(&line);
            all.push('\n');
        }
    });
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut url = None;
    for line in lines.by_ref() {
        let Ok(line) = line else { break };
        output.stdout.lock().unwrap().push(line.clone());
        if line.contains(marker) {
            url = line
                .split_whitespace()
                .find(|w| w.starts_with("http://") || w.starts_with("https://"))
                .map(str::to_string);
            break;
        }
    }
    // Keep draining so the child never blocks on a full pipe.
    let kept = Arc::clone(&output.stdout);
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            kept.lock().unwrap().push(line);
        }
    });
    match url {
        Some(url) => (child, url, output),
        None => {
            let _ = child.kill();
            panic!("mvllm {args:?} did not print its address");
        }
    }
}

/// A running `mvllm run` over a generated servers.toml, killed on drop.
pub struct RouterProcess {
    child: Child,
    pub url: String,
    config: std::path::PathBuf,
    pub output: Output,
}

impl RouterProcess {
    /// Starts the router in front of `servers` ((url, capacity) pairs) with extra `[config]`
    /// lines, and waits until every server is healthy in its /health.
    pub async fn start(servers: &[(&str, u32)], config_lines: &str) -> RouterProcess {
        Self::start_with(servers, config_lines, 0, &[]).await
    }

    /// Like `start`, on `port` (0: any free port) and with extra `mvllm run` arguments.
    pub async fn start_with(
        servers: &[(&str, u32)],
        config_lines: &str,
        port: u16,
        extra: &[&str],
    ) -> RouterProcess {
        let router = Self::launch(servers, config_lines, port, extra).await;
        router.wait_healthy(servers.len()).await;
        router
    }

    /// Starts the router and returns once it has printed its address, without waiting for
    /// it to be ready.
    pub async fn launch(
        servers: &[(&str, u32)],
        config_lines: &str,
        port: u16,
        extra: &[&str],
    ) -> RouterProcess {
        Self::launch_with_env(servers, config_lines, port, extra, &[]).await
    }

    /// Like `launch`, with extra environment variables (e.g. `RUST_LOG`).
    pub async fn launch_with_env(
        servers: &[(&str, u32)],
        config_lines: &str,
        port: u16,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> RouterProcess {
        let config = Self::write_config(servers, config_lines);
        Self::launch_config(config, port, extra, env).await
    }

    /// Starts the router on a servers.toml written as `text` (for entries `start` cannot
    /// write), without waiting for it to be ready.
    pub async fn launch_toml(text: &str) -> RouterProcess {
        Self::launch_toml_with_env(text, &[]).await
    }

    /// Like `launch_toml`, with extra environment variables.
    pub async fn launch_toml_with_env(text: &str, env: &[(&str, &str)]) -> RouterProcess {
        let config = std::env::temp_dir().join(format!(
            "mvllm-test-{}-{}.toml",
            std::process::id(),
            CONFIGS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::write(&config, text).unwrap();
        Self::launch_config(config, 0, &[], env).await
    }

    async fn launch_config(
        config: std::path::PathBuf,
        port: u16,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> RouterProcess {
        let port = port.to_string();
        let args: Vec<String> = ["run", "--console", "--host", "127.0.0.1", "--port", &port]
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .chain([
                "--config".to_string(),
                config.to_string_lossy().into_owned(),
            ])
            .collect();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        let (child, url, output) =
            tokio::task::spawn_blocking(move || spawn_with_address(&args, "routing", &env))
                .await
                .unwrap();
        RouterProcess {
            child,
            url,
            config,
            output,
        }
    }

    /// Writes the servers file a router will be started with (see `launch`).
    pub fn write_config(servers: &[(&str, u32)], config_lines: &str) -> std::path::PathBuf {
        let config = std::env::temp_dir().join(format!(
            "mvllm-test-{}-{}.toml",
            std::process::id(),
            CONFIGS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::write(&config, servers_file(servers, config_lines)).unwrap();
        config
    }

    /// Waits until /health counts `n` healthy servers.
    pub async fn wait_healthy(&self, n: usize) {
        let url = self.at("/health");
        poll_until(
            format!("router at {} never saw {n} healthy servers", self.url),
            || async {
                match client().get(&url).send().await {
                    Ok(r) => r
                        .json::<serde_json::Value>()
                        .await
                        .is_ok_and(|b| b["healthy_servers"] == n),
                    Err(_) => false,
                }
            },
        )
        .await;
    }

    pub fn at(&self, path: &str) -> String {
        format!("{}{}", self.url, path)
    }

    /// The servers file it was started with.
    pub fn config_path(&self) -> &std::path::Path {
        &self.config
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts another router with the same servers file (e.g. with `--upgrade`).
    pub async fn spawn_sibling(&self, args: &[&str]) -> RouterProcess {
        let config = self.config.to_string_lossy().into_owned();
        let mut full = vec!["run", "--console", "--host", "127.0.0.1"];
        full.extend(args);
        full.extend(["--config", &config]);
        Self::spawn_unowned(&full).await
    }

    /// Starts `mvllm demo --port 0`.
    pub async fn spawn_demo() -> RouterProcess {
        Self::spawn_unowned(&["demo", "--port", "0"]).await
    }

    /// Starts `mvllm <args>` as a router whose servers file this handle does not own.
    pub async fn spawn_unowned(args: &[&str]) -> RouterProcess {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let (child, url, output) =
            tokio::task::spawn_blocking(move || spawn_with_address(&args, "routing", &[]))
                .await
                .unwrap();
        RouterProcess {
            child,
            url,
            config: std::path::PathBuf::new(),
            output,
        }
    }

    /// Waits up to `limit` for the process to exit by itself.
    pub async fn wait_exit(&mut self, limit: Duration) -> bool {
        self.wait_exit_status(limit).await.is_some()
    }

    /// Waits up to `limit` for the process to exit by itself; its exit code (-1 for a signal).
    pub async fn wait_exit_status(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status.code().unwrap_or(-1));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }
}

impl Drop for RouterProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config);
    }
}

static CONFIGS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A servers.toml: the servers ((url, capacity) pairs), then `[config]` with `config_lines`
/// (and `metrics_interval = 0.2` unless they set it).
pub fn servers_file(servers: &[(&str, u32)], config_lines: &str) -> String {
    let mut toml = String::from("[servers]\nservers = [\n");
    for (url, capacity) in servers {
        toml.push_str(&format!(
            "  {{ url = \"{url}\", max_concurrent_requests = {capacity} }},\n"
        ));
    }
    toml.push_str("]\n[config]\n");
    toml.push_str(config_lines);
    if !config_lines.contains("metrics_interval") {
        toml.push_str("metrics_interval = 0.2\n");
    }
    toml
}

/// Sends `signal` (e.g. "TERM", "STOP") to process `pid`.
pub fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}

/// A running `mvllm sim`, killed on drop.
pub struct Sim {
    child: Child,
    pub url: String,
}

impl Sim {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Sim {
    /// Starts `mvllm sim --port 0 <args>` and waits until it answers /health.
    pub async fn start(args: &[&str]) -> Sim {
        Sim::start_on(0, args).await
    }

    /// Starts `mvllm sim --port <port> <args>` (0: any free port) and waits until it answers
    /// /health; a server restarted on its old port comes back at the same URL.
    pub async fn start_on(port: u16, args: &[&str]) -> Sim {
        Sim::start_at("127.0.0.1", port, args).await
    }

    /// Starts `mvllm sim --host <host> --port <port> <args>` (another loopback address, say).
    pub async fn start_at(host: &str, port: u16, args: &[&str]) -> Sim {
        let sim = Sim::spawn(host, port, args).await;
        sim.wait_healthy().await;
        sim
    }

    /// Starts `mvllm sim` and returns once it printed its address.
    async fn spawn(host: &str, port: u16, args: &[&str]) -> Sim {
        let port = port.to_string();
        let args: Vec<String> = ["sim", "--host", host, "--port", &port]
            .iter()
            .chain(args)
            .map(|s| s.to_string())
            .collect();
        let (child, url, _) =
            tokio::task::spawn_blocking(move || spawn_with_address(&args, "serving", &[]))
                .await
                .expect("reader thread");
        Sim { child, url }
    }

    /// Starts an HTTPS sim (`args` name its certificate); waits until `client` (which trusts
    /// it) gets its /health.
    pub async fn start_tls(args: &[&str], client: reqwest::Client) -> Sim {
        let mut sim = Sim::spawn("127.0.0.1", 0, args).await;
        // Its certificate names localhost, not the address it prints.
        sim.url = sim.url.replace("127.0.0.1", "localhost");
        let health = sim.at("/health");
        poll_until(
            format!("sim at {} never became healthy", sim.url),
            || async {
                client
                    .get(&health)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            },
        )
        .await;
        sim
    }

    /// A sim that answers every inference request with `status` (`--fault-error-rate 1`).
    pub async fn failing(status: u16) -> Sim {
        let status = status.to_string();
        Sim::start(&[
            "--itl-ms",
            "1",
            "--fault-error-rate",
            "1",
            "--fault-error-status",
            &status,
        ])
        .await
    }

    /// Kills the process now (a server dying mid-test).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    async fn wait_healthy(&self) {
        let url = self.at("/health");
        poll_until(
            format!("sim at {} never became healthy", self.url),
            || async {
                client()
                    .get(&url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success())
            },
        )
        .await;
    }

    pub fn at(&self, path: &str) -> String {
        format!("{}{}", self.url, path)
    }

    pub async fn get_status(&self, path: &str) -> u16 {
        let response = client().get(self.at(path)).send().await.unwrap();
        response.status().as_u16()
    }

    pub async fn get_text(&self, path: &str) -> String {
        let response = client().get(self.at(path)).send().await.unwrap();
        response.text().await.unwrap()
    }

    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        let response = client().get(self.at(path)).send().await.unwrap();
        response.json().await.unwrap()
    }

    /// POSTs JSON; returns the status and the JSON answer.
    pub async fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let response = client()
            .post(self.at(path))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    /// The current value of one metric series, summed over engines.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.get_text("/metrics").await;
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (series, value) = l.rsplit_once(' ')?;
                let metric = series.split('{').next()?;
                (metric == name)
                    .then(|| value.parse::<f64>().ok())
                    .flatten()
            })
            .sum()
    }

    /// Polls a metric until `ok` accepts it (bounded; panics with the last value).
    pub async fn wait_metric(&self, name: &str, ok: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let value = self.metric(name).await;
            if ok(value) {
                return value;
            }
            assert!(Instant::now() < deadline, "{name} stuck at {value}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GETs a URL and parses its JSON answer.
pub async fn get_json(url: String) -> serde_json::Value {
    let response = client().get(url).send().await.unwrap();
    response.json().await.unwrap()
}

/// Polls `ready` every 20 ms until it holds; panics after `STARTUP_LIMIT` with `what`.
pub async fn poll_until<F, Fut>(what: String, mut ready: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + STARTUP_LIMIT;
    while !ready().await {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A free loopback port (for a listener a process is told to open).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        // Plain HTTP on loopback: loading the system's roots would cost every client (tests
        // make one per request) tens of milliseconds in a debug build.
        .tls_built_in_root_certs(false)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Runs `mvllm <args>` to completion; returns (exit code, stdout, stderr).
pub fn run_mvllm(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mvllm"))
        .args(args)
        .output()
        .expect("run mvllm");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Splits an SSE body into its `data:` payloads, checking the framing on the way: every event
/// is exactly `data: <payload>\n\n`.
pub fn sse_payloads(body: &str) -> Vec<String> {
    assert!(
        body.ends_with("\n\n"),
        "body does not end an event: {body:?}"
    );
    body[..body.len() - 2]
        .split("\n\n")
        .map(|event| {
            assert!(!event.contains('\n'), "multi-line event: {event:?}");
            event
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("event without `data: `: {event:?}"))
                .to_string()
        })
        .collect()
}

/// POSTs `body` as JSON and returns the response (its status and body unread).
pub async fn send_json(url: String, body: &serde_json::Value) -> reqwest::Response {
    client().post(url).json(body).send().await.unwrap()
}

/// A zero-downtime upgrade's setting: a folder with a Pingora conf whose pid file and upgrade
/// socket are in it, and a free port for the router both processes serve.
pub struct Upgrade {
    pub dir: std::path::PathBuf,
    pub conf: String,
    pub port: u16,
}

impl Upgrade {
    pub fn prepare(name: &str) -> Upgrade {
        let dir = std::env::temp_dir().join(format!("mvllm-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("pingora.yaml");
        std::fs::write(
            &conf,
            format!(
                "---\nversion: 1\nthreads: 2\npid_file: {0}/mvllm.pid\nupgrade_sock: {0}/upgrade.sock\n\
                 grace_period_seconds: 30\ngraceful_shutdown_timeout_seconds: 5\n",
                dir.display()
            ),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Upgrade {
            dir,
            conf: conf.to_string_lossy().into_owned(),
            port,
        }
    }

    /// Starts the new process with `--upgrade` beside `old`; once it listens on the upgrade
    /// socket, SIGQUIT tells `old` to hand its listeners over and drain. Returns the new one.
    pub async fn hand_over(&self, old: &RouterProcess) -> RouterProcess {
        let port = self.port.to_string();
        let args = ["--port", &port, "--conf", &self.conf, "--upgrade"];
        let sibling = old.spawn_sibling(&args);
        let handover = async {
            let socket = self.dir.join("upgrade.sock");
            let deadline = Instant::now() + Duration::from_secs(20);
            while !socket.exists() {
                assert!(
                    Instant::now() < deadline,
                    "the new process never opened {}",
                    socket.display()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            signal(old.pid(), "QUIT");
        };
        let (new, ()) = tokio::join!(sibling, handover);
        new
    }
}

impl Drop for Upgrade {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

/// Replaces a file the way editors save: write a new file, rename it over the old one.
pub fn save_like_an_editor(path: &std::path::Path, text: &str) {
    let temp = path.with_extension("swp");
    std::fs::write(&temp, text).unwrap();
    std::fs::rename(&temp, path).unwrap();
}

/// The value of one series in a Prometheus text exposition (summed over the series that
/// match; 0 if none): `name`, and every `label="value"` pair in `labels`.
pub fn series(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

impl RouterProcess {
    /// The router's `/metrics` text.
    pub async fn metrics(&self) -> String {
        client()
            .get(self.at("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}
