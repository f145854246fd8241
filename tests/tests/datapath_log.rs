//! The debug variant of the XDP program: every decision reaches userspace
//! through aya-log, and the daemon's `--datapath-log` prints it.

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::Mutex,
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use balancer::{
    config::Scheduler,
    datapath::{LoadOptions, action},
};
use balancer_common::proto;
use balancer_tests::{
    VethOptions,
    fixture::{Backend, Fixture, Vip, default_settings, flow_key},
    netns_test,
    packet::Packet,
    privilege,
};

/// Every record the `log` crate receives in this test binary.
static RECORDS: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        RECORDS.lock().unwrap().push(record.args().to_string());
    }
    fn flush(&self) {}
}

#[test]
fn the_debug_variant_logs_each_decision() -> Result<()> {
    if !privilege::check("datapath_decision_log") {
        return Ok(());
    }
    log::set_logger(&Capture).map_err(|e| anyhow::anyhow!("{e}"))?;
    log::set_max_level(log::LevelFilter::Trace);
    let options = LoadOptions {
        decision_log: true,
        ..LoadOptions::default()
    };
    let mut f = Fixture::with_options(default_settings(3), options)?;
    let vip = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 10));
    let backends = (0..3)
        .map(|id| Backend::new(id, IpAddr::V4(Ipv4Addr::new(10, 4, 0, id as u8 + 1))))
        .collect();
    f.put_vip(Vip {
        index: 0,
        addr: vip,
        port: 80,
        proto: proto::TCP,
        scheduler: Scheduler::Maglev,
        persistence: None,
        backends,
        access: false,
        limit: Default::default(),
        snat: true,
    })?;
    let mut log = f
        .datapath
        .take_logger()
        .context("the debug variant has no log")?;
    ensure!(
        f.datapath.take_logger().is_none(),
        "the log can be taken once"
    );

    let client = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    let want = f.expected_backend(0, &flow_key(client, 5555, vip, 80, proto::TCP));
    let syn = Packet::tcp(client, 5555, vip, 80);
    // The SYN and the ACK that makes the flow's entry, then a packet the
    // entry sends.
    ensure!(f.datapath.test_run(&syn.build(), 0)?.verdict == action::TX);
    for _ in 0..2 {
        let ack = syn.clone().established().build();
        ensure!(f.datapath.test_run(&ack, 0)?.verdict == action::TX);
    }
    let other = Packet::udp(client, 1, IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1)), 53).build();
    ensure!(f.datapath.test_run(&other, 0)?.verdict == action::PASS);
    log.flush();

    let records = RECORDS.lock().unwrap().clone();
    for expected in [
        "vip 0 matched, port 80".to_owned(),
        format!("flow miss: backend {want} by the ring"),
        format!("flow hit: vip 0 backend {want}"),
        "verdict 3 (tx)".to_owned(),
        "verdict 2 (pass_not_vip)".to_owned(),
    ] {
        ensure!(
            records.iter().any(|r| r.contains(&expected)),
            "no record contains {expected:?}; records: {records:#?}"
        );
    }
    Ok(())
}

#[test]
fn the_daemon_prints_datapath_decisions_with_datapath_log() {
    netns_test("daemon_datapath_log", Duration::from_secs(60), |lab| {
        let client = lab.netns("client")?;
        let lb = lab.netns("lb")?;
        lab.veth((&client, "eth0"), (&lb, "eth0"), VethOptions::default())?;
        client.add_address("eth0", "10.97.0.1/24")?;
        lb.add_address("eth0", "10.97.0.2/24")?;
        let mut daemon =
            balancer_tests::daemon::start(lab, &lb, ["--interface", "eth0", "--datapath-log"])?;
        let rx = lb.run(|| std::net::UdpSocket::bind("10.97.0.2:9000"))??;
        let tx = client.run(|| std::net::UdpSocket::bind("10.97.0.1:0"))??;
        tx.send_to(b"hello", rx.local_addr()?)?;
        daemon.wait_for_output(Duration::from_secs(10), |out| {
            out.contains("balancer_xdp") && out.contains("verdict 2 (pass_not_vip)")
        })?;
        Ok(())
    });
}
