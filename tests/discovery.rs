//! DNS discovery: a server entry whose name resolves to many addresses (a headless Kubernetes
//! Service) is one server per address, found again as the answers change. A DNS server the
//! test controls answers on loopback; the "pods" are sims on 127.0.0.2 and 127.0.0.3.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::{client, get_json, poll_until, RouterProcess, Sim};
use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use serde_json::{json, Value};

/// What the test DNS server answers for every name.
#[derive(Clone)]
enum Answer {
    /// These A records (none: NXDOMAIN).
    Addresses(Vec<Ipv4Addr>),
    /// Nothing at all: a DNS server that is down.
    Silence,
}

/// A DNS server on 127.0.0.1 (UDP) whose answer the test sets, counting the queries it gets.
struct TestDns {
    addr: SocketAddr,
    answer: Arc<Mutex<Answer>>,
    queries: Arc<AtomicUsize>,
}

impl TestDns {
    async fn start(answer: Answer) -> TestDns {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let answer = Arc::new(Mutex::new(answer));
        let queries = Arc::new(AtomicUsize::new(0));
        let (answering, counting) = (Arc::clone(&answer), Arc::clone(&queries));
        tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                counting.fetch_add(1, Ordering::SeqCst);
                let answer = answering.lock().unwrap().clone();
                if let Some(reply) = reply(&query, &answer) {
                    let _ = socket.send_to(&reply, from).await;
                }
            }
        });
        TestDns {
            addr,
            answer,
            queries,
        }
    }

    fn set(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
}

fn reply(query: &Message, answer: &Answer) -> Option<Vec<u8>> {
    let Answer::Addresses(ips) = answer else {
        return None;
    };
    let mut reply = Message::new();
    reply
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_op_code(query.op_code())
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .add_queries(query.queries().to_vec());
    if ips.is_empty() {
        reply.set_response_code(ResponseCode::NXDomain);
    }
    for q in query.queries() {
        if q.query_type() == RecordType::A {
            for ip in ips {
                reply.add_answer(Record::from_rdata(q.name().clone(), 0, RData::A(A(*ip))));
            }
        }
    }
    reply.to_vec().ok()
}

/// The servers the router lists in /health: (url, discovered_from).
async fn servers(router: &RouterProcess) -> Vec<(String, Value)> {
    let health: Value = get_json(router.at("/health")).await;
    let mut listed: Vec<(String, Value)> = health["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["url"].as_str().unwrap().to_string(),
                s["discovered_from"].clone(),
            )
        })
        .collect();
    listed.sort_by(|a, b| a.0.cmp(&b.0));
    listed
}

async fn wait_for_servers(router: &RouterProcess, urls: &[String]) {
    poll_until(
        format!("the router never listed exactly {urls:?}"),
        || async { servers(router).await.iter().map(|s| &s.0).eq(urls.iter()) },
    )
    .await;
}

