//! Command-line interface: argument parsing and dispatch to subcommands.

pub mod exit;
pub mod generate;
mod watch;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum, builder::PossibleValue};

use crate::{
    command::{AccessEntry, BackendAdd, BackendRef, BackendWeight, VipAdd, VipName},
    config::List,
    control::{self, Request},
    daemon,
    datapath::XdpMode,
    edit::Edit,
    logging::LogFormat,
};

/// Layer-4 TCP/UDP load balancer with an XDP fast path.
///
/// The global options are accepted before or after the subcommand, and
/// described once, under their own heading in `balancer --help` (and in
/// balancer(1)); a subcommand's help names them in one line ([`command`]).
///
#[derive(Debug, Parser)]
#[command(name = "balancer", version, about, long_about = None, after_help = exit::help())]
pub struct Cli {
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true, help_heading = GLOBAL)]
    pub log_format: LogFormat,
    /// The daemon's control socket (default: /run/balancer/control.sock,
    /// or `[daemon] control_socket` for `run`).
    #[arg(long, global = true, value_name = "PATH", help_heading = GLOBAL)]
    pub socket: Option<PathBuf>,
    /// Print the daemon's answer as JSON instead of a table.
    #[arg(long, global = true, help_heading = GLOBAL)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// The help heading of the global options.
const GLOBAL: &str = "Global options";

/// The command line as `balancer` parses it and prints its help: [`Cli`]'s,
/// with the global options described in `balancer --help` only: every
/// subcommand gets hidden copies of them (clap copies a global option
/// into a subcommand only where it has none of that name, and the hidden
/// copies go on down to its own subcommands) and a line naming them.
pub fn command() -> clap::Command {
    let mut root = <Cli as clap::CommandFactory>::command();
    let globals: Vec<clap::Arg> = root
        .get_arguments()
        .filter(|a| a.is_global_set())
        .map(|a| a.clone().hide(true))
        .collect();
    let names: Vec<String> = globals
        .iter()
        .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
        .collect();
    let line = format!(
        "Global options ({}) and exit statuses: `balancer --help`.",
        names.join(", ")
    );
    let subcommands: Vec<String> = root
        .get_subcommands()
        .map(|s| s.get_name().to_owned())
        .collect();
    for name in subcommands {
        root = root.mut_subcommand(name, |sub| {
            let sub = globals.iter().fold(sub, |sub, arg| sub.arg(arg.clone()));
            with_closing_line(sub, &line)
        });
    }
    root
}

