//! `servers.toml`: the vLLM servers behind the router and the router's settings.
//!
//! The format is the Python mvllm's, so existing files keep working:
//!
//! ```toml
//! [servers]
//! servers = [
//!     { url = "http://gpu-1:8000", max_concurrent_requests = 16 },
//!     { url = "http://gpu-2:8000", max_concurrent_requests = 4, api_key = "token" },
//! ]
//!
//! [config]
//! health_check_interval = 10
//! request_timeout = 600
//! max_retries = 3
//! ```
//!
//! Every mistake is reported with the file, the line, the key and what is allowed; unknown
//! keys are mistakes too (a misspelt setting must not silently fall back to its default).

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

/// One vLLM (or SGLang) server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// `http://host:port`, without a trailing slash.
    pub url: String,
    pub host: String,
    pub port: u16,
    /// Requests the server is sized for: the denominator of its load score.
    pub max_concurrent_requests: u32,
    /// Sent to this server as `Authorization: Bearer <key>` (its `--api-key`).
    pub api_key: Option<String>,
}

/// The router's settings (`[config]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// How often each server's `/metrics` is scraped.
    pub metrics_interval: Duration,
    /// How often each server's `/v1/models` is refreshed.
    pub health_check_interval: Duration,
    /// Timeout of one scrape of `/metrics` or `/v1/models`.
    pub health_check_timeout: Duration,
    /// Consecutive failures (scrapes or real requests) that make a server unhealthy.
    pub failure_threshold: u32,
    /// Consecutive successful scrapes that make an unhealthy server healthy again.
    pub recovery_threshold: u32,
    /// Upper bound on a whole proxied request, first byte to last.
    pub request_timeout: Duration,
    /// How long a server may take to send its response headers (time to first token
    /// included, queueing included) before the request is retried elsewhere.
    pub first_byte_timeout: Duration,
    /// Further servers tried after the first one fails before any byte reached the client.
    pub max_retries: u32,
    /// Largest request body accepted (413 above it).
    pub max_body_bytes: u64,
    /// How often server host names are resolved again.
    pub dns_refresh_interval: Duration,
    /// How often the config file is compared with the running config even without file
    /// events (some network and container file systems deliver none); edits are normally
    /// picked up at once.
    pub config_reload_interval: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            metrics_interval: Duration::from_secs(1),
            health_check_interval: Duration::from_secs(10),
            health_check_timeout: Duration::from_secs(5),
            failure_threshold: 2,
            recovery_threshold: 2,
            request_timeout: Duration::from_secs(600),
            first_byte_timeout: Duration::from_secs(120),
            max_retries: 3,
            max_body_bytes: 64 * 1024 * 1024,
            dns_refresh_interval: Duration::from_secs(30),
            config_reload_interval: Duration::from_secs(30),
        }
    }
}

/// A validated `servers.toml`.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub source: PathBuf,
    pub servers: Vec<ServerConfig>,
    pub settings: Settings,
    /// Keys of the Python mvllm that are accepted but have no effect here, with why.
    pub ignored: Vec<(String, &'static str)>,
}

/// A config mistake, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.message)
    }
}

impl std::error::Error for ConfigError {}

// ------------------------------------------------------------------ the file's shape

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    servers: Option<ServersSection>,
    #[serde(default)]
    config: Option<FileSettings>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServersSection {
    #[serde(default)]
    servers: Vec<Spanned<FileServer>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileServer {
    url: Spanned<String>,
    #[serde(default)]
    max_concurrent_requests: Option<Spanned<i64>>,
    #[serde(default)]
    api_key: Option<String>,
}

/// `[config]` as written. Seconds may be integers or fractions.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    metrics_interval: Option<Spanned<f64>>,
    health_check_interval: Option<Spanned<f64>>,
    health_check_timeout: Option<Spanned<f64>>,
    failure_threshold: Option<Spanned<i64>>,
    recovery_threshold: Option<Spanned<i64>>,
    request_timeout: Option<Spanned<f64>>,
    first_byte_timeout: Option<Spanned<f64>>,
    max_retries: Option<Spanned<i64>>,
    max_body_bytes: Option<Spanned<i64>>,
    dns_refresh_interval: Option<Spanned<f64>>,
    config_reload_interval: Option<Spanned<f64>>,
    // Keys of the Python mvllm's active health check and recovery timer. Accepted so that
    // its files load; the poller's consecutive-failure/-success rule replaces them.
    auto_recovery_threshold: Option<toml::Value>,
    enable_active_health_check: Option<toml::Value>,
    health_check_max_response_time: Option<toml::Value>,
    health_check_min_success_rate: Option<toml::Value>,
    health_check_window_size: Option<toml::Value>,
    health_check_consecutive_failures: Option<toml::Value>,
}

