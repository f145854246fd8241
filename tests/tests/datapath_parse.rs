//! Parsing in the XDP program, through BPF_PROG_TEST_RUN: frames cut at
//! every offset, damaged headers, and IPv4 options, each a table of cases
//! of `balancer_tests::case` against the standard fixture.

use std::net::{IpAddr, Ipv4Addr};

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

#[test]
fn truncated_packets_never_get_a_wrong_verdict_and_are_counted() {
    let mut cases = Vec::new();
    for (name, p, ip_start, ip_header) in [
        ("ipv4 tcp", Packet::tcp(CLIENT4, 5000, VIP4, 80), 14, 20),
        ("ipv6 udp", Packet::udp(CLIENT6, 5000, VIP6, 53), 14, 40),
        (
            "802.1q ipv4 udp",
            Packet::udp(CLIENT4, 5000, VIP4, 53).tagged(9),
            18,
            20,
        ),
    ] {
        let frame = p.build();
        // BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header
        // (no driver hands one to XDP either).
        for cut in 14..frame.len() {
            let name = format!("{name} cut at {cut}");
            let truncated = frame[..cut].to_vec();
            cases.push(if cut < ip_start + ip_header {
                // The addresses are unreadable: not known to be for a VIP.
                let unparsed = Counter::Stats(Stat::PASS_UNPARSED, Stat::PASS_NON_IP);
                Case::new(name, truncated, PASS, Out::Same, &[(unparsed, 1)])
            } else {
                let dropped = Counter::Stat(Stat::DROP_TRUNCATED);
                Case::new(name, truncated, DROP, Out::Same, &[(dropped, 1)])
            });
        }
    }
    check("datapath_truncation", standard, &cases);
}

#[test]
fn malformed_headers_for_a_vip_are_dropped_and_counted() {
    let damaged = |dst, offset: usize, byte: u8| {
        let mut frame = Packet::tcp(CLIENT4, 6000, dst, 80).build();
        frame[offset] = byte;
        frame
    };
    let malformed = &[(Counter::Stat(Stat::DROP_MALFORMED), 1)];
    let other = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1));
    let cases = [
        Case::new("ihl 4", damaged(VIP4, 14, 0x44), DROP, Out::Same, malformed),
        Case::new(
            "version 5",
            damaged(VIP4, 14, 0x55),
            DROP,
            Out::Same,
            malformed,
        ),
        // TCP data offset 4 (datapath_invalid.rs has the other cases).
        Case::new(
            "tcp doff 4",
            damaged(VIP4, 14 + 20 + 12, 0x40),
            DROP,
            Out::Same,
            &[(Counter::Stat(Stat::DROP_TCP_OFFSET), 1)],
        ),
        // The same damage on a packet for another address passes.
        Case::new(
            "ihl 4, not a vip",
            damaged(other, 14, 0x44),
            PASS,
            Out::Same,
            &[],
        ),
    ];
    check("datapath_malformed", standard, &cases);
}

#[test]
fn ipv4_options_are_skipped_by_ihl() {
    let (IpAddr::V4(client), IpAddr::V4(vip)) = (CLIENT4, VIP4) else {
        unreachable!()
    };
    let frame = packet::ipv4_with_options(client.octets(), vip.octets(), 40100, 80);
    assert_eq!(frame[14], 0x46, "the test frame must have IHL 6");
    let key = flow_key(CLIENT4, 40100, VIP4, 80, proto::TCP);
    let cases = [Case::new(
        "ipv4 options",
        frame,
        TX,
        Out::Flow { vip: 0, key },
        &[],
    )];
    check("datapath_ipv4_options", standard, &cases);
}
