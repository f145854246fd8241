//! Properties of the XDP program on any input: random bytes and randomly
//! damaged valid packets never produce a verdict other than PASS, DROP, TX
//! or REDIRECT, never change the frame's length, and never change a byte
//! outside the two MAC addresses (and none at all unless forwarded).

use std::{
    cell::RefCell,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::Result;
use balancer::datapath::action;
use balancer_common::proto;
use balancer_tests::{
    fixture::{Backend, Fixture, Vip},
    packet::{self, Packet},
    privilege,
};
use proptest::{
    prelude::*,
    test_runner::{Config, TestCaseError, TestRunner},
};

const VIP4: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 10));
const VIP6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10));
const CLIENT4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));
const CLIENT6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 7));

fn fixture() -> Result<Fixture> {
    let mut f = Fixture::new(7)?;
    let b4 = |id: u32| Backend::new(id, IpAddr::V4(Ipv4Addr::new(10, 2, 0, id as u8 + 1)));
    let b6 = |id: u32| {
        Backend::new(
            id,
            IpAddr::V6(Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, id as u16 + 1)),
        )
    };
    for (index, addr, port, l4) in [(0, VIP4, 80, proto::TCP), (1, VIP4, 0, proto::UDP)] {
        f.put_vip(Vip::new(
            index,
            addr,
            port,
            l4,
            (index * 4..index * 4 + 3).map(b4).collect(),
        ))?;
    }
    for (index, addr, port, l4) in [(2, VIP6, 80, proto::TCP), (3, VIP6, 53, proto::UDP)] {
        f.put_vip(Vip::new(
            index,
            addr,
            port,
            l4,
            (index * 4..index * 4 + 3).map(b6).collect(),
        ))?;
    }
    Ok(f)
}

/// Valid frames of every kind the program handles, as seeds for mutation.
fn seeds() -> Vec<Vec<u8>> {
    let (IpAddr::V4(c4), IpAddr::V4(v4)) = (CLIENT4, VIP4) else {
        unreachable!()
    };
    let (IpAddr::V6(c6), IpAddr::V6(v6)) = (CLIENT6, VIP6) else {
        unreachable!()
    };
    let mut out = vec![
        Packet::tcp(CLIENT4, 1000, VIP4, 80).build(),
        Packet::udp(CLIENT4, 1000, VIP4, 5000).build(),
        Packet::tcp(CLIENT6, 1000, VIP6, 80).tagged(5).build(),
        Packet::udp(CLIENT6, 1000, VIP6, 53).build(),
        packet::ipv4_with_options(c4.octets(), v4.octets(), 1000, 80),
        packet::pmtu_error(
            IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1)),
            VIP4,
            80,
            CLIENT4,
            1000,
            1400,
        ),
        packet::pmtu_error(
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 1)),
            VIP6,
            80,
            CLIENT6,
            1000,
            1280,
        ),
    ];
    out.extend(packet::ipv4_fragments(c4.octets(), v4.octets(), 53));
    out.extend(packet::ipv6_fragments(c6.octets(), v6.octets(), 53));
    out
}

fn check(f: &mut Fixture, frame: &[u8]) -> Result<(), TestCaseError> {
    let out = f
        .datapath
        .test_run(frame, 0)
        .map_err(|e| TestCaseError::fail(format!("test run failed: {e:#}")))?;
    let allowed = [action::PASS, action::DROP, action::TX, action::REDIRECT];
    prop_assert!(
        allowed.contains(&out.verdict),
        "verdict {} for {frame:02x?}",
        out.verdict
    );
    prop_assert_eq!(out.packet.len(), frame.len(), "length changed");
    prop_assert_eq!(
        &out.packet[12..],
        &frame[12..],
        "bytes after the MACs changed"
    );
    if out.verdict == action::PASS || out.verdict == action::DROP {
        prop_assert_eq!(
            &out.packet[..12],
            &frame[..12],
            "MACs changed on a {} verdict",
            out.verdict
        );
    }
    Ok(())
}

#[test]
fn random_bytes_get_a_valid_verdict_and_stay_unchanged_outside_the_macs() -> Result<()> {
    if !privilege::check("datapath_fuzz_random") {
        return Ok(());
    }
    // TestRunner wants an `Fn`; test runs need the fixture mutably.
    let f = RefCell::new(fixture()?);
    let mut runner = TestRunner::new(Config {
        cases: 3000,
        ..Config::default()
    });
    runner
        .run(&prop::collection::vec(any::<u8>(), 14..300), |frame| {
            check(&mut f.borrow_mut(), &frame)
        })
        .map_err(|e| anyhow::anyhow!("{e}"))
}

#[test]
fn damaged_valid_packets_get_a_valid_verdict_and_stay_unchanged_outside_the_macs() -> Result<()> {
    if !privilege::check("datapath_fuzz_mutated") {
        return Ok(());
    }
    let f = RefCell::new(fixture()?);
    let seeds = seeds();
    let strategy = (
        0..seeds.len(),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        any::<prop::sample::Index>(),
        any::<bool>(),
    );
    let mut runner = TestRunner::new(Config {
        cases: 5000,
        ..Config::default()
    });
    runner
        .run(&strategy, |(seed, edits, cut, truncate)| {
            let mut frame = seeds[seed].clone();
            // Damage past the MACs, where parsing happens.
            for (at, value) in edits {
                let i = 12 + at.index(frame.len() - 12);
                frame[i] = value;
            }
            if truncate {
                frame.truncate(14 + cut.index(frame.len() - 13));
            }
            check(&mut f.borrow_mut(), &frame)
        })
        .map_err(|e| anyhow::anyhow!("{e}"))
}
