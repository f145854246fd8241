//! Per-source limits in the XDP program, through BPF_PROG_TEST_RUN: each
//! source's packet and new-flow buckets, the source prefix, the exempt
//! lists and their generation, sources sharing a set of the table and a
//! forgotten source, and every verdict with its counters. Rates are one token in 1,000 s, so that no token comes
//! back while a test runs: each bucket admits exactly its burst.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Result, ensure};
use balancer::{
    config::{Prefix, Scheduler},
    datapath::action::{DROP, TX},
    plan::{self, exempt_entries},
};
use balancer_common::{
    Addr, addr_from_octets,
    limit::{
        LIMIT_OWN_EXEMPT, LimitCounters, Rate, SCOPE_EXEMPT_GLOBAL, SourceLimit, exempt_scope,
        source_set,
    },
    proto,
    settings::{SETTINGS_GLOBAL_EXEMPT, Settings},
    stats::{Event, Stat},
};
use balancer_tests::{
    case::{Case, Counter, Out, run},
    fixture::{
        Fixture, Vip, default_settings,
        standard::{self, CLIENT4, CLIENT6, SEED, VIP4, VIP6},
        stay_on_one_cpu,
    },
    packet::Packet,
    privilege,
};

/// One token in 1,000 s.
const INTERVAL_NS: u64 = 1_000_000_000_000;

/// A bucket of `burst` tokens that never refills during a test.
fn burst(burst: u64) -> Rate {
    Rate {
        interval_ns: INTERVAL_NS,
        burst_ns: burst * INTERVAL_NS,
    }
}

/// The mask of the first `bits` bits of an address in the maps' form.
fn mask(bits: u32) -> Addr {
    addr_from_octets(u128::MAX.checked_shl(128 - bits).unwrap_or(0).to_be_bytes())
}

/// Limits of `new_flows` and `packets` tokens (None: no limit), sources
/// of `bits` leading bits of the address in the maps' form (IPv4 after
/// its 96 mapped bits).
fn limit(new_flows: Option<u64>, packets: Option<u64>, bits: u32) -> SourceLimit {
    SourceLimit {
        new_flows: new_flows.map_or(Rate::default(), burst),
        packets: packets.map_or(Rate::default(), burst),
        source_mask: mask(bits),
        ..SourceLimit::default()
    }
}

/// The VIP of the fixture that keeps its choice: round robin over one
/// backend, TCP port 8080 of [`VIP4`].
const RR: u32 = 4;

/// The standard fixture, with `limits[i]` on VIP `i` and a round-robin
/// VIP [`RR`] with `rr`, and `settings`.
fn fixture(settings: Settings, limits: [SourceLimit; 4], rr: SourceLimit) -> Result<Fixture> {
    stay_on_one_cpu()?;
    let mut f = Fixture::with_settings(settings)?;
    for (index, limit) in limits.into_iter().enumerate() {
        let mut vip = standard::vip(index as u32);
        vip.limit = limit;
        f.put_vip(vip)?;
    }
    let mut vip = Vip::new(RR, VIP4, 8080, proto::TCP, standard::backends4(20..21));
    vip.scheduler = Scheduler::RoundRobin;
    vip.limit = rr;
    f.put_vip(vip)?;
    Ok(f)
}

fn none() -> SourceLimit {
    SourceLimit::default()
}

fn syn(src: IpAddr, port: u16, dst: IpAddr) -> Packet {
    Packet::tcp(src, port, dst, 80)
}

/// What the limits dropped for VIP `vip`.
fn counters(f: &Fixture, vip: u32) -> Result<LimitCounters> {
    Ok(f.datapath.limit_counters(vip + 1)?[vip as usize])
}

