//! The fullscreen monitor: what `mvllm run` shows on a terminal (`--console`, or a stdout that
//! is not a terminal, gives plain logs instead).
//!
//! It is a reader: once a second it reads the servers' views (the same ones `/metrics` and
//! `/load-stats` render, see `backend::ServerView`) and the routing decisions the request
//! path left in a bounded channel (decisions.rs); it shares no lock with the request path, and
//! draws on a thread of its own. Logs go to its log pane (logging.rs), never over the screen.
//!
//! - `board`: the sampled rows, rates and histories (pure).
//! - `ui`: the selection, the screen shown, and what each key does (pure).
//! - `screen`: drawing one frame with ratatui.
//!
//! `q` or Ctrl-C asks for the same graceful drain as SIGTERM ([`Quit`]); the terminal is
//! given back when the router has stopped ([`Monitor::stop`]), or by ratatui's panic hook.

pub mod board;
pub mod screen;
pub mod ui;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ratatui::crossterm::event::{self, Event, KeyEventKind};
use ratatui::DefaultTerminal;

use crate::backend::ServerView;
use crate::cluster::Cluster;
use crate::decisions::RecentDecisions;
use crate::entry::Recorder;
use crate::logging::LogPane;
use board::Board;
use screen::Scene;
use ui::{Action, Ui};

/// How often the servers are sampled (and the screen redrawn at the least).
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Longest wait for a key before looking at the clock and the stop flag again.
const KEY_WAIT: Duration = Duration::from_millis(100);

/// Lines of the log pane's history drawn at most.
const LOG_LINES: usize = 200;

/// A request from the monitor to stop the router: Pingora's shutdown watch (run.rs) takes it
/// as a SIGTERM.
#[derive(Default)]
pub struct Quit(tokio::sync::Notify);

impl Quit {
    pub fn request(&self) {
        self.0.notify_one();
    }

    pub async fn requested(&self) {
        self.0.notified().await;
    }
}

/// What the monitor reads.
pub struct Sources {
    pub cluster: Arc<Cluster>,
    pub recorder: Arc<Recorder>,
    pub decisions: RecentDecisions,
    pub log: LogPane,
    /// The router's address, as clients reach it.
    pub address: String,
    pub quit: Arc<Quit>,
}

/// The running monitor.
pub struct Monitor {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Monitor {
    /// Takes over the terminal (alternate screen, raw mode) and starts drawing.
    pub fn start(sources: Sources) -> anyhow::Result<Monitor> {
        let terminal = ratatui::try_init().context(
            "cannot take over the terminal for the monitor (--console gives plain logs)",
        )?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("mvllm-monitor".into())
            .spawn(move || {
                show(terminal, sources, &stopping);
                ratatui::restore();
            });
        match thread {
            Ok(thread) => Ok(Monitor { stop, thread }),
            Err(e) => {
                ratatui::restore();
                Err(e).context("cannot start the monitor's thread")
            }
        }
    }

    /// Stops drawing and gives the terminal back as it was.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

/// The monitor's loop: sample, draw, read keys, until `stop`.
fn show(mut terminal: DefaultTerminal, mut sources: Sources, stop: &AtomicBool) {
    let mut board = Board::default();
    let mut ui = Ui::default();
    let mut next_sample = Instant::now();
    let mut dirty = true;
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= next_sample {
            let snapshot = sources.cluster.snapshot();
            board.sample(snapshot.backends.iter().map(ServerView::of).collect(), now);
            board.sample_clients(snapshot.access.clients());
            sources.decisions.refresh();
            next_sample = now + SAMPLE_EVERY;
            dirty = true;
        }
        if dirty {
            let snapshot = sources.cluster.snapshot();
            let policy = snapshot.policy.default_policy().name();
            let log = if ui.log_pane {
                sources.log.last(LOG_LINES)
            } else {
                Vec::new()
            };
            let scene = Scene {
                address: &sources.address,
                policy,
                board: &board,
                ui: &ui,
                decisions: &sources.decisions.recent,
                log: &log,
                active: sources.recorder.active(),
            };
            if let Err(e) = terminal.draw(|frame| screen::draw(frame, &scene)) {
                // The terminal is gone (closed, hung up): the router goes on without it.
                tracing::warn!(error = %e, "the monitor cannot draw; it stops");
                return;
            }
            dirty = false;
        }
        let wait = next_sample
            .saturating_duration_since(Instant::now())
            .min(KEY_WAIT);
        match event::poll(wait) {
            Ok(true) => match event::read() {
                Ok(Event::Key(key)) if key.kind != KeyEventKind::Release => {
                    match ui.key(key, &board.rows) {
                        Action::Nothing => {}
                        Action::Redraw => dirty = true,
                        Action::Quit => {
                            tracing::info!("q pressed: stopping after the requests in flight");
                            sources.quit.request();
                            dirty = true;
                        }
                    }
                }
                Ok(Event::Resize(..)) => dirty = true,
                Ok(_) => {}
                Err(_) => std::thread::sleep(wait),
            },
            Ok(false) => {}
            Err(_) => std::thread::sleep(wait),
        }
    }
}
