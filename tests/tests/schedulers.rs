//! The schedulers and session persistence in the XDP program, through
//! BPF_PROG_TEST_RUN on the real compiled object: new flows in, the backend
//! each reached (by the rewritten destination MAC) and the connection
//! counts out. Rings are built by the daemon's own code (the fixture).

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use balancer::{
    config::{Persistence, Scheduler},
    datapath::action,
};
use balancer_common::proto;
use balancer_tests::{
    fixture::{Backend, Fixture, Vip, backend_mac, stay_on_one_cpu},
    packet::Packet,
    privilege,
};

const VIP4: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 20));
const VIP6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x20));
const CLIENT4: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9));

fn privileged(name: &str) -> bool {
    privilege::check(name)
}

/// Backends 0..n of weight `weights[i]`.
fn backends(weights: &[u32]) -> Vec<Backend> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &w)| {
            let mut b = Backend::new(i as u32, IpAddr::V4(Ipv4Addr::new(10, 2, 0, i as u8 + 1)));
            b.weight = w;
            b
        })
        .collect()
}

fn vip(scheduler: Scheduler, backends: Vec<Backend>) -> Vip {
    let mut vip = Vip::new(0, VIP4, 80, proto::TCP, backends);
    vip.scheduler = scheduler;
    vip
}

/// Runs `packet` and returns the backend id its destination MAC names
/// (the program sent it with XDP_TX).
fn send(f: &mut Fixture, packet: &Packet) -> Result<u32> {
    let out = f.datapath.test_run(&packet.build(), 0)?;
    ensure!(
        out.verdict == action::TX,
        "verdict {} instead of XDP_TX",
        out.verdict
    );
    let mac: [u8; 6] = out.packet[..6].try_into()?;
    (0..64)
        .find(|&id| backend_mac(id) == mac)
        .context("the frame went to no known backend")
}

/// A new TCP connection from `client:port`: its SYN, then the ACK that
/// moves it to the connection table (where the least-* schedulers count
/// it), which must follow the SYN.
fn new_flow(f: &mut Fixture, client: IpAddr, port: u16, vip: IpAddr) -> Result<u32> {
    let syn = Packet::tcp(client, port, vip, 80);
    let id = send(f, &syn)?;
    let ack = send(f, &syn.established())?;
    ensure!(ack == id, "the ACK went to {ack}, the SYN to {id}");
    Ok(id)
}

#[test]
fn round_robin_shares_are_exact_over_every_cycle_of_weights() -> Result<()> {
    if !privileged("schedulers_round_robin") {
        return Ok(());
    }
    stay_on_one_cpu()?;
    let mut f = Fixture::new(1)?;
    let weights = [3, 2, 1];
    f.put_vip(vip(Scheduler::RoundRobin, backends(&weights)))?;
    let picks: Vec<u32> = (0..60)
        .map(|i| new_flow(&mut f, CLIENT4, 20_000 + i, VIP4))
        .collect::<Result<_>>()?;
    // Every window of one cycle (6 new flows) holds each backend as often
    // as its weight, wherever it starts.
    for (start, window) in picks.windows(6).enumerate() {
        for (id, &weight) in weights.iter().enumerate() {
            let n = window.iter().filter(|&&p| p == id as u32).count();
            ensure!(
                n == weight as usize,
                "window at {start}: backend {id} {n} times, weight {weight}: {picks:?}"
            );
        }
    }
    // In the smooth order the daemon built, not bunched.
    let cycle = f.ring(0)[1..].to_vec();
    ensure!(cycle.len() == 6);
    let at = picks[..6]
        .iter()
        .zip(cycle.iter().cycle().skip_while(|&&id| id != picks[0]))
        .all(|(a, b)| a == b);
    ensure!(
        at,
        "picks {:?} do not follow the cycle {cycle:?}",
        &picks[..6]
    );
    Ok(())
}

#[test]
fn round_robin_a_repeated_syn_of_a_live_flow_keeps_its_backend() -> Result<()> {
    if !privileged("schedulers_round_robin_syn") {
        return Ok(());
    }
    stay_on_one_cpu()?;
    let mut f = Fixture::new(1)?;
    f.put_vip(vip(Scheduler::RoundRobin, backends(&[1, 1, 1])))?;
    let first = new_flow(&mut f, CLIENT4, 40_000, VIP4)?;
    let mut others = BTreeMap::<u32, u32>::new();
    for i in 1..=6 {
        // The same SYN again (retransmitted, or spoofed with the client's
        // 5-tuple) between new flows that move the cursor on.
        let again = new_flow(&mut f, CLIENT4, 40_000, VIP4)?;
        ensure!(
            again == first,
            "SYN {i} of the flow moved it from {first} to {again}"
        );
        *others
            .entry(new_flow(&mut f, CLIENT4, 40_000 + i, VIP4)?)
            .or_default() += 1;
    }
    ensure!(
        others.len() == 3,
        "round robin stopped rotating: {others:?}"
    );
    Ok(())
}

