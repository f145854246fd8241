//! Routes toward NAT clients: where the datapath sends a backend's reply
//! once it has made it the VIP's, as entries of `nat_routes` (an LPM trie:
//! the client's address in, the next hop's MAC, the egress interface's MAC
//! and the interface out), computed from the kernel's main routing table
//! and neighbour table.
//!
//! # Why the host's routes, and not the MAC the client's packet came from
//!
//! The datapath could note the source MAC and ingress interface of a
//! connection's first packet and send its replies back there. It follows
//! the host's routes instead, as the kernel would for a reply of its own:
//! - the daemon follows route and neighbour changes
//!   ([`crate::neighbour::Changes`]) and rewrites the entries: when a router
//!   fails over (its address moves to another router's MAC, or a routing
//!   daemon replaces the default route), the replies of connections already
//!   open move with it, where a MAC noted at the first packet would keep
//!   sending them to the failed router until each connection ended;
//! - replies leave the way the network's operators routed the client's
//!   prefix, even when its packets come in through another router
//!   (asymmetric paths, ECMP upstream);
//! - nothing is kept per connection, and no FIB lookup (about 120 ns here)
//!   is paid per packet: one trie lookup per reply.
//!
//! # What counts ([`routes`])
//!
//! - Routes of the main table (254), of type unicast, whose output
//!   interface is one the daemon serves (an XDP interface) and has a MAC;
//!   never IPv6 link-local (`fe80::/10`), multicast (`ff00::/8`) or
//!   IPv4-mapped (`::ffff:0:0/96`, where IPv4 routes' entries live)
//!   prefixes. Of two such routes of one prefix, the lower metric wins, as
//!   in the kernel (the first dumped on a tie; a served route is used even
//!   when an unserved one of the same prefix has a lower metric: it is the
//!   best path the datapath can take).
//! - A route with a gateway: one entry for its prefix, toward the
//!   gateway's MAC from the neighbour table on that interface. A gateway
//!   whose MAC is unknown makes no entry and is reported
//!   ([`ClientRoutes::unresolved`]) so that the caller can provoke its
//!   resolution ([`crate::neighbour::provoke_resolution`]).
//! - A connected route (no gateway): no entry for its prefix, since every
//!   host on it has its own MAC; instead one host entry (/32, /128) per
//!   usable neighbour on that interface whose longest matching route it
//!   is.
//! - An IPv4 prefix of length n is an entry of length 96 + n over the
//!   IPv4-mapped address, so IPv4 entries never match IPv6 clients. The
//!   reverse is not given: an IPv6 prefix as short as `::/0` covers
//!   `::ffff:0:0/96` too, and would take the IPv4 clients no IPv4 entry
//!   matches. Unless the IPv4 default route has an entry (which then
//!   matches them first), such an IPv6 entry is written as the prefixes
//!   that cover it all but `::ffff:0:0/96` (96 - n of them).
//! - At most [`MAX_ROUTES`] entries: the first in [`RouteKey`] order (the
//!   least specific first), and how many were left out.

use std::{
    collections::{BTreeMap, BTreeSet, btree_map::Entry},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use balancer_common::{
    addr_from_octets,
    backend::BackendInfo,
    nat::{Hop, MAX_ROUTES, RouteKey},
};
use netlink_packet_route::{
    AddressFamily,
    route::{
        RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteNextHopFlags, RouteType,
        RouteVia,
    },
};

use crate::neighbour::{NeighbourError, Neighbours};

/// The id of the main routing table, the one replies follow.
pub const MAIN_TABLE: u32 = 254;

/// One route of the kernel's, as far as replies care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelRoute {
    /// Its routing table.
    pub table: u32,
    /// Its type: only unicast routes count.
    pub kind: RouteType,
    /// The prefix's address: the unspecified address of its family for a
    /// default route.
    pub destination: IpAddr,
    /// The prefix's length, in bits of `destination`'s family.
    pub prefix_len: u8,
    /// The output interface.
    pub ifindex: u32,
    /// The next hop; None for a connected route.
    pub gateway: Option<IpAddr>,
    /// Its metric (priority).
    pub metric: u32,
}

impl KernelRoute {
    /// The route a message of a route dump describes; None when it has no
    /// live next hop (flagged dead, or no output interface: a route to a
    /// nexthop object dumped without the compatible attributes) or is not
    /// IPv4 or IPv6.
    ///
    /// A multipath route (`RTA_MULTIPATH`) reads as its first live next
    /// hop: an entry holds one hop, so the replies toward its prefix all
    /// take that one, not the kernel's spread over the next hops.
    pub fn from_message(message: &RouteMessage) -> Option<KernelRoute> {
        let header = &message.header;
        if header.flags.contains(RouteFlags::Dead) {
            return None;
        }
        // The kernel leaves RTA_DST out of a default route.
        let mut destination = match header.address_family {
            AddressFamily::Inet => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            _ => return None,
        };
        let (mut ifindex, mut metric, mut multipath) = (None, 0, None);
        for attr in &message.attributes {
            match attr {
                RouteAttribute::Destination(RouteAddress::Inet(v4)) => {
                    destination = IpAddr::V4(*v4)
                }
                RouteAttribute::Destination(RouteAddress::Inet6(v6)) => {
                    destination = IpAddr::V6(*v6)
                }
                RouteAttribute::Oif(index) => ifindex = Some(*index),
                RouteAttribute::Priority(priority) => metric = *priority,
                RouteAttribute::MultiPath(hops) => multipath = Some(hops),
                _ => {}
            }
        }
        let (ifindex, gateway) = match multipath {
            Some(hops) => {
                let hop = hops
                    .iter()
                    .find(|hop| !hop.flags.contains(RouteNextHopFlags::Dead))?;
                (hop.interface_index, gateway(&hop.attributes))
            }
            None => (ifindex?, gateway(&message.attributes)),
        };
        Some(KernelRoute {
            table: crate::routes::table_of(message),
            kind: header.kind,
            destination,
            prefix_len: header.destination_prefix_length,
            ifindex,
            gateway,
            metric,
        })
    }
}

