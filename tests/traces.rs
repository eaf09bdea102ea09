//! OpenTelemetry traces: the router in front of small fake vLLM servers that record the
//! `traceparent` they get, exporting to an OTLP/HTTP receiver in the test that decodes the
//! spans (protobuf) as a collector would.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use common::{client, RouterProcess};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::{
    span::SpanKind, status::StatusCode as SpanStatus, Span,
};
use prost::Message;
use serde_json::json;

const CLIENT_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const CLIENT_SPAN: &str = "b7ad6b7169203331";

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// A fake vLLM server: enough `/metrics` and `/v1/models` to be healthy, and a chat endpoint
/// that keeps each request's `traceparent` and answers with `status`.
#[derive(Clone)]
struct FakeServer {
    traceparents: Arc<Mutex<Vec<Option<String>>>>,
    status: u16,
}

impl FakeServer {
    async fn start(status: u16) -> (FakeServer, String) {
        let fake = FakeServer {
            traceparents: Arc::default(),
            status,
        };
        let app = Router::new()
            .route(
                "/metrics",
                get(|| async {
                    "vllm:num_requests_running{model_name=\"fake\"} 0\nvllm:num_requests_waiting{model_name=\"fake\"} 0\n"
                }),
            )
            .route(
                "/v1/models",
                get(|| async {
                    axum::Json(json!({"object": "list", "data": [{"id": "fake", "object": "model"}]}))
                }),
            )
            .route("/v1/chat/completions", post(chat))
            .with_state(fake.clone());
        let addr = serve(app).await;
        (fake, format!("http://{addr}"))
    }

    fn traceparents(&self) -> Vec<Option<String>> {
        self.traceparents.lock().unwrap().clone()
    }
}

async fn chat(
    State(fake): State<FakeServer>,
    headers: HeaderMap,
) -> (StatusCode, [(&'static str, &'static str); 1], String) {
    let traceparent = headers
        .get("traceparent")
        .map(|v| v.to_str().unwrap().to_string());
    fake.traceparents.lock().unwrap().push(traceparent);
    let status = StatusCode::from_u16(fake.status).unwrap();
    let body = json!({"id": "c1", "object": "chat.completion", "model": "fake",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}});
    (
        status,
        [("content-type", "application/json")],
        body.to_string(),
    )
}

/// An OTLP/HTTP trace receiver: decodes every export into spans.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
}

impl Collector {
    async fn start() -> (Collector, String) {
        let collector = Collector::default();
        let app = Router::new()
            .route("/v1/traces", post(receive))
            .with_state(collector.clone());
        let addr = serve(app).await;
        (collector, format!("http://{addr}"))
    }

