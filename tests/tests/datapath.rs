//! The XDP program packet by packet, through BPF_PROG_TEST_RUN on the real
//! compiled object: a built packet in, the exact verdict, bytes and
//! counters out.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Result, ensure};
use balancer::{
    config::Scheduler,
    datapath::{Reasons, action},
};
use balancer_common::{
    proto,
    stats::{Event, Stat},
};
use balancer_tests::{
    fixture::{Backend, Fixture, Vip, backend_mac, flow_key},
    packet::{self, LB_MAC, Packet, with_macs},
    privilege,
};

const VIP4: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 10));
const VIP6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10));
const CLIENT4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
const CLIENT6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 7));

fn backends4(ids: std::ops::Range<u32>) -> Vec<Backend> {
    ids.map(|id| Backend::new(id, IpAddr::V4(Ipv4Addr::new(10, 1, 0, id as u8 + 1))))
        .collect()
}

fn backends6(ids: std::ops::Range<u32>) -> Vec<Backend> {
    ids.map(|id| {
        Backend::new(
            id,
            IpAddr::V6(Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, id as u16 + 1)),
        )
    })
    .collect()
}

/// A fixture with four VIPs: TCP and UDP on port 80/53 of an IPv4 and an
/// IPv6 address, three backends each.
fn fixture() -> Result<Fixture> {
    let mut f = Fixture::new(0x5eed)?;
    f.put_vip(Vip {
        index: 0,
        addr: VIP4,
        port: 80,
        proto: proto::TCP,
        scheduler: Scheduler::Maglev,
        persistence: None,
        backends: backends4(0..3),
    })?;
    f.put_vip(Vip {
        index: 1,
        addr: VIP4,
        port: 53,
        proto: proto::UDP,
        scheduler: Scheduler::Maglev,
        persistence: None,
        backends: backends4(3..6),
    })?;
    f.put_vip(Vip {
        index: 2,
        addr: VIP6,
        port: 80,
        proto: proto::TCP,
        scheduler: Scheduler::Maglev,
        persistence: None,
        backends: backends6(6..9),
    })?;
    f.put_vip(Vip {
        index: 3,
        addr: VIP6,
        port: 53,
        proto: proto::UDP,
        scheduler: Scheduler::Maglev,
        persistence: None,
        backends: backends6(9..12),
    })?;
    Ok(f)
}

/// Runs `frame` and checks verdict and output bytes.
fn expect(f: &mut Fixture, name: &str, frame: &[u8], verdict: u32, out: &[u8]) -> Result<()> {
    let got = f.datapath.test_run(frame, 0)?;
    ensure!(
        got.verdict == verdict,
        "{name}: verdict {} instead of {verdict}",
        got.verdict
    );
    ensure!(
        got.packet == out,
        "{name}: output bytes differ\n got: {:02x?}\nwant: {out:02x?}",
        got.packet
    );
    Ok(())
}

/// Counter growth between two readings, per reason.
fn grew(before: &Reasons, after: &Reasons, stat: Stat) -> u64 {
    after.stat(stat).packets - before.stat(stat).packets
}

fn event_grew(before: &Reasons, after: &Reasons, event: Event) -> u64 {
    after.event(event).packets - before.event(event).packets
}

fn privileged(name: &str) -> bool {
    privilege::check(name)
}