/// `command` with `line` closing its help and its subcommands'.
fn with_closing_line(mut command: clap::Command, line: &str) -> clap::Command {
    let children: Vec<String> = command
        .get_subcommands()
        .map(|s| s.get_name().to_owned())
        .collect();
    for name in children {
        command = command.mut_subcommand(name, |sub| with_closing_line(sub, line));
    }
    let after = match command.get_after_help() {
        Some(text) => format!("{text}\n\n{line}"),
        None => line.to_owned(),
    };
    command.after_help(after)
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: load the configuration, attach the XDP program,
    /// keep the maps in line with the configuration and the backends'
    /// health, and serve until SIGINT or SIGTERM.
    Run(RunArgs),
    /// Validate a configuration file without touching anything; prints
    /// every problem as FILE:LINE: message. With --diff, also what a
    /// reload of it would change in the running daemon.
    CheckConfig {
        /// The file to check.
        path: PathBuf,
        /// Also print what the running daemon would change if its file
        /// were this one: VIPs and backends added or removed, weights,
        /// schedulers, forwarding, rings rebuilt, every other key, and
        /// the keys that need a restart. Changes nothing.
        #[arg(long)]
        diff: bool,
    },
    /// The running daemon in brief: configuration, interfaces, backends.
    Status,
    /// VIPs.
    #[command(subcommand)]
    Vip(VipCommand),
    /// Backends.
    #[command(subcommand)]
    Backend(BackendCommand),
    /// The deny lists: clients whose packets are dropped, for every VIP
    /// or for one (--vip).
    #[command(subcommand)]
    Deny(AccessCommand),
    /// The allow lists: where one applies to a VIP, only the clients it
    /// lists are admitted (a deny still wins).
    #[command(subcommand)]
    Allow(AccessCommand),
    /// The exempt lists: clients the per-source limits ([vip.limits])
    /// never apply to, for every VIP or for one (--vip).
    #[command(subcommand)]
    Exempt(AccessCommand),
    /// Every datapath counter, and per-VIP counters; with --watch, a
    /// live view of them as rates.
    Stats(StatsArgs),
    /// Make the daemon read its configuration file again and apply what
    /// changed (like SIGHUP); an invalid file is refused with its errors.
    Reload {
        /// Apply a file without any VIP, withdrawing every VIP (refused
        /// without this flag, so an emptied or truncated file does not).
        #[arg(long)]
        allow_empty: bool,
        /// Print what the reload would change and change nothing; exits
        /// with a failure when the reload would be refused.
        #[arg(long)]
        dry_run: bool,
    },
    /// This host's announcements ([announce]): withdraw every VIP for
    /// maintenance, or bring them back.
    #[command(subcommand)]
    Host(HostCommand),
    /// Withdraw this host's announcements ([announce]), wait for the
    /// routers to stop sending, then detach the XDP program from every
    /// interface and remove its pinned state (run it with the daemon
    /// stopped: the datapath keeps forwarding after `balancer run` exits,
    /// until this).
    Teardown {
        /// The configuration whose `[daemon] pin_path` and `[announce]`
        /// to use (default: the daemon's, /etc/balancer/balancer.toml,
        /// when it exists).
        #[arg(long, short = 'c')]
        config: Option<PathBuf>,
        /// The pin directory, instead of the configuration's.
        #[arg(long)]
        pin_path: Option<PathBuf>,
        /// How long to wait between withdrawing and detaching, instead of
        /// `[announce] withdraw_grace` ("5s", "0s").
        #[arg(long, value_parser = crate::config::parse_duration)]
        grace: Option<Duration>,
    },
    /// Check this host before the balancer runs on it: the kernel, bpffs,
    /// the interfaces, the backends' routes, memory, the control socket
    /// and BGP; each check prints ok, warn or fail with its fix. Exits
    /// with status 1 when a check fails. Changes nothing.
    Doctor(DoctorArgs),
    /// On a backend: attach the decapsulator, which takes IPIP and GUE
    /// headers off packets for this host and passes the client's packet to
    /// the stack (for hosts without the kernel's ipip and fou modules); it
    /// stays pinned after the command exits. --detach takes it off,
    /// --stats prints its counters.
    Decap(DecapArgs),
}

/// Arguments of `balancer decap`.
#[derive(Debug, Args)]
pub struct DecapArgs {
    /// An interface tunnelled packets arrive on (repeat for several).
    #[arg(long = "interface", value_name = "IFACE")]
    pub interfaces: Vec<String>,
    /// An address of this host whose tunnelled packets are decapsulated
    /// (repeat for several; default: the interfaces' addresses).
    #[arg(long = "address", value_name = "IP")]
    pub addresses: Vec<std::net::IpAddr>,
    /// GUE's UDP port, as the balancer's `[datapath] gue_port` (0: no
    /// GUE).
    #[arg(long, default_value_t = crate::decap::DEFAULT_GUE_PORT)]
    pub gue_port: u16,
    /// XDP attach mode.
    #[arg(long, default_value = "auto")]
    pub xdp_mode: XdpMode,
    /// Where the decapsulator is pinned.
    #[arg(long, default_value = crate::decap::DEFAULT_PIN_PATH)]
    pub pin_path: PathBuf,
    /// Detach it (from the --interface given, or from every one).
    #[arg(long)]
    pub detach: bool,
    /// Print the counters of the decapsulator pinned at --pin-path and
    /// change nothing.
    #[arg(long, conflicts_with = "detach")]
    pub stats: bool,
}

/// Arguments of `balancer doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// The configuration to check against (default: the daemon's,
    /// /etc/balancer/balancer.toml, when it exists; without one only the
    /// host is checked).
    #[arg(long, short = 'c', value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// BIRD's control socket, asked whether it announces `[announce]`'s
    /// routes.
    #[arg(long, value_name = "PATH", default_value = crate::doctor::checks::sockets::DEFAULT_BIRD_SOCKET)]
    pub bird_socket: PathBuf,
    /// Check this host as a backend of the configuration's VIPs (the VIP
    /// on lo, ARP settings, the decapsulator, rp_filter) instead of as a
    /// balancer host.
    #[arg(long)]
    pub backend: bool,
}

