//! VIPs forwarded in IPIP and GUE with real traffic: the balancer
//! encapsulates each client packet from its own address (the route's
//! preferred source) to the backend's, the backends run `balancer decap`,
//! and the client's connections are answered by every backend, directly;
//! without the decapsulator they are not. Backends sit two routers away
//! from the client, beside L2 DSR VIPs on the same balancer.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use balancer_tests::{
    Lab, Netns, VethOptions,
    daemon::{cli_json, start, start_with_config},
    netns_test,
    servers::{
        EchoConnection, HealthEndpoint, tally_names, tcp_ask_name, tcp_echo_server,
        tcp_name_server, tcp_sink_server, udp_name_server, udp_tally, upload,
    },
    topology::{self, ConfigText, NO_CHECK, Topology, plain},
};
use nix::sys::signal::Signal;

/// A VIP's options: `forwarding` (dsr, ipip or gue), no health check.
fn mode(forwarding: &str) -> String {
    format!("forwarding = \"{forwarding}\"\n{NO_CHECK}")
}

fn web() -> SocketAddr {
    SocketAddr::new(topology::VIP4.into(), 80)
}

#[test]
fn an_ipip_vip_reaches_backends_that_decapsulate() {
    netns_test("ipip_traffic", Duration::from_secs(120), |lab| {
        let t = Topology::build(lab, 2)?;
        for (i, ns) in t.backends.iter().enumerate() {
            tcp_name_server(ns, "0.0.0.0:80".parse()?, &format!("be{i}"))?;
        }
        let config = ConfigText::default()
            .vip(
                "web",
                topology::VIP4.into(),
                80,
                "tcp",
                &mode("ipip"),
                &plain(&t.backend_addresses(false)),
            )
            .build();
        let _daemon = start_with_config(lab, &t.lb, &config)?;
        // Without a decapsulator the backends drop what comes in IPIP.
        ensure!(
            tcp_ask_name(&t.client, web()).is_err(),
            "answered before any backend decapsulates"
        );
        for (i, ns) in t.backends.iter().enumerate() {
            lab.decap(ns, &format!("decap{i}"), &["--interface", "eth0"])?;
        }
        let names = tally_names(&t.client, web(), 30)?;
        ensure!(names.len() == 2, "answered by {names:?}");
        let stats = cli_json(lab, ["stats"])?;
        let encap = stats["counters"]["encap"]["packets"].as_u64();
        ensure!(encap.is_some_and(|n| n >= 90), "encap events: {stats}");
        // Decapsulators off: nothing gets through any more.
        for (i, ns) in t.backends.iter().enumerate() {
            lab.decap(ns, &format!("decap{i}"), &["--detach"])?;
        }
        ensure!(
            tcp_ask_name(&t.client, web()).is_err(),
            "answered after the decapsulators left"
        );
        Ok(())
    });
}

/// The router between the balancer's segment and the backends' subnets.
const GATEWAY: &str = "10.50.0.253";
const GATEWAY6: &str = "fd50::fd";

/// What [`routed`] built.
struct Routed {
    /// The topology: its `router` is the client's.
    t: Topology,
    /// The backends' router.
    gw: Netns,
    /// The routed backends.
    hosts: Vec<Netns>,
    /// Their IPv4 and IPv6 addresses.
    v4: Vec<IpAddr>,
    v6: Vec<IpAddr>,
}

