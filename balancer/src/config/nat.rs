//! NAT forwarding's keys: the SNAT pools and source ports of
//! `[datapath]`, a VIP's `snat`, a backend's `port`, and the rules they
//! follow.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
    ops::Range,
    str::FromStr,
};

use balancer_common::{maps::MAX_VIPS, nat::MAX_SNAT_ADDRS};
use serde::{Deserialize, Deserializer};

use super::{Config, Forwarding, bounds::unusable};

/// A range of ports, written `"FIRST-LAST"` (both included).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortSpan {
    pub first: u16,
    pub last: u16,
}

/// The source ports NAT picks from by default: below Linux's default
/// ephemeral range (32768 to 60999), so that a SNAT address the host also
/// uses for its own connections (health checks among them) never hands
/// out a port the kernel uses.
pub const DEFAULT_SNAT_PORTS: PortSpan = PortSpan {
    first: 1024,
    last: 32767,
};

impl PortSpan {
    /// How many ports the span holds.
    pub fn len(&self) -> u32 {
        u32::from(self.last) - u32::from(self.first) + 1
    }

    /// Whether the span holds no port (never, once parsed).
    pub fn is_empty(&self) -> bool {
        self.last < self.first
    }
}

impl fmt::Display for PortSpan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl FromStr for PortSpan {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || {
            format!(
                "invalid port range {text:?}: write it \"FIRST-LAST\", ports from 1 to 65535, such as \"{DEFAULT_SNAT_PORTS}\""
            )
        };
        let (first, last) = text.split_once('-').ok_or_else(invalid)?;
        let first: u16 = first.trim().parse().map_err(|_| invalid())?;
        let last: u16 = last.trim().parse().map_err(|_| invalid())?;
        if first == 0 || last < first {
            return Err(invalid());
        }
        Ok(PortSpan { first, last })
    }
}

impl<'de> Deserialize<'de> for PortSpan {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Every broken rule of NAT's keys, located.
pub(super) fn problems(config: &Config) -> Vec<(Range<usize>, String)> {
    let mut out = Vec::new();
    let d = &config.datapath;
    let vip_addresses: BTreeSet<IpAddr> = config
        .vips
        .iter()
        .map(|v| *v.get_ref().address.get_ref())
        .collect();
    let v4: Vec<(Range<usize>, IpAddr)> = d
        .snat_ipv4
        .iter()
        .map(|a| (a.span(), IpAddr::V4(*a.get_ref())))
        .collect();
    let v6: Vec<(Range<usize>, IpAddr)> = d
        .snat_ipv6
        .iter()
        .map(|a| (a.span(), IpAddr::V6(*a.get_ref())))
        .collect();
    pool("snat_ipv4", &v4, &vip_addresses, &mut out);
    pool("snat_ipv6", &v6, &vip_addresses, &mut out);
    for (key, timeout) in [
        ("nat_handshake_timeout", d.nat_handshake_timeout),
        ("nat_closing_timeout", d.nat_closing_timeout),
    ] {
        if timeout.is_zero() {
            out.push((0..0, format!("[datapath] {key} must be above 0")));
        }
    }
    let snat_addresses = v4.len() + v6.len();
    let addresses: BTreeSet<(IpAddr, u8)> = config
        .vips
        .iter()
        .map(|v| {
            let v = v.get_ref();
            (*v.address.get_ref(), v.protocol.number())
        })
        .collect();
    if addresses.len() + 2 * snat_addresses > MAX_VIPS as usize {
        out.push((
            0..0,
            format!(
                "{} VIP addresses (by protocol) and {snat_addresses} SNAT addresses (2 entries each): the datapath holds {MAX_VIPS} entries",
                addresses.len()
            ),
        ));
    }
    // Per address and protocol: the first VIP that forwards by NAT, and
    // the first that does not (for the message).
    let mut kinds: BTreeMap<(IpAddr, u8), Kinds> = BTreeMap::new();
    for spanned in &config.vips {
        let vip = spanned.get_ref();
        let name = vip.name.get_ref();
        let nat = vip.forwarding == Forwarding::Nat;
        let kind = kinds
            .entry((*vip.address.get_ref(), vip.protocol.number()))
            .or_default();
        if nat {
            kind.nat.get_or_insert(name);
        } else {
            kind.other.get_or_insert(name);
        }
        if let Some(snat) = &vip.snat
            && !nat
        {
            out.push((
                snat.span(),
                format!("VIP {name:?}: snat applies to forwarding = \"nat\" only"),
            ));
        }
        if nat && vip.snat() {
            let (key, empty) = if vip.address.get_ref().is_ipv4() {
                ("snat_ipv4", d.snat_ipv4.is_empty())
            } else {
                ("snat_ipv6", d.snat_ipv6.is_empty())
            };
            if empty {
                out.push((
                    vip.address.span(),
                    format!(
                        "VIP {name:?} forwards by NAT with source NAT, but [datapath] {key} is empty: list the addresses its backends see as the source (or set snat = false)"
                    ),
                ));
            }
        }
        for backend in &vip.backends {
            let backend = backend.get_ref();
            let Some(port) = &backend.port else {
                continue;
            };
            let address = backend.address.get_ref();
            if !nat {
                out.push((
                    port.span(),
                    format!(
                        "backend {address} of VIP {name:?}: port applies to forwarding = \"nat\" only (the other ways keep the client's packet as it is)"
                    ),
                ));
            } else if *port.get_ref() == 0 {
                out.push((
                    port.span(),
                    format!("backend {address} of VIP {name:?}: port must be from 1 to 65535"),
                ));
            } else if vip.port == 0 {
                out.push((
                    port.span(),
                    format!(
                        "backend {address} of VIP {name:?}: the VIP takes every port (port 0), which its backends keep: a port of their own would send every port to one"
                    ),
                ));
            }
        }
    }
    for ((address, proto), kind) in kinds {
        if let (Some(nat), Some(other)) = (kind.nat, kind.other) {
            let protocol = if proto == balancer_common::proto::TCP {
                "tcp"
            } else {
                "udp"
            };
            out.push((
                0..0,
                format!(
                    "VIPs {nat:?} and {other:?} share {address} ({protocol}), and only {nat:?} forwards by NAT: the VIPs of an address and protocol all forward by NAT or none does"
                ),
            ));
        }
    }
    out
}

/// The VIPs of one address and protocol: the first that forwards by NAT,
/// the first that does not.
#[derive(Default)]
struct Kinds<'a> {
    nat: Option<&'a str>,
    other: Option<&'a str>,
}