async fn stream_through(router: &RouterProcess, tokens: u32) -> reqwest::Response {
    client()
        .post(router.at("/v1/completions"))
        .json(&json!({"model": "llama", "prompt": "x", "max_tokens": tokens, "stream": true}))
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_address_of_a_name_is_a_server_and_follows_the_answers() {
    let sim_args = ["--served-model-name", "llama", "--itl-ms", "10"];
    let a = Sim::start_at("127.0.0.2", 0, &sim_args).await;
    let port: u16 = a.url.rsplit(':').next().unwrap().parse().unwrap();
    let b = Sim::start_at("127.0.0.3", port, &sim_args).await;
    let (url_a, url_b) = (
        format!("http://127.0.0.2:{port}"),
        format!("http://127.0.0.3:{port}"),
    );
    let entry = format!("http://vllm-headless.test:{port}");

    let dns = TestDns::start(Answer::Addresses(vec![Ipv4Addr::new(127, 0, 0, 2)])).await;
    let router = RouterProcess::launch_toml(&format!(
        "[servers]\nservers = [ {{ url = \"{entry}\", dns_discovery = true, max_concurrent_requests = 4 }} ]\n\
         [config]\nmetrics_interval = 0.2\ndns_refresh_interval = 1\nhealth_check_timeout = 0.5\ndns_server = \"{}\"\nexpose_routing_headers = true\n",
        dns.addr
    ))
    .await;

    // Found before the first request: one server, named by its address, from the entry.
    router.wait_healthy(1).await;
    assert_eq!(servers(&router).await, vec![(url_a.clone(), json!(entry))]);

    // A second pod appears: it is a server too, with the entry's capacity, and takes traffic.
    dns.set(Answer::Addresses(vec![
        Ipv4Addr::new(127, 0, 0, 2),
        Ipv4Addr::new(127, 0, 0, 3),
    ]));
    router.wait_healthy(2).await;
    let stats: Value = get_json(router.at("/load-stats")).await;
    for server in stats["servers"].as_array().unwrap() {
        assert_eq!(server["max_capacity"], 4, "{server}");
        assert_eq!(server["discovered_from"], json!(entry), "{server}");
    }

    // Two long streams at once: least-load puts one on each pod. (The second starts once the
    // first has its answer's header, so the router counts the first in flight: two requests
    // choosing in the same microsecond on two threads can both see two idle pods.) Then the
    // first pod leaves DNS: it is removed, and the stream it is serving still finishes whole.
    let one = stream_through(&router, 150).await;
    let two = stream_through(&router, 150).await;
    let upstream = |r: &reqwest::Response| {
        r.headers()["x-mvllm-upstream"]
            .to_str()
            .unwrap()
            .to_string()
    };
    let mut upstreams = vec![upstream(&one), upstream(&two)];
    upstreams.sort();
    assert_eq!(upstreams, vec![url_a.clone(), url_b.clone()]);
    dns.set(Answer::Addresses(vec![Ipv4Addr::new(127, 0, 0, 3)]));
    wait_for_servers(&router, std::slice::from_ref(&url_b)).await;
    for stream in [one, two] {
        let body = stream.text().await.unwrap();
        assert!(
            body.trim_end().ends_with("data: [DONE]"),
            "a stream was cut: {body}"
        );
        assert_eq!(
            common::sse_payloads(&body).len(),
            150 + 1,
            "every token and [DONE]"
        );
    }

    // The DNS server goes silent: the last addresses stay (a DNS hiccup takes nothing out).
    dns.set(Answer::Silence);
    let asked = dns.queries();
    poll_until("the router never asked again".into(), || async {
        dns.queries() >= asked + 3
    })
    .await;
    assert_eq!(servers(&router).await, vec![(url_b.clone(), json!(entry))]);
    let r = client()
        .post(router.at("/v1/completions"))
        .json(&json!({"model": "llama", "prompt": "x", "max_tokens": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // The name is gone (no ready pods: NXDOMAIN): no servers until it comes back.
    dns.set(Answer::Addresses(vec![]));
    wait_for_servers(&router, &[]).await;
    dns.set(Answer::Addresses(vec![Ipv4Addr::new(127, 0, 0, 2)]));
    wait_for_servers(&router, std::slice::from_ref(&url_a)).await;
    router.wait_healthy(1).await;
    drop((a, b));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_that_adds_a_discovery_entry_looks_it_up_at_once() {
    let sim = Sim::start_at("127.0.0.4", 0, &["--served-model-name", "llama"]).await;
    let port: u16 = sim.url.rsplit(':').next().unwrap().parse().unwrap();
    let dns = TestDns::start(Answer::Addresses(vec![Ipv4Addr::new(127, 0, 0, 4)])).await;
    let config = |servers: &str| {
        format!(
            "[servers]\nservers = [{servers}]\n[config]\nmetrics_interval = 0.2\n\
             dns_refresh_interval = 3600\ndns_server = \"{}\"\nconfig_reload_interval = 0.2\n",
            dns.addr
        )
    };
    let router = RouterProcess::launch_toml(&config("")).await;
    poll_until("the router never answered".into(), || async {
        client().get(router.at("/health")).send().await.is_ok()
    })
    .await;
    let entry = format!("{{ url = \"http://pods.test:{port}\", dns_discovery = true }}");
    common::save_like_an_editor(router.config_path(), &config(&entry));
    // The refresh interval is an hour: only the reload can have triggered the lookup.
    router.wait_healthy(1).await;
    assert_eq!(
        servers(&router).await[0].0,
        format!("http://127.0.0.4:{port}")
    );
    drop(sim);
}
