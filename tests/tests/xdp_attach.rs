//! First proof through the whole stack: the XDP program is loaded, attached
//! to a veth inside a namespace, counts real packets sent from another
//! namespace into its per-CPU map, and leaves nothing attached when it is
//! detached. No VIP is configured, so every packet passes.
//!
//! IPv6 is off on these links: neighbour discovery and MLD would add IP
//! packets of their own, and the counts here are exact.

use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use balancer::datapath::{AttachedMode, Datapath, Reasons, XdpMode};
use balancer_common::stats::{PacketCount, Stat};
use balancer_tests::{Lab, Netns, VethOptions, netns_test};
use nix::sys::signal::Signal;

const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const LB_V4: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
/// UDP payload size of every test datagram.
const PAYLOAD: usize = 100;
/// Ethernet (14) + IPv4 (20) + UDP (8) + payload.
const V4_FRAME: u64 = 14 + 20 + 8 + PAYLOAD as u64;

/// A client and a balancer host joined by one veth pair, IPv4 only.
fn two_hosts(lab: &Lab) -> Result<(Netns, Netns)> {
    let client = lab.netns("client")?;
    let lb = lab.netns("lb")?;
    for ns in [&client, &lb] {
        ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
        ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")?;
    }
    lab.veth((&client, "eth0"), (&lb, "eth0"), VethOptions::default())?;
    client.add_address("eth0", &format!("{CLIENT_V4}/24"))?;
    lb.add_address("eth0", &format!("{LB_V4}/24"))?;
    Ok((client, lb))
}

/// Sends `count` datagrams from `from` (a socket in one namespace) to `to`
/// (a socket bound in another) and checks that every one arrives, so the
/// program passed them all up the stack.
fn send_and_receive(from: &UdpSocket, to: &UdpSocket, count: usize) -> Result<()> {
    let target = to.local_addr()?;
    to.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = [0u8; 2048];
    for i in 0..count {
        let payload = [i as u8; PAYLOAD];
        from.send_to(&payload, target)?;
        let (n, _) = to
            .recv_from(&mut buf)
            .with_context(|| format!("datagram {i} of {count} to {target} never arrived"))?;
        ensure!(
            n == PAYLOAD && buf[..n] == payload,
            "datagram {i} arrived changed"
        );
    }
    Ok(())
}

fn udp_socket(ns: &Netns, addr: SocketAddr) -> Result<UdpSocket> {
    ns.run(|| UdpSocket::bind(addr))?
        .with_context(|| format!("cannot bind {addr} in {}", ns.name()))
}

/// The datagrams of the test pass as IP not for a VIP: the counter must
/// show exactly them.
fn expect_passed(reasons: &Reasons, n: usize) -> Result<()> {
    let passed = reasons.stat(Stat::PASS_NOT_VIP);
    let expected = PacketCount {
        packets: n as u64,
        bytes: n as u64 * V4_FRAME,
    };
    ensure!(
        passed == expected,
        "pass_not_vip is {passed:?}, expected {expected:?}"
    );
    Ok(())
}

#[test]
fn native_xdp_counts_real_packets_and_detaches() {
    netns_test("native_xdp_counts", Duration::from_secs(60), |lab| {
        let (client, lb) = two_hosts(lab)?;
        let mut datapath = lb.run(|| -> Result<Datapath> {
            let mut datapath = Datapath::load()?;
            let mode = datapath.attach("eth0", XdpMode::Native)?;
            ensure!(mode == AttachedMode::Native, "asked for native, got {mode}");
            Ok(datapath)
        })??;
        ensure!(
            lb.xdp_attachment("eth0")?.as_deref() == Some("xdp"),
            "ip link does not show a native XDP program on eth0"
        );

        const N: usize = 200;
        let rx = udp_socket(&lb, (LB_V4, 9000).into())?;
        let tx = udp_socket(&client, (CLIENT_V4, 0).into())?;
        send_and_receive(&tx, &rx, N)?;
        let reasons = datapath.reasons()?;
        expect_passed(&reasons, N)?;
        // ARP is the only other traffic on this link.
        ensure!(
            reasons.stat(Stat::PASS_NON_IP).packets >= 1,
            "ARP was not counted"
        );
        let dropped: u64 = Stat::ALL
            .iter()
            .filter(|s| s.name().starts_with("drop"))
            .map(|s| reasons.stat(*s).packets)
            .sum();
        ensure!(dropped == 0, "the program dropped packets: {reasons:?}");

        datapath.detach("eth0")?;
        ensure!(
            lb.xdp_attachment("eth0")?.is_none(),
            "XDP still attached after detach"
        );
        drop(datapath);
        ensure!(
            lb.xdp_attachment("eth0")?.is_none(),
            "XDP attached after the program was dropped"
        );
        Ok(())
    });
}

