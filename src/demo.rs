//! `mvllm demo`: the router in front of three simulated vLLM servers, in one process.
//! What a newcomer runs first.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Parser};

use crate::run::{run, RunArgs};
use crate::sim::SimArgs;

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Port of the router; 0 picks a free one (the simulated servers always do).
    #[arg(long, default_value_t = 8888)]
    pub port: u16,
    /// Address the router listens on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
}

/// Parses `mvllm sim` flags, for servers started in-process.
#[derive(Parser)]
struct SimFlags {
    #[command(flatten)]
    args: SimArgs,
}

/// The demo cluster: (capacity, served model names).
const SERVERS: [(u32, &[&str]); 3] = [
    (4, &["demo-llama"]),
    (8, &["demo-llama"]),
    (16, &["demo-llama", "demo-qwen"]),
];

pub fn demo(args: DemoArgs, log_format: crate::logging::LogFormat) -> anyhow::Result<()> {
    let addresses = start_servers()?;
    let config = write_config(&addresses)?;
    let port = match args.port {
        0 => crate::run::free_port(&args.host)?,
        port => port,
    };
    let shown_host = if args.host == "0.0.0.0" {
        "127.0.0.1"
    } else {
        &args.host
    };
    let url = format!("http://{shown_host}:{port}");
    println!("mvllm demo: the router in front of 3 simulated vLLM servers (no GPU involved)\n");
    for ((capacity, models), address) in SERVERS.iter().zip(&addresses) {
        println!(
            "  server http://{address}  capacity {capacity:>2}  models {}",
            models.join(", ")
        );
    }
    println!(
        "\nTry it:\n  curl -sN {url}/v1/chat/completions -H 'Content-Type: application/json' \\\n    \
         -d '{{\"model\":\"demo-llama\",\"messages\":[{{\"role\":\"user\",\"content\":\"Hello\"}}],\"stream\":true}}'\n  \
         curl -s {url}/load-stats\n\n\
         Or with the OpenAI SDK (pip install openai):\n  \
         python3 -c 'from openai import OpenAI; c = OpenAI(base_url=\"{url}/v1\", api_key=\"none\"); \
         print(c.chat.completions.create(model=\"demo-qwen\", messages=[{{\"role\":\"user\",\"content\":\"Hello\"}}]).choices[0].message.content)'\n\n\
         Ctrl-C stops everything. Config used: {}\n",
        config.display()
    );
    run(
        RunArgs {
            config,
            host: args.host,
            port,
            console: true,
            no_access_log: false,
            log_file: None,
            conf: None,
            daemon: false,
            upgrade: false,
            test: false,
        },
        log_format,
    )
}

/// Starts the simulated servers on their own runtime thread; returns their addresses.
fn start_servers() -> anyhow::Result<Vec<SocketAddr>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("demo-servers".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    let _ = tx.send(Err(anyhow::anyhow!(
                        "cannot start the demo servers' runtime: {e}"
                    )));
                    return;
                }
            };
            runtime.block_on(async move {
                let mut serving = Vec::new();
                let mut addresses = Vec::new();
                for (capacity, models) in SERVERS {
                    let mut flags = vec![
                        "sim".to_string(),
                        "--port".into(),
                        "0".into(),
                        "--itl-ms".into(),
                        "20".into(),
                    ];
                    flags.push("--max-num-seqs".into());
                    flags.push(capacity.to_string());
                    flags.push("--served-model-name".into());
                    flags.extend(models.iter().map(|m| m.to_string()));
                    let cfg = SimFlags::parse_from(flags)
                        .args
                        .validate()
                        .map_err(|e| anyhow::anyhow!(e));
                    let bound = match cfg {
                        Ok(cfg) => crate::sim::bind(cfg).await,
                        Err(e) => Err(e),
                    };
                    match bound {
                        Ok((address, server)) => {
                            addresses.push(address);
                            serving.push(tokio::spawn(server));
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    }
                }
                let _ = tx.send(Ok(addresses));
                std::future::pending::<()>().await;
            });
        })
        .context("cannot start the demo servers' thread")?;
    rx.recv().context("the demo servers did not start")?
}

fn write_config(addresses: &[SocketAddr]) -> anyhow::Result<PathBuf> {
    let mut toml = String::from("# Written by `mvllm demo`.\n[servers]\nservers = [\n");
    for ((capacity, _), address) in SERVERS.iter().zip(addresses) {
        toml.push_str(&format!(
            "  {{ url = \"http://{address}\", max_concurrent_requests = {capacity} }},\n"
        ));
    }
    toml.push_str("]\n");
    let path = std::env::temp_dir().join(format!("mvllm-demo-{}.toml", std::process::id()));
    std::fs::write(&path, toml).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}
