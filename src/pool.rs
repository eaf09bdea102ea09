//! The router's idle connections to its servers, for the next request to the same server.
//!
//! Pingora's connector has a pool of its own; the router keeps its own instead (new
//! connections are still made by Pingora's `TransportConnector`, TLS included), because of
//! what Pingora's costs per request (callgrind and dhat, bench/request_cost.sh): every
//! connection handed back spawns a task that watches it while idle (a task, a timer, a
//! oneshot channel and an LRU node: five allocations), and every connection taken out is
//! checked against the peer's address with a `getpeername` system call. Here a connection
//! handed back is pushed on its server's list (under one short lock) and one taken out is
//! popped, newest first, after a look at whether the server closed it meanwhile (tokio already
//! knows, from epoll: no system call unless it is readable). A connection idle longer than
//! `idle_timeout` is dropped: when its list is next touched, or by [`UpstreamPool::sweep`],
//! which the router runs every second.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::FutureExt;
use pingora::connectors::{ConnectorOptions, TransportConnector};
use pingora::prelude::HttpPeer;
use pingora::protocols::http::v1::client::HttpSession;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use pingora::upstreams::peer::Peer;
use tokio::io::AsyncReadExt;

/// An idle connection and when it became idle.
struct Idle {
    stream: Stream,
    since: Instant,
}

/// Idle connections by server (Pingora's peer hash: address, TLS name and options).
pub struct UpstreamPool {
    transport: TransportConnector,
    idle: Mutex<HashMap<u64, Vec<Idle>>>,
    /// How long a connection may sit idle before it is closed.
    idle_timeout: Duration,
    /// At most this many idle connections per server (the oldest go first).
    max_idle: usize,
}

impl UpstreamPool {
    pub fn new(
        options: Option<ConnectorOptions>,
        idle_timeout: Duration,
        max_idle: usize,
    ) -> UpstreamPool {
        UpstreamPool {
            transport: TransportConnector::new(options),
            idle: Mutex::new(HashMap::new()),
            idle_timeout,
            max_idle: max_idle.max(1),
        }
    }

    /// A connection to `peer`: an idle one if one is still open, else a new one; and whether it
    /// was reused.
    pub async fn get(&self, peer: &HttpPeer) -> pingora::Result<(HttpSession, bool)> {
        let key = peer.reuse_hash();
        while let Some(mut stream) = self.take(key) {
            if still_open(&mut stream) {
                return Ok((HttpSession::new_with_options(stream, peer), true));
            }
        }
        // Boxed: connecting (TCP, maybe TLS) is a future of several KiB that would otherwise
        // sit in every request's future for as long as its answer streams.
        let stream = Box::pin(self.transport.new_stream(peer)).await?;
        Ok((HttpSession::new_with_options(stream, peer), false))
    }

    /// Hands back a connection whose exchange is over, to the server whose
    /// `HttpPeer::reuse_hash` is `key`: kept if its response was read to the end and the
    /// server keeps it alive, else closed.
    pub async fn put(&self, mut session: HttpSession, key: u64) {
        session.respect_keepalive();
        let Some(stream) = session.reuse().await else {
            return;
        };
        let now = Instant::now();
        let closed = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let list = idle.entry(key).or_default();
            let mut closed = expired(list, now, self.idle_timeout);
            if list.len() >= self.max_idle {
                closed.push(list.remove(0));
            }
            list.push(Idle { stream, since: now });
            closed
        };
        drop(closed); // closed outside the lock
    }

    /// Closes every connection idle longer than `idle_timeout`.
    pub fn sweep(&self) {
        let now = Instant::now();
        let closed: Vec<Idle> = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let closed = idle
                .values_mut()
                .flat_map(|list| expired(list, now, self.idle_timeout))
                .collect();
            idle.retain(|_, list| !list.is_empty());
            closed
        };
        drop(closed);
    }

    /// Idle connections held now (all servers).
    pub fn idle_count(&self) -> usize {
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        idle.values().map(Vec::len).sum()
    }

    /// The newest idle connection to the server `key`, if it has one not yet expired.
    fn take(&self, key: u64) -> Option<Stream> {
        let now = Instant::now();
        let (taken, closed) = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let list = idle.get_mut(&key)?;
            let closed = expired(list, now, self.idle_timeout);
            (list.pop(), closed)
        };
        drop(closed);
        taken.map(|idle| idle.stream)
    }
}

/// Takes the expired connections off `list` (oldest first, so they are a prefix).
fn expired(list: &mut Vec<Idle>, now: Instant, timeout: Duration) -> Vec<Idle> {
    let fresh = list.partition_point(|i| now.duration_since(i.since) >= timeout);
    list.drain(..fresh).collect()
}

