//! The daemon's configuration: a TOML file, documented in
//! docs/configuration.md.
//!
//! Parsing ([`parse`]) and validation ([`validate`]) are pure: text in,
//! a [`Config`] or every error with its line out. Only [`load`] reads a file.

mod access;
mod advice;
mod announce;
mod bounds;
mod limits;
mod memory;
mod nat;
mod sync;
mod validate;
mod write;

use std::{
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Deserializer};
use toml::Spanned;

pub use access::{AccessConfig, List, Prefix};
pub use advice::warnings;
pub use announce::{AnnounceConfig, DEFAULT_MIN_HEALTHY, RESERVED_TABLES};
pub use bounds::{
    MAX_CHECK_INTERVAL, MAX_FLOW_TABLE_SIZE, MAX_RISE_FALL, MIN_CHECK_INTERVAL, MIN_CHECK_TIMEOUT,
    MIN_RING_SIZE, RING_SLOTS_PER_BACKEND,
};
pub use limits::{
    DEFAULT_SOURCE_IPV4_PREFIX, DEFAULT_SOURCE_IPV6_PREFIX, LimitsConfig, MAX_RATE, RateLimit,
};
pub use memory::MapMemory;
pub use nat::{DEFAULT_SNAT_PORTS, PortSpan};
pub use sync::SyncConfig;
pub use validate::{check_persistence_timeout, validate};
pub use write::write_atomically;

use crate::datapath::XdpMode;

/// Where the daemon looks for its configuration by default.
pub const DEFAULT_PATH: &str = "/etc/balancer/balancer.toml";

/// The whole configuration file.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub daemon: DaemonConfig,
    #[serde(default)]
    pub datapath: DatapathConfig,
    /// The allow, deny and exempt lists of every VIP.
    #[serde(default)]
    pub access: AccessConfig,
    /// Routes for a BGP daemon to announce; absent: none.
    #[serde(default)]
    pub announce: Option<AnnounceConfig>,
    /// New flows shared with peer hosts; absent: none.
    #[serde(default)]
    pub sync: Option<SyncConfig>,
    /// The VIPs, in file order.
    #[serde(default, rename = "vip")]
    pub vips: Vec<Spanned<VipConfig>>,
}

/// `[daemon]`: where the daemon keeps its socket and pinned state.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// The control socket the CLI talks to.
    pub control_socket: PathBuf,
    /// The bpffs directory where maps and links are pinned.
    pub pin_path: PathBuf,
    /// Where `/metrics` is served over HTTP; None (written `""`) turns it
    /// off.
    #[serde(deserialize_with = "listen_address")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// The default of `metrics_listen`: loopback only, the port Prometheus
/// exporters conventionally start from.
pub const DEFAULT_METRICS_LISTEN: std::net::SocketAddr = std::net::SocketAddr::V4(
    std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 9100),
);

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            control_socket: PathBuf::from("/run/balancer/control.sock"),
            pin_path: PathBuf::from("/sys/fs/bpf/balancer"),
            metrics_listen: Some(DEFAULT_METRICS_LISTEN),
        }
    }
}

/// Reads `ADDRESS:PORT` (`[IPv6]:PORT`), or `""` for none.
fn listen_address<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<std::net::SocketAddr>, D::Error> {
    let text = String::deserialize(deserializer)?;
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| {
        serde::de::Error::custom(format!(
            "invalid listen address {text:?}: write ADDRESS:PORT, such as \"127.0.0.1:9100\" or \"[::1]:9100\", or \"\" to turn it off"
        ))
    })
}