#[test]
fn least_connections_sends_new_flows_away_from_a_loaded_backend_and_counts_to_the_close()
-> Result<()> {
    if !privileged("schedulers_least_connections") {
        return Ok(());
    }
    let mut f = Fixture::new(2)?;
    f.put_vip(vip(Scheduler::LeastConnections, backends(&[100, 100, 100])))?;
    // Backend 0 holds many open connections.
    f.datapath.correct_backend_conns(0, 1_000)?;
    let mut ports = Vec::new();
    let mut placed = BTreeMap::<u32, u32>::new();
    for i in 0..120 {
        let port = 30_000 + i;
        let id = new_flow(&mut f, CLIENT4, port, VIP4)?;
        *placed.entry(id).or_default() += 1;
        ports.push((port, id));
    }
    ensure!(
        !placed.contains_key(&0),
        "the loaded backend got new flows: {placed:?}"
    );
    // The other two share evenly: the better of two choices keeps their
    // counts within a few of each other.
    let (one, two) = (placed[&1] as i64, placed[&2] as i64);
    ensure!((one - two).abs() <= 12, "uneven: {placed:?}");
    ensure!(f.datapath.backend_load(1)?.conns == placed[&1] as u64);
    // Packets of the flows do not count again; FIN and RST end them, once.
    for (i, (port, id)) in ports.iter().enumerate() {
        let p = Packet::tcp(CLIENT4, *port, VIP4, 80);
        ensure!(send(&mut f, &p.clone().established())? == *id);
        let end = if i % 2 == 0 {
            p.clone().fin()
        } else {
            p.clone().rst()
        };
        ensure!(send(&mut f, &end)? == *id);
        ensure!(send(&mut f, &p.fin())? == *id, "the close still reaches it");
    }
    for id in [1, 2] {
        let conns = f.datapath.backend_load(id)?.conns;
        ensure!(conns == 0, "backend {id} still counts {conns}");
    }
    ensure!(f.datapath.backend_load(0)?.conns == 1_000);
    // A flow whose first packet already ends it is never counted.
    let late = Packet::tcp(CLIENT4, 40_000, VIP4, 80).fin();
    let id = send(&mut f, &late)?;
    ensure!(f.datapath.backend_load(id)?.conns == 0);
    Ok(())
}

#[test]
fn least_latency_prefers_the_fast_backend_until_its_connections_outweigh_it() -> Result<()> {
    if !privileged("schedulers_least_latency") {
        return Ok(());
    }
    let mut f = Fixture::new(3)?;
    f.put_vip(vip(Scheduler::LeastLatency, backends(&[100, 100])))?;
    f.datapath.set_backend_latency(0, 10_000)?;
    f.datapath.set_backend_latency(1, 200)?;
    // 200 µs × (n + 1) stays below 10 ms × 1 for the first 49 flows.
    for i in 0..40 {
        let id = new_flow(&mut f, CLIENT4, 20_000 + i, VIP4)?;
        ensure!(id == 1, "flow {i} went to the slow backend");
    }
    // With many connections on it, the fast one loses.
    f.datapath.correct_backend_conns(1, 1_000)?;
    ensure!(new_flow(&mut f, CLIENT4, 21_000, VIP4)? == 0);
    Ok(())
}

#[test]
fn a_down_or_drained_backend_never_gets_a_new_flow_whatever_the_scheduler() -> Result<()> {
    if !privileged("schedulers_down_backend") {
        return Ok(());
    }
    for scheduler in [
        Scheduler::Maglev,
        Scheduler::SourceHash,
        Scheduler::RoundRobin,
        Scheduler::LeastConnections,
        Scheduler::LeastLatency,
    ] {
        let mut f = Fixture::new(4)?;
        let mut list = backends(&[100, 100, 100, 100]);
        list[1].up = false;
        list[2].weight = 0;
        let mut v = vip(scheduler, list);
        v.persistence = Some(Persistence {
            timeout: Duration::from_secs(3600),
            ipv6_prefix: 64,
        });
        f.put_vip(v.clone())?;
        for i in 0..200u16 {
            let client = IpAddr::V4(Ipv4Addr::new(192, 0, 2, (i % 250) as u8 + 1));
            let id = new_flow(&mut f, client, 20_000 + i, VIP4)?;
            ensure!(
                id == 0 || id == 3,
                "{scheduler:?}: new flow {i} went to backend {id}"
            );
        }
        // The least-* schedulers also avoid a backend gone down before the
        // daemon rebuilt the list.
        if matches!(
            scheduler,
            Scheduler::LeastConnections | Scheduler::LeastLatency
        ) {
            v.persistence = None;
            f.put_vip(v.clone())?;
            let mut gone = v.backends[3].clone();
            gone.up = false;
            f.set_backend(0, &gone)?;
            for i in 0..50u16 {
                let id = new_flow(&mut f, CLIENT4, 30_000 + i, VIP4)?;
                ensure!(id == 0, "{scheduler:?}: new flow {i} went to backend {id}");
            }
        }
    }
    Ok(())
}

