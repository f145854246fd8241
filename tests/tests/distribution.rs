//! End-to-end scenarios 1 and 2: how new flows spread over weighted
//! backends, with real TCP connections and UDP flows through the balancer.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr, UdpSocket},
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use balancer_tests::{
    daemon::start,
    netns_test,
    servers::{tally_names, tcp_name_server, udp_name_server},
    topology::{self, Topology},
};

/// Weights 1:1:2 over three backends, TCP port 80 and UDP port 53.
fn config() -> String {
    let mut text = String::from("[datapath]\ninterfaces = [\"eth0\"]\n");
    for (name, port, protocol) in [("web", 80, "tcp"), ("dns", 53, "udp")] {
        text.push_str(&format!(
            "\n[[vip]]\nname = \"{name}\"\naddress = \"{}\"\nport = {port}\nprotocol = \"{protocol}\"\n[vip.health_check]\nkind = \"none\"\n",
            topology::VIP4
        ));
        for (i, weight) in [1, 1, 2].iter().enumerate() {
            text.push_str(&format!(
                "[[vip.backend]]\naddress = \"{}\"\nweight = {weight}\n",
                topology::backend4(i)
            ));
        }
    }
    text
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
        for (i, backend) in t.backends.iter().enumerate() {
            tcp_name_server(
                backend,
                SocketAddr::new(topology::VIP4.into(), 80),
                &format!("be{i}"),
            )?;
            udp_name_server(
                backend,
                SocketAddr::new(topology::VIP4.into(), 53),
                &format!("be{i}"),
            )?;
        }
        let path = lab.write_file("balancer.toml", &config())?;
        let _daemon = start(lab, &t.lb, ["--config".as_ref(), path.as_os_str()])?;

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
