//! Command-line interface: argument parsing and dispatch to subcommands.

use std::{process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{daemon, datapath::XdpMode, logging::LogFormat};

/// Layer-4 TCP/UDP load balancer with an XDP fast path.
#[derive(Debug, Parser)]
#[command(name = "balancer", version, about)]
pub struct Cli {
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: attach the XDP program and serve until SIGINT or
    /// SIGTERM, then detach.
    Run(RunArgs),
}

/// Arguments of `balancer run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Interface to attach the XDP program to (repeat for several).
    #[arg(long = "interface", short = 'i', required = true, value_name = "IFACE")]
    pub interfaces: Vec<String>,
    /// XDP attach mode: native with generic fallback, native only, or
    /// generic only.
    #[arg(long, value_enum, default_value_t = XdpMode::Auto)]
    pub xdp_mode: XdpMode,
    /// How often to log the packet counters ("10s", "500ms").
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub stats_interval: Duration,
    /// Load the debug variant of the XDP program, which logs every decision
    /// (VIP matched, flow hit or miss, backend picked, verdict and reason)
    /// through the daemon's log. Costs speed: for troubleshooting.
    #[arg(long)]
    pub datapath_log: bool,
}

/// Parses the command line, runs the subcommand and turns its outcome into
/// an exit code, printing the error chain on failure.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    crate::logging::init(cli.log_format);
    let result = match cli.command {
        Command::Run(args) => daemon::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}
