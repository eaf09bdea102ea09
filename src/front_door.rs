//! What a client connection may take before the router sees a request (`[limits]`): how many
//! connections may be open, how long a request header may take to arrive, how long a kept-alive
//! connection may sit idle. Slow and hostile clients (slowloris, connection floods) are cut
//! off here, before they hold a worker.
//!
//! Pingora bounds each read of a request header (60 s), not the whole header: a client sending
//! a byte every 59 s holds its connection for ever. So the request path is wrapped twice:
//!
//! - [`ConnectionGate`] (Pingora's `ServerApp`) counts open connections; one over
//!   `max_connections` gets a 503 and is closed.
//! - [`RequestGate`] (Pingora's `HttpServerApp`, around the proxy) gives each request on a
//!   connection `header_timeout` to present a whole header (plus `idle_timeout` on a
//!   kept-alive connection, whose client may first sit idle), and closes the connection when
//!   it runs out. The proxy tells it that the header arrived through the connection's user
//!   context: the router's `on_connection_reuse` fires the [`HeaderArrived`] put there.
//!
//! Header size and count limits, and the body's deadline, are the router's own (entry.rs and
//! features.rs), where an answer can still be given.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream, ServerApp};
use pingora::protocols::http::v2::server::H2Options;
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

use crate::cluster::Cluster;
use crate::entry::Router;
use crate::openai::ApiError;

/// Fired by the proxy when a request's header has been read (see the module doc).
pub struct HeaderArrived(Mutex<Option<oneshot::Sender<()>>>);

impl HeaderArrived {
    pub fn fire(&self) {
        let sender = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(sender) = sender {
            let _ = sender.send(());
        }
    }
}

/// What the router leaves in a kept-alive connection's user context: the next request on it
/// is not the first.
pub struct KeptAlive;

/// The proxy, with a deadline on each request header and the idle keep-alive timeout.
pub struct RequestGate {
    proxy: Arc<HttpProxy<Router>>,
    cluster: Arc<Cluster>,
}

/// Open connections, counted across every listener.
pub struct ConnectionGate {
    requests: Arc<RequestGate>,
    cluster: Arc<Cluster>,
    open: AtomicUsize,
}

impl ConnectionGate {
    pub fn new(proxy: HttpProxy<Router>, cluster: Arc<Cluster>) -> ConnectionGate {
        ConnectionGate {
            requests: Arc::new(RequestGate {
                proxy: Arc::new(proxy),
                cluster: Arc::clone(&cluster),
            }),
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
        self.requests.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.requests.http_cleanup().await;
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

#[async_trait]
impl HttpServerApp for RequestGate {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        let limits = self.cluster.snapshot().limits.clone();
        let kept_alive = session
            .take_connection_user_context()
            .is_some_and(|c| c.is::<KeptAlive>());
        // Pingora keeps a connection alive 60 s by default; None means it is closing (the
        // router is shutting down).
        if session.get_keepalive().is_some() && !*shutdown.borrow() {
            session.set_keepalive(Some(limits.idle_timeout.as_secs_f64().ceil() as u64));
        }
        let (arrived, header_read) = oneshot::channel();
        session
            .set_connection_user_context(Some(Box::new(HeaderArrived(Mutex::new(Some(arrived))))));
        let mut deadline = limits.header_timeout;
        if kept_alive {
            deadline += limits.idle_timeout;
        }
        let request = self.proxy.process_new_http(session, shutdown);
        tokio::pin!(request);
        tokio::select! {
            biased;
            done = &mut request => return done,
            read = header_read => {
                if read.is_err() {
                    // The proxy dropped the signal unfired: the request ends without a header
                    // read (the connection closed, a bad header); let it finish.
                    return request.await;
                }
            }
            _ = tokio::time::sleep(deadline) => {
                tracing::debug!(?deadline, "no complete request header in time (header_timeout): connection closed");
                return None;
            }
        }
        request.await
    }

    fn h2_options(&self) -> Option<H2Options> {
        self.proxy.h2_options()
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        self.proxy.server_options()
    }

    async fn http_cleanup(&self) {
        self.proxy.http_cleanup().await;
    }
}
