//! State of new flows in the XDP program, through BPF_PROG_TEST_RUN: a SYN
//! to a hashing VIP leaves none, a first packet to a VIP that keeps its
//! choice goes to the handshake table and its next packet moves it to the
//! connection table, a mid-stream segment neither table knows leaves none,
//! and the insert budget holds new entries back. Each case checks the
//! verdict, the backend and the counters; the tables are read between
//! cases.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use anyhow::{Result, ensure};
use balancer::{config::Scheduler, datapath::action::TX};
use balancer_common::{flow::FlowKey, proto, settings::Settings, stats::Event};
use balancer_tests::{
    case::{Case, Counter, Out, run},
    fixture::{
        Fixture, Vip, default_settings,
        standard::{self, CLIENT4, SEED, VIP4},
        stay_on_one_cpu,
    },
    packet::Packet,
    privilege,
};

/// The address of the VIPs that keep their choice from the first packet.
const KEEPING: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 30));
/// VIP indexes of the fixture: the standard Maglev VIPs 0 (TCP) and 1
/// (UDP), then on [`KEEPING`] round robin over TCP port 80, round robin
/// over UDP port 53 and least connections over TCP port 81.
const RR_TCP: u32 = 4;
const RR_UDP: u32 = 5;
const LC_TCP: u32 = 6;

/// The standard Maglev VIPs 0 and 1 and the three VIPs on [`KEEPING`],
/// with `settings`.
fn fixture(settings: Settings) -> Result<Fixture> {
    let mut f = Fixture::with_settings(settings)?;
    f.put_vip(standard::vip(0))?;
    f.put_vip(standard::vip(1))?;
    for (index, port, proto, scheduler) in [
        (RR_TCP, 80, proto::TCP, Scheduler::RoundRobin),
        (RR_UDP, 53, proto::UDP, Scheduler::RoundRobin),
        (LC_TCP, 81, proto::TCP, Scheduler::LeastConnections),
    ] {
        let ids = 20 + 3 * index..23 + 3 * index;
        let mut vip = Vip::new(index, KEEPING, port, proto, standard::backends4(ids));
        vip.scheduler = scheduler;
        f.put_vip(vip)?;
    }
    Ok(f)
}

fn ev(event: Event, n: u64) -> (Counter, u64) {
    (Counter::Event(event), n)
}

/// The key of `packet`'s flow.
fn key(packet: &Packet) -> FlowKey {
    let Out::Flow { key, .. } = Out::flow(0, packet) else {
        unreachable!()
    };
    key
}

/// The backend the connection table holds for `key`, if any.
fn in_flows(f: &Fixture, key: &FlowKey) -> Result<Option<u32>> {
    Ok(f.datapath
        .flows()?
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, s)| s.backend))
}

/// The backend the handshake table holds for `key`, if any.
fn in_handshakes(f: &Fixture, key: &FlowKey) -> Result<Option<u32>> {
    Ok(f.datapath
        .handshakes()?
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, s)| s.backend))
}

/// Runs one case.
fn step(
    f: &mut Fixture,
    name: &str,
    packet: &Packet,
    out: Out,
    counts: &[(Counter, u64)],
) -> Result<()> {
    run(f, &[Case::new(name, packet.build(), TX, out, counts)]).map(drop)
}

/// The `n`th backend (from 0) of the round-robin cycle of VIP `index`: the
/// backend its `n`th new flow gets on a CPU whose cursor never moved.
fn cycle(f: &Fixture, index: u32, n: usize) -> u32 {
    let ring = f.ring(index);
    ring[1 + n % ring[0] as usize]
}

#[test]
fn a_syn_to_a_hashing_vip_leaves_no_state_and_the_flows_next_packet_makes_its_entry() {
    privilege::run("datapath_hash_syn_stateless", || {
        let mut f = fixture(default_settings(SEED))?;
        let syn = Packet::tcp(CLIENT4, 41000, VIP4, 80);
        let k = key(&syn);
        let out = Out::flow(0, &syn);
        let new = |n| {
            [
                ev(Event::NEW_FLOW, n),
                ev(Event::FLOW_INSERT, 0),
                ev(Event::HANDSHAKE, 0),
            ]
        };
        step(&mut f, "syn", &syn, out, &new(1))?;
        ensure!(in_flows(&f, &k)?.is_none(), "the SYN made an entry");
        ensure!(in_handshakes(&f, &k)?.is_none(), "the SYN made a handshake");
        // Retransmitted: placed alike, and still nothing.
        step(&mut f, "syn again", &syn, out, &new(1))?;
        ensure!(f.datapath.flows()?.is_empty() && f.datapath.handshakes()?.is_empty());
        // The handshake's ACK makes the entry, and is no new flow.
        let ack = syn.clone().established();
        let inserted = [ev(Event::NEW_FLOW, 0), ev(Event::FLOW_INSERT, 1)];
        step(&mut f, "ack", &ack, out, &inserted)?;
        ensure!(in_flows(&f, &k)? == out.backend(&f));
        step(&mut f, "ack again", &ack, out, &[ev(Event::FLOW_INSERT, 0)])?;
        // A RST of a flow the table does not know ends it: no entry.
        let rst = Packet::tcp(CLIENT4, 41001, VIP4, 80).rst();
        let none = [ev(Event::FLOW_INSERT, 0), ev(Event::NEW_FLOW, 0)];
        step(&mut f, "rst", &rst, Out::flow(0, &rst), &none)?;
        ensure!(in_flows(&f, &key(&rst))?.is_none());
        // UDP has no handshake: its first datagram makes the entry.
        let dgram = Packet::udp(CLIENT4, 41002, VIP4, 53);
        let out = Out::flow(1, &dgram);
        let both = [ev(Event::NEW_FLOW, 1), ev(Event::FLOW_INSERT, 1)];
        step(&mut f, "datagram", &dgram, out, &both)?;
        ensure!(in_flows(&f, &key(&dgram))? == out.backend(&f));
        Ok(())
    });
}

