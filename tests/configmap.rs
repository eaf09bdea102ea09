//! A servers.toml mounted from a Kubernetes ConfigMap is updated the kubelet's way: the file is
//! a symlink through `..data`, a symlink to a timestamped directory, and an update writes a
//! new directory, points `..data_tmp` at it and renames that over `..data`. The file's own
//! name sees no event; the router must still pick the change up at once (its fallback poll is
//! set to an hour here, so only the file events can do it).

mod common;

use std::os::unix::fs::symlink;
use std::path::Path;

use common::{servers_file, RouterProcess, Sim};

/// Writes `text` as a new ConfigMap version in `dir` and swaps `..data` to it atomically.
fn kubelet_update(dir: &Path, version: &str, text: &str) {
    let versioned = dir.join(version);
    std::fs::create_dir(&versioned).unwrap();
    std::fs::write(versioned.join("servers.toml"), text).unwrap();
    let tmp = dir.join("..data_tmp");
    symlink(version, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_configmap_update_is_applied_without_waiting_for_the_poll() {
    let a = Sim::start(&["--served-model-name", "llama"]).await;
    let b = Sim::start(&["--served-model-name", "llama"]).await;
    let config = "config_reload_interval = 3600\n";
    let dir = std::env::temp_dir().join(format!("mvllm-configmap-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).unwrap();
    kubelet_update(
        &dir,
        "..2026_12_03_10_00_00.1",
        &servers_file(&[(&a.url, 4)], config),
    );
    symlink("..data/servers.toml", dir.join("servers.toml")).unwrap();

    let path = dir.join("servers.toml");
    let router = RouterProcess::spawn_unowned(&[
        "run",
        "--console",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--config",
        path.to_str().unwrap(),
    ])
    .await;
    router.wait_healthy(1).await;

    kubelet_update(
        &dir,
        "..2026_12_03_10_05_00.2",
        &servers_file(&[(&a.url, 4), (&b.url, 4)], config),
    );
    std::fs::remove_dir_all(dir.join("..2026_12_03_10_00_00.1")).unwrap();
    router.wait_healthy(2).await;
    let _ = std::fs::remove_dir_all(&dir);
}
