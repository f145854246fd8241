//! The backend-side decapsulator through BPF_PROG_TEST_RUN: every frame
//! the balancer's program encapsulates (IPIP and GUE, each pair of
//! families, a VLAN tag) comes out of the decapsulator as the client's
//! packet, byte for byte, behind the balancer's Ethernet header; GUE
//! frames built here likewise; and everything else passes untouched: tunnels to
//! another address, IP options, fragments, other UDP ports, other
//! traffic. Each outcome counted.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Result, ensure};
use balancer::{
    config::Forwarding,
    datapath::action::{PASS, TX},
    decap::Decapsulator,
};
use balancer_common::decap::DecapCounters;
use balancer_tests::{
    fixture::{
        Fixture,
        standard::{self, CLIENT4, CLIENT6, VIP4, VIP6},
    },
    packet::Packet,
    privilege,
};

const SRC4: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 9, 0, 1));
const SRC6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd00, 9, 0, 0, 0, 0, 0, 1));
const GUE_PORT: u16 = 6080;

/// The balancer of [`standard::tunnelled`] by `forwarding`, from [`SRC4`]
/// and [`SRC6`].
fn balancer(forwarding: Forwarding) -> Result<Fixture> {
    standard::tunnelled(forwarding, SRC4, SRC6)
}

/// Every backend address of [`balancer`]: the decapsulator's host holds
/// them all.
fn backend_addresses() -> Vec<IpAddr> {
    (0..12).map(standard::tunnelled_backend).collect()
}

#[test]
fn what_the_balancer_encapsulates_comes_out_as_it_went_in() {
    privilege::run("decap_roundtrip", || {
        for forwarding in [Forwarding::Ipip, Forwarding::Gue] {
            let mut f = balancer(forwarding)?;
            let mut d = Decapsulator::load(&backend_addresses(), GUE_PORT)?;
            let packets = [
                Packet::tcp(CLIENT4, 40000, VIP4, 80),
                Packet::tcp(CLIENT4, 40000, VIP4, 80).established(),
                Packet::udp(CLIENT4, 5353, VIP4, 53),
                Packet::tcp(CLIENT6, 40000, VIP6, 80),
                Packet::udp(CLIENT6, 5353, VIP6, 53),
                Packet::tcp(CLIENT4, 40001, VIP4, 80).tagged(7),
            ];
            for packet in &packets {
                let frame = packet.build();
                let sent = f.datapath.test_run(&frame, 0)?;
                ensure!(
                    sent.verdict == TX,
                    "{forwarding:?} {packet:?}: verdict {}",
                    sent.verdict
                );
                let got = d.test_run(&sent.packet)?;
                ensure!(
                    got.verdict == PASS,
                    "{forwarding:?} {packet:?}: verdict {}",
                    got.verdict
                );
                // The balancer's Ethernet header, then the client's packet.
                let l3 = if packet.vlan.is_some() { 18 } else { 14 };
                let mut want = sent.packet[..l3].to_vec();
                want[l3 - 2..l3].copy_from_slice(&frame[l3 - 2..l3]);
                want.extend(&frame[l3..]);
                ensure!(
                    got.packet == want,
                    "{forwarding:?} {packet:?}:\n     got: {:02x?}\n    want: {want:02x?}",
                    got.packet
                );
            }
            let c = d.counters()?;
            // Backends of VIPs 0 and 3 are IPv4, of 1 and 2 IPv6.
            let counted = match forwarding {
                Forwarding::Gue => c.gue.packets == 6 && c.ipip4.packets + c.ipip6.packets == 0,
                _ => c.ipip4.packets == 4 && c.ipip6.packets == 2 && c.gue.packets == 0,
            };
            ensure!(counted, "{forwarding:?}: {c:?}");
        }
        Ok(())
    });
}

