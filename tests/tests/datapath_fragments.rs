//! IP fragments in the XDP program, through BPF_PROG_TEST_RUN: a
//! datagram's first fragment is placed as a packet of its flow, only when
//! it is for a VIP's port, and its later fragments follow it there; a
//! fragment to any other port, a later fragment whose first was not
//! admitted (out of order, refused, or too long ago), and a first fragment
//! too short for its transport header are dropped and counted. Tables of
//! cases of `balancer_tests::case`.

use std::{net::IpAddr, time::Duration};

use anyhow::Result;
use balancer::datapath::action::{DROP, PASS, TX};
use balancer_common::stats::{Event, Stat};
use balancer_tests::{
    case::{Case, Counter, Out, check, run},
    fixture::standard::{CLIENT4, CLIENT6, VIP4, VIP6, standard},
    packet::{Packet, fragmented},
    privilege,
};

/// `packet` with `n` bytes of payload.
fn with_payload(mut packet: Packet, n: usize) -> Packet {
    packet.payload = vec![0x5a; n];
    packet
}

fn counts(fragment: u64, stat: Option<(Stat, u64)>) -> Vec<(Counter, u64)> {
    let mut counts = vec![(Counter::Event(Event::FRAGMENT), fragment)];
    counts.extend(stat.map(|(s, n)| (Counter::Stat(s), n)));
    counts
}

fn cases(family: &str, client: IpAddr, vip: IpAddr, tcp_vip: u32, udp_vip: u32) -> Vec<Case> {
    let name = |what: &str| format!("{family} {what}");
    let port_refused = Some((Stat::DROP_FRAGMENT_PORT, 1));
    let unmatched = Some((Stat::DROP_FRAGMENT_UNMATCHED, 1));
    let udp = with_payload(Packet::udp(client, 6000, vip, 53), 1000);
    let [udp_first, udp_later] = fragmented(&udp.build(), 512, 1);
    let syn = with_payload(Packet::tcp(client, 6001, vip, 80), 64);
    let [syn_first, syn_later] = fragmented(&syn.build(), 24, 2);
    let stray_udp = with_payload(Packet::udp(client, 6002, vip, 9999), 1000);
    let [stray_udp_first, stray_udp_later] = fragmented(&stray_udp.build(), 512, 3);
    let stray_syn = with_payload(Packet::tcp(client, 6003, vip, 2222), 64);
    let [stray_syn_first, stray_syn_later] = fragmented(&stray_syn.build(), 24, 4);
    let [late_first, early_later] = fragmented(&udp.build(), 512, 5);
    let [short_first, short_later] = fragmented(&syn.build(), 8, 6);
    vec![
        Case::new(
            name("udp first fragment to a VIP port"),
            udp_first,
            TX,
            Out::flow(udp_vip, &udp),
            &counts(1, None),
        ),
        Case::new(
            name("udp later fragment follows it"),
            udp_later,
            TX,
            Out::flow(udp_vip, &udp),
            &counts(1, None),
        ),
        // The flow's whole datagrams reach the same backend as its
        // fragments.
        Case::new(
            name("a whole datagram of the flow"),
            udp.build(),
            TX,
            Out::flow(udp_vip, &udp),
            &counts(0, None),
        ),
        Case::new(
            name("syn in fragments to a VIP port, first"),
            syn_first,
            TX,
            Out::flow(tcp_vip, &syn),
            &counts(1, None),
        ),
        Case::new(
            name("syn in fragments to a VIP port, later"),
            syn_later,
            TX,
            Out::flow(tcp_vip, &syn),
            &counts(1, None),
        ),
        // A backend's service on a port that is no VIP's is out of reach.
        Case::new(
            name("udp first fragment to port 9999"),
            stray_udp_first,
            DROP,
            Out::Same,
            &counts(0, port_refused),
        ),
        Case::new(
            name("its later fragment"),
            stray_udp_later,
            DROP,
            Out::Same,
            &counts(0, unmatched),
        ),
        Case::new(
            name("syn first fragment to port 2222"),
            stray_syn_first,
            DROP,
            Out::Same,
            &counts(0, port_refused),
        ),
        Case::new(
            name("its later fragment"),
            stray_syn_later,
            DROP,
            Out::Same,
            &counts(0, unmatched),
        ),
        // Out of order: a later fragment before its first is dropped; the
        // first, then a retransmission of the later one, go through.
        Case::new(
            name("later fragment before the first"),
            early_later.clone(),
            DROP,
            Out::Same,
            &counts(0, unmatched),
        ),
        Case::new(
            name("the first, after it"),
            late_first,
            TX,
            Out::flow(udp_vip, &udp),
            &counts(1, None),
        ),
        Case::new(
            name("the later one again"),
            early_later,
            TX,
            Out::flow(udp_vip, &udp),
            &counts(1, None),
        ),
        // 8 bytes of a 20-byte TCP header: the flags may hide in the next
        // fragment (RFC 1858), so it is not admitted.
        Case::new(
            name("first fragment shorter than the tcp header"),
            short_first,
            DROP,
            Out::Same,
            &counts(0, Some((Stat::DROP_TRUNCATED, 1))),
        ),
        Case::new(
            name("its later fragment"),
            short_later,
            DROP,
            Out::Same,
            &counts(0, unmatched),
        ),
    ]
}

#[test]
fn fragments_follow_their_first_fragment_admitted_only_to_a_vip_port() {
    let mut all = cases("ipv4", CLIENT4, VIP4, 0, 1);
    all.extend(cases("ipv6", CLIENT6, VIP6, 2, 3));
    // Fragments to an address that carries no VIP pass untouched.
    for (family, client, other) in [
        ("ipv4", CLIENT4, "203.0.113.1".parse::<IpAddr>().unwrap()),
        ("ipv6", CLIENT6, "2001:db8:ff::1".parse().unwrap()),
    ] {
        let p = with_payload(Packet::udp(client, 7000, other, 53), 1000);
        for (i, frame) in fragmented(&p.build(), 512, 7).into_iter().enumerate() {
            let passed = [(Counter::Stat(Stat::PASS_NOT_VIP), 1)];
            let name = format!("{family} fragment {i} to another address");
            all.push(Case::new(name, frame, PASS, Out::Same, &passed));
        }
    }
    check("datapath_fragments", standard, &all);
}

#[test]
fn a_later_fragment_long_after_its_first_is_dropped() {
    privilege::run("datapath_fragment_window", || -> Result<()> {
        let mut f = standard()?;
        let udp = with_payload(Packet::udp(CLIENT4, 6100, VIP4, 53), 1000);
        let [first, later] = fragmented(&udp.build(), 512, 8);
        let admitted = Case::new("first", first, TX, Out::flow(1, &udp), &counts(1, None));
        run(&mut f, &[admitted])?;
        // The window is two seconds.
        std::thread::sleep(Duration::from_millis(2_200));
        let unmatched = Some((Stat::DROP_FRAGMENT_UNMATCHED, 1));
        let late = Case::new("later", later, DROP, Out::Same, &counts(0, unmatched));
        run(&mut f, &[late])?;
        Ok(())
    });
}
