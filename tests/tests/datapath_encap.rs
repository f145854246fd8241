//! Encapsulation in the XDP program, through BPF_PROG_TEST_RUN, for IPIP
//! and GUE: for each pair of families (IPv4 in IPv4, IPv6 in IPv6, IPv4 in
//! IPv6, IPv6 in IPv4), new and established flows, a VLAN-tagged frame and
//! a marked packet, the exact frame out: the next hop's and the
//! balancer's MACs, the outer header (built here, its checksum computed
//! here), GUE's UDP header (its source port from the flow, its checksum
//! over IPv6 computed here over every byte), then the client's packet byte
//! for byte. Beside them, an L2 DSR VIP keeps its frames.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::{Result, ensure};
use balancer::{
    config::Forwarding,
    datapath::action::{DROP, TX},
};
use balancer_common::{
    flow::FlowKey,
    proto,
    stats::{Event, Stat},
    tunnel::{DEFAULT_GUE_PORT, flow_bits, flow_label, gue_source_port},
};
use balancer_tests::{
    case::{Case, Counter, Out, run},
    fixture::{
        Fixture, Vip, backend_mac,
        standard::{self, CLIENT4, CLIENT6, SEED, VIP4, VIP6},
    },
    packet::{self, LB_MAC, Packet},
    privilege,
};

/// The balancer's outer sources.
const SRC4: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 9, 0, 1));
const SRC6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd00, 9, 0, 0, 0, 0, 0, 1));
/// A VIP of its own address for the L2 DSR VIP.
const DSR_VIP: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 40));
/// An IPv4 TCP VIP with IPv6 backends, for ICMP errors in IPv6.
const MIXED_VIP: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 41));
const TUNNELS: [Forwarding; 2] = [Forwarding::Ipip, Forwarding::Gue];

/// [`standard::tunnelled`] by `forwarding` from [`SRC4`] and [`SRC6`]; VIP
/// 4: IPv4 TCP on its own address, L2 DSR; VIP 5: IPv4 TCP on
/// [`MIXED_VIP`] to IPv6 backends 12 to 14 by `forwarding`.
fn fixture(forwarding: Forwarding) -> Result<Fixture> {
    let mut f = standard::tunnelled(forwarding, SRC4, SRC6)?;
    f.put_vip(Vip::new(
        4,
        DSR_VIP,
        80,
        proto::TCP,
        standard::backends4(15..18),
    ))?;
    let mixed = standard::backends6(12..15)
        .into_iter()
        .map(|b| b.tunnelled(forwarding, SRC6))
        .collect();
    f.put_vip(Vip::new(5, MIXED_VIP, 80, proto::TCP, mixed))?;
    Ok(f)
}

/// The address of backend `id` of [`fixture`].
fn backend_addr(id: u32) -> IpAddr {
    if id < 12 {
        standard::tunnelled_backend(id)
    } else {
        standard::backends6(id..id + 1)[0].addr
    }
}

/// The ones' complement sum of `bytes`, an odd last byte padded with 0.
fn sum(bytes: &[u8]) -> u32 {
    bytes
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum()
}

/// The checksum of a ones' complement sum.
fn fold(mut sum: u32) -> u16 {
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

/// What GUE's UDP checksum over IPv6 must be.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Over every byte, as RFC 8200 says.
    Full,
    /// 0: the program cannot derive it (RFC 6935's tunnel exception).
    Zero,
}