/// Whether an idle connection is still open and quiet: a server sends nothing on an idle
/// connection but its close (or garbage). Reading is attempted once, without waiting; tokio
/// makes the system call only if epoll said the socket is readable.
fn still_open(stream: &mut Stream) -> bool {
    let mut byte = [0u8; 1];
    let read = tokio::task::unconstrained(stream.read(&mut byte)).now_or_never();
    match read {
        None => true,
        Some(Ok(0)) => false,
        Some(Ok(_)) => {
            tracing::debug!("an idle server connection had unexpected data: closed");
            false
        }
        Some(Err(e)) => {
            tracing::debug!(error = %e, "an idle server connection broke: closed");
            false
        }
    }
}

/// Runs [`UpstreamPool::sweep`] every second.
pub struct PoolSweeper(pub std::sync::Arc<UpstreamPool>);

#[async_trait]
impl BackgroundService for PoolSweeper {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = every.tick() => self.0.sweep(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::http::RequestHeader;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    /// A server answering each request on a connection with a short 200, keeping it open;
    /// it closes a connection after `close_after` requests.
    async fn server(close_after: usize) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    for _ in 0..close_after {
                        let mut got = Vec::new();
                        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                            match conn.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => got.extend_from_slice(&buf[..n]),
                            }
                        }
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if conn.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    /// A GET on `session`, its answer's header read, and its body too if `whole`.
    async fn get_on(session: &mut HttpSession, whole: bool) {
        let mut header = RequestHeader::build("GET", b"/", None).unwrap();
        header.insert_header("host", "test").unwrap();
        session
            .write_request_header(Box::new(header))
            .await
            .unwrap();
        session.read_response().await.unwrap();
        while whole && session.read_body_bytes().await.unwrap().is_some() {}
    }

    /// One request on a connection from the pool, handed back after; whether it was reused.
    async fn exchange(pool: &UpstreamPool, peer: &HttpPeer) -> bool {
        let (mut session, reused) = pool.get(peer).await.unwrap();
        get_on(&mut session, true).await;
        pool.put(session, peer.reuse_hash()).await;
        reused
    }

    fn peer(addr: std::net::SocketAddr) -> HttpPeer {
        HttpPeer::new(addr, false, String::new())
    }

    #[tokio::test]
    async fn a_connection_handed_back_is_reused() {
        let peer = peer(server(100).await);
        let pool = UpstreamPool::new(None, Duration::from_secs(4), 8);
        assert!(!exchange(&pool, &peer).await, "the first is new");
        assert!(exchange(&pool, &peer).await, "the second reuses it");
        assert!(exchange(&pool, &peer).await);
        assert_eq!(pool.idle_count(), 1);
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_is_not_reused() {
        let peer = peer(server(1).await); // closes after each answer
        let pool = UpstreamPool::new(None, Duration::from_secs(4), 8);
        assert!(!exchange(&pool, &peer).await);
        // The close arrives; tokio learns of it from epoll.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !exchange(&pool, &peer).await,
            "a closed connection is never handed out"
        );
    }

    #[tokio::test]
    async fn idle_connections_expire_and_are_bounded() {
        let addr = server(100).await;
        let peer = peer(addr);
        let pool = UpstreamPool::new(None, Duration::from_millis(100), 2);
        // Three at once: three connections, of which two are kept.
        let sessions = [
            pool.get(&peer).await.unwrap().0,
            pool.get(&peer).await.unwrap().0,
            pool.get(&peer).await.unwrap().0,
        ];
        for mut session in sessions {
            get_on(&mut session, true).await;
            pool.put(session, peer.reuse_hash()).await;
        }
        assert_eq!(pool.idle_count(), 2, "at most max_idle per server");
        tokio::time::sleep(Duration::from_millis(150)).await;
        pool.sweep();
        assert_eq!(pool.idle_count(), 0, "idle past idle_timeout: closed");
        assert!(!exchange(&pool, &peer).await);
    }

    #[tokio::test]
    async fn a_connection_whose_answer_was_not_read_to_the_end_is_closed() {
        let peer = peer(server(100).await);
        let pool = UpstreamPool::new(None, Duration::from_secs(4), 8);
        let (mut session, _) = pool.get(&peer).await.unwrap();
        get_on(&mut session, false).await; // body left unread
        pool.put(session, peer.reuse_hash()).await;
        assert_eq!(pool.idle_count(), 0);
    }
}
