//! The benchmarks' load generator and counting sink, proved with real
//! traffic: the generator sends frames out of a veth in namespace `a`
//! (BPF_PROG_TEST_RUN in live-frames mode), and namespace `b` counts them
//! with the sink or receives them on a UDP socket, which only takes
//! datagrams with valid headers and checksums. Frame by frame, plain test
//! runs check that every flow's frame is exactly what etherparse builds for
//! its source port, whatever the recycled page held before.
//!
//! IPv6 is off on the veth links: the sink's pass counter and the UDP
//! statistics then see only the test's traffic.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{Result, ensure};
use balancer::datapath::action;
use balancer_bench::{Generator, Sink};
use balancer_common::stats::PacketCount;
use balancer_tests::{
    Lab, Netns, VethOptions, netns_test,
    packet::{Packet, with_macs},
    privilege,
};
use nix::sys::socket::{setsockopt, sockopt::RcvBufForce};

const A_V4: Ipv4Addr = Ipv4Addr::new(10, 97, 0, 1);
const B_V4: Ipv4Addr = Ipv4Addr::new(10, 97, 0, 2);
/// Destination port of every generated datagram.
const PORT: u16 = 9000;
/// Source port of the first flow.
const BASE_PORT: u16 = 40000;
/// UDP payload: with Ethernet (14), IPv4 (20) and UDP (8) headers, a
/// 64-byte frame.
const PAYLOAD: usize = 22;
const FRAME_LEN: u64 = 14 + 20 + 8 + PAYLOAD as u64;

/// Namespaces `a` and `b` joined by a veth pair (`eth0` at both ends),
/// IPv4 only, with the MACs of `a`'s and `b`'s ends.
fn two_hosts(lab: &Lab) -> Result<(Netns, Netns, [u8; 6], [u8; 6])> {
    let a = lab.netns("a")?;
    let b = lab.netns("b")?;
    for ns in [&a, &b] {
        ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
        ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
    }
    lab.veth((&a, "eth0"), (&b, "eth0"), VethOptions::default())?;
    a.add_address("eth0", &format!("{A_V4}/24"))?;
    b.add_address("eth0", &format!("{B_V4}/24"))?;
    let (a_mac, b_mac) = (a.mac("eth0")?, b.mac("eth0")?);
    Ok((a, b, a_mac, b_mac))
}

/// The payload of every generated datagram.
fn payload() -> Vec<u8> {
    (0..PAYLOAD as u8)
        .map(|i| i.wrapping_mul(7) ^ 0x5a)
        .collect()
}

/// The UDP frame of flow `src_port` from `a` to `b`'s port [`PORT`].
fn udp_frame(a_mac: [u8; 6], b_mac: [u8; 6], src_port: u16) -> Vec<u8> {
    let mut packet = Packet::udp(A_V4.into(), src_port, B_V4.into(), PORT);
    packet.payload = payload();
    with_macs(&packet.build(), b_mac, a_mac)
}

/// Sends `frames` frames out of `a`'s `eth0` from inside `a`, and prints
/// the rate the generator reached.
fn send(a: &Netns, generator: &mut Generator, frames: u32, batch: u32) -> Result<()> {
    let sent = a.run(|| -> Result<_> {
        let ifindex = nix::net::if_::if_nametoindex("eth0")?;
        Ok(generator.send(ifindex, frames, batch)?)
    })??;
    println!(
        "generator: {} frames of {FRAME_LEN} bytes in {:?}: {:.2} Mframes/s (kernel: {:?} per frame, batch {batch})",
        sent.frames,
        sent.elapsed,
        sent.rate() / 1e6,
        sent.per_frame,
    );
    let generated = generator.generated()?;
    ensure!(
        generated == u64::from(frames),
        "the generator ran {generated} times for {frames} frames"
    );
    Ok(())
}

