//! Matching frames to VIPs in the XDP program, through BPF_PROG_TEST_RUN:
//! TCP and UDP over IPv4 and IPv6 (tagged or not) to a VIP, traffic for no
//! VIP, and a port-0 VIP that takes every port. Each a table of cases of
//! `balancer_tests::case` against the standard fixture.

use std::net::{IpAddr, Ipv4Addr};

use balancer::datapath::action::{PASS, TX};
use balancer_common::{
    proto,
    stats::{Event, Stat},
};
use balancer_tests::{
    case::{Case, Counter, Out, check},
    fixture::{
        Vip,
        standard::{CLIENT4, CLIENT6, VIP4, VIP6, backends4, standard},
    },
    packet::Packet,
};

/// The first packet of the flow of `p` to VIP `vip`: sent to the backend
/// its ring gives with only the MACs rewritten, and counted as a new flow
/// of the VIP and of that backend.
fn first(name: &str, p: &Packet, vip: u32) -> Case {
    let frame = p.build();
    let len = frame.len() as u64;
    Case::new(
        name,
        frame,
        TX,
        Out::flow(vip, p),
        &[
            (Counter::Stat(Stat::TX), 1),
            (Counter::Event(Event::NEW_FLOW), 1),
            (Counter::VipPackets(vip), 1),
            (Counter::VipBytes(vip), len),
            (Counter::VipNewFlows(vip), 1),
            (Counter::BackendPackets, 1),
            (Counter::BackendBytes, len),
            (Counter::BackendNewFlows, 1),
        ],
    )
}

/// The second packet of that flow: it hits the connection table, reaches
/// the same backend and is not a new flow.
fn second(name: &str, p: &Packet, vip: u32) -> Case {
    Case::new(
        format!("{name}, established"),
        p.clone().established().build(),
        TX,
        Out::flow(vip, p),
        &[
            (Counter::Event(Event::NEW_FLOW), 0),
            (Counter::BackendPackets, 1),
            (Counter::BackendNewFlows, 0),
        ],
    )
}

#[test]
fn tcp_and_udp_to_a_vip_go_to_the_ring_backend_with_only_the_macs_rewritten() {
    let flows = [
        ("ipv4 tcp", Packet::tcp(CLIENT4, 40001, VIP4, 80), 0),
        ("ipv4 udp", Packet::udp(CLIENT4, 40002, VIP4, 53), 1),
        ("ipv6 tcp", Packet::tcp(CLIENT6, 40003, VIP6, 80), 2),
        ("ipv6 udp", Packet::udp(CLIENT6, 40004, VIP6, 53), 3),
        (
            "802.1q ipv4 tcp",
            Packet::tcp(CLIENT4, 40005, VIP4, 80).tagged(7),
            0,
        ),
        (
            "802.1q ipv6 udp",
            Packet::udp(CLIENT6, 40006, VIP6, 53).tagged(4094),
            3,
        ),
    ];
    let cases: Vec<Case> = flows
        .iter()
        .flat_map(|(name, p, vip)| [first(name, p, *vip), second(name, p, *vip)])
        .collect();
    check("datapath_vip_forwarding", standard, &cases);
}

#[test]
fn traffic_not_for_a_vip_passes_untouched() {
    let other4 = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 11));
    let not_vip = &[(Counter::Stat(Stat::PASS_NOT_VIP), 1)];
    let pass = |name, p: Packet| Case::new(name, p.build(), PASS, Out::Same, not_vip);
    let cases = [
        pass("other address", Packet::tcp(CLIENT4, 1, other4, 80)),
        pass(
            "vip address, other port",
            Packet::tcp(CLIENT4, 1, VIP4, 443),
        ),
        pass(
            "vip port, other protocol",
            Packet::udp(CLIENT4, 1, VIP4, 80),
        ),
        pass("ipv6 other port", Packet::udp(CLIENT6, 1, VIP6, 54)),
    ];
    check("datapath_not_vip", standard, &cases);
}

#[test]
fn a_port_zero_vip_takes_every_port() {
    let any = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 20));
    let mut cases: Vec<Case> = [1u16, 80, 443, 65535]
        .iter()
        .map(|&port| {
            let p = Packet::tcp(CLIENT4, 3333, any, port);
            Case::new(
                format!("wildcard port {port}"),
                p.build(),
                TX,
                Out::flow(4, &p),
                &[],
            )
        })
        .collect();
    // Other protocols on that address are not the VIP's.
    let udp = Packet::udp(CLIENT4, 3333, any, 80).build();
    cases.push(Case::new("wildcard udp", udp, PASS, Out::Same, &[]));
    let fixture = || {
        let mut f = standard()?;
        f.put_vip(Vip::new(4, any, 0, proto::TCP, backends4(20..23)))?;
        Ok(f)
    };
    check("datapath_wildcard", fixture, &cases);
}