/// The frame `frame` must leave as when sent by `forwarding` to backend
/// `id`, for a flow of hash material `bits`: built from the frame's
/// bytes, independently of the program.
fn encapsulated(forwarding: Forwarding, frame: &[u8], id: u32, bits: u32, check: Check) -> Vec<u8> {
    let backend = backend_addr(id);
    let src = if backend.is_ipv4() { SRC4 } else { SRC6 };
    let l3 = if frame[12..14] == [0x81, 0x00] {
        18
    } else {
        14
    };
    let inner = &frame[l3..];
    let (inner_v6, tos) = if inner[0] >> 4 == 6 {
        (true, (inner[0] << 4) | (inner[1] >> 4))
    } else {
        (false, inner[1])
    };
    let gue = forwarding == Forwarding::Gue;
    let proto = match (gue, inner_v6) {
        (true, _) => 17,
        (false, true) => 41,
        (false, false) => 4,
    };
    let mut udp = Vec::new();
    if gue {
        udp.extend(gue_source_port(bits).to_be_bytes());
        udp.extend(DEFAULT_GUE_PORT.to_be_bytes());
        udp.extend(((inner.len() + 8) as u16).to_be_bytes());
        udp.extend([0, 0]);
    }
    let payload = inner.len() + udp.len();
    let mut out = backend_mac(id).to_vec();
    out.extend(LB_MAC);
    out.extend(&frame[12..l3 - 2]);
    let mut outer = Vec::new();
    if backend.is_ipv4() {
        out.extend([0x08, 0x00]);
        outer.extend([0x45, tos]);
        outer.extend(((payload + 20) as u16).to_be_bytes());
        outer.extend([0, 0, 0x40, 0, 64, proto, 0, 0]);
        outer.extend(octets(src));
        outer.extend(octets(backend));
        let check = fold(sum(&outer));
        outer[10..12].copy_from_slice(&check.to_be_bytes());
    } else {
        out.extend([0x86, 0xdd]);
        let first = (6u32 << 28) | (u32::from(tos) << 20) | flow_label(bits);
        outer.extend(first.to_be_bytes());
        outer.extend((payload as u16).to_be_bytes());
        outer.extend([proto, 64]);
        outer.extend(octets(src));
        outer.extend(octets(backend));
        if gue && check == Check::Full {
            let pseudo = sum(&outer[8..40]) + payload as u32 + 17;
            let mut value = fold(pseudo + sum(&udp) + sum(inner));
            if value == 0 {
                value = 0xffff;
            }
            udp[6..8].copy_from_slice(&value.to_be_bytes());
        }
    }
    out.extend(outer);
    out.extend(udp);
    out.extend(inner);
    out
}

/// The backend the ring of VIP `vip` gives flow `key`, and the flow's hash
/// material.
fn placed(f: &Fixture, vip: u32, key: &FlowKey) -> (u32, u32) {
    let id = f.expected_backend(vip, key);
    (
        id,
        flow_bits(&key.src, &key.dst, key.src_port, key.dst_port),
    )
}

/// The case of `packet` to VIP `vip`, whose ring places its flow on a
/// backend reached by `forwarding`.
fn case(
    f: &Fixture,
    forwarding: Forwarding,
    name: &str,
    packet: &Packet,
    vip: u32,
) -> (String, Vec<u8>, Vec<u8>) {
    let frame = packet.build();
    let (id, bits) = placed(f, vip, &packet.key());
    let want = encapsulated(forwarding, &frame, id, bits, Check::Full);
    (format!("{forwarding:?}: {name}"), frame, want)
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
fn each_pair_of_families_gets_its_outer_headers() {
    privilege::run("datapath_encap_families", || {
        for forwarding in TUNNELS {
            let mut f = fixture(forwarding)?;
            let syn4 = Packet::tcp(CLIENT4, 40000, VIP4, 80);
            let syn6 = Packet::tcp(CLIENT6, 40000, VIP6, 80);
            let udp4 = Packet::udp(CLIENT4, 5353, VIP4, 53);
            let udp6 = Packet::udp(CLIENT6, 5353, VIP6, 53);
            let c = |name: &str, packet: &Packet, vip| case(&f, forwarding, name, packet, vip);
            let cases = [
                c("IPv4 in IPv4: a SYN", &syn4, 0),
                c("IPv4 in IPv4: its ACK", &syn4.clone().established(), 0),
                c("IPv6 in IPv6: a SYN", &syn6, 2),
                c("IPv6 in IPv6: its ACK", &syn6.clone().established(), 2),
                c("IPv4 in IPv6", &udp4, 1),
                c("IPv4 in IPv6, again", &udp4, 1),
                c("IPv6 in IPv4", &udp6, 3),
                c("IPv6 in IPv4, again", &udp6, 3),
                c("a VLAN tag kept", &syn4.clone().tagged(7), 0),
                c("a VLAN tag kept, IPv6", &syn6.clone().tagged(7), 2),
            ];
            run_encapsulated(&mut f, &cases)?;
            // A frame padded to the Ethernet minimum: the outer header
            // counts the IP packet, the padding stays behind it.
            let ack = syn4.clone().established();
            let (name, mut frame, mut want) = case(&f, forwarding, "padded", &ack, 0);
            frame.extend([0; 6]);
            want.extend([0; 6]);
            run_encapsulated(&mut f, &[(name, frame, want)])?;
            // The L2 DSR VIP beside them: MACs only.
            let dsr = Packet::tcp(CLIENT4, 40000, DSR_VIP, 80);
            run(&mut f, &[Case::forwarded("l2 dsr", &dsr, 4)])?;
        }
        Ok(())
    });
}

#[test]
fn the_outer_header_carries_the_inner_dscp_and_ecn() {
    privilege::run("datapath_encap_tos", || {
        for forwarding in TUNNELS {
            let mut f = fixture(forwarding)?;
            // EF (DSCP 46) with ECT(0): 0xba, in an IPv4 packet's TOS and
            // an IPv6 packet's traffic class. The IPv4 header's checksum is
            // made right again: GUE over IPv6 builds on it.
            let marked4 = |frame: &mut Vec<u8>| {
                frame[15] = 0xba;
                frame[24..26].copy_from_slice(&[0, 0]);
                let check = fold(sum(&frame[14..34]));
                frame[24..26].copy_from_slice(&check.to_be_bytes());
            };
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
                let (name, mut frame, _) = case(&f, forwarding, "marked", &packet, vip);
                mark(&mut frame);
                let (id, bits) = placed(&f, vip, &packet.key());
                let want = encapsulated(forwarding, &frame, id, bits, Check::Full);
                cases.push((format!("{name} to vip {vip}"), frame, want));
            }
            run_encapsulated(&mut f, &cases)?;
        }
        Ok(())
    });
}

