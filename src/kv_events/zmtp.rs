//! The two ZeroMQ sockets the router needs, a SUB for the live events and a DEALER for the
//! replay, spoken over tokio's TCP directly (ZMTP 3.0 with the NULL mechanism: greeting,
//! READY, then length-prefixed frames).
//!
//! Written here rather than taken from the `zeromq` crate (which the sim uses to publish)
//! because the router's side faces a server it does not control: the crate reserves whatever
//! frame length the peer declares (a garbage length aborts the process when the allocation
//! fails) and panics on a command where it expects a message. Here a frame is at most
//! [`MAX_FRAME`], a message at most [`MAX_PARTS`] frames, commands (heartbeats) are skipped,
//! and anything else wrong is an error that ends the connection.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The largest frame accepted: a KV event batch of a long prompt is a few MiB at most.
pub const MAX_FRAME: u64 = 64 << 20;
/// The most frames in one message (vLLM sends three).
pub const MAX_PARTS: usize = 8;

/// A connection to a ZeroMQ peer, after the handshake.
pub struct Connection {
    stream: TcpStream,
    buffer: BytesMut,
}

/// The socket types the router speaks.
#[derive(Clone, Copy)]
pub enum SocketType {
    Sub,
    Dealer,
}

impl SocketType {
    fn name(self) -> &'static [u8] {
        match self {
            SocketType::Sub => b"SUB",
            SocketType::Dealer => b"DEALER",
        }
    }
}

/// `tcp://HOST:PORT` as an address to connect to.
fn address(endpoint: &str) -> Result<&str, String> {
    endpoint
        .strip_prefix("tcp://")
        .ok_or_else(|| format!("{endpoint} is not a tcp:// endpoint"))
}

impl Connection {
    /// Connects and shakes hands, within `timeout`.
    pub async fn open(
        endpoint: &str,
        kind: SocketType,
        timeout: Duration,
    ) -> Result<Connection, String> {
        let address = address(endpoint)?;
        let open = async {
            let stream = TcpStream::connect(address)
                .await
                .map_err(|e| format!("cannot connect to {endpoint}: {e}"))?;
            let _ = stream.set_nodelay(true);
            let mut connection = Connection {
                stream,
                buffer: BytesMut::with_capacity(8192),
            };
            connection.handshake(kind).await?;
            Ok(connection)
        };
        tokio::time::timeout(timeout, open)
            .await
            .unwrap_or_else(|_| Err(format!("connecting to {endpoint} timed out")))
    }

    async fn handshake(&mut self, kind: SocketType) -> Result<(), String> {
        // Greeting: signature, version 3.0, mechanism NULL, as-server 0, filler.
        let mut greeting = [0u8; 64];
        greeting[0] = 0xff;
        greeting[9] = 0x7f;
        greeting[10] = 3;
        greeting[12..16].copy_from_slice(b"NULL");
        self.write(&greeting).await?;
        let theirs = self.read_exact(64).await?;
        if theirs[0] != 0xff || theirs[9] & 1 != 1 || theirs[10] < 3 {
            return Err("the peer does not speak ZMTP 3".into());
        }
        if &theirs[12..16] != b"NULL" {
            return Err("the peer asks for a security mechanism other than NULL".into());
        }
        // READY with our socket type.
        let mut ready = Vec::with_capacity(32);
        ready.push(5);
        ready.extend_from_slice(b"READY");
        ready.push(11);
        ready.extend_from_slice(b"Socket-Type");
        ready.extend_from_slice(&(kind.name().len() as u32).to_be_bytes());
        ready.extend_from_slice(kind.name());
        self.write_frame(&ready, false, true).await?;
        // Their READY (a command frame).
        let (command, _, body) = self.read_frame().await?;
        if !command || !body.starts_with(b"\x05READY") {
            return Err("the peer did not answer READY".into());
        }
        Ok(())
    }

    /// Sends a message of `parts`.
    pub async fn send(&mut self, parts: &[&[u8]]) -> Result<(), String> {
        for (i, part) in parts.iter().enumerate() {
            self.write_frame(part, i + 1 < parts.len(), false).await?;
        }
        Ok(())
    }

    /// Subscribes to every topic (a SUB socket).
    pub async fn subscribe_all(&mut self) -> Result<(), String> {
        // ZMTP 3.0: a message whose first byte 1 means subscribe, the rest the prefix.
        self.write_frame(&[1], false, false).await
    }

    /// The next message's parts (commands such as heartbeats are skipped).
    pub async fn recv(&mut self) -> Result<Vec<BytesMut>, String> {
        let mut parts = Vec::new();
        loop {
            let (command, more, body) = self.read_frame().await?;
            if command {
                continue;
            }
            parts.push(body);
            if !more {
                return Ok(parts);
            }
            if parts.len() >= MAX_PARTS {
                return Err(format!("a message of more than {MAX_PARTS} parts"));
            }
        }
    }

