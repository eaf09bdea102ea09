//! The simulator's `/metrics`: vLLM's metric families, written the way vLLM writes them.
//!
//! vLLM exposes its metrics through Python's prometheus_client, and routers (ours included)
//! parse that text. The Rust `prometheus` crate cannot reproduce it: prometheus_client prints
//! floats as Python does (`3.0`, `1.79e+09`), adds a `_created` gauge family after every counter
//! and histogram, and sorts labels by name. A router must cope with all of that, so the
//! simulator writes the same text (compare ../shared/fixtures/metrics/vllm-*.txt).
//!
//! Each engine owns its [`EngineMetrics`] and is its only writer; `/metrics` only reads.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// vLLM's bucket bounds (vllm/v1/metrics/loggers.py).
const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
const LATENCY_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];
const ITERATION_TOKEN_BUCKETS: &[f64] = &[
    1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0,
];

/// Why a request finished, as in `vllm:request_success_total{finished_reason=…}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishedReason {
    Stop = 0,
    Length = 1,
    Abort = 2,
}

const FINISHED_REASONS: [&str; 5] = ["stop", "length", "abort", "error", "repetition"];

/// A single-writer f64 cell.
#[derive(Debug, Default)]
pub struct F64Cell(AtomicU64);

impl F64Cell {
    pub fn set(&self, value: f64) {
        self.0.store(value.to_bits(), Relaxed);
    }
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Relaxed))
    }
}

/// A cumulative histogram written by one task.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum: F64Cell,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum: F64Cell::default(),
        }
    }

    pub fn observe(&self, value: f64) {
        if let Some(i) = self.bounds.iter().position(|&b| value <= b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum.set(self.sum.get() + value);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Relaxed)
    }
}

/// The series of one engine (`engine="N"`).
#[derive(Debug)]
pub struct EngineMetrics {
    pub running: AtomicU64,
    pub waiting: AtomicU64,
    pub kv_cache_usage: F64Cell,
    pub prefix_cache_queries: AtomicU64,
    pub prefix_cache_hits: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub generation_tokens: AtomicU64,
    pub preemptions: AtomicU64,
    finished: [AtomicU64; FINISHED_REASONS.len()],
    pub time_to_first_token: Histogram,
    pub e2e_latency: Histogram,
    pub queue_time: Histogram,
    pub iteration_tokens: Histogram,
}

impl EngineMetrics {
    fn new() -> Self {
        EngineMetrics {
            running: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
            kv_cache_usage: F64Cell::default(),
            prefix_cache_queries: AtomicU64::new(0),
            prefix_cache_hits: AtomicU64::new(0),
            prompt_tokens: AtomicU64::new(0),
            generation_tokens: AtomicU64::new(0),
            preemptions: AtomicU64::new(0),
            finished: Default::default(),
            time_to_first_token: Histogram::new(TTFT_BUCKETS),
            e2e_latency: Histogram::new(LATENCY_BUCKETS),
            queue_time: Histogram::new(LATENCY_BUCKETS),
            iteration_tokens: Histogram::new(ITERATION_TOKEN_BUCKETS),
        }
    }

    pub fn count_finished(&self, reason: FinishedReason) {
        self.finished[reason as usize].fetch_add(1, Relaxed);
    }

    pub fn finished(&self, reason: FinishedReason) -> u64 {
        self.finished[reason as usize].load(Relaxed)
    }
}

/// All of a simulated server's metrics.
#[derive(Debug)]
pub struct SimMetrics {
    model_name: String,
    block_size: usize,
    num_gpu_blocks: usize,
    created: f64,
    engines: Vec<Arc<EngineMetrics>>,
}

impl SimMetrics {
    pub fn new(model_name: &str, engines: usize, block_size: usize, num_gpu_blocks: usize) -> Self {
        SimMetrics {
            model_name: model_name.to_string(),
            block_size,
            num_gpu_blocks,
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
            engines: (0..engines)
                .map(|_| Arc::new(EngineMetrics::new()))
                .collect(),
        }
    }

