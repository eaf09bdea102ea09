//! Logs go to stderr, as text or JSON lines (`--log-format`), with colours only when stderr
//! is a terminal; or, with `--log-file`, appended to that file; and while the fullscreen
//! monitor runs, to its log pane (and the file), never to the screen under it. A background
//! thread does the writing: a slow or blocked stderr (a full pipe, a stalled journald) never
//! stalls a request; if it falls behind by more than its buffer, lines are dropped (past 8,192
//! waiting lines) rather than requests delayed.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

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

/// Where log lines go.
pub enum LogTarget<'a> {
    Stderr,
    /// Appended to a file (`--log-file`).
    File(&'a Path),
    /// The monitor's log pane, and the file if there is one.
    Pane(LogPane, Option<&'a Path>),
}

/// The last lines logged, for the monitor's log pane. Only the log writer thread and the
/// monitor take its lock, never a request.
#[derive(Clone, Default)]
pub struct LogPane {
    lines: Arc<Mutex<VecDeque<String>>>,
}

/// Lines the pane keeps.
const PANE_LINES: usize = 1000;

impl LogPane {
    /// The last `n` lines, oldest first.
    pub fn last(&self, n: usize) -> Vec<String> {
        let lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        lines
            .iter()
            .skip(lines.len().saturating_sub(n))
            .cloned()
            .collect()
    }

    fn push(&self, text: &str) {
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            if lines.len() == PANE_LINES {
                lines.pop_front();
            }
            lines.push_back(line.to_string());
        }
    }
}

/// The writer thread's output: the pane and/or a file.
struct PaneAndFile {
    pane: Option<LogPane>,
    file: Option<File>,
}

impl Write for PaneAndFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(pane) = &self.pane {
            pane.push(&String::from_utf8_lossy(buf));
        }
        if let Some(file) = &mut self.file {
            file.write_all(buf)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.as_mut().map_or(Ok(()), File::flush)
    }
}

fn open_log_file(path: &Path) -> anyhow::Result<File> {
    File::options()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| anyhow::anyhow!("error: cannot open the log file {}: {e}", path.display()))
}

/// Installs the logger for the whole process (`RUST_LOG` filters it; default `info`).
pub fn init(format: LogFormat) -> Logs {
    install(
        format,
        Box::new(std::io::stderr()),
        std::io::stderr().is_terminal(),
    )
}

/// Installs the logger, writing to `target`; fails only if the log file cannot be opened.
pub fn init_to(format: LogFormat, target: LogTarget) -> anyhow::Result<Logs> {
    Ok(match target {
        LogTarget::Stderr => init(format),
        LogTarget::File(path) => install(format, Box::new(open_log_file(path)?), false),
        LogTarget::Pane(pane, path) => {
            let file = path.map(open_log_file).transpose()?;
            let out = PaneAndFile {
                pane: Some(pane),
                file,
            };
            install(format, Box::new(out), false)
        }
    })
}

fn install(format: LogFormat, out: Box<dyn Write + Send>, ansi: bool) -> Logs {
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        // Lines waiting for the writer thread; the channel's slots are allocated up front,
        // and the default (128,000) costs 3 MiB of resident memory.
        .buffered_lines_limit(8192)
        .thread_name("mvllm-log")
        .finish(out);
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer.clone())
        .with_ansi(ansi);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pane_keeps_the_last_lines_whole() {
        let pane = LogPane::default();
        let mut out = PaneAndFile {
            pane: Some(pane.clone()),
            file: None,
        };
        for i in 0..(PANE_LINES + 5) {
            out.write_all(format!("line {i}\n").as_bytes()).unwrap();
        }
        out.write_all(b"a\nb\n\n").unwrap();
        assert_eq!(pane.last(3), ["line 1004", "a", "b"]);
        assert_eq!(pane.last(usize::MAX).len(), PANE_LINES);
    }
}