#[test]
fn a_source_over_its_packet_rate_is_dropped_and_others_are_not() {
    privilege::run("datapath_limits_packets", || {
        let mut f = fixture(
            default_settings(SEED),
            [limit(None, Some(3), 128), none(), none(), none()],
            none(),
        )?;
        let first = syn(CLIENT4, 40000, VIP4);
        let ack = first.clone().established();
        let other = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 9));
        run(
            &mut f,
            &[
                Case::forwarded("syn", &first, 0),
                Case::forwarded("ack", &ack, 0),
                Case::forwarded("data", &ack, 0),
                Case::dropped("over the rate", &ack, Stat::DROP_SOURCE_PACKETS),
                Case::dropped(
                    "a new flow too",
                    &syn(CLIENT4, 40001, VIP4),
                    Stat::DROP_SOURCE_PACKETS,
                ),
                Case::forwarded("another source", &syn(other, 40000, VIP4), 0),
                // The same source to a VIP of the same address without
                // limits.
                Case::forwarded("another vip", &Packet::udp(CLIENT4, 5353, VIP4, 53), 1),
            ],
        )?;
        let c = counters(&f, 0)?;
        ensure!(c.packets.packets == 2, "{c:?}");
        ensure!(c.new_flows.packets == 0, "{c:?}");
        Ok(())
    });
}

#[test]
fn a_source_over_its_new_flow_rate_keeps_its_flows_and_starts_no_more() {
    privilege::run("datapath_limits_new_flows", || {
        let mut f = fixture(
            default_settings(SEED),
            [
                limit(Some(2), None, 128),
                limit(Some(1), None, 128),
                none(),
                none(),
            ],
            none(),
        )?;
        let a = syn(CLIENT4, 40000, VIP4);
        let b = syn(CLIENT4, 40001, VIP4);
        let dns = Packet::udp(CLIENT4, 5353, VIP4, 53);
        run(
            &mut f,
            &[
                Case::forwarded("a: a new flow", &a, 0),
                Case::forwarded("a: its ack is no new flow", &a.clone().established(), 0),
                Case::new(
                    "a: a syn for a live flow is no new flow",
                    a.build(),
                    TX,
                    Out::flow(0, &a),
                    &[(Counter::Event(Event::SYN_KEPT), 1)],
                ),
                Case::forwarded("b: the second new flow", &b, 0),
                // Without state, a retransmitted SYN is a new flow again.
                Case::dropped("b: its retransmission", &b, Stat::DROP_SOURCE_FLOWS),
                Case::dropped(
                    "c: a third",
                    &syn(CLIENT4, 40002, VIP4),
                    Stat::DROP_SOURCE_FLOWS,
                ),
                Case::forwarded("a: established, still", &a.clone().established(), 0),
                Case::forwarded("udp: its first datagram", &dns, 1),
                // The datagram made its flow's entry: the next ones are no
                // new flows.
                Case::forwarded("udp: its next datagram", &dns, 1),
                Case::dropped(
                    "udp: another flow",
                    &Packet::udp(CLIENT4, 5354, VIP4, 53),
                    Stat::DROP_SOURCE_FLOWS,
                ),
            ],
        )?;
        ensure!(counters(&f, 0)?.new_flows.packets == 2);
        ensure!(counters(&f, 1)?.new_flows.packets == 1);
        ensure!(counters(&f, 0)?.packets.packets == 0);
        // The refused flows left no entry: a's, b's ACK-less SYN none, the
        // first datagram's flow one.
        let entries = f.datapath.flows()?;
        ensure!(entries.len() == 2, "{} entries: {entries:?}", entries.len());
        Ok(())
    });
}

