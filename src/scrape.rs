//! Reading what a backend reports about itself: its Prometheus `/metrics` (load) and its
//! `/v1/models` (what it serves).
//!
//! The metrics parser reads only the few families the router needs, and reads them exactly:
//! a family is matched by its whole name (vLLM's `vllm:num_requests_waiting_by_reason` is not
//! `vllm:num_requests_waiting`), every series of a family is summed (data-parallel engines and
//! several `model_name`s), the value is the first field after the labels (a timestamp or an
//! exemplar after it is ignored), and `NaN`/`Inf` samples are skipped. It walks the text once,
//! borrowing slices, with no allocation per line.

use std::time::{Duration, Instant};

use serde_json::Value;

/// Which server software the metrics came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Vllm,
    Sglang,
    LlamaCpp,
}

impl Flavor {
    pub fn name(self) -> &'static str {
        match self {
            Flavor::Vllm => "vllm",
            Flavor::Sglang => "sglang",
            Flavor::LlamaCpp => "llama.cpp",
        }
    }
}

/// A backend's load, from one scrape.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadSample {
    pub flavor: Flavor,
    /// Requests being decoded or prefilled, summed over engines.
    pub running: f64,
    /// Requests queued, summed over engines.
    pub waiting: f64,
    /// KV cache in use, 0..=1, averaged over engines; `None` if not reported.
    pub kv_cache_usage: Option<f64>,
    /// The KV cache's size in tokens, all engines together (vLLM's `cache_config_info`:
    /// `num_gpu_blocks` × `block_size`); `None` if not reported.
    pub kv_tokens: Option<f64>,
    /// Prompt tokens looked up in the prefix cache, and of those found there, since the
    /// server started (vLLM's `prefix_cache_queries_total` / `prefix_cache_hits_total`).
    pub prefix_cache: Option<PrefixCacheCounters>,
    /// Each data-parallel engine's load, by the series' `engine` label.
    pub engines: EngineLoads,
    /// The numbers are the router's own count of requests in flight, copied at the check (a
    /// server without metrics): the live count is the load, the copy only goes stale.
    pub counted_by_router: bool,
}

/// Engines whose load is kept apart (ranks past it count only in the server's totals).
pub const MAX_ENGINES: usize = 8;

/// The load of each data-parallel engine of a server: running + 0.5 × waiting for ranks
/// `0..count` (vLLM labels each engine's series `engine="N"`). `count` is 0 when the series
/// carry no `engine` label.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EngineLoads {
    pub units: [f32; MAX_ENGINES],
    pub count: u8,
}

impl EngineLoads {
    fn add(&mut self, labels: &str, units: f64) {
        let Some(rank) = label(labels, "engine").and_then(|r| r.parse::<usize>().ok()) else {
            return;
        };
        if rank < MAX_ENGINES {
            self.units[rank] += units as f32;
            self.count = self.count.max(rank as u8 + 1);
        }
    }

    /// Engine `rank`'s load, if it was reported.
    pub fn of(&self, rank: usize) -> Option<f64> {
        (rank < usize::from(self.count)).then(|| f64::from(self.units[rank]))
    }
}

/// A server's prefix-cache counters, in tokens, summed over engines.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrefixCacheCounters {
    pub queries: f64,
    pub hits: f64,
}

/// What a load family means.
#[derive(Clone, Copy)]
enum Field {
    Running,
    Waiting,
    KvUsage,
    /// vLLM V0's name for KV usage, used only when the V1 name is absent.
    KvUsageV0,
    /// vLLM's `cache_config_info`: the KV cache's shape in its labels.
    CacheConfig,
    PrefixQueries,
    PrefixHits,
}

