//! `mvllm run`: the command line, turned into a Pingora server with the router, the poller
//! and the drain watcher.
//!
//! Pingora's own options (daemon, upgrade, test, YAML conf) are flags of `mvllm run`, so the
//! router's command line stays in charge; without `--conf`, the built-in server settings are
//! those of conf/mvllm.yaml.

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use clap::Args;
use pingora::connectors::http::v1::Connector;
use pingora::connectors::ConnectorOptions;
use pingora::prelude::{http_proxy_service, Opt};
use pingora::server::configuration::ServerConf;
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};

use crate::balance::LeastLoad;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::poller::Poller;
use crate::proxy::Router;
use crate::watcher::ConfigWatcher;

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The servers file.
    #[arg(long, short, default_value = "servers.toml", env = "CONFIG_PATH")]
    pub config: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    pub host: String,
    /// Port to listen on; 0 picks a free one (the address is printed on stdout).
    #[arg(long, default_value_t = 8888)]
    pub port: u16,
    /// Log to the console (the default until the fullscreen monitor exists, and whenever
    /// stdout is not a terminal).
    #[arg(long)]
    pub console: bool,
    /// Pingora server settings (YAML): threads, grace periods, pid file, upgrade socket.
    /// Without it, the settings of conf/mvllm.yaml are built in.
    #[arg(long, value_name = "YAML", help_heading = "Pingora")]
    pub conf: Option<String>,
    /// Run in the background (pid file and logs per the Pingora conf).
    #[arg(long, short, help_heading = "Pingora")]
    pub daemon: bool,
    /// Take over the listening sockets of a running mvllm (zero-downtime binary upgrade:
    /// start the new binary with --upgrade, then send SIGQUIT to the old one).
    #[arg(long, short, help_heading = "Pingora")]
    pub upgrade: bool,
    /// Check the configuration and exit.
    #[arg(long, short, help_heading = "Pingora")]
    pub test: bool,
}

/// The built-in Pingora settings (the same as conf/mvllm.yaml).
fn default_server_conf() -> ServerConf {
    ServerConf {
        threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
        // On SIGTERM the drain watcher exits as soon as no request is in flight; these are
        // the upper bounds for long streams.
        grace_period_seconds: Some(60),
        graceful_shutdown_timeout_seconds: Some(5),
        pid_file: "/tmp/mvllm.pid".into(),
        upgrade_sock: "/tmp/mvllm_upgrade.sock".into(),
        ..ServerConf::default()
    }
}

/// Builds and runs the router; returns only on a start-up error.
pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let config = Config::load(&args.config).map_err(|e| anyhow::anyhow!("error: {e}"))?;
    for (key, why) in &config.ignored {
        tracing::warn!(
            "{}: {key} is accepted but has no effect ({why})",
            config.source.display()
        );
    }
    if args.test {
        print!("{}", config.describe());
        return Ok(());
    }
    let port = match args.port {
        0 => free_port(&args.host)?,
        port => port,
    };
    let address = format!("{}:{port}", args.host);

    let servers = config.servers.len();
    let source = config.source.clone();
    let cluster = Arc::new(Cluster::new(config.servers, config.settings));
    warm_up(&cluster)?;

    let opt = Opt {
        upgrade: args.upgrade,
        daemon: args.daemon,
        nocapture: false,
        test: false,
        conf: args.conf.clone(),
    };
    let mut server = match &args.conf {
        Some(path) => Server::new(Some(opt))
            .map_err(|e| anyhow::anyhow!("error: Pingora conf {path}: {e}"))?,
        None => Server::new_with_opt_and_conf(opt, default_server_conf()),
    };
    server.bootstrap();

    let active = Arc::new(AtomicUsize::new(0));
    let connector = Connector::new(Some(ConnectorOptions::from_server_conf(
        &server.configuration,
    )));
    let router = Router::new(
        Arc::clone(&cluster),
        Box::new(LeastLoad),
        connector,
        Arc::clone(&active),
    );
    let mut proxy = http_proxy_service(&server.configuration, router);
    proxy.add_tcp(&address);
    server.add_service(proxy);
    server.add_service(background_service(
        "poller",
        Poller::new(Arc::clone(&cluster)),
    ));
    server.add_service(background_service("drain", Drain { active }));
    let loaded_text = std::fs::read_to_string(&source).unwrap_or_default();
    let watcher = ConfigWatcher::new(&source, Arc::clone(&cluster), loaded_text);
    server.add_service(background_service("config watcher", watcher));

    let shown = if args.host == "0.0.0.0" {
        format!("127.0.0.1:{port}")
    } else {
        address.clone()
    };
    let url = format!("http://{shown}");
    // Scripts and tests read the address from this line.
    println!(
        "mvllm: routing to {servers} server(s) from {} on {url}",
        config.source.display()
    );
    server.run_forever()
}

/// Checks every server once before taking traffic (see `Poller::warm_up`). Runs on its own
/// short-lived runtime, which is gone before Pingora starts (and possibly daemonizes).
fn warm_up(cluster: &Arc<Cluster>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the start-up runtime")?;
    runtime.block_on(Poller::new(Arc::clone(cluster)).warm_up());
    let healthy = cluster.backends().iter().filter(|b| b.is_healthy()).count();
    tracing::info!(healthy, total = cluster.backends().len(), "servers checked");
    Ok(())
}

/// A free TCP port on `host` (for `--port 0`).
pub(crate) fn free_port(host: &str) -> anyhow::Result<u16> {
    let listener =
        TcpListener::bind((host, 0)).with_context(|| format!("cannot listen on {host}"))?;
    Ok(listener.local_addr()?.port())
}

/// Ends the process as soon as a graceful shutdown (SIGTERM, or the old process of an
/// upgrade) has no request left in flight, instead of sitting out Pingora's whole grace
/// period.
struct Drain {
    active: Arc<AtomicUsize>,
}

#[async_trait]
impl BackgroundService for Drain {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if shutdown.changed().await.is_err() {
            return;
        }
        loop {
            if self.active.load(Relaxed) == 0 {
                tracing::info!("no request in flight: exiting");
                std::process::exit(0);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