/// Reads `read` until it gives the same value twice 100 ms apart (the
/// receiving side's NAPI runs after the sender flushed), for at most 5 s.
fn settled(read: impl Fn() -> Result<PacketCount>) -> Result<PacketCount> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = read()?;
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = read()?;
        if now == last || Instant::now() > deadline {
            return Ok(now);
        }
        last = now;
    }
}

#[test]
fn the_sink_counts_what_the_generator_sends() {
    netns_test("loadgen_sink", Duration::from_secs(60), |lab| {
        let (a, b, a_mac, b_mac) = two_hosts(lab)?;
        let sink = b.run(|| Sink::attach("eth0", Some(PORT)))??;
        let mut generator = Generator::load(&udp_frame(a_mac, b_mac, BASE_PORT), 16)?;
        const N: u32 = 100_000;
        send(&a, &mut generator, N, 64)?;
        let counted = settled(|| Ok(sink.count()?))?;
        let passed = sink.passed()?;
        println!(
            "sink: {} of {N} frames counted ({:.2} %), {} bytes; {} other frames passed",
            counted.packets,
            counted.packets as f64 * 100.0 / f64::from(N),
            counted.bytes,
            passed.packets,
        );
        ensure!(
            counted.packets >= u64::from(N) * 9 / 10 && counted.packets <= u64::from(N),
            "the sink counted {} frames of {N} sent (expected 90 to 100 %)",
            counted.packets
        );
        ensure!(
            counted.bytes == counted.packets * FRAME_LEN,
            "the sink counted {} bytes for {} frames of {FRAME_LEN} bytes",
            counted.bytes,
            counted.packets
        );
        Ok(())
    });
}

#[test]
fn generated_datagrams_reach_a_udp_socket_from_every_flow() {
    netns_test("loadgen_socket", Duration::from_secs(60), |lab| {
        let (a, b, a_mac, b_mac) = two_hosts(lab)?;
        // Another port: the sink passes the generated frames to the stack.
        let sink = b.run(|| Sink::attach("eth0", Some(PORT + 1)))??;
        let socket = b.run(|| -> Result<UdpSocket> {
            let socket = UdpSocket::bind((B_V4, PORT))?;
            // Room for every datagram: each holds a page of the test run.
            setsockopt(&socket, RcvBufForce, &(64 << 20))?;
            Ok(socket)
        })??;
        const FLOWS: u16 = 8;
        const N: u32 = 2_000;
        let csum_errors_before = b.snmp("Udp", "InCsumErrors")?;
        let mut generator = Generator::load(&udp_frame(a_mac, b_mac, BASE_PORT), u32::from(FLOWS))?;
        send(&a, &mut generator, N, 64)?;

        socket.set_read_timeout(Some(Duration::from_millis(500)))?;
        let mut buf = [0u8; 2048];
        let mut ports = BTreeSet::new();
        let mut received = 0u32;
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            ensure!(
                buf[..n] == payload()[..],
                "datagram {received} from {from} has {n} bytes {:?}",
                &buf[..n]
            );
            ensure!(from.ip() == IpAddr::V4(A_V4), "datagram from {from}");
            ports.insert(from.port());
            received += 1;
        }
        let csum_errors_after = b.snmp("Udp", "InCsumErrors")?;
        println!(
            "socket: {received} of {N} datagrams, source ports {ports:?}; UDP InCsumErrors {} -> {}",
            csum_errors_before, csum_errors_after
        );
        ensure!(
            ports == (BASE_PORT..BASE_PORT + FLOWS).collect(),
            "datagrams came from source ports {ports:?}, expected {BASE_PORT} to {}",
            BASE_PORT + FLOWS - 1
        );
        ensure!(
            received >= N * 9 / 10,
            "the socket received {received} datagrams of {N} sent"
        );
        ensure!(
            csum_errors_after == csum_errors_before,
            "the UDP stack of b saw {} checksum errors",
            csum_errors_after - csum_errors_before
        );
        ensure!(
            sink.count()?.packets == 0,
            "the sink counted frames to another port"
        );
        ensure!(
            sink.passed()?.packets >= u64::from(received),
            "the sink passed fewer frames than the socket received"
        );
        Ok(())
    });
}