#[test]
fn tcp_and_udp_to_a_vip_go_to_the_ring_backend_with_only_the_macs_rewritten() -> Result<()> {
    if !privileged("datapath_vip_forwarding") {
        return Ok(());
    }
    let mut f = fixture()?;
    let cases = [
        (
            "ipv4 tcp",
            Packet::tcp(CLIENT4, 40001, VIP4, 80),
            0,
            proto::TCP,
        ),
        (
            "ipv4 udp",
            Packet::udp(CLIENT4, 40002, VIP4, 53),
            1,
            proto::UDP,
        ),
        (
            "ipv6 tcp",
            Packet::tcp(CLIENT6, 40003, VIP6, 80),
            2,
            proto::TCP,
        ),
        (
            "ipv6 udp",
            Packet::udp(CLIENT6, 40004, VIP6, 53),
            3,
            proto::UDP,
        ),
        (
            "802.1q ipv4 tcp",
            Packet::tcp(CLIENT4, 40005, VIP4, 80).tagged(7),
            0,
            proto::TCP,
        ),
        (
            "802.1q ipv6 udp",
            Packet::udp(CLIENT6, 40006, VIP6, 53).tagged(4094),
            3,
            proto::UDP,
        ),
    ];
    for (name, p, vip, l4) in cases {
        let frame = p.build();
        let want = f.expected_backend(vip, &flow_key(p.src, p.src_port, p.dst, p.dst_port, l4));
        let before = f.datapath.reasons()?;
        let vip_before = f.datapath.vip_counters(vip)?;
        let backend_before = f.datapath.backend_counters(want)?;
        expect(
            &mut f,
            name,
            &frame,
            action::TX,
            &with_macs(&frame, backend_mac(want), LB_MAC),
        )?;
        let after = f.datapath.reasons()?;
        ensure!(
            grew(&before, &after, Stat::TX) == 1,
            "{name}: tx not counted"
        );
        ensure!(
            event_grew(&before, &after, Event::NEW_FLOW) == 1,
            "{name}: new flow not counted"
        );
        let vip_after = f.datapath.vip_counters(vip)?;
        ensure!(
            vip_after.packets == vip_before.packets + 1
                && vip_after.bytes == vip_before.bytes + frame.len() as u64
                && vip_after.new_flows == vip_before.new_flows + 1,
            "{name}: VIP counters {vip_before:?} -> {vip_after:?}"
        );
        let backend_after = f.datapath.backend_counters(want)?;
        ensure!(
            backend_after.packets == backend_before.packets + 1
                && backend_after.bytes == backend_before.bytes + frame.len() as u64
                && backend_after.new_flows == backend_before.new_flows + 1,
            "{name}: backend counters {backend_before:?} -> {backend_after:?}"
        );
        // The second packet of the flow hits the connection table.
        let next = p.clone().established().build();
        expect(
            &mut f,
            name,
            &next,
            action::TX,
            &with_macs(&next, backend_mac(want), LB_MAC),
        )?;
        let again = f.datapath.reasons()?;
        ensure!(
            event_grew(&after, &again, Event::NEW_FLOW) == 0,
            "{name}: an established packet counted as new"
        );
        let backend_again = f.datapath.backend_counters(want)?;
        ensure!(
            backend_again.packets == backend_after.packets + 1
                && backend_again.new_flows == backend_after.new_flows,
            "{name}: established packet on the backend: {backend_after:?} -> {backend_again:?}"
        );
    }
    Ok(())
}

#[test]
fn traffic_not_for_a_vip_passes_untouched() -> Result<()> {
    if !privileged("datapath_not_vip") {
        return Ok(());
    }
    let mut f = fixture()?;
    let other4 = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 11));
    let cases = [
        ("other address", Packet::tcp(CLIENT4, 1, other4, 80).build()),
        (
            "vip address, other port",
            Packet::tcp(CLIENT4, 1, VIP4, 443).build(),
        ),
        (
            "vip port, other protocol",
            Packet::udp(CLIENT4, 1, VIP4, 80).build(),
        ),
        ("ipv6 other port", Packet::udp(CLIENT6, 1, VIP6, 54).build()),
    ];
    for (name, frame) in cases {
        let before = f.datapath.reasons()?;
        expect(&mut f, name, &frame, action::PASS, &frame)?;
        let after = f.datapath.reasons()?;
        ensure!(
            grew(&before, &after, Stat::PASS_NOT_VIP) == 1,
            "{name}: pass_not_vip not counted"
        );
    }
    Ok(())
}