#[test]
fn a_flow_reopened_is_a_new_flow_and_one_failing_over_is_not() {
    privilege::run("datapath_limits_replace", || {
        let mut f = fixture(
            default_settings(SEED),
            [limit(Some(1), None, 128), none(), none(), none()],
            none(),
        )?;
        let a = syn(CLIENT4, 40000, VIP4);
        run(
            &mut f,
            &[
                Case::forwarded("syn: its one new flow", &a, 0),
                Case::forwarded("ack: its entry", &a.clone().established(), 0),
            ],
        )?;
        // Its backend goes down: the ring is rebuilt without it, and the
        // flow fails over, spending nothing.
        let key = balancer_tests::fixture::flow_key(CLIENT4, 40000, VIP4, 80, proto::TCP);
        let first = f.expected_backend(0, &key);
        let mut vip = standard::vip(0);
        vip.limit = limit(Some(1), None, 128);
        for b in &mut vip.backends {
            b.up = b.id != first;
        }
        f.put_vip(vip)?;
        let ack = a.clone().established();
        run(
            &mut f,
            &[
                Case::new(
                    "ack: failing over",
                    ack.build(),
                    TX,
                    Out::flow(0, &ack),
                    &[(Counter::Event(Event::FAILOVER), 1)],
                ),
                Case::forwarded("fin: closing", &a.clone().fin(), 0),
                Case::dropped("syn: reopened, a new flow", &a, Stat::DROP_SOURCE_FLOWS),
            ],
        )?;
        Ok(())
    });
}

#[test]
fn a_refused_first_packet_leaves_no_handshake() {
    privilege::run("datapath_limits_handshake", || {
        let mut f = fixture(
            default_settings(SEED),
            [none(), none(), none(), none()],
            limit(Some(1), None, 128),
        )?;
        let to_rr = |port| Packet::tcp(CLIENT4, port, VIP4, 8080);
        let first = Case::new("first", to_rr(40000).build(), TX, Out::Backend(20), &[]);
        let second = Case::new(
            "second",
            to_rr(40001).build(),
            DROP,
            Out::Same,
            &[
                (Counter::Stat(Stat::DROP_SOURCE_FLOWS), 1),
                (Counter::Event(Event::HANDSHAKE), 0),
            ],
        );
        // Its handshake holds it: a retransmission is no new flow.
        let retransmitted = Case::new(
            "the first one's syn again",
            to_rr(40000).build(),
            TX,
            Out::Backend(20),
            &[(Counter::Stat(Stat::DROP_SOURCE_FLOWS), 0)],
        );
        let promoted = Case::new(
            "the first one's ack",
            to_rr(40000).established().build(),
            TX,
            Out::Backend(20),
            &[(Counter::Event(Event::PROMOTED), 1)],
        );
        run(&mut f, &[first, second, retransmitted, promoted])?;
        ensure!(
            f.datapath.handshakes()?.is_empty(),
            "the ack promoted the only one"
        );
        Ok(())
    });
}

#[test]
fn one_source_is_its_prefix() {
    privilege::run("datapath_limits_prefix", || {
        // IPv4 sources by /24 (96 + 24 bits), IPv6 sources by /64.
        let mut f = fixture(
            default_settings(SEED),
            [
                limit(Some(1), None, 120),
                none(),
                limit(Some(1), None, 64),
                none(),
            ],
            none(),
        )?;
        let neighbour4 = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 200));
        let elsewhere4 = IpAddr::V4(Ipv4Addr::new(192, 0, 3, 7));
        let neighbour6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0xa, 0, 0, 1));
        let elsewhere6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xc, 1, 0, 0, 0, 7));
        run(
            &mut f,
            &[
                Case::forwarded("v4", &syn(CLIENT4, 40000, VIP4), 0),
                Case::dropped(
                    "same /24",
                    &syn(neighbour4, 40000, VIP4),
                    Stat::DROP_SOURCE_FLOWS,
                ),
                Case::forwarded("another /24", &syn(elsewhere4, 40000, VIP4), 0),
                Case::forwarded("v6", &syn(CLIENT6, 40000, VIP6), 2),
                Case::dropped(
                    "same /64",
                    &syn(neighbour6, 40000, VIP6),
                    Stat::DROP_SOURCE_FLOWS,
                ),
                Case::forwarded("another /64", &syn(elsewhere6, 40000, VIP6), 2),
            ],
        )?;
        Ok(())
    });
}