/// Backends two routers away from the client:
///
/// ```text
///   client ── rt ── br0 ── gw ── rbe0 (10.70.0.10, fd70:0::10)
///                    │       └── rbe1 (10.70.1.10, fd70:1::10)
///                    ├── lb
///                    └── be0..  (`dsr` backends on the segment)
/// ```
///
/// The routed backends hold the VIPs on `lo`, serve names on VIP4:80,
/// VIP6:80 and VIP4:81 (TCP) and VIP4:53 and VIP6:53 (UDP), echoes on
/// VIP4:82 and take uploads on VIP4:85 and VIP6:85, run `balancer decap`,
/// and
/// answer the client through `gw`.
fn routed(lab: &Lab, dsr: usize) -> Result<Routed> {
    let t = Topology::build_routed(lab, dsr, 1500)?;
    let rt = lab.netns("gw")?;
    lab.veth((&rt, "eth0"), (&t.switch, "pgw"), VethOptions::default())?;
    t.switch.ip(["link", "set", "pgw", "master", "br0"])?;
    t.switch.ip(["link", "set", "pgw", "up"])?;
    rt.add_address("eth0", &format!("{GATEWAY}/24"))?;
    rt.add_address("eth0", &format!("{GATEWAY6}/64"))?;
    rt.sysctl("net.ipv4.ip_forward", "1")?;
    rt.sysctl("net.ipv6.conf.all.forwarding", "1")?;
    rt.add_route("10.60.0.0/24", &topology::ROUTER4.to_string())?;
    rt.add_route("fd60::/64", &topology::ROUTER6.to_string())?;
    let mut backends = Vec::new();
    let mut backends6 = Vec::new();
    let mut hosts = Vec::new();
    for i in 0..2 {
        let be = lab.netns(&format!("rbe{i}"))?;
        let link = format!("b{i}");
        lab.veth((&rt, &link), (&be, "eth0"), VethOptions::default())?;
        rt.add_address(&link, &format!("10.70.{i}.1/24"))?;
        be.add_address("eth0", &format!("10.70.{i}.10/24"))?;
        be.add_route("default", &format!("10.70.{i}.1"))?;
        rt.add_address(&link, &format!("fd70:{i}::1/64"))?;
        be.add_address("eth0", &format!("fd70:{i}::10/64"))?;
        be.add_route("default", &format!("fd70:{i}::1"))?;
        be.add_address("lo", &format!("{}/32", topology::VIP4))?;
        be.add_address("lo", &format!("{}/128", topology::VIP6))?;
        let name = format!("be{i}");
        tcp_name_server(&be, "0.0.0.0:80".parse()?, &name)?;
        tcp_name_server(&be, SocketAddr::new(topology::VIP6.into(), 80), &name)?;
        tcp_name_server(&be, "0.0.0.0:81".parse()?, &name)?;
        tcp_echo_server(&be, SocketAddr::new(topology::VIP4.into(), 82), &name)?;
        tcp_sink_server(&be, SocketAddr::new(topology::VIP4.into(), 85), &name)?;
        tcp_sink_server(&be, SocketAddr::new(topology::VIP6.into(), 85), &name)?;
        udp_name_server(&be, SocketAddr::new(topology::VIP4.into(), 53), &name)?;
        udp_name_server(&be, SocketAddr::new(topology::VIP6.into(), 53), &name)?;
        lab.decap(&be, &format!("decap{i}"), &["--interface", "eth0"])?;
        backends.push(IpAddr::from([10, 70, i as u8, 10]));
        backends6.push(format!("fd70:{i}::10").parse::<IpAddr>()?);
        hosts.push(be);
    }
    t.lb.add_route("10.70.0.0/16", GATEWAY)?;
    t.lb.add_route("fd70::/16", GATEWAY6)?;
    Ok(Routed {
        t,
        gw: rt,
        hosts,
        v4: backends,
        v6: backends6,
    })
}

