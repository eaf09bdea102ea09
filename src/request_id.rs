//! Request ids: the client's `X-Request-Id` when it is usable, else a new one. The id is
//! returned to the client, sent to every backend tried (vLLM takes it as its own request id)
//! and written in the access log, so one request can be followed across all three.

use std::fmt;

use bytes::Bytes;
use http::HeaderValue;

/// The header that carries the id, both ways.
pub const HEADER: &str = "x-request-id";

/// Longest id accepted from a client.
const MAX_LEN: usize = 128;

/// Whether a client's id can be used as is: 1 to 128 visible ASCII characters (no spaces,
/// no control characters, so it cannot forge a log line or a header).
pub fn is_usable(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_LEN && id.bytes().all(|b| b.is_ascii_graphic())
}

/// A request id, kept as the header value it is sent as: the client's own value is reused
/// (no copy), and a generated one is made once and shared by every header that carries it.
#[derive(Clone)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// The client's id if it is usable, else a new random one.
    pub fn from_client(sent: Option<&HeaderValue>) -> RequestId {
        match sent {
            Some(value) if value.to_str().is_ok_and(is_usable) => RequestId(value.clone()),
            _ => RequestId::generate(),
        }
    }

    /// A placeholder, until the request's header is read.
    pub fn unset() -> RequestId {
        RequestId(HeaderValue::from_static("-"))
    }

    /// 32 hex digits: 128 random bits.
    pub fn generate() -> RequestId {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut digits = [0u8; 32];
        let random = fastrand::u128(..);
        for (i, digit) in digits.iter_mut().enumerate() {
            *digit = HEX[((random >> (4 * i)) & 0xf) as usize];
        }
        // Hex digits are always a valid header value.
        let value = HeaderValue::from_maybe_shared(Bytes::from_owner(digits))
            .unwrap_or_else(|_| HeaderValue::from_static("-"));
        RequestId(value)
    }

    pub fn as_str(&self) -> &str {
        // Only ever made from a checked visible-ASCII value or hex digits.
        self.0.to_str().unwrap_or("-")
    }

    /// The id as a header value (a cheap clone: no copy of the bytes).
    pub fn header_value(&self) -> HeaderValue {
        self.0.clone()
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

    fn from(sent: &[u8]) -> String {
        let value = HeaderValue::from_bytes(sent).ok();
        RequestId::from_client(value.as_ref()).as_str().to_string()
    }

    #[test]
    fn the_clients_id_is_kept_when_usable() {
        assert_eq!(from(b"req-42_a.b:c"), "req-42_a.b:c");
        let long = "x".repeat(128);
        assert_eq!(from(long.as_bytes()), long);
        for bad in [
            &b""[..],
            b"has space",
            b"tab\there",
            "\u{e9}t\u{e9}".as_bytes(),
            "y".repeat(129).as_bytes(),
        ] {
            assert_eq!(from(bad).len(), 32, "{bad:?} replaced");
        }
    }

    #[test]
    fn generated_ids_are_hex_and_differ() {
        let a = RequestId::generate();
        let b = RequestId::from_client(None);
        assert!(a.as_str().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(a.as_str().len(), 32);
        assert_ne!(a.as_str(), b.as_str());
        assert_eq!(a.header_value(), a.as_str());
    }
}
