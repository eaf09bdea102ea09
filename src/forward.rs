//! Forwarding one request to a backend, retrying on another while the client has seen
//! nothing, and streaming the answer back unbuffered.
//!
//! Why not Pingora's own proxy phase: Pingora replays a request body on retry only from a
//! 64 KiB buffer (bodies above it are silently not sent again), never retries a POST once
//! connected, and does not stop retrying after response headers went downstream. LLM
//! requests are POSTs with bodies far above 64 KiB. So the router reads the body once
//! (bounded by `max_body_bytes`), and runs the exchange itself with Pingora's connection
//! pool: write the request, wait for the response header (`first_byte_timeout`), and only
//! then commit to this backend by writing to the client.
//!
//! What counts against a backend's health: connect errors, resets, timeouts and 5xx. A 429
//! is retried elsewhere but is not a failure (the server is busy, not broken). A 4xx is the
//! client's problem and goes to the client unchanged.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pingora::http::{Method, RequestHeader, ResponseHeader};
use pingora::prelude::{HttpPeer, Session};
use pingora::protocols::http::v1::client::HttpSession;
use serde::Deserialize;
use tokio::time::{timeout_at, Instant};

use crate::balance::{candidates, NoBackend, RequestInfo};
use crate::cluster::Backend;
use crate::config::Settings;
use crate::openai::ApiError;
use crate::proxy::{respond, respond_error, Router};

/// How long a connection attempt may take before the next backend is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Pooled upstream connections are dropped before vLLM's uvicorn (5 s keep-alive) would
/// close them, so a request never lands on a connection the server is closing.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// How much of a failed answer (5xx/429) is kept to pass on if no other backend succeeds.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Hop-by-hop headers (RFC 9110 §7.6.1) and the ones the router sets itself.
const NOT_FORWARDED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
    "expect",
];

/// The `model` of a JSON body; the rest of the body is skipped, not built.
#[derive(Deserialize)]
struct ModelField<'a> {
    #[serde(default, borrow)]
    model: Option<std::borrow::Cow<'a, str>>,
}

/// A failed attempt, kept to answer the client if every attempt fails.
enum Failure {
    /// The backend answered with an error status (5xx or 429).
    Answered {
        header: Box<ResponseHeader>,
        body: Bytes,
    },
    /// No usable answer: connect error, reset, timeout.
    NoAnswer { status: u16, why: String },
}

/// What one attempt came to.
enum Attempt {
    /// The response went to the client (completely, or until either side broke off).
    Delivered,
    /// Nothing reached the client; another backend may be tried.
    Failed {
        failure: Failure,
        counts_against_server: bool,
    },
    /// The client left before the answer.
    ClientGone,
    /// The backend broke off after the client had part of the answer: too late to retry.
    BrokeOff(String),
}