/// Every kind of frame the generator takes, with the source port of its
/// first flow.
fn kinds() -> Vec<(&'static str, Packet)> {
    let a6 = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1));
    let b6 = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2));
    let with_payload = |mut p: Packet| {
        p.payload = payload();
        p
    };
    vec![
        (
            "UDP over IPv4",
            with_payload(Packet::udp(A_V4.into(), BASE_PORT, B_V4.into(), PORT)),
        ),
        (
            "UDP over IPv6",
            with_payload(Packet::udp(a6, BASE_PORT, b6, PORT)),
        ),
        (
            "TCP over IPv4",
            with_payload(Packet::tcp(A_V4.into(), BASE_PORT, B_V4.into(), 80)),
        ),
        (
            "TCP over IPv6",
            with_payload(Packet::tcp(a6, 65530, b6, 80).established()),
        ),
    ]
}

/// Source port of a frame (Ethernet, then IPv4 without options or IPv6).
fn src_port(frame: &[u8]) -> u16 {
    let l4 = if frame[12..14] == [0x86, 0xdd] {
        54
    } else {
        34
    };
    u16::from_be_bytes([frame[l4], frame[l4 + 1]])
}

#[test]
fn every_flow_is_the_template_with_its_port_and_valid_checksums() {
    if !privilege::check("loadgen_frames") {
        return;
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    for (kind, packet) in kinds() {
        let base = packet.src_port;
        let flows = u32::from(u16::MAX - base) + 1;
        let flows = flows.min(6);
        let template = packet.build();
        let mut generator = Generator::load(&template, flows).expect(kind);
        // The frame a recycled page may hold: every header byte changed.
        let mut dirty = template.clone();
        let headers = template.len() - packet.payload.len();
        dirty[..headers].iter_mut().for_each(|b| *b = !*b);
        // Each CPU has its own cursor: one of them runs a whole cycle.
        let mut seen = BTreeSet::new();
        for run in 0..flows * cpus {
            let out = generator.test_run(&dirty).expect(kind);
            assert_eq!(out.verdict, action::TX, "{kind}, run {run}");
            let port = src_port(&out.packet);
            assert!(
                (base..=base + (flows - 1) as u16).contains(&port),
                "{kind}: source port {port}"
            );
            let mut expected = packet.clone();
            expected.src_port = port;
            assert_eq!(
                out.packet,
                expected.build(),
                "{kind}, run {run}: not the frame of port {port}"
            );
            seen.insert(port);
        }
        assert_eq!(seen.len() as u32, flows, "{kind}: ports seen {seen:?}");
    }
}

#[test]
fn udp_over_ipv4_without_a_checksum_stays_without() {
    if !privilege::check("loadgen_no_checksum") {
        return;
    }
    let mut template = udp_frame([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2], BASE_PORT);
    template[40..42].copy_from_slice(&[0, 0]);
    let mut generator = Generator::load(&template, 4).expect("load");
    for _ in 0..8 {
        let out = generator.test_run(&template).expect("test run");
        assert_eq!(out.packet[40..42], [0, 0], "the UDP checksum was set");
        let mut expected = template.clone();
        expected[34..36].copy_from_slice(&out.packet[34..36]);
        assert_eq!(out.packet, expected);
    }
}

#[test]
fn frames_the_generator_cannot_rewrite_are_refused() {
    let packet = Packet::udp(A_V4.into(), 65535, B_V4.into(), PORT).build();
    let err = Generator::load(&packet, 2)
        .err()
        .expect("two flows from port 65535");
    assert!(err.to_string().contains("65535"), "{err}");
    let arp = [0u8; 60];
    let err = Generator::load(&arp, 1).err().expect("not IP");
    assert!(err.to_string().contains("EtherType"), "{err}");
}
