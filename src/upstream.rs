//! One exchange with one server, over the router's connection pool (pool.rs): send the request and wait
//! for the response header ([`request`]), then stream the body to the client ([`deliver`]).
//! Which server, and what to do when this fails, is decided by the caller (forward.rs) and the
//! pure decision in retry.rs; this module only does the I/O and says how it went.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::pool::UpstreamPool;
use bytes::{Bytes, BytesMut};
use http::header::CONTENT_LENGTH;
use pingora::http::ResponseHeader;
use pingora::prelude::{HttpPeer, Session};
use pingora::protocols::http::v1::client::HttpSession;
use pingora::upstreams::peer::Peer as _;
use tokio::time::timeout_at;

use crate::backend::Backend;
use crate::context::RequestContext;
use crate::headers;
use crate::openai::ApiError;
use crate::request_id::RequestId;
use crate::resume::Transcript;
use crate::retry::AttemptResult;
use crate::usage::UsageScanner;

/// How long a connection attempt may take before the next server is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Pooled upstream connections are dropped before vLLM's uvicorn (5 s keep-alive) would
/// close them, so a request never lands on a connection the server is closing.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// How much of a failed answer (5xx/429) is kept to pass on if no other server succeeds.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// A server's response header, and the connection its body comes on.
pub struct Answer {
    pub header: ResponseHeader,
    pub upstream: HttpSession,
    /// The server's key in the connection pool (`HttpPeer::reuse_hash`).
    pub pool_key: u64,
    /// Whether the connection came from the pool.
    pub reused: bool,
    /// When the connection was had (made, or taken from the pool).
    pub connected: Instant,
    /// When the request had been written.
    pub sent: Instant,
    /// When the response header arrived.
    pub received: Instant,
}

/// An attempt that got no usable header.
pub struct NoAnswer {
    pub result: AttemptResult,
    pub reused: bool,
    /// When the connection was had, if it was.
    pub connected: Option<Instant>,
    /// When the request had been written, if it was.
    pub sent: Option<Instant>,
    pub why: String,
}

fn peer_for(addr: SocketAddr, backend: &Backend) -> HttpPeer {
    let mut peer = match &backend.tls {
        None => HttpPeer::new(addr, false, String::new()),
        Some(tls) => {
            let mut peer = HttpPeer::new(addr, true, tls.server_name.clone());
            peer.options.ca = tls.ca.clone();
            peer.client_cert_key = tls.client.clone();
            peer
        }
    };
    peer.options.connection_timeout = Some(CONNECT_TIMEOUT);
    peer.options.idle_timeout = Some(POOL_IDLE_TIMEOUT);
    // No per-read timeout: a stream may pause between tokens for as long as the model takes;
    // the first-byte and whole-request deadlines bound the wait instead.
    peer.options.read_timeout = None;
    peer
}

