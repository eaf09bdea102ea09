//! Logs go to stderr, as text or JSON lines (`--log-format`), with colours only when stderr
//! is a terminal. A background thread does the writing: a slow or blocked stderr (a full pipe,
//! a stalled journald) never stalls a request; if it falls behind by more than its buffer,
//! lines are dropped (past 8,192 waiting lines) rather than requests delayed.

use std::io::IsTerminal;

use clap::ValueEnum;
use tracing_appender::non_blocking::{NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// `2026-01-01T00:00:00.000000Z  INFO target: message key=value`
    Text,
    /// One JSON object per line.
    Json,
}

/// The installed logger; dropping it flushes what is still buffered.
pub struct Logs {
    pub format: LogFormat,
    /// Writes whole lines to stderr, in order with the log (the access log uses it).
    pub writer: NonBlocking,
    _flush_on_drop: WorkerGuard,
}

/// Installs the logger for the whole process (`RUST_LOG` filters it; default `info`).
pub fn init(format: LogFormat) -> Logs {
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        // Lines waiting for the writer thread; the channel's slots are allocated up front,
        // and the default (128,000) costs 3 MiB of resident memory.
        .buffered_lines_limit(8192)
        .thread_name("mvllm-log")
        .finish(std::io::stderr());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer.clone())
        .with_ansi(std::io::stderr().is_terminal());
    // Fails only if a logger is installed already (tests that run several routers).
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    Logs {
        format,
        writer,
        _flush_on_drop: guard,
    }
}
