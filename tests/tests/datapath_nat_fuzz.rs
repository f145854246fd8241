//! Properties of the NAT program on damaged packets: valid packets of NAT
//! connections both ways (after their connections opened), with random
//! bytes changed past the MACs or cut short, never get a verdict other than
//! PASS, DROP, TX or REDIRECT, never change length, and when they are
//! rewritten and sent with their checksums right, leave with their
//! checksums right, as computed from scratch: the program's in-place
//! updates never break a checksum. And a forwarded frame whose checksums
//! were wrong stays wrong: NAT never launders a corrupted packet.

use std::{cell::RefCell, net::IpAddr};

use anyhow::Result;
use balancer::datapath::action;
use balancer_tests::{
    fixture::{
        Fixture, backend_mac, flow_key, nat,
        standard::{CLIENT4, CLIENT6, VIP4, VIP6},
        stay_on_one_cpu,
    },
    packet::{CLIENT_MAC, LB_MAC, checksums_ok, datagram, segment},
    privilege,
};
use proptest::{
    prelude::*,
    test_runner::{Config, TestCaseError, TestRunner},
};

/// The fixture with a connection opened and answered for each of VIPs 0
/// to 3, and the frames of both ways of each: the seeds.
fn setup() -> Result<(Fixture, Vec<Vec<u8>>)> {
    let mut f = nat::nat()?;
    let mut seeds = Vec::new();
    for (index, client, vip) in [
        (0, CLIENT4, VIP4),
        (1, CLIENT4, VIP4),
        (2, CLIENT6, VIP6),
        (3, CLIENT6, VIP6),
    ] {
        let spec = nat::vip(index);
        let key = flow_key(client, 50000, vip, spec.port, spec.proto);
        let id = f.expected_backend(index, &key);
        let backend = spec.backends.iter().find(|b| b.id == id).unwrap();
        let backend = (backend.addr, backend.port.unwrap_or(spec.port));
        let to_client = (CLIENT_MAC, LB_MAC);
        let to_lb = (backend_mac(id), LB_MAC);
        let tcp = spec.proto == balancer_common::proto::TCP;
        let (open, data) = if tcp {
            (
                segment(
                    to_client,
                    (client, 50000),
                    (vip, spec.port),
                    0x02,
                    1,
                    0,
                    b"",
                ),
                segment(
                    to_client,
                    (client, 50000),
                    (vip, spec.port),
                    0x18,
                    2,
                    9,
                    b"data",
                ),
            )
        } else {
            (
                datagram(to_client, (client, 50000), (vip, spec.port), b"q"),
                datagram(to_client, (client, 50000), (vip, spec.port), b"query"),
            )
        };
        // Open it, then answer the source it got, as what left says.
        let out = f.datapath.test_run(&open, 0)?;
        anyhow::ensure!(out.verdict == action::TX, "{index}: {out:?}");
        let source = source(&out.packet);
        let reply = if tcp {
            segment(to_lb, backend, source, 0x12, 8, 2, b"")
        } else {
            datagram(to_lb, backend, source, b"answer")
        };
        let out = f.datapath.test_run(&reply, 0)?;
        anyhow::ensure!(out.verdict == action::TX, "{index} reply: {out:?}");
        seeds.extend([open, data, reply]);
    }
    Ok((f, seeds))
}

/// The L3 start of a frame without a VLAN tag.
const L3: usize = 14;

/// The source address and port of an untagged IPv4 or IPv6 TCP or UDP
/// frame.
fn source(frame: &[u8]) -> (IpAddr, u16) {
    let (addr, l4) = if frame[L3] >> 4 == 4 {
        let octets: [u8; 4] = frame[L3 + 12..L3 + 16].try_into().unwrap();
        (IpAddr::from(octets), L3 + usize::from(frame[L3] & 0x0f) * 4)
    } else {
        let octets: [u8; 16] = frame[L3 + 8..L3 + 24].try_into().unwrap();
        (IpAddr::from(octets), L3 + 40)
    };
    (addr, u16::from_be_bytes([frame[l4], frame[l4 + 1]]))
}

fn check(f: &mut Fixture, frame: &[u8]) -> Result<(), TestCaseError> {
    let out = f
        .datapath
        .test_run(frame, 0)
        .map_err(|e| TestCaseError::fail(format!("test run failed: {e:#}")))?;
    let allowed = [action::PASS, action::DROP, action::TX, action::REDIRECT];
    prop_assert!(allowed.contains(&out.verdict), "verdict {}", out.verdict);
    prop_assert_eq!(out.packet.len(), frame.len(), "length changed");
    if out.verdict == action::TX || out.verdict == action::REDIRECT {
        let before = checksums_ok(frame);
        let after = checksums_ok(&out.packet);
        prop_assert_eq!(
            before,
            after,
            "checksums {:?} in, {:?} out:\n in {:02x?}\nout {:02x?}",
            before,
            after,
            frame,
            out.packet
        );
    } else {
        prop_assert_eq!(&out.packet, frame, "a frame not sent was changed");
    }
    Ok(())
}

#[test]
fn damaged_nat_packets_get_a_valid_verdict_and_keep_their_checksums_right_or_wrong() -> Result<()> {
    if !privilege::check("datapath_nat_fuzz") {
        return Ok(());
    }
    stay_on_one_cpu()?;
    let (f, seeds) = setup()?;
    let f = RefCell::new(f);
    // Undamaged first: every seed goes through with its checksums right.
    for seed in &seeds {
        check(&mut f.borrow_mut(), seed).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let strategy = (
        0..seeds.len(),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        any::<prop::sample::Index>(),
        any::<bool>(),
    );
    let mut runner = TestRunner::new(Config {
        cases: 3000,
        ..Config::default()
    });
    runner
        .run(&strategy, |(seed, edits, cut, truncate)| {
            let mut frame = seeds[seed].clone();
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
