//! The config watcher: reloads servers.toml when it changes, without a restart.
//!
//! It watches the file's directory, not the file (editors save by writing a new file and
//! renaming it over the old one, which a watch on the file itself would miss; Kubernetes
//! ConfigMaps swap a symlink), waits for the writes to settle, then parses and validates the
//! whole file. A good file is applied at once (cluster.rs says how); a bad one changes nothing
//! and is reported loudly, with the file, line and key. Every `config_reload_interval` the file
//! is also compared with what was last loaded, for file systems that deliver no events (some
//! network and container mounts) and for when file events cannot be had at all: then the
//! watcher says so and polls. SIGHUP makes it read the file at once, too. Until a valid edit
//! arrives, the last refused one's error is shown in `/health` (`config_error`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use notify::{RecursiveMode, Watcher};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::mpsc;
use tokio::time::{interval_at, Instant, Interval, MissedTickBehavior};

use crate::cluster::Cluster;
use crate::config::Config;

/// Writes to the file within this window are one change.
const SETTLE: Duration = Duration::from_millis(150);

/// Starts delivering a `()` for every file event in `dir` that concerns `file_name`.
type EventSource = fn(
    dir: &Path,
    file_name: &std::ffi::OsStr,
    events: mpsc::UnboundedSender<()>,
) -> notify::Result<Box<dyn Watcher + Send>>;

pub struct ConfigWatcher {
    path: PathBuf,
    cluster: Arc<Cluster>,
    /// What the running config was read from: later edits are compared with it.
    loaded: Seen,
    events: EventSource,
}

impl ConfigWatcher {
    /// Watches `path`, whose text `loaded_text` is what the running config was parsed from.
    pub fn new(path: &Path, cluster: Arc<Cluster>, loaded_text: String) -> ConfigWatcher {
        let loaded = Seen::new(loaded_text, &cluster.config_files());
        ConfigWatcher {
            path: path.to_path_buf(),
            cluster,
            loaded,
            events: notify_events,
        }
    }
}

/// File events from `notify` (inotify on Linux).
fn notify_events(
    dir: &Path,
    file_name: &std::ffi::OsStr,
    events: mpsc::UnboundedSender<()>,
) -> notify::Result<Box<dyn Watcher + Send>> {
    let file_name = file_name.to_os_string();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let ours = event.is_ok_and(|event| {
            event.paths.iter().any(|p| {
                p.file_name()
                    .is_some_and(|name| name == file_name || is_configmap_swap(name))
            })
        });
        if ours {
            let _ = events.send(());
        }
    })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    Ok(Box::new(watcher))
}

/// Whether `name` is one of the entries Kubernetes swaps to update a mounted ConfigMap: the
/// file is a symlink through `..data`, a symlink to a timestamped directory (`..2026_…`) that
/// the kubelet replaces by renaming `..data_tmp` over it. The file's own name sees no event.
fn is_configmap_swap(name: &std::ffi::OsStr) -> bool {
    name.as_encoded_bytes().starts_with(b"..data")
}

/// What the running config was read from: the file's text, and a hash of each file it names
/// (client keys, CA bundles, client certificates), so that a rotated key or certificate is
/// a change even when servers.toml is not.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Seen {
    text: String,
    files: Vec<(std::path::PathBuf, Option<u64>)>,
}

impl Seen {
    pub fn new(text: String, files: &[std::path::PathBuf]) -> Seen {
        let files = files.iter().map(|f| (f.clone(), content_hash(f))).collect();
        Seen { text, files }
    }

    /// The same text, and the same contents of the same files.
    fn unchanged(&self, text: &str) -> bool {
        self.text == text && self.files.iter().all(|(f, hash)| content_hash(f) == *hash)
    }
}

/// A named file's contents, hashed; `None` if it cannot be read.
fn content_hash(file: &Path) -> Option<u64> {
    crate::config::read_small(file, 1 << 20)
        .ok()
        .map(|b| xxhash_rust::xxh3::xxh3_64(&b))
}

/// Loads the file if it, or a file it names, differs from `last`; applies it if it is valid.
fn reload(path: &Path, cluster: &Cluster, last: &mut Seen) {
    let Ok(text) = std::fs::read_to_string(path) else {
        // Mid-rename, or deleted: keep the running config; a later event brings the new file.
        return;
    };
    if last.unchanged(&text) {
        return;
    }
    last.text = text.clone();
    match Config::parse(&text, path) {
        Ok(config) => {
            *last = Seen::new(text, &config.files);
            for (key, why) in &config.ignored {
                tracing::warn!(
                    "{}: {key} is accepted but has no effect ({why})",
                    path.display()
                );
            }
            match cluster.apply(config) {
                Ok(summary) => {
                    cluster.stats().config_reloaded(true);
                    cluster.set_config_error(None);
                    tracing::info!(file = %path.display(), %summary, "config reloaded");
                }
                Err(why) => {
                    cluster.stats().config_reloaded(false);
                    cluster.set_config_error(Some(format!("{}: {why}", path.display())));
                    tracing::error!(file = %path.display(), %why, "config NOT reloaded, the running config stays in force");
                }
            }
        }
        Err(error) => {
            cluster.stats().config_reloaded(false);
            cluster.set_config_error(Some(error.to_string()));
            tracing::error!("config NOT reloaded, the running config stays in force: {error}");
        }
    }
}

