//! The headers of a forwarded exchange: the request as it goes to a backend, and the
//! backend's response as it goes to the client.

use pingora::http::{Method, RequestHeader, ResponseHeader};

use crate::config::ServerConfig;
use crate::request_id;

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
    request_id::HEADER,
];

/// The request as it goes to `server`.
pub fn upstream_request(
    original: &RequestHeader,
    server: &ServerConfig,
    body_len: usize,
    request_id: &str,
) -> pingora::Result<RequestHeader> {
    let path = original
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut request = RequestHeader::build(
        original.method.clone(),
        path.as_bytes(),
        Some(original.headers.len() + 3),
    )?;
    for (name, value) in original.headers.iter() {
        let name_str = name.as_str();
        if HOP_BY_HOP.contains(&name_str) || SET_ON_REQUEST.contains(&name_str) {
            continue;
        }
        // The server's own key replaces the client's.
        if name_str == "authorization" && server.api_key.is_some() {
            continue;
        }
        request.append_header(name.clone(), value.clone())?;
    }
    request.insert_header("host", server.url.trim_start_matches("http://"))?;
    request.insert_header(request_id::HEADER, request_id)?;
    if let Some(key) = &server.api_key {
        request.insert_header("authorization", format!("Bearer {key}"))?;
    }
    let has_body =
        body_len > 0 || matches!(original.method, Method::POST | Method::PUT | Method::PATCH);
    if has_body {
        request.insert_header("content-length", body_len.to_string())?;
    }
    Ok(request)
}

/// The backend's response header as it goes to the client: hop-by-hop headers dropped, the
/// request id set. `content-length` and `transfer-encoding` stay: Pingora frames the body it
/// writes to the client by them, and the body is passed on as it comes.
pub fn downstream_response(
    upstream: &ResponseHeader,
    request_id: &str,
) -> pingora::Result<ResponseHeader> {
    let mut header = ResponseHeader::build(upstream.status, Some(upstream.headers.len() + 1))?;
    for (name, value) in upstream.headers.iter() {
        let name_str = name.as_str();
        if HOP_BY_HOP.contains(&name_str) || name_str == request_id::HEADER {
            continue;
        }
        header.append_header(name.clone(), value.clone())?;
    }
    header.insert_header(request_id::HEADER, request_id)?;
    Ok(header)
}

/// A header of a failed answer worth passing on when that answer is what the client gets
/// (the backend's own advice on when to come back).
pub fn retry_after(upstream: &ResponseHeader) -> Option<String> {
    upstream
        .headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(api_key: Option<&str>) -> ServerConfig {
        ServerConfig {
            url: "http://10.0.0.5:8000".into(),
            host: "10.0.0.5".into(),
            port: 8000,
            max_concurrent_requests: 4,
            api_key: api_key.map(str::to_string),
        }
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
        ] {
            original.insert_header(name, value).unwrap();
        }
        let up = upstream_request(&original, &server(None), 12, "id-1").unwrap();
        let get = |n: &str| up.headers.get(n).map(|v| v.to_str().unwrap().to_string());
        assert_eq!(up.uri.to_string(), "/v1/chat/completions?x=1");
        assert_eq!(get("host").as_deref(), Some("10.0.0.5:8000"));
        assert_eq!(get("content-length").as_deref(), Some("12"));
        assert_eq!(get("x-request-id").as_deref(), Some("id-1"));
        assert_eq!(get("authorization").as_deref(), Some("Bearer client"));
        assert_eq!(get("accept").as_deref(), Some("text/event-stream"));
        assert_eq!((get("connection"), get("expect")), (None, None));

        let up = upstream_request(&original, &server(Some("k")), 12, "id-1").unwrap();
        assert_eq!(
            up.headers.get_all("authorization").iter().count(),
            1,
            "the server's key replaces the client's"
        );
        assert_eq!(up.headers.get("authorization").unwrap(), "Bearer k");
    }

    #[test]
    fn the_response_drops_hop_by_hop_headers() {
        let mut upstream = ResponseHeader::build(200, None).unwrap();
        for (name, value) in [
            ("content-type", "text/event-stream"),
            ("transfer-encoding", "chunked"),
            ("connection", "close"),
            ("x-request-id", "backend-id"),
        ] {
            upstream.insert_header(name, value).unwrap();
        }
        let down = downstream_response(&upstream, "id-1").unwrap();
        assert_eq!(down.headers.get("x-request-id").unwrap(), "id-1");
        assert!(down.headers.get("connection").is_none());
        assert_eq!(down.headers.get("transfer-encoding").unwrap(), "chunked");
    }
}