    /// Waits for the spans of the trace `trace_id` (hex) until `done` says they are all in.
    async fn trace(&self, trace_id: &str, done: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        let start = Instant::now();
        loop {
            let spans: Vec<Span> = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .filter(|s| hex(&s.trace_id) == trace_id)
                .cloned()
                .collect();
            if done(&spans) {
                return spans;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the trace {trace_id} never came whole: {spans:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn receive(State(collector): State<Collector>, body: axum::body::Bytes) -> StatusCode {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return StatusCode::BAD_REQUEST;
    };
    let mut spans = collector.spans.lock().unwrap();
    for resource in request.resource_spans {
        let service = resource
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|a| a.key == "service.name")
            .and_then(|a| a.value.as_ref()?.value.clone());
        assert_eq!(service, Some(AnyValue::StringValue("mvllm".into())));
        for scope in resource.scope_spans {
            spans.extend(scope.spans);
        }
    }
    StatusCode::OK
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attributes(span: &Span) -> HashMap<String, String> {
    span.attributes
        .iter()
        .map(|a| {
            let value = match a.value.as_ref().and_then(|v| v.value.clone()) {
                Some(AnyValue::StringValue(s)) => s,
                Some(AnyValue::IntValue(i)) => i.to_string(),
                Some(AnyValue::BoolValue(b)) => b.to_string(),
                other => format!("{other:?}"),
            };
            (a.key.clone(), value)
        })
        .collect()
}

fn request_span(spans: &[Span]) -> Option<&Span> {
    spans.iter().find(|s| s.kind == SpanKind::Server as i32)
}

fn attempt_spans(spans: &[Span]) -> Vec<&Span> {
    let mut attempts: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Client as i32)
        .collect();
    attempts.sort_by_key(|s| s.start_time_unix_nano);
    attempts
}

async fn chat_through(router: &RouterProcess, traceparent: Option<&str>) -> u16 {
    let mut request = client()
        .post(router.at("/v1/chat/completions"))
        .json(&json!({"model": "fake", "messages": [{"role": "user", "content": "hi"}]}));
    if let Some(traceparent) = traceparent {
        request = request.header("traceparent", traceparent);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    response.bytes().await.unwrap();
    status
}

/// Exports go out within this (OTEL_BSP_SCHEDULE_DELAY, ms) instead of the default 5 s.
const QUICK_EXPORT: (&str, &str) = ("OTEL_BSP_SCHEDULE_DELAY", "100");

#[tokio::test(flavor = "multi_thread")]
async fn a_request_is_a_span_continuing_the_clients_trace_and_the_server_gets_the_attempts() {
    let (collector, endpoint) = Collector::start().await;
    let (server, url) = FakeServer::start(200).await;
    let router = RouterProcess::launch_with_env(
        &[(&url, 4)],
        &format!("otlp_endpoint = \"{endpoint}\"\n"),
        0,
        &[],
        &[QUICK_EXPORT],
    )
    .await;
    router.wait_healthy(1).await;

    let client_parent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    assert_eq!(chat_through(&router, Some(&client_parent)).await, 200);
    let spans = collector
        .trace(CLIENT_TRACE, |s| {
            request_span(s).is_some() && !attempt_spans(s).is_empty()
        })
        .await;
    let request = request_span(&spans).unwrap();
    assert_eq!(request.name, "POST /v1/chat/completions");
    assert_eq!(
        hex(&request.parent_span_id),
        CLIENT_SPAN,
        "a child of the client's span"
    );
    let attrs = attributes(request);
    assert_eq!(attrs["gen_ai.request.model"], "fake");
    assert_eq!(attrs["http.response.status_code"], "200");
    assert_eq!(attrs["mvllm.upstream"], url);
    assert_eq!(attrs["mvllm.attempts"], "1");
    assert_eq!(attrs["mvllm.outcome"], "ok");
    assert_eq!(attrs["gen_ai.usage.output_tokens"], "1");
    assert!(request.events.iter().any(|e| e.name == "first token"));
    assert!(request.end_time_unix_nano > request.start_time_unix_nano);

    let attempts = attempt_spans(&spans);
    assert_eq!(attempts.len(), 1);
    let attempt = attempts[0];
    assert_eq!(attempt.parent_span_id, request.span_id);
    assert_eq!(attributes(attempt)["server.address"], url);
    assert_eq!(attributes(attempt)["mvllm.result"], "delivered");
    // The server got the trace, with the attempt's span as its parent.
    let sent = format!("00-{CLIENT_TRACE}-{}-01", hex(&attempt.span_id));
    assert_eq!(server.traceparents(), [Some(sent)]);

    // Without a client traceparent, a new trace begins, and the server still gets it.
    assert_eq!(chat_through(&router, None).await, 200);
    let got = server.traceparents()[1].clone().expect("a traceparent");
    let parts: Vec<&str> = got.split('-').collect();
    assert_eq!((parts.len(), parts[0], parts[3]), (4, "00", "01"));
    assert_ne!(parts[1], CLIENT_TRACE);
    let spans = collector
        .trace(parts[1], |s| {
            request_span(s).is_some() && !attempt_spans(s).is_empty()
        })
        .await;
    assert!(
        request_span(&spans).unwrap().parent_span_id.is_empty(),
        "a root span"
    );
    assert_eq!(hex(&attempt_spans(&spans)[0].span_id), parts[2]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retried_request_has_one_span_per_attempt_the_failed_one_in_error() {
    let (collector, endpoint) = Collector::start().await;
    let (failing, failing_url) = FakeServer::start(500).await;
    let (_good, good_url) = FakeServer::start(200).await;
    // Keep the failing server in play, so that some request tries it first.
    let config = format!(
        "otlp_endpoint = \"{endpoint}\"\nfailure_threshold = 100\nejection_threshold = 0\n"
    );
    let router = RouterProcess::launch_with_env(
        &[(&failing_url, 4), (&good_url, 4)],
        &config,
        0,
        &[],
        &[QUICK_EXPORT],
    )
    .await;
    router.wait_healthy(2).await;
    // Each request tries the failing server first with probability 1/2.
    for i in 0..40 {
        let trace = format!("{:032x}", 0xabc000 + i);
        let parent = format!("00-{trace}-{CLIENT_SPAN}-01");
        assert_eq!(chat_through(&router, Some(&parent)).await, 200);
        if failing.traceparents().len() == 1 {
            let spans = collector
                .trace(&trace, |s| {
                    request_span(s).is_some() && attempt_spans(s).len() == 2
                })
                .await;
            let attempts = attempt_spans(&spans);
            let (first, second) = (attributes(attempts[0]), attributes(attempts[1]));
            assert_eq!(first["server.address"], failing_url);
            assert_eq!(first["mvllm.result"], "status_5xx");
            assert_eq!(first["http.response.status_code"], "500");
            let status = attempts[0].status.as_ref().unwrap();
            assert_eq!(status.code, SpanStatus::Error as i32);
            assert_eq!(second["server.address"], good_url);
            assert_eq!(second["mvllm.attempt"], "2");
            assert!(attempts[0].end_time_unix_nano <= attempts[1].start_time_unix_nano);
            let request = attributes(request_span(&spans).unwrap());
            assert_eq!(request["mvllm.attempts"], "2");
            assert_eq!(request["mvllm.upstream"], good_url);
            // Each server was told its own attempt's span.
            let told = failing.traceparents()[0].clone().unwrap();
            assert_eq!(told, format!("00-{trace}-{}-01", hex(&attempts[0].span_id)));
            return;
        }
    }
    panic!("40 requests and the failing server was never tried first");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_traces_off_the_clients_traceparent_passes_through() {
    let (server, url) = FakeServer::start(200).await;
    let router = RouterProcess::start(&[(&url, 4)], "").await;
    let client_parent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    assert_eq!(chat_through(&router, Some(&client_parent)).await, 200);
    assert_eq!(chat_through(&router, None).await, 200);
    assert_eq!(server.traceparents(), [Some(client_parent), None]);
}
