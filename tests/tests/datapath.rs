//! The XDP program packet by packet, through BPF_PROG_TEST_RUN: a built
//! packet in, the exact verdict, bytes and counter changes out.

use anyhow::{Result, ensure};
use balancer::datapath::Datapath;
use balancer_common::stats::{PacketCount, Stat};
use balancer_tests::privilege;
use etherparse::{EtherType, Ethernet2Header, PacketBuilder, VlanId};

const XDP_PASS: u32 = 2;
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// One row of the table: a packet and what the program must do with it.
struct Case {
    name: &'static str,
    packet: Vec<u8>,
    verdict: u32,
    /// The counters that must grow by exactly this packet, besides rx_total.
    counted_as: Stat,
}

fn ipv4_udp() -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
        .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .udp(40000, 53);
    let mut out = Vec::new();
    builder.write(&mut out, b"query").unwrap();
    out
}

fn vlan_ipv6_tcp() -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC)
        .single_vlan(VlanId::try_new(42).unwrap())
        .ipv6([0xfd; 16], [0xfe; 16], 64)
        .tcp(40000, 443, 1, 65535)
        .syn();
    let mut out = Vec::new();
    builder.write(&mut out, &[]).unwrap();
    out
}

fn arp() -> Vec<u8> {
    let eth = Ethernet2Header {
        source: CLIENT_MAC,
        destination: [0xff; 6],
        ether_type: EtherType::ARP,
    };
    let mut out = eth.to_bytes().to_vec();
    out.extend_from_slice(&[0u8; 28]);
    out
}

/// An Ethernet header announcing a VLAN tag, with the frame cut right after
/// it: the tag is missing.
fn truncated_vlan() -> Vec<u8> {
    let eth = Ethernet2Header {
        source: CLIENT_MAC,
        destination: LB_MAC,
        ether_type: EtherType::VLAN_TAGGED_FRAME,
    };
    eth.to_bytes().to_vec()
}

fn counters(datapath: &Datapath) -> Result<Vec<(Stat, PacketCount)>> {
    Ok(datapath.stats()?)
}

#[test]
fn every_frame_passes_unchanged_and_is_counted_by_protocol() -> Result<()> {
    if !privilege::check("datapath_test_run") {
        return Ok(());
    }
    let cases = [
        Case {
            name: "ipv4 udp",
            packet: ipv4_udp(),
            verdict: XDP_PASS,
            counted_as: Stat::RX_IPV4,
        },
        Case {
            name: "802.1q ipv6 tcp",
            packet: vlan_ipv6_tcp(),
            verdict: XDP_PASS,
            counted_as: Stat::RX_IPV6,
        },
        Case {
            name: "arp",
            packet: arp(),
            verdict: XDP_PASS,
            counted_as: Stat::RX_OTHER_L3,
        },
        Case {
            name: "truncated vlan tag",
            packet: truncated_vlan(),
            verdict: XDP_PASS,
            counted_as: Stat::RX_MALFORMED,
        },
    ];
    let mut datapath = Datapath::load()?;
    for case in cases {
        let before = counters(&datapath)?;
        let out = datapath.test_run(&case.packet)?;
        ensure!(
            out.verdict == case.verdict,
            "{}: verdict {} instead of {}",
            case.name,
            out.verdict,
            case.verdict
        );
        ensure!(
            out.packet == case.packet,
            "{}: the program changed the packet",
            case.name
        );
        let after = counters(&datapath)?;
        let len = case.packet.len() as u64;
        for ((stat, old), (_, new)) in before.iter().zip(&after) {
            let grew = *stat == Stat::RX_TOTAL || *stat == case.counted_as;
            let expected = if grew {
                PacketCount {
                    packets: old.packets + 1,
                    bytes: old.bytes + len,
                }
            } else {
                *old
            };
            ensure!(
                *new == expected,
                "{}: counter {} went from {old:?} to {new:?}, expected {expected:?}",
                case.name,
                stat.name()
            );
        }
    }
    Ok(())
}