/// Sends the request to `backend` and waits for its response header, until
/// `first_byte_deadline`, watching for the client leaving meanwhile (then the upstream
/// connection is dropped, and vLLM aborts the request).
pub async fn request(
    pool: &UpstreamPool,
    session: &mut Session,
    backend: &Backend,
    body: &Bytes,
    request_id: &RequestId,
    attempt: headers::AttemptHeaders<'_>,
    first_byte_deadline: tokio::time::Instant,
) -> Result<Box<Answer>, NoAnswer> {
    let url = &backend.cfg.url;
    let fail = |result, reused, connected, sent, why: String| NoAnswer {
        result,
        reused,
        connected,
        sent,
        why,
    };
    let Some(addr) = backend.state.addr.load_full() else {
        let why = format!("{url} has no resolved address");
        return Err(fail(AttemptResult::NoAddress, false, None, None, why));
    };
    let peer = peer_for(*addr, backend);
    let (mut upstream, reused) = match pool.get(&peer).await {
        Ok(pair) => pair,
        Err(e) => {
            let why = format!("connect to {url}: {e}");
            return Err(fail(AttemptResult::ConnectFailed, false, None, None, why));
        }
    };
    let connected_at = Instant::now();
    let connected = Some(connected_at);
    let header = headers::upstream_request(
        session.req_header(),
        &backend.headers,
        body.len(),
        request_id,
        attempt,
    );
    let send = async {
        upstream.write_request_header(Box::new(header)).await?;
        if !body.is_empty() {
            upstream.write_body(body).await?;
        }
        upstream.finish_body().await?;
        Ok::<(), Box<pingora::Error>>(())
    };
    if let Err(e) = send.await {
        let why = format!("sending to {url}: {e}");
        return Err(fail(AttemptResult::Reset, reused, connected, None, why));
    }
    let sent = Instant::now();
    // Every failure from here on: the request was written, no usable header came.
    let after_sending = |result, why| Err(fail(result, reused, connected, Some(sent), why));
    let header_read = tokio::select! {
        read = timeout_at(first_byte_deadline, upstream.read_response()) => read,
        _ = client_gone(session) => {
            return after_sending(AttemptResult::ClientGone, "the client left".into());
        }
    };
    match header_read {
        Err(_) => {
            let waited = first_byte_deadline.saturating_duration_since(sent.into());
            let why = format!("{url} sent no response header within {waited:?}");
            return after_sending(AttemptResult::FirstByteTimeout, why);
        }
        Ok(Err(e)) => {
            let why = format!("reading the response of {url}: {e}");
            return after_sending(AttemptResult::Reset, why);
        }
        Ok(Ok(_)) => {}
    }
    let Some(header) = upstream.resp_header().cloned() else {
        return after_sending(
            AttemptResult::Reset,
            format!("{url} sent no response header"),
        );
    };
    Ok(Box::new(Answer {
        header,
        upstream,
        pool_key: peer.reuse_hash(),
        reused,
        connected: connected_at,
        sent,
        received: Instant::now(),
    }))
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

/// Reads (up to 64 KiB of) a failed answer's body, to pass on if no other server succeeds.
pub async fn read_error_body(answer: &mut Answer, deadline: tokio::time::Instant) -> Bytes {
    let mut body = BytesMut::new();
    let read = async {
        while let Ok(Some(chunk)) = answer.upstream.read_body_bytes().await {
            let room = MAX_ERROR_BODY.saturating_sub(body.len());
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if room <= chunk.len() {
                break;
            }
        }
    };
    let _ = timeout_at(
        deadline.min(tokio::time::Instant::now() + Duration::from_secs(5)),
        read,
    )
    .await;
    body.freeze()
}

/// How a delivery ended: the attempt's result, why (for a failure), and whether the answer was
/// left open for a continuation (stream resumption; see resume.rs).
pub struct Delivered {
    pub result: AttemptResult,
    pub why: Option<String>,
    pub left_open: bool,
}

/// Streams the answer to the client, chunk by chunk as it arrives, until `deadline`. With a
/// `transcript` (a resumable stream), events pass whole and a server that breaks off leaves
/// the answer open for a continuation instead of ending it.
pub async fn deliver(
    pool: &UpstreamPool,
    session: &mut Session,
    ctx: &mut RequestContext,
    answer: Box<Answer>,
    routing: Option<headers::Routing<'_>>,
    transcript: Option<&mut Transcript>,
    deadline: tokio::time::Instant,
) -> Delivered {
    let header = headers::downstream_response(&answer.header, &ctx.id, routing);
    ctx.status = Some(answer.header.status.as_u16());
    ctx.responded = Some(Instant::now());
    if session
        .write_response_header(Box::new(header), false)
        .await
        .is_err()
    {
        return Delivered {
            result: AttemptResult::ClientGone,
            why: None,
            left_open: false,
        };
    }
    pump(pool, session, ctx, answer, transcript, deadline).await
}

/// Streams a server's answer body to the client (whose response header is already written).
pub async fn pump(
    pool: &UpstreamPool,
    session: &mut Session,
    ctx: &mut RequestContext,
    mut answer: Box<Answer>,
    mut transcript: Option<&mut Transcript>,
    deadline: tokio::time::Instant,
) -> Delivered {
    // The answer stays boxed (not taken apart into this future's state): a stream's future
    // is held for as long as it streams, so every byte of it counts per open stream.
    let upstream_header = &answer.header;
    let mut usage = UsageScanner::for_path(&ctx.path);
    let scan = is_json_or_sse(upstream_header);
    // A stream whose end the router writes (chunked, not a fixed length) can be ended with an
    // error event when the server breaks off; anything else can only be cut.
    let stream = is_sse(upstream_header) && !upstream_header.headers.contains_key(CONTENT_LENGTH);
    let mut ends_an_event = true;
    let ended = |result, why| Delivered {
        result,
        why,
        left_open: false,
    };
    // One timer for the whole answer, not one per chunk (a `timeout_at` per read registered
    // and removed a timer for each of a stream's events: 200,000 a second at 10,000 streams).
    let expired = tokio::time::sleep_until(deadline);
    tokio::pin!(expired);
    let result = loop {
        let read = tokio::select! {
            read = answer.upstream.read_body_bytes() => Ok(read),
            _ = &mut expired => Err(()),
        };
        match read {
            Ok(Ok(Some(chunk))) => {
                let chunk = match transcript.as_deref_mut() {
                    Some(t) => Bytes::from(t.feed(&chunk)),
                    None => chunk,
                };
                if chunk.is_empty() {
                    continue;
                }
                if scan {
                    usage.feed(&chunk);
                }
                ctx.first_byte.get_or_insert_with(Instant::now);
                ends_an_event = chunk.ends_with(b"\n\n");
                if answer.upstream.is_body_done() {
                    server_done(ctx);
                }
                if session
                    .write_response_body(Some(chunk), false)
                    .await
                    .is_err()
                {
                    // The client left: dropping the upstream connection makes vLLM abort.
                    break ended(AttemptResult::ClientGone, None);
                }
            }
            Ok(Ok(None)) => {
                server_done(ctx);
                break ended(AttemptResult::Delivered, None);
            }
            Ok(Err(e)) => {
                let why = format!("the server broke off the answer: {e}");
                if stream && transcript.as_deref().is_some_and(Transcript::can_resume) {
                    break Delivered {
                        result: AttemptResult::BrokeOff,
                        why: Some(why),
                        left_open: true,
                    };
                }
                let error = ApiError::new(502, "BadGateway", &why);
                end_broken_answer(session, stream, ends_an_event, &error).await;
                break ended(AttemptResult::BrokeOff, Some(why));
            }
            Err(_) => {
                let why = "request_timeout was reached before the answer ended".to_string();
                let error = ApiError::new(504, "GatewayTimeout", &why);
                end_broken_answer(session, stream, ends_an_event, &error).await;
                break ended(AttemptResult::DeadlineMidBody, Some(why));
            }
        }
    };
    if let Some(n) = usage.usage.prompt_tokens {
        ctx.usage.prompt_tokens = Some(n);
    }
    if let Some(n) = usage.usage.completion_tokens {
        ctx.usage.completion_tokens = Some(n);
    }
    if result.result == AttemptResult::Delivered {
        let _ = session.write_response_body(None, true).await;
        pool.put(answer.upstream, answer.pool_key).await;
    }
    result
}

/// The server's answer is whole: its load is released before the client sees the end.
fn server_done(ctx: &mut RequestContext) {
    if let Some(attempt) = ctx.attempts.last_mut() {
        attempt.server_done();
    }
}

/// Ends an answer that cannot be completed, after the client has part of it (so there is no
/// retry). A stream gets a last event in the shape vLLM and OpenAI use for errors in a stream,
/// `data: {"error": {...}}` — the OpenAI SDK raises it as an `APIError` with its message — and
/// then ends; anything else has its connection closed, so the client sees an incomplete
/// answer, never a short one with a clean end.
pub async fn end_broken_answer(
    session: &mut Session,
    stream: bool,
    ends_an_event: bool,
    error: &ApiError,
) {
    if stream {
        let mut event = Vec::with_capacity(256);
        if !ends_an_event {
            // Close the partial event first, so the error stands as an event of its own.
            event.extend_from_slice(b"\n\n");
        }
        event.extend_from_slice(b"data: ");
        event.extend_from_slice(error.to_json().as_bytes());
        event.extend_from_slice(b"\n\n");
        let written = session
            .write_response_body(Some(Bytes::from(event)), false)
            .await;
        if written.is_ok() && session.write_response_body(None, true).await.is_ok() {
            return;
        }
    }
    session.shutdown().await;
}

/// Whether an answer is a server-sent event stream.
fn is_sse(header: &ResponseHeader) -> bool {
    header
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.contains("event-stream"))
}

/// Token counts are only looked for in JSON and SSE answers.
fn is_json_or_sse(header: &ResponseHeader) -> bool {
    header
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.contains("json") || t.contains("event-stream"))
}
