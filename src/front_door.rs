//! What a client connection may take before the router sees a request (`[limits]`): how many
//! connections may be open, how long a request header may take to arrive, how long a kept-alive
//! connection may sit idle. Slow and hostile clients (slowloris, connection floods) are cut
//! off here, before they hold a worker.
//!
//! Pingora bounds each read of a request header (60 s), not the whole header: a client sending
//! a byte every 59 s holds its connection for ever. So [`ConnectionGate`] (Pingora's
//! `ServerApp`, around the proxy) serves each HTTP/1 connection itself:
//!
//! - it counts open connections; one over `max_connections` gets a 503 and is closed;
//! - it reads each request header itself, giving it `header_timeout` to arrive whole (plus
//!   `idle_timeout` on a kept-alive connection, whose client may first sit idle), and closes
//!   the connection when that runs out (one timer per connection, reset for each request);
//! - it hands each request to the [`Router`], then hands the connection back for the next one
//!   as Pingora's own loop would (keep-alive, pipelined bytes).
//!
//! The router is not run through Pingora's `HttpProxy`: every request is answered by the
//! router itself (entry.rs), so `HttpProxy` only added its per-request work around that —
//! boxing its whole request future (15.6 KB, copied for every request: a seventh of the
//! router's instructions per request in callgrind), building its module and cache contexts,
//! and its phases that the router leaves empty. Its header handling is kept, with answers in
//! OpenAI's shape: a malformed header gets a 400 saying what is wrong, `CONNECT` a 405, both
//! closing the connection, and a stopping service closes idle kept-alive connections at once.
//!
//! Header size and count limits, and the body's deadline, are the router's own (entry.rs and
//! features.rs), where an answer can still be given.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpPersistentSettings, ServerApp};
use pingora::http::Method;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::{L4BufferSettings, ListenerConfig, DEFAULT_L4_WRITE_BUFFER_SIZE};
use pingora::modules::http::HttpModules;
use pingora::prelude::Session;
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;
use pingora::ErrorType;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::cluster::Cluster;
use crate::entry::Router;
use crate::openai::ApiError;

/// A client listening endpoint on `address` (HTTPS with `tls`). Client connections read
/// straight from the socket, without Pingora's 64 KiB read buffer in front of it: every read
/// of a request already goes into a buffer of its own (the header's, the body's, or rustls'
/// for HTTPS), so that buffer only added a copy, and 64 KiB of memory for as long as the
/// connection is open — most of what a client's open stream cost (BENCHMARKS.md, streams at
/// scale). The small write buffer stays: it joins a response's header and first bytes.
pub fn listener(address: &str, tls: Option<TlsSettings>) -> ListenerConfig {
    let endpoint = ListenerConfig::tcp(address)
        .l4_buffer(L4BufferSettings::new(0, DEFAULT_L4_WRITE_BUFFER_SIZE));
    match tls {
        Some(settings) => endpoint.tls(settings),
        None => endpoint,
    }
}

/// The router, behind the connection limit, the header deadline and the idle timeout.
pub struct ConnectionGate {
    router: Router,
    cluster: Arc<Cluster>,
    open: AtomicUsize,
    /// Pingora's response modules for each request's session: none (the router compresses
    /// nothing).
    modules: HttpModules,
    /// Set when the service stops (`cleanup`): connections waiting for a next request header
    /// are closed.
    stopping: AtomicBool,
    stop: Notify,
}

impl ConnectionGate {
    pub fn new(router: Router, cluster: Arc<Cluster>) -> ConnectionGate {
        ConnectionGate {
            router,
            cluster,
            open: AtomicUsize::new(0),
            modules: HttpModules::new(),
            stopping: AtomicBool::new(false),
            stop: Notify::new(),
        }
    }

    /// Completes when the service stops.
    async fn stopped(&self) {
        let notified = self.stop.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.stopping.load(Ordering::Acquire) {
            return;
        }
        notified.await;
    }
}

/// Gives an open-connection count back when the connection ends, however it ends.
struct Counted<'a>(&'a AtomicUsize);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl ServerApp for ConnectionGate {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let open = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        let _counted = Counted(&self.open);
        let max = self.cluster.snapshot().limits.max_connections as usize;
        if open > max {
            tracing::warn!(
                open,
                max,
                "too many client connections: one refused with 503 (max_connections)"
            );
            turn_away(stream, max).await;
            return None;
        }
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            // Never offered by the router's listeners (their ALPN is HTTP/1.1 only).
            tracing::debug!("HTTP/2 negotiated on a listener that offers only HTTP/1.1: closed");
            return None;
        }
        self.serve_http1(stream, shutdown).await;
        None
    }

    async fn cleanup(&self) {
        self.stopping.store(true, Ordering::Release);
        self.stop.notify_waiters();
    }
}

