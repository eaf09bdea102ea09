//! The fullscreen monitor, used as a person would: `mvllm run` in a real terminal (tmux) at
//! 80×24 and at 160×40, in front of three sims, the screen read back with `capture-pane`.
//!
//! Needs tmux (scripts/test.sh installs it). The screens read are saved under
//! target/monitor-screens/ for a look after the run.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{client, RouterProcess, Sim};
use serde_json::json;

/// How long the screen may take to show what a step waits for.
const SCREEN_LIMIT: Duration = Duration::from_secs(20);

static SESSIONS: AtomicUsize = AtomicUsize::new(0);

/// A terminal of its own: a private tmux server with one window of the given size.
struct Terminal {
    socket: String,
    size: String,
}

impl Terminal {
    fn open(width: u16, height: u16) -> Terminal {
        let socket = format!(
            "mvllm-test-{}-{}",
            std::process::id(),
            SESSIONS.fetch_add(1, Ordering::Relaxed)
        );
        let terminal = Terminal {
            socket,
            size: format!("{width}x{height}"),
        };
        let (w, h) = (width.to_string(), height.to_string());
        terminal.tmux(&[
            "new-session",
            "-d",
            "-x",
            &w,
            "-y",
            &h,
            "env TERM=xterm-256color bash --norc --noprofile",
        ]);
        terminal
    }

    fn tmux(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("tmux must be installed to test the monitor (scripts/test.sh installs it)");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Types `keys` (tmux key names: "Enter", "q", "Down" ...).
    fn press(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "0"];
        args.extend(keys);
        self.tmux(&args);
    }

    /// Types a shell command line and Enter.
    fn type_line(&self, line: &str) {
        self.tmux(&["send-keys", "-t", "0", "-l", line]);
        self.press(&["Enter"]);
    }

    fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-t", "0"])
    }

    /// Reads the screen until `ready` holds; saves the screen it returns as `name`.
    async fn wait_for(&self, name: &str, ready: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let screen = self.screen();
            if ready(&screen) {
                let dir = concat!(env!("CARGO_TARGET_TMPDIR"), "/../monitor-screens");
                let _ = std::fs::create_dir_all(dir);
                let _ = std::fs::write(format!("{dir}/{}-{name}.txt", self.size), &screen);
                return screen;
            }
            assert!(
                start.elapsed() < SCREEN_LIMIT,
                "the screen never showed {name}; it shows:\n{screen}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

fn host_port(url: &str) -> &str {
    url.trim_start_matches("http://")
}

/// The router's address, from the monitor's header line.
fn address(screen: &str) -> String {
    let start = screen.find("http://").expect("an address in the header");
    let rest = &screen[start..];
    let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
    rest[..end].to_string()
}

fn line_with<'a>(screen: &'a str, needle: &str) -> &'a str {
    screen
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle} in:\n{screen}"))
}

