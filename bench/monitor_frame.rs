//! What one second of the fullscreen monitor costs with 1,000 servers.
//!
//!   cargo bench --bench monitor_frame
//!
//! A frame is what the monitor does each second: read every server's view (the same
//! `ServerView` `/metrics` renders), sample them into the board (rates, recent TTFT medians,
//! histories), and draw a 160×40 screen (ratatui's test backend: the drawing without the
//! terminal's own write). Baseline: rendering `/metrics` for the same 1,000 servers, what one
//! Prometheus scrape costs the router. Servers have traffic recorded (a request each), so their
//! histograms and per-model handles exist as in a live router.
#[path = "servers.rs"]
mod servers;
#[path = "timing.rs"]
mod timing;

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use mvllm::backend::ServerView;
use mvllm::cluster::Cluster;
use mvllm::context::{Finish, Outcome, RequestContext};
use mvllm::monitor::board::Board;
use mvllm::monitor::screen::{draw, Scene};
use mvllm::monitor::ui::Ui;
use mvllm::retry::AttemptResult;
use ratatui::backend::TestBackend;
use ratatui::Terminal;
use timing::time_per_call;

const SERVERS: usize = 1000;

struct NoFinish;

impl Finish for NoFinish {
    fn started(&self) {}
    fn finished(&self, _: &RequestContext) {}
}

/// Records one answered request on `backend`, as the router would.
fn one_request(cluster: &Cluster, backend: &mvllm::backend::Backend) {
    let mut ctx = RequestContext::new(Arc::new(NoFinish));
    ctx.features.model = Some("llama".into());
    ctx.model_listed = true;
    ctx.begin_attempt(backend)
        .end(AttemptResult::Delivered, None);
    ctx.status = Some(200);
    ctx.first_byte = Some(Instant::now());
    ctx.outcome = Outcome::Ok;
    cluster.stats().record(&ctx);
}

fn main() {
    let cluster = servers::cluster_of(SERVERS, |_| 16);
    let snapshot = cluster.snapshot();
    for backend in &snapshot.backends {
        one_request(&cluster, backend);
    }

    let mut board = Board::default();
    let ui = Ui::default();
    let decisions = Default::default();
    let mut terminal = Terminal::new(TestBackend::new(160, 40)).unwrap();
    let frame = time_per_call(20, || {
        let views: Vec<ServerView> = snapshot.backends.iter().map(ServerView::of).collect();
        board.sample(views, Instant::now());
        let scene = Scene {
            address: "127.0.0.1:8888",
            policy: "least-load",
            board: &board,
            ui: &ui,
            decisions: &decisions,
            log: &[],
            active: 0,
        };
        terminal.draw(|f| draw(f, &scene)).unwrap();
    });
    let metrics = time_per_call(20, || {
        let views: Vec<ServerView> = snapshot.backends.iter().map(ServerView::of).collect();
        black_box(cluster.stats().render(&views, 0));
    });
    let views: Vec<ServerView> = snapshot.backends.iter().map(ServerView::of).collect();
    let text = cluster.stats().render(&views, 0);
    let series = text.lines().filter(|l| !l.starts_with('#')).count();
    println!(
        "/metrics for {SERVERS} servers: {series} series, {} bytes",
        text.len()
    );
    println!("{SERVERS} servers, one monitor frame (sample + draw, 160x40): {frame:?}");
    println!("{SERVERS} servers, one /metrics render (baseline):            {metrics:?}");
    println!(
        "frame / metrics render: {:.2}; a frame a second is {:.2} % of one core",
        frame.as_secs_f64() / metrics.as_secs_f64(),
        frame.as_secs_f64() * 100.0
    );
}
