//! Writing to stdout and progress bars on stderr. A closed stdout (e.g.
//! `syncd log | head`) ends the command quietly; progress is shown only
//! when stderr is a terminal.

use std::io::{IsTerminal, Write};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::{exit, Failure};

/// Buffered stdout that turns a broken pipe into a quiet exit. When the
/// command is served by the daemon, output is captured for the client.
pub struct Out {
    inner: Sink,
}

enum Sink {
    Stdout(std::io::BufWriter<std::io::StdoutLock<'static>>),
    Captured(Vec<u8>),
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Sink::Stdout(w) => w.write(buf),
            Sink::Captured(v) => {
                v.extend_from_slice(buf);
                Ok(buf.len())
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Stdout(w) => w.flush(),
            Sink::Captured(v) => {
                crate::served::stdout(v);
                v.clear();
                Ok(())
            }
        }
    }
}

impl Drop for Out {
    fn drop(&mut self) {
        // Like a BufWriter, hand over what was written but not flushed.
        let _ = self.inner.flush();
    }
}

/// Writes one line to stderr, or to the client of a served command.
pub fn note(text: &str) {
    if !crate::served::stderr_line(text) {
        eprintln!("{text}");
    }
}

/// Writing stdout failed; `BrokenPipe` means the reader went away.
pub enum OutError {
    /// The reader closed the pipe.
    Closed,
    /// Any other write failure.
    Failed(std::io::Error),
}

impl From<std::io::Error> for OutError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            OutError::Closed
        } else {
            OutError::Failed(e)
        }
    }
}

impl From<OutError> for Failure {
    fn from(e: OutError) -> Self {
        match e {
            // A closed pipe is the reader's choice, not an error of ours.
            OutError::Closed => Failure {
                code: exit::OK,
                message: String::new(),
            },
            OutError::Failed(e) => Failure {
                code: exit::STORE,
                message: format!("cannot write output: {e}"),
            },
        }
    }
}

impl Out {
    /// Locks stdout.
    pub fn new() -> Self {
        let inner = if crate::served::active() {
            Sink::Captured(Vec::new())
        } else {
            Sink::Stdout(std::io::BufWriter::new(std::io::stdout().lock()))
        };
        Self { inner }
    }

    /// Writes bytes as they are (output of a command the daemon ran).
    pub fn raw(&mut self, bytes: &[u8]) -> Result<(), OutError> {
        self.inner.write_all(bytes)?;
        Ok(())
    }

    /// Writes one line.
    pub fn line(&mut self, text: &str) -> Result<(), OutError> {
        self.inner.write_all(text.as_bytes())?;
        self.inner.write_all(b"\n")?;
        Ok(())
    }

    /// Writes a value as one line of JSON.
    pub fn json<T: serde::Serialize>(&mut self, value: &T) -> Result<(), OutError> {
        let text =
            serde_json::to_string(value).map_err(|e| OutError::Failed(std::io::Error::other(e)))?;
        self.line(&text)
    }

    /// Writes a value as pretty JSON.
    pub fn json_pretty<T: serde::Serialize>(&mut self, value: &T) -> Result<(), OutError> {
        let text = serde_json::to_string_pretty(value)
            .map_err(|e| OutError::Failed(std::io::Error::other(e)))?;
        self.line(&text)
    }

    /// Flushes.
    pub fn flush(&mut self) -> Result<(), OutError> {
        self.inner.flush()?;
        Ok(())
    }
}

/// A progress bar on stderr, hidden unless stderr is a terminal.
pub fn progress(total: u64, unit: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if !std::io::stderr().is_terminal() || crate::served::active() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    let template =
        format!("{{spinner}} {{bar:40}} {{pos}}/{{len}} {unit} ({{per_sec}}, eta {{eta}})");
    if let Ok(style) = ProgressStyle::with_template(&template) {
        bar.set_style(style);
    }
    bar
}

/// Bytes progress, for input of known size.
pub fn byte_progress(total: Option<u64>) -> ProgressBar {
    let bar = match total {
        Some(t) => ProgressBar::with_draw_target(Some(t), ProgressDrawTarget::stderr()),
        None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
    };
    if !std::io::stderr().is_terminal() || crate::served::active() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    let template = if total.is_some() {
        "{spinner} {bar:40} {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta})"
    } else {
        "{spinner} {bytes} read ({bytes_per_sec})"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}
