//! Placement of new flows by a VIP's ring in the XDP program, through
//! BPF_PROG_TEST_RUN: source affinity, and two instances with the same
//! configuration and seed placing every flow alike. Each a table of cases
//! of `balancer_tests::case`.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr},
};

use anyhow::ensure;
use balancer::{config::Scheduler, datapath::action::TX};
use balancer_common::proto;
use balancer_tests::{
    case::{Case, Out, run},
    fixture::{
        Vip,
        standard::{CLIENT4, VIP4, backends4, standard},
    },
    packet::Packet,
    privilege,
};

#[test]
fn source_affinity_sends_every_flow_of_a_client_to_one_backend() {
    let vip = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 30));
    let cases: Vec<Case> = (1000..1200u16)
        .map(|port| {
            let p = Packet::tcp(CLIENT4, port, vip, 443);
            Case::new(format!("port {port}"), p.build(), TX, Out::flow(5, &p), &[])
        })
        .collect();
    privilege::run("datapath_source_hash", || {
        let mut f = standard()?;
        let mut source_hash = Vip::new(5, vip, 443, proto::TCP, backends4(30..40));
        source_hash.scheduler = Scheduler::SourceHash;
        f.put_vip(source_hash)?;
        let outputs = run(&mut f, &cases)?;
        let seen: BTreeSet<&[u8]> = outputs.iter().map(|out| &out[0..6]).collect();
        ensure!(
            seen.len() == 1,
            "one client reached {} backends",
            seen.len()
        );
        Ok(())
    });
}

#[test]
fn two_instances_with_the_same_config_and_seed_agree_on_every_flow() {
    let mut rng = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let cases: Vec<Case> = (0..10_000)
        .map(|i| {
            let r = next();
            let src = IpAddr::V4(Ipv4Addr::from((r >> 32) as u32));
            let p = Packet::tcp(src, (r & 0xffff) as u16, VIP4, 80);
            Case::new(format!("flow {i}"), p.build(), TX, Out::flow(0, &p), &[])
        })
        .collect();
    privilege::run("datapath_two_instances", || {
        let a = run(&mut standard()?, &cases)?;
        let b = run(&mut standard()?, &cases)?;
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            ensure!(x == y, "flow {i}: the instances picked different backends");
        }
        Ok(())
    });
}