#[test]
fn ipv4_options_are_skipped_by_ihl() -> Result<()> {
    if !privileged("datapath_ipv4_options") {
        return Ok(());
    }
    let mut f = fixture()?;
    let IpAddr::V4(client) = CLIENT4 else {
        unreachable!()
    };
    let IpAddr::V4(vip) = VIP4 else {
        unreachable!()
    };
    let frame = packet::ipv4_with_options(client.octets(), vip.octets(), 40100, 80);
    ensure!(frame[14] == 0x46, "the test frame must have IHL 6");
    let want = f.expected_backend(0, &flow_key(CLIENT4, 40100, VIP4, 80, proto::TCP));
    expect(
        &mut f,
        "ipv4 options",
        &frame,
        action::TX,
        &with_macs(&frame, backend_mac(want), LB_MAC),
    )
}

#[test]
fn a_port_zero_vip_takes_every_port() -> Result<()> {
    if !privileged("datapath_wildcard") {
        return Ok(());
    }
    let mut f = fixture()?;
    let any = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 20));
    f.put_vip(Vip {
        index: 4,
        addr: any,
        port: 0,
        proto: proto::TCP,
        scheduler: Scheduler::Maglev,
        persistence: None,
        backends: backends4(20..23),
    })?;
    for port in [1u16, 80, 443, 65535] {
        let p = Packet::tcp(CLIENT4, 3333, any, port);
        let frame = p.build();
        let want = f.expected_backend(4, &flow_key(CLIENT4, 3333, any, port, proto::TCP));
        expect(
            &mut f,
            "wildcard",
            &frame,
            action::TX,
            &with_macs(&frame, backend_mac(want), LB_MAC),
        )?;
    }
    // Other protocols on that address are not the VIP's.
    let udp = Packet::udp(CLIENT4, 3333, any, 80).build();
    expect(&mut f, "wildcard udp", &udp, action::PASS, &udp)
}

#[test]
fn source_affinity_sends_every_flow_of_a_client_to_one_backend() -> Result<()> {
    if !privileged("datapath_source_hash") {
        return Ok(());
    }
    let mut f = fixture()?;
    let vip = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 30));
    f.put_vip(Vip {
        index: 5,
        addr: vip,
        port: 443,
        proto: proto::TCP,
        scheduler: Scheduler::SourceHash,
        persistence: None,
        backends: backends4(30..40),
    })?;
    let mut seen = std::collections::BTreeSet::new();
    for port in 1000..1200u16 {
        let frame = Packet::tcp(CLIENT4, port, vip, 443).build();
        let out = f.datapath.test_run(&frame, 0)?;
        ensure!(out.verdict == action::TX);
        seen.insert(out.packet[0..6].to_vec());
    }
    ensure!(
        seen.len() == 1,
        "one client reached {} backends",
        seen.len()
    );
    Ok(())
}

#[test]
fn truncated_packets_never_get_a_wrong_verdict_and_are_counted() -> Result<()> {
    if !privileged("datapath_truncation") {
        return Ok(());
    }
    let mut f = fixture()?;
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
            let truncated = &frame[..cut];
            let before = f.datapath.reasons()?;
            let out = f.datapath.test_run(truncated, 0)?;
            let after = f.datapath.reasons()?;
            ensure!(
                out.packet == truncated,
                "{name} cut at {cut}: the program changed the bytes"
            );
            if cut < ip_start + ip_header {
                // The addresses are unreadable: not known to be for a VIP.
                ensure!(
                    out.verdict == action::PASS,
                    "{name} cut at {cut}: verdict {}",
                    out.verdict
                );
                let counted = grew(&before, &after, Stat::PASS_UNPARSED)
                    + grew(&before, &after, Stat::PASS_NON_IP);
                ensure!(counted == 1, "{name} cut at {cut}: pass not counted");
            } else {
                ensure!(
                    out.verdict == action::DROP,
                    "{name} cut at {cut}: verdict {}",
                    out.verdict
                );
                ensure!(
                    grew(&before, &after, Stat::DROP_TRUNCATED) == 1,
                    "{name} cut at {cut}: drop not counted"
                );
            }
        }
    }
    Ok(())
}