/// `balancer host ...`.
#[derive(Debug, Subcommand)]
pub enum HostCommand {
    /// Withdraw every VIP of this host: the routers send its traffic to
    /// the other hosts, while the datapath keeps serving what still
    /// arrives. It stays drained across restarts and reboots (a mark file,
    /// `[announce] drain_file`) until `host undrain`.
    Drain,
    /// Announce this host's servable VIPs again.
    Undrain,
}

/// `balancer vip ...`. Changes are written to the configuration file
/// (comments and layout kept) and applied at once.
#[derive(Debug, Subcommand)]
pub enum VipCommand {
    /// Every VIP with its backends' health and counters.
    List,
    /// One VIP in detail: per backend its weight, state, active
    /// connections, smoothed check latency and share of new flows over
    /// the last interval (`balancer run --reconcile-interval`).
    Show {
        /// The VIP's name.
        name: String,
    },
    /// Add a VIP (with the default TCP health check; edit the file for
    /// another).
    Add(VipAdd),
    /// Remove a VIP.
    Remove(VipName),
}

/// `balancer backend ...`. Changes are written to the configuration file
/// and applied at once.
#[derive(Debug, Subcommand)]
pub enum BackendCommand {
    /// The backends of VIP (of every VIP without it): state, MAC, last
    /// check latency, counters.
    List {
        /// A VIP name.
        vip: Option<String>,
    },
    /// Add a backend to a VIP.
    Add(BackendAdd),
    /// Remove a backend from a VIP (its flows fail over).
    Remove(BackendRef),
    /// Set a backend's weight (0 to 10000).
    Weight(BackendWeight),
    /// Stop sending new flows to a backend; established ones stay.
    Drain(BackendRef),
    /// End a drain.
    Undrain(BackendRef),
}

/// `balancer deny ...`, `balancer allow ...`, `balancer exempt ...`.
/// Changes are written to the configuration file and applied at once.
#[derive(Debug, Subcommand)]
pub enum AccessCommand {
    /// The list's prefixes, global and per VIP, with the packets each
    /// dropped.
    List {
        /// Only the global list and this VIP's.
        #[arg(long)]
        vip: Option<String>,
    },
    /// Add a prefix.
    Add(AccessEntry),
    /// Remove a prefix.
    Remove(AccessEntry),
}

impl AccessCommand {
    /// The request of this command on `list`.
    fn request(self, list: List) -> Request {
        match self {
            AccessCommand::List { vip } => Request::AccessList {
                list: Some(list),
                vip,
            },
            AccessCommand::Add(entry) => {
                Request::Change(Edit::AccessAdd(AccessEntry { list, ..entry }))
            }
            AccessCommand::Remove(entry) => {
                Request::Change(Edit::AccessRemove(AccessEntry { list, ..entry }))
            }
        }
    }
}

/// Arguments of `balancer stats`.
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Show a live view, refreshed in place until q or Ctrl-C: per VIP and
    /// backend the state, weight, packets and new flows per second and
    /// share of new flows, and the global forwarded, passed and dropped
    /// counters. When stdout is not a terminal, prints one plain block
    /// per refresh instead.
    // (`--json` before the subcommand escapes `conflicts_with`: main
    // refuses that order.)
    #[arg(long, conflicts_with = "json")]
    pub watch: bool,
    /// How often the view refreshes ("500ms", "2s"; at least 100ms;
    /// default 1s).
    #[arg(long, value_name = "DURATION", requires = "watch", value_parser = parse_interval)]
    pub interval: Option<Duration>,
}

/// Parses an interval of periodic work (`--reconcile-interval`, `stats
/// --interval`): each round reads maps or polls the daemon, so more often
/// than every 100 ms would cost the host for nothing.
fn parse_interval(text: &str) -> Result<Duration, String> {
    let interval = humantime::parse_duration(text).map_err(|e| format!("{text:?}: {e}"))?;
    if interval < Duration::from_millis(100) {
        return Err(format!("{text:?} is shorter than 100ms"));
    }
    Ok(interval)
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
    #[arg(long, default_value = "10s", value_parser = parse_interval)]
    pub stats_interval: Duration,
    /// How often the connection table is scanned: idle entries removed,
    /// connection counts corrected, and the interval over which `vip show`
    /// reports shares of new flows ("5s", "1s"; at least 100ms).
    #[arg(long, default_value = "5s", value_parser = parse_interval)]
    pub reconcile_interval: Duration,
    /// Where maps and links are pinned, replacing `[daemon] pin_path`.
    #[arg(long, value_name = "PATH")]
    pub pin_path: Option<PathBuf>,
    /// Load the debug variant of the XDP program, which logs every decision
    /// (VIP matched, flow hit or miss, backend picked, verdict and reason)
    /// through the daemon's log. Costs speed: for troubleshooting.
    #[arg(long)]
    pub datapath_log: bool,
}

