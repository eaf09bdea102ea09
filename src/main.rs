use std::process::ExitCode;

use clap::Parser;
use mvllm::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::Sim(args) => match block_on(mvllm::sim::run(*args)) {
            Ok(Ok(())) => ExitCode::SUCCESS,
            Ok(Err(error)) => {
                eprintln!("{error:#}");
                ExitCode::FAILURE
            }
            Err(code) => code,
        },
        Command::Probe(args) => match block_on(mvllm::probe::probe(&args)) {
            Ok((report, routable)) => {
                print!("{report}");
                if routable {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(code) => code,
        },
        Command::CheckConfig(arg) => match mvllm::config::Config::load(&arg.config) {
            Ok(config) => {
                print!("{}", config.describe());
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::FAILURE
            }
        },
        Command::Version => {
            println!("mvllm {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Run(args) => match mvllm::run::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("{error:#}");
                ExitCode::FAILURE
            }
        },
        Command::Demo(args) => match mvllm::demo::demo(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("{error:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Runs a future on a new multi-threaded runtime; `Err` is the exit code if there is none.
fn block_on<T>(job: impl std::future::Future<Output = T>) -> Result<T, ExitCode> {
    match tokio::runtime::Runtime::new() {
        Ok(runtime) => Ok(runtime.block_on(job)),
        Err(error) => {
            eprintln!("mvllm: cannot start the async runtime: {error}");
            Err(ExitCode::FAILURE)
        }
    }
}