#[test]
fn malformed_headers_for_a_vip_are_dropped_and_counted() -> Result<()> {
    if !privileged("datapath_malformed") {
        return Ok(());
    }
    let mut f = fixture()?;
    let good = Packet::tcp(CLIENT4, 6000, VIP4, 80).build();
    let mut bad_ihl = good.clone();
    bad_ihl[14] = 0x44; // IHL 4
    let mut bad_version = good.clone();
    bad_version[14] = 0x55;
    let mut bad_doff = good.clone();
    bad_doff[14 + 20 + 12] = 0x40; // TCP data offset 4
    for (name, frame) in [
        ("ihl 4", bad_ihl),
        ("version 5", bad_version),
        ("tcp doff 4", bad_doff),
    ] {
        let before = f.datapath.reasons()?;
        expect(&mut f, name, &frame, action::DROP, &frame)?;
        let after = f.datapath.reasons()?;
        ensure!(
            grew(&before, &after, Stat::DROP_MALFORMED) == 1,
            "{name}: not counted as malformed"
        );
    }
    // The same damage on a packet for another address passes.
    let other = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1));
    let mut frame = Packet::tcp(CLIENT4, 6000, other, 80).build();
    frame[14] = 0x44;
    expect(&mut f, "ihl 4, not a vip", &frame, action::PASS, &frame)
}

#[test]
fn fragments_reach_one_backend_chosen_by_addresses() -> Result<()> {
    if !privileged("datapath_fragments") {
        return Ok(());
    }
    let mut f = fixture()?;
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
    for (name, fragments, vip, src, dst) in sets {
        let want = f.expected_fragment_backend(vip, src, dst);
        for (i, frame) in fragments.iter().enumerate() {
            let before = f.datapath.reasons()?;
            expect(
                &mut f,
                name,
                frame,
                action::TX,
                &with_macs(frame, backend_mac(want), LB_MAC),
            )?;
            let after = f.datapath.reasons()?;
            ensure!(
                event_grew(&before, &after, Event::FRAGMENT) == 1,
                "{name} fragment {i} not counted"
            );
        }
    }
    Ok(())
}

#[test]
fn path_mtu_errors_reach_the_backend_of_the_quoted_flow() -> Result<()> {
    if !privileged("datapath_pmtu") {
        return Ok(());
    }
    let mut f = fixture()?;
    let router4 = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 254));
    let router6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 1));
    for (name, client, vip, router, index) in [
        ("icmp", CLIENT4, VIP4, router4, 0),
        ("icmpv6", CLIENT6, VIP6, router6, 2),
    ] {
        // The flow exists: its SYN went to a backend.
        let syn = Packet::tcp(client, 41000, vip, 80).build();
        let owner = f.datapath.test_run(&syn, 0)?.packet[0..6].to_vec();
        let want = f.expected_backend(index, &flow_key(client, 41000, vip, 80, proto::TCP));
        ensure!(owner == backend_mac(want));
        let error = packet::pmtu_error(router, vip, 80, client, 41000, 1400);
        let before = f.datapath.reasons()?;
        expect(
            &mut f,
            name,
            &error,
            action::TX,
            &with_macs(&error, backend_mac(want), LB_MAC),
        )?;
        let after = f.datapath.reasons()?;
        ensure!(
            event_grew(&before, &after, Event::ICMP_PMTU) == 1,
            "{name}: not counted"
        );
        // An echo request to the VIP is not the balancer's business.
        let echo = {
            let mut out = Vec::new();
            let b = etherparse::PacketBuilder::ethernet2(packet::CLIENT_MAC, LB_MAC);
            match (client, vip) {
                (IpAddr::V4(c), IpAddr::V4(v)) => b
                    .ipv4(c.octets(), v.octets(), 64)
                    .icmpv4_echo_request(1, 1)
                    .write(&mut out, b"ping")?,
                (IpAddr::V6(c), IpAddr::V6(v)) => b
                    .ipv6(c.octets(), v.octets(), 64)
                    .icmpv6_echo_request(1, 1)
                    .write(&mut out, b"ping")?,
                _ => unreachable!(),
            }
            out
        };
        expect(&mut f, "echo", &echo, action::PASS, &echo)?;
    }
    Ok(())
}

