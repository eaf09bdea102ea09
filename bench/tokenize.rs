//! What getting a request's prompt tokens costs (issue 13), for each way the router gets them:
//!
//!   cargo bench --bench tokenize
//!
//! - a local tokenizer (`[routing] tokenizers`): rendering the chat template and encoding, for
//!   chats of 2, 8 and 32 KB (the fixture's small byte-level BPE tokenizer of
//!   tests/fixtures/tokenizer: about 2.5 bytes a token on this text, a real 150k-token
//!   vocabulary gives about 4);
//! - the token cache (a conversation's next turn, or the same prompt again): parsing the body
//!   and hashing its messages;
//! - a server's `/tokenize` (a prompt not seen before): one HTTP round trip to an in-process
//!   `mvllm sim` on loopback, which is what such a request waits for before it is routed.
#[path = "timing.rs"]
mod timing;

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mvllm::prompt_tokens::local::LocalTokenizer;
use mvllm::prompt_tokens::{tokenize_body, Tokenization};
use timing::time_per_call;

fn chat(model: &str, bytes: usize, question: &str) -> Vec<u8> {
    let system = "A router sends each request to the server that will answer it soonest. "
        .repeat(bytes / 40 + 1);
    serde_json::json!({
        "model": model,
        "messages": [
            {"role": "system", "content": &system[..bytes]},
            {"role": "user", "content": question},
        ],
    })
    .to_string()
    .into_bytes()
}

fn main() {
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tokenizer");
    let (local, _) = LocalTokenizer::load(std::path::Path::new(fixture)).expect("the fixture");
    for kb in [2, 8, 32] {
        let body = chat("m", kb * 1024, "Which server?");
        let tokens = tokenize_body(&local, &body).unwrap().len();
        let took = time_per_call(200, || {
            black_box(tokenize_body(&local, black_box(&body)).unwrap());
        });
        // Of which encoding the rendered text (the rest: parsing and the chat template).
        let text = String::from_utf8(body.clone()).unwrap();
        let encode = time_per_call(200, || {
            black_box(local.encode(black_box(&text), false).unwrap());
        });
        println!(
            "local tokenizer, {kb:>2} KB chat ({tokens} tokens): {took:.2?} (encoding alone {encode:.2?})"
        );
    }

    let cache = Tokenization::new(16 << 20);
    for kb in [2, 8, 32] {
        let body = chat("m", kb * 1024, "Which server?");
        let tokens: Arc<[u32]> = tokenize_body(&local, &body).unwrap().into();
        cache.remember("m", &body, tokens);
        assert!(cache.cached("m", &body).is_some());
        let took = time_per_call(2_000, || {
            black_box(cache.cached("m", black_box(&body)));
        });
        println!("token cache hit, {kb:>2} KB chat: {took:.2?}");
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let args = ["sim", "--port", "0", "--itl-ms", "1"];
        let cli =
            <mvllm::cli::Cli as clap::Parser>::parse_from(std::iter::once("mvllm").chain(args));
        let mvllm::cli::Command::Sim(sim) = cli.command else {
            unreachable!("sim arguments")
        };
        let cfg = (*sim).validate().unwrap();
        let (address, serving) = mvllm::sim::bind(cfg).await.unwrap();
        tokio::spawn(serving);
        let client = reqwest::Client::builder()
            .no_proxy()
            .tls_built_in_root_certs(false)
            .build()
            .unwrap();
        let url = format!("http://{address}/tokenize");
        for kb in [2, 8, 32] {
            let body = chat("mvllm/sim-model", kb * 1024, "Which server?");
            let mut took: Vec<Duration> = Vec::new();
            for _ in 0..300 {
                let started = Instant::now();
                let answer = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                assert!(answer.status().is_success());
                black_box(answer.bytes().await.unwrap());
                took.push(started.elapsed());
            }
            took.sort();
            println!(
                "server /tokenize round trip, {kb:>2} KB chat: p50 {:.2?}, p99 {:.2?}",
                took[took.len() / 2],
                took[took.len() * 99 / 100]
            );
        }
    });
}