impl RunArgs {
    /// The daemon's options: these arguments, and the global `--socket`.
    pub fn options(self, control_socket: Option<PathBuf>) -> daemon::Options {
        daemon::Options {
            config: self.config,
            interfaces: self.interfaces,
            xdp_mode: self.xdp_mode,
            pin_path: self.pin_path,
            control_socket,
            stats_interval: self.stats_interval,
            reconcile_interval: self.reconcile_interval,
            decision_log: self.datapath_log,
        }
    }
}

/// `--xdp-mode` takes the names `[datapath] xdp_mode` takes.
impl ValueEnum for XdpMode {
    fn value_variants<'a>() -> &'a [Self] {
        &[XdpMode::Auto, XdpMode::Native, XdpMode::Generic]
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(match self {
            XdpMode::Auto => PossibleValue::new("auto")
                .help("Native (driver) mode, and generic mode if the driver refuses"),
            XdpMode::Native => PossibleValue::new("native")
                .help("Native (driver) mode only: fail if the driver has no XDP support"),
            XdpMode::Generic => PossibleValue::new("generic")
                .help("Generic (skb) mode: works on every device, slower"),
        })
    }
}

/// `--log-format`.
impl ValueEnum for LogFormat {
    fn value_variants<'a>() -> &'a [Self] {
        &[LogFormat::Human, LogFormat::Json]
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(match self {
            LogFormat::Human => PossibleValue::new("human").help("One readable line per event"),
            LogFormat::Json => {
                PossibleValue::new("json").help("One JSON object per line, with every field")
            }
        })
    }
}

/// Parses the command line, runs the subcommand and turns its outcome into
/// an exit status ([`exit`]), printing the error chain on failure.
pub fn main() -> ExitCode {
    if std::env::args_os()
        .nth(1)
        .is_some_and(|arg| arg == generate::NAME)
    {
        return generate::main(std::env::args_os().skip(1));
    }
    let cli = match command()
        .try_get_matches()
        .and_then(|matches| <Cli as clap::FromArgMatches>::from_arg_matches(&matches))
    {
        Ok(cli) => cli,
        Err(err) => err.exit(),
    };
    crate::logging::init(cli.log_format);
    let socket = cli.socket.clone().unwrap_or_else(control::default_socket);
    let ask = |request: Request| -> anyhow::Result<()> {
        let answer = control::call(&socket, &request)?;
        print_answer(&answer, cli.json);
        Ok(())
    };
    let result = match cli.command {
        Command::Run(args) => daemon::run(args.options(cli.socket.clone())),
        // With --diff --json, stdout is the preview's JSON alone.
        Command::CheckConfig { path, diff } => {
            check_config(&path, !(diff && cli.json)).and_then(|()| {
                if !diff {
                    return Ok(());
                }
                let text = std::fs::read_to_string(&path)?;
                let request = Request::Preview {
                    path: Some(path.display().to_string()),
                    text: Some(text),
                    allow_empty: true,
                };
                preview(&control::call(&socket, &request)?, cli.json)
            })
        }
        Command::Status => ask(Request::Status {}),
        Command::Vip(VipCommand::List) => ask(Request::VipList {}),
        Command::Vip(VipCommand::Show { name }) => ask(Request::VipShow { name }),
        Command::Vip(VipCommand::Add(add)) => ask(Request::Change(Edit::VipAdd(add))),
        Command::Vip(VipCommand::Remove(vip)) => ask(Request::Change(Edit::VipRemove(vip))),
        Command::Backend(BackendCommand::List { vip }) => ask(Request::BackendList { vip }),
        Command::Backend(BackendCommand::Add(add)) => ask(Request::Change(Edit::BackendAdd(add))),
        Command::Backend(BackendCommand::Remove(backend)) => {
            ask(Request::Change(Edit::BackendRemove(backend)))
        }
        Command::Backend(BackendCommand::Weight(weight)) => {
            ask(Request::Change(Edit::BackendWeight(weight)))
        }
        Command::Backend(BackendCommand::Drain(backend)) => {
            ask(Request::Change(Edit::BackendDrain(backend)))
        }
        Command::Backend(BackendCommand::Undrain(backend)) => {
            ask(Request::Change(Edit::BackendUndrain(backend)))
        }
        Command::Deny(command) => ask(command.request(List::Deny)),
        Command::Allow(command) => ask(command.request(List::Allow)),
        Command::Exempt(command) => ask(command.request(List::Exempt)),
        Command::Stats(StatsArgs { watch: false, .. }) => ask(Request::Stats {}),
        Command::Stats(StatsArgs { watch: true, .. }) if cli.json => Err(anyhow::anyhow!(
            "--json and --watch cannot be used together: --watch shows a view, --json prints one answer"
        )),
        Command::Stats(StatsArgs {
            watch: true,
            interval,
        }) => watch::run(&socket, interval.unwrap_or(Duration::from_secs(1))),
        Command::Reload {
            allow_empty,
            dry_run: true,
        } => {
            let request = Request::Preview {
                path: None,
                text: None,
                allow_empty,
            };
            control::call(&socket, &request)
                .map_err(anyhow::Error::from)
                .and_then(|answer| preview(&answer, cli.json))
        }
        Command::Reload {
            allow_empty,
            dry_run: false,
        } => ask(Request::Reload { allow_empty }),
        Command::Host(HostCommand::Drain) => ask(Request::HostDrain {}),
        Command::Host(HostCommand::Undrain) => ask(Request::HostUndrain {}),
        Command::Teardown {
            config,
            pin_path,
            grace,
        } => teardown(config.as_deref(), pin_path, grace),
        Command::Decap(args) => decap(&args, cli.json),
        Command::Doctor(args) => crate::doctor::run(
            &crate::doctor::Options {
                config: args.config,
                socket: cli.socket.clone(),
                bird_socket: args.bird_socket,
                backend: args.backend,
            },
            cli.json,
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::from(exit::of(&err).code)
        }
    }
}