    /// One frame: (is a command, more follow, body).
    async fn read_frame(&mut self) -> Result<(bool, bool, BytesMut), String> {
        let flags = self.read_exact(1).await?[0];
        if flags & !0b111 != 0 {
            return Err(format!("a frame with unknown flags {flags:#x}"));
        }
        let len = if flags & 0b10 != 0 {
            u64::from_be_bytes(
                self.read_exact(8).await?[..]
                    .try_into()
                    .unwrap_or([0xff; 8]),
            )
        } else {
            u64::from(self.read_exact(1).await?[0])
        };
        if len > MAX_FRAME {
            return Err(format!(
                "a frame of {len} bytes (at most {MAX_FRAME} are taken)"
            ));
        }
        let body = self.read_exact(len as usize).await?;
        Ok((flags & 0b100 != 0, flags & 0b1 != 0, body))
    }

    /// The next `n` bytes (`n` is bounded by the callers).
    async fn read_exact(&mut self, n: usize) -> Result<BytesMut, String> {
        while self.buffer.len() < n {
            self.buffer.reserve((n - self.buffer.len()).min(1 << 20));
            let read = self
                .stream
                .read_buf(&mut self.buffer)
                .await
                .map_err(|e| format!("reading: {e}"))?;
            if read == 0 {
                return Err("the peer closed the connection".into());
            }
        }
        let out = self.buffer.split_to(n);
        if self.buffer.is_empty() {
            // Let a large frame's memory go rather than keep it for the next small one.
            self.buffer = BytesMut::with_capacity(8192);
        }
        Ok(out)
    }

    async fn write_frame(&mut self, body: &[u8], more: bool, command: bool) -> Result<(), String> {
        let mut frame = Vec::with_capacity(body.len() + 9);
        let flags = u8::from(more) | (u8::from(command) << 2);
        if body.len() > 255 {
            frame.push(flags | 0b10);
            frame.extend_from_slice(&(body.len() as u64).to_be_bytes());
        } else {
            frame.push(flags);
            frame.push(body.len() as u8);
        }
        frame.extend_from_slice(body);
        self.write(&frame).await
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.stream
            .write_all(bytes)
            .await
            .map_err(|e| format!("writing: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A peer that greets, answers READY, then writes `after` raw.
    async fn peer(after: Vec<u8>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("tcp://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut greeting = [0u8; 64];
            greeting[0] = 0xff;
            greeting[9] = 0x7f;
            greeting[10] = 3;
            greeting[12..16].copy_from_slice(b"NULL");
            socket.write_all(&greeting).await.unwrap();
            let mut theirs = [0u8; 64];
            socket.read_exact(&mut theirs).await.unwrap();
            let mut ready = vec![0x04, 0];
            let body = b"\x05READY\x0bSocket-Type\x00\x00\x00\x03PUB";
            ready[1] = body.len() as u8;
            ready.extend_from_slice(body);
            socket.write_all(&ready).await.unwrap();
            socket.write_all(&after).await.unwrap();
            let mut rest = Vec::new();
            let _ = socket.read_to_end(&mut rest).await;
        });
        endpoint
    }

    #[tokio::test]
    async fn messages_commands_and_hostile_frames() {
        // A heartbeat command, then a 3-part message.
        let mut wire = vec![0x04, 5];
        wire.extend_from_slice(b"\x04PING");
        wire.extend_from_slice(&[0x01, 2, b'k', b'v', 0x01, 1, 7, 0x00, 0]);
        let endpoint = peer(wire).await;
        let mut c = Connection::open(&endpoint, SocketType::Sub, Duration::from_secs(5))
            .await
            .unwrap();
        c.subscribe_all().await.unwrap();
        let parts = c.recv().await.unwrap();
        assert_eq!(parts.len(), 3);
        assert_eq!(
            (&parts[0][..], &parts[1][..], &parts[2][..]),
            (&b"kv"[..], &[7u8][..], &b""[..])
        );

        // A frame declaring 2^62 bytes: refused, not allocated.
        let mut huge = vec![0x02];
        huge.extend_from_slice(&(1u64 << 62).to_be_bytes());
        let endpoint = peer(huge).await;
        let mut c = Connection::open(&endpoint, SocketType::Sub, Duration::from_secs(5))
            .await
            .unwrap();
        let why = c.recv().await.unwrap_err();
        assert!(why.contains("at most"), "{why}");

        // Endless parts, and unknown flags.
        let endpoint = peer([0x01, 0].repeat(20)).await;
        let mut c = Connection::open(&endpoint, SocketType::Dealer, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(c.recv().await.unwrap_err().contains("parts"));
        let endpoint = peer(vec![0x80, 0]).await;
        let mut c = Connection::open(&endpoint, SocketType::Sub, Duration::from_secs(5))
            .await
            .unwrap();
        assert!(c.recv().await.unwrap_err().contains("flags"));
    }

    #[tokio::test]
    async fn a_peer_that_is_not_zeromq_is_refused() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("tcp://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            socket.write_all(&[b'H'; 64]).await.unwrap();
        });
        let why = Connection::open(&endpoint, SocketType::Sub, Duration::from_secs(5))
            .await
            .err()
            .unwrap();
        assert!(why.contains("ZMTP 3"), "{why}");
    }
}
