//! The way to every backend, as the daemon will read it from the kernel:
//! a route that direct server return can use, an egress interface that
//! takes redirected frames, room in the path's MTU for a tunnel's outer
//! header, and room in the neighbour table.
//!
//! Not checked, because no mode needs them on the balancer host: IP
//! forwarding (`net.ipv4.ip_forward`, `net.ipv6.conf.all.forwarding`),
//! since the program sends every VIP packet itself, by XDP_TX or a
//! redirect, with the next hop's MAC the daemon resolved, tunnels
//! included; and `rp_filter`, since the program sees VIP traffic before
//! the stack's reverse-path filter, and replies never come back through
//! the balancer. The backends' own settings are checked by `balancer
//! doctor --backend` on each backend ([`super::backend_host`]).

use std::{collections::BTreeMap, net::IpAddr};

use super::{Finding, XDP_ACT_NDO_XMIT};
use crate::config::Forwarding;

/// The route to one backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The egress interface's name.
    pub interface: String,
    /// A next hop other than the backend itself.
    pub gateway: Option<IpAddr>,
    /// The route's MTU, else the interface's (0: unknown).
    pub mtu: u32,
    /// The egress interface is one the program is attached to: frames
    /// that arrive on it go back out with XDP_TX, others are redirected.
    pub attached: bool,
    /// The egress interface's `NETDEV_XDP_ACT_*` features, when reported.
    pub xdp_features: Option<u64>,
}

/// One backend of one VIP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    pub vip: String,
    pub vip_address: IpAddr,
    pub forwarding: Forwarding,
    pub address: IpAddr,
    /// The route, or why there is none.
    pub route: Result<Route, String>,
}

/// Whether the daemon can use each backend's route: one warning per
/// backend it cannot use (the daemon runs, and logs `backend unreachable`
/// for it) or whose frames the kernel would not take, or one finding for
/// all. `attached` counts the interfaces the program runs on: a frame for
/// a backend behind another interface is redirected there, which the
/// kernel refuses to a device without the `ndo-xmit` XDP feature (checked
/// here rather than trusted, since on a veth it lags: turned on while the
/// peer's GRO is turned on with both ends up, not when the peer opens).
pub fn backends(backends: &[Backend], attached: usize) -> Vec<Finding> {
    const CHECK: &str = "backend-route";
    let mut out = Vec::new();
    for backend in backends {
        let subject = format!("{} {}", backend.vip, backend.address);
        let route = match &backend.route {
            Ok(route) => route,
            Err(why) => {
                out.push(Finding::warn(
                    CHECK,
                    subject,
                    format!(
                        "no route to the backend ({why}): the daemon cannot reach it, and flows placed on it are dropped (drop_no_neighbour)"
                    ),
                    format!("add a route to {} on this host", backend.address),
                ));
                continue;
            }
        };
        if let (Forwarding::Dsr, Some(gateway)) = (backend.forwarding, route.gateway) {
            out.push(Finding::warn(
                CHECK,
                subject,
                format!(
                    "the route goes through gateway {gateway}: direct server return needs the backend on a network connected to this host, so the daemon leaves it unreachable"
                ),
                "put the backend on a directly connected network, or set forwarding = \"ipip\" (or \"gue\") for the VIP",
            ));
            continue;
        }
        let redirected = !route.attached || attached > 1;
        let takes = route
            .xdp_features
            .is_none_or(|features| features & XDP_ACT_NDO_XMIT != 0);
        if redirected && !takes {
            out.push(Finding::warn(
                CHECK,
                subject,
                format!(
                    "the backend is reached through {}, which takes no redirected frames (the kernel lists no ndo-xmit among its XDP features): packets {} are lost after the program counts them as redirect",
                    route.interface,
                    if route.attached {
                        "that arrive on another interface"
                    } else {
                        "for it"
                    }
                ),
                format!(
                    "if {} is a veth, turn GRO off and on on its peer while both ends are up (ethtool -K PEER gro off; ethtool -K PEER gro on) or attach an XDP program to the peer; else put the backend on the ingress interface's segment",
                    route.interface
                ),
            ));
        }
    }
    if out.is_empty() && !backends.is_empty() {
        out.push(Finding::ok(
            CHECK,
            format!("{} backends", backends.len()),
            "every backend has a route the daemon can use",
        ));
    }
    out
}

