//! Fragments with real traffic: a datagram or a SYN in fragments reaches a
//! backend only on a VIP's port. Backends serve on ports that are no VIP's
//! (UDP 9999, and TCP 2222 answers with a RST); through the balancer those
//! stay unreachable, fragmented or not, while fragmented traffic to the
//! VIPs' ports is answered.

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    time::Duration,
};

use anyhow::{Result, ensure};
use balancer_tests::{
    Netns,
    daemon::cli_json,
    netns_test,
    packet::{Packet, fragmented},
    topology::{self, ConfigText, NO_CHECK, Server, Topology, plain},
};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

/// Sends a 3,000-byte datagram from `client` to `to` (the kernel cuts it
/// into fragments for a 1,500-byte link) and returns the answer, if one
/// came within a second.
fn ask_fragmented(client: &Netns, to: SocketAddr) -> Result<Option<String>> {
    client.run(|| -> Result<Option<String>> {
        let any: SocketAddr = if to.is_ipv6() {
            "[::]:0".parse()?
        } else {
            "0.0.0.0:0".parse()?
        };
        let socket = UdpSocket::bind(any)?;
        socket.set_read_timeout(Some(Duration::from_secs(1)))?;
        socket.send_to(&[0x5a; 3000], to)?;
        let mut answer = [0; 64];
        match socket.recv(&mut answer) {
            Ok(n) => Ok(Some(
                String::from_utf8_lossy(&answer[..n]).trim().to_owned(),
            )),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock) => Ok(None),
            Err(e) => Err(e.into()),
        }
    })?
}

/// Sends a TCP SYN from `client` to the IPv4 VIP's `port` in two
/// fragments (the first with the whole TCP header), through a raw socket,
/// and returns how many segments came back within half a second.
fn syn_in_fragments(client: &Netns, src_port: u16, port: u16, id: u32) -> Result<u64> {
    let mut syn = Packet::tcp(
        topology::CLIENT4.into(),
        src_port,
        topology::VIP4.into(),
        port,
    );
    syn.payload = vec![0x5a; 64];
    let before = client.snmp("Tcp", "InSegs")?;
    client.run(|| -> Result<()> {
        let raw = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(255)))?;
        let to = SockAddr::from(SocketAddr::new(topology::VIP4.into(), 0));
        for frame in fragmented(&syn.build(), 24, id) {
            raw.send_to(&frame[14..], &to)?;
        }
        Ok(())
    })??;
    std::thread::sleep(Duration::from_millis(500));
    Ok(client.snmp("Tcp", "InSegs")? - before)
}

#[test]
fn fragmented_traffic_reaches_only_the_vips_ports() {
    netns_test("fragments", Duration::from_secs(60), |lab| {
        let t = Topology::build(lab, 2)?;
        let v4 = plain(&t.backend_addresses(false));
        let v6 = plain(&t.backend_addresses(true));
        let config = ConfigText::default()
            .vip("dns4", topology::VIP4.into(), 53, "udp", NO_CHECK, &v4)
            .vip("dns6", topology::VIP6.into(), 53, "udp", NO_CHECK, &v6)
            .vip("web4", topology::VIP4.into(), 80, "tcp", NO_CHECK, &v4)
            .build();
        for (vip, port) in [
            (IpAddr::from(topology::VIP4), 53),
            (topology::VIP6.into(), 53),
            (topology::VIP4.into(), 9999),
            (topology::VIP6.into(), 9999),
        ] {
            t.serve(Server::UdpName, vip, port)?;
        }
        t.serve(Server::TcpName, topology::VIP4.into(), 80)?;
        let _daemon = balancer_tests::daemon::start_with_config(lab, &t.lb, &config)?;

        for vip in [IpAddr::from(topology::VIP4), topology::VIP6.into()] {
            let answer = ask_fragmented(&t.client, SocketAddr::new(vip, 53))?;
            ensure!(
                answer.as_deref().is_some_and(|a| a.starts_with("be")),
                "a fragmented datagram to {vip}:53 got {answer:?}"
            );
            for _ in 0..3 {
                let answer = ask_fragmented(&t.client, SocketAddr::new(vip, 9999))?;
                ensure!(
                    answer.is_none(),
                    "a fragmented datagram to {vip}:9999 was answered by {answer:?}"
                );
            }
        }
        let answered = syn_in_fragments(&t.client, 40_000, 80, 0x1001)?;
        ensure!(answered >= 1, "no SYN-ACK to a fragmented SYN to port 80");
        for i in 0..3 {
            let answered = syn_in_fragments(&t.client, 40_001 + i, 2222, 0x1002 + u32::from(i))?;
            ensure!(
                answered == 0,
                "a fragmented SYN to port 2222 got {answered} segments back"
            );
        }

        let counters = &cli_json(lab, ["stats"])?["counters"];
        let count = |name: &str| counters[name]["packets"].as_u64().unwrap_or(0);
        // Three datagrams per family and three SYNs refused at their
        // first fragment; their later fragments follow none.
        ensure!(
            count("drop_fragment_port") == 9,
            "drop_fragment_port {}",
            count("drop_fragment_port")
        );
        ensure!(
            count("drop_fragment_unmatched") >= 9,
            "drop_fragment_unmatched {}",
            count("drop_fragment_unmatched")
        );
        Ok(())
    });
}
