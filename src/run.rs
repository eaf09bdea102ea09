//! `mvllm run`: the command line, turned into a Pingora server with the router and its
//! background services (poller, config watcher, drain).
//!
//! Pingora's own options (daemon, upgrade, test, YAML conf) are flags of `mvllm run`, so the
//! router's command line stays in charge; without `--conf`, the built-in server settings are
//! conf/mvllm.yaml's, compiled in.
//!
//! How it stops: Pingora runs on a thread of its own; this function waits for either the drain
//! (a graceful shutdown — SIGTERM, or the old process of an upgrade — with no request left in
//! flight) or Pingora itself (SIGINT, or the end of the grace period), then returns, so that
//! `main` returns: logs are flushed and every destructor runs.

use std::io::IsTerminal;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_trait::async_trait;
use clap::Args;
use pingora::connectors::ConnectorOptions;
use pingora::prelude::Opt;
use pingora::server::configuration::ServerConf;
use pingora::server::{
    RunArgs as PingoraRunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch,
    UnixShutdownSignalWatch,
};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;

use crate::access_log::AccessLog;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::decisions;
use crate::discovery::Discovery;
use crate::entry::{Recorder, Router};
use crate::front_door::{self, ConnectionGate};
use crate::logging::{self, LogFormat, LogPane, LogTarget};
use crate::monitor::{Monitor, Quit, Sources};
use crate::poller::Poller;
use crate::pool::{PoolSweeper, UpstreamPool};
use crate::stats::Stats;
use crate::tls::ClientListener;
use crate::traces::Traces;
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
    /// Console mode: plain logs with a line per request (the access log). It is also the mode
    /// whenever stdout is not a terminal; on a terminal without it, the access log is off.
    #[arg(long)]
    pub console: bool,
    /// No access log, even in console mode.
    #[arg(long)]
    pub no_access_log: bool,
    /// Append the logs to this file instead of writing them to stderr (with the monitor,
    /// besides its log pane).
    #[arg(long, value_name = "PATH")]
    pub log_file: Option<PathBuf>,
    /// Pingora server settings (YAML): threads, grace periods, pid file, upgrade socket.
    /// Without it, the settings of conf/mvllm.yaml are built in.
    #[arg(long, value_name = "YAML", help_heading = "Pingora")]
    pub conf: Option<String>,
    /// Run in the background (pid file and error log per the Pingora conf).
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

/// How long no request must have begun before a draining router stops (see `Drain`).
const QUIET: Duration = Duration::from_millis(500);

/// Routing decisions the monitor's why view keeps.
const DECISIONS_KEPT: usize = 200;

/// conf/mvllm.yaml, compiled in: the built-in Pingora settings are that file, exactly.
const BUILT_IN_CONF: &str = include_str!("../conf/mvllm.yaml");

/// The Pingora settings: the `--conf` file, or the built-in ones. `threads: 0` means one per
/// CPU core (Pingora itself needs a number).
pub fn server_conf(path: Option<&str>) -> anyhow::Result<ServerConf> {
    let mut conf = match path {
        Some(path) => ServerConf::load_from_yaml(path)
            .map_err(|e| anyhow::anyhow!("error: Pingora conf {path}: {e}"))?,
        None => ServerConf::from_yaml(BUILT_IN_CONF)
            .map_err(|e| anyhow::anyhow!("the built-in Pingora conf is invalid: {e}"))?,
    };
    if conf.threads == 0 {
        conf.threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    }
    Ok(conf)
}