/// `[datapath]`: how the XDP program runs.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct DatapathConfig {
    /// Interfaces the program is attached to.
    pub interfaces: Vec<Spanned<String>>,
    /// How the program is attached: the spellings of `--xdp-mode`.
    pub xdp_mode: XdpMode,
    /// Slots of every Maglev ring: a prime.
    pub ring_size: Spanned<u32>,
    /// Entries of the connection table.
    pub flow_table_size: Spanned<u32>,
    /// Entries of each main NAT table: NAT connections past their
    /// handshake.
    pub nat_table_size: Spanned<u32>,
    #[serde(deserialize_with = "duration")]
    pub tcp_idle_timeout: Duration,
    #[serde(deserialize_with = "duration")]
    pub udp_idle_timeout: Duration,
    /// Seed of the flow hashes: the same on every balancer host of an ECMP
    /// group.
    pub hash_seed: u32,
    /// Most new connection-table entries a second over the host, shared
    /// evenly between CPUs; 0: no limit. Absent: [`DEFAULT_TURNOVER_SECS`]
    /// (see [`DatapathConfig::insert_budget`]).
    #[serde(rename = "insert_budget")]
    pub insert_budget_setting: Option<u32>,
    /// The outer source of IPIP and GUE to IPv4 backends; absent: the
    /// preferred source of each backend's route.
    pub tunnel_source_ipv4: Option<std::net::Ipv4Addr>,
    /// The outer source of IPIP and GUE to IPv6 backends; absent:
    /// likewise.
    pub tunnel_source_ipv6: Option<std::net::Ipv6Addr>,
    /// GUE's UDP destination port on the backends.
    pub gue_port: Spanned<u16>,
    /// The SNAT pool of IPv4 NAT VIPs: the sources their backends see.
    pub snat_ipv4: Vec<Spanned<std::net::Ipv4Addr>>,
    /// The SNAT pool of IPv6 NAT VIPs.
    pub snat_ipv6: Vec<Spanned<std::net::Ipv6Addr>>,
    /// The source ports NAT picks from, shared evenly between CPUs.
    pub snat_ports: Spanned<PortSpan>,
    /// How long a NAT connection between its first packet and its
    /// backend's answer may stay idle.
    #[serde(deserialize_with = "duration")]
    pub nat_handshake_timeout: Duration,
    /// How long a NAT connection either side ended may stay idle.
    #[serde(deserialize_with = "duration")]
    pub nat_closing_timeout: Duration,
}

/// The default insert budget lets new entries replace the whole connection
/// table no faster than once in this many seconds: a connection idle for
/// less than that survives any flood.
pub const DEFAULT_TURNOVER_SECS: u32 = 16;

impl DatapathConfig {
    /// New connection-table entries allowed a second over the host (0: no
    /// limit): the setting, or by default the table's size over
    /// [`DEFAULT_TURNOVER_SECS`] (16,384 for the default table), at least
    /// one.
    pub fn insert_budget(&self) -> u32 {
        self.insert_budget_setting
            .unwrap_or_else(|| (*self.flow_table_size.get_ref() / DEFAULT_TURNOVER_SECS).max(1))
    }
}

impl Default for DatapathConfig {
    fn default() -> Self {
        DatapathConfig {
            interfaces: Vec::new(),
            xdp_mode: XdpMode::Auto,
            ring_size: Spanned::new(0..0, balancer_common::maps::DEFAULT_RING_SIZE),
            flow_table_size: Spanned::new(0..0, balancer_common::maps::DEFAULT_FLOWS),
            nat_table_size: Spanned::new(0..0, balancer_common::maps::DEFAULT_NAT_ENTRIES),
            tcp_idle_timeout: Duration::from_secs(300),
            udp_idle_timeout: Duration::from_secs(30),
            hash_seed: 0,
            insert_budget_setting: None,
            tunnel_source_ipv4: None,
            tunnel_source_ipv6: None,
            gue_port: Spanned::new(0..0, balancer_common::tunnel::DEFAULT_GUE_PORT),
            snat_ipv4: Vec::new(),
            snat_ipv6: Vec::new(),
            snat_ports: Spanned::new(0..0, DEFAULT_SNAT_PORTS),
            nat_handshake_timeout: Duration::from_secs(10),
            nat_closing_timeout: Duration::from_secs(30),
        }
    }
}

