//! OpenTelemetry traces (opt-in): each forwarded request is a span, each attempt on a
//! server a child span, exported over OTLP/HTTP (protobuf) in batches by the SDK's own
//! thread, never on the request path.
//!
//! On with `[config] otlp_endpoint`, or the standard `OTEL_EXPORTER_OTLP_ENDPOINT` /
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (the other `OTEL_*` variables — service name,
//! headers, batch sizes, sampler — work as the SDK documents them). Off, nothing here runs: a
//! request's context holds `None`.
//!
//! The W3C `traceparent` a client sends is continued (its trace id, with the router's request
//! span as a child of the client's span), and every attempt sends the server a `traceparent`
//! naming the attempt's span, so a vLLM started with `--otlp-traces-endpoint` continues the
//! same trace. (With traces off, the client's `traceparent` is passed on untouched.)

use std::borrow::Cow;
use std::time::{Instant, SystemTime};

use http::{HeaderMap, HeaderValue};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider, Span};
use opentelemetry_sdk::Resource;

use crate::context::{Outcome, RequestContext};

/// The environment variables that turn traces on without `otlp_endpoint`.
const ENDPOINT_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// The exporter and the tracer, while traces are on.
pub struct Traces {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

/// Where traces go, if anywhere: `otlp_endpoint` (with `/v1/traces` added when it has no
/// path), or the SDK's own reading of the standard variables; `None` when neither is set or
/// `OTEL_SDK_DISABLED=true`.
fn endpoint(
    configured: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
) -> Option<Cow<'_, str>> {
    if env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return None;
    }
    match configured {
        Some(url) => {
            let has_path = url
                .parse::<http::Uri>()
                .is_ok_and(|u| !matches!(u.path(), "" | "/"));
            Some(if has_path {
                Cow::Borrowed(url)
            } else {
                Cow::Owned(format!("{}/v1/traces", url.trim_end_matches('/')))
            })
        }
        // The SDK reads the variable itself (and adds /v1/traces to the generic one).
        None => ENDPOINT_VARS
            .iter()
            .find_map(|var| env(var).filter(|v| !v.trim().is_empty()))
            .map(|_| Cow::Borrowed("")),
    }
}

impl Traces {
    /// Starts the exporter if traces are on (see [`endpoint`]). Must run outside an async
    /// runtime (the exporter's HTTP client has one of its own).
    pub fn start(configured: Option<&str>) -> anyhow::Result<Option<Traces>> {
        let env = |name: &str| std::env::var(name).ok();
        let Some(endpoint) = endpoint(configured, env) else {
            return Ok(None);
        };
        if let Some(protocol) = env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .filter(|p| p != "http/protobuf")
        {
            tracing::warn!(
                "OTEL_EXPORTER_OTLP_PROTOCOL={protocol} is not supported; traces are sent as http/protobuf"
            );
        }
        let mut exporter = SpanExporter::builder().with_http();
        if !endpoint.is_empty() {
            exporter = exporter.with_endpoint(endpoint.as_ref());
        }
        let exporter = exporter
            .build()
            .map_err(|e| anyhow::anyhow!("error: cannot set up the OTLP trace exporter: {e}"))?;
        let mut resource = Resource::builder();
        if env("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name("mvllm");
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build();
        let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "mvllm");
        let shown = if endpoint.is_empty() {
            "the OTEL_EXPORTER_OTLP_* endpoint"
        } else {
            endpoint.as_ref()
        };
        tracing::info!("traces go to {shown} (OTLP/HTTP)");
        Ok(Some(Traces { provider, tracer }))
    }

    /// Starts the trace of a request that is about to be forwarded: its span, a child of the
    /// client's `traceparent` if it sent one.
    pub fn begin(&self, ctx: &RequestContext, headers: &HeaderMap) -> RequestTrace {
        let parent = TraceContextPropagator::new().extract(&Headers(headers));
        let started = SystemTime::now() - ctx.received.elapsed();
        let span = self
            .tracer
            .span_builder(format!("{} {}", ctx.method, ctx.path))
            .with_kind(SpanKind::Server)
            .with_start_time(started)
            .start_with_context(&self.tracer, &parent);
        RequestTrace {
            tracer: self.tracer.clone(),
            request: parent.with_span(span),
            started,
            received: ctx.received,
            attempts: Vec::new(),
            traceparent: None,
        }
    }

    /// Sends what is still buffered, and stops the exporter.
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "traces not all sent at shutdown");
        }
    }
}

/// The client's headers, as the propagator reads them.
struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// One request's spans while it runs.
pub struct RequestTrace {
    tracer: SdkTracer,
    /// The context holding the request's span (and the client's, as its parent).
    request: Context,
    /// The request's arrival, on both clocks: span times are wall-clock, the context's are
    /// `Instant`s.
    started: SystemTime,
    received: Instant,
    attempts: Vec<Span>,
    /// `traceparent` for the server of the current attempt.
    traceparent: Option<HeaderValue>,
}