#[test]
fn gue_source_ports_follow_the_flow_and_spread_over_flows() {
    privilege::run("datapath_gue_ports", || {
        let mut f = fixture(Forwarding::Gue)?;
        let mut ports = BTreeSet::new();
        let mut queues = [0u32; 4];
        const FLOWS: u16 = 1000;
        for n in 0..FLOWS {
            let syn = Packet::tcp(CLIENT4, 10000 + n, VIP4, 80);
            let mut seen = Vec::new();
            for packet in [syn.clone(), syn.established()] {
                let got = f.datapath.test_run(&packet.build(), 0)?;
                ensure!(got.verdict == TX, "flow {n}: verdict {}", got.verdict);
                // Outer IPv4 (VIP 0's backends): UDP at 34.
                ensure!(got.packet[23] == 17, "flow {n}: not UDP");
                seen.push(u16::from_be_bytes([got.packet[34], got.packet[35]]));
            }
            ensure!(seen[0] == seen[1], "flow {n}: source ports {seen:?}");
            ensure!(seen[0] >= 49152, "flow {n}: port {} not dynamic", seen[0]);
            ports.insert(seen[0]);
            // A receiver spreading by the ports' low bits, as RSS might.
            queues[usize::from(seen[0] % 4)] += 1;
        }
        ensure!(
            ports.len() >= 950,
            "{} distinct source ports for {FLOWS} flows",
            ports.len()
        );
        ensure!(
            queues.iter().all(|q| (200..=300).contains(q)),
            "flows per queue of 4: {queues:?}"
        );
        Ok(())
    });
}

