//! The arguments of the commands that change the configuration (`vip add`,
//! `backend drain`, ...), one type per command, shared by the three places
//! that carry a change: the CLI parses them (`balancer vip add ...`), the
//! control socket carries them as the payload of a request
//! ([`crate::control::Request`], docs/control-api.md), and the
//! configuration editor applies them to the file ([`crate::edit`]).
//!
//! The types derive both clap's `Args`, so that the CLI's subcommands are
//! these types and nothing converts them field by field, and serde, for the
//! control socket's JSON. That is the one place outside the CLI where clap
//! appears: the daemon receives these values already parsed and never calls
//! clap, and the datapath does not use this module.

use std::{net::IpAddr, time::Duration};

use clap::{Args, ValueEnum, builder::PossibleValue};
use serde::{Deserialize, Serialize};

use crate::config::{Forwarding, List, Prefix, Protocol, Scheduler};

/// `vip add` / `vip-add`: a new VIP, with the default TCP health check.
#[derive(Clone, Debug, PartialEq, Eq, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VipAdd {
    /// A unique name.
    pub name: String,
    /// ADDRESS:PORT/PROTO, such as 192.0.2.10:80/tcp or
    /// [2001:db8::10]:53/udp.
    #[arg(value_parser = parse_service)]
    #[serde(flatten)]
    pub service: Service,
    /// How new flows are placed (default maglev).
    #[arg(long, value_enum)]
    #[serde(default)]
    pub scheduler: Option<Scheduler>,
    /// Session persistence: each client's new flows go to the backend
    /// it last used, for this long after its last packet ("30s", "5m";
    /// 1s to 24h).
    #[arg(long, value_name = "DURATION", value_parser = parse_persistence_timeout)]
    #[serde(default, with = "duration_text")]
    pub persistence_timeout: Option<Duration>,
    /// For IPv6 VIPs with persistence: the leading bits of a client's
    /// address that make one client (1 to 128, default 64).
    #[arg(
        long,
        value_name = "N",
        requires = "persistence_timeout",
        value_parser = clap::value_parser!(u8).range(1..=128)
    )]
    #[serde(default)]
    pub persistence_ipv6_prefix: Option<u8>,
    /// How packets reach the backends: dsr (the default: backends on the
    /// balancer's segment), ipip (an outer IP header), gue (an outer IP
    /// and UDP header; the backends take a tunnel's headers off) or nat
    /// (the backends need no change; replies come back through the
    /// balancer).
    #[arg(long, value_enum)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarding: Option<Forwarding>,
    /// With --forwarding nat: whether the backends see a source of the
    /// SNAT pool (true, the default) or the client's address (false:
    /// their route to the clients must be the balancer).
    #[arg(long, value_name = "BOOL", requires = "forwarding")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snat: Option<bool>,
}

/// A VIP's address, port and protocol: one argument on the command line
/// (ADDRESS:PORT/PROTO), three fields in a request and in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub address: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
}

/// `vip remove` / `vip-remove`: a VIP by its name.
#[derive(Clone, Debug, PartialEq, Eq, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VipName {
    /// The VIP's name.
    pub name: String,
}

/// `backend add` / `backend-add`: a new backend of a VIP.
#[derive(Clone, Debug, PartialEq, Eq, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendAdd {
    /// The VIP's name.
    pub vip: String,
    /// The backend's address: the VIP's family (either with ipip or gue).
    pub address: IpAddr,
    /// Share of new flows relative to the other backends (default 100).
    #[arg(long)]
    #[serde(default)]
    pub weight: Option<u32>,
    /// For a VIP that forwards by NAT: the port the backend listens on
    /// (default the VIP's).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// A backend by its VIP and address: what `backend remove`, `drain` and
/// `undrain` take.
#[derive(Clone, Debug, PartialEq, Eq, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendRef {
    /// The VIP's name.
    pub vip: String,
    /// The backend's address.
    pub address: IpAddr,
}

/// `backend weight` / `backend-weight`: a backend's new weight.
#[derive(Clone, Debug, PartialEq, Eq, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendWeight {
    /// The VIP's name.
    pub vip: String,
    /// The backend's address.
    pub address: IpAddr,
    /// Its new share of new flows relative to the other backends: 0 to
    /// 10000, 0 drains.
    pub weight: u32,
}

/// `deny add|remove`, `allow add|remove`, `exempt add|remove`
/// (`access-add`, `access-remove`): one prefix of a global list, or of a
/// VIP's.
#[derive(Clone, Debug, PartialEq, Eq, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessEntry {
    /// The list: the subcommand names it on the command line.
    #[arg(skip = List::Deny)]
    pub list: List,
    /// ADDRESS/LENGTH, such as 203.0.113.0/24 or 2001:db8::/32, or one
    /// address.
    pub prefix: Prefix,
    /// The VIP whose own list it is (without it: the global list, for
    /// every VIP).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<String>,
}

/// `--scheduler` takes the names the configuration file takes.
impl ValueEnum for Scheduler {
    fn value_variants<'a>() -> &'a [Self] {
        &Scheduler::ALL
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        let help = match self {
            Scheduler::Maglev => "Maglev consistent hashing of the 5-tuple",
            Scheduler::SourceHash => {
                "Maglev consistent hashing of the client address: a client sticks to one backend"
            }
            Scheduler::RoundRobin => {
                "New flows go to the backends in turn, in a smooth weighted order (each backend exactly its share over a cycle of total-weight flows), kept per CPU"
            }
            Scheduler::LeastConnections => {
                "Of two backends drawn at random, the one with fewer active connections divided by its weight"
            }
            Scheduler::LeastLatency => {
                "Of two backends drawn at random, the one with the lower smoothed health-check latency times (active connections + 1), divided by its weight"
            }
        };
        Some(PossibleValue::new(self.name()).help(help))
    }
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

/// Durations in requests: strings as the configuration file writes them
/// ("500ms", "30s", "5m"), so a script writes the same value in both.
mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize as _, Deserializer, Serializer, de::Error as _};

    pub fn serialize<S: Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => s.serialize_some(&crate::config::format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| crate::config::parse_duration(&text).map_err(D::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn the_command_line_and_the_file_name_schedulers_alike() {
        for scheduler in Scheduler::ALL {
            let name = scheduler.to_possible_value().unwrap().get_name().to_owned();
            assert_eq!(Scheduler::from_str(&name, false), Ok(scheduler));
            let file: Scheduler = serde_json::from_value(serde_json::json!(name)).unwrap();
            assert_eq!(file, scheduler, "{name}");
        }
    }
}