#[test]
fn a_round_robin_flow_keeps_its_backend_in_the_handshake_table_until_its_next_packet_promotes_it() {
    privilege::run("datapath_handshake_promotion", || {
        stay_on_one_cpu()?;
        let mut f = fixture(default_settings(SEED))?;
        let syn = Packet::tcp(CLIENT4, 42000, KEEPING, 80);
        let k = key(&syn);
        let id = cycle(&f, RR_TCP, 0);
        let first = [
            ev(Event::NEW_FLOW, 1),
            ev(Event::HANDSHAKE, 1),
            ev(Event::FLOW_INSERT, 0),
            (Counter::VipNewFlows(RR_TCP), 1),
        ];
        step(&mut f, "syn", &syn, Out::Backend(id), &first)?;
        ensure!(in_handshakes(&f, &k)? == Some(id), "no handshake entry");
        ensure!(
            in_flows(&f, &k)?.is_none(),
            "the SYN went to the connection table"
        );
        // Another new flow moves the cursor on...
        let other = Packet::tcp(CLIENT4, 42001, KEEPING, 80);
        let to = Out::Backend(cycle(&f, RR_TCP, 1));
        step(&mut f, "other syn", &other, to, &[])?;
        ensure!(
            cycle(&f, RR_TCP, 2) != id,
            "the next new flow would get it anyway"
        );
        // ...and the retransmitted SYN still gets its own backend.
        let again = [
            ev(Event::NEW_FLOW, 0),
            ev(Event::HANDSHAKE, 0),
            ev(Event::SYN_KEPT, 0),
            (Counter::VipNewFlows(RR_TCP), 0),
        ];
        step(&mut f, "syn again", &syn, Out::Backend(id), &again)?;
        // The ACK moves the flow to the connection table.
        let ack = syn.clone().established();
        let promoted = [
            ev(Event::PROMOTED, 1),
            ev(Event::FLOW_INSERT, 1),
            ev(Event::NEW_FLOW, 0),
            ev(Event::UNKNOWN_MIDSTREAM, 0),
        ];
        step(&mut f, "ack", &ack, Out::Backend(id), &promoted)?;
        ensure!(in_flows(&f, &k)? == Some(id), "not in the connection table");
        ensure!(
            in_handshakes(&f, &k)?.is_none(),
            "still in the handshake table"
        );
        step(
            &mut f,
            "ack again",
            &ack,
            Out::Backend(id),
            &[ev(Event::PROMOTED, 0)],
        )?;
        // A SYN of the live flow (retransmitted, or spoofed) keeps it on
        // its backend, whatever the cursor says.
        let kept = [ev(Event::SYN_KEPT, 1), ev(Event::NEW_FLOW, 0)];
        for n in 0..3 {
            let name = format!("syn of the live flow, cursor at {n}");
            step(&mut f, &name, &syn, Out::Backend(id), &kept)?;
            let other = Packet::tcp(CLIENT4, 42010 + n as u16, KEEPING, 80);
            let to = Out::Backend(cycle(&f, RR_TCP, 2 + n));
            step(&mut f, "another new flow", &other, to, &[])?;
        }

        // UDP: the second datagram promotes.
        let dgram = Packet::udp(CLIENT4, 42100, KEEPING, 53);
        let k = key(&dgram);
        let id = cycle(&f, RR_UDP, 0);
        let first = [ev(Event::HANDSHAKE, 1), ev(Event::NEW_FLOW, 1)];
        step(&mut f, "datagram", &dgram, Out::Backend(id), &first)?;
        ensure!(in_handshakes(&f, &k)? == Some(id) && in_flows(&f, &k)?.is_none());
        let second = [ev(Event::PROMOTED, 1), ev(Event::NEW_FLOW, 0)];
        step(&mut f, "second datagram", &dgram, Out::Backend(id), &second)?;
        ensure!(in_flows(&f, &k)? == Some(id) && in_handshakes(&f, &k)?.is_none());
        Ok(())
    });
}

