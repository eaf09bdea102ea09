//! What happens when an attempt fails: the pure decision, with no I/O.
//!
//! The forwarding loop (forward.rs) describes what happened — how the attempt ended, whether
//! the client already has bytes of an answer, how many attempts and how much time are left —
//! and [`decide`] says what to do. [`counts_against_server`] says whether the server's health
//! should suffer for it. Both are tables, tested as tables below.
//!
//! The rules: a server's answer other than 5xx or 429 is the answer (a 4xx is the client's
//! problem and goes to the client unchanged). A failure before the client got a byte is retried
//! on a server not yet tried while attempts and time remain. Once the client has a byte there
//! is no retry: the answer cannot be taken back.

/// How one attempt on one server ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptResult {
    /// The server's host name has not been resolved.
    NoAddress,
    /// No connection could be made.
    ConnectFailed,
    /// The connection failed while the request was sent, or before a response header came.
    Reset,
    /// No response header within `first_byte_timeout`.
    FirstByteTimeout,
    /// The server answered with this status (the header is in; the body may follow).
    Status(u16),
    /// The whole answer reached the client.
    Delivered,
    /// The server broke off after the client had part of the answer.
    BrokeOff,
    /// `request_timeout` ran out after the client had part of the answer.
    DeadlineMidBody,
    /// The client went away.
    ClientGone,
}

impl AttemptResult {
    /// The label used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptResult::NoAddress => "no_address",
            AttemptResult::ConnectFailed => "connect_error",
            AttemptResult::Reset => "reset",
            AttemptResult::FirstByteTimeout => "first_byte_timeout",
            AttemptResult::Status(s) if s >= 500 => "status_5xx",
            AttemptResult::Status(429) => "status_429",
            AttemptResult::Status(_) => "answered",
            AttemptResult::Delivered => "delivered",
            AttemptResult::BrokeOff => "broke_off",
            AttemptResult::DeadlineMidBody => "request_timeout",
            AttemptResult::ClientGone => "client_gone",
        }
    }

    /// Whether this is a failure of the server (as opposed to an answer, or the client
    /// leaving), for counting errors by cause.
    pub fn is_error(self) -> bool {
        !matches!(self, AttemptResult::Delivered | AttemptResult::ClientGone)
            && !matches!(self, AttemptResult::Status(s) if s < 500 && s != 429)
    }
}

/// What the forwarding loop knows when an attempt has ended (or its header has come).
#[derive(Debug, Clone, Copy)]
pub struct Facts {
    pub result: AttemptResult,
    /// Whether any byte of an answer was written to the client.
    pub client_has_bytes: bool,
    /// Attempts that may still be made (`max_retries` minus retries made).
    pub attempts_left: u32,
    /// Whether `request_timeout` still leaves time for another attempt.
    pub time_left: bool,
}

/// What to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// This server's answer is the answer: send it to the client.
    Deliver,
    /// Try another server.
    Retry,
    /// Stop trying and answer the client with the best failure seen.
    GiveUp,
    /// Nothing more to do: the answer went out (whole or in part), or the client left.
    Done,
}

/// The decision table.
pub fn decide(facts: &Facts) -> Decision {
    use AttemptResult::*;
    match facts.result {
        Delivered | BrokeOff | DeadlineMidBody | ClientGone => Decision::Done,
        // An answer the client should see as it is (2xx, 3xx, a client's 4xx).
        Status(s) if s < 500 && s != 429 => Decision::Deliver,
        // Nothing reached the client yet: another server may do better.
        NoAddress | ConnectFailed | Reset | FirstByteTimeout | Status(_) => {
            if facts.client_has_bytes {
                Decision::Done
            } else if facts.attempts_left > 0 && facts.time_left {
                Decision::Retry
            } else {
                Decision::GiveUp
            }
        }
    }
}

/// Whether the server's health should suffer: connect errors, resets, timeouts, 5xx and
/// answers broken off count; a 429 (busy, not broken), a client's 4xx, the client leaving and
/// the router's own `request_timeout` do not. A reset on a pooled connection the server had
/// closed while idle is not the server's fault either.
pub fn counts_against_server(result: AttemptResult, reused_connection: bool) -> bool {
    use AttemptResult::*;
    match result {
        NoAddress | ConnectFailed | FirstByteTimeout | BrokeOff => true,
        Reset => !reused_connection,
        Status(s) => s >= 500,
        Delivered | DeadlineMidBody | ClientGone => false,
    }
}

#[cfg(test)]
mod tests {
    use super::AttemptResult::*;
    use super::Decision::*;
    use super::*;

    #[test]
    fn decision_table() {
        // (result, client has bytes, attempts left, time left) -> decision
        let table = [
            (Status(200), false, 3, true, Deliver),
            (Status(200), false, 0, false, Deliver),
            (Status(400), false, 3, true, Deliver),
            (Status(404), false, 3, true, Deliver),
            (Status(413), false, 3, true, Deliver),
            (Status(500), false, 3, true, Retry),
            (Status(503), false, 1, true, Retry),
            (Status(503), false, 0, true, GiveUp),
            (Status(503), false, 2, false, GiveUp),
            (Status(429), false, 1, true, Retry),
            (Status(429), false, 0, true, GiveUp),
            (ConnectFailed, false, 1, true, Retry),
            (ConnectFailed, false, 0, true, GiveUp),
            (NoAddress, false, 1, true, Retry),
            (Reset, false, 1, true, Retry),
            (Reset, true, 1, true, Done),
            (FirstByteTimeout, false, 1, true, Retry),
            (FirstByteTimeout, false, 1, false, GiveUp),
            (Delivered, true, 3, true, Done),
            (BrokeOff, true, 3, true, Done),
            (DeadlineMidBody, true, 3, true, Done),
            (ClientGone, false, 3, true, Done),
            (ClientGone, true, 3, true, Done),
        ];
        for (result, client_has_bytes, attempts_left, time_left, expected) in table {
            let facts = Facts {
                result,
                client_has_bytes,
                attempts_left,
                time_left,
            };
            assert_eq!(decide(&facts), expected, "{facts:?}");
        }
    }

    #[test]
    fn what_counts_against_a_server() {
        // (result, on a reused connection) -> counts
        let table = [
            (NoAddress, false, true),
            (ConnectFailed, false, true),
            (Reset, false, true),
            (Reset, true, false),
            (FirstByteTimeout, false, true),
            (FirstByteTimeout, true, true),
            (Status(500), false, true),
            (Status(503), true, true),
            (Status(429), false, false),
            (Status(400), false, false),
            (Status(200), false, false),
            (Delivered, false, false),
            (BrokeOff, true, true),
            (DeadlineMidBody, false, false),
            (ClientGone, false, false),
        ];
        for (result, reused, expected) in table {
            assert_eq!(
                counts_against_server(result, reused),
                expected,
                "{result:?} reused={reused}"
            );
        }
    }

    #[test]
    fn labels_and_errors() {
        assert_eq!(Status(502).as_str(), "status_5xx");
        assert_eq!(Status(429).as_str(), "status_429");
        assert!(Status(429).is_error());
        assert!(!Status(404).is_error());
        assert!(!ClientGone.is_error());
        assert!(DeadlineMidBody.is_error());
        assert!(ConnectFailed.is_error());
    }
}