/// Default `max_concurrent_requests`, as in the Python mvllm.
const DEFAULT_CAPACITY: i64 = 3;

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            message: format!("cannot read it: {e}"),
        })?;
        Config::parse(&text, path)
    }

    /// Validates config text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let error = |message: String| ConfigError {
            file: path.to_path_buf(),
            message,
        };
        let at = |span: std::ops::Range<usize>| format!("line {}", line_of(text, span.start));

        let file: FileConfig = toml::from_str(text).map_err(|e| {
            let message = e
                .message()
                .trim_end()
                .replace("expected f64", "expected a number")
                .replace("expected i64", "expected a whole number");
            let place = match e.span() {
                Some(span) => {
                    // A value's error names the key before it; a key's error (a duplicate,
                    // say) spans the key itself.
                    let spanned = text
                        .get(span.clone())
                        .map(str::trim)
                        .filter(|k| !k.is_empty() && k.len() <= 64 && !k.contains(['\n', '=']));
                    match key_before(text, span.start).or(spanned) {
                        Some(key) => format!("line {}, key {key}: ", line_of(text, span.start)),
                        None => format!("line {}: ", line_of(text, span.start)),
                    }
                }
                None => String::new(),
            };
            error(format!("{place}{message}"))
        })?;

        let mut servers = Vec::new();
        let mut seen = HashSet::new();
        let entries = file.servers.map(|s| s.servers).unwrap_or_default();
        for (index, entry) in entries.into_iter().enumerate() {
            let key = format!("servers.servers[{index}]");
            let server = entry.into_inner();
            let (host, port, url) = parse_server_url(server.url.get_ref())
                .map_err(|why| error(format!("{}, key {key}.url: {why}", at(server.url.span()))))?;
            if !seen.insert(url.clone()) {
                return Err(error(format!(
                    "{}, key {key}.url: {url} is listed twice; each server may appear once",
                    at(server.url.span())
                )));
            }
            let capacity = match server.max_concurrent_requests {
                None => DEFAULT_CAPACITY,
                Some(c) if (1..=1_000_000).contains(c.get_ref()) => *c.get_ref(),
                Some(c) => {
                    return Err(error(format!(
                        "{}, key {key}.max_concurrent_requests: must be a whole number from 1 to 1000000, got {}",
                        at(c.span()),
                        c.get_ref()
                    )))
                }
            };
            servers.push(ServerConfig {
                url,
                host,
                port,
                max_concurrent_requests: capacity as u32,
                api_key: server.api_key.filter(|k| !k.is_empty()),
            });
        }

        let f = file.config.unwrap_or_default();
        let d = Settings::default();
        let seconds = |name: &str, value: Option<Spanned<f64>>, default: Duration, min: f64| {
            let Some(value) = value else {
                return Ok(default);
            };
            let v = *value.get_ref();
            if !(min..=86_400.0 * 7.0).contains(&v) {
                return Err(error(format!(
                    "{}, key config.{name}: must be a number of seconds from {min} to 604800, got {v}",
                    at(value.span())
                )));
            }
            Ok(Duration::from_secs_f64(v))
        };
        let count = |name: &str, value: Option<Spanned<i64>>, default: u64, min: i64, max: i64| {
            let Some(value) = value else {
                return Ok(default);
            };
            let v = *value.get_ref();
            if !(min..=max).contains(&v) {
                return Err(error(format!(
                    "{}, key config.{name}: must be a whole number from {min} to {max}, got {v}",
                    at(value.span())
                )));
            }
            Ok(v as u64)
        };
        let settings = Settings {
            metrics_interval: seconds(
                "metrics_interval",
                f.metrics_interval,
                d.metrics_interval,
                0.05,
            )?,
            health_check_interval: seconds(
                "health_check_interval",
                f.health_check_interval,
                d.health_check_interval,
                0.1,
            )?,
            health_check_timeout: seconds(
                "health_check_timeout",
                f.health_check_timeout,
                d.health_check_timeout,
                0.01,
            )?,
            failure_threshold: count(
                "failure_threshold",
                f.failure_threshold,
                d.failure_threshold.into(),
                1,
                100,
            )? as u32,
            recovery_threshold: count(
                "recovery_threshold",
                f.recovery_threshold,
                d.recovery_threshold.into(),
                1,
                100,
            )? as u32,
            request_timeout: seconds(
                "request_timeout",
                f.request_timeout,
                d.request_timeout,
                0.01,
            )?,
            first_byte_timeout: seconds(
                "first_byte_timeout",
                f.first_byte_timeout,
                d.first_byte_timeout,
                0.01,
            )?,
            max_retries: count("max_retries", f.max_retries, d.max_retries.into(), 0, 100)? as u32,
            max_body_bytes: count(
                "max_body_bytes",
                f.max_body_bytes,
                d.max_body_bytes,
                1024,
                1 << 40,
            )?,
            dns_refresh_interval: seconds(
                "dns_refresh_interval",
                f.dns_refresh_interval,
                d.dns_refresh_interval,
                1.0,
            )?,
            config_reload_interval: seconds(
                "config_reload_interval",
                f.config_reload_interval,
                d.config_reload_interval,
                0.1,
            )?,
        };

        let why_unused = "it configured the Python mvllm's active health check; here health \
                          follows /metrics scrapes and real requests, see failure_threshold and \
                          recovery_threshold";
        let mut ignored = Vec::new();
        for (name, value) in [
            ("auto_recovery_threshold", &f.auto_recovery_threshold),
            ("enable_active_health_check", &f.enable_active_health_check),
            (
                "health_check_max_response_time",
                &f.health_check_max_response_time,
            ),
            (
                "health_check_min_success_rate",
                &f.health_check_min_success_rate,
            ),
            ("health_check_window_size", &f.health_check_window_size),
            (
                "health_check_consecutive_failures",
                &f.health_check_consecutive_failures,
            ),
        ] {
            if value.is_some() {
                ignored.push((format!("config.{name}"), why_unused));
            }
        }

        Ok(Config {
            source: path.to_path_buf(),
            servers,
            settings,
            ignored,
        })
    }
}

