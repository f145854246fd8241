//! ICMP in the XDP program, through BPF_PROG_TEST_RUN: a path-MTU error
//! about a flow reaches that flow's backend, an echo request to a VIP is
//! left to the host. A table of cases of `balancer_tests::case`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use balancer::datapath::action::{PASS, TX};
use balancer_common::stats::Event;
use balancer_tests::{
    case::{Case, Counter, Out, check},
    fixture::standard::{CLIENT4, CLIENT6, VIP4, VIP6, standard},
    packet::{self, Packet},
};

#[test]
fn path_mtu_errors_reach_the_backend_of_the_quoted_flow() {
    let router4 = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 254));
    let router6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 1));
    let pmtu = &[(Counter::Event(Event::ICMP_PMTU), 1)];
    let mut cases = Vec::new();
    for (name, client, vip, router, index) in [
        ("icmp", CLIENT4, VIP4, router4, 0),
        ("icmpv6", CLIENT6, VIP6, router6, 2),
    ] {
        let syn = Packet::tcp(client, 41000, vip, 80);
        let flow = Out::flow(index, &syn);
        let error = packet::pmtu_error(router, vip, 80, client, 41000, 1400);
        let echo = packet::echo_request(client, vip);
        cases.extend([
            // The flow exists: its SYN went to a backend.
            Case::new(format!("{name} syn"), syn.build(), TX, flow, &[]),
            Case::new(name, error, TX, flow, pmtu),
            // An echo request to the VIP is not the balancer's business.
            Case::new(format!("{name} echo"), echo, PASS, Out::Same, &[]),
        ]);
    }
    check("datapath_pmtu", standard, &cases);
}