#[test]
fn a_least_connections_flow_counts_on_its_backend_once_promoted() {
    privilege::run("datapath_handshake_counts", || {
        let mut f = fixture(default_settings(SEED))?;
        let syn = Packet::tcp(CLIENT4, 43000, KEEPING, 81);
        let k = key(&syn);
        // Two choices pick at random: the handshake table says which.
        let out = f.datapath.test_run(&syn.build(), 0)?;
        ensure!(out.verdict == TX);
        let id = in_handshakes(&f, &k)?.ok_or_else(|| anyhow::anyhow!("no handshake entry"))?;
        ensure!(
            f.datapath.backend_load(id)?.conns == 0,
            "a handshake counted as a connection"
        );
        let ack = syn.clone().established();
        step(
            &mut f,
            "ack",
            &ack,
            Out::Backend(id),
            &[ev(Event::PROMOTED, 1)],
        )?;
        ensure!(
            f.datapath.backend_load(id)?.conns == 1,
            "the connection did not count"
        );
        step(&mut f, "fin", &ack.clone().fin(), Out::Backend(id), &[])?;
        ensure!(
            f.datapath.backend_load(id)?.conns == 0,
            "the close did not end the count"
        );
        Ok(())
    });
}

#[test]
fn a_mid_stream_segment_no_table_knows_is_placed_without_state_and_counted() {
    privilege::run("datapath_unknown_midstream", || {
        stay_on_one_cpu()?;
        let mut f = fixture(default_settings(SEED))?;
        let ack = Packet::tcp(CLIENT4, 44000, KEEPING, 80).established();
        let counted = [
            ev(Event::UNKNOWN_MIDSTREAM, 1),
            ev(Event::NEW_FLOW, 0),
            ev(Event::HANDSHAKE, 0),
            ev(Event::FLOW_INSERT, 0),
        ];
        for n in 0..3 {
            let id = cycle(&f, RR_TCP, n);
            step(&mut f, "ack", &ack, Out::Backend(id), &counted)?;
        }
        ensure!(
            f.datapath.flows()?.is_empty() && f.datapath.handshakes()?.is_empty(),
            "state made for a segment of no known flow"
        );
        Ok(())
    });
}

#[test]
fn the_insert_budget_holds_new_entries_back_and_counts_what_it_skipped() {
    privilege::run("datapath_insert_budget", || {
        stay_on_one_cpu()?;
        // 0.9 s of credit an insert: a full bucket (1 s) pays for one, and
        // the next needs 0.8 s more.
        let mut f = fixture(Settings {
            insert_cost_ns: 900_000_000,
            ..default_settings(SEED)
        })?;
        let ack = |port| Packet::tcp(CLIENT4, port, VIP4, 80).established();
        let (a, b) = (ack(45000), ack(45001));
        let inserted = [ev(Event::FLOW_INSERT, 1), ev(Event::INSERT_SKIPPED, 0)];
        let skipped = [ev(Event::FLOW_INSERT, 0), ev(Event::INSERT_SKIPPED, 1)];
        step(&mut f, "first", &a, Out::flow(0, &a), &inserted)?;
        // Over budget: still sent where the ring says, without an entry.
        step(&mut f, "second", &b, Out::flow(0, &b), &skipped)?;
        ensure!(in_flows(&f, &key(&a))?.is_some() && in_flows(&f, &key(&b))?.is_none());
        // A round-robin flow stays in the handshake table, and its packets
        // keep going to its backend.
        let syn = Packet::tcp(CLIENT4, 45002, KEEPING, 80);
        let id = cycle(&f, RR_TCP, 0);
        step(
            &mut f,
            "syn",
            &syn,
            Out::Backend(id),
            &[ev(Event::HANDSHAKE, 1)],
        )?;
        let rr_ack = syn.clone().established();
        let kept = [ev(Event::INSERT_SKIPPED, 1), ev(Event::PROMOTED, 0)];
        step(&mut f, "ack", &rr_ack, Out::Backend(id), &kept)?;
        step(&mut f, "ack again", &rr_ack, Out::Backend(id), &kept)?;
        ensure!(in_handshakes(&f, &key(&syn))? == Some(id) && in_flows(&f, &key(&syn))?.is_none());
        // The bucket fills again with time.
        std::thread::sleep(Duration::from_millis(1_100));
        step(&mut f, "later", &b, Out::flow(0, &b), &inserted)?;
        ensure!(in_flows(&f, &key(&b))?.is_some());
        Ok(())
    });
}