impl Config {
    /// A human-readable summary, for `mvllm check-config`.
    pub fn describe(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let n = self.servers.len();
        let _ = writeln!(
            out,
            "{}: valid, {n} server{}",
            self.source.display(),
            if n == 1 { "" } else { "s" }
        );
        for server in &self.servers {
            let key = if server.api_key.is_some() {
                ", api key set"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "  {:<32} capacity {}{key}",
                server.url, server.max_concurrent_requests
            );
        }
        if n == 0 {
            let _ = writeln!(
                out,
                "  (no servers: the router would answer every request with 503)"
            );
        }
        let s = &self.settings;
        let _ = writeln!(out, "settings:");
        for (name, value) in [
            ("metrics_interval", format!("{:?}", s.metrics_interval)),
            (
                "health_check_interval",
                format!("{:?}", s.health_check_interval),
            ),
            (
                "health_check_timeout",
                format!("{:?}", s.health_check_timeout),
            ),
            ("failure_threshold", s.failure_threshold.to_string()),
            ("recovery_threshold", s.recovery_threshold.to_string()),
            ("request_timeout", format!("{:?}", s.request_timeout)),
            ("first_byte_timeout", format!("{:?}", s.first_byte_timeout)),
            ("max_retries", s.max_retries.to_string()),
            ("max_body_bytes", s.max_body_bytes.to_string()),
            (
                "dns_refresh_interval",
                format!("{:?}", s.dns_refresh_interval),
            ),
            (
                "config_reload_interval",
                format!("{:?}", s.config_reload_interval),
            ),
        ] {
            let _ = writeln!(out, "  {name:<24} {value}");
        }
        for (key, why) in &self.ignored {
            let _ = writeln!(out, "note: {key} is accepted but has no effect ({why})");
        }
        out
    }
}

