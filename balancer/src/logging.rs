//! Log output through `tracing`: human-readable by default, JSON lines for
//! log shippers.

use std::io::IsTerminal as _;

use tracing_subscriber::{EnvFilter, fmt};

/// Format of the log lines on stderr (`--log-format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One readable line per event.
    #[default]
    Human,
    /// One JSON object per line, with every field.
    Json,
}

/// Installs the global subscriber. The level comes from `RUST_LOG` and
/// defaults to `info`.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Renders an error and all its sources on one line ("a: b: c"), for log
/// fields that would otherwise show only the outermost message.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