/// `balancer teardown`: withdraw, wait, detach.
fn teardown(
    config: Option<&std::path::Path>,
    pin_path: Option<PathBuf>,
    grace: Option<Duration>,
) -> anyhow::Result<()> {
    // The file `run` reads by default, so that a plain teardown withdraws
    // what the daemon announced.
    let default = std::path::Path::new(crate::config::DEFAULT_PATH);
    let config = match config {
        Some(path) => crate::config::load(path)?,
        None if default.exists() => crate::config::load(default)?,
        None => crate::config::Config::default(),
    };
    let dir = pin_path.unwrap_or(config.daemon.pin_path);
    let _lock = crate::daemon::lock::for_teardown(&dir)?;
    if let Some(announce) = &config.announce {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let withdrawn = runtime.block_on(crate::daemon::withdraw_all(announce))?;
        let grace = grace.unwrap_or(announce.withdraw_grace);
        println!(
            "withdrew {withdrawn} routes from table {}",
            announce.table.get_ref()
        );
        if withdrawn > 0 && !grace.is_zero() {
            println!(
                "waiting {} for the routers to stop sending",
                crate::config::format_duration(grace)
            );
            std::thread::sleep(grace);
        }
    }
    let detached = crate::datapath::pin::teardown(&dir)?;
    println!(
        "{}: detached from {} and unpinned",
        dir.display(),
        if detached.is_empty() {
            "no interface".to_owned()
        } else {
            detached.join(", ")
        }
    );
    Ok(())
}

