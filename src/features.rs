//! What the router reads of a request before choosing a server: the body, read once and
//! bounded, and the features a policy may use, extracted from it in one pass.
//!
//! Only what routing needs is read: `model` (which servers may take it), `stream`, a session
//! key, and where the prompt (`messages` or `prompt`) lies in the body, so that a policy can
//! look at its prefix without the router building it. The rest of the body is skipped, not
//! built, and nothing about it is judged: the backend validates the request. Only a body that
//! is not JSON, or whose `model` is not a string, is refused here (the router needs `model`).

use std::net::IpAddr;
use std::ops::Range;

use bytes::{Bytes, BytesMut};
use pingora::http::RequestHeader;
use pingora::prelude::Session;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::openai::ApiError;

/// The header a client may set to keep a conversation on one server, unless `[routing]
/// session_header` names another.
pub const SESSION_HEADER: &str = "x-session-id";

/// What a policy may know about a request.
#[derive(Debug, Clone, Default)]
pub struct RequestFeatures {
    /// The request body, as the client sent it (forwarded unchanged).
    pub body: Bytes,
    /// The `model` of a JSON body, if it had one.
    pub model: Option<String>,
    /// Whether the client asked for a stream (`"stream": true`).
    pub stream: bool,
    /// A key that groups requests of one conversation or user: the `X-Session-Id` header,
    /// else the OpenAI `user` field.
    pub session: Option<String>,
    /// The client's address.
    pub client: Option<IpAddr>,
    /// Where `messages` (chat) or `prompt` (completions) is in `body`: its raw JSON text.
    prompt: Option<Range<usize>>,
    /// The prompt's token ids as the server will see them, when the policy needs them and
    /// they could be had (prompt_tokens/).
    pub tokens: Option<std::sync::Arc<[u32]>>,
    /// The data-parallel engine the policy chose on the chosen server, if it chose one.
    pub engine: EngineChoice,
}

/// A policy's choice of a data-parallel engine on a server (sent as vLLM's
/// `X-data-parallel-rank`): set while choosing, read when forwarding. (An atomic, so that a
/// policy can set it through the shared reference it gets.)
#[derive(Debug, Default)]
pub struct EngineChoice(std::sync::atomic::AtomicU64);

impl Clone for EngineChoice {
    fn clone(&self) -> Self {
        EngineChoice(std::sync::atomic::AtomicU64::new(
            self.0.load(std::sync::atomic::Ordering::Relaxed),
        ))
    }
}

impl EngineChoice {
    /// Records the choice for server `server` (its state id): engine `rank`, or none.
    pub fn set(&self, server: u32, rank: Option<usize>) {
        let packed = rank.map_or(0, |r| (u64::from(server) << 32) | (r as u64 + 1));
        self.0.store(packed, std::sync::atomic::Ordering::Relaxed);
    }

    /// The engine chosen on server `server`, if one was.
    pub fn on(&self, server: u32) -> Option<u32> {
        let packed = self.0.load(std::sync::atomic::Ordering::Relaxed);
        let rank = (packed & u64::from(u32::MAX)) as u32;
        (rank > 0 && (packed >> 32) as u32 == server).then(|| rank - 1)
    }
}

impl RequestFeatures {
    /// The raw JSON text of the request's `messages` or `prompt`, as sent (for prefix-aware
    /// policies: two requests whose prompts share a prefix share a prefix here too).
    pub fn prompt(&self) -> Option<&[u8]> {
        self.prompt.clone().and_then(|r| self.body.get(r))
    }
}

/// Why a body could not be read.
pub enum BodyError {
    /// An answer for the client (413).
    Refused(ApiError),
    /// The client went away while sending.
    ClientGone,
}