#[test]
fn generic_mode_is_selectable() {
    netns_test("generic_xdp", Duration::from_secs(60), |lab| {
        let (client, lb) = two_hosts(lab)?;
        let datapath = lb.run(|| -> Result<Datapath> {
            let mut datapath = Datapath::load()?;
            let mode = datapath.attach("eth0", XdpMode::Generic)?;
            ensure!(
                mode == AttachedMode::Generic,
                "asked for generic, got {mode}"
            );
            Ok(datapath)
        })??;
        ensure!(
            lb.xdp_attachment("eth0")?.as_deref() == Some("xdpgeneric"),
            "ip link does not show a generic XDP program on eth0"
        );
        const N: usize = 50;
        let rx = udp_socket(&lb, (LB_V4, 9000).into())?;
        let tx = udp_socket(&client, (CLIENT_V4, 0).into())?;
        send_and_receive(&tx, &rx, N)?;
        expect_passed(&datapath.reasons()?, N)?;
        drop(datapath);
        ensure!(
            lb.xdp_attachment("eth0")?.is_none(),
            "XDP attached after the program was dropped"
        );
        Ok(())
    });
}

#[test]
fn auto_mode_falls_back_to_generic_when_native_is_refused() {
    netns_test("auto_fallback", Duration::from_secs(60), |lab| {
        // Loopback has no driver XDP support, so native attach fails.
        let host = lab.netns("host")?;
        host.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
        let datapath = host.run(|| -> Result<Datapath> {
            let mut datapath = Datapath::load()?;
            let mode = datapath.attach("lo", XdpMode::Auto)?;
            ensure!(
                mode == AttachedMode::Generic,
                "auto on lo attached in {mode} mode"
            );
            Ok(datapath)
        })??;
        ensure!(host.xdp_attachment("lo")?.as_deref() == Some("xdpgeneric"));
        const N: usize = 20;
        let rx = udp_socket(&host, (Ipv4Addr::LOCALHOST, 9000).into())?;
        let tx = udp_socket(&host, (Ipv4Addr::LOCALHOST, 0).into())?;
        send_and_receive(&tx, &rx, N)?;
        expect_passed(&datapath.reasons()?, N)?;
        drop(datapath);
        ensure!(host.xdp_attachment("lo")?.is_none());
        Ok(())
    });
}

#[test]
fn native_only_mode_fails_clearly_where_the_driver_refuses() {
    netns_test("native_refused", Duration::from_secs(60), |lab| {
        let host = lab.netns("host")?;
        let err = host
            .run(|| -> Result<()> {
                let mut datapath = Datapath::load()?;
                datapath.attach("lo", XdpMode::Native)?;
                Ok(())
            })?
            .expect_err("native attach on lo must fail");
        let message = format!("{err:#}");
        ensure!(
            message.contains("lo") && message.contains("native"),
            "error does not name the interface and mode: {message}"
        );
        ensure!(
            host.xdp_attachment("lo")?.is_none(),
            "a failed attach left XDP on lo"
        );
        Ok(())
    });
}

#[test]
fn daemon_attaches_counts_and_leaves_forwarding_until_teardown() {
    netns_test("daemon_run", Duration::from_secs(60), |lab| {
        let (client, lb) = two_hosts(lab)?;
        let mut daemon = balancer_tests::daemon::start(
            lab,
            &lb,
            [
                "--interface",
                "eth0",
                "--xdp-mode",
                "native",
                "--stats-interval",
                "100ms",
            ],
        )?;
        ensure!(lb.xdp_attachment("eth0")?.as_deref() == Some("xdp"));

        const N: usize = 30;
        let rx = udp_socket(&lb, (LB_V4, 9000).into())?;
        let tx = udp_socket(&client, (CLIENT_V4, 0).into())?;
        send_and_receive(&tx, &rx, N)?;
        let expected = format!("pass_not_vip={N}/{}B", N as u64 * V4_FRAME);
        daemon.wait_for_output(Duration::from_secs(10), |out| out.contains(&expected))?;

        // SIGTERM leaves the datapath forwarding (pinned) ...
        daemon.signal(Signal::SIGTERM)?;
        let status = daemon.wait_timeout(Duration::from_secs(10))?;
        ensure!(
            status.success(),
            "daemon exited with {status}:\n{}",
            daemon.output()
        );
        ensure!(
            daemon.output().contains("leaving the datapath forwarding"),
            "{}",
            daemon.output()
        );
        ensure!(
            lb.xdp_attachment("eth0")?.as_deref() == Some("xdp"),
            "the datapath stopped with the daemon"
        );
        send_and_receive(&tx, &rx, 5)?;
        // ... until `balancer teardown` detaches and unpins everything.
        let pins = lab.pin_dir()?;
        let out = std::process::Command::new(balancer_tests::balancer_bin()?)
            .arg("teardown")
            .arg("--pin-path")
            .arg(&pins)
            .output()?;
        ensure!(
            out.status.success(),
            "teardown: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        ensure!(
            String::from_utf8_lossy(&out.stdout).contains("detached from eth0"),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        ensure!(
            lb.xdp_attachment("eth0")?.is_none(),
            "XDP still attached after teardown"
        );
        ensure!(
            !pins.exists(),
            "{} still exists after teardown",
            pins.display()
        );
        Ok(())
    });
}
