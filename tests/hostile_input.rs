//! Hostile and broken requests, sent as raw bytes on a socket (an HTTP client library would
//! refuse to send most of them): each gets a clear answer and a closed connection, never a
//! hang, never a request smuggled past the one the router saw, and never a request proxied
//! anywhere but to the configured servers.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{RouterProcess, Sim};
use serde_json::Value;

/// Sends `raw` on a new connection and reads until the router closes it (bounded by a
/// timeout: a hang fails the test).
fn exchange(router: &RouterProcess, raw: &[u8]) -> String {
    let address = router.url.trim_start_matches("http://");
    let mut socket = TcpStream::connect(address).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    socket.write_all(raw).unwrap();
    let mut answer = Vec::new();
    match socket.read_to_end(&mut answer) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!(
            "the connection was not closed within 10 s ({e}) after {:?}; got {:?}",
            String::from_utf8_lossy(raw),
            String::from_utf8_lossy(&answer)
        ),
    }
    String::from_utf8_lossy(&answer).into_owned()
}

fn status(answer: &str) -> u16 {
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"))
}

/// The OpenAI-shaped error in an answer's body.
fn openai_error(answer: &str) -> Value {
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    let value: Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {answer:?}"));
    for field in ["message", "type", "param", "code"] {
        assert!(
            value["error"].get(field).is_some(),
            "no error.{field}: {value}"
        );
    }
    value
}

/// A POST of `body` to the chat endpoint, with a correct Content-Length.
fn post(body: &[u8]) -> Vec<u8> {
    let mut raw = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: router\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(body);
    raw
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_and_hostile_requests_get_clear_answers() {
    let sim = Sim::start(&["--served-model-name", "m", "--itl-ms", "1"]).await;
    let router = RouterProcess::start(&[(&sim.url, 4)], "").await;

    tokio::task::spawn_blocking(move || {
        // Bodies the router reads before routing: 400 in OpenAI's shape, saying what is wrong.
        let cases: [(&[u8], &str); 4] = [
            (br#"{"model":,"#, "not valid JSON"),
            (br#"{"model": 5}"#, "does not match the API"),
            (b"{\"model\": \"\xff\xfe\"}", "not valid JSON"),
            (br#"{"model": "m", "messages": [}"#, "not valid JSON"),
        ];
        for (body, says) in cases {
            let answer = exchange(&router, &post(body));
            assert_eq!(status(&answer), 400, "{answer}");
            let error = openai_error(&answer);
            let message = error["error"]["message"].as_str().unwrap();
            assert!(message.contains(says), "{message}");
        }

        // Smuggling: Content-Length and Transfer-Encoding both. The chunked body wins (an
        // empty one here: 400), and the request hidden after it is never served: one answer,
        // then the connection is closed.
        let smuggled = b"POST /v1/chat/completions HTTP/1.1\r\nHost: router\r\nContent-Length: 4\r\n\
            Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /load-stats HTTP/1.1\r\nHost: router\r\n\r\n";
        let answer = exchange(&router, smuggled);
        assert_eq!(status(&answer), 400, "{answer}");
        assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "a second answer: {answer}");
        assert!(!answer.contains("\"servers\""), "the smuggled request was served: {answer}");

        // Framing the router cannot trust: refused with 400 and the connection closed.
        let refused: [&[u8]; 5] = [
            // two different lengths
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: router\r\nContent-Length: 2\r\nContent-Length: 40\r\n\r\n{}",
            // a transfer coding that is not chunked
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: router\r\nTransfer-Encoding: xchunked\r\n\r\n{}",
            // not HTTP at all
            b"HELLO WORLD\r\n\r\n",
            // a NUL in a header value
            b"GET /health HTTP/1.1\r\nHost: router\r\nX-A: a\x00b\r\n\r\n",
            // an absolute-form target whose host is not the Host header
            b"GET http://elsewhere.example/v1/models HTTP/1.1\r\nHost: router\r\n\r\n",
        ];
        for raw in refused {
            let answer = exchange(&router, raw);
            assert_eq!(status(&answer), 400, "{:?}: {answer}", String::from_utf8_lossy(raw));
        }

        // A chunk size that is not hex: the router's own 400, not a silent close.
        let answer = exchange(
            &router,
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: router\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
        );
        assert_eq!(status(&answer), 400, "{answer}");
        let error = openai_error(&answer);
        assert!(error["error"]["message"].as_str().unwrap().contains("chunked"));

        // An absolute-form target is a path on this router, never a proxy to its host: the
        // request goes to the configured server.
        let body = br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":2}"#;
        let mut raw = format!(
            "POST http://elsewhere.example/v1/chat/completions HTTP/1.1\r\nHost: elsewhere.example\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        raw.extend_from_slice(body);
        let answer = exchange(&router, &raw);
        assert_eq!(status(&answer), 200, "{answer}");
        assert!(answer.contains("\"chat.completion\""), "{answer}");

        // HTTP/1.0 without a Host header is still served.
        let answer = exchange(&router, b"GET /health HTTP/1.0\r\n\r\n");
        assert_eq!(status(&answer), 200, "{answer}");
    })
    .await
    .unwrap();
    drop(sim);
}