/// The families read, by name without the exporter prefix.
fn field_of(flavor: Flavor, name: &str) -> Option<Field> {
    Some(match (flavor, name) {
        (Flavor::Vllm, "num_requests_running") => Field::Running,
        (Flavor::Vllm, "num_requests_waiting") => Field::Waiting,
        (Flavor::Vllm, "kv_cache_usage_perc") => Field::KvUsage,
        (Flavor::Vllm, "gpu_cache_usage_perc") => Field::KvUsageV0,
        (Flavor::Vllm, "cache_config_info") => Field::CacheConfig,
        (Flavor::Vllm, "prefix_cache_queries_total" | "gpu_prefix_cache_queries_total") => {
            Field::PrefixQueries
        }
        (Flavor::Vllm, "prefix_cache_hits_total" | "gpu_prefix_cache_hits_total") => {
            Field::PrefixHits
        }
        (Flavor::Sglang, "num_running_reqs") => Field::Running,
        (Flavor::Sglang, "num_queue_reqs") => Field::Waiting,
        (Flavor::Sglang, "token_usage") => Field::KvUsage,
        (Flavor::LlamaCpp, "requests_processing") => Field::Running,
        (Flavor::LlamaCpp, "requests_deferred") => Field::Waiting,
        (Flavor::LlamaCpp, "kv_cache_usage_ratio") => Field::KvUsage,
        _ => return None,
    })
}

/// Splits `vllm:name` (text format) or `vllm_name` (OpenMetrics with escaped colons).
fn split_prefix(metric: &str) -> Option<(Flavor, &str)> {
    for (prefix, flavor) in [
        ("vllm", Flavor::Vllm),
        ("sglang", Flavor::Sglang),
        ("llamacpp", Flavor::LlamaCpp),
    ] {
        if let Some(rest) = metric.strip_prefix(prefix) {
            if let Some(name) = rest.strip_prefix(':').or_else(|| rest.strip_prefix('_')) {
                return Some((flavor, name));
            }
        }
    }
    None
}

#[derive(Default, Clone, Copy)]
struct Sum {
    total: f64,
    count: u32,
}

impl Sum {
    fn add(&mut self, value: f64) {
        self.total += value;
        self.count += 1;
    }
    fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.total / self.count as f64)
    }
}

/// Why a scrape gave no load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoLoadMetrics;

impl std::fmt::Display for NoLoadMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "no vLLM, SGLang or llama.cpp load metrics (num_requests_running / num_running_reqs) in /metrics",
        )
    }
}

impl std::error::Error for NoLoadMetrics {}

/// Reads a backend's load from its `/metrics` text.
///
/// Fails only when no running-requests family has a sample: then the text is not a
/// serving engine's metrics (or the engine has not reported yet) and must not be trusted.
/// A family declared without samples (vLLM V0 before its first request) counts as absent.
pub fn parse_metrics(text: &str) -> Result<LoadSample, NoLoadMetrics> {
    let mut flavor = None;
    let mut running = Sum::default();
    let mut waiting = Sum::default();
    let mut kv = Sum::default();
    let mut kv_v0 = Sum::default();
    let mut kv_tokens = Sum::default();
    let mut prefix_queries = Sum::default();
    let mut prefix_hits = Sum::default();
    let mut engines = EngineLoads::default();

    for line in text.split('\n') {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
        let Some((line_flavor, name)) = split_prefix(&line[..name_end]) else {
            continue;
        };
        let Some(field) = field_of(line_flavor, name) else {
            continue;
        };
        let Some(value) = sample_value(&line[name_end..]) else {
            continue;
        };
        flavor.get_or_insert(line_flavor);
        match field {
            Field::Running => {
                running.add(value);
                engines.add(&line[name_end..], value);
            }
            Field::Waiting => {
                waiting.add(value);
                engines.add(&line[name_end..], 0.5 * value);
            }
            Field::KvUsage => kv.add(value),
            Field::KvUsageV0 => kv_v0.add(value),
            Field::CacheConfig => {
                let labels = &line[name_end..];
                let number = |key| label(labels, key).and_then(|v| v.parse::<f64>().ok());
                if let (Some(blocks), Some(size)) = (number("num_gpu_blocks"), number("block_size"))
                {
                    kv_tokens.add(blocks * size);
                }
            }
            Field::PrefixQueries => prefix_queries.add(value),
            Field::PrefixHits => prefix_hits.add(value),
        }
    }

    let flavor = flavor.ok_or(NoLoadMetrics)?;
    if running.count == 0 {
        return Err(NoLoadMetrics);
    }
    Ok(LoadSample {
        flavor,
        running: running.total,
        waiting: waiting.total,
        kv_cache_usage: kv.mean().or(kv_v0.mean()).map(|u| u.clamp(0.0, 1.0)),
        // One `cache_config_info` describes one engine's cache; data-parallel engines (one
        // running series each) have one each.
        kv_tokens: (kv_tokens.count > 0).then(|| {
            let engines = running.count.max(kv_tokens.count);
            kv_tokens.total / f64::from(kv_tokens.count) * f64::from(engines)
        }),
        prefix_cache: (prefix_queries.count > 0).then_some(PrefixCacheCounters {
            queries: prefix_queries.total,
            hits: prefix_hits.total,
        }),
        engines,
        counted_by_router: false,
    })
}

