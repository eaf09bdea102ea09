//! `mvllm run --daemon`: detaching from the terminal, before anything else starts.
//!
//! Pingora can daemonize by itself, but it does so inside `Server::run`, on the thread that
//! calls it, after other threads may exist. mvllm runs Pingora on a thread of its own (so
//! that a drained shutdown returns from `main`, destructors and all), so it daemonizes first,
//! itself, with the crate and the settings Pingora would use (the Pingora conf's pid file —
//! the previous one kept as `.old`, as during an upgrade —, error log, user, group, umask).
//! One difference: the working directory is kept unless the conf names one, so relative paths
//! given on the command line still mean what they meant.

use std::fs::OpenOptions;
use std::path::Path;

use anyhow::Context as _;
use daemonix::{Daemonize, Stdio};
use pingora::server::configuration::ServerConf;

/// Forks into the background: the calling process exits, the daemon returns `Ok`.
pub fn detach(conf: &ServerConf) -> anyhow::Result<()> {
    keep_old_pid_file(&conf.pid_file);
    let directory = match &conf.working_directory {
        Some(dir) => dir.into(),
        None => std::env::current_dir().context("cannot read the working directory")?,
    };
    let mut daemon = Daemonize::new()
        .umask(0o007)
        .pid_file(&conf.pid_file)
        .working_directory(directory);
    daemon = match &conf.error_log {
        Some(path) => {
            let log = OpenOptions::new()
                .append(true)
                .create(true)
                .open(path)
                .with_context(|| format!("cannot open the error log {path}"))?;
            daemon.stderr(Stdio::from(log))
        }
        None => daemon.stdout(Stdio::keep()).stderr(Stdio::keep()),
    };
    if let Some(user) = &conf.user {
        daemon = daemon.user(user.as_str());
    }
    if let Some(group) = &conf.group {
        daemon = daemon.group(group.as_str());
    }
    daemon
        .start()
        .with_context(|| format!("cannot run as a daemon (pid file {})", conf.pid_file))
}

/// A running daemon's pid file is kept as `<pid_file>.old`, so the new one can be written and
/// locked (the old process keeps its lock until it exits).
fn keep_old_pid_file(path: &str) {
    if Path::new(path).exists() {
        if let Err(e) = std::fs::rename(path, format!("{path}.old")) {
            eprintln!("mvllm: cannot move the old pid file {path} aside: {e}");
        }
    }
}
