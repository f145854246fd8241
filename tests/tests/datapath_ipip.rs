//! IPIP encapsulation in the XDP program, through BPF_PROG_TEST_RUN: for
//! each pair of families (IPv4 in IPv4, IPv6 in IPv6, IPv4 in IPv6, IPv6
//! in IPv4), new and established flows, a VLAN-tagged frame and a marked
//! packet, the exact frame out: the next hop's and the balancer's MACs, the
//! outer header (built here, its checksum computed here), then the client's
//! packet byte for byte. Beside them, an L2 DSR VIP keeps its frames.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Result, ensure};
use balancer::datapath::action::{DROP, TX};
use balancer_common::{
    proto,
    stats::{Event, Stat},
    tunnel::{flow_bits, flow_label},
};
use balancer_tests::{
    case::{Case, run},
    fixture::{
        Fixture, Vip, backend_mac,
        standard::{self, CLIENT4, CLIENT6, SEED, VIP4, VIP6},
    },
    packet::{LB_MAC, Packet},
    privilege,
};

/// The balancer's outer sources.
const SRC4: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 9, 0, 1));
const SRC6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd00, 9, 0, 0, 0, 0, 0, 1));
/// A VIP of its own address for the L2 DSR VIP.
const DSR_VIP: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 40));

/// [`standard::ipip`] from [`SRC4`] and [`SRC6`], and VIP 4: IPv4 TCP on
/// its own address, L2 DSR.
fn fixture() -> Result<Fixture> {
    let mut f = standard::ipip(SRC4, SRC6)?;
    f.put_vip(Vip::new(
        4,
        DSR_VIP,
        80,
        proto::TCP,
        standard::backends4(12..15),
    ))?;
    Ok(f)
}

