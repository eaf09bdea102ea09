//! The headers of a forwarded exchange: the request as it goes to a backend, and the
//! backend's response as it goes to the client.
//!
//! Both are built as plain `http` parts and handed to Pingora whole, with header names that
//! are constants and values that are shared, not copied: per request this allocates little
//! more than the header maps themselves. (Pingora's `insert_header` copies a custom header
//! name every time, and keeps a second map of original spellings that HTTP/1.1, being
//! case-insensitive, does not need.)

use http::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_LENGTH, HOST, RETRY_AFTER};
use http::{HeaderMap, Version};
use pingora::http::{Method, RequestHeader, ResponseHeader};

use crate::config::ServerConfig;
use crate::request_id::RequestId;

/// Hop-by-hop headers (RFC 9110 §7.6.1): they describe one connection, not the message, so
/// they are never passed on, in either direction.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

/// Request headers the router writes itself: the backend's `host`, the body's length (the
/// body is re-sent whole, so its framing is ours), no `expect` (the body is already read),
/// and the request id.
const SET_ON_REQUEST: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "expect",
    crate::request_id::HEADER,
];

const REQUEST_ID: HeaderName = HeaderName::from_static(crate::request_id::HEADER);
/// W3C trace context (traces.rs).
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The routing headers (`expose_routing_headers`): which server answered, after how many
/// attempts.
pub const UPSTREAM_HEADER: &str = "x-mvllm-upstream";
pub const ATTEMPTS_HEADER: &str = "x-mvllm-attempts";
const UPSTREAM: HeaderName = HeaderName::from_static(UPSTREAM_HEADER);
const ATTEMPTS: HeaderName = HeaderName::from_static(ATTEMPTS_HEADER);

/// The headers a server's requests always carry, made once per config.
#[derive(Debug, Clone)]
pub struct ServerHeaders {
    host: HeaderValue,
    /// The server's URL, for `x-mvllm-upstream`.
    pub url: HeaderValue,
    /// `Bearer <api_key>`, replacing the client's `authorization`.
    authorization: Option<HeaderValue>,
}

impl ServerHeaders {
    pub fn new(server: &ServerConfig) -> ServerHeaders {
        let authority = server
            .url
            .trim_start_matches("https://")
            .trim_start_matches("http://");
        ServerHeaders {
            // Config validation allows only header-safe URLs and keys; a value that still
            // failed would be left out rather than take the router down.
            host: HeaderValue::from_str(authority).unwrap_or_else(|_| HeaderValue::from_static("")),
            url: HeaderValue::from_str(&server.url)
                .unwrap_or_else(|_| HeaderValue::from_static("")),
            authorization: server
                .api_key
                .as_ref()
                .and_then(|key| HeaderValue::from_str(&format!("Bearer {key}")).ok()),
        }
    }

    /// `[auth] forward_client_authorization`: the client's `Authorization` goes to the server
    /// as it came (vLLM checks its own keys); the server's `api_key` is then only for the
    /// router's own reads of its `/metrics` and `/v1/models`.
    pub fn forward_client_authorization(&mut self) {
        self.authorization = None;
    }
}

/// What one attempt adds to the request besides the server's own headers.
#[derive(Default, Clone, Copy)]
pub struct AttemptHeaders<'a> {
    /// When traces are on: names the attempt's span and replaces the client's.
    pub traceparent: Option<&'a HeaderValue>,
    /// The data-parallel engine the policy chose (vLLM's `X-data-parallel-rank`); replaces
    /// the client's.
    pub data_parallel_rank: Option<u32>,
}

/// vLLM's header naming the data-parallel engine a request goes to.
pub const DATA_PARALLEL_RANK: HeaderName = HeaderName::from_static("x-data-parallel-rank");

