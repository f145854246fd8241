//! End-to-end scenarios 1 and 2: how new flows spread over weighted
//! backends, with real TCP connections and UDP flows through the balancer.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr, UdpSocket},
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use balancer_tests::{
    daemon::start_with_config,
    netns_test,
    servers::tally_names,
    topology::{self, ConfigText, NO_CHECK, Server, Topology, plain},
};

/// Weights 1:1:2 over three backends, TCP port 80 and UDP port 53.
fn config(t: &Topology) -> String {
    let addresses = t.backend_addresses(false);
    let weighted: Vec<_> = addresses
        .iter()
        .zip(["weight = 1\n", "weight = 1\n", "weight = 2\n"])
        .map(|(a, w)| (*a, w))
        .collect();
    ConfigText::default()
        .vip("web", topology::VIP4.into(), 80, "tcp", NO_CHECK, &weighted)
        .vip("dns", topology::VIP4.into(), 53, "udp", NO_CHECK, &weighted)
        .build()
}

/// Checks that `counts` over `n` flows lies within ±3 percentage points of
/// 25/25/50 %, and says what it saw.
fn within_three_points(what: &str, counts: &BTreeMap<String, usize>, n: usize) -> Result<()> {
    let expected = [("be0", 25.0), ("be1", 25.0), ("be2", 50.0)];
    let shares: Vec<String> = expected
        .iter()
        .map(|(name, _)| {
            format!(
                "{name} {:.1} %",
                *counts.get(*name).unwrap_or(&0) as f64 * 100.0 / n as f64
            )
        })
        .collect();
    for (name, want) in expected {
        let share = *counts.get(name).unwrap_or(&0) as f64 * 100.0 / n as f64;
        ensure!(
            (share - want).abs() <= 3.0,
            "{what}: {name} got {share:.1} % of {n}, expected {want} ± 3 (all: {})",
            shares.join(", ")
        );
    }
    eprintln!("{what}: {n} flows: {}", shares.join(", "));
    Ok(())
}

#[test]
fn new_flows_follow_the_weights_for_tcp_and_udp() {
    netns_test("distribution", Duration::from_secs(240), |lab| {
        let t = Topology::build(lab, 3)?;
        t.serve(Server::TcpName, topology::VIP4.into(), 80)?;
        t.serve(Server::UdpName, topology::VIP4.into(), 53)?;
        let _daemon = start_with_config(lab, &t.lb, &config(&t))?;

        // 1. TCP: 3,000 connections.
        const N: usize = 3000;
        let tcp = tally_names(&t.client, SocketAddr::new(topology::VIP4.into(), 80), N)?;
        within_three_points("tcp", &tcp, N)?;

        // 2. UDP: 3,000 flows (source ports), three datagrams each, every
        // datagram of a flow answered by the same backend.
        let dns = SocketAddr::new(topology::VIP4.into(), 53);
        let mut udp: BTreeMap<String, usize> = BTreeMap::new();
        for flow in 0..N {
            let port = 20000 + flow as u16;
            let socket = t
                .client
                .run(|| UdpSocket::bind((IpAddr::from(topology::CLIENT4), port)))??;
            socket.set_read_timeout(Some(Duration::from_secs(2)))?;
            let mut first = None;
            for datagram in 0..3 {
                socket.send_to(b"who?", dns)?;
                let mut buf = [0u8; 64];
                let (n, _) = socket
                    .recv_from(&mut buf)
                    .with_context(|| format!("flow {flow}: datagram {datagram} got no answer"))?;
                let name = String::from_utf8_lossy(&buf[..n]).into_owned();
                match &first {
                    None => first = Some(name),
                    Some(f) => ensure!(*f == name, "flow {flow}: datagrams reached {f} and {name}"),
                }
            }
            *udp.entry(first.unwrap_or_default()).or_default() += 1;
        }
        within_three_points("udp", &udp, N)
    });
}

#[test]
fn source_hash_keeps_every_connection_of_a_client_on_one_backend_and_ipv6_udp_balances() {
    netns_test("source_hash_v6", Duration::from_secs(120), |lab| {
        let t = Topology::build(lab, 3)?;
        t.serve(Server::TcpName, topology::VIP4.into(), 443)?;
        t.serve(Server::UdpName, topology::VIP6.into(), 53)?;
        // A second client address, to see two clients placed independently.
        t.client.add_address("eth0", "10.50.0.3/24")?;
        let text = ConfigText::default()
            .vip(
                "sticky",
                topology::VIP4.into(),
                443,
                "tcp",
                &format!("scheduler = \"source-hash\"\n{NO_CHECK}"),
                &plain(&t.backend_addresses(false)),
            )
            .vip(
                "dns6",
                topology::VIP6.into(),
                53,
                "udp",
                NO_CHECK,
                &plain(&t.backend_addresses(true)),
            )
            .build();
        let _daemon = start_with_config(lab, &t.lb, &text)?;

        // 3. Every connection from one client address reaches one backend.
        let sticky = SocketAddr::new(topology::VIP4.into(), 443);
        for source in ["10.50.0.1", "10.50.0.3"] {
            let source: IpAddr = source.parse()?;
            let mut seen: BTreeMap<String, usize> = BTreeMap::new();
            for _ in 0..100 {
                let stream = t.client.run(|| -> std::io::Result<std::net::TcpStream> {
                    let socket =
                        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
                    socket.bind(&SocketAddr::new(source, 0).into())?;
                    socket.connect_timeout(&sticky.into(), Duration::from_secs(3))?;
                    Ok(socket.into())
                })??;
                let mut reply = String::new();
                std::io::Read::read_to_string(&mut &stream, &mut reply)?;
                *seen.entry(reply.trim().to_owned()).or_default() += 1;
            }
            ensure!(
                seen.len() == 1,
                "client {source} reached several backends: {seen:?}"
            );
            eprintln!("source-hash: client {source}: {seen:?}");
        }

        // 10. IPv6 UDP over IPv6 backends.
        let dns6 = SocketAddr::new(topology::VIP6.into(), 53);
        let mut udp: BTreeMap<String, usize> = BTreeMap::new();
        for flow in 0..300u16 {
            let socket = t
                .client
                .run(|| UdpSocket::bind((IpAddr::from(topology::CLIENT6), 30000 + flow)))??;
            socket.set_read_timeout(Some(Duration::from_secs(2)))?;
            socket.send_to(b"who?", dns6)?;
            let mut buf = [0u8; 64];
            let (n, _) = socket
                .recv_from(&mut buf)
                .with_context(|| format!("IPv6 flow {flow}: no answer"))?;
            *udp.entry(String::from_utf8_lossy(&buf[..n]).into_owned())
                .or_default() += 1;
        }
        ensure!(
            udp.len() == 3 && udp.values().all(|&c| c >= 50),
            "IPv6 UDP flows: {udp:?}"
        );
        eprintln!("ipv6 udp: 300 flows: {udp:?}");
        Ok(())
    });
}
