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
//! - it runs the connection's requests one after another, as Pingora's own loop does, giving
//!   each `header_timeout` to present a whole header (plus `idle_timeout` on a kept-alive
//!   connection, whose client may first sit idle), and closes the connection when that runs
//!   out. The proxy tells it that a header was read: the router's `on_connection_reuse` (which
//!   Pingora calls right after reading a header, since a [`HeaderWatch`] sits in the
//!   connection's user context) calls [`header_read`], which counts on the current thread —
//!   the same thread and the same poll as the gate's own, so no allocation, lock or channel
//!   is needed per request. One timer per connection is reset for each request.
//!
//! Header size and count limits, and the body's deadline, are the router's own (entry.rs and
//! features.rs), where an answer can still be given.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, ReusedHttpStream, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Stream, ALPN};
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, Sleep};

use crate::cluster::Cluster;
use crate::entry::Router;
use crate::openai::ApiError;

/// The marker left in a connection's user context so that Pingora calls the router's
/// `on_connection_reuse` once the request header has been read.
pub struct HeaderWatch;

thread_local! {
    /// Request headers read on this thread (wrapping): see the module doc.
    static HEADERS_READ: Cell<u64> = const { Cell::new(0) };
}

/// Called by the router when a request header has been read (inside the gate's poll).
pub fn header_read() {
    HEADERS_READ.with(|n| n.set(n.get().wrapping_add(1)));
}

fn headers_read() -> u64 {
    HEADERS_READ.with(Cell::get)
}

/// The proxy, behind the connection limit, the header deadline and the idle timeout.
pub struct ConnectionGate {
    proxy: Arc<HttpProxy<Router>>,
    cluster: Arc<Cluster>,
    open: AtomicUsize,
}

impl ConnectionGate {
    pub fn new(proxy: HttpProxy<Router>, cluster: Arc<Cluster>) -> ConnectionGate {
        ConnectionGate {
            proxy: Arc::new(proxy),
            cluster,
            open: AtomicUsize::new(0),
        }
    }
}

/// Gives an open-connection count back when the connection ends, however it ends.
struct Counted<'a>(&'a AtomicUsize);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

#[async_trait]
impl ServerApp for ConnectionGate {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let open = self.open.fetch_add(1, Relaxed) + 1;
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
            // Not offered by the router's listeners; if ever negotiated, Pingora's own HTTP/2
            // handling applies.
            return self.proxy.process_new(stream, shutdown).await;
        }
        self.serve_http1(stream, shutdown).await;
        None
    }

    async fn cleanup(&self) {
        self.proxy.http_cleanup().await;
    }
}

impl ConnectionGate {
    /// The requests of one HTTP/1 connection, each with its header deadline (Pingora's own
    /// loop, `ServerApp for HttpServerApp`, with the deadline and the idle timeout added).
    async fn serve_http1(&self, stream: Stream, shutdown: &ShutdownWatch) {
        let mut session = ServerSession::new_http1(stream);
        let mut kept_alive = false;
        let timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(timer);
        loop {
            let limits = self.cluster.snapshot().limits.clone();
            // A new connection is kept alive unless the router is stopping; a reused one as the
            // proxy decided when it handed it back (it turns keep-alive off while draining).
            let keep = if kept_alive {
                session.get_keepalive().is_some()
            } else {
                !*shutdown.borrow()
            };
            let idle = limits.idle_timeout.as_secs_f64().ceil() as u64;
            session.set_keepalive(keep.then_some(idle));
            session.set_connection_user_context(Some(Box::new(HeaderWatch)));
            let mut deadline = limits.header_timeout;
            if kept_alive {
                deadline += limits.idle_timeout;
            }
            timer.as_mut().reset(Instant::now() + deadline);
            let request = self.proxy.process_new_http(session, shutdown);
            let finished = HeaderDeadline {
                request,
                timer: timer.as_mut(),
                header_read: false,
            }
            .await;
            let Some(Some(reused)) = finished else {
                if finished.is_none() {
                    tracing::debug!(
                        ?deadline,
                        "no complete request header in time (header_timeout): connection closed"
                    );
                }
                return;
            };
            let (stream, persistent) = reused.consume();
            session = ServerSession::new_http1(stream);
            if let Some(persistent) = persistent {
                persistent.apply_to_session(&mut session);
            }
            kept_alive = true;
        }
    }
}

/// A request racing its header deadline: `None` if the deadline came first (the request is
/// dropped, closing the connection), else what the proxy returned.
struct HeaderDeadline<'a, F: ?Sized> {
    request: Pin<Box<F>>,
    timer: Pin<&'a mut Sleep>,
    header_read: bool,
}

impl<F> Future for HeaderDeadline<'_, F>
where
    F: Future<Output = Option<ReusedHttpStream>> + ?Sized,
{
    type Output = Option<Option<ReusedHttpStream>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let before = headers_read();
        if let Poll::Ready(done) = self.request.as_mut().poll(cx) {
            return Poll::Ready(Some(done));
        }
        if headers_read() != before {
            self.header_read = true;
        }
        if !self.header_read && self.timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        Poll::Pending
    }
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