/// `balancer decap`: attach (or replace) the decapsulator, detach it, or
/// print its counters.
fn decap(args: &DecapArgs, json: bool) -> anyhow::Result<()> {
    use crate::decap;
    let dir = &args.pin_path;
    if args.stats {
        let c = decap::pinned_counters(dir)?;
        let row = |name: &str, p: balancer_common::stats::PacketCount| serde_json::json!({"kind": name, "packets": p.packets, "bytes": p.bytes});
        let rows = serde_json::json!([
            row("ipip_ipv4", c.ipip4),
            row("ipip_ipv6", c.ipip6),
            row("gue", c.gue),
            row("passed", c.passed),
        ]);
        print_answer(&rows, json);
        return Ok(());
    }
    if args.detach {
        let detached = decap::detach(dir, &args.interfaces)?;
        println!("decapsulator detached from {}", list(&detached));
        return Ok(());
    }
    anyhow::ensure!(
        !args.interfaces.is_empty(),
        "give at least one --interface to attach the decapsulator to"
    );
    let addresses = if args.addresses.is_empty() {
        decap::interface_addresses(&args.interfaces)?
    } else {
        args.addresses.clone()
    };
    anyhow::ensure!(
        !addresses.is_empty(),
        "the interfaces have no address: give --address"
    );
    crate::datapath::pin::prepare(dir)?;
    let mut d = decap::Decapsulator::load(&addresses, args.gue_port)?;
    d.pin_maps(dir)?;
    // Interfaces attached by an earlier run take the new program too, so
    // that every one uses the maps just pinned.
    let mut interfaces = args.interfaces.clone();
    for pinned in decap::pinned_interfaces(dir) {
        if !interfaces.contains(&pinned) {
            interfaces.push(pinned);
        }
    }
    for interface in &interfaces {
        let mode = d.attach(interface, args.xdp_mode, dir)?;
        println!("decapsulator on {interface} ({mode:?})");
    }
    let shown: Vec<String> = addresses.iter().map(|a| a.to_string()).collect();
    println!(
        "decapsulating IPIP and GUE (UDP port {}) to {}; pinned in {}",
        args.gue_port,
        list(&shown),
        dir.display()
    );
    Ok(())
}

/// `items`, comma-separated, or "no interface".
fn list(items: &[String]) -> String {
    if items.is_empty() {
        "no interface".to_owned()
    } else {
        items.join(", ")
    }
}

/// `balancer check-config PATH`: every problem on stderr, or the counts,
/// the warnings (on stderr) and the kernel memory the maps will take (on
/// stdout, unless not `verbose`).
fn check_config(path: &std::path::Path, verbose: bool) -> anyhow::Result<()> {
    let (config, warnings) = crate::config::load_with_warnings(path).map_err(|errors| {
        eprintln!("{errors}");
        anyhow::anyhow!(
            "{} is not a valid configuration ({} problems)",
            path.display(),
            errors.errors.len()
        )
    })?;
    for warning in &warnings.errors {
        let line = warning.line.map_or_else(String::new, |l| format!("{l}:"));
        eprintln!("{}:{line} warning: {}", warnings.file, warning.message);
    }
    if !verbose {
        return Ok(());
    }
    let backends: usize = config.vips.iter().map(|v| v.get_ref().backends.len()).sum();
    println!(
        "{}: valid ({} VIPs, {backends} backends)",
        path.display(),
        config.vips.len()
    );
    println!(
        "{}: the maps take {} of kernel memory, charged to the daemon's memory cgroup",
        path.display(),
        crate::config::MapMemory::of(&config)
    );
    Ok(())
}

/// Prints the daemon's answer to `preview`: what a reload would change,
/// one line each, grouped; fails as refused (exit status 3) when the
/// reload would be refused.
fn preview(answer: &serde_json::Value, json: bool) -> anyhow::Result<()> {
    let preview: crate::preview::Preview = serde_json::from_value(answer.clone())
        .map_err(|e| anyhow::anyhow!("the daemon's preview is malformed: {e}"))?;
    let file = answer["file"].as_str().unwrap_or("the file");
    if json {
        println!("{answer}");
    } else if preview.is_empty() {
        println!("{file}: a reload would change nothing");
    } else {
        println!("{file}: what a reload would change");
        for (title, lines) in [
            (
                "needs a restart (a reload is refused)",
                &preview.needs_restart,
            ),
            ("VIPs and backends", &preview.changes),
            (
                "rings rebuilt (a share of their new flows moves)",
                &preview.rings_rebuilt,
            ),
            ("other keys", &preview.settings),
        ] {
            if !lines.is_empty() {
                println!("{title}:");
                for line in lines {
                    println!("  {line}");
                }
            }
        }
    }
    // The status of a refused reload: the daemon says it would refuse it.
    match preview.refused {
        Some(why) => Err(control::CallError::Refused {
            message: format!("a reload of {file} would be refused: {why}"),
        }
        .into()),
        None => Ok(()),
    }
}

/// Prints a daemon answer: JSON as is, or objects as `key: value` lines and
/// arrays of objects as aligned tables.
fn print_answer(answer: &serde_json::Value, json: bool) {
    use serde_json::Value;
    if json {
        println!("{answer}");
        return;
    }
    match answer {
        Value::Array(rows) => print_table(rows),
        Value::Object(fields) => {
            for (key, value) in fields {
                match value {
                    Value::Array(rows) if rows.iter().all(Value::is_object) && !rows.is_empty() => {
                        println!("{key}:");
                        print_table(rows);
                    }
                    Value::Object(inner) => {
                        println!("{key}:");
                        for (k, v) in inner {
                            println!("  {k}: {}", cell(v));
                        }
                    }
                    other => println!("{key}: {}", cell(other)),
                }
            }
        }
        other => println!("{}", cell(other)),
    }
}

