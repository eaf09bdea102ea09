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

        // Framing the router cannot trust: refused with 400 in OpenAI's shape, saying what is
        // wrong without echoing the client's bytes, and the connection closed.
        let refused: [(&[u8], &str); 5] = [
            // two different lengths
            (b"POST /v1/chat/completions HTTP/1.1\r\nHost: router\r\nContent-Length: 2\r\nContent-Length: 40\r\n\r\n{}", "ength"),
            // a transfer coding that is not chunked
            (b"POST /v1/chat/completions HTTP/1.1\r\nHost: router\r\nTransfer-Encoding: xchunked\r\n\r\n{}", "ransfer"),
            // not HTTP at all
            (b"HELLO WORLD\r\n\r\n", "not valid HTTP/1.1"),
            // a NUL in a header value
            (b"GET /health HTTP/1.1\r\nHost: router\r\nX-A: a\x00b\r\n\r\n", "header"),
            // an absolute-form target whose host is not the Host header
            (b"GET http://elsewhere.example/v1/models HTTP/1.1\r\nHost: router\r\n\r\n", "Host"),
        ];
        for (raw, says) in refused {
            let answer = exchange(&router, raw);
            let request = String::from_utf8_lossy(raw);
            assert_eq!(status(&answer), 400, "{request:?}: {answer}");
            let error = openai_error(&answer);
            assert_eq!(error["error"]["code"], 400, "{answer}");
            let message = error["error"]["message"].as_str().unwrap();
            assert!(message.contains(says), "{request:?}: {message}");
            assert!(
                !message.contains("HELLO") && !message.contains("elsewhere"),
                "the client's bytes echoed: {message}"
            );
        }

        // CONNECT: not a proxy. 405 in OpenAI's shape, connection closed.
        let answer = exchange(&router, b"CONNECT elsewhere.example:443 HTTP/1.1\r\nHost: elsewhere.example:443\r\n\r\n");
        assert_eq!(status(&answer), 405, "{answer}");
        assert_eq!(openai_error(&answer)["error"]["code"], 405, "{answer}");

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

/// Reads one HTTP answer (header, then a `Content-Length` body) from a kept-alive socket.
fn read_answer(socket: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\r\n\r\n") {
        assert_eq!(socket.read(&mut byte).unwrap(), 1, "closed mid-header");
        answer.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&answer).to_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    socket.read_exact(&mut body).unwrap();
    answer.extend_from_slice(&body);
    String::from_utf8_lossy(&answer).into_owned()
}

/// Whether the router closes `socket` within `limit` (reads return end of file or a reset).
fn closed_within(socket: &mut TcpStream, limit: Duration) -> bool {
    socket.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 64];
    matches!(socket.read(&mut buf), Ok(0))
        || matches!(socket.read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
}