async fn the_monitor_at(width: u16, height: u16) {
    let mut sims = Vec::new();
    for _ in 0..3 {
        sims.push(Sim::start(&["--model", "llama", "--itl-ms", "20"]).await);
    }
    let servers: Vec<(&str, u32)> = sims.iter().map(|s| (s.url.as_str(), 4)).collect();
    let config = RouterProcess::write_config(&servers, "metrics_interval = 0.2\n");
    let log_file = config.with_extension("log");
    let terminal = Terminal::open(width, height);
    terminal.type_line(&format!(
        "{} run -c {} --port 0 --log-file {}; echo EXIT=$?",
        env!("CARGO_BIN_EXE_mvllm"),
        config.display(),
        log_file.display()
    ));

    // Every server's row, healthy.
    let screen = terminal
        .wait_for("table", |s| {
            s.contains("servers 3/3 up") && sims.iter().all(|sim| s.contains(host_port(&sim.url)))
        })
        .await;
    for sim in &sims {
        assert!(line_with(&screen, host_port(&sim.url)).contains(" up "));
    }
    assert!(screen.contains("q quit"), "the footer names the keys");
    let header = line_with(&screen, "SERVER");
    assert!(
        header.contains("STATE") && header.contains("LOAD"),
        "{header}"
    );
    if width >= 160 {
        assert!(
            header.contains("MODELS") && header.contains("KV"),
            "{header}"
        );
        assert!(line_with(&screen, host_port(&sims[0].url)).contains("llama"));
    }

    // The log pane: the router's own log lines (its last ones: Pingora starting its
    // services), inside the screen.
    assert!(
        !screen.contains(" INFO "),
        "no log line outside the pane: {screen}"
    );
    terminal.press(&["l"]);
    let pane = terminal
        .wait_for("log-pane", |s| s.contains(" log ") && s.contains(" INFO "))
        .await;
    assert!(pane.contains("Starting service"), "{pane}");
    assert!(pane.contains("q quit"), "the footer stays: {pane}");
    terminal.press(&["l"]);
    terminal
        .wait_for("log-pane-closed", |s| !s.contains(" INFO "))
        .await;

    // Requests through the router, then the why view names one.
    let router = address(&screen);
    for i in 0..3 {
        let response = client()
            .post(format!("{router}/v1/chat/completions"))
            .header("x-request-id", format!("monitor-req-{i}"))
            .json(&json!({"model": "llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.bytes().await.unwrap();
    }
    terminal.press(&["w"]);
    let why = terminal
        .wait_for("why", |s| s.contains("monitor-req-2"))
        .await;
    let decision = line_with(&why, "monitor-req-2");
    assert!(
        decision.contains("llama") && decision.contains("200 ok"),
        "{why}"
    );
    assert!(why.contains("by least-load among"), "{why}");
    assert!(why.contains("*="), "the chosen server is marked: {why}");
    terminal.press(&["w"]);
    terminal.wait_for("back", |s| s.contains("SERVER")).await;

    // A server killed mid-test is shown down within seconds, in words.
    let dead = host_port(&sims[1].url).to_string();
    sims[1].kill();
    let screen = terminal
        .wait_for("server-down", |s| {
            s.contains("servers 2/3 up")
                && s.lines().any(|l| l.contains(&dead) && l.contains("DOWN"))
        })
        .await;
    assert!(line_with(&screen, host_port(&sims[0].url)).contains(" up "));

    // Sorted by health, the down server comes first; Enter opens its detail.
    terminal.press(&["s", "g", "Enter"]);
    let detail = terminal
        .wait_for("detail", |s| s.contains("last error"))
        .await;
    assert!(line_with(&detail, "server ").contains(&dead), "{detail}");
    assert!(line_with(&detail, "state ").contains("DOWN"), "{detail}");
    assert!(
        line_with(&detail, "last error").contains("connect"),
        "{detail}"
    );
    terminal.press(&["Enter"]);
    terminal
        .wait_for("back-again", |s| s.contains("SERVER"))
        .await;

    // The screen follows a resize: wider, the models column appears.
    if width < 160 {
        terminal.tmux(&["resize-window", "-t", "0", "-x", "130", "-y", "30"]);
        let wider = terminal
            .wait_for("resized", |s| {
                s.lines()
                    .any(|l| l.contains("SERVER") && l.contains("MODELS"))
            })
            .await;
        assert!(wider.lines().all(|l| l.chars().count() <= 130));
        let (w, h) = (width.to_string(), height.to_string());
        terminal.tmux(&["resize-window", "-t", "0", "-x", &w, "-y", &h]);
        terminal
            .wait_for("resized-back", |s| {
                s.lines()
                    .any(|l| l.contains("SERVER") && !l.contains("MODELS"))
            })
            .await;
    }

    // q with a stream in flight: the router drains it (the footer says so), then exits with
    // 0, and the terminal is as it was.
    let stream = tokio::spawn(
        client()
            .post(format!("{router}/v1/chat/completions"))
            .json(
                &json!({"model": "llama", "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 150, "stream": true}),
            )
            .send(),
    );
    terminal
        .wait_for("stream-in-flight", |s| s.contains("in flight 1"))
        .await;
    terminal.press(&["q"]);
    terminal
        .wait_for("draining", |s| {
            s.contains("draining: 1 request(s) in flight")
        })
        .await;
    let streamed = stream.await.unwrap().unwrap().text().await.unwrap();
    assert!(streamed.trim_end().ends_with("data: [DONE]"), "{streamed}");
    // The shell's `echo EXIT=$?` (the command line itself says "EXIT=$?").
    let exit_line = |s: &str| {
        s.lines()
            .find(|l| l.starts_with("EXIT=") && l[5..].chars().all(|c| c.is_ascii_digit()))
            .map(str::to_string)
    };
    let after = terminal
        .wait_for("after-exit", |s| exit_line(s).is_some())
        .await;
    assert_eq!(exit_line(&after).unwrap(), "EXIT=0", "{after}");
    assert!(after.contains("mvllm: stopped"), "{after}");
    assert!(
        !after.contains("SERVER"),
        "the monitor's screen is gone: {after}"
    );
    // The logs also went to --log-file, and none to the screen.
    let logged = std::fs::read_to_string(&log_file).unwrap();
    assert!(logged.contains("servers checked"), "{logged}");
    assert!(logged.contains("q pressed"), "{logged}");
    assert!(!after.contains("servers checked"), "{after}");
    std::fs::remove_file(&log_file).ok();
    terminal.type_line(
        "stty -a | tr ' ' '\\n' | grep -x -e '-\\?icanon' -e '-\\?echo'; echo STTY-DONE",
    );
    let stty = terminal
        .wait_for("stty", |s| s.lines().any(|l| l == "STTY-DONE"))
        .await;
    let modes: Vec<&str> = stty
        .lines()
        .filter(|l| ["icanon", "-icanon", "echo", "-echo"].contains(l))
        .collect();
    assert_eq!(
        modes,
        ["icanon", "echo"],
        "line mode and echo are back: {stty}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_monitor_at_80x24() {
    the_monitor_at(80, 24).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_monitor_at_160x40() {
    the_monitor_at(160, 40).await;
}