/// `[[vip]]`: one virtual service.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VipConfig {
    /// Unique name, used by the CLI.
    pub name: Spanned<String>,
    pub address: Spanned<IpAddr>,
    /// 0 takes every port of the address and protocol.
    pub port: u16,
    pub protocol: Protocol,
    #[serde(default)]
    pub scheduler: Scheduler,
    /// Session persistence: a client's new flows go to the backend it last
    /// used, for this long after its last packet, unless that backend is
    /// down or drained. Absent: no persistence.
    #[serde(default, deserialize_with = "spanned_duration")]
    pub persistence_timeout: Option<Spanned<Duration>>,
    /// IPv6 VIPs with persistence: the leading bits of a client's address
    /// that make one client (default [`DEFAULT_PERSISTENCE_IPV6_PREFIX`]),
    /// since one host often uses many addresses of its prefix.
    #[serde(default)]
    pub persistence_ipv6_prefix: Option<Spanned<u8>>,
    #[serde(default)]
    pub forwarding: Forwarding,
    /// With `forwarding = "nat"`: whether the backends see a source of the
    /// SNAT pool (true, the default) or the client's own address (false:
    /// their route to the clients must be the balancer).
    #[serde(default)]
    pub snat: Option<Spanned<bool>>,
    /// Clients of this VIP whose packets are dropped, beside `[access]`'s.
    #[serde(default)]
    pub deny: Vec<Spanned<Prefix>>,
    /// When this or `[access]`'s allow list is not empty, only the clients
    /// either lists are admitted.
    #[serde(default)]
    pub allow: Vec<Spanned<Prefix>>,
    /// Clients this VIP's per-source limits never apply to, beside
    /// `[access]`'s.
    #[serde(default)]
    pub exempt: Vec<Spanned<Prefix>>,
    /// Per-source limits. Absent: none.
    #[serde(default)]
    pub limits: Option<Spanned<LimitsConfig>>,
    /// Absent: a TCP check with the defaults.
    #[serde(default)]
    pub health_check: Option<Spanned<HealthCheckConfig>>,
    /// With `[announce]`: the VIP is announced only while at least this
    /// many of its backends can take new flows (default
    /// [`DEFAULT_MIN_HEALTHY`]).
    #[serde(default)]
    pub min_healthy: Option<Spanned<u32>>,
    /// Percent of the VIP's weight (1 to 100) that must be up for its
    /// health checks to be trusted: below it, new flows spread over every
    /// backend as if all were up (see [`crate::availability`]). Absent:
    /// the checks are always trusted.
    #[serde(default)]
    pub panic_threshold: Option<Spanned<u32>>,
    /// How long a backend that comes up, is added or is undrained takes to
    /// get from a small share of new flows to its full weight, in steps
    /// (see [`crate::availability`]). Absent: its full weight at once.
    #[serde(default, deserialize_with = "spanned_duration")]
    pub slow_start: Option<Spanned<Duration>>,
    #[serde(default, rename = "backend")]
    pub backends: Vec<Spanned<BackendConfig>>,
}

impl VipConfig {
    /// The prefixes of the VIP's own `list`.
    pub fn list(&self, list: List) -> impl Iterator<Item = Prefix> + '_ {
        access::prefixes([&self.deny, &self.allow, &self.exempt], list)
    }

    /// Backends that must be able to take new flows for the VIP to be
    /// announced.
    pub fn min_healthy(&self) -> u32 {
        announce::min_healthy(self.min_healthy.as_ref())
    }

    /// Whether a NAT VIP's backends see a source of the SNAT pool.
    pub fn snat(&self) -> bool {
        self.snat.as_ref().is_none_or(|s| *s.get_ref())
    }

    /// The VIP's panic threshold in percent, if it has one.
    pub fn panic_threshold(&self) -> Option<u8> {
        self.panic_threshold
            .as_ref()
            .map(|t| (*t.get_ref()).min(100) as u8)
    }

    /// The length of the VIP's slow start, if it has one.
    pub fn slow_start(&self) -> Option<Duration> {
        self.slow_start.as_ref().map(|s| *s.get_ref())
    }

    /// The VIP's health check, the default one when the file has none.
    pub fn check(&self) -> HealthCheckConfig {
        self.health_check
            .as_ref()
            .map(|c| c.get_ref().clone())
            .unwrap_or_default()
    }

    /// The VIP's session persistence, defaults filled in; `None` without
    /// `persistence_timeout`.
    pub fn persistence(&self) -> Option<Persistence> {
        let timeout = *self.persistence_timeout.as_ref()?.get_ref();
        let ipv6_prefix = self
            .persistence_ipv6_prefix
            .as_ref()
            .map_or(DEFAULT_PERSISTENCE_IPV6_PREFIX, |p| *p.get_ref());
        Some(Persistence {
            timeout,
            ipv6_prefix,
        })
    }
}

