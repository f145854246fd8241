//! The routes toward NAT clients, read from a real kernel: a balancer host
//! whose eth0 (served) faces a router, with default routes of both
//! families through it, and whose eth1 (not served unless asked) faces
//! another network. `client_routes::read` runs inside the balancer's
//! namespace; the entries must be exactly what its routes and neighbours
//! give.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use balancer::{
    client_routes::{self, ClientRoutes},
    neighbour::Neighbours,
    plan,
};
use balancer_common::{
    backend::BackendInfo,
    nat::{Hop, RouteKey},
};
use balancer_tests::{Lab, Netns, VethOptions, netns_test};

/// A host on the balancer's eth0 network, known only to the neighbour
/// table.
const HOST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x07];
/// The router's MAC after a failover.
const NEW_ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];

/// The balancer's namespace, the router's and the other network's.
fn hosts(lab: &Lab) -> Result<(Netns, Netns, Netns)> {
    let lb = lab.netns("lb")?;
    let router = lab.netns("router")?;
    let other = lab.netns("other")?;
    lab.veth((&lb, "eth0"), (&router, "eth0"), VethOptions::default())?;
    lab.veth((&lb, "eth1"), (&other, "eth0"), VethOptions::default())?;
    for (ns, interface, cidr) in [
        (&lb, "eth0", "10.0.0.2/24"),
        (&lb, "eth0", "fd00::2/64"),
        (&lb, "eth1", "10.1.0.2/24"),
        (&router, "eth0", "10.0.0.1/24"),
        (&router, "eth0", "fd00::1/64"),
        (&other, "eth0", "10.1.0.1/24"),
    ] {
        ns.add_address(interface, cidr)?;
    }
    lb.add_route("default", "10.0.0.1")?;
    lb.add_route("default", "fd00::1")?;
    for route in [
        // Multipath: the first next hop counts.
        "-4 route add 10.9.0.0/16 nexthop via 10.0.0.1 nexthop via 10.0.0.3",
        "-6 route add fd09::/64 nexthop via fd00::1 nexthop via fd00::3",
        // A gateway with no neighbour entry.
        "-4 route add 10.3.0.0/16 via 10.0.0.3",
        // Through the unserved interface.
        "-4 route add 10.2.0.0/16 via 10.1.0.1",
        // Not unicast.
        "-4 route add unreachable 10.4.0.0/16",
        "-4 route add blackhole 10.5.0.0/16",
        "-6 route add unreachable fd0a::/64",
    ] {
        lb.ip(route.split_whitespace())?;
    }
    let router_mac = mac_text(router.mac("eth0")?);
    let other_mac = mac_text(other.mac("eth0")?);
    let host_mac = mac_text(HOST_MAC);
    for (address, mac, interface, state) in [
        ("10.0.0.1", &router_mac, "eth0", "permanent"),
        ("fd00::1", &router_mac, "eth0", "permanent"),
        ("10.0.0.7", &host_mac, "eth0", "permanent"),
        ("fd00::7", &host_mac, "eth0", "stale"),
        ("10.1.0.1", &other_mac, "eth1", "permanent"),
    ] {
        lb.ip([
            "neigh", "replace", address, "lladdr", mac, "dev", interface, "nud", state,
        ])?;
    }
    // Unusable entries: no host entry.
    for (address, state) in [("10.0.0.9", "failed"), ("10.0.0.10", "incomplete")] {
        lb.ip(["neigh", "replace", address, "dev", "eth0", "nud", state])?;
    }
    Ok((lb, router, other))
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.map(|byte| format!("{byte:02x}")).join(":")
}

fn ifindex(ns: &Netns, interface: &str) -> Result<u32> {
    ns.run(|| nix::net::if_::if_nametoindex(interface))?
        .with_context(|| format!("no interface {interface} in {}", ns.name()))
}

/// `client_routes::read` inside `ns`, serving `served`.
fn read(ns: &Netns, served: BTreeSet<u32>) -> Result<ClientRoutes> {
    ns.run(move || -> Result<ClientRoutes> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let neighbours = Neighbours::connect()?;
            Ok(client_routes::read(&neighbours, &served).await?)
        })
    })?
}