/// Bytes the outer headers take: IPv4 20, IPv6 40, and GUE's UDP header
/// 8 more (docs/datapath.md); none for L2 DSR and NAT.
pub fn overhead(forwarding: Forwarding, backend: IpAddr) -> u32 {
    let outer = if backend.is_ipv4() { 20 } else { 40 };
    match forwarding {
        Forwarding::Dsr | Forwarding::Nat => 0,
        Forwarding::Ipip => outer,
        Forwarding::Gue => outer + 8,
    }
}

/// The least room a client packet must have in a tunnel for path MTU
/// discovery to work: clients' stacks ignore a smaller MTU in ICMP
/// (576 - 24 for IPv4, as Linux's min_pmtu; 1,280 for IPv6), and their
/// transfers stall.
fn least_room(vip: IpAddr) -> u32 {
    if vip.is_ipv4() { 552 } else { 1280 }
}

/// Whether client packets of the ingress MTU still fit the path to the
/// tunnelled backends once the outer header is on. Those that do not are
/// answered with ICMP by the program (docs/operations.md), so a full-size
/// packet costs a round trip, clients that drop ICMP stall, and IPv4
/// packets without DF are dropped: a warning; below the least MTU clients
/// take from ICMP, a failure. Grouped by path, since many backends share
/// one.
pub fn tunnel_mtu(backends: &[Backend], ingress_mtu: Option<u32>) -> Vec<Finding> {
    const CHECK: &str = "tunnel-mtu";
    let Some(ingress) = ingress_mtu else {
        return Vec::new();
    };
    // (interface, path MTU, mode, outer family) → VIPs and backends.
    type Path = (String, u32, &'static str, bool);
    let mut paths: BTreeMap<Path, (Vec<&Backend>, u32)> = BTreeMap::new();
    let mut tunnelled = 0;
    for backend in backends {
        let Ok(route) = &backend.route else { continue };
        if !backend.forwarding.tunnelled() {
            continue;
        }
        tunnelled += 1;
        let extra = overhead(backend.forwarding, backend.address);
        if route.mtu == 0 || ingress + extra <= route.mtu {
            continue;
        }
        let key = (
            route.interface.clone(),
            route.mtu,
            backend.forwarding.name(),
            backend.address.is_ipv4(),
        );
        paths
            .entry(key)
            .or_insert((Vec::new(), extra))
            .0
            .push(backend);
    }
    let mut out = Vec::new();
    for ((interface, mtu, forwarding, ipv4), (group, extra)) in &paths {
        let room = mtu.saturating_sub(*extra);
        let mut vips: Vec<&str> = group.iter().map(|b| b.vip.as_str()).collect();
        vips.dedup();
        let subject = format!(
            "{interface} {forwarding} over IPv{}",
            if *ipv4 { 4 } else { 6 }
        );
        let message = format!(
            "client packets of up to {ingress} bytes arrive, and {} of VIP {} go through {interface} (MTU {mtu}) with {extra} bytes of outer header: only {room} fit",
            match group.len() {
                1 => "the backend".to_owned(),
                n => format!("the {n} backends"),
            },
            vips.join(", "),
        );
        let fix = format!(
            "raise the MTU toward the backends to {} (ip link set dev {interface} mtu {}, and along the path), or make the backends announce an MSS of at most {} (ip route ... advmss {})",
            ingress + extra,
            ingress + extra,
            room.saturating_sub(40),
            room.saturating_sub(40),
        );
        let starved: Vec<&str> = group
            .iter()
            .filter(|b| room < least_room(b.vip_address))
            .map(|b| b.vip.as_str())
            .collect();
        if starved.is_empty() {
            out.push(Finding::warn(
                CHECK,
                subject,
                format!(
                    "{message}: larger ones are answered with ICMP too-big (a round trip per connection, clients that drop ICMP stall, IPv4 without DF is dropped)"
                ),
                fix,
            ));
        } else {
            out.push(Finding::fail(
                CHECK,
                subject,
                format!(
                    "{message}, less than clients take from ICMP (552 for IPv4, 1280 for IPv6): transfers to {} stall",
                    starved.join(", ")
                ),
                fix,
            ));
        }
    }
    if out.is_empty() && tunnelled > 0 {
        out.push(Finding::ok(
            CHECK,
            format!("{tunnelled} tunnelled backends"),
            format!("client packets of {ingress} bytes fit every tunnel with its outer header"),
        ));
    }
    out
}

/// Entries of the kernel's neighbour table, per family.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Neighbours {
    /// Distinct backends of the family.
    pub backends: usize,
    /// `net.ipv4.neigh.default.gc_thresh3` (or ipv6's): past it the
    /// kernel drops entries, backends' included.
    pub gc_thresh3: Option<u64>,
}

