//! New connection-table entries told to the daemon for the peer hosts
//! (`[sync]`), through BPF_PROG_TEST_RUN: the exact event in the ring
//! buffer for each way an entry is made, none while sharing is off or for
//! packets that make no entry, and a full ring buffer counted, never
//! blocking the packet.

use anyhow::{Result, ensure};
use balancer::{
    config::Scheduler,
    datapath::{FlowEvents, action::TX},
};
use balancer_common::{
    flow::{FlowEvent, FlowKey},
    maps::FLOW_EVENTS_BYTES,
    proto,
    settings::SETTINGS_SHARE_FLOWS,
    stats::Event,
};
use balancer_tests::{
    case::{Case, Counter, Out, run},
    fixture::{
        Fixture, Vip, flow_key,
        standard::{CLIENT4, CLIENT6, VIP4, VIP6, backends4, standard},
    },
    packet::Packet,
    privilege,
};

fn shared(n: u64) -> [(Counter, u64); 2] {
    [
        (Counter::Event(Event::FLOW_SHARED), n),
        (Counter::Event(Event::SHARE_LOST), 0),
    ]
}

fn sharing_on(f: &mut Fixture) -> Result<()> {
    f.settings.flags |= SETTINGS_SHARE_FLOWS;
    f.datapath.set_settings(&f.settings)?;
    Ok(())
}

fn drain(events: &mut FlowEvents) -> Vec<FlowEvent> {
    let mut out = Vec::new();
    events.drain(|e| out.push(e));
    out
}

/// The one event drained, checked against the flow, VIP and backend.
fn one_event(events: &mut FlowEvents, key: FlowKey, vip: u32, backend: u32) -> Result<()> {
    let got = drain(events);
    ensure!(got.len() == 1, "one event expected: {got:?}");
    let e = got[0];
    ensure!(
        e.key == key && e.vip == vip && e.backend == backend && e.at_ns > 0,
        "event {e:?}, expected flow {key:?} of VIP {vip} on backend {backend}"
    );
    Ok(())
}

#[test]
fn each_new_entry_is_told_once_while_sharing_is_on() {
    privilege::run("datapath_share", || {
        let mut f = standard()?;
        let mut events = f.datapath.take_flow_events()?;
        let tcp = Packet::tcp(CLIENT4, 41000, VIP4, 80);
        let key = flow_key(CLIENT4, 41000, VIP4, 80, proto::TCP);
        let to = f.expected_backend(0, &key);
        // Off: the entry is made, nothing is told.
        run(
            &mut f,
            &[
                Case::new("syn, off", tcp.build(), TX, Out::Backend(to), &shared(0)),
                Case::new(
                    "ack, off",
                    tcp.clone().established().build(),
                    TX,
                    Out::Backend(to),
                    &shared(0),
                ),
            ],
        )?;
        ensure!(drain(&mut events).is_empty());

        sharing_on(&mut f)?;
        // A hashing VIP: the SYN makes no entry, its ACK does, once.
        let tcp = Packet::tcp(CLIENT4, 41001, VIP4, 80);
        let key = flow_key(CLIENT4, 41001, VIP4, 80, proto::TCP);
        let to = f.expected_backend(0, &key);
        run(
            &mut f,
            &[
                Case::new("syn", tcp.build(), TX, Out::Backend(to), &shared(0)),
                Case::new(
                    "ack",
                    tcp.clone().established().build(),
                    TX,
                    Out::Backend(to),
                    &shared(1),
                ),
                Case::new(
                    "next",
                    tcp.clone().established().build(),
                    TX,
                    Out::Backend(to),
                    &shared(0),
                ),
            ],
        )?;
        one_event(&mut events, key, 0, to)?;

        // UDP over IPv6: the first datagram makes the entry.
        let udp = Packet::udp(CLIENT6, 5353, VIP6, 53);
        let key = flow_key(CLIENT6, 5353, VIP6, 53, proto::UDP);
        let to = f.expected_backend(3, &key);
        run(
            &mut f,
            &[
                Case::new("udp", udp.build(), TX, Out::Backend(to), &shared(1)),
                Case::new("udp again", udp.build(), TX, Out::Backend(to), &shared(0)),
            ],
        )?;
        one_event(&mut events, key, 3, to)?;

        // A client that opens with a FIN or RST makes no entry worth
        // sharing.
        let rst = Packet::tcp(CLIENT4, 41002, VIP4, 80).rst().build();
        let key = flow_key(CLIENT4, 41002, VIP4, 80, proto::TCP);
        let to = f.expected_backend(0, &key);
        run(
            &mut f,
            &[Case::new("rst", rst, TX, Out::Backend(to), &shared(0))],
        )?;
        ensure!(drain(&mut events).is_empty());

        // A VIP that keeps its first choice (least connections): told when
        // its next packet moves it from the handshake table.
        let mut least = Vip::new(4, VIP4, 8080, proto::TCP, backends4(20..23));
        least.scheduler = Scheduler::LeastConnections;
        f.put_vip(least)?;
        let tcp = Packet::tcp(CLIENT4, 41003, VIP4, 8080);
        let key = flow_key(CLIENT4, 41003, VIP4, 8080, proto::TCP);
        let syn = f.datapath.test_run(&tcp.build(), 0)?;
        ensure!(syn.verdict == TX, "lc syn: {}", syn.verdict);
        ensure!(
            drain(&mut events).is_empty(),
            "a SYN in the handshake table told"
        );
        let Some(to) = f
            .datapath
            .handshakes()?
            .into_iter()
            .find(|(k, _)| *k == key)
            .map(|(_, s)| s.backend)
        else {
            anyhow::bail!("the SYN left no handshake entry");
        };
        run(
            &mut f,
            &[Case::new(
                "lc ack",
                tcp.clone().established().build(),
                TX,
                Out::Backend(to),
                &shared(1),
            )],
        )?;
        one_event(&mut events, key, 4, to)
    });
}

#[test]
fn a_full_ring_buffer_is_counted_and_the_packets_still_go() {
    privilege::run("datapath_share_full", || {
        let mut f = standard()?;
        let mut events = f.datapath.take_flow_events()?;
        sharing_on(&mut f)?;
        // Every event takes 64 bytes of the ring with its header, and the
        // kernel never fills the ring's last byte.
        let room = u64::from(FLOW_EVENTS_BYTES) / 64 - 1;
        let flows = room + 10;
        for i in 0..flows {
            let port = 1024 + (i % 60000) as u16;
            let client =
                std::net::IpAddr::V4(std::net::Ipv4Addr::from(0xc000_0200 + (i / 60000) as u32));
            let p = Packet::udp(client, port, VIP4, 53).build();
            let out = f.datapath.test_run(&p, 0)?;
            ensure!(out.verdict == TX, "flow {i}: {}", out.verdict);
        }
        let counters = f.datapath.reasons()?;
        let (told, lost) = (
            counters.event(Event::FLOW_SHARED).packets,
            counters.event(Event::SHARE_LOST).packets,
        );
        ensure!(
            told == room && lost == flows - room,
            "{flows} new entries: {told} told, {lost} lost; the ring holds {room}"
        );
        ensure!(drain(&mut events).len() as u64 == room);
        Ok(())
    });
}
