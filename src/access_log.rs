//! The access log: one line per request, written when its context is dropped.
//!
//! Fields: time, request id, method, path (without the query), model, the servers tried in
//! order and how each attempt ended, status, outcome, time to first byte, total time, and the
//! prompt and completion tokens when the answer told them. Never the prompt, the body, a
//! query string or a key. Text lines are `key=value` pairs; JSON lines are objects with the
//! same keys, unknown values `null` (text: `-`).
//!
//! A line is formatted into a per-thread buffer and handed whole to the log writer thread
//! (logging.rs), so writing it costs the request path one copy and no system call.

use std::cell::RefCell;
use std::fmt::Display;
use std::io::Write as _;
use std::time::SystemTime;

use tracing_appender::non_blocking::NonBlocking;

use crate::context::RequestContext;
use crate::logging::LogFormat;
use crate::stats::millis;

pub struct AccessLog {
    format: LogFormat,
    writer: NonBlocking,
}

thread_local! {
    /// Where lines are formatted, reused from request to request.
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
}

impl AccessLog {
    pub fn new(format: LogFormat, writer: NonBlocking) -> AccessLog {
        AccessLog { format, writer }
    }

    pub fn write(&self, r: &RequestContext) {
        LINE.with_borrow_mut(|line| {
            line.clear();
            match self.format {
                LogFormat::Text => fields(r, &mut Text(line)),
                LogFormat::Json => fields(r, &mut Json(line)),
            }
            let mut writer = self.writer.clone();
            let _ = writer.write_all(line);
        });
    }
}

/// Writes every field of a line, in order.
fn fields(r: &RequestContext, out: &mut impl Line) {
    out.start(humantime::format_rfc3339_micros(SystemTime::now()));
    out.text("request_id", Some(r.id.as_str()));
    out.text("method", Some(r.method.as_str()));
    out.text("path", Some(&r.path));
    out.text("client", r.client.as_deref());
    out.text("model", r.features.model.as_deref());
    out.list("servers", r.attempts.iter().map(|a| &*a.server().url));
    out.list(
        "attempts",
        r.attempts
            .iter()
            .map(|a| a.result.map_or("unfinished", |res| res.as_str())),
    );
    out.number("status", r.status);
    let outcome = match r.local {
        Some(_) => "local",
        None => r.outcome.as_str(),
    };
    out.text("outcome", Some(outcome));
    out.number("ttft_ms", r.time_to_first_byte().map(millis));
    out.number("total_ms", Some(millis(r.elapsed())));
    out.number("prompt_tokens", r.usage.prompt_tokens);
    out.number("completion_tokens", r.usage.completion_tokens);
    out.end();
}

/// One line's format.
trait Line {
    fn start(&mut self, time: impl Display);
    /// A client's or the router's string; `None` when unknown.
    fn text(&mut self, key: &str, value: Option<&str>);
    fn number(&mut self, key: &str, value: Option<impl Display>);
    fn list<'a>(&mut self, key: &str, items: impl Iterator<Item = &'a str>);
    fn end(&mut self);
}

/// `time  INFO access: key=value ...`
struct Text<'a>(&'a mut Vec<u8>);

impl Line for Text<'_> {
    fn start(&mut self, time: impl Display) {
        let _ = write!(self.0, "{time}  INFO access:");
    }
    fn text(&mut self, key: &str, value: Option<&str>) {
        match value {
            // A client's string as one token: as it is if it is plain, else quoted and
            // escaped (so a model name cannot break the line or forge another).
            Some(v) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_graphic() && b != b'"') => {
                let _ = write!(self.0, " {key}={v}");
            }
            Some(v) => {
                let _ = write!(self.0, " {key}={v:?}");
            }
            None => {
                let _ = write!(self.0, " {key}=-");
            }
        }
    }
    fn number(&mut self, key: &str, value: Option<impl Display>) {
        let _ = match value {
            Some(v) => write!(self.0, " {key}={v}"),
            None => write!(self.0, " {key}=-"),
        };
    }
    fn list<'a>(&mut self, key: &str, items: impl Iterator<Item = &'a str>) {
        let _ = write!(self.0, " {key}=");
        let mut any = false;
        for (i, item) in items.enumerate() {
            let _ = write!(self.0, "{}{item}", if i > 0 { "," } else { "" });
            any = true;
        }
        if !any {
            self.0.push(b'-');
        }
    }
    fn end(&mut self) {
        self.0.push(b'\n');
    }
}