/// A client port whose flow to `vip:port` the rings of VIP `index` in
/// `before` and `after` place on different backends.
fn flow_moved_by(
    before: &Fixture,
    index: u32,
    after: &Fixture,
    vip: IpAddr,
    port: u16,
    l4: u8,
) -> Option<u16> {
    (1024..60000u16).find(|&client_port| {
        let key = flow_key(CLIENT4, client_port, vip, port, l4);
        before.expected_backend(index, &key) != after.expected_backend(index, &key)
    })
}

#[test]
fn established_flows_keep_their_backend_when_the_ring_changes() -> Result<()> {
    if !privileged("datapath_ring_change") {
        return Ok(());
    }
    let mut f = fixture()?;
    let mut grown = Fixture::new(0x5eed)?;
    let mut vip = Vip {
        index: 0,
        addr: VIP4,
        port: 80,
        proto: proto::TCP,
        scheduler: Scheduler::Maglev,
        persistence: None,
        backends: backends4(0..3),
    };
    vip.backends
        .push(Backend::new(50, IpAddr::V4(Ipv4Addr::new(10, 1, 0, 99))));
    grown.put_vip(vip.clone())?;
    let port = flow_moved_by(&f, 0, &grown, VIP4, 80, proto::TCP)
        .expect("some flow moves when a backend joins");
    let p = Packet::tcp(CLIENT4, port, VIP4, 80);
    let key = flow_key(CLIENT4, port, VIP4, 80, proto::TCP);
    let old = f.expected_backend(0, &key);
    let frame = p.build();
    expect(
        &mut f,
        "before",
        &frame,
        action::TX,
        &with_macs(&frame, backend_mac(old), LB_MAC),
    )?;
    // A fourth backend joins: the ring changes under the flow.
    f.put_vip(vip)?;
    let new = f.expected_backend(0, &key);
    ensure!(new != old && new == 50);
    let next = p.clone().established().build();
    expect(
        &mut f,
        "after",
        &next,
        action::TX,
        &with_macs(&next, backend_mac(old), LB_MAC),
    )
}

#[test]
fn a_flow_fails_over_when_its_backend_goes_down_and_draining_keeps_it() -> Result<()> {
    if !privileged("datapath_failover_drain") {
        return Ok(());
    }
    let mut f = fixture()?;
    let p = Packet::tcp(CLIENT4, 42000, VIP4, 80);
    let key = flow_key(CLIENT4, 42000, VIP4, 80, proto::TCP);
    let owner = f.expected_backend(0, &key);
    let frame = p.build();
    expect(
        &mut f,
        "first",
        &frame,
        action::TX,
        &with_macs(&frame, backend_mac(owner), LB_MAC),
    )?;

    // Draining (weight 0, still up): the ring loses the backend, the flow
    // keeps it, new flows never get it.
    let mut vip = Vip {
        index: 0,
        addr: VIP4,
        port: 80,
        proto: proto::TCP,
        scheduler: Scheduler::Maglev,
        persistence: None,
        backends: backends4(0..3),
    };
    vip.backends[owner as usize].weight = 0;
    f.put_vip(vip.clone())?;
    let next = p.clone().established().build();
    expect(
        &mut f,
        "draining",
        &next,
        action::TX,
        &with_macs(&next, backend_mac(owner), LB_MAC),
    )?;
    for port in 1..2000u16 {
        let out = f
            .datapath
            .test_run(&Packet::tcp(CLIENT4, port, VIP4, 80).build(), 0)?;
        ensure!(
            out.packet[0..6] != backend_mac(owner),
            "new flow from port {port} went to a draining backend"
        );
    }

    // Down: the flow moves to the ring's choice, and that is counted.
    vip.backends[owner as usize].up = false;
    f.put_vip(vip)?;
    let moved_to = f.expected_backend(0, &key);
    ensure!(moved_to != owner);
    let before = f.datapath.reasons()?;
    expect(
        &mut f,
        "failover",
        &next,
        action::TX,
        &with_macs(&next, backend_mac(moved_to), LB_MAC),
    )?;
    let after = f.datapath.reasons()?;
    ensure!(
        event_grew(&before, &after, Event::FAILOVER) == 1,
        "failover not counted"
    );
    // And it stays there.
    expect(
        &mut f,
        "after failover",
        &next,
        action::TX,
        &with_macs(&next, backend_mac(moved_to), LB_MAC),
    )
}