/// Prefix length that groups IPv6 clients for persistence when
/// `persistence_ipv6_prefix` is absent: a /64 is usually one host or one
/// site, whose privacy addresses change but should stay together.
pub const DEFAULT_PERSISTENCE_IPV6_PREFIX: u8 = 64;

/// Shortest `persistence_timeout` accepted.
pub const MIN_PERSISTENCE_TIMEOUT: Duration = Duration::from_secs(1);

/// Longest `persistence_timeout` accepted.
pub const MAX_PERSISTENCE_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// A VIP's session persistence, as [`VipConfig::persistence`] gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Persistence {
    /// How long after a client's last packet its backend is remembered.
    pub timeout: Duration,
    /// For IPv6 clients: the leading bits of the address that identify a
    /// client (unused for IPv4 VIPs).
    pub ipv6_prefix: u8,
}

/// Transport protocol of a VIP.
#[derive(
    Clone, Copy, Debug, Deserialize, serde::Serialize, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => balancer_common::proto::TCP,
            Protocol::Udp => balancer_common::proto::UDP,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// How new flows are placed on backends. Every scheduler leaves out
/// backends that are down or drained (weight 0), and established flows stay
/// on their backend whatever the scheduler.
#[derive(Clone, Copy, Debug, Default, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Scheduler {
    /// Maglev consistent hashing of the 5-tuple.
    #[default]
    Maglev,
    /// Maglev consistent hashing of the client address: a client sticks
    /// to one backend.
    SourceHash,
    /// New flows go to the backends in turn, in a smooth weighted order
    /// (each backend exactly its share over a cycle of total-weight flows),
    /// kept per CPU.
    RoundRobin,
    /// Of two backends drawn at random, the one with fewer active
    /// connections divided by its weight.
    LeastConnections,
    /// Of two backends drawn at random, the one with the lower smoothed
    /// health-check latency times (active connections + 1), divided by its
    /// weight.
    LeastLatency,
}

impl Scheduler {
    /// Every scheduler, in the order help and documentation list them.
    pub const ALL: [Scheduler; 5] = [
        Scheduler::Maglev,
        Scheduler::SourceHash,
        Scheduler::RoundRobin,
        Scheduler::LeastConnections,
        Scheduler::LeastLatency,
    ];

    /// The name the configuration uses.
    pub fn name(self) -> &'static str {
        match self {
            Scheduler::Maglev => "maglev",
            Scheduler::SourceHash => "source-hash",
            Scheduler::RoundRobin => "round-robin",
            Scheduler::LeastConnections => "least-connections",
            Scheduler::LeastLatency => "least-latency",
        }
    }

    /// Whether the VIP's ring is a Maglev ring of `ring_size` slots (the
    /// hashing schedulers) rather than a list sized by its backends.
    pub fn maglev_ring(self) -> bool {
        matches!(self, Scheduler::Maglev | Scheduler::SourceHash)
    }
}