/// Whether the neighbour table holds every backend with room to spare
/// (docs/operations.md: the thresholds at twice the backends).
pub fn neighbour_table(ipv4: Neighbours, ipv6: Neighbours) -> Vec<Finding> {
    const CHECK: &str = "neighbour-table";
    let mut out = Vec::new();
    for (family, n) in [("ipv4", ipv4), ("ipv6", ipv6)] {
        if n.backends == 0 {
            continue;
        }
        let key = format!("net.{family}.neigh.default.gc_thresh3");
        let Some(limit) = n.gc_thresh3 else {
            out.push(Finding::warn(
                CHECK,
                &key,
                format!("cannot read {key}: the neighbour table's size could not be checked"),
                format!("sysctl {key}"),
            ));
            continue;
        };
        let wanted = 2 * n.backends as u64;
        if limit < wanted {
            out.push(Finding::warn(
                CHECK,
                &key,
                format!(
                    "{limit} entries for {} backends: past the limit the kernel drops neighbours, backends' included (\"neighbor table overflow\")",
                    n.backends
                ),
                format!(
                    "sysctl -w net.{family}.neigh.default.gc_thresh1={wanted} net.{family}.neigh.default.gc_thresh2={} net.{family}.neigh.default.gc_thresh3={} (and in /etc/sysctl.d/)",
                    2 * wanted,
                    2 * wanted
                ),
            ));
        } else {
            out.push(Finding::ok(
                CHECK,
                &key,
                format!("{limit} entries: room for {} backends", n.backends),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::checks::{Level, table::expect};

    fn route(mtu: u32) -> Route {
        Route {
            interface: "eth1".to_owned(),
            gateway: None,
            mtu,
            attached: true,
            xdp_features: Some(0x67),
        }
    }

    fn backend(forwarding: Forwarding, address: &str, route: Result<Route, String>) -> Backend {
        Backend {
            vip: "web".to_owned(),
            vip_address: "192.0.2.10".parse().unwrap(),
            forwarding,
            address: address.parse().unwrap(),
            route,
        }
    }

    #[test]
    fn backend_routes_must_be_usable_by_their_mode() {
        let via = |gateway: &str| Route {
            gateway: Some(gateway.parse().unwrap()),
            ..route(1500)
        };
        let elsewhere = |features| Route {
            attached: false,
            xdp_features: features,
            ..route(1500)
        };
        let rows = [
            (
                "on link",
                backend(Forwarding::Dsr, "10.0.0.11", Ok(route(1500))),
                Level::Ok,
                "every backend has a route",
                None,
            ),
            (
                "no route",
                backend(
                    Forwarding::Dsr,
                    "10.0.0.11",
                    Err("Network is unreachable".to_owned()),
                ),
                Level::Warn,
                "no route to the backend (Network is unreachable)",
                Some("add a route to 10.0.0.11"),
            ),
            (
                "dsr through a gateway",
                backend(Forwarding::Dsr, "10.9.0.11", Ok(via("10.0.0.1"))),
                Level::Warn,
                "through gateway 10.0.0.1: direct server return needs",
                Some("forwarding = \"ipip\""),
            ),
            (
                "ipip through a gateway",
                backend(Forwarding::Ipip, "10.9.0.11", Ok(via("10.0.0.1"))),
                Level::Ok,
                "every backend",
                None,
            ),
            (
                "egress without ndo-xmit",
                backend(Forwarding::Dsr, "10.0.0.11", Ok(elsewhere(Some(0x23)))),
                Level::Warn,
                "through eth1, which takes no redirected frames (the kernel lists no ndo-xmit among its XDP features): packets for it are lost",
                Some("if eth1 is a veth, turn GRO off and on on its peer while both ends are up"),
            ),
            // Reached through the only interface the program runs on:
            // XDP_TX, which needs no ndo-xmit.
            (
                "attached, alone",
                backend(
                    Forwarding::Dsr,
                    "10.0.0.11",
                    Ok(Route {
                        xdp_features: Some(0x23),
                        ..route(1500)
                    }),
                ),
                Level::Ok,
                "every backend",
                None,
            ),
            (
                "egress with ndo-xmit",
                backend(Forwarding::Dsr, "10.0.0.11", Ok(elsewhere(Some(0x67)))),
                Level::Ok,
                "every backend",
                None,
            ),
            (
                "egress unknown",
                backend(Forwarding::Dsr, "10.0.0.11", Ok(elsewhere(None))),
                Level::Ok,
                "every backend",
                None,
            ),
        ];
        for (case, backend, level, message, fix) in rows {
            let findings = backends(&[backend], 1);
            assert_eq!(findings.len(), 1, "{case}: {findings:?}");
            expect(case, &findings[0], level, message, fix);
        }
        assert!(backends(&[], 1).is_empty());
        // With two interfaces, frames arriving on the other are
        // redirected to the backend's.
        let attached = backend(
            Forwarding::Dsr,
            "10.0.0.11",
            Ok(Route {
                xdp_features: Some(0x23),
                ..route(1500)
            }),
        );
        let findings = backends(&[attached], 2);
        expect(
            "attached, with another",
            &findings[0],
            Level::Warn,
            "packets that arrive on another interface are lost",
            Some("GRO off and on"),
        );
    }

    #[test]
    fn the_outer_header_costs_by_mode_and_family() {
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        let v6: IpAddr = "fd00::1".parse().unwrap();
        assert_eq!(
            [
                overhead(Forwarding::Dsr, v4),
                overhead(Forwarding::Ipip, v4),
                overhead(Forwarding::Ipip, v6),
                overhead(Forwarding::Gue, v4),
                overhead(Forwarding::Gue, v6),
            ],
            [0, 20, 40, 28, 48]
        );
    }

    #[test]
    fn tunnelled_packets_of_the_ingress_mtu_must_fit_the_path() {
        let v6_vip = |b: Backend| Backend {
            vip_address: "2001:db8::10".parse().unwrap(),
            ..b
        };
        let rows = [
            (
                "ipip fits",
                backend(Forwarding::Ipip, "10.0.0.11", Ok(route(1520))),
                1500,
                Some((Level::Ok, "fit every tunnel", "")),
            ),
            (
                "ipip over 1500",
                backend(Forwarding::Ipip, "10.0.0.11", Ok(route(1500))),
                1500,
                Some((
                    Level::Warn,
                    "client packets of up to 1500 bytes arrive, and the backend of VIP web go through eth1 (MTU 1500) with 20 bytes of outer header: only 1480 fit",
                    "raise the MTU toward the backends to 1520 (ip link set dev eth1 mtu 1520",
                )),
            ),
            (
                "gue over ipv6",
                backend(Forwarding::Gue, "fd00::11", Ok(route(1500))),
                1500,
                Some((
                    Level::Warn,
                    "48 bytes of outer header: only 1452 fit",
                    "advmss 1412",
                )),
            ),
            (
                "gue fits a smaller ingress",
                backend(Forwarding::Gue, "10.0.0.11", Ok(route(1500))),
                1400,
                Some((Level::Ok, "1400 bytes fit", "")),
            ),
            (
                "unknown path MTU",
                backend(Forwarding::Ipip, "10.0.0.11", Ok(route(0))),
                1500,
                Some((Level::Ok, "fit", "")),
            ),
            (
                "ipv6 clients starve",
                v6_vip(backend(Forwarding::Gue, "fd00::11", Ok(route(1300)))),
                1500,
                Some((
                    Level::Fail,
                    "only 1252 fit, less than clients take from ICMP",
                    "mtu 1548",
                )),
            ),
            (
                "dsr is not tunnelled",
                backend(Forwarding::Dsr, "10.0.0.11", Ok(route(1000))),
                1500,
                None,
            ),
            // The route's own finding covers it.
            (
                "no route",
                backend(Forwarding::Ipip, "10.0.0.11", Err("none".to_owned())),
                1500,
                None,
            ),
        ];
        for (case, backend, ingress, expected) in rows {
            let findings = tunnel_mtu(&[backend], Some(ingress));
            match expected {
                None => assert!(findings.is_empty(), "{case}: {findings:?}"),
                Some((level, message, fix)) => {
                    assert_eq!(findings.len(), 1, "{case}: {findings:?}");
                    let fix = (!fix.is_empty()).then_some(fix);
                    expect(case, &findings[0], level, message, fix);
                }
            }
        }
        let shared = [
            backend(Forwarding::Ipip, "10.0.0.11", Ok(route(1500))),
            backend(Forwarding::Ipip, "10.0.0.12", Ok(route(1500))),
        ];
        let grouped = tunnel_mtu(&shared, Some(1500));
        assert_eq!(grouped.len(), 1, "{grouped:?}");
        assert!(
            grouped[0].message.contains("the 2 backends of VIP web"),
            "{grouped:?}"
        );
        assert!(tunnel_mtu(&shared, None).is_empty());
    }

    #[test]
    fn the_neighbour_table_needs_twice_the_backends() {
        let n = |backends, limit| Neighbours {
            backends,
            gc_thresh3: limit,
        };
        let rows = [
            (
                n(3, Some(1024)),
                Level::Ok,
                "1024 entries: room for 3 backends",
                None,
            ),
            (n(512, Some(1024)), Level::Ok, "room for 512", None),
            (
                n(600, Some(1024)),
                Level::Warn,
                "1024 entries for 600 backends",
                Some(
                    "gc_thresh1=1200 net.ipv4.neigh.default.gc_thresh2=2400 net.ipv4.neigh.default.gc_thresh3=2400",
                ),
            ),
            (
                n(3, None),
                Level::Warn,
                "cannot read net.ipv4.neigh.default.gc_thresh3",
                Some("sysctl"),
            ),
        ];
        for (ipv4, level, message, fix) in rows {
            let findings = neighbour_table(ipv4, Neighbours::default());
            assert_eq!(findings.len(), 1, "{findings:?}");
            expect(&format!("{ipv4:?}"), &findings[0], level, message, fix);
        }
        let v6 = neighbour_table(n(0, Some(1)), n(2000, Some(1024)));
        assert_eq!(v6.len(), 1);
        expect(
            "ipv6",
            &v6[0],
            Level::Warn,
            "for 2000 backends",
            Some("net.ipv6.neigh.default.gc_thresh3=8000"),
        );
    }
}