#[test]
fn gue_over_ipv6_carries_the_checksum_of_every_byte_or_none() {
    privilege::run("datapath_gue_checksum", || {
        let mut f = fixture(Forwarding::Gue)?;
        let gue = Forwarding::Gue;
        let mut cases = Vec::new();
        // Every size parity and protocol whose checksum the program
        // derives: VIP 1 sends IPv4 UDP in IPv6, VIP 2 IPv6 TCP.
        for size in [0usize, 1, 2, 3, 999, 1300] {
            let payload: Vec<u8> = (0..size).map(|i| (i * 7 + size) as u8).collect();
            let mut udp = Packet::udp(CLIENT4, 6000 + size as u16, VIP4, 53);
            udp.payload = payload.clone();
            let mut tcp = Packet::tcp(CLIENT6, 6000 + size as u16, VIP6, 80).established();
            tcp.payload = payload;
            cases.push(case(&f, gue, &format!("IPv4 UDP of {size} bytes"), &udp, 1));
            cases.push(case(&f, gue, &format!("IPv6 TCP of {size} bytes"), &tcp, 2));
        }
        run_encapsulated(&mut f, &cases)?;
        // ICMP errors about a flow, to its backend: ICMPv6 (pseudo-header)
        // and ICMP (none) inside IPv6.
        let mut cases = Vec::new();
        for (client, vip, router, index) in [
            (
                CLIENT6,
                VIP6,
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 1)),
                2,
            ),
            (
                CLIENT4,
                MIXED_VIP,
                IpAddr::V4(Ipv4Addr::new(203, 0, 113, 254)),
                5,
            ),
        ] {
            let syn = Packet::tcp(client, 41000, vip, 80);
            let (name, frame, want) = case(&f, gue, "the flow's SYN", &syn, index);
            cases.push((format!("{name} to vip {index}"), frame, want));
            let error = packet::pmtu_error(router, vip, 80, client, 41000, 1400);
            let (id, bits) = placed(&f, index, &syn.key());
            let want = encapsulated(gue, &error, id, bits, Check::Full);
            cases.push((format!("a path MTU error to vip {index}"), error, want));
        }
        run_encapsulated(&mut f, &cases)?;
        // What the program cannot derive goes with checksum 0: a first
        // fragment (its transport checksum covers the whole datagram) and
        // UDP over IPv4 without a checksum.
        let mut big = Packet::udp(CLIENT4, 7000, VIP4, 53);
        big.payload = vec![0x5a; 600];
        let [first, second] = packet::fragmented(&big.build(), 304, 77);
        // A datagram's fragments share their outer header's hash: the
        // addresses alone, as later fragments have no ports.
        let key = big.key();
        let (id, _) = placed(&f, 1, &key);
        let bits = flow_bits(&key.src, &key.dst, 0, 0);
        let plain = Packet::udp(CLIENT4, 7001, VIP4, 53);
        let mut unchecked = plain.build();
        unchecked[40..42].copy_from_slice(&[0, 0]);
        let (unchecked_id, unchecked_bits) = placed(&f, 1, &plain.key());
        let cases = [
            (
                "a first fragment".to_owned(),
                first.clone(),
                encapsulated(gue, &first, id, bits, Check::Zero),
            ),
            (
                "its second fragment".to_owned(),
                second.clone(),
                encapsulated(gue, &second, id, bits, Check::Zero),
            ),
            (
                "UDP without a checksum".to_owned(),
                unchecked.clone(),
                encapsulated(gue, &unchecked, unchecked_id, unchecked_bits, Check::Zero),
            ),
        ];
        run_encapsulated(&mut f, &cases)?;
        Ok(())
    });
}

#[test]
fn an_unresolved_next_hop_is_dropped_and_counted() {
    privilege::run("datapath_encap_unresolved", || {
        for forwarding in TUNNELS {
            let mut f = Fixture::new(SEED)?;
            let backends = standard::backends4(0..3)
                .into_iter()
                .map(|mut b| {
                    b.resolved = false;
                    b.tunnelled(forwarding, SRC4)
                })
                .collect();
            f.put_vip(Vip::new(0, VIP4, 80, proto::TCP, backends))?;
            let syn = Packet::tcp(CLIENT4, 40000, VIP4, 80);
            run(
                &mut f,
                &[Case::new(
                    format!("{forwarding:?}: unresolved"),
                    syn.build(),
                    DROP,
                    Out::Same,
                    &[
                        (Counter::Stat(Stat::DROP_NO_NEIGHBOUR), 1),
                        (Counter::Event(Event::ENCAP), 0),
                    ],
                )],
            )?;
        }
        Ok(())
    });
}

/// Runs `frame`: it must get `verdict`, leave as `want` (when given),
/// count `stat` once, and count as encapsulated only when sent on (`tx`).
fn expect(
    f: &mut Fixture,
    failures: &mut Vec<String>,
    name: String,
    frame: Vec<u8>,
    verdict: u32,
    want: Option<Vec<u8>>,
    stat: Stat,
) -> Result<()> {
    let before = f.datapath.reasons()?;
    let got = f.datapath.test_run(&frame, 0)?;
    let after = f.datapath.reasons()?;
    if got.verdict != verdict {
        failures.push(format!("{name}: verdict {}", got.verdict));
    }
    if let Some(want) = want
        && got.packet != want
    {
        failures.push(format!(
            "{name}: frame differs\n     got: {:02x?}\n    want: {want:02x?}",
            got.packet
        ));
    }
    let grew = after.stat(stat).packets - before.stat(stat).packets;
    if grew != 1 {
        failures.push(format!("{name}: {} grew by {grew}", stat.name()));
    }
    let encapsulated = after.event(Event::ENCAP).packets - before.event(Event::ENCAP).packets;
    if encapsulated != u64::from(stat == Stat::TX) {
        failures.push(format!("{name}: encap grew by {encapsulated}"));
    }
    Ok(())
}