/// The request as it goes to a server.
pub fn upstream_request(
    original: &RequestHeader,
    server: &ServerHeaders,
    body_len: usize,
    request_id: &RequestId,
    attempt: AttemptHeaders<'_>,
) -> RequestHeader {
    let traceparent = attempt.traceparent;
    let mut headers = HeaderMap::with_capacity(original.headers.len() + 3);
    for (name, value) in original.headers.iter() {
        let name_str = name.as_str();
        if HOP_BY_HOP.contains(&name_str) || SET_ON_REQUEST.contains(&name_str) {
            continue;
        }
        // The server's own key replaces the client's.
        if name == AUTHORIZATION && server.authorization.is_some() {
            continue;
        }
        if traceparent.is_some() && name == TRACEPARENT {
            continue;
        }
        if attempt.data_parallel_rank.is_some() && name == DATA_PARALLEL_RANK {
            continue;
        }
        headers.append(name.clone(), value.clone());
    }
    headers.insert(HOST, server.host.clone());
    headers.insert(REQUEST_ID, request_id.header_value());
    if let Some(traceparent) = traceparent {
        headers.insert(TRACEPARENT, traceparent.clone());
    }
    if let Some(key) = &server.authorization {
        headers.insert(AUTHORIZATION, key.clone());
    }
    if let Some(rank) = attempt.data_parallel_rank {
        headers.insert(DATA_PARALLEL_RANK, HeaderValue::from(rank));
    }
    let has_body =
        body_len > 0 || matches!(original.method, Method::POST | Method::PUT | Method::PATCH);
    if has_body {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(body_len));
    }
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = original.method.clone();
    // Origin form: the path and query as the client sent them.
    parts.uri = match original.uri.path_and_query() {
        Some(path) => path.clone().into(),
        None => http::Uri::from_static("/"),
    };
    parts.version = Version::HTTP_11;
    parts.headers = headers;
    RequestHeader::from(parts)
}

/// Which server answered after how many attempts, when `expose_routing_headers` is on.
pub struct Routing<'a> {
    pub server: &'a ServerHeaders,
    pub attempts: usize,
}

/// The server's response header as it goes to the client: hop-by-hop headers dropped, the
/// request id set, and the routing headers if asked for. `content-length` and
/// `transfer-encoding` stay: Pingora frames the body it writes to the client by them, and the
/// body is passed on as it comes.
pub fn downstream_response(
    upstream: &ResponseHeader,
    request_id: &RequestId,
    routing: Option<Routing<'_>>,
) -> ResponseHeader {
    let mut headers = HeaderMap::with_capacity(upstream.headers.len() + 3);
    for (name, value) in upstream.headers.iter() {
        let name_str = name.as_str();
        if HOP_BY_HOP.contains(&name_str) || name == REQUEST_ID {
            continue;
        }
        headers.append(name.clone(), value.clone());
    }
    headers.insert(REQUEST_ID, request_id.header_value());
    if let Some(routing) = routing {
        headers.insert(UPSTREAM, routing.server.url.clone());
        headers.insert(ATTEMPTS, HeaderValue::from(routing.attempts));
    }
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = upstream.status;
    parts.version = Version::HTTP_11;
    parts.headers = headers;
    ResponseHeader::from(parts)
}

