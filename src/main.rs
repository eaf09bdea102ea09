use std::process::ExitCode;

use clap::Parser;
use mvllm::cli::{Cli, Command};
use mvllm::logging;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `run` installs its logger itself, after it may have become a daemon: the logger's
    // writer thread must be started by the process that keeps running.
    let _logs = match cli.command {
        Command::Run(_) | Command::Demo(_) => None,
        _ => Some(logging::init(cli.log_format)),
    };
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
        Command::CheckConfig(arg) if arg.keys => {
            print!("{}", mvllm::config::Config::describe_keys());
            ExitCode::SUCCESS
        }
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
        Command::Health(args) => match block_on(mvllm::healthcheck::check(&args)) {
            Ok(Ok(line)) => {
                println!("{line}");
                ExitCode::SUCCESS
            }
            Ok(Err(line)) => {
                eprintln!("{line}");
                ExitCode::FAILURE
            }
            Err(code) => code,
        },
        Command::Version => {
            println!("mvllm {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Run(args) => match mvllm::run::run(args, cli.log_format) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("{error:#}");
                ExitCode::FAILURE
            }
        },
        Command::Demo(args) => match mvllm::demo::demo(args, cli.log_format) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("{error:#}");
                ExitCode::FAILURE
            }
        },
    }
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
