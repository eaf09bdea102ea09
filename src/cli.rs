//! The `mvllm` command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::sim::SimArgs;

#[derive(Debug, Parser)]
#[command(
    name = "mvllm",
    version,
    about = "One OpenAI-compatible endpoint in front of many vLLM servers, routed by live load.",
    after_help = "Start with `mvllm sim --port 8000` to get a simulated vLLM server (no GPU needed)."
)]
pub struct Cli {
    /// How log lines are written (stderr): text, or one JSON object per line.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: crate::logging::LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the router in front of the servers in servers.toml.
    Run(crate::run::RunArgs),
    /// Run a simulated vLLM server: same endpoints, streaming and /metrics as vLLM,
    /// with a continuous-batching engine model instead of a GPU.
    Sim(Box<SimArgs>),
    /// Run the router and a small simulated cluster in one process.
    Demo(crate::demo::DemoArgs),
    /// Check a servers.toml and say exactly what is wrong, where.
    CheckConfig(ConfigArg),
    /// Show what the router would see of one server (models, load, health) and why.
    Probe(crate::probe::ProbeArgs),
    /// Ask a running router's /health; exit 0 if it answers 200 (a container's HEALTHCHECK).
    Health(crate::healthcheck::HealthArgs),
    /// Print the version.
    Version,
}

#[derive(Debug, Args)]
pub struct ConfigArg {
    /// The servers file.
    #[arg(long, short, default_value = "servers.toml", env = "CONFIG_PATH")]
    pub config: PathBuf,
    /// List every key servers.toml may hold, with its default, what is allowed and what it
    /// does, instead of checking a file.
    #[arg(long)]
    pub keys: bool,
}
