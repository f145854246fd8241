//! Known flows in the XDP program, through BPF_PROG_TEST_RUN: established
//! flows across a ring change, fail-over and drain, idle expiry, and a
//! mid-stream packet without an entry. Sequences of cases of
//! `balancer_tests::case`, with changes to the fixture between them.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use balancer::datapath::action::TX;
use balancer_common::{flow::FlowKey, proto, settings::Settings, stats::Event};
use balancer_tests::{
    case::{Case, Counter, Out, check, run},
    fixture::{
        Backend, Fixture, Vip, default_settings, flow_key, ring_pick,
        standard::{self, CLIENT4, CLIENT6, VIP4, VIP6, standard},
    },
    packet::Packet,
    privilege,
};

/// A client port whose flow to `before` the ring of `after`, the same
/// VIP with other backends, places on another backend.
fn flow_moved_by(before: &Vip, after: &Vip, settings: &Settings) -> Result<u16> {
    let (old, new) = (
        before.ring(settings.ring_size)?,
        after.ring(settings.ring_size)?,
    );
    (1024..60000u16)
        .find(|&port| {
            let key = flow_key(CLIENT4, port, before.addr, before.port, before.proto);
            ring_pick(before, &old, settings, &key) != ring_pick(after, &new, settings, &key)
        })
        .context("some flow moves when a backend joins")
}

/// `vip` with one more backend, `id` at 10.1.0.`host`.
fn grown(vip: &Vip, id: u32, host: u8) -> Vip {
    let mut grown = vip.clone();
    let address = IpAddr::V4(Ipv4Addr::new(10, 1, 0, host));
    grown.backends.push(Backend::new(id, address));
    grown
}

/// A TCP flow to VIP 0 of the standard fixture that backend 50 joining
/// would move: the VIP grown by it, the flow's SYN, its key, and the
/// backend the ring gives it now.
struct Moving {
    grown: Vip,
    syn: Packet,
    key: FlowKey,
    old: u32,
}

fn moving_flow(f: &Fixture) -> Result<Moving> {
    let grown = grown(&standard::vip(0), 50, 99);
    let port = flow_moved_by(&standard::vip(0), &grown, &f.settings)?;
    let key = flow_key(CLIENT4, port, VIP4, 80, proto::TCP);
    Ok(Moving {
        grown,
        syn: Packet::tcp(CLIENT4, port, VIP4, 80),
        key,
        old: f.expected_backend(0, &key),
    })
}

#[test]
fn established_flows_keep_their_backend_when_the_ring_changes() {
    privilege::run("datapath_ring_change", || {
        let mut f = standard()?;
        let Moving {
            grown,
            syn: p,
            key,
            old,
        } = moving_flow(&f)?;
        // The handshake: the SYN leaves no state, the ACK makes the entry.
        let next = p.clone().established().build();
        let cases = [
            Case::new("syn", p.build(), TX, Out::Backend(old), &[]),
            Case::new("ack", next.clone(), TX, Out::Backend(old), &[]),
        ];
        run(&mut f, &cases)?;
        // A fourth backend joins: the ring changes under the flow.
        f.put_vip(grown)?;
        let new = f.expected_backend(0, &key);
        ensure!(new != old && new == 50);
        run(
            &mut f,
            &[Case::new("after", next, TX, Out::Backend(old), &[])],
        )?;
        Ok(())
    });
}

#[test]
fn a_syn_for_a_live_flow_keeps_its_backend_until_the_client_closes_it() {
    privilege::run("datapath_syn_live", || {
        let mut f = standard()?;
        let Moving {
            grown,
            syn: p,
            key,
            old,
        } = moving_flow(&f)?;
        let counts = |new_flows, kept| {
            [
                (Counter::Event(Event::NEW_FLOW), new_flows),
                (Counter::Event(Event::SYN_KEPT), kept),
            ]
        };
        let (syn, ack) = (p.build(), p.clone().established().build());
        let on = |id| Out::Backend(id);
        let handshake = [
            Case::new("syn", syn.clone(), TX, on(old), &counts(1, 0)),
            Case::new("ack", ack.clone(), TX, on(old), &counts(0, 0)),
        ];
        run(&mut f, &handshake)?;
        // The ring changes under the flow: a new flow of this 5-tuple
        // would now go to backend 50.
        let mut down = grown.clone();
        f.put_vip(grown)?;
        ensure!(f.expected_backend(0, &key) == 50);
        let cases = [
            // A retransmitted (or spoofed) SYN keeps the connection where
            // it is.
            Case::new("syn again", syn.clone(), TX, on(old), &counts(0, 1)),
            Case::new("ack", ack.clone(), TX, on(old), &counts(0, 0)),
            // The client closes: the rest of the close follows the flow.
            Case::new("fin", p.clone().fin().build(), TX, on(old), &counts(0, 0)),
            Case::new("ack after fin", ack.clone(), TX, on(old), &counts(0, 0)),
            // A SYN now starts a new connection on the port: placed afresh,
            // in the flow's entry, which its ACK then follows.
            Case::new("syn after fin", syn.clone(), TX, on(50), &counts(1, 0)),
            Case::new("ack of the new one", ack.clone(), TX, on(50), &counts(0, 0)),
            Case::new("syn of the new one", syn.clone(), TX, on(50), &counts(0, 1)),
            // Likewise after a RST.
            Case::new("rst", p.clone().rst().build(), TX, on(50), &counts(0, 0)),
            Case::new("syn after rst", syn.clone(), TX, on(50), &counts(1, 0)),
        ];
        run(&mut f, &cases)?;

        // The backend goes down: a SYN fails over like any packet.
        for backend in down.backends.iter_mut().filter(|b| b.id == 50) {
            backend.up = false;
        }
        f.put_vip(down)?;
        let failover = [
            (Counter::Event(Event::FAILOVER), 1),
            (Counter::Event(Event::SYN_KEPT), 0),
        ];
        let moved = Out::Flow { vip: 0, key };
        run(
            &mut f,
            &[Case::new("syn, backend down", syn, TX, moved, &failover)],
        )?;
        ensure!(f.expected_backend(0, &key) != 50);
        Ok(())
    });
}

