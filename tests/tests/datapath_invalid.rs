//! Invalid segments to VIPs, through BPF_PROG_TEST_RUN: TCP flags no
//! client sends, a TCP data offset below 5 words or beyond the packet, a
//! UDP length that is not the datagram's, an IPv6 fragment header cut
//! short. Each is dropped and counted under its own reason when it is for
//! a VIP address, and passed untouched otherwise. Tables of cases of
//! `balancer_tests::case` against the standard fixture.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use balancer::datapath::action::{DROP, PASS, TX};
use balancer_common::{proto, stats::Stat};
use balancer_tests::{
    case::{Case, Counter, Out, check},
    fixture::{
        flow_key,
        standard::{CLIENT4, CLIENT6, VIP4, VIP6, standard},
    },
    packet::{self, Packet},
};

const OTHER4: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1));
const OTHER6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 1));

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

/// Whether a client sends a segment with the flags byte `flags` to a
/// server: the combinations of FIN, SYN, RST and ACK that start, carry or
/// end a connection. Written out here independently of the program's
/// table.
fn client_sends(flags: u8) -> bool {
    matches!(
        flags & (FIN | SYN | RST | ACK),
        SYN | ACK | 0x11 /* FIN+ACK */ | RST | 0x14 /* RST+ACK */
    )
}

#[test]
fn every_tcp_flags_byte_is_forwarded_only_when_a_client_sends_it() {
    let mut cases = Vec::new();
    for (family, client, vip, vip_index, other) in [
        ("ipv4", CLIENT4, VIP4, 0, OTHER4),
        ("ipv6", CLIENT6, VIP6, 2, OTHER6),
    ] {
        for flags in 0..=255u8 {
            // A port of its own per case: no case sees another's entry.
            let port = 10_000 + u16::from(flags);
            let frame = packet::tcp_with_flags(client, port, vip, 80, flags, b"");
            let counted = |n| [(Counter::Stat(Stat::DROP_TCP_FLAGS), n)];
            let name = format!("{family} flags {flags:#04x}");
            cases.push(if client_sends(flags) {
                let key = flow_key(client, port, vip, 80, proto::TCP);
                let out = Out::Flow {
                    vip: vip_index,
                    key,
                };
                Case::new(name, frame, TX, out, &counted(0))
            } else {
                Case::new(name, frame, DROP, Out::Same, &counted(1))
            });
        }
        // Not for a VIP address: passed whatever its flags.
        let frame = packet::tcp_with_flags(client, 9999, other, 80, SYN | FIN | RST, b"");
        let name = format!("{family} syn+fin+rst to another address");
        let passed = [
            (Counter::Stat(Stat::DROP_TCP_FLAGS), 0),
            (Counter::Stat(Stat::PASS_UNPARSED), 1),
        ];
        cases.push(Case::new(name, frame, PASS, Out::Same, &passed));
    }
    check("datapath_tcp_flags", standard, &cases);
}

/// `frame` (IPv4 TCP, no IP options) with its data offset set to `words`.
fn with_data_offset(mut frame: Vec<u8>, words: u8) -> Vec<u8> {
    frame[14 + 20 + 12] = words << 4;
    frame
}

#[test]
fn a_tcp_data_offset_below_five_or_beyond_the_packet_is_dropped() {
    let syn = |port, payload: &[u8]| packet::tcp_with_flags(CLIENT4, port, VIP4, 80, SYN, payload);
    let offset = |n| [(Counter::Stat(Stat::DROP_TCP_OFFSET), n)];
    let forwarded = |port| Out::Flow {
        vip: 0,
        key: flow_key(CLIENT4, port, VIP4, 80, proto::TCP),
    };
    // A 20-byte header padded by Ethernet to 60 bytes: the padding is not
    // part of the IP packet, so a 24-byte header does not fit.
    let mut padded = with_data_offset(syn(20_004, b""), 6);
    padded.resize(60, 0);
    let cases = [
        Case::new(
            "offset 15, 40 bytes of options",
            with_data_offset(syn(20_001, &[1; 40]), 15),
            TX,
            forwarded(20_001),
            &offset(0),
        ),
        Case::new(
            "offset 15, 39 bytes after the base header",
            with_data_offset(syn(20_002, &[1; 39]), 15),
            DROP,
            Out::Same,
            &offset(1),
        ),
        Case::new(
            "offset 4",
            with_data_offset(syn(20_003, b""), 4),
            DROP,
            Out::Same,
            &offset(1),
        ),
        Case::new(
            "offset 6 into the Ethernet padding",
            padded,
            DROP,
            Out::Same,
            &offset(1),
        ),
        Case::new(
            "offset 0 to another address",
            with_data_offset(packet::tcp_with_flags(CLIENT4, 1, OTHER4, 80, SYN, b""), 0),
            PASS,
            Out::Same,
            &offset(0),
        ),
    ];
    check("datapath_tcp_offset", standard, &cases);
}