/// `frame` (IPv4, no VLAN tag) with DF set (`df`), as TCP stacks send,
/// or clear.
fn set_df(mut frame: Vec<u8>, df: bool) -> Vec<u8> {
    frame[20] = (frame[20] & !0x40) | if df { 0x40 } else { 0 };
    frame[24..26].copy_from_slice(&[0, 0]);
    let check = fold(sum(&frame[14..34]));
    frame[24..26].copy_from_slice(&check.to_be_bytes());
    frame
}

/// The ICMP message the balancer must send back for `frame` (from the
/// client, perhaps tagged), too big for a path of `mtu` bytes: MACs
/// swapped, the tag kept, from the VIP to the client, quoting the first
/// 128 bytes of the client's packet.
fn too_big(frame: &[u8], mtu: u16) -> Vec<u8> {
    let l3 = if frame[12..14] == [0x81, 0x00] {
        18
    } else {
        14
    };
    let ip = &frame[l3..];
    let quote = &ip[..128];
    let mut out = frame[6..12].to_vec();
    out.extend(&frame[..6]);
    out.extend(&frame[12..l3]);
    if ip[0] >> 4 == 4 {
        let mut header = vec![0x45, 0];
        header.extend(156u16.to_be_bytes());
        header.extend([0, 0, 0, 0, 64, 1, 0, 0]);
        header.extend(&ip[16..20]);
        header.extend(&ip[12..16]);
        let check = fold(sum(&header));
        header[10..12].copy_from_slice(&check.to_be_bytes());
        let mut icmp = vec![3, 4, 0, 0, 0, 0];
        icmp.extend(mtu.to_be_bytes());
        icmp.extend(quote);
        let check = fold(sum(&icmp));
        icmp[2..4].copy_from_slice(&check.to_be_bytes());
        out.extend(header);
        out.extend(icmp);
    } else {
        let mut header = vec![0x60, 0, 0, 0];
        header.extend(136u16.to_be_bytes());
        header.extend([58, 64]);
        header.extend(&ip[24..40]);
        header.extend(&ip[8..24]);
        let mut icmp = vec![2, 0, 0, 0];
        icmp.extend(u32::from(mtu).to_be_bytes());
        icmp.extend(quote);
        let pseudo = sum(&header[8..40]) + 136 + 58;
        let check = fold(pseudo + sum(&icmp));
        icmp[2..4].copy_from_slice(&check.to_be_bytes());
        out.extend(header);
        out.extend(icmp);
    }
    out
}

#[test]
fn a_packet_too_big_for_the_tunnel_is_answered_with_icmp() {
    privilege::run("datapath_encap_too_big", || {
        for forwarding in TUNNELS {
            let mut f = fixture(forwarding)?;
            let gue = if forwarding == Forwarding::Gue { 8 } else { 0 };
            // The room each VIP's backends leave a client's packet: VIP 0
            // (IPv4 backends) 1,480 less GUE's 8, VIPs 1 and 2 (IPv6
            // backends) 1,460 less GUE's 8.
            let room4: u16 = 1480 - gue;
            let room6: u16 = 1460 - gue;
            // A TCP segment of `total` bytes of IP packet.
            let segment = |client, vip, total: u16, header: u16| {
                let mut p = Packet::tcp(client, 42000, vip, 80).established();
                p.payload = vec![0xab; usize::from(total - header - 20)];
                p
            };
            let mut failures = Vec::new();
            for (name, client, vip, index, room, header) in [
                ("IPv4 in IPv4", CLIENT4, VIP4, 0, room4, 20u16),
                ("IPv6 in IPv6", CLIENT6, VIP6, 2, room6, 40),
            ] {
                let fits = segment(client, vip, room, header);
                let over = segment(client, vip, room + 1, header);
                let (fits, over, tagged) = if header == 20 {
                    (
                        set_df(fits.build(), true),
                        set_df(over.build(), true),
                        over.clone().tagged(7).build(),
                    )
                } else {
                    (fits.build(), over.build(), over.clone().tagged(7).build())
                };
                let (id, bits) = placed(&f, index, &segment(client, vip, room, header).key());
                let want = encapsulated(forwarding, &fits, id, bits, Check::Full);
                expect(
                    &mut f,
                    &mut failures,
                    format!("{forwarding:?} {name}: fits"),
                    fits,
                    TX,
                    Some(want),
                    Stat::TX,
                )?;
                let want = too_big(&over, room);
                expect(
                    &mut f,
                    &mut failures,
                    format!("{forwarding:?} {name}: one byte over"),
                    over,
                    TX,
                    Some(want),
                    Stat::TX_TOO_BIG,
                )?;
                if header == 40 {
                    let want = too_big(&tagged, room);
                    expect(
                        &mut f,
                        &mut failures,
                        format!("{forwarding:?} {name}: tagged"),
                        tagged,
                        TX,
                        Some(want),
                        Stat::TX_TOO_BIG,
                    )?;
                }
            }
            // IPv4 UDP to IPv6 backends, with DF: answered with their room.
            let mut udp = Packet::udp(CLIENT4, 5400, VIP4, 53);
            udp.payload = vec![0xcd; usize::from(room6 + 1 - 28)];
            let over = set_df(udp.build(), true);
            let want = too_big(&over, room6);
            expect(
                &mut f,
                &mut failures,
                format!("{forwarding:?} IPv4 in IPv6: one byte over"),
                over,
                TX,
                Some(want),
                Stat::TX_TOO_BIG,
            )?;
            // Without DF: dropped, for the sender to fragment.
            let plain = set_df(segment(CLIENT4, VIP4, room4 + 1, 20).build(), false);
            expect(
                &mut f,
                &mut failures,
                format!("{forwarding:?} IPv4 without DF"),
                plain,
                DROP,
                None,
                Stat::DROP_TOO_BIG,
            )?;
            ensure!(failures.is_empty(), "{}", failures.join("\n"));
        }
        Ok(())
    });
}