/// The gateway among a route's (or a next hop's) attributes: RTA_GATEWAY,
/// or RTA_VIA (an IPv4 route through an IPv6 gateway).
fn gateway(attributes: &[RouteAttribute]) -> Option<IpAddr> {
    attributes.iter().find_map(|attr| match attr {
        RouteAttribute::Gateway(RouteAddress::Inet(v4))
        | RouteAttribute::Via(RouteVia::Inet(v4)) => Some(IpAddr::V4(*v4)),
        RouteAttribute::Gateway(RouteAddress::Inet6(v6))
        | RouteAttribute::Via(RouteVia::Inet6(v6)) => Some(IpAddr::V6(*v6)),
        _ => None,
    })
}

/// The routes toward clients to write, and what kept others out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientRoutes {
    /// `nat_routes`' entries.
    pub entries: BTreeMap<RouteKey, Hop>,
    /// Gateways (interface, address) of routes that count whose MAC the
    /// neighbour table lacks: their prefixes have no entry yet.
    pub unresolved: Vec<(u32, IpAddr)>,
    /// Entries past [`MAX_ROUTES`], not in `entries`.
    pub left_out: usize,
}

/// The routes toward clients the kernel's state gives (see the module's
/// documentation for the rules): `routes` as dumped, `neighbours` the
/// usable entries of the neighbour table (interface, address, MAC),
/// `links` the interfaces' own MACs, `served` the interfaces the daemon
/// serves.
pub fn routes(
    routes: &[KernelRoute],
    neighbours: &[(u32, IpAddr, [u8; 6])],
    links: &BTreeMap<u32, [u8; 6]>,
    served: &BTreeSet<u32>,
) -> ClientRoutes {
    routes_within(routes, neighbours, links, served, MAX_ROUTES as usize)
}

/// [`routes`], with at most `max` entries.
fn routes_within(
    routes: &[KernelRoute],
    neighbours: &[(u32, IpAddr, [u8; 6])],
    links: &BTreeMap<u32, [u8; 6]>,
    served: &BTreeSet<u32>,
    max: usize,
) -> ClientRoutes {
    // The routes that count, one per prefix, with their interface's MAC.
    let mut chosen: BTreeMap<RouteKey, (&KernelRoute, [u8; 6])> = BTreeMap::new();
    for route in routes {
        let Some(&own) = links.get(&route.ifindex) else {
            continue;
        };
        if !counts(route, served) {
            continue;
        }
        match chosen.entry(key(route.destination, route.prefix_len)) {
            Entry::Vacant(slot) => {
                slot.insert((route, own));
            }
            Entry::Occupied(mut slot) => {
                if route.metric < slot.get().0.metric {
                    slot.insert((route, own));
                }
            }
        }
    }

    let macs: BTreeMap<(u32, IpAddr), [u8; 6]> = neighbours
        .iter()
        .map(|&(ifindex, address, mac)| ((ifindex, address), mac))
        .collect();
    let mut entries = BTreeMap::new();
    let mut unresolved = BTreeSet::new();
    for (key, &(route, own)) in &chosen {
        let Some(gateway) = route.gateway else {
            continue;
        };
        match macs.get(&(route.ifindex, gateway)) {
            Some(&mac) => {
                entries.insert(*key, hop(mac, own, route.ifindex));
            }
            None => {
                unresolved.insert((route.ifindex, gateway));
            }
        }
    }

    for &(ifindex, address, mac) in neighbours {
        if let Some((route, own)) = longest_match(&chosen, address)
            && route.gateway.is_none()
            && route.ifindex == ifindex
        {
            let host = key(address, if address.is_ipv4() { 32 } else { 128 });
            entries.entry(host).or_insert(hop(mac, own, ifindex));
        }
    }

    keep_ipv4_clients_off_ipv6_prefixes(&mut entries);

    let left_out = entries.len().saturating_sub(max);
    ClientRoutes {
        entries: entries.into_iter().take(max).collect(),
        unresolved: unresolved.into_iter().collect(),
        left_out,
    }
}