/// The value of label `key` in a `{labels}` text (unescaped values only: the numbers read
/// here have no escapes).
fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    let end = labels_end(labels)?;
    let mut rest = &labels[1..end - 1];
    while !rest.is_empty() {
        let (name, after) = rest.split_once("=\"")?;
        let close = after.find('"')?;
        if name.trim() == key {
            return Some(&after[..close]);
        }
        rest = after[close + 1..].trim_start_matches(',');
    }
    None
}

/// The value of a sample, given what follows the metric name: optional `{labels}`, then the
/// value; anything after it (a timestamp, an OpenMetrics exemplar) is ignored. `None` for
/// malformed lines and for values that are not finite numbers.
fn sample_value(rest: &str) -> Option<f64> {
    let rest = if rest.starts_with('{') {
        &rest[labels_end(rest)?..]
    } else {
        rest
    };
    let value = rest.split_ascii_whitespace().next()?;
    let value: f64 = value.parse().ok()?;
    (value.is_finite() && value >= 0.0).then_some(value)
}

/// The byte index just after the `}` that closes a label set starting at `s[0] == '{'`,
/// skipping over quoted values (which may contain `}` and escaped quotes).
fn labels_end(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut in_quotes = false;
    let mut i = 1;
    while i < bytes.len() {
        match (bytes[i], in_quotes) {
            (b'\\', true) => i += 1,
            (b'"', _) => in_quotes = !in_quotes,
            (b'}', false) => return Some(i + 1),
            _ => {}
        }
        i += 1;
    }
    None
}

/// A model a backend serves, with its card as the backend wrote it.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelCard {
    pub id: String,
    /// The card's JSON object, kept whole so `/v1/models` can pass vLLM's fields on.
    pub card: Value,
}

/// Reads a `/v1/models` answer (`{"object":"list","data":[{"id":…},…]}`).
pub fn parse_models(body: &[u8]) -> Result<Vec<ModelCard>, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("/v1/models is not JSON: {e}"))?;
    let data = value
        .get("data")
        .and_then(Value::as_array)
        .ok_or("/v1/models has no \"data\" list")?;
    let mut models = Vec::with_capacity(data.len());
    for card in data {
        let id = card
            .get("id")
            .and_then(Value::as_str)
            .ok_or("a /v1/models entry has no string \"id\"")?;
        models.push(ModelCard {
            id: id.to_string(),
            card: card.clone(),
        });
    }
    Ok(models)
}

/// Reads SGLang's `/get_model_info` (`{"model_path": …, "is_generation": …}`) as one model
/// card named by its path (SGLang's default served name).
pub fn parse_sglang_model_info(body: &[u8]) -> Result<Vec<ModelCard>, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("/get_model_info is not JSON: {e}"))?;
    let path = value
        .get("model_path")
        .and_then(Value::as_str)
        .ok_or("/get_model_info has no string \"model_path\"")?;
    Ok(vec![ModelCard {
        id: path.to_string(),
        card: serde_json::json!({"id": path, "object": "model", "owned_by": "sglang", "root": path}),
    }])
}

impl LoadSample {
    /// A load known only from the router's own count of requests in flight (a server that
    /// answers its health check but publishes no metrics).
    pub fn counted_by_router(flavor: Flavor, in_flight: u32) -> LoadSample {
        LoadSample {
            flavor,
            running: f64::from(in_flight),
            waiting: 0.0,
            kv_cache_usage: None,
            kv_tokens: None,
            prefix_cache: None,
            engines: EngineLoads::default(),
            counted_by_router: true,
        }
    }
}

/// Why a scrape failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScrapeError {
    /// No TCP connection (refused, unreachable, DNS).
    Connect(String),
    /// No complete answer within the timeout.
    Timeout,
    /// An answer with an error status.
    Status(u16),
    /// An answer that could not be read or understood.
    Body(String),
}

