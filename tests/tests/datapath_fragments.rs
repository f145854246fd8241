//! IP fragments in the XDP program, through BPF_PROG_TEST_RUN: every
//! fragment of a datagram reaches one backend, chosen by the addresses
//! alone. A table of cases of `balancer_tests::case`.

use std::net::IpAddr;

use balancer::datapath::action::TX;
use balancer_common::stats::Event;
use balancer_tests::{
    case::{Case, Counter, Out, check},
    fixture::standard::{CLIENT4, CLIENT6, VIP4, VIP6, standard},
    packet,
};

#[test]
fn fragments_reach_one_backend_chosen_by_addresses() {
    let (IpAddr::V4(c4), IpAddr::V4(v4)) = (CLIENT4, VIP4) else {
        unreachable!()
    };
    let (IpAddr::V6(c6), IpAddr::V6(v6)) = (CLIENT6, VIP6) else {
        unreachable!()
    };
    let sets = [
        (
            "ipv4",
            packet::ipv4_fragments(c4.octets(), v4.octets(), 53),
            1,
            CLIENT4,
            VIP4,
        ),
        (
            "ipv6",
            packet::ipv6_fragments(c6.octets(), v6.octets(), 53),
            3,
            CLIENT6,
            VIP6,
        ),
    ];
    let fragment = &[(Counter::Event(Event::FRAGMENT), 1)];
    let cases: Vec<Case> = sets
        .into_iter()
        .flat_map(|(name, fragments, vip, src, dst)| {
            let out = Out::Fragment { vip, src, dst };
            fragments.into_iter().enumerate().map(move |(i, frame)| {
                Case::new(format!("{name} fragment {i}"), frame, TX, out, fragment)
            })
        })
        .collect();
    check("datapath_fragments", standard, &cases);
}