/// How packets reach backends.
#[derive(
    Clone, Copy, Debug, Default, Deserialize, serde::Serialize, PartialEq, Eq, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Forwarding {
    /// L2 direct server return: the frame's MACs rewritten, the backend
    /// on the balancer's segment.
    #[default]
    Dsr,
    /// The client's packet in an outer IP header (IPIP), from the
    /// balancer's address to the backend's; the backend takes it off
    /// (`balancer decap`, or the kernel's ipip device).
    Ipip,
    /// The client's packet in an outer IP and UDP header (GUE variant 1)
    /// to `[datapath] gue_port`; the backend takes them off (`balancer
    /// decap`, or the kernel's fou device).
    Gue,
    /// NAT: the destination rewritten to the backend's address and port,
    /// the source to an address of the SNAT pool (unless `snat = false`);
    /// the replies come back through the balancer. The backend needs no
    /// change.
    Nat,
}

impl Forwarding {
    /// The name the configuration uses.
    pub fn name(self) -> &'static str {
        match self {
            Forwarding::Dsr => "dsr",
            Forwarding::Ipip => "ipip",
            Forwarding::Gue => "gue",
            Forwarding::Nat => "nat",
        }
    }

    /// Whether the backends are reached through an outer header (IPIP or
    /// GUE), so that they may be of either family.
    pub fn tunnelled(self) -> bool {
        matches!(self, Forwarding::Ipip | Forwarding::Gue)
    }

    /// Whether the backends may be behind a gateway: anything but L2 DSR,
    /// which hands the frame over on the segment.
    pub fn routed(self) -> bool {
        self != Forwarding::Dsr
    }
}

/// `[vip.health_check]`: how the daemon decides a backend is up.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheckConfig {
    pub kind: CheckKind,
    /// Port to check; the VIP's port when absent.
    pub port: Option<u16>,
    #[serde(deserialize_with = "duration")]
    pub interval: Duration,
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// Consecutive successes that bring a down backend up.
    pub rise: u32,
    /// Consecutive failures that take an up backend down.
    pub fall: u32,
    /// `http`: the path to GET.
    pub path: String,
    /// `http`: the status that means healthy.
    pub expect_status: u16,
    /// `udp`: the datagram to send.
    pub send: Option<String>,
    /// `udp`: the reply that means healthy (a prefix of it).
    pub expect: Option<String>,
    /// `exec`: the command, run with `sh -c`; exit status 0 is healthy.
    /// `BALANCER_BACKEND` and `BALANCER_PORT` are set.
    pub command: Option<String>,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            kind: CheckKind::Tcp,
            port: None,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
            path: "/".to_owned(),
            expect_status: 200,
            send: None,
            expect: None,
            command: None,
        }
    }
}

/// Kind of health check.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    /// A TCP connection is accepted.
    #[default]
    Tcp,
    /// An HTTP GET returns the expected status.
    Http,
    /// A UDP request gets the expected reply.
    Udp,
    /// A command exits with status 0.
    Exec,
    /// No check: backends are always up.
    None,
}

impl CheckKind {
    /// Whether the check connects to a port.
    pub fn needs_port(self) -> bool {
        matches!(self, CheckKind::Tcp | CheckKind::Http | CheckKind::Udp)
    }
}

/// `[[vip.backend]]`: one backend of a VIP.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    pub address: Spanned<IpAddr>,
    /// Share of new flows relative to the other backends; 0 drains.
    #[serde(default = "default_weight")]
    pub weight: Spanned<u32>,
    /// Drained: no new flows, established ones stay; `weight` is kept for
    /// when the drain ends (`balancer backend drain` / `undrain`).
    #[serde(default)]
    pub drain: bool,
    /// With `forwarding = "nat"`: the port the backend listens on; absent,
    /// the VIP's.
    #[serde(default)]
    pub port: Option<Spanned<u16>>,
}

impl BackendConfig {
    /// The weight the rings use: 0 while drained.
    pub fn effective_weight(&self) -> u32 {
        if self.drain {
            0
        } else {
            *self.weight.get_ref()
        }
    }
}

fn default_weight() -> Spanned<u32> {
    Spanned::new(0..0, 100)
}

/// Reads a duration written as a string: "500ms", "2s", "5m".
fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

