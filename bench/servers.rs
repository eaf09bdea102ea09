//! A cluster of many servers for the benchmarks (shared with `#[path = "servers.rs"] mod
//! servers;`): written as a servers.toml and loaded as the router loads it.
use std::sync::Arc;

use mvllm::cluster::Cluster;
use mvllm::config::Config;
use mvllm::stats::Stats;

/// `n` servers at `http://10.X.Y.1:8000`, server `i` with capacity `capacity(i)`.
pub fn cluster_of(n: usize, capacity: impl Fn(usize) -> u32) -> Cluster {
    let dir = std::env::temp_dir().join(format!("mvllm-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("servers.toml");
    let mut toml = String::from("[servers]\nservers = [\n");
    for i in 0..n {
        toml.push_str(&format!(
            "  {{ url = \"http://10.{}.{}.1:8000\", max_concurrent_requests = {} }},\n",
            i / 250,
            i % 250,
            capacity(i)
        ));
    }
    toml.push_str("]\n");
    std::fs::write(&path, toml).unwrap();
    let config = Config::load(&path).expect("the generated servers file is valid");
    std::fs::remove_dir_all(&dir).ok();
    Cluster::new(config, Arc::new(Stats::new())).unwrap()
}