#[test]
fn ipip_vips_of_both_families_reach_backends_behind_a_router() {
    netns_test("ipip_routed", Duration::from_secs(120), |lab| {
        // VIPs: web (IPv4 to IPv4 backends), web6 (IPv6 to IPv6) and
        // mixed (IPv4 to IPv6 backends, port 81).
        let Routed {
            t,
            gw: rt,
            v4: backends,
            v6: backends6,
            ..
        } = routed(lab, 0)?;
        let ipip = mode("ipip");
        let config = ConfigText::default()
            .vip(
                "web",
                topology::VIP4.into(),
                80,
                "tcp",
                &ipip,
                &plain(&backends),
            )
            .vip(
                "web6",
                topology::VIP6.into(),
                80,
                "tcp",
                &ipip,
                &plain(&backends6),
            )
            .vip(
                "mixed",
                topology::VIP4.into(),
                81,
                "tcp",
                &ipip,
                &plain(&backends6),
            )
            .build();
        let _daemon = start_with_config(lab, &t.lb, &config)?;
        for (name, vip) in [
            ("web", web()),
            ("web6", SocketAddr::new(topology::VIP6.into(), 80)),
            ("mixed", SocketAddr::new(topology::VIP4.into(), 81)),
        ] {
            let names = tally_names(&t.client, vip, 20)?;
            ensure!(names.len() == 2, "{name}: answered by {names:?}");
        }
        // Both reached through the router: its MAC is their next hop's.
        let gateway_mac = rt.mac("eth0")?;
        let mac = gateway_mac
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        let rows = cli_json(lab, ["backend", "list"])?;
        let macs: Vec<&str> = rows
            .as_array()
            .context("backend list")?
            .iter()
            .filter_map(|r| r["mac"].as_str())
            .collect();
        ensure!(
            macs.len() == 6 && macs.iter().all(|m| *m == mac),
            "next hops {macs:?}, gateway {mac}"
        );
        Ok(())
    });
}

#[test]
fn held_ipip_connections_survive_a_killed_daemon() {
    netns_test("ipip_restart", Duration::from_secs(120), |lab| {
        let Routed {
            t, v4: backends, ..
        } = routed(lab, 0)?;
        let ipip = mode("ipip");
        let config = ConfigText::default()
            .vip(
                "web",
                topology::VIP4.into(),
                80,
                "tcp",
                &ipip,
                &plain(&backends),
            )
            .vip(
                "chat",
                topology::VIP4.into(),
                82,
                "tcp",
                &ipip,
                &plain(&backends),
            )
            .build();
        let path = lab.write_file("balancer.toml", &config)?;
        let args = ["--config".as_ref(), path.as_os_str()];
        let mut daemon = start(lab, &t.lb, args)?;
        let chat = SocketAddr::new(topology::VIP4.into(), 82);
        let mut held: Vec<EchoConnection> = (0..10)
            .map(|_| EchoConnection::open(&t.client, chat))
            .collect::<Result<_>>()?;
        for c in &mut held {
            c.echo("before")?;
        }
        daemon.signal(Signal::SIGKILL)?;
        daemon.wait_timeout(Duration::from_secs(5))?;
        // No daemon: the pinned datapath still encapsulates.
        for c in &mut held {
            c.echo("while the daemon is dead")?;
        }
        let _daemon = start(lab, &t.lb, args)?;
        for (i, c) in held.iter_mut().enumerate() {
            c.echo("after the restart")
                .with_context(|| format!("held connection {i} on {}", c.backend))?;
        }
        let names = tally_names(&t.client, web(), 20)?;
        ensure!(names.len() == 2, "after the restart: {names:?}");
        Ok(())
    });
}

