//! What the router reads of a client's request before routing it: the body's `model`,
//! `stream`, `user` and where its prompt is, with a session header. Never a panic; a prompt
//! found is a slice of the body that is itself JSON.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use mvllm::features::{extract, SESSION_HEADER};
use pingora::http::RequestHeader;

fuzz_target!(|data: &[u8]| {
    // The first byte chooses the content type; the rest is the body (and, split at the first
    // newline when there is one, a session header value before it).
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let (session, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(at) if kind & 4 != 0 => (Some(&rest[..at]), &rest[at + 1..]),
        _ => (None, rest),
    };
    let Ok(mut header) = RequestHeader::build("POST", b"/v1/chat/completions", None) else {
        return;
    };
    let content_type =
        ["application/json", "text/plain", "multipart/form-data", ""][usize::from(kind & 3)];
    if !content_type.is_empty() {
        let _ = header.insert_header("content-type", content_type);
    }
    if let Some(value) = session.and_then(|s| std::str::from_utf8(s).ok()) {
        let _ = header.insert_header(SESSION_HEADER, value);
    }
    let body = Bytes::copy_from_slice(body);
    if let Ok(features) = extract(&header, body.clone(), None, SESSION_HEADER) {
        assert_eq!(features.body, body, "the body is forwarded unchanged");
        if let Some(prompt) = features.prompt() {
            assert!(
                serde_json::from_slice::<serde::de::IgnoredAny>(prompt).is_ok(),
                "the prompt is a JSON value: {:?}",
                String::from_utf8_lossy(prompt)
            );
        }
    }
});