/// SIGHUP, the Unix way to ask a daemon to read its config again (`systemctl reload` may send
/// it). `None` where it cannot be had.
fn hangup_signals() -> Option<tokio::signal::unix::Signal> {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signals) => Some(signals),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; the config file is still watched");
            None
        }
    }
}

/// The next SIGHUP, or never.
async fn next_hangup(signals: &mut Option<tokio::signal::unix::Signal>) {
    if let Some(signals) = signals {
        if signals.recv().await.is_some() {
            return;
        }
    }
    std::future::pending().await
}

/// A timer that first fires one `period` from now.
fn fallback_timer(period: Duration) -> Interval {
    let mut timer = interval_at(Instant::now() + period, period);
    timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
    timer
}

#[async_trait]
impl BackgroundService for ConfigWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let directory = match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let file_name = self.path.file_name().unwrap_or_default();
        let mut period = self.cluster.snapshot().settings.config_reload_interval;
        // Kept alive for as long as the watcher runs: dropping it stops the events.
        let mut events = match (self.events)(&directory, file_name, tx) {
            Ok(watcher) => Some(watcher),
            Err(e) => {
                tracing::warn!(error = %e, dir = %directory.display(), "cannot watch the config file's directory; checking the file every config_reload_interval ({period:?}) instead");
                None
            }
        };
        let mut fallback = fallback_timer(period);
        let mut hangups = hangup_signals();
        let mut last = self.loaded.clone();
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = next_hangup(&mut hangups) => {
                    tracing::info!(file = %self.path.display(), "SIGHUP: reading the config file again");
                }
                event = rx.recv(), if events.is_some() => {
                    if event.is_none() {
                        tracing::warn!("config file events stopped; checking the file every config_reload_interval instead");
                        events = None;
                        continue;
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
            // Follow a reloaded interval.
            let now = self.cluster.snapshot().settings.config_reload_interval;
            if now != period {
                period = now;
                fallback = fallback_timer(period);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Stats;

    fn servers_toml(urls: &[&str], reload_interval: f64) -> String {
        let mut text = String::from("[servers]\nservers = [\n");
        for url in urls {
            text.push_str(&format!("  {{ url = \"{url}\" }},\n"));
        }
        text + &format!("]\n[config]\nconfig_reload_interval = {reload_interval}\n")
    }

    fn no_events(
        _: &Path,
        _: &std::ffi::OsStr,
        _: mpsc::UnboundedSender<()>,
    ) -> notify::Result<Box<dyn Watcher + Send>> {
        Err(notify::Error::generic(
            "inotify: too many instances (simulated)",
        ))
    }

    async fn wait_for_servers(cluster: &Cluster, n: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while cluster.snapshot().backends.len() != n {
            assert!(
                std::time::Instant::now() < deadline,
                "never saw {n} servers"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn without_file_events_it_polls_and_follows_reloaded_intervals() {
        let dir = std::env::temp_dir().join(format!("mvllm-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("servers.toml");
        let text = servers_toml(&["http://a:1"], 0.1);
        std::fs::write(&path, &text).unwrap();
        let (config, loaded) = Config::load_with_text(&path).unwrap();
        let cluster = Arc::new(Cluster::new(config, Arc::new(Stats::new())).unwrap());
        let mut watcher = ConfigWatcher::new(&path, Arc::clone(&cluster), loaded);
        watcher.events = no_events;
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let running = tokio::spawn(async move { watcher.start(shutdown).await });

        // notify failed: the 0.1 s check still picks the edit up. The edit also makes the
        // check hourly.
        std::fs::write(&path, servers_toml(&["http://a:1", "http://b:1"], 3600.0)).unwrap();
        wait_for_servers(&cluster, 2).await;

        // Now an edit waits for the hourly check (before the fix, 0.1 s stayed in force).
        std::fs::write(
            &path,
            servers_toml(&["http://a:1", "http://b:1", "http://c:1"], 3600.0),
        )
        .unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            cluster.snapshot().backends.len(),
            2,
            "the hourly interval is in force"
        );

        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), running)
            .await
            .expect("the watcher stops on shutdown")
            .unwrap();
        std::fs::remove_dir_all(&dir).ok();
    }

    #[tokio::test]
    async fn an_edit_made_before_the_watcher_starts_is_applied() {
        let dir = std::env::temp_dir().join(format!("mvllm-watch-early-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("servers.toml");
        std::fs::write(&path, servers_toml(&["http://a:1"], 0.1)).unwrap();
        let (config, loaded) = Config::load_with_text(&path).unwrap();
        let cluster = Arc::new(Cluster::new(config, Arc::new(Stats::new())).unwrap());
        // Edited after it was loaded, before the watcher looks: it differs from what runs.
        std::fs::write(&path, servers_toml(&["http://a:1", "http://b:1"], 0.1)).unwrap();
        let mut watcher = ConfigWatcher::new(&path, Arc::clone(&cluster), loaded);
        watcher.events = no_events;
        let (_stop, shutdown) = tokio::sync::watch::channel(false);
        tokio::spawn(async move { watcher.start(shutdown).await });
        wait_for_servers(&cluster, 2).await;
        std::fs::remove_dir_all(&dir).ok();
    }
}