/// Builds and runs the router; returns when it has stopped.
pub fn run(args: RunArgs, log_format: LogFormat) -> anyhow::Result<()> {
    // Absolute, so that the watcher finds it whatever the working directory becomes.
    let path = std::path::absolute(&args.config).unwrap_or_else(|_| args.config.clone());
    let (config, loaded_text) =
        Config::load_with_text(&path).map_err(|e| anyhow::anyhow!("error: {e}"))?;
    if args.test {
        print!("{}", config.describe());
        return Ok(());
    }
    let mut conf = server_conf(args.conf.as_deref())?;
    // Daemonizing is done here, before Pingora starts (see daemon.rs), whether the flag or
    // the conf asks for it; Pingora must not do it again on its own thread.
    let daemon = args.daemon || conf.daemon;
    conf.daemon = false;
    let port = match args.port {
        0 => free_port(&args.host)?,
        port => port,
    };
    if let Some(admin) = config.settings.admin_address {
        if admin.port() == port {
            anyhow::bail!(
                "error: {}: admin_address {admin} uses the router's own port {port}; give it another",
                path.display()
            );
        }
    }
    let address = format!("{}:{port}", args.host);
    let shown = if args.host == "0.0.0.0" {
        format!("127.0.0.1:{port}")
    } else {
        address.clone()
    };
    // Scripts and tests read the address from this line.
    let ready_line = format!(
        "mvllm: routing to {} server(s) from {} on http://{shown}",
        config.servers.len(),
        args.config.display()
    );
    let console = args.console || !std::io::stdout().is_terminal();
    // The fullscreen monitor: on a terminal, unless --console (or --daemon) says otherwise.
    let monitored = !console && !daemon;
    if daemon {
        println!("{ready_line} (as a daemon, pid file {})", conf.pid_file);
        crate::daemon::detach(&conf)?;
    }

    let pane = LogPane::default();
    let target = match (&args.log_file, monitored) {
        (file, true) => LogTarget::Pane(pane.clone(), file.as_deref()),
        (Some(file), false) => LogTarget::File(file),
        (None, false) => LogTarget::Stderr,
    };
    let logs = logging::init_to(log_format, target)?;
    for (key, why) in &config.ignored {
        tracing::warn!(
            "{}: {key} is accepted but has no effect ({why})",
            path.display()
        );
    }
    let tls_listener = ClientListener::from_config(&config.tls, &path)?;
    if let Some(listener) = &tls_listener {
        if listener.address.port() == port {
            anyhow::bail!(
                "error: {}: tls.listen {} uses the router's own port {port}; give it another",
                path.display(),
                listener.address
            );
        }
    }
    let cluster = Arc::new(
        Cluster::new(config, Arc::new(Stats::new())).map_err(|e| anyhow::anyhow!("error: {e}"))?,
    );
    warm_up(&cluster)?;

    let opt = Opt {
        upgrade: args.upgrade,
        daemon: false, // done above, by detach()
        nocapture: false,
        test: false,
        conf: None,
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let pool = Arc::new(UpstreamPool::new(
        Some(ConnectorOptions::from_server_conf(&server.configuration)),
        crate::upstream::POOL_IDLE_TIMEOUT,
        server.configuration.upstream_keepalive_pool_size,
    ));
    // The access log follows RUST_LOG like every log: it is the `access` target at info level
    // (RUST_LOG=warn silences it; RUST_LOG=warn,access=info keeps only it).
    let access_wanted = tracing::enabled!(target: "access", tracing::Level::INFO);
    let access_log = (console && !args.no_access_log && access_wanted)
        .then(|| AccessLog::new(logs.format, logs.writer.clone()));
    let (decision_log, recent_decisions) = match monitored {
        true => {
            let (log, recent) = decisions::channel(DECISIONS_KEPT);
            (Some(log), Some(recent))
        }
        false => (None, None),
    };
    let recorder = Arc::new(Recorder::new(
        Arc::clone(&cluster),
        access_log,
        decision_log,
    ));
    let admin = cluster.snapshot().settings.admin_address;
    let otlp_endpoint = cluster.snapshot().settings.otlp_endpoint.clone();
    let traces = Traces::start(otlp_endpoint.as_deref())?.map(Arc::new);
    let router = Router::new(
        Arc::clone(&cluster),
        Arc::clone(&pool),
        Arc::clone(&recorder),
        admin,
        traces.clone(),
    );
    let gate = ConnectionGate::new(router, Arc::clone(&cluster));
    let mut service = Service::new("mvllm".to_string(), gate);
    service.add_listener(front_door::listener(&address, None));
    if let Some(admin) = admin {
        service.add_listener(front_door::listener(&admin.to_string(), None));
    }
    let mut https = None;
    if let Some(listener) = tls_listener {
        service.add_listener(front_door::listener(
            &listener.address.to_string(),
            Some(listener.settings),
        ));
        server.add_service(background_service("tls certificate", listener.reloader));
        https = Some(listener.address);
    }
    server.add_service(service);
    server.add_service(background_service(
        "dns discovery",
        Discovery::new(Arc::clone(&cluster)),
    ));
    server.add_service(background_service(
        "upstream pool sweeper",
        PoolSweeper(pool),
    ));
    server.add_service(background_service(
        "poller",
        Poller::new(Arc::clone(&cluster)),
    ));
    server.add_service(background_service(
        "kv cache events",
        crate::kv_events::subscriber::KvSubscriber::new(Arc::clone(&cluster)),
    ));
    let watcher = ConfigWatcher::new(&path, Arc::clone(&cluster), loaded_text);
    server.add_service(background_service("config watcher", watcher));
    let (stopped, wait_stopped) = mpsc::channel();
    server.add_service(background_service(
        "drain",
        Drain {
            recorder: Arc::clone(&recorder),
            drained: stopped.clone(),
        },
    ));

    if !daemon {
        println!("{ready_line}");
        if let Some(https) = https {
            println!("mvllm: serving https on {https}");
        }
    }
    let quit = Arc::new(Quit::default());
    let monitor = match recent_decisions {
        Some(decisions) => Some(Monitor::start(Sources {
            cluster: Arc::clone(&cluster),
            recorder,
            decisions,
            log: pane,
            address: shown,
            quit: Arc::clone(&quit),
        })?),
        None => None,
    };
    let signals = Signals { quit };
    std::thread::Builder::new()
        .name("pingora".into())
        .spawn(move || {
            server.run(PingoraRunArgs {
                shutdown_signal: Box::new(signals),
            });
            let _ = stopped.send(());
        })
        .context("cannot start the server thread")?;
    let _ = wait_stopped.recv();
    if let Some(monitor) = monitor {
        monitor.stop();
    }
    if let Some(traces) = traces {
        traces.shutdown();
    }
    tracing::info!("stopped");
    println!("mvllm: stopped");
    drop(logs);
    Ok(())
}

/// Finds the servers of `dns_discovery` entries, then checks every server once before taking
/// traffic (see `Poller::warm_up`). Runs on its own
/// short-lived runtime, gone before Pingora starts.
fn warm_up(cluster: &Arc<Cluster>) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the start-up runtime")?;
    runtime.block_on(async {
        Discovery::new(Arc::clone(cluster)).refresh().await;
        Poller::new(Arc::clone(cluster)).warm_up().await;
    });
    let snapshot = cluster.snapshot();
    let healthy = snapshot
        .backends
        .iter()
        .filter(|b| b.state.is_healthy())
        .count();
    tracing::info!(
        healthy,
        total = snapshot.backends.len(),
        policy = %snapshot.policy.describe(),
        "servers checked"
    );
    Ok(())
}