    pub fn engine(&self, index: usize) -> Arc<EngineMetrics> {
        Arc::clone(&self.engines[index])
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut out = Writer {
            text: String::with_capacity(24 * 1024),
            model: escape_label(&self.model_name),
        };
        let info = format!(
            "block_size=\"{}\",cache_dtype=\"auto\",enable_prefix_caching=\"True\",num_gpu_blocks=\"{}\"",
            self.block_size, self.num_gpu_blocks
        );
        out.header(
            "vllm:cache_config_info",
            "Information of the LLMEngine CacheConfig",
            "gauge",
        );
        let _ = writeln!(out.text, "vllm:cache_config_info{{{info}}} 1.0");

        let e = &self.engines;
        out.gauge(
            e,
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            |m| m.running.load(Relaxed) as f64,
        );
        out.gauge(
            e,
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed.",
            |m| m.waiting.load(Relaxed) as f64,
        );
        out.header(
            "vllm:num_requests_waiting_by_reason",
            "Number of waiting requests by reason. Reason labels: 'capacity' = waiting for scheduling capacity; 'deferred' = deferred by transient constraints (LoRA budget, KV transfer, blocked status). Sum of all reasons equals vllm:num_requests_waiting.",
            "gauge",
        );
        for (i, m) in e.iter().enumerate() {
            let waiting = m.waiting.load(Relaxed) as f64;
            out.sample(
                "vllm:num_requests_waiting_by_reason",
                i,
                "reason=\"capacity\"",
                waiting,
            );
            out.sample(
                "vllm:num_requests_waiting_by_reason",
                i,
                "reason=\"deferred\"",
                0.0,
            );
        }
        out.gauge(
            e,
            "vllm:kv_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage.",
            |m| m.kv_cache_usage.get(),
        );
        out.counter(
            e,
            self.created,
            "vllm:num_preemptions",
            "Cumulative number of preemption from the engine.",
            |m| m.preemptions.load(Relaxed),
        );
        out.counter(
            e,
            self.created,
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
            |m| m.prefix_cache_queries.load(Relaxed),
        );
        out.counter(
            e,
            self.created,
            "vllm:prefix_cache_hits",
            "Prefix cache hits, in terms of number of cached tokens.",
            |m| m.prefix_cache_hits.load(Relaxed),
        );
        out.counter(
            e,
            self.created,
            "vllm:prompt_tokens",
            "Number of prefill tokens processed.",
            |m| m.prompt_tokens.load(Relaxed),
        );
        out.counter(
            e,
            self.created,
            "vllm:generation_tokens",
            "Number of generation tokens processed.",
            |m| m.generation_tokens.load(Relaxed),
        );

        let help = "Count of successfully processed requests.";
        out.header("vllm:request_success_total", help, "counter");
        for (i, m) in e.iter().enumerate() {
            for (r, reason) in FINISHED_REASONS.iter().enumerate() {
                let value = m.finished[r].load(Relaxed) as f64;
                let label = format!("finished_reason=\"{reason}\"");
                out.sample("vllm:request_success_total", i, &label, value);
            }
        }
        out.header("vllm:request_success_created", help, "gauge");
        for i in 0..e.len() {
            for reason in FINISHED_REASONS {
                let label = format!("finished_reason=\"{reason}\"");
                out.sample("vllm:request_success_created", i, &label, self.created);
            }
        }

        out.histogram(
            e,
            self.created,
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            |m| &m.time_to_first_token,
        );
        out.histogram(
            e,
            self.created,
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            |m| &m.e2e_latency,
        );
        out.histogram(
            e,
            self.created,
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            |m| &m.queue_time,
        );
        out.histogram(
            e,
            self.created,
            "vllm:iteration_tokens_total",
            "Histogram of number of tokens per engine_step.",
            |m| &m.iteration_tokens,
        );
        out.text
    }
}