#[test]
fn one_balancer_serves_dsr_ipip_and_gue_vips_at_once() {
    netns_test("tunnels_mixed", Duration::from_secs(120), |lab| {
        // Two L2 DSR backends on the segment, two routed ones.
        let Routed {
            t,
            v4: backends,
            v6: backends6,
            ..
        } = routed(lab, 2)?;
        for (i, ns) in t.backends.iter().enumerate() {
            tcp_name_server(ns, "0.0.0.0:83".parse()?, &format!("dsr{i}"))?;
        }
        let config = ConfigText::default()
            .vip(
                "dsr",
                topology::VIP4.into(),
                83,
                "tcp",
                &mode("dsr"),
                &plain(&t.backend_addresses(false)),
            )
            .vip(
                "ipip",
                topology::VIP4.into(),
                80,
                "tcp",
                &mode("ipip"),
                &plain(&backends),
            )
            // IPv6 in IPv4 GUE, and IPv4 in IPv6 GUE (its UDP checksum is
            // checked in datapath_encap: the decapsulator does not read
            // it).
            .vip(
                "gue6",
                topology::VIP6.into(),
                80,
                "tcp",
                &mode("gue"),
                &plain(&backends),
            )
            .vip(
                "gue4",
                topology::VIP4.into(),
                81,
                "tcp",
                &mode("gue"),
                &plain(&backends6),
            )
            // UDP: IPv4 in IPIP over IPv6, IPv6 in GUE over IPv4.
            .vip(
                "dns-ipip",
                topology::VIP4.into(),
                53,
                "udp",
                &mode("ipip"),
                &plain(&backends6),
            )
            .vip(
                "dns-gue",
                topology::VIP6.into(),
                53,
                "udp",
                &mode("gue"),
                &plain(&backends),
            )
            .build();
        let _daemon = start_with_config(lab, &t.lb, &config)?;
        for (name, vip, expect) in [
            ("dsr", SocketAddr::new(topology::VIP4.into(), 83), "dsr"),
            ("ipip", web(), "be"),
            ("gue6", SocketAddr::new(topology::VIP6.into(), 80), "be"),
            ("gue4", SocketAddr::new(topology::VIP4.into(), 81), "be"),
        ] {
            let names = tally_names(&t.client, vip, 20)?;
            ensure!(
                names.len() == 2 && names.keys().all(|n| n.starts_with(expect)),
                "{name}: answered by {names:?}"
            );
        }
        for (name, vip) in [
            ("dns-ipip", SocketAddr::new(topology::VIP4.into(), 53)),
            ("dns-gue", SocketAddr::new(topology::VIP6.into(), 53)),
        ] {
            let names = udp_tally(&t.client, vip, 20)?;
            ensure!(
                names.len() == 2 && names.keys().all(|n| n.starts_with("be")),
                "{name}: UDP flows answered by {names:?}"
            );
        }
        // What each mode did, as the balancer's VIP list says.
        let vips = cli_json(lab, ["vip", "list"])?;
        let modes: Vec<(String, String)> = vips
            .as_array()
            .context("vip list")?
            .iter()
            .map(|v| {
                (
                    v["name"].as_str().unwrap_or_default().to_owned(),
                    v["forwarding"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect();
        for (name, forwarding) in [
            ("dsr", "dsr"),
            ("ipip", "ipip"),
            ("gue6", "gue"),
            ("gue4", "gue"),
        ] {
            ensure!(
                modes.contains(&(name.to_owned(), forwarding.to_owned())),
                "vip list: {modes:?}"
            );
        }
        Ok(())
    });
}

#[test]
fn uploads_bigger_than_the_tunnel_leaves_room_for_complete_through_icmp() {
    netns_test("tunnels_pmtu", Duration::from_secs(120), |lab| {
        // Every link has 1,500 bytes: a client's full-size segment does
        // not fit once encapsulated. The balancer must tell the client
        // (fragmentation needed, packet too big) or the upload stalls.
        let Routed {
            t,
            v4: backends,
            v6: backends6,
            ..
        } = routed(lab, 0)?;
        let config = ConfigText::default()
            .vip(
                "up4",
                topology::VIP4.into(),
                85,
                "tcp",
                &mode("ipip"),
                &plain(&backends),
            )
            .vip(
                "up6",
                topology::VIP6.into(),
                85,
                "tcp",
                &mode("gue"),
                &plain(&backends6),
            )
            .build();
        let _daemon = start_with_config(lab, &t.lb, &config)?;
        const BYTES: usize = 4 << 20;
        for vip in [
            SocketAddr::new(topology::VIP4.into(), 85),
            SocketAddr::new(topology::VIP6.into(), 85),
        ] {
            let started = std::time::Instant::now();
            let backend = upload(&t.client, vip, BYTES)?;
            eprintln!(
                "4 MiB to {vip} ({backend}) in {:.2} s",
                started.elapsed().as_secs_f64()
            );
        }
        let stats = cli_json(lab, ["stats"])?;
        let answered = stats["counters"]["tx_too_big"]["packets"].as_u64();
        ensure!(
            answered.is_some_and(|n| n >= 2),
            "ICMP messages sent to the client: {answered:?}"
        );
        Ok(())
    });
}

/// The MACs `backend list` gives the backends, by address.
fn next_hops(lab: &Lab) -> Result<Vec<(String, String)>> {
    let rows = cli_json(lab, ["backend", "list"])?;
    Ok(rows
        .as_array()
        .context("backend list")?
        .iter()
        .map(|r| {
            (
                r["address"].as_str().unwrap_or_default().to_owned(),
                r["mac"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect())
}

#[test]
fn a_next_hop_whose_mac_changes_is_followed_at_once() {
    netns_test("tunnels_mac_change", Duration::from_secs(120), |lab| {
        let Routed {
            t,
            gw: rt,
            v4: backends,
            v6: backends6,
            ..
        } = routed(lab, 0)?;
        let config = ConfigText::default()
            .vip(
                "chat",
                topology::VIP4.into(),
                82,
                "tcp",
                &mode("ipip"),
                &plain(&backends),
            )
            .vip(
                "web6",
                topology::VIP6.into(),
                80,
                "tcp",
                &mode("gue"),
                &plain(&backends6),
            )
            .build();
        let _daemon = start_with_config(lab, &t.lb, &config)?;
        let chat = SocketAddr::new(topology::VIP4.into(), 82);
        let mut held: Vec<EchoConnection> = (0..10)
            .map(|_| EchoConnection::open(&t.client, chat))
            .collect::<Result<_>>()?;
        for c in &mut held {
            c.echo("before")?;
        }
        // The router's interface gets another MAC (a replaced card, a
        // failover of a virtual router); frames to the old one are lost.
        // The change empties the router's neighbour table, so its next
        // datagram to the balancer (of either family) resolves the
        // balancer's address again, from the new MAC: the balancer's
        // kernel learns it, and its neighbour table announces the change.
        // Three changes, each followed within 200 ms: a read every second
        // alone would be that quick three times in a row once in 125.
        for new_mac in [
            "02:5e:00:00:be:01",
            "02:5e:00:00:be:02",
            "02:5e:00:00:be:03",
        ] {
            rt.ip(["link", "set", "eth0", "address", new_mac])?;
            let changed = std::time::Instant::now();
            rt.run(|| -> Result<()> {
                for to in [IpAddr::from(topology::LB4), IpAddr::from(topology::LB6)] {
                    let any: IpAddr = if to.is_ipv4() {
                        [0u8; 4].into()
                    } else {
                        [0u16; 8].into()
                    };
                    let socket = std::net::UdpSocket::bind(SocketAddr::new(any, 0))?;
                    socket.send_to(b"hello", SocketAddr::new(to, 9))?;
                }
                Ok(())
            })??;
            let followed = loop {
                let hops = next_hops(lab)?;
                if hops.len() == 4 && hops.iter().all(|(_, mac)| mac == new_mac) {
                    break changed.elapsed();
                }
                ensure!(
                    changed.elapsed() < Duration::from_secs(3),
                    "next hops 3 s after the change to {new_mac}: {hops:?}"
                );
                std::thread::sleep(Duration::from_millis(5));
            };
            eprintln!("{new_mac} in backend list after {followed:?}");
            ensure!(
                followed < Duration::from_millis(200),
                "the next hop's new MAC {new_mac} took {followed:?} to reach backend list"
            );
            for (i, c) in held.iter_mut().enumerate() {
                c.echo(&format!("after the change to {new_mac}"))
                    .with_context(|| format!("held connection {i} on {}", c.backend))?;
            }
        }
        let names = tally_names(&t.client, SocketAddr::new(topology::VIP6.into(), 80), 10)?;
        ensure!(names.len() == 2, "web6 after the change: {names:?}");
        Ok(())
    });
}

#[test]
fn weights_drain_and_failover_hold_for_routed_backends() {
    netns_test("tunnels_weights", Duration::from_secs(120), |lab| {
        let Routed {
            t, hosts, v4, v6, ..
        } = routed(lab, 0)?;
        const CHECK_PORT: u16 = 8080;
        // Each backend's health endpoint on its own address of each
        // family: [be0 v4, be1 v4, be0 v6, be1 v6].
        let endpoints: Vec<HealthEndpoint> = v4
            .iter()
            .chain(&v6)
            .zip(hosts.iter().cycle())
            .map(|(addr, ns)| HealthEndpoint::start(ns, SocketAddr::new(*addr, CHECK_PORT)))
            .collect::<Result<_>>()?;
        // IPv4 in GUE, IPv6 in IPIP; be0 three times be1's weight.
        let check = |forwarding: &str| {
            format!(
                "forwarding = \"{forwarding}\"\n[vip.health_check]\nkind = \"http\"\nport = {CHECK_PORT}\npath = \"/healthz\"\ninterval = \"200ms\"\ntimeout = \"150ms\"\nrise = 2\nfall = 2\n"
            )
        };
        let weighted = |b: &[IpAddr]| vec![(b[0], "weight = 300\n"), (b[1], "weight = 100\n")];
        let config = ConfigText::default()
            .vip(
                "web",
                topology::VIP4.into(),
                80,
                "tcp",
                &check("gue"),
                &weighted(&v4),
            )
            .vip(
                "web6",
                topology::VIP6.into(),
                80,
                "tcp",
                &check("ipip"),
                &weighted(&v6),
            )
            .build();
        let mut daemon = start_with_config(lab, &t.lb, &config)?;
        let vips = [
            ("web", web(), v4[0], v4[1]),
            (
                "web6",
                SocketAddr::new(topology::VIP6.into(), 80),
                v6[0],
                v6[1],
            ),
        ];
        for (name, vip, _, _) in vips {
            // By weight: three quarters to be0.
            let names = tally_names(&t.client, vip, 200)?;
            let be0 = names.get("be0").copied().unwrap_or(0);
            ensure!(
                (120..=180).contains(&be0) && names.len() == 2,
                "{name}: weights 300:100 over 200 connections: {names:?}"
            );
        }
        for (name, vip, be0, _) in vips {
            // Drained: no new connection for be0.
            cli_json(lab, ["backend", "drain", name, &be0.to_string()])?;
            let names = tally_names(&t.client, vip, 30)?;
            ensure!(
                names.keys().all(|n| n == "be1"),
                "{name}: be0 drained: {names:?}"
            );
            cli_json(lab, ["backend", "undrain", name, &be0.to_string()])?;
        }
        // be1 fails its checks: everything to be0.
        endpoints[1].set_status(503);
        endpoints[3].set_status(503);
        for (_, _, _, be1) in vips {
            let down = format!("backend={be1} from=up to=down");
            daemon.wait_for_output(Duration::from_secs(3), |out| out.contains(&down))?;
        }
        for (name, vip, _, _) in vips {
            let deadline = std::time::Instant::now() + Duration::from_secs(3);
            loop {
                let names = tally_names(&t.client, vip, 30)?;
                if names.keys().all(|n| n == "be0") {
                    break;
                }
                ensure!(
                    std::time::Instant::now() < deadline,
                    "{name}: be1 down for 3 s, still answering: {names:?}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    });
}