impl ConnectionGate {
    /// The requests of one HTTP/1 connection, one after another, each with its header
    /// deadline (Pingora's own loop, with the deadline and the idle timeout added).
    async fn serve_http1(&self, mut stream: Stream, shutdown: &ShutdownWatch) {
        let mut persistent: Option<HttpPersistentSettings> = None;
        let timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(timer);
        loop {
            let mut session = Session::new_h1_with_modules(stream, &self.modules);
            // A new connection is kept alive unless the router is stopping; a reused one as the
            // router decided when it handed it back (it turns keep-alive off while draining).
            let kept_alive = persistent.is_some();
            let keep = match persistent.take() {
                Some(settings) => {
                    settings.apply_to_session(&mut session.downstream_session);
                    session.get_keepalive().is_some()
                }
                None => !*shutdown.borrow(),
            };
            let limits = &self.cluster.snapshot().limits;
            let idle = limits.idle_timeout.as_secs_f64().ceil() as u64;
            session.set_keepalive(keep.then_some(idle));
            let mut deadline = limits.header_timeout;
            if kept_alive {
                deadline += limits.idle_timeout;
            }
            timer.as_mut().reset(Instant::now() + deadline);
            let read = tokio::select! {
                biased; // bytes already buffered are a request, whatever else happened
                read = session.downstream_session.read_request() => read,
                () = timer.as_mut() => {
                    tracing::debug!(
                        ?deadline,
                        "no complete request header in time (header_timeout): connection closed"
                    );
                    return;
                }
                () = self.stopped() => return,
            };
            match read {
                Ok(true) => {}
                Ok(false) => return, // the client closed the connection
                Err(e) => return refuse_header(session, e).await,
            }
            if session.req_header().method == Method::CONNECT {
                // Its framing differs (RFC 9112 §6.3): refused, as Pingora would, and closed.
                let error = ApiError::new(
                    405,
                    "MethodNotAllowed",
                    "CONNECT is not served here: this is an OpenAI-compatible API, not a proxy.",
                );
                return refuse(session, &error).await;
            }
            if *shutdown.borrow() {
                session.set_keepalive(None);
            }
            let mut ctx = self.router.new_ctx();
            self.router.handle(&mut session, &mut ctx).await;
            let mut settings = HttpPersistentSettings::for_session(&session.downstream_session);
            let reusable = session.downstream_session.finish().await;
            // The request is over once its connection is handed back (the context's drop
            // records it).
            drop(ctx);
            let Ok(Some(reusable)) = reusable else {
                return;
            };
            let (next, pipelined) = reusable.into_parts();
            if let Some(bytes) = pipelined {
                settings.set_pipelined_prefix(bytes);
            }
            stream = next;
            persistent = Some(settings);
        }
    }
}

/// A header that could not be read: a 400 in OpenAI's shape if it was malformed (nothing for
/// a broken connection), then the connection is closed.
async fn refuse_header(session: Session, e: Box<pingora::Error>) {
    if matches!(e.etype, ErrorType::InvalidHTTPHeader) {
        tracing::debug!(error = %e, "malformed request header: 400, connection closed");
        let message = format!(
            "The request header is not valid HTTP/1.1: {}.",
            header_fault(&e)
        );
        refuse(session, &ApiError::new(400, "BadRequestError", message)).await;
    } else {
        tracing::debug!(error = %e, "reading a request header failed: connection closed");
        let mut session = session;
        session.downstream_session.shutdown().await;
    }
}

/// What is wrong with a malformed header, in Pingora's words but without the client's bytes
/// (Pingora's reason for a header it could not parse quotes the whole header), at most 200
/// characters.
fn header_fault(e: &pingora::Error) -> String {
    let context = e.context.as_ref().map_or("", |c| c.as_str());
    let fault = if context.is_empty() || context.starts_with("buf:") {
        e.cause
            .as_ref()
            .map_or_else(|| "it could not be parsed".to_string(), |c| c.to_string())
    } else {
        context.to_string()
    };
    fault.chars().take(200).collect()
}

/// Answers a request the router will not read further with `error` and closes the connection
/// (Pingora's error response: no keep-alive).
async fn refuse(mut session: Session, error: &ApiError) {
    let body = bytes::Bytes::from(error.to_json());
    let header = pingora::http::ResponseHeader::build(error.status, Some(2)).and_then(|mut h| {
        h.insert_header("content-type", "application/json")?;
        h.insert_header("content-length", body.len().to_string())?;
        Ok(h)
    });
    if let Ok(header) = header {
        let downstream = &mut session.downstream_session;
        let _ = downstream.write_error_response(header, body).await;
    }
    session.downstream_session.shutdown().await;
}

/// Answers a connection over the limit with 503 and closes it. Its request is read (briefly,
/// boundedly) before closing, so that the client gets the answer, not a reset.
async fn turn_away(mut stream: Stream, max: usize) {
    let error = ApiError::new(
        503,
        "ServiceUnavailableError",
        format!("The router has {max} client connections open, its limit (max_connections); try again shortly."),
    )
    .to_json();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{error}",
        error.len()
    );
    let answer = async {
        stream.write_all(response.as_bytes()).await?;
        stream.flush().await?;
        let mut sink = [0u8; 4096];
        let mut read = 0;
        while read < 64 * 1024 {
            match stream.read(&mut sink).await? {
                0 => break,
                n => read += n,
            }
        }
        Ok::<(), std::io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), answer).await;
}