#[test]
fn a_flow_fails_over_when_its_backend_goes_down_and_draining_keeps_it() {
    privilege::run("datapath_failover_drain", || {
        let mut f = standard()?;
        let p = Packet::tcp(CLIENT4, 42000, VIP4, 80);
        let key = flow_key(CLIENT4, 42000, VIP4, 80, proto::TCP);
        let owner = f.expected_backend(0, &key);
        let next = p.clone().established().build();
        let handshake = [
            Case::new("syn", p.build(), TX, Out::Backend(owner), &[]),
            Case::new("ack", next.clone(), TX, Out::Backend(owner), &[]),
        ];
        run(&mut f, &handshake)?;

        // Draining (weight 0, still up): the ring loses the backend, the
        // flow keeps it, new flows never get it.
        let mut vip = standard::vip(0);
        vip.backends[owner as usize].weight = 0;
        f.put_vip(vip.clone())?;
        let draining = Case::new("draining", next.clone(), TX, Out::Backend(owner), &[]);
        run(&mut f, &[draining])?;
        ensure!(
            !f.ring(0).contains(&owner),
            "the ring still holds the draining backend"
        );
        let new_flows: Vec<Case> = (1..2000u16)
            .map(|port| {
                let p = Packet::tcp(CLIENT4, port, VIP4, 80);
                let name = format!("new flow from port {port}");
                Case::new(name, p.build(), TX, Out::flow(0, &p), &[])
            })
            .collect();
        run(&mut f, &new_flows)?;

        // Down: the flow moves to the ring's choice, and that is counted.
        vip.backends[owner as usize].up = false;
        f.put_vip(vip)?;
        ensure!(f.expected_backend(0, &key) != owner);
        let moved = Out::Flow { vip: 0, key };
        let failover = (Counter::Event(Event::FAILOVER), 1);
        let cases = [
            Case::new("failover", next.clone(), TX, moved, &[failover]),
            // And it stays there.
            Case::new("after failover", next, TX, moved, &[]),
        ];
        run(&mut f, &cases)?;
        Ok(())
    });
}

#[test]
fn idle_flows_expire_and_pick_again() {
    privilege::run("datapath_idle", || {
        let mut f = Fixture::with_settings(Settings {
            hash_seed: 1,
            udp_idle_ns: 200_000_000,
            ..default_settings(1)
        })?;
        let vip = Vip::new(0, VIP4, 53, proto::UDP, standard::backends4(0..3));
        f.put_vip(vip.clone())?;
        let grown = grown(&vip, 60, 98);
        let port = flow_moved_by(&vip, &grown, &f.settings)?;
        let frame = Packet::udp(CLIENT4, port, VIP4, 53).build();
        let key = flow_key(CLIENT4, port, VIP4, 53, proto::UDP);
        let old = f.expected_backend(0, &key);
        run(
            &mut f,
            &[Case::new(
                "first",
                frame.clone(),
                TX,
                Out::Backend(old),
                &[],
            )],
        )?;
        f.put_vip(grown)?;
        run(
            &mut f,
            &[Case::new("live", frame.clone(), TX, Out::Backend(old), &[])],
        )?;
        std::thread::sleep(Duration::from_millis(400));
        let expired = Case::new("expired", frame, TX, Out::Flow { vip: 0, key }, &[]);
        run(&mut f, &[expired])?;
        Ok(())
    });
}

#[test]
fn a_non_syn_packet_without_an_entry_is_placed_by_the_ring_and_remembered() {
    // A flow that another balancer host started (after an ECMP change)
    // arrives mid-stream: the ring places it where that host did. It is
    // no new flow, but it gets an entry.
    let p = Packet::tcp(CLIENT6, 43000, VIP6, 80).established();
    let counts = |new_flow, insert| {
        [
            (Counter::Event(Event::NEW_FLOW), new_flow),
            (Counter::Event(Event::FLOW_INSERT), insert),
        ]
    };
    let cases = [
        Case::new("mid-stream", p.build(), TX, Out::flow(2, &p), &counts(0, 1)),
        // The flow's entry is used.
        Case::new("again", p.build(), TX, Out::flow(2, &p), &counts(0, 0)),
    ];
    check("datapath_non_syn_unknown", standard, &cases);
}

#[test]
fn removing_a_flow_the_table_no_longer_holds_is_no_error() {
    // The daemon removes expired entries it read earlier; the datapath may
    // have evicted or replaced them since.
    privilege::run("datapath_remove_gone", || {
        let mut f = standard()?;
        let gone = flow_key(CLIENT4, 44444, VIP4, 80, proto::TCP);
        f.datapath.remove_flows(&[gone])?;
        Ok(())
    });
}