fn connect(router: &RouterProcess) -> TcpStream {
    let socket = TcpStream::connect(router.url.trim_start_matches("http://")).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    socket
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_and_greedy_clients_are_cut_off() {
    let sim = Sim::start(&["--served-model-name", "m", "--itl-ms", "20"]).await;
    let limits = "metrics_interval = 0.2\n[limits]\nheader_timeout = 1\nbody_timeout = 1\nmax_headers = 20\n";
    let router = RouterProcess::start(&[(&sim.url, 4)], limits).await;

    tokio::task::spawn_blocking(move || {
        // Slowloris: a header that never ends, a line every 200 ms. Each read is quick, so
        // only a deadline on the whole header stops it.
        let mut socket = connect(&router);
        let started = std::time::Instant::now();
        socket.write_all(b"GET /health HTTP/1.1\r\nHost: router\r\n").unwrap();
        let mut closed = false;
        for i in 0..40 {
            if socket.write_all(format!("X-Slow-{i}: 1\r\n").as_bytes()).is_err()
                || closed_within(&mut socket, Duration::from_millis(200))
            {
                closed = true;
                break;
            }
        }
        let took = started.elapsed();
        assert!(closed, "a trickled header held its connection for {took:?}");
        assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(4), "{took:?}");

        // The deadline is on the header only: an answer that takes longer (80 tokens at
        // 20 ms) is delivered whole, and the connection serves the next request.
        let mut socket = connect(&router);
        let body = br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":80}"#;
        let mut raw = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: router\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        raw.extend_from_slice(body);
        let started = std::time::Instant::now();
        socket.write_all(&raw).unwrap();
        let answer = read_answer(&mut socket);
        assert_eq!(status(&answer), 200, "{answer}");
        assert!(started.elapsed() > Duration::from_millis(1200), "{:?}", started.elapsed());
        assert!(answer.contains("\"completion_tokens\":80"), "{answer}");
        socket.write_all(b"GET /health HTTP/1.1\r\nHost: router\r\n\r\n").unwrap();
        assert_eq!(status(&read_answer(&mut socket)), 200);

        // A body that stops coming: 408 in OpenAI's shape when body_timeout runs out.
        let started = std::time::Instant::now();
        let answer = exchange(
            &router,
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: router\r\nContent-Length: 1000\r\n\r\n{\"model\":",
        );
        assert_eq!(status(&answer), 408, "{answer}");
        assert!(openai_error(&answer)["error"]["message"].as_str().unwrap().contains("body_timeout"));
        assert!(started.elapsed() < Duration::from_secs(4));

        // Too many header fields, or too large a header: 431, and the connection still serves.
        let mut many = String::from("GET /health HTTP/1.1\r\nHost: router\r\n");
        for i in 0..30 {
            many.push_str(&format!("X-Field-{i}: 1\r\n"));
        }
        many.push_str("\r\n");
        let mut socket = connect(&router);
        socket.write_all(many.as_bytes()).unwrap();
        let answer = read_answer(&mut socket);
        assert_eq!(status(&answer), 431, "{answer}");
        assert!(openai_error(&answer)["error"]["message"].as_str().unwrap().contains("max_headers"));
        socket.write_all(b"GET /health HTTP/1.1\r\nHost: router\r\n\r\n").unwrap();
        assert_eq!(status(&read_answer(&mut socket)), 200, "kept alive after a 431");
        let big = format!(
            "GET /health HTTP/1.1\r\nHost: router\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
            "a".repeat(40 * 1024)
        );
        let answer = exchange(&router, big.as_bytes());
        assert_eq!(status(&answer), 431, "{answer}");
        assert!(openai_error(&answer)["error"]["message"].as_str().unwrap().contains("max_header_bytes"));
    })
    .await
    .unwrap();
    drop(sim);
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_over_the_limit_get_503_and_idle_ones_are_closed() {
    let sim = Sim::start(&["--served-model-name", "m", "--itl-ms", "1"]).await;
    let limits = "metrics_interval = 0.2\n[limits]\nmax_connections = 3\nidle_timeout = 1\nheader_timeout = 30\n";
    let router = RouterProcess::start(&[(&sim.url, 4)], limits).await;

    tokio::task::spawn_blocking(move || {
        // Three connections held open, sending nothing: a fourth is turned away with a 503.
        let held: Vec<TcpStream> = (0..3).map(|_| connect(&router)).collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let answer = loop {
            let answer = exchange(
                &router,
                b"GET /health HTTP/1.1\r\nHost: r\r\nConnection: close\r\n\r\n",
            );
            if status(&answer) == 503 || std::time::Instant::now() > deadline {
                break answer;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(status(&answer), 503, "{answer}");
        assert!(answer.to_lowercase().contains("retry-after: 1"), "{answer}");
        assert!(openai_error(&answer)["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_connections"));
        drop(held);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let answer = exchange(
                &router,
                b"GET /health HTTP/1.1\r\nHost: r\r\nConnection: close\r\n\r\n",
            );
            if status(&answer) == 200 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "closed connections never freed: {answer}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }

        // A kept-alive connection serves requests while it is used, and is closed once it
        // sits idle past idle_timeout.
        let mut socket = connect(&router);
        for _ in 0..3 {
            socket
                .write_all(b"GET /health HTTP/1.1\r\nHost: r\r\n\r\n")
                .unwrap();
            assert_eq!(status(&read_answer(&mut socket)), 200);
            std::thread::sleep(Duration::from_millis(300));
        }
        let started = std::time::Instant::now();
        assert!(
            closed_within(&mut socket, Duration::from_secs(5)),
            "an idle connection stayed open"
        );
        assert!(
            started.elapsed() >= Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
    })
    .await
    .unwrap();
    drop(sim);
}