/// The ones' complement checksum of `bytes` (an even number of them).
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn octets(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// The frame `frame` (of `packet`, perhaps marked) must leave as when
/// sent in IPIP to the backend the ring of VIP `vip` gives its flow: built
/// from the frame's bytes, independently of the program.
fn encapsulated(f: &Fixture, packet: &Packet, frame: &[u8], vip: u32) -> Vec<u8> {
    let key = packet.key();
    let id = f.expected_backend(vip, &key);
    let backend = standard::ipip_backend(id);
    let src = if backend.is_ipv4() { SRC4 } else { SRC6 };
    let l3 = if packet.vlan.is_some() { 18 } else { 14 };
    let inner = &frame[l3..];
    let (inner_v6, tos) = if inner[0] >> 4 == 6 {
        (true, (inner[0] << 4) | (inner[1] >> 4))
    } else {
        (false, inner[1])
    };
    let proto = if inner_v6 { 41 } else { 4 };
    let mut out = backend_mac(id).to_vec();
    out.extend(LB_MAC);
    out.extend(&frame[12..l3 - 2]);
    let mut outer = Vec::new();
    if backend.is_ipv4() {
        out.extend([0x08, 0x00]);
        let total = (inner.len() + 20) as u16;
        outer.extend([0x45, tos]);
        outer.extend(total.to_be_bytes());
        outer.extend([0, 0, 0x40, 0, 64, proto, 0, 0]);
        outer.extend(octets(src));
        outer.extend(octets(backend));
        let check = checksum(&outer);
        outer[10..12].copy_from_slice(&check.to_be_bytes());
    } else {
        out.extend([0x86, 0xdd]);
        let label = flow_label(flow_bits(&key.src, &key.dst, key.src_port, key.dst_port));
        let first = (6u32 << 28) | (u32::from(tos) << 20) | label;
        outer.extend(first.to_be_bytes());
        outer.extend((inner.len() as u16).to_be_bytes());
        outer.extend([proto, 64]);
        outer.extend(octets(src));
        outer.extend(octets(backend));
    }
    out.extend(outer);
    out.extend(inner);
    out
}

/// The case of `packet` to VIP `vip`, whose ring places its flow on a
/// backend reached in IPIP.
fn case(f: &Fixture, name: &str, packet: &Packet, vip: u32) -> (String, Vec<u8>, Vec<u8>) {
    let frame = packet.build();
    let want = encapsulated(f, packet, &frame, vip);
    (name.to_owned(), frame, want)
}

/// Runs each case: XDP_TX, the frame it gives, one `encap` event.
fn run_encapsulated(f: &mut Fixture, cases: &[(String, Vec<u8>, Vec<u8>)]) -> Result<()> {
    let mut failures = Vec::new();
    for (name, frame, want) in cases {
        let before = f.datapath.reasons()?.event(Event::ENCAP).packets;
        let got = f.datapath.test_run(frame, 0)?;
        let after = f.datapath.reasons()?.event(Event::ENCAP).packets;
        if got.verdict != TX {
            failures.push(format!("{name}: verdict {}", got.verdict));
        }
        if &got.packet != want {
            failures.push(format!(
                "{name}: frame differs\n     got: {:02x?}\n    want: {want:02x?}",
                got.packet
            ));
        }
        if after - before != 1 {
            failures.push(format!("{name}: encap grew by {}", after - before));
        }
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

#[test]
fn each_pair_of_families_gets_its_outer_header() {
    privilege::run("datapath_ipip_families", || {
        let mut f = fixture()?;
        let syn4 = Packet::tcp(CLIENT4, 40000, VIP4, 80);
        let syn6 = Packet::tcp(CLIENT6, 40000, VIP6, 80);
        let udp4 = Packet::udp(CLIENT4, 5353, VIP4, 53);
        let udp6 = Packet::udp(CLIENT6, 5353, VIP6, 53);
        let cases = [
            case(&f, "IPv4 in IPv4: a SYN", &syn4, 0),
            case(&f, "IPv4 in IPv4: its ACK", &syn4.clone().established(), 0),
            case(&f, "IPv6 in IPv6: a SYN", &syn6, 2),
            case(&f, "IPv6 in IPv6: its ACK", &syn6.clone().established(), 2),
            case(&f, "IPv4 in IPv6", &udp4, 1),
            case(&f, "IPv4 in IPv6, again", &udp4, 1),
            case(&f, "IPv6 in IPv4", &udp6, 3),
            case(&f, "IPv6 in IPv4, again", &udp6, 3),
            case(&f, "a VLAN tag kept", &syn4.clone().tagged(7), 0),
        ];
        run_encapsulated(&mut f, &cases)?;
        // A frame padded to the Ethernet minimum: the outer header counts
        // the IP packet, the padding stays behind it.
        let ack = syn4.clone().established();
        let (name, mut frame, mut want) = case(&f, "padded", &ack, 0);
        frame.extend([0; 6]);
        want.extend([0; 6]);
        run_encapsulated(&mut f, &[(name, frame, want)])?;
        // The L2 DSR VIP beside them: MACs only.
        let dsr = Packet::tcp(CLIENT4, 40000, DSR_VIP, 80);
        run(&mut f, &[Case::forwarded("l2 dsr", &dsr, 4)])?;
        Ok(())
    });
}

#[test]
fn the_outer_header_carries_the_inner_dscp_and_ecn() {
    privilege::run("datapath_ipip_tos", || {
        let mut f = fixture()?;
        // EF (DSCP 46) with ECT(0): 0xba, in an IPv4 packet's TOS and an
        // IPv6 packet's traffic class (the inner checksums are the
        // client's business: the program leaves the inner packet as is).
        let marked4 = |frame: &mut Vec<u8>| frame[15] = 0xba;
        let marked6 = |frame: &mut Vec<u8>| {
            frame[14] = (frame[14] & 0xf0) | 0x0b;
            frame[15] = (frame[15] & 0x0f) | 0xa0;
        };
        let mut cases = Vec::new();
        for (packet, vip, mark) in [
            (
                Packet::tcp(CLIENT4, 40001, VIP4, 80),
                0,
                &marked4 as &dyn Fn(&mut Vec<u8>),
            ),
            (Packet::tcp(CLIENT6, 40001, VIP6, 80), 2, &marked6),
            (Packet::udp(CLIENT4, 5354, VIP4, 53), 1, &marked4),
            (Packet::udp(CLIENT6, 5354, VIP6, 53), 3, &marked6),
        ] {
            let mut frame = packet.build();
            mark(&mut frame);
            let want = encapsulated(&f, &packet, &frame, vip);
            cases.push((format!("marked to vip {vip}"), frame, want));
        }
        run_encapsulated(&mut f, &cases)?;
        Ok(())
    });
}

#[test]
fn an_unresolved_next_hop_is_dropped_and_counted() {
    privilege::run("datapath_ipip_unresolved", || {
        let mut f = Fixture::new(SEED)?;
        let backends = standard::backends4(0..3)
            .into_iter()
            .map(|mut b| {
                b.resolved = false;
                b.ipip(SRC4)
            })
            .collect();
        f.put_vip(Vip::new(0, VIP4, 80, proto::TCP, backends))?;
        let syn = Packet::tcp(CLIENT4, 40000, VIP4, 80);
        run(
            &mut f,
            &[Case::new(
                "unresolved",
                syn.build(),
                DROP,
                balancer_tests::case::Out::Same,
                &[
                    (
                        balancer_tests::case::Counter::Stat(Stat::DROP_NO_NEIGHBOUR),
                        1,
                    ),
                    (balancer_tests::case::Counter::Event(Event::ENCAP), 0),
                ],
            )],
        )?;
        Ok(())
    });
}