impl SimMetrics {
    /// The same numbers under SGLang's names and labels, as SGLang 0.5 prints them with
    /// `--enable-metrics`: `sglang:` families, one series per data-parallel rank labelled
    /// `engine_type`, `model_name`, `pp_rank`, `tp_rank` (and `dp_rank` when there are several).
    pub fn render_sglang(&self) -> String {
        let mut t = String::with_capacity(8 * 1024);
        let model = escape_label(&self.model_name);
        let ranks = self.engines.len();
        let labels: Vec<String> = (0..ranks)
            .map(|i| {
                let dp = if ranks > 1 { format!("dp_rank=\"{i}\",") } else { String::new() };
                format!("{dp}engine_type=\"unified\",model_name=\"{model}\",pp_rank=\"0\",tp_rank=\"0\"")
            })
            .collect();
        let tokens = (self.num_gpu_blocks * self.block_size) as f64;
        let mut family =
            |name: &str, help: &str, kind: &str, value: &dyn Fn(&EngineMetrics) -> f64| {
                let _ = writeln!(t, "# HELP {name} {help}\n# TYPE {name} {kind}");
                for (engine, labels) in self.engines.iter().zip(&labels) {
                    let _ = writeln!(t, "{name}{{{labels}}} {}", python_float(value(engine)));
                }
            };
        let count = |c: &AtomicU64| c.load(Relaxed) as f64;
        family(
            "sglang:num_running_reqs",
            "The number of running requests.",
            "gauge",
            &|m| count(&m.running),
        );
        family(
            "sglang:num_used_tokens",
            "The number of used tokens.",
            "gauge",
            &|m| (m.kv_cache_usage.get() * tokens).round(),
        );
        family("sglang:token_usage", "The token usage.", "gauge", &|m| {
            m.kv_cache_usage.get()
        });
        family(
            "sglang:num_queue_reqs",
            "The number of requests in the waiting queue.",
            "gauge",
            &|m| count(&m.waiting),
        );
        family(
            "sglang:cache_hit_rate",
            "The prefix cache hit rate.",
            "gauge",
            &|m| {
                let queries = count(&m.prefix_cache_queries);
                if queries > 0.0 {
                    count(&m.prefix_cache_hits) / queries
                } else {
                    0.0
                }
            },
        );
        family(
            "sglang:max_total_num_tokens",
            "Maximum total number of tokens",
            "gauge",
            &|_| tokens,
        );
        family(
            "sglang:prompt_tokens_total",
            "Number of prefill tokens processed.",
            "counter",
            &|m| count(&m.prompt_tokens),
        );
        family(
            "sglang:generation_tokens_total",
            "Number of generation tokens processed.",
            "counter",
            &|m| count(&m.generation_tokens),
        );
        family(
            "sglang:cached_tokens_total",
            "Number of cached prompt tokens.",
            "counter",
            &|m| count(&m.prefix_cache_hits),
        );
        family(
            "sglang:num_requests_total",
            "Number of requests processed.",
            "counter",
            &|m| m.finished.iter().map(count).sum(),
        );
        for (name, help, pick) in [
            (
                "sglang:time_to_first_token_seconds",
                "Histogram of time to first token in seconds.",
                (|m: &EngineMetrics| &m.time_to_first_token) as fn(&EngineMetrics) -> &Histogram,
            ),
            (
                "sglang:e2e_request_latency_seconds",
                "Histogram of End-to-end request latency in seconds",
                |m: &EngineMetrics| &m.e2e_latency,
            ),
        ] {
            let _ = writeln!(t, "# HELP {name} {help}\n# TYPE {name} histogram");
            for (engine, labels) in self.engines.iter().zip(&labels) {
                let h = pick(engine);
                let mut cumulative = 0;
                for (bound, n) in h.bounds.iter().zip(&h.buckets) {
                    cumulative += n.load(Relaxed);
                    let _ = writeln!(
                        t,
                        "{name}_bucket{{{labels},le=\"{}\"}} {}",
                        python_float(*bound),
                        python_float(cumulative as f64)
                    );
                }
                let total = h.count.load(Relaxed) as f64;
                let _ = writeln!(
                    t,
                    "{name}_bucket{{{labels},le=\"+Inf\"}} {}",
                    python_float(total)
                );
                let _ = writeln!(t, "{name}_count{{{labels}}} {}", python_float(total));
                let _ = writeln!(t, "{name}_sum{{{labels}}} {}", python_float(h.sum.get()));
            }
        }
        t
    }
}

struct Writer {
    text: String,
    /// The escaped `model_name` label value.
    model: String,
}