#[test]
fn persistence_keeps_a_client_on_its_backend_across_ring_changes_until_it_goes_quiet() -> Result<()>
{
    if !privileged("schedulers_persistence") {
        return Ok(());
    }
    let mut f = Fixture::new(5)?;
    let mut v = vip(Scheduler::Maglev, backends(&[100, 100, 100]));
    v.persistence = Some(Persistence {
        timeout: Duration::from_secs(3600),
        ipv6_prefix: 64,
    });
    f.put_vip(v.clone())?;
    let first = new_flow(&mut f, CLIENT4, 20_000, VIP4)?;
    for i in 1..40 {
        let id = new_flow(&mut f, CLIENT4, 20_000 + i, VIP4)?;
        ensure!(id == first, "flow {i} of the client left backend {first}");
    }
    // The ring changes: a backend joins, weights change.
    v.backends.push(backends(&[1, 1, 1, 400])[3].clone());
    v.backends[(first as usize + 1) % 3].weight = 300;
    f.put_vip(v.clone())?;
    for i in 40..80 {
        ensure!(new_flow(&mut f, CLIENT4, 20_000 + i, VIP4)? == first);
    }
    // Its backend goes down (and the daemon rebuilds the ring): the client
    // moves, and sticks to the new one.
    v.backends[first as usize].up = false;
    f.put_vip(v)?;
    let moved = new_flow(&mut f, CLIENT4, 21_000, VIP4)?;
    ensure!(moved != first);
    for i in 1..20 {
        ensure!(new_flow(&mut f, CLIENT4, 21_000 + i, VIP4)? == moved);
    }

    // A short timeout: once the client is quiet for longer, the ring
    // places its flows again.
    let mut f = Fixture::new(5)?;
    let mut v = vip(Scheduler::Maglev, backends(&[100, 100, 100]));
    v.persistence = Some(Persistence {
        timeout: Duration::from_millis(300),
        ipv6_prefix: 64,
    });
    f.put_vip(v)?;
    let first = new_flow(&mut f, CLIENT4, 20_000, VIP4)?;
    let elsewhere = (20_001..30_000u16)
        .find(|&port| {
            let key = balancer_tests::fixture::flow_key(CLIENT4, port, VIP4, 80, proto::TCP);
            f.expected_backend(0, &key) != first
        })
        .context("some port hashes elsewhere")?;
    ensure!(new_flow(&mut f, CLIENT4, elsewhere, VIP4)? == first);
    std::thread::sleep(Duration::from_millis(700));
    let key = balancer_tests::fixture::flow_key(CLIENT4, elsewhere + 1, VIP4, 80, proto::TCP);
    let expected = f.expected_backend(0, &key);
    ensure!(
        new_flow(&mut f, CLIENT4, elsewhere + 1, VIP4)? == expected,
        "after the timeout the ring places the flow"
    );
    Ok(())
}

#[test]
fn ipv6_clients_of_one_prefix_share_their_persistence() -> Result<()> {
    if !privileged("schedulers_persistence_v6") {
        return Ok(());
    }
    stay_on_one_cpu()?;
    let mut f = Fixture::new(6)?;
    let list: Vec<Backend> = (0..4)
        .map(|i| {
            Backend::new(
                i,
                IpAddr::V6(Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, i as u16 + 1)),
            )
        })
        .collect();
    let mut v = Vip::new(0, VIP6, 80, proto::TCP, list);
    v.scheduler = Scheduler::RoundRobin;
    v.persistence = Some(Persistence {
        timeout: Duration::from_secs(3600),
        ipv6_prefix: 56,
    });
    f.put_vip(v)?;
    let host = |sub: u16, iid: u16| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 7, sub, 0, 0, 0, iid));
    let first = new_flow(&mut f, host(0x1000, 1), 20_000, VIP6)?;
    // Same /56 (the fourth group's high byte), other hosts and subnets.
    for (i, client) in [host(0x1000, 2), host(0x1001, 9), host(0x10ff, 3)]
        .into_iter()
        .enumerate()
    {
        ensure!(new_flow(&mut f, client, 20_001 + i as u16, VIP6)? == first);
    }
    // Another /56 is scheduled on its own: round robin moves on.
    ensure!(new_flow(&mut f, host(0x2000, 1), 20_010, VIP6)? != first);
    Ok(())
}