/// Reads the whole request body, refusing more than `limit` bytes or a body that takes longer
/// than `timeout` to arrive (a client trickling it in holds a connection and a buffer).
pub async fn read_body(
    session: &mut Session,
    limit: u64,
    timeout: std::time::Duration,
) -> Result<Bytes, BodyError> {
    let read = read_body_within(session, limit);
    tokio::pin!(read);
    // Most bodies came with the header and are read in one go: no timer for them.
    let first = std::future::poll_fn(|cx| {
        std::task::Poll::Ready(std::future::Future::poll(read.as_mut(), cx))
    })
    .await;
    if let std::task::Poll::Ready(read) = first {
        return read;
    }
    match tokio::time::timeout(timeout, read).await {
        Ok(read) => read,
        Err(_) => Err(BodyError::Refused(ApiError::new(
            408,
            "RequestTimeoutError",
            format!(
                "The request body did not arrive within {} s (body_timeout).",
                timeout.as_secs_f64()
            ),
        ))),
    }
}

async fn read_body_within(session: &mut Session, limit: u64) -> Result<Bytes, BodyError> {
    let too_large = || {
        BodyError::Refused(ApiError::new(
            413,
            "RequestEntityTooLarge",
            format!("The request body is larger than the router's limit of {limit} bytes (max_body_bytes)."),
        ))
    };
    let declared = session
        .req_header()
        .headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let mut body = BytesMut::with_capacity(declared.unwrap_or(0) as usize);
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() as u64 + chunk.len() as u64 > limit {
                    return Err(too_large());
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body.freeze()),
            // A body that breaks HTTP's framing (a chunk size that is not hex, a bad
            // trailer) is the client's mistake and gets its 400; anything else (the
            // connection closed, the body cut short) means the client is gone.
            Err(e) if matches!(e.etype().as_str(), "InvalidChunk" | "InvalidTrailerEnd") => {
                return Err(BodyError::Refused(ApiError::bad_request(format!(
                    "The request body is not valid HTTP chunked encoding: {}",
                    e.context.as_ref().map_or_else(
                        || e.etype().as_str().to_string(),
                        |c| c.as_str().to_string()
                    )
                ))));
            }
            Err(e) => {
                tracing::debug!(error = %e, "reading the request body failed");
                return Err(BodyError::ClientGone);
            }
        }
    }
}

/// The fields read from a JSON body. `model` must be a string; the others are taken when
/// they have the expected type and ignored otherwise (the backend judges them).
#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(default, borrow)]
    model: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    stream: Option<&'a RawValue>,
    #[serde(default, borrow)]
    user: Option<&'a RawValue>,
    #[serde(default, borrow)]
    messages: Option<&'a RawValue>,
    #[serde(default, borrow)]
    prompt: Option<&'a RawValue>,
}

/// Extracts the features of a request. Bodies that are not JSON objects (multipart uploads,
/// empty GETs) have none and are routed by load alone. The content type is not trusted either
/// way: `curl -d` sends JSON labelled as a form.
/// `session_header` names the header that carries a session key (`[routing] session_header`).
pub fn extract(
    header: &RequestHeader,
    body: Bytes,
    client: Option<IpAddr>,
    session_header: &str,
) -> Result<RequestFeatures, ApiError> {
    let mut features = RequestFeatures {
        session: header
            .headers
            .get(session_header)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(str::to_string),
        client,
        ..RequestFeatures::default()
    };
    let content_type = header
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    let is_json = content_type.contains("json") || first == Some(&b'{');
    if body.is_empty() || !is_json || content_type.starts_with("multipart/") {
        features.body = body;
        return Ok(features);
    }
    let fields = match serde_json::from_slice::<Fields>(&body) {
        Ok(fields) => fields,
        Err(e) if e.is_data() => {
            return Err(ApiError::bad_request(format!(
                "The request body does not match the API: {e}"
            ))
            .with_param("model"))
        }
        Err(e) => {
            return Err(ApiError::bad_request(format!(
                "The request body is not valid JSON: {e}"
            )))
        }
    };
    features.model = fields.model.map(|m| m.into_owned());
    features.stream = fields.stream.is_some_and(|s| s.get() == "true");
    if features.session.is_none() {
        features.session = fields
            .user
            .and_then(|u| serde_json::from_str::<String>(u.get()).ok())
            .filter(|u| !u.is_empty());
    }
    features.prompt = fields
        .messages
        .or(fields.prompt)
        .map(|raw| offset_in(&body, raw.get().as_bytes()));
    features.body = body;
    Ok(features)
}