/// Reads a duration as [`duration`] does, keeping its place in the file for
/// validation messages; for optional keys (`#[serde(default)]`).
fn spanned_duration<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Spanned<Duration>>, D::Error> {
    let text = Spanned::<String>::deserialize(deserializer)?;
    let value = parse_duration(text.get_ref()).map_err(serde::de::Error::custom)?;
    Ok(Some(Spanned::new(text.span(), value)))
}

/// Parses a duration written like "500ms", "2s" or "5m"; the error says
/// how to write one. Shared with the control API, which takes durations as
/// the file writes them.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|err| {
        format!("invalid duration {text:?}: {err} (write it like \"500ms\" or \"2s\")")
    })
}

/// Writes a duration as the file and the control API write them: "30s",
/// "5m", "1h 30m".
pub fn format_duration(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

/// One problem of a configuration file, located.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// 1-based line, when the problem has a place in the file.
    pub line: Option<usize>,
    pub message: String,
}

/// Every problem of a file, ready to print: one line each, as
/// `FILE:LINE: message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors {
    pub file: String,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, err) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            match err.line {
                Some(line) => write!(f, "{}:{line}: {}", self.file, err.message)?,
                None => write!(f, "{}: {}", self.file, err.message)?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// 1-based line of byte `offset` in `text`.
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    Lines::new(text).line(offset)
}

/// The lines of a text, to find the line of many offsets: validation
/// locates every VIP and backend, and counting newlines from the start each
/// time made a file of 1,000 VIPs take seconds to validate.
pub(crate) struct Lines {
    /// Byte offset where each line starts.
    starts: Vec<usize>,
}

impl Lines {
    pub(crate) fn new(text: &str) -> Lines {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Lines { starts }
    }

    /// 1-based line of byte `offset`.
    pub(crate) fn line(&self, offset: usize) -> usize {
        self.starts.partition_point(|&start| start <= offset)
    }
}

/// Parses and validates `text`, read from `file` (used in messages).
pub fn parse(text: &str, file: &str) -> Result<Config, ConfigErrors> {
    let config: Config = toml::from_str(text).map_err(|err| ConfigErrors {
        file: file.to_owned(),
        errors: vec![ConfigError {
            line: err.span().map(|span| line_of(text, span.start)),
            message: err.message().trim().to_owned(),
        }],
    })?;
    let errors = validate(&config, text);
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors {
            file: file.to_owned(),
            errors,
        })
    }
}

/// Reads and parses the file at `path`, and logs its [`warnings`] at WARN
/// (see [`parse_logging_warnings`]).
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = read(path)?;
    parse_logging_warnings(&text, &path.display().to_string())
}

/// Parses `text`, the content of `file`, as [`parse`] does, and logs its
/// [`warnings`] at WARN, one `FILE:LINE: message` each: the daemon loads
/// its file through here at start and at every reload.
pub fn parse_logging_warnings(text: &str, file: &str) -> Result<Config, ConfigErrors> {
    let config = parse(text, file)?;
    let warnings = ConfigErrors {
        file: file.to_owned(),
        errors: warnings(&config, text),
    };
    for line in warnings.to_string().lines() {
        tracing::warn!("{line}");
    }
    Ok(config)
}

/// Reads and parses the file at `path` as [`load`] does, and returns its
/// [`warnings`] (as `errors`) instead of logging them, for `check-config`
/// to print.
pub fn load_with_warnings(path: &Path) -> Result<(Config, ConfigErrors), ConfigErrors> {
    let file = path.display().to_string();
    let text = read(path)?;
    let config = parse(&text, &file)?;
    let errors = warnings(&config, &text);
    Ok((config, ConfigErrors { file, errors }))
}

/// The text of the configuration file at `path`.
pub fn read(path: &Path) -> Result<String, ConfigErrors> {
    std::fs::read_to_string(path).map_err(|err| ConfigErrors {
        file: path.display().to_string(),
        errors: vec![ConfigError {
            line: None,
            message: format!("cannot read the configuration: {err}"),
        }],
    })
}

#[cfg(test)]
mod tests;
