//! The access log: one line per request, written when its context is dropped.
//!
//! Fields: time, request id, method, path (without the query), model, the servers tried in
//! order and how each attempt ended, status, outcome, time to first byte, total time, and the
//! prompt and completion tokens when the answer told them. Never the prompt, the body, a
//! query string or a key. Text lines are `key=value` pairs; JSON lines are objects with the
//! same keys, unknown values `null` (text: `-`).

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::SystemTime;

use serde::Serialize;
use tracing_appender::non_blocking::NonBlocking;

use crate::context::RequestContext;
use crate::logging::LogFormat;
use crate::stats::millis;

pub struct AccessLog {
    format: LogFormat,
    writer: NonBlocking,
}

/// One line's fields.
#[derive(Serialize)]
struct Line<'a> {
    timestamp: String,
    level: &'static str,
    target: &'static str,
    request_id: &'a str,
    method: &'a str,
    path: &'a str,
    model: Option<&'a str>,
    servers: Vec<&'a str>,
    attempts: Vec<&'static str>,
    status: Option<u16>,
    outcome: &'static str,
    ttft_ms: Option<f64>,
    total_ms: f64,
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
}

impl AccessLog {
    pub fn new(format: LogFormat, writer: NonBlocking) -> AccessLog {
        AccessLog { format, writer }
    }

    pub fn write(&self, r: &RequestContext) {
        let line = Line {
            timestamp: humantime::format_rfc3339_micros(SystemTime::now()).to_string(),
            level: "INFO",
            target: "access",
            request_id: r.id.as_str(),
            method: r.method.as_str(),
            path: &r.path,
            model: r.features.model.as_deref(),
            servers: r.attempts.iter().map(|a| &*a.server().url).collect(),
            attempts: r
                .attempts
                .iter()
                .map(|a| a.result.map_or("unfinished", |res| res.as_str()))
                .collect(),
            status: r.status,
            outcome: if r.local.is_some() {
                "local"
            } else {
                r.outcome.as_str()
            },
            ttft_ms: r.time_to_first_byte().map(millis),
            total_ms: millis(r.elapsed()),
            prompt_tokens: r.usage.prompt_tokens,
            completion_tokens: r.usage.completion_tokens,
        };
        let text = match self.format {
            LogFormat::Json => match serde_json::to_string(&line) {
                Ok(json) => json + "\n",
                Err(_) => return,
            },
            LogFormat::Text => text_line(&line),
        };
        let mut writer = self.writer.clone();
        let _ = writer.write_all(text.as_bytes());
    }
}

/// A client's string as one `key=value` token: as it is if it is plain, else quoted and
/// escaped (so a model name cannot break the line or forge another).
fn quoted_if_needed(value: &str) -> String {
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_graphic() && b != b'"') {
        value.to_string()
    } else {
        format!("{value:?}")
    }
}

fn text_line(l: &Line<'_>) -> String {
    fn or_dash(value: Option<impl std::fmt::Display>) -> String {
        value.map_or("-".into(), |v| v.to_string())
    }
    let list = |items: &[&str]| {
        if items.is_empty() {
            "-".to_string()
        } else {
            items.join(",")
        }
    };
    let mut out = String::with_capacity(256);
    let _ = writeln!(
        out,
        "{}  INFO access: request_id={} method={} path={} model={} servers={} attempts={} \
         status={} outcome={} ttft_ms={} total_ms={} prompt_tokens={} completion_tokens={}",
        l.timestamp,
        l.request_id,
        l.method,
        l.path,
        l.model.map_or("-".into(), quoted_if_needed),
        list(&l.servers),
        list(&l.attempts),
        or_dash(l.status),
        l.outcome,
        or_dash(l.ttft_ms),
        l.total_ms,
        or_dash(l.prompt_tokens),
        or_dash(l.completion_tokens),
    );
    out
}