pub async fn forward(router: &Router, session: &mut Session) {
    let settings = router.cluster.settings();
    let deadline = Instant::now() + settings.request_timeout;

    let body = match read_body(session, settings.max_body_bytes).await {
        Ok(body) => body,
        Err(Some(error)) => {
            let _ = respond_error(session, &error, &[]).await;
            return;
        }
        Err(None) => return, // the client left while sending
    };
    let model = match model_of(session.req_header(), &body) {
        Ok(model) => model,
        Err(error) => {
            let _ = respond_error(session, &error, &[]).await;
            return;
        }
    };
    let info = RequestInfo {
        model: model.as_deref(),
    };

    let attempts = 1 + settings.max_retries as usize;
    let mut tried: Vec<Arc<Backend>> = Vec::with_capacity(attempts);
    let mut last_failure = None;
    for _ in 0..attempts {
        let eligible = {
            let backends = router.cluster.backends();
            candidates(&backends, info.model, &tried)
        };
        let eligible = match eligible {
            Ok(eligible) => eligible,
            Err(NoBackend::UnknownModel(known)) if tried.is_empty() => {
                let error = unknown_model(info.model.unwrap_or_default(), &known);
                let _ = respond_error(session, &error, &[]).await;
                return;
            }
            Err(_) if tried.is_empty() => {
                let error = no_healthy_server(info.model);
                let _ = respond_error(session, &error, &[("retry-after", "2".into())]).await;
                return;
            }
            Err(_) => break, // every eligible backend has been tried
        };
        let backend = router.policy.pick(&eligible, &info);
        tried.push(Arc::clone(&backend));
        let _in_flight = backend.start_request();
        match attempt(router, &settings, session, &backend, &body, deadline).await {
            Attempt::Delivered => {
                backend.record_success();
                return;
            }
            Attempt::ClientGone => return,
            Attempt::BrokeOff(why) => {
                tracing::warn!(server = %backend.cfg.url, %why, "backend broke off mid-response");
                backend.record_failure(why, &settings);
                return;
            }
            Attempt::Failed {
                failure,
                counts_against_server,
            } => {
                let why = match &failure {
                    Failure::Answered { header, .. } => format!("HTTP {}", header.status.as_u16()),
                    Failure::NoAnswer { why, .. } => why.clone(),
                };
                tracing::warn!(server = %backend.cfg.url, %why, "attempt failed; trying another server");
                if counts_against_server {
                    backend.record_failure(why, &settings);
                }
                last_failure = Some(failure);
            }
        }
        if Instant::now() >= deadline {
            break;
        }
    }

    // Every attempt failed: pass the last backend's own answer on if it gave one.
    let _ = match last_failure {
        Some(Failure::Answered { header, body }) => {
            let content_type = header
                .headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/json")
                .to_string();
            respond(session, header.status.as_u16(), &content_type, body, &[]).await
        }
        Some(Failure::NoAnswer { status, why }) => {
            let servers: Vec<&str> = tried.iter().map(|b| b.cfg.url.as_str()).collect();
            let error = ApiError::new(
                status,
                if status == 504 {
                    "GatewayTimeout"
                } else {
                    "BadGateway"
                },
                format!(
                    "No server could answer ({} tried: {}); last error: {why}",
                    servers.len(),
                    servers.join(", ")
                ),
            );
            respond_error(session, &error, &[]).await
        }
        None => {
            respond_error(
                session,
                &no_healthy_server(info.model),
                &[("retry-after", "2".into())],
            )
            .await
        }
    };
}

fn unknown_model(model: &str, known: &[String]) -> ApiError {
    let available = if known.is_empty() {
        "none".to_string()
    } else {
        known.join(", ")
    };
    ApiError::not_found(format!(
        "The model `{model}` does not exist. Available models: {available}."
    ))
    .with_param("model")
}

fn no_healthy_server(model: Option<&str>) -> ApiError {
    let message = match model {
        Some(m) => {
            format!("No healthy server is available for model `{m}` right now; try again shortly.")
        }
        None => "No healthy server is available right now; try again shortly.".to_string(),
    };
    ApiError::new(503, "ServiceUnavailableError", message)
}

/// Reads the whole request body. `Err(Some)` is an error to answer; `Err(None)` means the
/// client went away.
async fn read_body(session: &mut Session, limit: u64) -> Result<Bytes, Option<ApiError>> {
    let too_large = || {
        ApiError::new(413, "RequestEntityTooLarge", format!("The request body is larger than the router's limit of {limit} bytes (max_body_bytes)."))
    };
    let declared = session
        .req_header()
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(Some(too_large()));
    }
    let mut body = BytesMut::with_capacity(declared.unwrap_or(0) as usize);
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() as u64 + chunk.len() as u64 > limit {
                    return Err(Some(too_large()));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body.freeze()),
            Err(e) => {
                tracing::debug!(error = %e, "reading the request body failed");
                return Err(None);
            }
        }
    }
}