#[test]
fn idle_flows_expire_and_pick_again() -> Result<()> {
    if !privileged("datapath_idle") {
        return Ok(());
    }
    let mut f = Fixture::with_settings(balancer_common::settings::Settings {
        hash_seed: 1,
        ring_size: balancer_tests::fixture::RING_SIZE,
        tcp_idle_ns: 3_600_000_000_000,
        udp_idle_ns: 200_000_000,
    })?;
    let mut vip = Vip {
        index: 0,
        addr: VIP4,
        port: 53,
        proto: proto::UDP,
        scheduler: Scheduler::Maglev,
        persistence: None,
        backends: backends4(0..3),
    };
    f.put_vip(vip.clone())?;
    let mut grown = Fixture::new(1)?;
    vip.backends
        .push(Backend::new(60, IpAddr::V4(Ipv4Addr::new(10, 1, 0, 98))));
    grown.put_vip(vip.clone())?;
    let port = flow_moved_by(&f, 0, &grown, VIP4, 53, proto::UDP).expect("some flow moves");
    let frame = Packet::udp(CLIENT4, port, VIP4, 53).build();
    let key = flow_key(CLIENT4, port, VIP4, 53, proto::UDP);
    let old = f.expected_backend(0, &key);
    expect(
        &mut f,
        "first",
        &frame,
        action::TX,
        &with_macs(&frame, backend_mac(old), LB_MAC),
    )?;
    f.put_vip(vip)?;
    expect(
        &mut f,
        "live",
        &frame,
        action::TX,
        &with_macs(&frame, backend_mac(old), LB_MAC),
    )?;
    std::thread::sleep(std::time::Duration::from_millis(400));
    let new = f.expected_backend(0, &key);
    expect(
        &mut f,
        "expired",
        &frame,
        action::TX,
        &with_macs(&frame, backend_mac(new), LB_MAC),
    )
}

#[test]
fn an_unresolved_backend_is_dropped_and_counted_never_sent() -> Result<()> {
    if !privileged("datapath_unresolved") {
        return Ok(());
    }
    let mut f = fixture()?;
    let mut backends = backends4(70..71);
    backends[0].resolved = false;
    let vip = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 40));
    f.put_vip(Vip {
        index: 6,
        addr: vip,
        port: 80,
        proto: proto::TCP,
        scheduler: Scheduler::Maglev,
        persistence: None,
        backends,
    })?;
    let frame = Packet::tcp(CLIENT4, 1, vip, 80).build();
    let before = f.datapath.reasons()?;
    expect(&mut f, "unresolved", &frame, action::DROP, &frame)?;
    let after = f.datapath.reasons()?;
    ensure!(
        grew(&before, &after, Stat::DROP_NO_NEIGHBOUR) == 1,
        "unresolved neighbour not counted"
    );
    Ok(())
}

#[test]
fn two_instances_with_the_same_config_and_seed_agree_on_every_flow() -> Result<()> {
    if !privileged("datapath_two_instances") {
        return Ok(());
    }
    let mut a = fixture()?;
    let mut b = fixture()?;
    let mut rng = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for i in 0..10_000 {
        let r = next();
        let src = IpAddr::V4(Ipv4Addr::from((r >> 32) as u32));
        let port = (r & 0xffff) as u16;
        let frame = Packet::tcp(src, port, VIP4, 80).build();
        let (x, y) = (
            a.datapath.test_run(&frame, 0)?,
            b.datapath.test_run(&frame, 0)?,
        );
        ensure!(x.verdict == action::TX, "flow {i}: verdict {}", x.verdict);
        ensure!(
            x.packet == y.packet,
            "flow {i}: the instances picked different backends"
        );
    }
    Ok(())
}