#[test]
fn icmp_messages_are_rate_limited_and_never_answer_icmp() {
    privilege::run("datapath_encap_icmp_limits", || {
        // The bucket is per CPU: every run on one CPU.
        let mut cpus = nix::sched::CpuSet::new();
        cpus.set(0)?;
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &cpus)?;
        let mut f = fixture(Forwarding::Ipip)?;
        // VIP 2's backends behind a route of 1,300 bytes: room 1,260.
        let narrow = standard::backends6(6..9)
            .into_iter()
            .map(|mut b| {
                b.mtu = 1300;
                b.ipip(SRC6)
            })
            .collect();
        f.put_vip(Vip::new(2, VIP6, 80, proto::TCP, narrow))?;
        // A packet-too-big of 1,280 bytes about a flow of VIP 2, as a
        // router quotes it: no room in the tunnel, and never answered.
        let mut reply = Packet::tcp(VIP6, 80, CLIENT6, 41000).established();
        reply.payload = vec![0x33; 1280 - 48 - 60];
        let quoted = reply.build();
        let (IpAddr::V6(vip), IpAddr::V6(router)) = (VIP6, "2001:db8:ff::1".parse()?) else {
            unreachable!()
        };
        let mut error = Vec::new();
        etherparse::PacketBuilder::ethernet2(packet::CLIENT_MAC, LB_MAC)
            .ipv6(router.octets(), vip.octets(), 64)
            .icmpv6(etherparse::Icmpv6Type::PacketTooBig { mtu: 1200 })
            .write(&mut error, &quoted[14..])?;
        ensure!(error.len() == 14 + 1280, "{} bytes", error.len());
        let mut failures = Vec::new();
        expect(
            &mut f,
            &mut failures,
            "an ICMPv6 error too big for the tunnel".into(),
            error,
            DROP,
            None,
            Stat::DROP_TOO_BIG,
        )?;
        ensure!(failures.is_empty(), "{}", failures.join("\n"));
        // 3,000 packets too big at once: 1,000 answered (a second's burst)
        // and those the bucket earned meanwhile, one a millisecond. So
        // many that some are dropped even when the runs are slow (a busy
        // machine took over 100 ms for 1,100).
        let mut over = Packet::tcp(CLIENT4, 42001, VIP4, 80).established();
        over.payload = vec![0xab; 1481 - 40];
        let frame = set_df(over.build(), true);
        let before = f.datapath.reasons()?;
        let started = std::time::Instant::now();
        for _ in 0..3000 {
            f.datapath.test_run(&frame, 0)?;
        }
        let elapsed_ms = started.elapsed().as_millis() as u64;
        let after = f.datapath.reasons()?;
        let sent = after.stat(Stat::TX_TOO_BIG).packets - before.stat(Stat::TX_TOO_BIG).packets;
        let dropped =
            after.stat(Stat::DROP_TOO_BIG).packets - before.stat(Stat::DROP_TOO_BIG).packets;
        ensure!(
            sent + dropped == 3000 && (1000..=1001 + elapsed_ms).contains(&sent) && dropped > 0,
            "{sent} ICMP messages sent and {dropped} dropped in {elapsed_ms} ms"
        );
        Ok(())
    });
}