impl RequestTrace {
    /// Starts the span of attempt `n` (from 1) on `server`, begun at `at`.
    pub fn begin_attempt(&mut self, server: &str, n: usize, at: Instant) {
        let span = self
            .tracer
            .span_builder("attempt")
            .with_kind(SpanKind::Client)
            .with_start_time(self.wall(at))
            .with_attributes([
                KeyValue::new("server.address", server.to_string()),
                KeyValue::new("mvllm.attempt", n as i64),
            ])
            .start_with_context(&self.tracer, &self.request);
        let sc = span.span_context();
        let value = format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        );
        self.traceparent = HeaderValue::from_str(&value).ok();
        self.attempts.push(span);
    }

    /// The `traceparent` the current attempt sends its server.
    pub fn traceparent(&self) -> Option<&HeaderValue> {
        self.traceparent.as_ref()
    }

    fn wall(&self, at: Instant) -> SystemTime {
        self.started + at.saturating_duration_since(self.received)
    }

    /// Ends every span with what the finished request knows.
    pub fn end(mut self, ctx: &RequestContext) {
        let ended = self.wall(ctx.ended.unwrap_or_else(Instant::now));
        let spans = std::mem::take(&mut self.attempts);
        for (i, (mut span, attempt)) in spans.into_iter().zip(&ctx.attempts).enumerate() {
            if let Some(header) = attempt.header {
                span.add_event_with_timestamp("response header", self.wall(header), vec![]);
            }
            if let Some(result) = attempt.result {
                span.set_attribute(KeyValue::new("mvllm.result", result.as_str()));
                if let crate::retry::AttemptResult::Status(status) = result {
                    span.set_attribute(KeyValue::new(
                        "http.response.status_code",
                        i64::from(status),
                    ));
                }
                if result.is_error() {
                    let why = attempt
                        .why
                        .clone()
                        .unwrap_or_else(|| result.as_str().into());
                    span.set_status(Status::error(why));
                }
            }
            // An attempt lasts until the next one starts, or the request ends.
            let end = ctx
                .attempts
                .get(i + 1)
                .map_or(ended, |next| self.wall(next.started));
            span.end_with_timestamp(end);
        }
        let span = self.request.span();
        let mut attributes = vec![
            KeyValue::new("http.request.method", ctx.method.to_string()),
            KeyValue::new("url.path", ctx.path.to_string()),
            KeyValue::new("mvllm.request_id", ctx.id.as_str().to_string()),
            KeyValue::new("mvllm.outcome", ctx.outcome.as_str()),
            KeyValue::new("mvllm.attempts", ctx.attempts.len() as i64),
        ];
        if let Some(model) = &ctx.features.model {
            attributes.push(KeyValue::new("gen_ai.request.model", model.clone()));
        }
        if let Some(status) = ctx.status {
            attributes.push(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
        }
        if let Some(last) = ctx.attempts.last() {
            attributes.push(KeyValue::new(
                "mvllm.upstream",
                last.server().url.to_string(),
            ));
        }
        if let Some(n) = ctx.usage.prompt_tokens {
            attributes.push(KeyValue::new("gen_ai.usage.input_tokens", n as i64));
        }
        if let Some(n) = ctx.usage.completion_tokens {
            attributes.push(KeyValue::new("gen_ai.usage.output_tokens", n as i64));
        }
        span.set_attributes(attributes);
        if let Some(first) = ctx.first_byte {
            span.add_event_with_timestamp("first token", self.wall(first), vec![]);
        }
        if !matches!(ctx.outcome, Outcome::Ok | Outcome::ClientError) {
            span.set_status(Status::error(ctx.outcome.as_str()));
        }
        span.end_with_timestamp(ended);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traces_are_on_with_the_key_or_the_standard_variables() {
        let none = |_: &str| None;
        assert_eq!(endpoint(None, none), None, "off by default");
        assert_eq!(
            endpoint(Some("http://c:4318"), none).as_deref(),
            Some("http://c:4318/v1/traces")
        );
        assert_eq!(
            endpoint(Some("http://c:4318/custom/traces"), none).as_deref(),
            Some("http://c:4318/custom/traces")
        );
        let generic =
            |name: &str| (name == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| "http://c".into());
        assert_eq!(
            endpoint(None, generic).as_deref(),
            Some(""),
            "the SDK reads it"
        );
        let disabled = |name: &str| match name {
            "OTEL_SDK_DISABLED" => Some("true".into()),
            _ => Some("http://c".into()),
        };
        assert_eq!(endpoint(Some("http://c:4318"), disabled), None);
    }
}