/// Checks a server URL: `http://host[:port]`, nothing after the authority but an optional `/`.
/// Returns (host, port, normalized url).
fn parse_server_url(url: &str) -> Result<(String, u16, String), String> {
    let allowed = "expected http://HOST[:PORT], e.g. \"http://10.0.0.5:8000\"";
    let rest = if let Some(rest) = url.strip_prefix("http://") {
        rest
    } else if url.starts_with("https://") {
        return Err(format!(
            "{url:?} uses https, which this build does not support yet; use http:// (vLLM serves plain HTTP)"
        ));
    } else {
        return Err(format!("{url:?} is not an http URL; {allowed}"));
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() || authority.contains(['/', '?', '#', '@', ' ']) {
        return Err(format!(
            "{url:?} has no host, or has a path, query or user; {allowed}"
        ));
    }
    let (host, port) = match authority.rsplit_once(':') {
        // An IPv6 literal like [::1] without a port has colons but ends with ']'.
        Some((host, port)) if !authority.ends_with(']') => {
            let port = port
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| {
                    format!("{url:?} has port {port:?}; a port is a number from 1 to 65535")
                })?;
            (host, port)
        }
        _ => (authority, 80),
    };
    if host.is_empty() {
        return Err(format!("{url:?} has no host; {allowed}"));
    }
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let normalized = format!("http://{authority}");
    Ok((host, port, normalized))
}