/// The request's `model`, read from a JSON body. Bodies that are not JSON objects
/// (multipart uploads, empty GETs) have none and are routed by load alone. The content type
/// is not trusted either way: `curl -d` sends JSON labelled as a form.
fn model_of(header: &RequestHeader, body: &[u8]) -> Result<Option<String>, ApiError> {
    let content_type = header
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    let is_json = content_type.contains("json") || first == Some(&b'{');
    if body.is_empty() || !is_json || content_type.starts_with("multipart/") {
        return Ok(None);
    }
    match serde_json::from_slice::<ModelField>(body) {
        Ok(field) => Ok(field.model.map(|m| m.into_owned())),
        Err(e) if e.is_data() => Err(ApiError::bad_request(format!(
            "The request body does not match the API: {e}"
        ))
        .with_param("model")),
        Err(e) => Err(ApiError::bad_request(format!(
            "The request body is not valid JSON: {e}"
        ))),
    }
}

/// The request as it goes to `backend`.
fn upstream_request(
    original: &RequestHeader,
    backend: &Backend,
    body_len: usize,
) -> pingora::Result<RequestHeader> {
    let path = original
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut request = RequestHeader::build(
        original.method.clone(),
        path.as_bytes(),
        Some(original.headers.len() + 2),
    )?;
    for (name, value) in original.headers.iter() {
        if NOT_FORWARDED.contains(&name.as_str()) {
            continue;
        }
        if name == "authorization" && backend.cfg.api_key.is_some() {
            continue;
        }
        request.append_header(name.clone(), value.clone())?;
    }
    let authority = backend.cfg.url.trim_start_matches("http://");
    request.insert_header("host", authority)?;
    if let Some(key) = &backend.cfg.api_key {
        request.insert_header("authorization", format!("Bearer {key}"))?;
    }
    let has_body =
        body_len > 0 || matches!(original.method, Method::POST | Method::PUT | Method::PATCH);
    if has_body {
        request.insert_header("content-length", body_len.to_string())?;
    }
    Ok(request)
}

/// One try on one backend.
async fn attempt(
    router: &Router,
    settings: &Settings,
    session: &mut Session,
    backend: &Backend,
    body: &Bytes,
    deadline: Instant,
) -> Attempt {
    let no_answer = |status: u16, why: String, counts: bool| Attempt::Failed {
        failure: Failure::NoAnswer { status, why },
        counts_against_server: counts,
    };
    let Some(addr) = backend.addr.load_full() else {
        return no_answer(
            502,
            format!("{} has no resolved address", backend.cfg.url),
            true,
        );
    };
    let peer = peer_for(*addr);
    let (mut upstream, reused) = match router.connector.get_http_session(&peer).await {
        Ok(pair) => pair,
        Err(e) => return no_answer(502, format!("connect to {}: {e}", backend.cfg.url), true),
    };
    // A pooled connection the server closed while idle is not the server's fault.
    let counts = !reused;

    let request = match upstream_request(session.req_header(), backend, body.len()) {
        Ok(request) => request,
        Err(e) => {
            return no_answer(
                502,
                format!("cannot build the upstream request: {e}"),
                false,
            )
        }
    };
    let send = async {
        upstream.write_request_header(Box::new(request)).await?;
        if !body.is_empty() {
            upstream.write_body(body).await?;
        }
        upstream.finish_body().await?;
        Ok::<(), Box<pingora::Error>>(())
    };
    if let Err(e) = send.await {
        return no_answer(502, format!("sending to {}: {e}", backend.cfg.url), counts);
    }

    // Wait for the response header, watching for the client leaving meanwhile (then the
    // upstream connection is dropped, and vLLM aborts the request).
    let first_byte_deadline = deadline.min(Instant::now() + settings.first_byte_timeout);
    let header_read = tokio::select! {
        read = timeout_at(first_byte_deadline, upstream.read_response()) => read,
        _ = client_gone(session) => return Attempt::ClientGone,
    };
    match header_read {
        Err(_) => {
            return no_answer(
                504,
                format!(
                    "{} sent no response header within {:?}",
                    backend.cfg.url, settings.first_byte_timeout
                ),
                true,
            )
        }
        Ok(Err(e)) => {
            return no_answer(
                502,
                format!("reading the response of {}: {e}", backend.cfg.url),
                counts,
            )
        }
        Ok(Ok(_)) => {}
    }
    let Some(header) = upstream.resp_header().cloned() else {
        return no_answer(
            502,
            format!("{} sent no response header", backend.cfg.url),
            counts,
        );
    };
    let status = header.status.as_u16();
    if status >= 500 || status == 429 {
        let body = read_error_body(&mut upstream, deadline).await;
        return Attempt::Failed {
            failure: Failure::Answered {
                header: Box::new(header),
                body,
            },
            counts_against_server: status >= 500,
        };
    }

    // Committed: from here on the client gets this backend's answer, whatever happens.
    deliver(router, session, upstream, header, &peer, deadline).await
}