/// The rules of SNAT pool `key` of `addresses`: at most
/// [`MAX_SNAT_ADDRS`], usable, no repeat, no VIP's address.
fn pool(
    key: &str,
    addresses: &[(Range<usize>, IpAddr)],
    vip_addresses: &BTreeSet<IpAddr>,
    out: &mut Vec<(Range<usize>, String)>,
) {
    if addresses.len() > MAX_SNAT_ADDRS as usize {
        out.push((
            addresses[0].0.clone(),
            format!(
                "[datapath] {key} has {} addresses: at most {MAX_SNAT_ADDRS}",
                addresses.len()
            ),
        ));
    }
    let mut seen = BTreeSet::new();
    for (span, address) in addresses {
        if let Some(why) = unusable(*address) {
            out.push((
                span.clone(),
                format!("[datapath] {key}: {address} {why}: backends must be able to reply to it"),
            ));
        }
        if !seen.insert(*address) {
            out.push((
                span.clone(),
                format!("[datapath] {key}: {address} is listed twice"),
            ));
        }
        if vip_addresses.contains(address) {
            out.push((
                span.clone(),
                format!(
                    "[datapath] {key}: {address} is a VIP's address: a SNAT address takes the replies of NAT connections, so it must be an address of its own"
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_spans_parse_and_refuse() {
        assert_eq!(
            "1024-32767".parse::<PortSpan>(),
            Ok(PortSpan {
                first: 1024,
                last: 32767
            })
        );
        assert_eq!("7-7".parse::<PortSpan>().map(|s| s.len()), Ok(1));
        for bad in ["", "1024", "0-10", "10-9", "a-b", "1-65536", "-5"] {
            assert!(bad.parse::<PortSpan>().is_err(), "{bad:?}");
        }
        assert_eq!(DEFAULT_SNAT_PORTS.to_string(), "1024-32767");
    }
}