/// A GUE frame: Ethernet, an outer header from `src` to `dst`, UDP to
/// `port`, then the IP packet of `inner` (a frame, its Ethernet header
/// dropped).
fn gue(src: IpAddr, dst: IpAddr, port: u16, inner: &[u8]) -> Vec<u8> {
    let packet = &inner[14..];
    let mut frame = inner[..12].to_vec();
    let udp_len = (packet.len() + 8) as u16;
    let mut udp = 49200u16.to_be_bytes().to_vec();
    udp.extend(port.to_be_bytes());
    udp.extend(udp_len.to_be_bytes());
    udp.extend([0, 0]);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            frame.extend([0x08, 0x00, 0x45, 0]);
            frame.extend((udp_len + 20).to_be_bytes());
            frame.extend([0, 0, 0x40, 0, 64, 17, 0, 0]);
            frame.extend(s.octets());
            frame.extend(d.octets());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            frame.extend([0x86, 0xdd, 0x60, 0, 0, 0]);
            frame.extend(udp_len.to_be_bytes());
            frame.extend([17, 64]);
            frame.extend(s.octets());
            frame.extend(d.octets());
        }
        _ => unreachable!("one family"),
    }
    frame.extend(udp);
    frame.extend(packet);
    frame
}

#[test]
fn gue_of_either_family_comes_off() {
    privilege::run("decap_gue", || {
        let host4 = IpAddr::V4(Ipv4Addr::new(10, 1, 0, 1));
        let host6 = IpAddr::V6(Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 1));
        let mut d = Decapsulator::load(&[host4, host6], GUE_PORT)?;
        for (src, dst, inner) in [
            (SRC4, host4, Packet::udp(CLIENT4, 5353, VIP4, 53).build()),
            (SRC4, host4, Packet::tcp(CLIENT6, 40000, VIP6, 80).build()),
            (SRC6, host6, Packet::tcp(CLIENT4, 40000, VIP4, 80).build()),
            (SRC6, host6, Packet::udp(CLIENT6, 5353, VIP6, 53).build()),
        ] {
            let got = d.test_run(&gue(src, dst, GUE_PORT, &inner))?;
            ensure!(
                got.verdict == PASS && got.packet == inner,
                "{src} to {dst}: {:02x?}",
                got.packet
            );
        }
        ensure!(d.counters()?.gue.packets == 4);
        Ok(())
    });
}

#[test]
fn everything_else_passes_untouched() {
    privilege::run("decap_passes", || {
        let host4 = IpAddr::V4(Ipv4Addr::new(10, 1, 0, 1));
        let elsewhere = IpAddr::V4(Ipv4Addr::new(10, 1, 0, 99));
        let mut d = Decapsulator::load(&[host4], GUE_PORT)?;
        let inner = Packet::udp(CLIENT4, 5353, VIP4, 53).build();
        let to_host = gue(SRC4, host4, GUE_PORT, &inner);
        let mut with_options = to_host.clone();
        with_options[14] = 0x46;
        let mut fragment = to_host.clone();
        fragment[20] = 0x20;
        let mut not_ip_inside = to_host.clone();
        not_ip_inside[14 + 28] = 0x10;
        // What follows the Ethernet header is IP only if its type says so.
        let mut arp = to_host.clone();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        let mut tagged_arp = to_host[..12].to_vec();
        tagged_arp.extend([0x81, 0x00, 0x00, 0x07, 0x08, 0x06]);
        tagged_arp.extend(&to_host[14..]);
        let frames = [
            (
                "GUE to another address",
                gue(SRC4, elsewhere, GUE_PORT, &inner),
            ),
            (
                "UDP to another port",
                gue(SRC4, host4, GUE_PORT + 1, &inner),
            ),
            ("IP options", with_options),
            ("a fragment", fragment),
            ("not IP inside", not_ip_inside),
            ("not an IP ethertype", arp),
            ("not IP behind a VLAN tag", tagged_arp),
            (
                "plain UDP to the host",
                Packet::udp(CLIENT4, 5353, host4, 53).build(),
            ),
            ("plain TCP", Packet::tcp(CLIENT6, 40000, VIP6, 80).build()),
        ];
        for (name, frame) in &frames {
            let got = d.test_run(frame)?;
            ensure!(
                got.verdict == PASS && &got.packet == frame,
                "{name}: changed"
            );
        }
        let c = d.counters()?;
        ensure!(
            c == DecapCounters {
                passed: c.passed,
                ..DecapCounters::default()
            } && c.passed.packets == frames.len() as u64,
            "{c:?}"
        );
        Ok(())
    });
}

