//! Request ids: the client's `X-Request-Id` when it is usable, else a new one. The id is
//! returned to the client, sent to every backend tried (vLLM takes it as its own request id)
//! and written in the access log, so one request can be followed across all three.

use std::fmt;

/// The header that carries the id, both ways.
pub const HEADER: &str = "x-request-id";

/// Longest id accepted from a client.
const MAX_LEN: usize = 128;

/// Whether a client's id can be used as is: 1 to 128 visible ASCII characters (no spaces,
/// no control characters, so it cannot forge a log line or a header).
pub fn is_usable(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_LEN && id.bytes().all(|b| b.is_ascii_graphic())
}

/// A request id, stored inline: making one allocates nothing.
#[derive(Clone, Copy)]
pub struct RequestId {
    len: u8,
    bytes: [u8; MAX_LEN],
}

impl RequestId {
    /// The client's id if it is usable, else a new random one.
    pub fn from_client(sent: Option<&[u8]>) -> RequestId {
        match sent.and_then(|s| std::str::from_utf8(s).ok()) {
            Some(id) if is_usable(id) => {
                let mut bytes = [0; MAX_LEN];
                bytes[..id.len()].copy_from_slice(id.as_bytes());
                RequestId {
                    len: id.len() as u8,
                    bytes,
                }
            }
            _ => RequestId::generate(),
        }
    }

    /// 32 hex digits: 128 random bits.
    pub fn generate() -> RequestId {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut bytes = [0; MAX_LEN];
        let random = fastrand::u128(..);
        for (i, byte) in bytes[..32].iter_mut().enumerate() {
            *byte = HEX[((random >> (4 * i)) & 0xf) as usize];
        }
        RequestId { len: 32, bytes }
    }

    pub fn as_str(&self) -> &str {
        // Only ever filled from a checked &str or hex digits.
        std::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or("-")
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clients_id_is_kept_when_usable() {
        assert_eq!(
            RequestId::from_client(Some(b"req-42_a.b:c")).as_str(),
            "req-42_a.b:c"
        );
        let long = "x".repeat(128);
        assert_eq!(RequestId::from_client(Some(long.as_bytes())).as_str(), long);
        for bad in [
            &b""[..],
            b"has space",
            b"new\nline",
            "\u{e9}t\u{e9}".as_bytes(),
            "y".repeat(129).as_bytes(),
        ] {
            let id = RequestId::from_client(Some(bad));
            assert_eq!(id.as_str().len(), 32, "{bad:?} replaced");
        }
    }

    #[test]
    fn generated_ids_are_hex_and_differ() {
        let a = RequestId::generate();
        let b = RequestId::from_client(None);
        assert!(a.as_str().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a.as_str(), b.as_str());
    }
}