/// `frame` (UDP) with its length field set to `len`; `ip_header` is the
/// IP header's length.
fn with_udp_length(mut frame: Vec<u8>, ip_header: usize, len: u16) -> Vec<u8> {
    let at = 14 + ip_header + 4;
    frame[at..at + 2].copy_from_slice(&len.to_be_bytes());
    frame
}

#[test]
fn a_udp_length_other_than_the_datagrams_is_dropped() {
    let mut cases = Vec::new();
    for (family, client, vip, vip_index, ip_header) in [
        ("ipv4", CLIENT4, VIP4, 1, 20),
        ("ipv6", CLIENT6, VIP6, 3, 40),
    ] {
        // 8 bytes of header and 7 of payload.
        for (i, len) in [0u16, 7, 8, 14, 16, 0xffff].into_iter().enumerate() {
            let port = 30_000 + i as u16;
            let frame = with_udp_length(Packet::udp(client, port, vip, 53).build(), ip_header, len);
            cases.push(Case::new(
                format!("{family} udp length {len} of 15"),
                frame,
                DROP,
                Out::Same,
                &[(Counter::Stat(Stat::DROP_UDP_LENGTH), 1)],
            ));
        }
        let p = Packet::udp(client, 30_100, vip, 53);
        cases.push(Case::new(
            format!("{family} udp length 15 of 15"),
            p.build(),
            TX,
            Out::flow(vip_index, &p),
            &[(Counter::Stat(Stat::DROP_UDP_LENGTH), 0)],
        ));
        // An empty datagram in a frame Ethernet pads: its length is the
        // datagram's, not the frame's.
        let mut p = Packet::udp(client, 30_101, vip, 53);
        p.payload.clear();
        let mut frame = p.build();
        frame.resize(frame.len().max(60), 0);
        cases.push(Case::new(
            format!("{family} empty udp, padded frame"),
            frame,
            TX,
            Out::flow(vip_index, &p),
            &[(Counter::Stat(Stat::DROP_UDP_LENGTH), 0)],
        ));
    }
    let other = with_udp_length(Packet::udp(CLIENT4, 1, OTHER4, 53).build(), 20, 0);
    cases.push(Case::new(
        "udp length 0 to another address",
        other,
        PASS,
        Out::Same,
        &[(Counter::Stat(Stat::DROP_UDP_LENGTH), 0)],
    ));
    check("datapath_udp_length", standard, &cases);
}

/// The first fragment of an IPv6 datagram to `dst`, cut to its base header
/// and 4 bytes of its fragment header, with the payload length saying so.
fn cut_fragment_header(dst: IpAddr) -> Vec<u8> {
    let (IpAddr::V6(client), IpAddr::V6(dst)) = (CLIENT6, dst) else {
        unreachable!()
    };
    let [first, _] = packet::ipv6_fragments(client.octets(), dst.octets(), 53);
    let mut frame = first[..14 + 40 + 4].to_vec();
    frame[14 + 4..14 + 6].copy_from_slice(&4u16.to_be_bytes());
    frame
}

#[test]
fn an_ipv6_fragment_header_cut_short_is_dropped_when_for_a_vip() {
    let truncated = |n| [(Counter::Stat(Stat::DROP_TRUNCATED), n)];
    let cases = [
        Case::new(
            "to the VIP",
            cut_fragment_header(VIP6),
            DROP,
            Out::Same,
            &truncated(1),
        ),
        Case::new(
            "to another address",
            cut_fragment_header(OTHER6),
            PASS,
            Out::Same,
            &truncated(0),
        ),
    ];
    check("datapath_ipv6_fragment_cut", standard, &cases);
}