/// The key whose value starts at `offset`: the name before the nearest `=` on that line.
fn key_before(text: &str, offset: usize) -> Option<&str> {
    let before = text.get(..offset)?;
    let line = &before[before.rfind('\n').map_or(0, |i| i + 1)..];
    let (lhs, _) = line.rsplit_once('=')?;
    let key = lhs
        .trim_end()
        .rsplit(|c: char| c == '{' || c == ',' || c.is_whitespace())
        .next()?;
    (!key.is_empty()).then_some(key)
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("servers.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn the_python_mvllm_example_loads() {
        let text = r#"
[servers]
servers = [
    { url = "http://localhost:8801", max_concurrent_requests = 10 },
    { url = "http://localhost:8802", max_concurrent_requests = 3 },
    { url = "http://localhost:8803" },
]

[config]
health_check_interval = 10
config_reload_interval = 30
request_timeout = 30
health_check_timeout = 5
max_retries = 3
failure_threshold = 2
auto_recovery_threshold = 60
enable_active_health_check = true
health_check_max_response_time = 10.0
health_check_min_success_rate = 0.8
health_check_window_size = 10
health_check_consecutive_failures = 3
"#;
        let c = parse(text).unwrap();
        assert_eq!(c.servers.len(), 3);
        assert_eq!(c.servers[0].url, "http://localhost:8801");
        assert_eq!(
            (c.servers[0].host.as_str(), c.servers[0].port),
            ("localhost", 8801)
        );
        assert_eq!(
            c.servers[2].max_concurrent_requests, 3,
            "the seed's default"
        );
        assert_eq!(c.settings.request_timeout, Duration::from_secs(30));
        assert_eq!(c.settings.health_check_interval, Duration::from_secs(10));
        assert_eq!(c.settings.metrics_interval, Duration::from_secs(1));
        assert_eq!(c.ignored.len(), 6);
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let c = parse(include_str!("../servers.example.toml")).unwrap();
        assert_eq!(c.servers.len(), 3);
        assert!(c.ignored.is_empty(), "the example uses no ignored keys");
        assert_eq!(
            c.settings,
            Settings::default(),
            "the example shows the defaults"
        );
    }

    #[test]
    fn empty_file_means_no_servers_and_defaults() {
        let c = parse("").unwrap();
        assert!(c.servers.is_empty());
        assert_eq!(c.settings, Settings::default());
    }

    #[test]
    fn router_settings_and_api_keys() {
        let c = parse(
            "[servers]\nservers = [{ url = \"http://[::1]:9000/\", api_key = \"k\" }]\n\
             [config]\nmetrics_interval = 0.5\nmax_body_bytes = 1048576\nfirst_byte_timeout = 20\n",
        )
        .unwrap();
        assert_eq!(c.servers[0].url, "http://[::1]:9000");
        assert_eq!(c.servers[0].host, "::1");
        assert_eq!(c.servers[0].api_key.as_deref(), Some("k"));
        assert_eq!(c.settings.metrics_interval, Duration::from_millis(500));
        assert_eq!(c.settings.max_body_bytes, 1 << 20);
        assert_eq!(c.settings.first_byte_timeout, Duration::from_secs(20));
    }

    #[test]
    fn mistakes_name_file_line_key_and_what_is_allowed() {
        let unknown = parse("[config]\nmax_retrys = 3\n").unwrap_err();
        assert!(unknown.starts_with("servers.toml: line 2"), "{unknown}");
        assert!(unknown.contains("unknown field `max_retrys`"), "{unknown}");
        assert!(
            unknown.contains("max_retries"),
            "lists the allowed keys: {unknown}"
        );

        let wrong_type = parse("[config]\n\nrequest_timeout = \"30s\"\n").unwrap_err();
        assert_eq!(
            wrong_type,
            "servers.toml: line 3, key request_timeout: invalid type: string \"30s\", expected a number"
        );
        let in_table = parse(
            "[servers]\nservers = [{ url = \"http://a:1\", max_concurrent_requests = \"8\" }]\n",
        )
        .unwrap_err();
        assert!(
            in_table.contains("line 2, key max_concurrent_requests: invalid type"),
            "{in_table}"
        );

        let twice = parse("[config]\nmax_retries = 1\nmax_retries = 2\n").unwrap_err();
        assert!(
            twice.starts_with("servers.toml: line 3, key max_retries: duplicate key"),
            "{twice}"
        );

        let range = parse("[config]\nmax_retries = -1\n").unwrap_err();
        assert_eq!(
            range,
            "servers.toml: line 2, key config.max_retries: must be a whole number from 0 to 100, got -1"
        );

        let url = parse(
            "[servers]\nservers = [\n { url = \"http://a:1\" },\n { url = \"gpu-2:8000\" },\n]\n",
        )
        .unwrap_err();
        assert!(url.starts_with("servers.toml: line 4, key servers.servers[1].url: \"gpu-2:8000\" is not an http URL"), "{url}");

        let capacity =
            parse("[servers]\nservers = [{ url = \"http://a:1\", max_concurrent_requests = 0 }]\n")
                .unwrap_err();
        assert!(
            capacity.contains(
                "key servers.servers[0].max_concurrent_requests: must be a whole number from 1"
            ),
            "{capacity}"
        );

        let twice =
            parse("[servers]\nservers = [{ url = \"http://a:1\" }, { url = \"http://a:1/\" }]\n")
                .unwrap_err();
        assert!(twice.contains("listed twice"), "{twice}");

        let unknown_server_key =
            parse("[servers]\nservers = [{ url = \"http://a:1\", weight = 2 }]\n").unwrap_err();
        assert!(
            unknown_server_key.contains("unknown field `weight`"),
            "{unknown_server_key}"
        );
    }

    #[test]
    fn server_urls() {
        assert_eq!(
            parse_server_url("http://h").unwrap(),
            ("h".into(), 80, "http://h".into())
        );
        assert!(parse_server_url("https://h").unwrap_err().contains("https"));
        assert!(parse_server_url("http://h/v1").is_err());
        assert!(parse_server_url("http://h:0").is_err());
        assert!(parse_server_url("http://h:99999").is_err());
        assert!(parse_server_url("http://:80").is_err());
        assert!(parse_server_url("ftp://h").is_err());
    }
}