/// An entry: prefix (as `ip route` writes it), next hop's MAC, own MAC,
/// interface.
fn entry(prefix: &str, next: [u8; 6], own: [u8; 6], ifindex: u32) -> (RouteKey, Hop) {
    let (address, len) = prefix.split_once('/').expect("a prefix");
    let address: IpAddr = address.parse().expect("an address");
    let key = RouteKey::prefix(
        plan::addr(address),
        len.parse().expect("a length"),
        address.is_ipv4(),
    );
    let macs = BackendInfo::mac_words(next, own);
    (key, Hop { macs, ifindex })
}

/// Shows entries as `ip route` would, for failure messages.
fn show(entries: &BTreeMap<RouteKey, Hop>) -> String {
    entries
        .iter()
        .map(|(key, hop)| {
            let address = plan::ip(&key.addr);
            let len = key.prefix_len - if address.is_ipv4() { 96 } else { 0 };
            let bytes: Vec<u8> = hop.macs.iter().flat_map(|w| w.to_ne_bytes()).collect();
            let (next, own) = bytes.split_at(6);
            let (next, own) = (
                mac_text(next.try_into().unwrap()),
                mac_text(own.try_into().unwrap()),
            );
            format!("{address}/{len} -> {next} from {own} on {}\n", hop.ifindex)
        })
        .collect()
}

fn expect(got: &ClientRoutes, entries: Vec<(RouteKey, Hop)>, eth0: u32) -> Result<()> {
    let want: BTreeMap<RouteKey, Hop> = entries.into_iter().collect();
    ensure!(
        got.entries == want,
        "entries:\n{}expected:\n{}",
        show(&got.entries),
        show(&want)
    );
    ensure!(
        got.unresolved == [(eth0, "10.0.0.3".parse()?)],
        "unresolved gateways: {:?}",
        got.unresolved
    );
    ensure!(got.left_out == 0, "{} left out", got.left_out);
    Ok(())
}

#[test]
fn the_host_routes_and_neighbours_give_the_entries() {
    netns_test("client_routes", Duration::from_secs(60), |lab| {
        let (lb, router, other) = hosts(lab)?;
        let (eth0, eth1) = (ifindex(&lb, "eth0")?, ifindex(&lb, "eth1")?);
        let (own0, own1) = (lb.mac("eth0")?, lb.mac("eth1")?);
        let router_mac = router.mac("eth0")?;
        let through = |next| {
            vec![
                // Default routes: prefix entries toward the gateway.
                entry("0.0.0.0/0", next, own0, eth0),
                entry("::/0", router_mac, own0, eth0),
                // Multipath: the first next hop.
                entry("10.9.0.0/16", next, own0, eth0),
                entry("fd09::/64", router_mac, own0, eth0),
                // Connected routes: the usable neighbours only.
                entry("10.0.0.1/32", next, own0, eth0),
                entry("10.0.0.7/32", HOST_MAC, own0, eth0),
                entry("fd00::1/128", router_mac, own0, eth0),
                entry("fd00::7/128", HOST_MAC, own0, eth0),
            ]
        };

        let got = read(&lb, BTreeSet::from([eth0]))?;
        expect(&got, through(router_mac), eth0).context("serving eth0")?;

        // Serving eth1 too adds its gateway route and its neighbour.
        let got = read(&lb, BTreeSet::from([eth0, eth1]))?;
        let other_mac = other.mac("eth0")?;
        let mut entries = through(router_mac);
        entries.push(entry("10.2.0.0/16", other_mac, own1, eth1));
        entries.push(entry("10.1.0.1/32", other_mac, own1, eth1));
        expect(&got, entries, eth0).context("serving eth0 and eth1")?;

        // The router's address moves to another MAC (a failover): every
        // entry through it follows.
        lb.ip([
            "neigh",
            "replace",
            "10.0.0.1",
            "lladdr",
            &mac_text(NEW_ROUTER_MAC),
            "dev",
            "eth0",
            "nud",
            "permanent",
        ])?;
        let got = read(&lb, BTreeSet::from([eth0]))?;
        expect(&got, through(NEW_ROUTER_MAC), eth0).context("after the failover")?;
        Ok(())
    });
}