/// Whether `route` (on an interface with a MAC) counts.
fn counts(route: &KernelRoute, served: &BTreeSet<u32>) -> bool {
    let longest = if route.destination.is_ipv4() { 32 } else { 128 };
    route.table == MAIN_TABLE
        && route.kind == RouteType::Unicast
        && served.contains(&route.ifindex)
        && route.prefix_len <= longest
        && !in_reserved_range(route)
}

/// Whether `route`'s prefix lies in IPv6's link-local, multicast or
/// IPv4-mapped range.
fn in_reserved_range(route: &KernelRoute) -> bool {
    let IpAddr::V6(v6) = route.destination else {
        return false;
    };
    let len = u32::from(route.prefix_len);
    [LINK_LOCAL, MULTICAST, (MAPPED, 96)]
        .iter()
        .any(|&(range, range_len)| len >= range_len && mask(u128::from(v6), range_len) == range)
}

/// IPv6 link-local unicast, `fe80::/10`.
const LINK_LOCAL: (u128, u32) = (0xfe80 << 112, 10);
/// IPv6 multicast, `ff00::/8`.
const MULTICAST: (u128, u32) = (0xff << 120, 8);
/// The IPv4-mapped range, `::ffff:0:0/96`.
const MAPPED: u128 = 0xffff << 32;

/// The first `len` bits of `bits`.
fn mask(bits: u128, len: u32) -> u128 {
    match len {
        0 => 0,
        _ => bits & (u128::MAX << (128 - len.min(128))),
    }
}

/// The key of prefix `address`/`len` (`len` in bits of its family).
fn key(address: IpAddr, len: u8) -> RouteKey {
    let (bits, v4) = match address {
        IpAddr::V4(v4) => (u128::from(v4.to_ipv6_mapped()), true),
        IpAddr::V6(v6) => (u128::from(v6), false),
    };
    let wide = u32::from(len) + if v4 { 96 } else { 0 };
    RouteKey::prefix(addr_from_octets(mask(bits, wide).to_be_bytes()), len, v4)
}

/// The key of `bits`/`len` over the whole 128 bits.
fn wide_key(bits: u128, len: u32) -> RouteKey {
    RouteKey {
        prefix_len: len,
        addr: addr_from_octets(mask(bits, len).to_be_bytes()),
    }
}

/// The route of `chosen` the kernel would take to `address`: the longest
/// prefix of its family that covers it.
fn longest_match<'a>(
    chosen: &BTreeMap<RouteKey, (&'a KernelRoute, [u8; 6])>,
    address: IpAddr,
) -> Option<(&'a KernelRoute, [u8; 6])> {
    let longest = if address.is_ipv4() { 32 } else { 128 };
    (0..=longest)
        .rev()
        .find_map(|len| chosen.get(&key(address, len)).copied())
}

/// Rewrites every IPv6 entry that covers `::ffff:0:0/96` as the prefixes
/// that cover the same but it, unless the IPv4 default route's entry (the
/// key `::ffff:0:0/96` itself) matches every IPv4 client first. The most
/// specific such entry goes first, so that where the pieces of two meet,
/// the more specific one's stay; a piece never replaces an entry of its
/// own.
fn keep_ipv4_clients_off_ipv6_prefixes(entries: &mut BTreeMap<RouteKey, Hop>) {
    if entries.contains_key(&wide_key(MAPPED, 96)) {
        return;
    }
    let covering: Vec<(RouteKey, Hop)> = entries
        .iter()
        .filter(|(key, _)| key.prefix_len < 96 && *key == &wide_key(MAPPED, key.prefix_len))
        .map(|(key, hop)| (*key, *hop))
        .collect();
    for (key, hop) in covering.into_iter().rev() {
        entries.remove(&key);
        for len in key.prefix_len + 1..=96 {
            // The prefix of length `len` beside the mapped range's.
            let beside = mask(MAPPED, len) ^ (1 << (128 - len));
            entries.entry(wide_key(beside, len)).or_insert(hop);
        }
    }
}

/// The hop toward next hop `mac` through interface `ifindex`, whose own
/// MAC is `own`.
fn hop(mac: [u8; 6], own: [u8; 6], ifindex: u32) -> Hop {
    Hop {
        macs: BackendInfo::mac_words(mac, own),
        ifindex,
    }
}

/// Reads the kernel's routes (every table, both families), its usable
/// neighbours and the served interfaces' MACs, and computes the routes
/// toward clients ([`routes`]).
pub async fn read(
    neighbours: &Neighbours,
    served: &BTreeSet<u32>,
) -> Result<ClientRoutes, NeighbourError> {
    let kernel: Vec<KernelRoute> = neighbours
        .all_routes()
        .await?
        .iter()
        .filter_map(KernelRoute::from_message)
        .collect();
    let table: Vec<(u32, IpAddr, [u8; 6])> = neighbours
        .neighbour_table()
        .await?
        .into_iter()
        .map(|((ifindex, address), mac)| (ifindex, address, mac))
        .collect();
    let mut links = BTreeMap::new();
    for &ifindex in served {
        if let (Some(mac), _) = neighbours.link(ifindex).await? {
            links.insert(ifindex, mac);
        }
    }
    Ok(routes(&kernel, &table, &links, served))
}

#[cfg(test)]
mod tests;