/// Where `part`, a slice borrowed from `whole`, lies in it.
fn offset_in(whole: &[u8], part: &[u8]) -> Range<usize> {
    let start = (part.as_ptr() as usize).saturating_sub(whole.as_ptr() as usize);
    start..start + part.len()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The features of a JSON request body (for policies' tests).
    pub fn features_of(body: Bytes) -> RequestFeatures {
        extract(&request(&[]), body, None, SESSION_HEADER).expect("a JSON body")
    }

    fn request(headers: &[(&str, &str)]) -> RequestHeader {
        let mut h = RequestHeader::build("POST", b"/v1/chat/completions", None).unwrap();
        for (name, value) in headers {
            h.insert_header(name.to_string(), *value).unwrap();
        }
        h
    }

    fn json(body: &str) -> Result<RequestFeatures, ApiError> {
        extract(
            &request(&[("content-type", "application/json")]),
            Bytes::from(body.to_string()),
            None,
            SESSION_HEADER,
        )
    }

    #[test]
    fn model_stream_session_and_prompt() {
        let f = json(r#"{"model":"llama","stream":true,"user":"u-1","messages":[{"role":"user","content":"hi"}],"max_tokens":3}"#).unwrap();
        assert_eq!(f.model.as_deref(), Some("llama"));
        assert!(f.stream);
        assert_eq!(f.session.as_deref(), Some("u-1"));
        assert_eq!(
            f.prompt(),
            Some(&br#"[{"role":"user","content":"hi"}]"#[..])
        );

        let f = json(r#"{"prompt":"once upon","stream":"yes","user":7}"#).unwrap();
        assert_eq!(f.model, None);
        assert!(!f.stream, "only `true` is a stream");
        assert_eq!(f.session, None, "a user that is not a string is not a key");
        assert_eq!(f.prompt(), Some(&br#""once upon""#[..]));

        let f = extract(
            &request(&[("x-session-id", "conv-9")]),
            Bytes::from_static(br#"{"model":"m","user":"u"}"#),
            None,
            SESSION_HEADER,
        )
        .unwrap();
        assert_eq!(f.session.as_deref(), Some("conv-9"), "the header wins");
        let f = extract(
            &request(&[("x-conversation", "c-1"), ("x-session-id", "ignored")]),
            Bytes::from_static(br#"{"model":"m"}"#),
            None,
            "x-conversation",
        )
        .unwrap();
        assert_eq!(f.session.as_deref(), Some("c-1"), "the configured header");
    }

    #[test]
    fn an_engine_choice_holds_for_its_server_only() {
        let choice = EngineChoice::default();
        assert_eq!(choice.on(7), None);
        choice.set(7, Some(0));
        assert_eq!((choice.on(7), choice.on(8)), (Some(0), None));
        let copy = choice.clone();
        choice.set(8, None);
        assert_eq!((choice.on(7), choice.on(8)), (None, None), "a new choice");
        assert_eq!(copy.on(7), Some(0));
    }

    #[test]
    fn bad_json_and_bad_model_are_400() {
        let e = json(r#"{"model": "m", "messages": ["#).unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.message.contains("not valid JSON"), "{e}");
        let e = json(r#"{"model": 5}"#).unwrap_err();
        assert_eq!((e.status, e.param.as_deref()), (400, Some("model")));
    }

    #[test]
    fn bodies_that_are_not_json_objects_are_routed_by_load() {
        let f = extract(
            &request(&[("content-type", "multipart/form-data; boundary=x")]),
            Bytes::from_static(b"--x\r\n"),
            None,
            SESSION_HEADER,
        )
        .unwrap();
        assert_eq!((f.model, f.body.len()), (None, 5));
        let f = extract(&request(&[]), Bytes::new(), None, SESSION_HEADER).unwrap();
        assert!(f.prompt().is_none());
    }
}
