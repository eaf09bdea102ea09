//! The `mvllm` command line.

use clap::{Parser, Subcommand};

use crate::sim::SimArgs;

#[derive(Debug, Parser)]
#[command(
    name = "mvllm",
    version,
    about = "One OpenAI-compatible endpoint in front of many vLLM servers, routed by live load.",
    after_help = "Start with `mvllm sim --port 8000` to get a simulated vLLM server (no GPU needed)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the router in front of the servers in servers.toml.
    Run,
    /// Run a simulated vLLM server: same endpoints, streaming and /metrics as vLLM,
    /// with a continuous-batching engine model instead of a GPU.
    Sim(Box<SimArgs>),
    /// Run the router and a small simulated cluster in one process.
    Demo,
    /// Check a servers.toml and say exactly what is wrong, where.
    CheckConfig,
    /// Print the version.
    Version,
}
