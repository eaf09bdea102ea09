//! How long the router takes to read one backend's /metrics.
//!
//!   cargo bench --bench parse_metrics
//!
//! Input: the simulator's /metrics with 5 data-parallel engines (about 57 KB, vLLM's families,
//! labels and `_created` series). Baseline: only splitting the same text into lines, the least
//! any line-based parser must do. The ratio says what parsing costs on top of reading.
#[path = "timing.rs"]
mod timing;

use std::hint::black_box;

use timing::time_per_call;

use mvllm::scrape::parse_metrics;
use mvllm::sim::metrics::SimMetrics;

fn main() {
    let text = SimMetrics::new("Qwen/Qwen3-8B", 5, 16, 8192).render();
    let parsed = parse_metrics(&text).expect("the simulator's metrics parse");
    assert_eq!(parsed.running, 0.0);

    let parse = time_per_call(2_000, || {
        black_box(parse_metrics(black_box(&text)).ok());
    });
    let lines = time_per_call(2_000, || {
        black_box(black_box(&text).split('\n').count());
    });
    let mb_per_s = text.len() as f64 / parse.as_secs_f64() / 1e6;
    println!(
        "parse_metrics: {} bytes, {} lines: {:.1} us per scrape ({mb_per_s:.0} MB/s); \
         splitting into lines alone: {:.1} us; ratio {:.2}x",
        text.len(),
        text.lines().count(),
        parse.as_secs_f64() * 1e6,
        lines.as_secs_f64() * 1e6,
        parse.as_secs_f64() / lines.as_secs_f64()
    );
}