#[test]
fn exempt_sources_are_never_limited_and_lists_decide_again_when_they_change() {
    privilege::run("datapath_limits_exempt", || {
        let generation = 11;
        let settings = Settings {
            flags: SETTINGS_GLOBAL_EXEMPT,
            ..default_settings(SEED)
        }
        .with_access_generation(generation);
        let own = SourceLimit {
            flags: LIMIT_OWN_EXEMPT,
            ..limit(Some(1), None, 128)
        };
        let mut f = fixture(settings, [own, none(), own, none()], none())?;
        let prefix = |t: &str| t.parse::<Prefix>().unwrap();
        let global = exempt_entries(SCOPE_EXEMPT_GLOBAL, [prefix("192.0.2.0/24")].into_iter());
        let vip2 = exempt_entries(exempt_scope(2), [prefix("2001:db8:c::/48")].into_iter());
        f.datapath
            .set_access(&global.into_iter().chain(vip2).collect::<Vec<_>>())?;
        let other4 = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 9));
        let cases: Vec<Case> =
            (0..3)
                .map(|i| Case::forwarded("globally exempt", &syn(CLIENT4, 40000 + i, VIP4), 0))
                .chain((0..3).map(|i| {
                    Case::forwarded("exempt by its vip", &syn(CLIENT6, 40000 + i, VIP6), 2)
                }))
                .chain([
                    Case::forwarded("not exempt", &syn(other4, 40000, VIP4), 0),
                    Case::dropped(
                        "not exempt, over",
                        &syn(other4, 40001, VIP4),
                        Stat::DROP_SOURCE_FLOWS,
                    ),
                ])
                .collect();
        run(&mut f, &cases)?;
        // The lists change: the exempt source is decided again under the
        // new generation, and is limited from then on.
        f.datapath.remove_access(&[exempt_entries(
            SCOPE_EXEMPT_GLOBAL,
            [prefix("192.0.2.0/24")].into_iter(),
        )
        .into_keys()
        .next()
        .unwrap()])?;
        let settings = f.settings.with_access_generation(generation + 1);
        f.datapath.set_settings(&settings)?;
        run(
            &mut f,
            &[
                Case::forwarded("no longer exempt", &syn(CLIENT4, 40010, VIP4), 0),
                Case::dropped(
                    "and limited",
                    &syn(CLIENT4, 40011, VIP4),
                    Stat::DROP_SOURCE_FLOWS,
                ),
            ],
        )?;
        Ok(())
    });
}

/// Two IPv4 clients other than [`CLIENT4`] whose sources (their whole
/// address) share its set of the table of sources, for VIP 0.
fn colliding() -> [IpAddr; 2] {
    let set = |ip: IpAddr| source_set(&plan::addr(ip), 0, SEED);
    let target = set(CLIENT4);
    let found: Vec<IpAddr> = (0u32..)
        .map(|n| IpAddr::V4(Ipv4Addr::from(0xc612_0000 + n)))
        .filter(|ip| set(*ip) == target)
        .take(2)
        .collect();
    [found[0], found[1]]
}

#[test]
fn a_source_new_to_a_full_set_takes_the_slot_of_the_one_that_owes_less() {
    privilege::run("datapath_limits_sets", || {
        let mut f = fixture(
            default_settings(SEED),
            [limit(Some(2), None, 128), none(), none(), none()],
            none(),
        )?;
        let [x, y] = colliding();
        run(
            &mut f,
            &[
                Case::forwarded("client: one", &syn(CLIENT4, 40000, VIP4), 0),
                Case::forwarded("client: two", &syn(CLIENT4, 40001, VIP4), 0),
                // The set's other slot is empty: x takes it.
                Case::forwarded("x: one", &syn(x, 40000, VIP4), 0),
                // The set is full: y takes the slot of x, which owes one
                // token to the client's two.
                Case::forwarded("y: one", &syn(y, 40000, VIP4), 0),
                Case::dropped(
                    "client: over",
                    &syn(CLIENT4, 40002, VIP4),
                    Stat::DROP_SOURCE_FLOWS,
                ),
                // x was forgotten: it starts again with a full bucket (the
                // limits only ever get more lenient), taking y's slot.
                Case::forwarded("x: forgotten", &syn(x, 40001, VIP4), 0),
                Case::forwarded("x: its burst", &syn(x, 40002, VIP4), 0),
                Case::dropped("x: over", &syn(x, 40003, VIP4), Stat::DROP_SOURCE_FLOWS),
            ],
        )?;
        let set = source_set(&plan::addr(CLIENT4), 0, SEED) as usize;
        let slots = f.datapath.sources()?;
        let held: Vec<Addr> = slots[set..set + 2].iter().map(|s| s.source).collect();
        ensure!(
            held.contains(&plan::addr(CLIENT4)) && held.contains(&plan::addr(x)),
            "the set holds {held:?}"
        );
        // Emptied, as a slot another source takes: the client starts again.
        let client = set + held.iter().position(|a| *a == plan::addr(CLIENT4)).unwrap();
        f.datapath.forget_source(client as u32)?;
        run(
            &mut f,
            &[Case::forwarded(
                "client: forgotten",
                &syn(CLIENT4, 40003, VIP4),
                0,
            )],
        )?;
        Ok(())
    });
}

