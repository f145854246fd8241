//! Command-line interface: argument parsing and dispatch to subcommands.

mod watch;

use std::{net::IpAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{
    config::{Protocol, Scheduler},
    control::{self, Request},
    daemon,
    datapath::XdpMode,
    logging::LogFormat,
};

/// Layer-4 TCP/UDP load balancer with an XDP fast path.
#[derive(Debug, Parser)]
#[command(name = "balancer", version, about)]
pub struct Cli {
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    pub log_format: LogFormat,
    /// The daemon's control socket (default: /run/balancer/control.sock,
    /// or `[daemon] control_socket` for `run`).
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Print the daemon's answer as JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
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
    /// The running daemon in brief: configuration, interfaces, backends.
    Status,
    /// VIPs.
    #[command(subcommand)]
    Vip(VipCommand),
    /// Backends.
    #[command(subcommand)]
    Backend(BackendCommand),
    /// Every datapath counter, and per-VIP counters; with --watch, a
    /// live view of them as rates.
    Stats(StatsArgs),
    /// Make the daemon read its configuration file again and apply what
    /// changed (like SIGHUP); an invalid file is refused with its errors.
    Reload,
    /// Detach the XDP program from every interface and remove its pinned
    /// state (run it with the daemon stopped: the datapath keeps
    /// forwarding after `balancer run` exits, until this).
    Teardown {
        /// The configuration whose `[daemon] pin_path` to use.
        #[arg(long, short = 'c')]
        config: Option<PathBuf>,
        /// The pin directory, instead of the configuration's.
        #[arg(long)]
        pin_path: Option<PathBuf>,
    },
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
    Add {
        /// A unique name.
        name: String,
        /// ADDRESS:PORT/PROTO, such as 192.0.2.10:80/tcp or
        /// [2001:db8::10]:53/udp.
        #[arg(value_parser = parse_service)]
        service: Service,
        /// How new flows are placed (default maglev).
        #[arg(long, value_enum)]
        scheduler: Option<Scheduler>,
        /// Session persistence: each client's new flows go to the backend
        /// it last used, for this long after its last packet ("30s", "5m";
        /// 1s to 24h).
        #[arg(long, value_name = "DURATION", value_parser = parse_persistence_timeout)]
        persistence_timeout: Option<Duration>,
        /// For IPv6 VIPs with persistence: the leading bits of a client's
        /// address that make one client (1 to 128, default 64).
        #[arg(
            long,
            value_name = "N",
            requires = "persistence_timeout",
            value_parser = clap::value_parser!(u8).range(1..=128)
        )]
        persistence_ipv6_prefix: Option<u8>,
    },
    /// Remove a VIP.
    Remove { name: String },
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
    Add {
        vip: String,
        address: IpAddr,
        /// Share of new flows relative to the other backends (default 100).
        #[arg(long)]
        weight: Option<u32>,
    },
    /// Remove a backend from a VIP (its flows fail over).
    Remove { vip: String, address: IpAddr },
    /// Set a backend's weight (0 to 10000).
    Weight {
        vip: String,
        address: IpAddr,
        weight: u32,
    },
    /// Stop sending new flows to a backend; established ones stay.
    Drain { vip: String, address: IpAddr },
    /// End a drain.
    Undrain { vip: String, address: IpAddr },
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

/// A VIP's address, port and protocol, as `vip add` takes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Service {
    pub address: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
}

/// Parses ADDRESS:PORT/PROTO.
fn parse_service(text: &str) -> Result<Service, String> {
    let usage = "expected ADDRESS:PORT/PROTO, such as 192.0.2.10:80/tcp or [2001:db8::10]:53/udp";
    let (socket, protocol) = text
        .rsplit_once('/')
        .ok_or_else(|| format!("{text:?}: {usage}"))?;
    let protocol = match protocol {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        other => return Err(format!("protocol {other:?} is neither tcp nor udp")),
    };
    let socket: std::net::SocketAddr =
        socket.parse().map_err(|_| format!("{socket:?}: {usage}"))?;
    Ok(Service {
        address: socket.ip(),
        port: socket.port(),
        protocol,
    })
}