#[test]
fn a_backend_behind_another_interface_is_reached_by_redirect() {
    balancer_tests::netns_test(
        "datapath_redirect",
        std::time::Duration::from_secs(60),
        |lab| {
            let ns = lab.netns("lb")?;
            let peer = lab.netns("peer")?;
            lab.veth((&ns, "in0"), (&peer, "p0"), Default::default())?;
            lab.veth((&ns, "out0"), (&peer, "p1"), Default::default())?;
            ns.run(|| -> Result<()> {
                let ingress = nix::net::if_::if_nametoindex("in0")?;
                let egress = nix::net::if_::if_nametoindex("out0")?;
                let mut f = fixture()?;
                f.datapath.add_egress(egress)?;
                let mut backends = backends4(80..81);
                backends[0].ifindex = egress;
                let vip = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 50));
                f.put_vip(Vip {
                    index: 7,
                    addr: vip,
                    port: 80,
                    proto: proto::TCP,
                    scheduler: Scheduler::Maglev,
                    persistence: None,
                    backends,
                })?;
                let frame = Packet::tcp(CLIENT4, 1, vip, 80).build();
                let before = f.datapath.reasons()?;
                let out = f.datapath.test_run(&frame, ingress)?;
                ensure!(out.verdict == action::REDIRECT, "verdict {}", out.verdict);
                ensure!(
                    out.packet == with_macs(&frame, backend_mac(80), LB_MAC),
                    "wrong rewrite"
                );
                let after = f.datapath.reasons()?;
                ensure!(
                    grew(&before, &after, Stat::REDIRECT) == 1,
                    "redirect not counted"
                );
                // Through the ingress interface itself: XDP_TX.
                let mut same = backends4(81..82);
                same[0].ifindex = ingress;
                let vip2 = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 51));
                f.put_vip(Vip {
                    index: 8,
                    addr: vip2,
                    port: 80,
                    proto: proto::TCP,
                    scheduler: Scheduler::Maglev,
                    persistence: None,
                    backends: same,
                })?;
                let out = f
                    .datapath
                    .test_run(&Packet::tcp(CLIENT4, 1, vip2, 80).build(), ingress)?;
                ensure!(out.verdict == action::TX, "verdict {}", out.verdict);
                Ok(())
            })?
        },
    );
}

#[test]
fn a_non_syn_packet_without_an_entry_is_placed_by_the_ring_and_remembered() -> Result<()> {
    if !privileged("datapath_non_syn_unknown") {
        return Ok(());
    }
    // A flow that another balancer host started (after an ECMP change)
    // arrives mid-stream: the ring places it where that host did.
    let mut f = fixture()?;
    let p = Packet::tcp(CLIENT6, 43000, VIP6, 80).established();
    let key = flow_key(CLIENT6, 43000, VIP6, 80, proto::TCP);
    let want = f.expected_backend(2, &key);
    let frame = p.build();
    let before = f.datapath.reasons()?;
    expect(
        &mut f,
        "mid-stream",
        &frame,
        action::TX,
        &with_macs(&frame, backend_mac(want), LB_MAC),
    )?;
    let after = f.datapath.reasons()?;
    ensure!(
        event_grew(&before, &after, Event::NEW_FLOW) == 1,
        "the flow was not remembered as new"
    );
    expect(
        &mut f,
        "again",
        &frame,
        action::TX,
        &with_macs(&frame, backend_mac(want), LB_MAC),
    )?;
    let again = f.datapath.reasons()?;
    ensure!(
        event_grew(&after, &again, Event::NEW_FLOW) == 0,
        "the flow's entry was not used"
    );
    Ok(())
}