/// `{"timestamp":…,"level":"INFO","target":"access",key:value,…}`
struct Json<'a>(&'a mut Vec<u8>);

impl Json<'_> {
    fn key(&mut self, key: &str) {
        let _ = write!(self.0, ",\"{key}\":");
    }
    /// A JSON string, escaped by serde_json.
    fn string(&mut self, value: &str) {
        let _ = serde_json::to_writer(&mut *self.0, value);
    }
}

impl Line for Json<'_> {
    fn start(&mut self, time: impl Display) {
        let _ = write!(
            self.0,
            "{{\"timestamp\":\"{time}\",\"level\":\"INFO\",\"target\":\"access\""
        );
    }
    fn text(&mut self, key: &str, value: Option<&str>) {
        self.key(key);
        match value {
            Some(v) => self.string(v),
            None => self.0.extend_from_slice(b"null"),
        }
    }
    fn number(&mut self, key: &str, value: Option<impl Display>) {
        self.key(key);
        let _ = match value {
            Some(v) => write!(self.0, "{v}"),
            None => write!(self.0, "null"),
        };
    }
    fn list<'a>(&mut self, key: &str, items: impl Iterator<Item = &'a str>) {
        self.key(key);
        self.0.push(b'[');
        for (i, item) in items.enumerate() {
            if i > 0 {
                self.0.push(b',');
            }
            self.string(item);
        }
        self.0.push(b']');
    }
    fn end(&mut self) {
        self.0.extend_from_slice(b"}\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::tests::NoFinish as Nowhere;
    use std::sync::Arc;

    fn request(model: &str) -> RequestContext {
        let mut ctx = RequestContext::new(Arc::new(Nowhere));
        let mut header =
            pingora::http::RequestHeader::build("POST", b"/v1/chat/completions?key=secret", None)
                .unwrap();
        header.insert_header("x-request-id", "log-1").unwrap();
        ctx.begin(&header, None);
        ctx.features.model = Some(model.into());
        ctx.status = Some(200);
        ctx.usage.completion_tokens = Some(3);
        ctx
    }

    fn line(r: &RequestContext, format: LogFormat) -> String {
        let mut buf = Vec::new();
        match format {
            LogFormat::Text => fields(r, &mut Text(&mut buf)),
            LogFormat::Json => fields(r, &mut Json(&mut buf)),
        }
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn text_lines_are_one_line_of_tokens() {
        let text = line(&request("llama"), LogFormat::Text);
        assert!(text.ends_with(" completion_tokens=3\n"), "{text}");
        assert!(text.contains(" request_id=log-1 method=POST path=/v1/chat/completions client=- model=llama servers=- attempts=- status=200 outcome=unfinished ttft_ms=- total_ms="), "{text}");
        assert!(!text.contains("secret"), "no query: {text}");

        let forged = line(
            &request("x\n2026-01-01 INFO access: request_id=forged"),
            LogFormat::Text,
        );
        assert_eq!(forged.matches('\n').count(), 1, "{forged}");
        assert!(
            forged.contains(r#"model="x\n2026"#),
            "quoted and escaped: {forged}"
        );
    }

    #[test]
    fn json_lines_parse_whatever_the_model_name() {
        let json = line(&request("m\"o\\d\nel"), LogFormat::Json);
        assert_eq!(json.matches('\n').count(), 1);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["model"], "m\"o\\d\nel");
        assert_eq!(v["servers"], serde_json::json!([]));
        assert_eq!(v["ttft_ms"], serde_json::Value::Null);
        assert_eq!(v["completion_tokens"], 3);
        assert_eq!(v["target"], "access");
    }
}