fn print_table(rows: &[serde_json::Value]) {
    let Some(serde_json::Value::Object(first)) = rows.first() else {
        println!("(none)");
        return;
    };
    let columns: Vec<&String> = first.keys().collect();
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| columns.iter().map(|c| cell(&row[c.as_str()])).collect())
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            cells
                .iter()
                .map(|r| r[i].len())
                .chain([c.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |values: Vec<String>| {
        let padded: Vec<String> = values
            .iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(columns.iter().map(|c| c.to_uppercase()).collect());
    for row in cells {
        line(row);
    }
}

fn cell(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => "-".to_owned(),
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.2}"),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Scheduler;

    fn vip_add(args: &[&str]) -> Result<VipCommand, clap::Error> {
        let argv = ["balancer", "vip", "add", "app", "[2001:db8::80]:443/tcp"];
        let cli = Cli::try_parse_from(argv.iter().chain(args))?;
        match cli.command {
            Command::Vip(command) => Ok(command),
            other => panic!("not a vip command: {other:?}"),
        }
    }

    #[test]
    fn vip_add_takes_a_scheduler_and_persistence() {
        let VipCommand::Add(VipAdd {
            scheduler,
            persistence_timeout,
            persistence_ipv6_prefix,
            ..
        }) = vip_add(&[
            "--scheduler",
            "least-latency",
            "--persistence-timeout",
            "5m",
            "--persistence-ipv6-prefix",
            "48",
        ])
        .unwrap()
        else {
            panic!("not vip add");
        };
        assert_eq!(
            (scheduler, persistence_timeout, persistence_ipv6_prefix),
            (
                Some(Scheduler::LeastLatency),
                Some(Duration::from_secs(300)),
                Some(48)
            )
        );
        for name in [
            "maglev",
            "source-hash",
            "round-robin",
            "least-connections",
            "least-latency",
        ] {
            assert!(vip_add(&["--scheduler", name]).is_ok(), "{name}");
        }
    }

    #[test]
    fn vip_show_needs_a_name_and_run_bounds_the_reconcile_interval() {
        let cli = Cli::try_parse_from(["balancer", "vip", "show", "web"]).unwrap();
        assert!(
            matches!(cli.command, Command::Vip(VipCommand::Show { ref name }) if name == "web"),
            "{:?}",
            cli.command
        );
        assert!(Cli::try_parse_from(["balancer", "vip", "show"]).is_err());
        let run = |interval: &str| {
            Cli::try_parse_from(["balancer", "run", "--reconcile-interval", interval]).map(|cli| {
                match cli.command {
                    Command::Run(args) => args.reconcile_interval,
                    other => panic!("not run: {other:?}"),
                }
            })
        };
        assert_eq!(run("1s").unwrap(), Duration::from_secs(1));
        let short = run("10ms").unwrap_err().to_string();
        assert!(short.contains("shorter than 100ms"), "{short}");
        assert!(run("soon").is_err());
    }

    #[test]
    fn stats_watch_takes_an_interval_of_at_least_100ms() {
        let stats = |args: &[&str]| {
            Cli::try_parse_from(["balancer", "stats"].iter().chain(args)).map(|cli| {
                match cli.command {
                    Command::Stats(args) => (args.watch, args.interval),
                    other => panic!("not stats: {other:?}"),
                }
            })
        };
        assert_eq!(stats(&[]).unwrap(), (false, None));
        assert_eq!(stats(&["--watch"]).unwrap(), (true, None));
        assert_eq!(
            stats(&["--watch", "--interval", "300ms"]).unwrap(),
            (true, Some(Duration::from_millis(300)))
        );
        let refused = |args: &[&str], fragment: &str| {
            let err = stats(args).unwrap_err().to_string();
            assert!(err.contains(fragment), "{args:?}: {err}");
        };
        refused(
            &["--interval", "1s"],
            "required arguments were not provided",
        );
        refused(&["--watch", "--interval", "50ms"], "shorter than 100ms");
        refused(&["--watch", "--interval", "soon"], "soon");
        refused(&["--watch", "--json"], "cannot be used with");
    }

    #[test]
    fn vip_add_refuses_bad_scheduler_and_persistence_values() {
        let refused = |args: &[&str], fragment: &str| {
            let err = vip_add(args).unwrap_err().to_string();
            assert!(err.contains(fragment), "{args:?}: {err}");
        };
        refused(&["--scheduler", "random"], "invalid value 'random'");
        refused(
            &["--persistence-timeout", "soon"],
            "invalid duration \"soon\"",
        );
        refused(&["--persistence-timeout", "500ms"], "is below 1s");
        refused(&["--persistence-timeout", "2days"], "is above 24h");
        refused(
            &[
                "--persistence-timeout",
                "1m",
                "--persistence-ipv6-prefix",
                "0",
            ],
            "0 is not in 1..=128",
        );
        refused(
            &[
                "--persistence-timeout",
                "1m",
                "--persistence-ipv6-prefix",
                "129",
            ],
            "129 is not in 1..=128",
        );
        refused(
            &["--persistence-ipv6-prefix", "64"],
            "--persistence-timeout <DURATION>",
        );
    }

    #[test]
    fn doctor_takes_a_configuration_birds_socket_and_the_backend_role() {
        let doctor = |args: &[&str]| {
            Cli::try_parse_from(["balancer", "doctor"].iter().chain(args)).map(|cli| {
                match cli.command {
                    Command::Doctor(args) => args,
                    other => panic!("not doctor: {other:?}"),
                }
            })
        };
        let plain = doctor(&[]).unwrap();
        assert_eq!(
            (plain.config, plain.bird_socket, plain.backend),
            (None, PathBuf::from("/run/bird/bird.ctl"), false)
        );
        let given = doctor(&["-c", "lb.toml", "--bird-socket", "/tmp/b.ctl", "--backend"]).unwrap();
        assert_eq!(
            (given.config, given.bird_socket, given.backend),
            (
                Some(PathBuf::from("lb.toml")),
                PathBuf::from("/tmp/b.ctl"),
                true
            )
        );
        assert!(doctor(&["--config"]).is_err());
        // --json is the global flag, before or after the subcommand.
        assert!(
            Cli::try_parse_from(["balancer", "doctor", "--json"])
                .unwrap()
                .json
        );
    }

    #[test]
    fn the_command_line_and_the_file_name_xdp_modes_alike() {
        for mode in XdpMode::value_variants() {
            let name = mode.to_possible_value().unwrap().get_name().to_owned();
            let file: crate::config::DatapathConfig =
                toml::from_str(&format!("xdp_mode = {name:?}")).unwrap();
            assert_eq!(file.xdp_mode, *mode, "{name}");
        }
        assert!(toml::from_str::<crate::config::DatapathConfig>("xdp_mode = \"turbo\"").is_err());
    }

    /// Every command's help, by its path ("balancer vip show").
    fn helps(command: &mut clap::Command, path: String, out: &mut Vec<(String, String)>) {
        out.push((path.clone(), command.render_long_help().to_string()));
        for sub in command.get_subcommands_mut() {
            let sub_path = format!("{path} {}", sub.get_name());
            helps(sub, sub_path, out);
        }
    }

    #[test]
    fn the_global_options_are_described_once_and_named_in_every_subcommand() {
        let mut root = command();
        root.build();
        let mut all = Vec::new();
        helps(&mut root, "balancer".into(), &mut all);
        let (_, top) = &all[0];
        for option in ["--log-format <LOG_FORMAT>", "--socket <PATH>", "--json"] {
            assert_eq!(top.matches(option).count(), 1, "{option} in:\n{top}");
        }
        // clap's own `help` subcommands print other commands' help.
        for (path, help) in all[1..].iter().filter(|(p, _)| !p.contains(" help")) {
            assert!(
                !help.contains("Global options:") && !help.contains("--socket <PATH>"),
                "`{path}` repeats the global options:\n{help}"
            );
            assert!(
                help.contains("Global options (--log-format, --socket, --json)"),
                "`{path}` does not say where the global options are:\n{help}"
            );
        }
        // Still accepted after the subcommand.
        let matches = root
            .try_get_matches_from(["balancer", "vip", "show", "web", "--json", "--socket", "/s"])
            .unwrap();
        let cli = <Cli as clap::FromArgMatches>::from_arg_matches(&matches).unwrap();
        assert!(cli.json && cli.socket.as_deref() == Some(std::path::Path::new("/s")));
    }
}
