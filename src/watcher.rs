//! The config watcher: reloads servers.toml when it changes, without a restart.
//!
//! It watches the file's directory, not the file (editors save by writing a new file and
//! renaming it over the old one, which a watch on the file itself would miss), waits for the
//! writes to settle, then parses and validates the whole file. A good file is applied at once
//! (servers added and removed, settings changed; a server whose entry did not change keeps its
//! health and load). A bad one changes nothing and is reported loudly, with the file, line and
//! key. Every `config_reload_interval` the file is also compared with what was last loaded, for
//! file systems that deliver no events (some network and container mounts).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use notify::{RecursiveMode, Watcher};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::mpsc;

use crate::cluster::Cluster;
use crate::config::Config;

/// Writes to the file within this window are one change.
const SETTLE: Duration = Duration::from_millis(150);

pub struct ConfigWatcher {
    path: PathBuf,
    cluster: Arc<Cluster>,
    /// The text last loaded (or rejected), to skip events that changed nothing.
    initial_text: String,
}

impl ConfigWatcher {
    pub fn new(path: &Path, cluster: Arc<Cluster>, loaded_text: String) -> ConfigWatcher {
        ConfigWatcher {
            path: path.to_path_buf(),
            cluster,
            initial_text: loaded_text,
        }
    }
}

/// Loads the file if its text differs from `last`; applies it if it is valid.
fn reload(path: &Path, cluster: &Cluster, last: &mut String) {
    let Ok(text) = std::fs::read_to_string(path) else {
        // Mid-rename, or deleted: keep the running config; a later event brings the new file.
        return;
    };
    if text == *last {
        return;
    }
    *last = text.clone();
    match Config::parse(&text, path) {
        Ok(config) => {
            for (key, why) in &config.ignored {
                tracing::warn!(
                    "{}: {key} is accepted but has no effect ({why})",
                    path.display()
                );
            }
            let summary = cluster.apply(config);
            tracing::info!(file = %path.display(), %summary, "config reloaded");
        }
        Err(error) => {
            tracing::error!("config NOT reloaded, the running config stays in force: {error}");
        }
    }
}

#[async_trait]
impl BackgroundService for ConfigWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let file_name = self.path.file_name().map(|n| n.to_os_string());
        let mut watcher = match notify::recommended_watcher(
            move |event: notify::Result<notify::Event>| {
                if let Ok(event) = event {
                    let ours = event
                        .paths
                        .iter()
                        .any(|p| p.file_name().map(|n| n.to_os_string()) == file_name);
                    if ours {
                        let _ = tx.send(());
                    }
                }
            },
        ) {
            Ok(watcher) => Some(watcher),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the config file; checking it every config_reload_interval only");
                None
            }
        };
        let directory = match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if let Some(w) = watcher.as_mut() {
            if let Err(e) = w.watch(&directory, RecursiveMode::NonRecursive) {
                tracing::warn!(error = %e, dir = %directory.display(), "cannot watch the config directory");
            }
        }

        let mut last = self.initial_text.clone();
        let mut fallback = tokio::time::interval(self.cluster.settings().config_reload_interval);
        fallback.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                event = rx.recv() => {
                    if event.is_none() {
                        return;
                    }
                    // Let the editor finish: drain the burst of events, then read once.
                    tokio::time::sleep(SETTLE).await;
                    while rx.try_recv().is_ok() {}
                }
                _ = fallback.tick() => {}
            }
            let (path, cluster) = (self.path.clone(), Arc::clone(&self.cluster));
            let mut current = std::mem::take(&mut last);
            // File reads and parsing are blocking work: keep them off the async threads.
            last = tokio::task::spawn_blocking(move || {
                reload(&path, &cluster, &mut current);
                current
            })
            .await
            .unwrap_or_default();
        }
    }
}