impl std::fmt::Display for ScrapeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScrapeError::Connect(why) => write!(f, "cannot connect: {why}"),
            ScrapeError::Timeout => f.write_str("timed out"),
            ScrapeError::Status(401) => f.write_str("HTTP 401: wrong or missing api_key"),
            ScrapeError::Status(code) => write!(f, "HTTP {code}"),
            ScrapeError::Body(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for ScrapeError {}

/// Fetches `/metrics` and `/v1/models` from backends over pooled keep-alive connections.
#[derive(Clone)]
pub struct Scraper {
    client: reqwest::Client,
}

/// Idle pooled connections are closed before vLLM's uvicorn would close them (5 s), so a
/// request never races the server's own idle close.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);

impl Scraper {
    /// A scraper for plain `http://` servers, or `https://` ones the system's roots trust.
    pub fn new(timeout: Duration) -> Scraper {
        Scraper::for_server(timeout, None, None).unwrap_or_else(|_| Scraper {
            client: reqwest::Client::new(),
        })
    }

    /// A scraper for one server, with its TLS trust and client certificate; `resolve` pins
    /// its TLS name to an address (see `tls::scrape_client`).
    pub fn for_server(
        timeout: Duration,
        tls: Option<&crate::config::ServerTls>,
        resolve: Option<std::net::SocketAddr>,
    ) -> Result<Scraper, String> {
        let builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .tcp_nodelay(true)
            .no_proxy();
        let client = crate::tls::scrape_client(builder, tls, resolve)?;
        Ok(Scraper { client })
    }

    async fn get(&self, url: &str, api_key: Option<&str>) -> Result<bytes::Bytes, ScrapeError> {
        self.send(self.client.get(url), api_key).await
    }

    /// POSTs a JSON body to `url` (a server's `/tokenize`) and returns the answer's body.
    pub async fn post_json(
        &self,
        url: &str,
        api_key: Option<&str>,
        body: Vec<u8>,
    ) -> Result<bytes::Bytes, ScrapeError> {
        let request = self
            .client
            .post(url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body);
        self.send(request, api_key).await
    }

    async fn send(
        &self,
        mut request: reqwest::RequestBuilder,
        api_key: Option<&str>,
    ) -> Result<bytes::Bytes, ScrapeError> {
        if let Some(key) = api_key {
            request = request.bearer_auth(key);
        }
        let classify = |e: reqwest::Error| {
            if e.is_timeout() {
                ScrapeError::Timeout
            } else if e.is_connect() {
                ScrapeError::Connect(root_cause(&e))
            } else {
                ScrapeError::Body(root_cause(&e))
            }
        };
        let response = request.send().await.map_err(classify)?;
        let status = response.status();
        if !status.is_success() {
            return Err(ScrapeError::Status(status.as_u16()));
        }
        response.bytes().await.map_err(classify)
    }

    /// The backend's load, from `<base>/metrics` (metrics need no key on vLLM, but a proxy in
    /// front of it may want one).
    pub async fn load(&self, base: &str, api_key: Option<&str>) -> Result<LoadSample, ScrapeError> {
        let body = self.get(&format!("{base}/metrics"), api_key).await?;
        let text = std::str::from_utf8(&body)
            .map_err(|_| ScrapeError::Body("/metrics is not UTF-8 text".into()))?;
        parse_metrics(text).map_err(|e| ScrapeError::Body(e.to_string()))
    }

    /// Whether `<base>/health` answers 2xx (SGLang's liveness check, for a server without
    /// metrics).
    pub async fn health(&self, base: &str, api_key: Option<&str>) -> Result<(), ScrapeError> {
        self.get(&format!("{base}/health"), api_key).await.map(drop)
    }

    /// The model an SGLang server serves, from its `<base>/get_model_info` (`model_path`).
    pub async fn sglang_model_info(
        &self,
        base: &str,
        api_key: Option<&str>,
    ) -> Result<Vec<ModelCard>, ScrapeError> {
        let body = self.get(&format!("{base}/get_model_info"), api_key).await?;
        parse_sglang_model_info(&body).map_err(ScrapeError::Body)
    }

    /// The models the backend serves, from `<base>/v1/models`.
    pub async fn models(
        &self,
        base: &str,
        api_key: Option<&str>,
    ) -> Result<Vec<ModelCard>, ScrapeError> {
        let body = self.get(&format!("{base}/v1/models"), api_key).await?;
        parse_models(&body).map_err(ScrapeError::Body)
    }
}

/// Times an async call.
pub async fn timed<T>(f: impl std::future::Future<Output = T>) -> (T, Duration) {
    let started = Instant::now();
    let value = f.await;
    (value, started.elapsed())
}

/// The innermost error message ("Connection refused (os error 111)"), not reqwest's outer one.
fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(source) = current.source() {
        current = source;
    }
    current.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/metrics");

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(format!("{FIXTURES}/{name}"))
            .unwrap_or_else(|e| panic!("fixture {name}: {e}"))
    }

    fn load(name: &str) -> LoadSample {
        parse_metrics(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    #[test]
    fn vllm_v1_sums_engines_and_ignores_waiting_by_reason() {
        for name in [
            "vllm-0.33-like_text-0.0.4_singleproc.txt",
            "vllm-0.33-like_text-0.0.4_multiproc.txt",
            "vllm-0.33-like_openmetrics_singleproc.txt",
        ] {
            let s = load(name);
            assert_eq!(s.flavor, Flavor::Vllm, "{name}");
            assert_eq!(s.running, 8.0, "{name}: 3 + 5");
            assert_eq!(s.waiting, 10.0, "{name}: 1 + 9, not the by-reason series");
            let kv = s.kv_cache_usage.unwrap();
            assert!((kv - (0.4375 + 0.9125) / 2.0).abs() < 1e-9, "{name}: {kv}");
        }
    }

    #[test]
    fn vllm_v0_names_and_lora_info() {
        let s = load("aibrix-docs_runtime-rst_v0.7-V0-lora.txt");
        assert_eq!((s.running, s.waiting), (0.0, 0.0));
        assert_eq!(s.kv_cache_usage, Some(0.0), "gpu_cache_usage_perc");
    }

    #[test]
    fn data_parallel_and_tiny_kv_values() {
        let s = load("issue-gaie-2950_data-parallel_excerpt.txt");
        assert_eq!(s.running, 0.0);
        // The excerpt holds only the KV family; complete it with a running sample.
        let text = fixture("issue-production-stack-617_v0.10.0_excerpt.txt")
            + "vllm:num_requests_running{engine=\"0\",model_name=\"m\"} 0.0\n";
        let kv = parse_metrics(&text).unwrap().kv_cache_usage.unwrap();
        assert!(kv > 0.0 && kv < 1e-4, "{kv}");
    }

    #[test]
    fn families_without_samples_are_no_load() {
        assert_eq!(
            parse_metrics(&fixture(
                "pr-functionary-263_v0.6-empty-families_excerpt.txt"
            )),
            Err(NoLoadMetrics)
        );
    }

    #[test]
    fn sglang_old_and_new_labels() {
        let s = load("issue-sglang-13485_v0.5.1_excerpt.txt");
        assert_eq!(s.flavor, Flavor::Sglang);
        assert_eq!(s.running, 1.0);
        assert_eq!(s.kv_cache_usage, Some(0.0));
        let s = load("pr-sglang-7944_v0.4.9-mixed-labels_excerpt.txt");
        assert_eq!(s.running, 0.0);
        // SGLang 0.3 exported no running gauge yet: nothing to balance on.
        assert!(parse_metrics(&fixture("pr-sglang-1853_v0.3-name-label_excerpt.txt")).is_err());
    }

    #[test]
    fn llama_cpp_including_windows_nan() {
        for name in [
            "llama-server_metrics_real-capture_n_tokens_max-era.txt",
            "llama-server_metrics_windows-nan-ind_kv-cache-era.txt",
        ] {
            let s = load(name);
            assert_eq!(s.flavor, Flavor::LlamaCpp, "{name}");
            assert_eq!((s.running, s.waiting), (0.0, 0.0), "{name}");
        }
    }

    #[test]
    fn every_fixture_parses_or_is_refused_cleanly() {
        for entry in std::fs::read_dir(FIXTURES).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            // Must not panic; either answer is fine for files that hold no load families.
            let _ = parse_metrics(&text);
        }
    }

    #[test]
    fn exact_names_timestamps_exemplars_nan_and_junk() {
        let text = "\
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name=\"a}b\",engine=\"0\"} 2 1712345678000
vllm:num_requests_running{engine=\"1\",model_name=\"x\\\"y\"} 3.0 # {trace_id=\"abc\"} 1.0
vllm:num_requests_running_total 100
vllm:num_requests_waiting{engine=\"0\"} NaN
vllm:num_requests_waiting{engine=\"1\"} +Inf
vllm:num_requests_waiting{engine=\"2\"} 4
vllm:num_requests_waiting_by_reason{reason=\"capacity\"} 50
vllm:num_requests_waiting{engine=\"3\" 7
vllm:num_requests_waiting{engine=\"4\"} -1
vllm:kv_cache_usage_perc{engine=\"0\"} 0.5
vllm:kv_cache_usage_perc_created{engine=\"0\"} 1.7e9
<html>garbage</html>
   vllm:num_requests_running 1
";
        let s = parse_metrics(text).unwrap();
        assert_eq!(s.running, 6.0);
        assert_eq!(s.waiting, 4.0);
        assert_eq!(s.kv_cache_usage, Some(0.5));
        // Per engine: running + 0.5 × waiting, by the `engine` label (the unlabelled
        // series count only in the totals).
        assert_eq!(s.engines.count, 3);
        assert_eq!(
            (
                s.engines.of(0),
                s.engines.of(1),
                s.engines.of(2),
                s.engines.of(3)
            ),
            (Some(2.0), Some(3.0), Some(2.0), None)
        );
    }

    #[test]
    fn kv_size_and_prefix_cache_counters() {
        let s = load("aibrix-docs_runtime-rst_v0.7-V0-lora.txt");
        assert_eq!(s.kv_tokens, Some(81767.0 * 16.0), "cache_config_info");
        let s = load("vllm-0.33-like_text-0.0.4_multiproc.txt");
        assert_eq!(s.kv_tokens, None, "not reported");
        let text = "\
vllm:cache_config_info{block_size=\"16\",cache_dtype=\"auto\",num_gpu_blocks=\"100\"} 1.0
vllm:num_requests_running{engine=\"0\"} 1
vllm:num_requests_running{engine=\"1\"} 1
vllm:prefix_cache_queries_total{engine=\"0\"} 4096.0
vllm:prefix_cache_queries_total{engine=\"1\"} 4096.0
vllm:prefix_cache_hits_total{engine=\"0\"} 1536.0
vllm:prefix_cache_hits_total{engine=\"1\"} 1536.0
";
        let s = parse_metrics(text).unwrap();
        assert_eq!(s.kv_tokens, Some(3200.0), "one info line, two engines");
        assert_eq!(
            s.prefix_cache,
            Some(PrefixCacheCounters {
                queries: 8192.0,
                hits: 3072.0
            })
        );
        assert_eq!(label("{a=\"1\",b=\"x}y\"}", "b"), Some("x}y"));
        assert_eq!(label("{a=\"1\"}", "b"), None);
        assert_eq!(label("{a=1}", "a"), None, "malformed");
    }

    #[test]
    fn sglang_model_info() {
        let cards =
            parse_sglang_model_info(br#"{"model_path":"qwen/qwen2.5-0.5b-instruct","tokenizer_path":"qwen/qwen2.5-0.5b-instruct","is_generation":true,"preferred_sampling_params":null,"weight_version":"default"}"#)
                .unwrap();
        assert_eq!(cards.len(), 1);
        assert_eq!(cards[0].id, "qwen/qwen2.5-0.5b-instruct");
        assert_eq!(cards[0].card["owned_by"], "sglang");
        assert!(parse_sglang_model_info(b"{}").is_err());
        assert!(parse_sglang_model_info(b"<html>").is_err());
    }

    #[test]
    fn garbage_and_empty_are_refused() {
        assert!(parse_metrics("").is_err());
        assert!(parse_metrics("<html><body>502</body></html>").is_err());
        assert!(parse_metrics("vllm:num_requests_running{engine=\"0\" 3.0").is_err());
    }

    #[test]
    fn model_lists() {
        let body = br#"{"object":"list","data":[{"id":"a","root":"r","max_model_len":4096},{"id":"lora-1","parent":"a"}]}"#;
        let models = parse_models(body).unwrap();
        assert_eq!(models.len(), 2);
        assert_eq!(models[1].id, "lora-1");
        assert_eq!(models[0].card["max_model_len"], 4096);
        assert!(parse_models(b"{}").is_err());
        assert!(parse_models(b"not json").is_err());
        assert!(parse_models(br#"{"data":[{"name":"x"}]}"#).is_err());
    }
}