fn peer_for(addr: SocketAddr) -> HttpPeer {
    let mut peer = HttpPeer::new(addr, false, String::new());
    peer.options.connection_timeout = Some(CONNECT_TIMEOUT);
    peer.options.idle_timeout = Some(POOL_IDLE_TIMEOUT);
    // No per-read timeout: a stream may pause between tokens for as long as the model takes;
    // the first-byte and whole-request deadlines bound the wait instead.
    peer.options.read_timeout = None;
    peer
}

/// Completes when the client closes its connection (it has sent its whole request).
async fn client_gone(session: &mut Session) {
    loop {
        match session.read_body_or_idle(true).await {
            Err(_) => return,
            // Bytes of a next pipelined request: not a disconnect, keep waiting.
            Ok(_) => tokio::task::yield_now().await,
        }
    }
}

async fn read_error_body(upstream: &mut HttpSession, deadline: Instant) -> Bytes {
    let mut body = BytesMut::new();
    let read = async {
        while let Ok(Some(chunk)) = upstream.read_body_bytes().await {
            let room = MAX_ERROR_BODY.saturating_sub(body.len());
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if room <= chunk.len() {
                break;
            }
        }
    };
    let _ = timeout_at(deadline.min(Instant::now() + Duration::from_secs(5)), read).await;
    body.freeze()
}

/// Streams the backend's answer to the client, chunk by chunk as it arrives.
async fn deliver(
    router: &Router,
    session: &mut Session,
    mut upstream: HttpSession,
    upstream_header: ResponseHeader,
    peer: &HttpPeer,
    deadline: Instant,
) -> Attempt {
    let mut header =
        ResponseHeader::build(upstream_header.status, Some(upstream_header.headers.len()))
            .expect("building a response header from a valid status cannot fail");
    for (name, value) in upstream_header.headers.iter() {
        let name_str = name.as_str();
        if matches!(
            name_str,
            "connection" | "keep-alive" | "proxy-connection" | "te" | "trailer" | "upgrade"
        ) {
            continue;
        }
        let _ = header.append_header(name.clone(), value.clone());
    }
    if session
        .write_response_header(Box::new(header), false)
        .await
        .is_err()
    {
        return Attempt::ClientGone;
    }
    loop {
        match timeout_at(deadline, upstream.read_body_bytes()).await {
            Ok(Ok(Some(chunk))) => {
                if session
                    .write_response_body(Some(chunk), false)
                    .await
                    .is_err()
                {
                    // The client left: dropping the upstream connection makes vLLM abort.
                    return Attempt::ClientGone;
                }
            }
            Ok(Ok(None)) => break,
            Ok(Err(e)) => {
                // The client has bytes already, so no retry: close its connection so it sees
                // an incomplete answer, not a clean end.
                session.shutdown().await;
                return Attempt::BrokeOff(format!("broke off mid-response: {e}"));
            }
            Err(_) => {
                tracing::warn!(server = %peer, "request_timeout reached mid-response");
                session.shutdown().await;
                return Attempt::Delivered;
            }
        }
    }
    let _ = session.write_response_body(None, true).await;
    router
        .connector
        .release_http_session(upstream, peer, Some(POOL_IDLE_TIMEOUT))
        .await;
    Attempt::Delivered
}