/// Parses `--persistence-timeout`, refusing what the configuration would.
fn parse_persistence_timeout(text: &str) -> Result<Duration, String> {
    let timeout = crate::config::parse_duration(text)?;
    crate::config::check_persistence_timeout(timeout)?;
    Ok(timeout)
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

/// Parses the command line, runs the subcommand and turns its outcome into
/// an exit code, printing the error chain on failure.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    crate::logging::init(cli.log_format);
    let socket = cli.socket.clone().unwrap_or_else(control::default_socket);
    let ask = |request: Request| -> anyhow::Result<()> {
        let answer = control::call(&socket, &request)?;
        print_answer(&answer, cli.json);
        Ok(())
    };
    let result = match cli.command {
        Command::Run(args) => daemon::run(&args, cli.socket.as_deref()),
        Command::CheckConfig { path } => check_config(&path),
        Command::Status => ask(Request::Status {}),
        Command::Vip(VipCommand::List) => ask(Request::VipList {}),
        Command::Vip(VipCommand::Show { name }) => ask(Request::VipShow { name }),
        Command::Vip(VipCommand::Add {
            name,
            service,
            scheduler,
            persistence_timeout,
            persistence_ipv6_prefix,
        }) => ask(Request::VipAdd {
            name,
            address: service.address,
            port: service.port,
            protocol: service.protocol,
            scheduler,
            persistence_timeout,
            persistence_ipv6_prefix,
        }),
        Command::Vip(VipCommand::Remove { name }) => ask(Request::VipRemove { name }),
        Command::Backend(BackendCommand::List { vip }) => ask(Request::BackendList { vip }),
        Command::Backend(BackendCommand::Add {
            vip,
            address,
            weight,
        }) => ask(Request::BackendAdd {
            vip,
            address,
            weight,
        }),
        Command::Backend(BackendCommand::Remove { vip, address }) => {
            ask(Request::BackendRemove { vip, address })
        }
        Command::Backend(BackendCommand::Weight {
            vip,
            address,
            weight,
        }) => ask(Request::BackendWeight {
            vip,
            address,
            weight,
        }),
        Command::Backend(BackendCommand::Drain { vip, address }) => {
            ask(Request::BackendDrain { vip, address })
        }
        Command::Backend(BackendCommand::Undrain { vip, address }) => {
            ask(Request::BackendUndrain { vip, address })
        }
        Command::Stats(StatsArgs { watch: false, .. }) => ask(Request::Stats {}),
        Command::Stats(StatsArgs { watch: true, .. }) if cli.json => Err(anyhow::anyhow!(
            "--json and --watch cannot be used together: --watch shows a view, --json prints one answer"
        )),
        Command::Stats(StatsArgs {
            watch: true,
            interval,
        }) => watch::run(&socket, interval.unwrap_or(Duration::from_secs(1))),
        Command::Reload => ask(Request::Reload {}),
        Command::Teardown { config, pin_path } => teardown(config.as_deref(), pin_path),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}

/// `balancer teardown`.
fn teardown(config: Option<&std::path::Path>, pin_path: Option<PathBuf>) -> anyhow::Result<()> {
    let dir = match (pin_path, config) {
        (Some(dir), _) => dir,
        (None, Some(path)) => crate::config::load(path)?.daemon.pin_path,
        (None, None) => crate::config::DaemonConfig::default().pin_path,
    };
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
        let VipCommand::Add {
            scheduler,
            persistence_timeout,
            persistence_ipv6_prefix,
            ..
        } = vip_add(&[
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
    fn services_parse_as_address_port_protocol() {
        let v4 = parse_service("192.0.2.10:80/tcp").unwrap();
        assert_eq!(
            (v4.address.to_string(), v4.port, v4.protocol),
            ("192.0.2.10".into(), 80, Protocol::Tcp)
        );
        let v6 = parse_service("[2001:db8::10]:53/udp").unwrap();
        assert_eq!(
            (v6.address.to_string(), v6.port, v6.protocol),
            ("2001:db8::10".into(), 53, Protocol::Udp)
        );
        assert!(
            parse_service("192.0.2.10:80")
                .unwrap_err()
                .contains("expected ADDRESS:PORT/PROTO")
        );
        assert!(
            parse_service("192.0.2.10:80/sctp")
                .unwrap_err()
                .contains("neither tcp nor udp")
        );
        assert!(
            parse_service("192.0.2.10/tcp")
                .unwrap_err()
                .contains("expected")
        );
    }
}