/// Runs `balancer ARGS` in `ns` and fails with its output unless it
/// succeeds; its stdout.
fn balancer_in(ns: &balancer_tests::Netns, args: &[&str]) -> Result<String> {
    let out = ns
        .command(balancer_tests::balancer_bin()?)
        .args(args)
        .output()?;
    ensure!(
        out.status.success(),
        "balancer {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Sends `packet` (an IP packet) from `ns` in IPIP to `to`, through a raw
/// socket (the kernel writes the outer IPv4 header).
fn send_ipip(ns: &balancer_tests::Netns, to: Ipv4Addr, packet: &[u8]) -> Result<()> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let packet = packet.to_vec();
    ns.run(move || -> Result<()> {
        let socket = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(4)))?;
        let to = SockAddr::from(std::net::SocketAddr::new(to.into(), 0));
        socket.send_to(&packet, &to)?;
        Ok(())
    })?
}

#[test]
fn a_backend_with_the_decapsulator_receives_what_comes_in_ipip() {
    balancer_tests::netns_test("decap_traffic", std::time::Duration::from_secs(60), |lab| {
        use balancer_tests::topology::{self, Topology};
        let t = Topology::build(lab, 1)?;
        let backend = &t.backends[0];
        let address = topology::backend4(0);
        let dir = lab
            .pin_dir()?
            .parent()
            .map(|p| p.join("balancer-decap"))
            .ok_or_else(|| anyhow::anyhow!("no lab bpffs"))?;
        let dir_arg = dir.to_string_lossy().into_owned();
        balancer_in(
            backend,
            &["decap", "--interface", "eth0", "--pin-path", &dir_arg],
        )?;
        ensure!(
            dir.join("link-eth0").exists(),
            "not pinned in {}",
            dir.display()
        );
        let server = backend.run(|| std::net::UdpSocket::bind((address, 7777)))??;
        server.set_read_timeout(Some(std::time::Duration::from_secs(2)))?;
        // A client's datagram to the backend, in IPIP: the decapsulator
        // takes the outer header off, the backend's stack delivers it.
        let client = IpAddr::V4(topology::CLIENT4);
        let inner = Packet::udp(client, 5353, address.into(), 7777).build();
        send_ipip(&t.client, address, &inner[14..])?;
        let mut buf = [0u8; 64];
        let (n, from) = server.recv_from(&mut buf)?;
        ensure!(&buf[..n] == b"payload", "received {:?}", &buf[..n]);
        ensure!(
            from == std::net::SocketAddr::new(client, 5353),
            "from {from}"
        );
        let stats = balancer_in(
            backend,
            &["--json", "decap", "--stats", "--pin-path", &dir_arg],
        )?;
        let rows: serde_json::Value = serde_json::from_str(&stats)?;
        let ipip = rows
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["kind"] == "ipip_ipv4"))
            .and_then(|r| r["packets"].as_u64());
        ensure!(ipip == Some(1), "counters: {rows}");
        // Detached: the pins are gone, and so is the decapsulation.
        balancer_in(backend, &["decap", "--detach", "--pin-path", &dir_arg])?;
        ensure!(!dir.exists(), "{} left behind", dir.display());
        send_ipip(&t.client, address, &inner[14..])?;
        ensure!(
            server.recv_from(&mut buf).is_err(),
            "received without the decapsulator"
        );
        Ok(())
    });
}