#[test]
fn an_exempt_list_names_whole_sources() {
    privilege::run("datapath_limits_exempt_source", || {
        let settings = Settings {
            flags: SETTINGS_GLOBAL_EXEMPT,
            ..default_settings(SEED)
        }
        .with_access_generation(3);
        // Sources of /24s. One exempt /24, and one /32 inside a source
        // (which the configuration refuses): it exempts nobody, whichever
        // client of the source comes first.
        let mut f = fixture(
            settings,
            [limit(Some(1), None, 120), none(), none(), none()],
            none(),
        )?;
        let prefix = |t: &str| t.parse::<Prefix>().unwrap();
        let entries = exempt_entries(
            SCOPE_EXEMPT_GLOBAL,
            [prefix("192.0.2.200/32"), prefix("198.51.100.0/24")].into_iter(),
        );
        f.datapath
            .set_access(&entries.into_iter().collect::<Vec<_>>())?;
        let named = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 200));
        let exempt = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 9));
        run(
            &mut f,
            &[
                Case::forwarded(
                    "the /32 first: its source's token",
                    &syn(named, 40000, VIP4),
                    0,
                ),
                Case::dropped(
                    "the /32 again",
                    &syn(named, 40001, VIP4),
                    Stat::DROP_SOURCE_FLOWS,
                ),
                Case::dropped(
                    "its neighbour",
                    &syn(CLIENT4, 40000, VIP4),
                    Stat::DROP_SOURCE_FLOWS,
                ),
                Case::forwarded("an exempt source", &syn(exempt, 40000, VIP4), 0),
                Case::forwarded("again", &syn(exempt, 40001, VIP4), 0),
            ],
        )?;
        Ok(())
    });
}

#[test]
fn a_lowered_burst_leaves_no_debt_beyond_it() {
    privilege::run("datapath_limits_lowered", || {
        // 100 packets a second in bursts of 200: the source spends its
        // burst, owing two seconds.
        let generous = SourceLimit {
            packets: Rate::new(100, 200),
            ..limit(None, None, 128)
        };
        let mut f = fixture(
            default_settings(SEED),
            [generous, none(), none(), none()],
            none(),
        )?;
        let first = syn(CLIENT4, 40000, VIP4);
        let ack = first.clone().established();
        let mut spent = vec![Case::forwarded("syn", &first, 0)];
        spent.extend((1..200).map(|i| Case::forwarded(format!("ack {i}"), &ack, 0)));
        run(&mut f, &spent)?;
        // The burst lowered to one packet: the source owes at most that
        // (and a clock step), not the two seconds.
        let lowered = SourceLimit {
            packets: Rate::new(100, 1),
            ..generous
        };
        f.datapath.set_vip_limit(0, &lowered)?;
        run(
            &mut f,
            &[Case::dropped("at once", &ack, Stat::DROP_SOURCE_PACKETS)],
        )?;
        std::thread::sleep(std::time::Duration::from_millis(60));
        run(&mut f, &[Case::forwarded("60 ms later", &ack, 0)])?;
        Ok(())
    });
}