/// A free TCP port on `host` (for `--port 0`).
pub(crate) fn free_port(host: &str) -> anyhow::Result<u16> {
    let listener =
        TcpListener::bind((host, 0)).with_context(|| format!("cannot listen on {host}"))?;
    Ok(listener.local_addr()?.port())
}

/// What stops the router: the Unix signals Pingora watches (SIGTERM drains, SIGQUIT hands
/// over to an upgrade, SIGINT stops at once), and `q` in the monitor, taken as a SIGTERM.
struct Signals {
    quit: Arc<Quit>,
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        tokio::select! {
            signal = UnixShutdownSignalWatch.recv() => signal,
            () = self.quit.requested() => ShutdownSignal::GracefulTerminate,
        }
    }
}

/// Says "stopped" as soon as a graceful shutdown (SIGTERM, or the old process of an upgrade)
/// has no request left in flight and none has begun for `QUIET`, instead of sitting out
/// Pingora's whole grace period.
struct Drain {
    recorder: Arc<Recorder>,
    drained: mpsc::Sender<()>,
}

#[async_trait]
impl BackgroundService for Drain {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if shutdown.changed().await.is_err() {
            return;
        }
        // Answers given from now on close their connections, but a client whose last answer
        // came before may still send one more request on its idle keep-alive connection (and
        // it is served). Exiting while none is in flight would cut that request as it arrives;
        // so the drain also waits until none has begun for `QUIET`.
        let mut begun = self.recorder.begun();
        let mut quiet_since = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now = self.recorder.begun();
            if now != begun {
                (begun, quiet_since) = (now, Instant::now());
            }
            if self.recorder.active() == 0 && quiet_since.elapsed() >= QUIET {
                break;
            }
        }
        tracing::info!("no request in flight: stopping");
        let _ = self.drained.send(());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_pingora_settings_are_conf_mvllm_yaml() {
        let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/mvllm.yaml");
        assert_eq!(
            server_conf(None).unwrap(),
            server_conf(Some(shipped)).unwrap()
        );
        let conf = server_conf(None).unwrap();
        assert!(conf.threads >= 1, "threads: 0 became one per core");
        assert_eq!(conf.grace_period_seconds, Some(30));
        assert_eq!(conf.upstream_keepalive_pool_size, 512);
    }
}