/// A header of a failed answer worth passing on when that answer is what the client gets
/// (the backend's own advice on when to come back).
pub fn retry_after(upstream: &ResponseHeader) -> Option<String> {
    upstream
        .headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(api_key: Option<&str>) -> ServerHeaders {
        ServerHeaders::new(&ServerConfig {
            url: "http://10.0.0.5:8000".into(),
            host: "10.0.0.5".into(),
            port: 8000,
            max_concurrent_requests: 4,
            api_key: api_key.map(str::to_string),
            ..Default::default()
        })
    }

    fn id(value: &str) -> RequestId {
        RequestId::from_client(Some(&HeaderValue::from_str(value).unwrap()))
    }

    #[test]
    fn the_request_keeps_end_to_end_headers_and_gets_ours() {
        let mut original = RequestHeader::build("POST", b"/v1/chat/completions?x=1", None).unwrap();
        for (name, value) in [
            ("host", "router:8888"),
            ("connection", "keep-alive"),
            ("content-length", "999"),
            ("expect", "100-continue"),
            ("authorization", "Bearer client"),
            ("x-request-id", "forged"),
            ("accept", "text/event-stream"),
            ("x-custom", "kept"),
        ] {
            original.insert_header(name, value).unwrap();
        }
        original.insert_header("traceparent", "00-client").unwrap();
        original.insert_header("x-data-parallel-rank", "1").unwrap();
        let up = upstream_request(
            &original,
            &server(None),
            12,
            &id("id-1"),
            AttemptHeaders::default(),
        );
        let get = |n: &str| up.headers.get(n).map(|v| v.to_str().unwrap().to_string());
        assert_eq!(up.uri.to_string(), "/v1/chat/completions?x=1");
        assert_eq!(get("host").as_deref(), Some("10.0.0.5:8000"));
        assert_eq!(get("content-length").as_deref(), Some("12"));
        assert_eq!(get("x-request-id").as_deref(), Some("id-1"));
        assert_eq!(up.headers.get_all("x-request-id").iter().count(), 1);
        assert_eq!(get("authorization").as_deref(), Some("Bearer client"));
        assert_eq!(get("accept").as_deref(), Some("text/event-stream"));
        assert_eq!(get("x-custom").as_deref(), Some("kept"));
        assert_eq!(
            get("traceparent").as_deref(),
            Some("00-client"),
            "traces off: passed on"
        );
        assert_eq!((get("connection"), get("expect")), (None, None));
        let mut wire = Vec::new();
        up.header_to_h1_wire(&mut wire);
        let wire = String::from_utf8(wire).unwrap();
        assert!(wire.contains("Host: 10.0.0.5:8000\r\n"), "{wire}");

        let ours = HeaderValue::from_static("00-router");
        let up = upstream_request(
            &original,
            &server(Some("k")),
            12,
            &id("id-1"),
            AttemptHeaders {
                traceparent: Some(&ours),
                data_parallel_rank: Some(3),
            },
        );
        assert_eq!(up.headers.get_all("traceparent").iter().count(), 1);
        assert_eq!(up.headers.get("traceparent").unwrap(), "00-router");
        assert_eq!(
            up.headers.get_all("authorization").iter().count(),
            1,
            "the server's key replaces the client's"
        );
        assert_eq!(up.headers.get("authorization").unwrap(), "Bearer k");
        assert_eq!(
            up.headers.get_all("x-data-parallel-rank").iter().count(),
            1,
            "the chosen engine replaces one the client named"
        );
        assert_eq!(up.headers.get("x-data-parallel-rank").unwrap(), "3");
    }

    #[test]
    fn the_response_drops_hop_by_hop_headers() {
        let mut upstream = ResponseHeader::build(200, None).unwrap();
        for (name, value) in [
            ("content-type", "text/event-stream"),
            ("transfer-encoding", "chunked"),
            ("connection", "close"),
            ("x-request-id", "backend-id"),
            ("retry-after", "3"),
        ] {
            upstream.insert_header(name, value).unwrap();
        }
        let down = downstream_response(&upstream, &id("id-1"), None);
        assert_eq!(down.headers.get("x-request-id").unwrap(), "id-1");
        assert!(
            down.headers.get("x-mvllm-upstream").is_none(),
            "off unless asked"
        );
        let server = server(None);
        let routing = Routing {
            server: &server,
            attempts: 2,
        };
        let down = downstream_response(&upstream, &id("id-1"), Some(routing));
        assert_eq!(
            down.headers.get("x-mvllm-upstream").unwrap(),
            "http://10.0.0.5:8000"
        );
        assert_eq!(down.headers.get("x-mvllm-attempts").unwrap(), "2");
        assert!(down.headers.get("connection").is_none());
        assert_eq!(down.headers.get("transfer-encoding").unwrap(), "chunked");
        assert_eq!(retry_after(&upstream).as_deref(), Some("3"));
    }
}
