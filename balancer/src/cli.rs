//! Command-line interface: argument parsing and dispatch to subcommands.

use std::{path::PathBuf, process::ExitCode, time::Duration};

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
    /// Run the daemon: load the configuration, attach the XDP program,
    /// keep the maps in line with the configuration and the backends'
    /// health, and serve until SIGINT or SIGTERM.
    Run(RunArgs),
    /// Validate a configuration file without touching anything; prints
    /// every problem as FILE:LINE: message.
    CheckConfig {
        /// The file to check.
        path: PathBuf,
    },
}

/// Arguments of `balancer run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The configuration file. Without this option the default path is
    /// used if it exists; otherwise the daemon runs with no VIPs.
    #[arg(long, short = 'c', value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Interface to attach the XDP program to (repeat for several);
    /// replaces `[datapath] interfaces` of the configuration.
    #[arg(long = "interface", short = 'i', value_name = "IFACE")]
    pub interfaces: Vec<String>,
    /// XDP attach mode, replacing `[datapath] xdp_mode`: native with generic
    /// fallback, native only, or generic only.
    #[arg(long, value_enum)]
    pub xdp_mode: Option<XdpMode>,
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
        Command::CheckConfig { path } => check_config(&path),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}

/// `balancer check-config PATH`.
fn check_config(path: &std::path::Path) -> anyhow::Result<()> {
    let config = crate::config::load(path).map_err(|errors| {
        eprintln!("{errors}");
        anyhow::anyhow!(
            "{} is not a valid configuration ({} problems)",
            path.display(),
            errors.errors.len()
        )
    })?;
    let backends: usize = config.vips.iter().map(|v| v.get_ref().backends.len()).sum();
    println!(
        "{}: valid ({} VIPs, {backends} backends)",
        path.display(),
        config.vips.len()
    );
    Ok(())
}