impl Writer {
    fn header(&mut self, name: &str, help: &str, kind: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// One sample; labels are in name order, as prometheus_client prints them.
    fn sample(&mut self, name: &str, engine: usize, extra_label: &str, value: f64) {
        let t = &mut self.text;
        let _ = write!(t, "{name}{{engine=\"{engine}\",");
        let extra_first = !extra_label.is_empty() && extra_label < "model_name";
        if extra_first {
            let _ = write!(t, "{extra_label},");
        }
        let _ = write!(t, "model_name=\"{}\"", self.model);
        if !extra_first && !extra_label.is_empty() {
            let _ = write!(t, ",{extra_label}");
        }
        let _ = writeln!(t, "}} {}", python_float(value));
    }

    fn gauge(
        &mut self,
        engines: &[Arc<EngineMetrics>],
        name: &str,
        help: &str,
        value: impl Fn(&EngineMetrics) -> f64,
    ) {
        self.header(name, help, "gauge");
        for (i, m) in engines.iter().enumerate() {
            self.sample(name, i, "", value(m));
        }
    }

    fn counter(
        &mut self,
        engines: &[Arc<EngineMetrics>],
        created: f64,
        base: &str,
        help: &str,
        value: impl Fn(&EngineMetrics) -> u64,
    ) {
        let total = format!("{base}_total");
        self.header(&total, help, "counter");
        for (i, m) in engines.iter().enumerate() {
            self.sample(&total, i, "", value(m) as f64);
        }
        let created_name = format!("{base}_created");
        self.header(&created_name, help, "gauge");
        for i in 0..engines.len() {
            self.sample(&created_name, i, "", created);
        }
    }

    fn histogram(
        &mut self,
        engines: &[Arc<EngineMetrics>],
        created: f64,
        name: &str,
        help: &str,
        pick: impl Fn(&EngineMetrics) -> &Histogram,
    ) {
        self.header(name, help, "histogram");
        let bucket = format!("{name}_bucket");
        for (i, m) in engines.iter().enumerate() {
            let h = pick(m);
            let mut cumulative = 0;
            for (bound, count) in h.bounds.iter().zip(&h.buckets) {
                cumulative += count.load(Relaxed);
                let le = format!("le=\"{}\"", python_float(*bound));
                self.sample(&bucket, i, &le, cumulative as f64);
            }
            let count = h.count.load(Relaxed) as f64;
            self.sample(&bucket, i, "le=\"+Inf\"", count);
            self.sample(&format!("{name}_count"), i, "", count);
            self.sample(&format!("{name}_sum"), i, "", h.sum.get());
        }
        let created_name = format!("{name}_created");
        self.header(&created_name, help, "gauge");
        for i in 0..engines.len() {
            self.sample(&created_name, i, "", created);
        }
    }
}

/// Formats a float the way prometheus_client does: Python's `repr`, with an exponent once
/// there are more than six digits before the point (`1.7954647e+09`).
pub fn python_float(value: f64) -> String {
    if value.is_nan() {
        return "NaN".into();
    }
    if value.is_infinite() {
        return if value > 0.0 { "+Inf" } else { "-Inf" }.into();
    }
    let repr = format!("{value:?}");
    match repr.find('.') {
        Some(dot) if value > 0.0 && dot > 6 && !repr.contains('e') => {
            let digits = format!("{}{}", &repr[1..dot], &repr[dot + 1..]);
            let mantissa = format!("{}.{}", &repr[..1], digits);
            let mantissa = mantissa.trim_end_matches(['0', '.']);
            format!("{mantissa}e+0{}", dot - 1)
        }
        _ => repr,
    }
}

fn escape_label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_look_like_prometheus_client() {
        assert_eq!(python_float(3.0), "3.0");
        assert_eq!(python_float(0.4375), "0.4375");
        assert_eq!(python_float(4096.0), "4096.0");
        assert_eq!(python_float(1795464711.3995872), "1.7954647113995872e+09");
        assert_eq!(python_float(1795464710.44), "1.79546471044e+09");
        assert_eq!(python_float(f64::INFINITY), "+Inf");
        assert_eq!(python_float(0.001), "0.001");
    }

    #[test]
    fn renders_every_family_per_engine_with_sorted_labels() {
        let metrics = SimMetrics::new("org/m\"x", 2, 16, 100);
        let e1 = metrics.engine(1);
        e1.running.store(3, Relaxed);
        e1.time_to_first_token.observe(0.03);
        e1.count_finished(FinishedReason::Length);
        let text = metrics.render();
        assert!(text
            .contains("vllm:num_requests_running{engine=\"1\",model_name=\"org/m\\\"x\"} 3.0\n"));
        assert!(text.contains("vllm:time_to_first_token_seconds_bucket{engine=\"1\",le=\"0.02\",model_name=\"org/m\\\"x\"} 0.0\n"));
        assert!(text.contains("vllm:time_to_first_token_seconds_bucket{engine=\"1\",le=\"0.04\",model_name=\"org/m\\\"x\"} 1.0\n"));
        assert!(text.contains(
            "vllm:time_to_first_token_seconds_count{engine=\"1\",model_name=\"org/m\\\"x\"} 1.0\n"
        ));
        assert!(text.contains("vllm:request_success_total{engine=\"1\",finished_reason=\"length\",model_name=\"org/m\\\"x\"} 1.0\n"));
        assert!(text.contains("# TYPE vllm:prompt_tokens_created gauge\n"));
        assert!(text.contains("vllm:num_requests_waiting_by_reason{engine=\"0\",model_name=\"org/m\\\"x\",reason=\"capacity\"} 0.0\n"));
        for family in [
            "vllm:num_requests_waiting",
            "vllm:kv_cache_usage_perc",
            "vllm:prefix_cache_queries_total",
            "vllm:prefix_cache_hits_total",
            "vllm:generation_tokens_total",
            "vllm:num_preemptions_total",
            "vllm:e2e_request_latency_seconds",
            "vllm:request_queue_time_seconds",
        ] {
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "{family} missing"
            );
            assert!(
                text.contains(&format!("{family}{{engine=\"0\""))
                    || text.contains(&format!("{family}_bucket{{engine=\"0\"")),
                "{family} has no engine 0 series"
            );
        }
    }
}
