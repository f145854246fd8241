//! NAT forwarding in the XDP program, through BPF_PROG_TEST_RUN: for TCP
//! and UDP over IPv4 and IPv6, the exact frames a connection's packets
//! leave as, both ways, built here with their checksums computed from
//! scratch (the program updates them in place); the handshake that moves
//! a connection to the main tables; source ports taken in turn from the
//! CPU's range, and their exhaustion; states and their timeouts; NAT
//! without source NAT; and what is dropped or passed, and counted so.

use std::net::IpAddr;

use anyhow::{Context as _, Result, ensure};
use balancer::datapath::action::{DROP, PASS, TX};
use balancer_common::{
    nat::{NAT_CLOSING, NAT_ESTABLISHED, NAT_SYN, NAT_SYN_ACK, NAT_UDP, NatFlow, PORT_TRIES},
    proto,
    stats::{Event, Stat},
};
use balancer_tests::{
    case::{Case, Counter, run},
    fixture::{
        Fixture, backend_mac, flow_key,
        nat::{
            self, BACKEND_PORT, Conn, PLAIN4, PORTS, SNAT4, TCP_PORT, UDP_PORT, next_conn,
            next_conn_in,
        },
        standard::{CLIENT4, CLIENT6, VIP4},
        stay_on_one_cpu,
    },
    packet::{LB_MAC, segment},
    privilege,
};

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const SYN_ACK: u8 = SYN | ACK;
const FIN_ACK: u8 = 0x01 | ACK;
const RST: u8 = 0x04;

/// A case of `frame` leaving as exactly `out` with `verdict`, counters
/// of `counts`.
fn exact(
    name: &str,
    frame: Vec<u8>,
    verdict: u32,
    out: Vec<u8>,
    conn: &Conn,
    counts: &[(Counter, u64)],
) -> Case {
    Case::exact(name, frame, verdict, out, Some(conn.backend), counts)
}

fn stat(s: Stat, n: u64) -> (Counter, u64) {
    (Counter::Stat(s), n)
}

fn event(e: Event, n: u64) -> (Counter, u64) {
    (Counter::Event(e), n)
}

/// The forward entry of `conn` and whether it is in the open table.
fn entry(f: &Fixture, conn: &Conn) -> Result<Option<(NatFlow, bool)>> {
    let key = conn.key();
    Ok(f.datapath
        .nat_flows()?
        .into_iter()
        .find(|(k, _, _)| *k == key)
        .map(|(_, flow, open)| (flow, open)))
}

#[test]
fn a_tcp_connection_is_translated_both_ways_and_promoted_by_its_handshake() {
    privilege::run("datapath_nat_tcp", || {
        stay_on_one_cpu()?;
        let mut f = nat::nat()?;
        for (index, client) in [(0, CLIENT4), (2, CLIENT6)] {
            let c = next_conn(&f, index, (client, 41000))?;
            let family = if client.is_ipv4() { "IPv4" } else { "IPv6" };
            let cases = [
                exact(
                    &format!("{family} syn"),
                    c.by_client(SYN, 1000, 0, b""),
                    TX,
                    c.to_backend(SYN, 1000, 0, b""),
                    &c,
                    &[
                        stat(Stat::TX, 1),
                        event(Event::NAT_OPENED, 1),
                        event(Event::NEW_FLOW, 1),
                        (Counter::VipNewFlows(index), 1),
                        (Counter::BackendNewFlows, 1),
                    ],
                ),
                exact(
                    &format!("{family} syn-ack"),
                    c.by_backend(SYN_ACK, 5000, 1001, b""),
                    TX,
                    c.to_client(SYN_ACK, 5000, 1001, b""),
                    &c,
                    &[stat(Stat::TX_REPLY, 1), event(Event::NAT_PROMOTED, 0)],
                ),
                // An ACK that does not acknowledge the backend's SYN does
                // not complete the handshake, but goes through.
                exact(
                    &format!("{family} wrong ack"),
                    c.by_client(ACK, 1001, 4242, b""),
                    TX,
                    c.to_backend(ACK, 1001, 4242, b""),
                    &c,
                    &[event(Event::NAT_PROMOTED, 0), event(Event::NAT_OPENED, 0)],
                ),
                exact(
                    &format!("{family} ack"),
                    c.by_client(ACK, 1001, 5001, b"GET /"),
                    TX,
                    c.to_backend(ACK, 1001, 5001, b"GET /"),
                    &c,
                    &[
                        event(Event::NAT_PROMOTED, 1),
                        event(Event::NEW_FLOW, 0),
                        (Counter::VipPackets(index), 1),
                    ],
                ),
                exact(
                    &format!("{family} data back"),
                    c.by_backend(ACK, 5001, 1006, b"200 OK"),
                    TX,
                    c.to_client(ACK, 5001, 1006, b"200 OK"),
                    &c,
                    &[stat(Stat::TX_REPLY, 1)],
                ),
            ];
            let name = format!("{family} handshake");
            run(&mut f, &cases[..2]).context(name.clone())?;
            let (flow, open) = entry(&f, &c)?.context("no entry after the SYN-ACK")?;
            ensure!(open && flow.state == NAT_SYN_ACK && flow.expect_ack == 5001);
            run(&mut f, &cases[2..]).context(name)?;
            let (flow, open) = entry(&f, &c)?.context("no entry after the ACK")?;
            ensure!(
                !open && flow.state == NAT_ESTABLISHED,
                "{flow:?} open {open}"
            );
            ensure!(
                f.datapath
                    .nat_replies()?
                    .iter()
                    .filter(|(_, _, o)| !o)
                    .count()
                    == f.datapath
                        .nat_flows()?
                        .iter()
                        .filter(|(_, _, o)| !o)
                        .count(),
                "both entries moved"
            );
            // Either side's FIN ends it: closing, both ways still sent.
            run(
                &mut f,
                &[
                    exact(
                        &format!("{family} fin"),
                        c.by_client(FIN_ACK, 1006, 5007, b""),
                        TX,
                        c.to_backend(FIN_ACK, 1006, 5007, b""),
                        &c,
                        &[],
                    ),
                    exact(
                        &format!("{family} fin back"),
                        c.by_backend(FIN_ACK, 5007, 1007, b""),
                        TX,
                        c.to_client(FIN_ACK, 5007, 1007, b""),
                        &c,
                        &[],
                    ),
                ],
            )?;
            let (flow, _) = entry(&f, &c)?.context("no entry after the FIN")?;
            ensure!(flow.state == NAT_CLOSING);
        }
        Ok(())
    });
}

#[test]
fn a_udp_flow_is_translated_both_ways_and_promoted_by_the_backends_datagram() {
    privilege::run("datapath_nat_udp", || {
        stay_on_one_cpu()?;
        let mut f = nat::nat()?;
        for (index, client) in [(1, CLIENT4), (3, CLIENT6)] {
            let c = next_conn(&f, index, (client, 41000))?;
            ensure!(
                c.backend_addr.1 == UDP_PORT,
                "a backend keeps the VIP's port"
            );
            run(
                &mut f,
                &[
                    exact(
                        "query",
                        c.by_client(0, 0, 0, b"query"),
                        TX,
                        c.to_backend(0, 0, 0, b"query"),
                        &c,
                        &[event(Event::NAT_OPENED, 1)],
                    ),
                    exact(
                        "answer",
                        c.by_backend(0, 0, 0, b"answer"),
                        TX,
                        c.to_client(0, 0, 0, b"answer"),
                        &c,
                        &[stat(Stat::TX_REPLY, 1), event(Event::NAT_PROMOTED, 1)],
                    ),
                    exact(
                        "query again",
                        c.by_client(0, 0, 0, b"again"),
                        TX,
                        c.to_backend(0, 0, 0, b"again"),
                        &c,
                        &[event(Event::NAT_OPENED, 0)],
                    ),
                ],
            )?;
            let (flow, open) = entry(&f, &c)?.context("no entry")?;
            ensure!(!open && flow.state == NAT_UDP);
        }
        Ok(())
    });
}

#[test]
fn udp_over_ipv4_without_a_checksum_keeps_none() {
    privilege::run("datapath_nat_udp_zero", || {
        stay_on_one_cpu()?;
        let mut f = nat::nat()?;
        let c = next_conn(&f, 1, (CLIENT4, 41001))?;
        let zero = |mut frame: Vec<u8>| {
            // Ethernet 14, IPv4 20, UDP checksum at 6.
            frame[40..42].copy_from_slice(&[0, 0]);
            frame
        };
        run(
            &mut f,
            &[
                exact(
                    "query",
                    zero(c.by_client(0, 0, 0, b"query")),
                    TX,
                    zero(c.to_backend(0, 0, 0, b"query")),
                    &c,
                    &[],
                ),
                exact(
                    "answer",
                    zero(c.by_backend(0, 0, 0, b"answer")),
                    TX,
                    zero(c.to_client(0, 0, 0, b"answer")),
                    &c,
                    &[],
                ),
            ],
        )
        .map(drop)
    });
}

#[test]
fn sources_are_taken_in_turn_and_an_exhausted_range_drops_and_counts() {
    privilege::run("datapath_nat_ports", || {
        stay_on_one_cpu()?;
        let mut f = nat::nat()?;
        // Connections take the next candidates: the pool's addresses
        // turn fastest, then the port.
        let mut seen = Vec::new();
        for port in 42000..42004 {
            let c = next_conn(&f, 0, (CLIENT4, port))?;
            run(
                &mut f,
                &[exact(
                    "syn",
                    c.by_client(SYN, 1, 0, b""),
                    TX,
                    c.to_backend(SYN, 1, 0, b""),
                    &c,
                    &[],
                )],
            )?;
            seen.push(c.source);
        }
        let cpu = nix::sched::sched_getcpu()?;
        let first = f.datapath.snat_ports()?[cpu].first;
        ensure!(
            seen == [
                (SNAT4[0], first),
                (SNAT4[1], first),
                (SNAT4[0], first + 1),
                (SNAT4[1], first + 1)
            ],
            "{seen:?}"
        );
        // A range of one port per CPU, and a pool of one address: one
        // connection per backend.
        let mut f = nat::nat()?;
        let mut pools = nat::pools();
        pools[0].count = 1;
        let cpus = f.datapath.snat_ports()?.len() as u16;
        f.put_nat(
            &pools,
            balancer::config::PortSpan {
                first: PORTS.first,
                last: PORTS.first + cpus - 1,
            },
        )?;
        let pool4 = &SNAT4[..1];
        let first = next_conn_in(&f, 0, (CLIENT4, 43000), pool4)?;
        // A client whose flow the ring gives the same backend.
        let second = (43001..44000)
            .map(|port| next_conn_in(&f, 0, (CLIENT4, port), pool4))
            .find(|c| c.as_ref().is_ok_and(|c| c.backend == first.backend))
            .context("no other flow on the same backend")??;
        run(
            &mut f,
            &[
                exact(
                    "first",
                    first.by_client(SYN, 1, 0, b""),
                    TX,
                    first.to_backend(SYN, 1, 0, b""),
                    &first,
                    &[],
                ),
                Case::new(
                    "second, to the same backend",
                    second.by_client(SYN, 1, 0, b""),
                    DROP,
                    balancer_tests::case::Out::Same,
                    &[
                        stat(Stat::DROP_NAT_PORTS, 1),
                        event(Event::NAT_PORT_TAKEN, u64::from(PORT_TRIES)),
                        event(Event::NAT_OPENED, 0),
                    ],
                ),
            ],
        )?;
        // The same source is free for another backend.
        let other = (44000..45000)
            .map(|port| next_conn_in(&f, 0, (CLIENT4, port), pool4))
            .find(|c| c.as_ref().is_ok_and(|c| c.backend != first.backend))
            .context("no flow on another backend")??;
        ensure!(other.source == first.source);
        run(
            &mut f,
            &[exact(
                "another backend",
                other.by_client(SYN, 1, 0, b""),
                TX,
                other.to_backend(SYN, 1, 0, b""),
                &other,
                &[stat(Stat::DROP_NAT_PORTS, 0)],
            )],
        )
        .map(drop)
    });
}

#[test]
fn handshakes_expire_on_their_own_timeout_and_closed_connections_on_theirs() {
    privilege::run("datapath_nat_expiry", || {
        stay_on_one_cpu()?;
        let mut f = nat::nat()?;
        let mut settings = f.settings;
        settings.nat_handshake_ns = 50_000_000;
        settings.nat_closing_ns = 50_000_000;
        f.datapath.set_settings(&settings)?;
        let c = next_conn(&f, 0, (CLIENT4, 45000))?;
        run(
            &mut f,
            &[exact(
                "syn",
                c.by_client(SYN, 1000, 0, b""),
                TX,
                c.to_backend(SYN, 1000, 0, b""),
                &c,
                &[],
            )],
        )?;
        std::thread::sleep(std::time::Duration::from_millis(150));
        // The backend answers too late: the handshake expired.
        run(
            &mut f,
            &[Case::new(
                "late syn-ack",
                c.by_backend(SYN_ACK, 5000, 1001, b""),
                DROP,
                balancer_tests::case::Out::Same,
                &[stat(Stat::DROP_NAT_EXPIRED, 1)],
            )],
        )?;
        // The client's retransmitted SYN opens it again, from the next
        // source.
        let again = next_conn(&f, 0, (CLIENT4, 45000))?;
        ensure!(again.source != c.source);
        run(
            &mut f,
            &[
                exact(
                    "syn again",
                    again.by_client(SYN, 1000, 0, b""),
                    TX,
                    again.to_backend(SYN, 1000, 0, b""),
                    &again,
                    &[event(Event::NAT_OPENED, 1)],
                ),
                exact(
                    "syn-ack",
                    again.by_backend(SYN_ACK, 5000, 1001, b""),
                    TX,
                    again.to_client(SYN_ACK, 5000, 1001, b""),
                    &again,
                    &[],
                ),
                exact(
                    "rst",
                    again.by_client(RST, 1001, 0, b""),
                    TX,
                    again.to_backend(RST, 1001, 0, b""),
                    &again,
                    &[],
                ),
            ],
        )?;
        ensure!(entry(&f, &again)?.is_some_and(|(flow, _)| flow.state == NAT_CLOSING));
        std::thread::sleep(std::time::Duration::from_millis(150));
        run(
            &mut f,
            &[Case::new(
                "after the close",
                again.by_backend(ACK, 5001, 1001, b""),
                DROP,
                balancer_tests::case::Out::Same,
                &[stat(Stat::DROP_NAT_EXPIRED, 1)],
            )],
        )
        .map(drop)
    });
}

#[test]
fn without_source_nat_the_backend_sees_the_client_and_replies_to_it() {
    privilege::run("datapath_nat_no_snat", || {
        stay_on_one_cpu()?;
        let mut f = nat::nat()?;
        let c = next_conn(&f, 4, (CLIENT4, 46000))?;
        ensure!(c.source == c.client && c.vip == (PLAIN4, TCP_PORT));
        ensure!(c.backend_addr.1 == BACKEND_PORT);
        run(
            &mut f,
            &[
                exact(
                    "syn",
                    c.by_client(SYN, 1000, 0, b""),
                    TX,
                    c.to_backend(SYN, 1000, 0, b""),
                    &c,
                    &[],
                ),
                exact(
                    "syn-ack to the client's address",
                    c.by_backend(SYN_ACK, 5000, 1001, b""),
                    TX,
                    c.to_client(SYN_ACK, 5000, 1001, b""),
                    &c,
                    &[stat(Stat::TX_REPLY, 1)],
                ),
            ],
        )?;
        ensure!(entry(&f, &c)?.is_some_and(|(flow, open)| open && flow.state == NAT_SYN_ACK));
        Ok(())
    });
}

#[test]
fn what_no_connection_holds_passes_or_is_dropped_and_counted() {
    privilege::run("datapath_nat_strays", || {
        stay_on_one_cpu()?;
        let mut f = nat::nat()?;
        let c = next_conn(&f, 0, (CLIENT4, 47000))?;
        let backend = c.backend_addr;
        let same = balancer_tests::case::Out::Same;
        let stray = |dst: (IpAddr, u16), flags| {
            segment(
                (backend_mac(c.backend), LB_MAC),
                backend,
                dst,
                flags,
                9,
                9,
                b"",
            )
        };
        let far = (
            IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 9)),
            TCP_PORT,
        );
        let unrouted = next_conn(&f, 0, (far.0, 47001))?;
        run(
            &mut f,
            &[
                // A reply to the SNAT address no connection holds (the
                // host's own connection, say) is the kernel's.
                Case::new(
                    "stray to a SNAT address",
                    stray((SNAT4[0], 40123), SYN_ACK),
                    PASS,
                    same,
                    &[stat(Stat::PASS_NOT_VIP, 1)],
                ),
                Case::new(
                    "stray to a client's address",
                    stray((CLIENT4, 40123), ACK),
                    PASS,
                    same,
                    &[stat(Stat::PASS_NOT_VIP, 1)],
                ),
                Case::new(
                    "fin of no connection",
                    c.by_client(FIN_ACK, 1, 1, b""),
                    DROP,
                    same,
                    &[stat(Stat::DROP_NAT_NO_FLOW, 1), event(Event::NAT_OPENED, 0)],
                ),
                Case::new(
                    "flags no client sends",
                    c.by_client(SYN_ACK, 1, 1, b""),
                    DROP,
                    same,
                    &[stat(Stat::DROP_TCP_FLAGS, 1)],
                ),
                exact(
                    "a client no route reaches",
                    unrouted.by_client(SYN, 1, 0, b""),
                    TX,
                    unrouted.to_backend(SYN, 1, 0, b""),
                    &unrouted,
                    &[],
                ),
                Case::new(
                    "its reply",
                    unrouted.by_backend(SYN_ACK, 5, 2, b""),
                    DROP,
                    same,
                    &[stat(Stat::DROP_NAT_NO_ROUTE, 1)],
                ),
            ],
        )?;
        // The reply that went nowhere changed nothing.
        ensure!(entry(&f, &unrouted)?.is_some_and(|(flow, _)| flow.state == NAT_SYN));
        Ok(())
    });
}

#[test]
fn a_connection_whose_backend_goes_down_fails_over_to_a_new_one() {
    privilege::run("datapath_nat_failover", || {
        stay_on_one_cpu()?;
        let mut f = nat::nat()?;
        let c = next_conn(&f, 0, (CLIENT4, 48000))?;
        run(
            &mut f,
            &[exact(
                "syn",
                c.by_client(SYN, 1000, 0, b""),
                TX,
                c.to_backend(SYN, 1000, 0, b""),
                &c,
                &[],
            )],
        )?;
        let mut vip = nat::vip(0);
        for b in &mut vip.backends {
            b.up = b.id != c.backend;
        }
        f.put_vip(vip)?;
        let moved = next_conn(&f, 0, (CLIENT4, 48000))?;
        ensure!(moved.backend != c.backend && moved.source != c.source);
        run(
            &mut f,
            &[exact(
                "next segment",
                moved.by_client(ACK, 1001, 1, b"x"),
                TX,
                moved.to_backend(ACK, 1001, 1, b"x"),
                &moved,
                &[event(Event::FAILOVER, 1), event(Event::NAT_OPENED, 1)],
            )],
        )?;
        // The old reverse entry is gone with the old connection.
        let stale = flow_key(
            c.backend_addr.0,
            c.backend_addr.1,
            c.source.0,
            c.source.1,
            proto::TCP,
        );
        ensure!(
            !f.datapath
                .nat_replies()?
                .iter()
                .any(|(key, _, _)| *key == stale)
        );
        ensure!(entry(&f, &moved)?.is_some_and(|(flow, open)| open && flow.state != NAT_SYN));
        Ok(())
    });
}

#[test]
fn fragments_to_a_nat_vip_are_dropped_and_counted() {
    privilege::run("datapath_nat_fragments", || {
        stay_on_one_cpu()?;
        let mut f = nat::nat()?;
        let (IpAddr::V4(client), IpAddr::V4(vip)) = (CLIENT4, VIP4) else {
            unreachable!("IPv4 constants")
        };
        let [first, later] =
            balancer_tests::packet::ipv4_fragments(client.octets(), vip.octets(), UDP_PORT);
        let same = balancer_tests::case::Out::Same;
        run(
            &mut f,
            &[
                Case::new(
                    "first fragment",
                    first,
                    DROP,
                    same,
                    &[
                        stat(Stat::DROP_NAT_FRAGMENT, 1),
                        event(Event::NAT_OPENED, 0),
                    ],
                ),
                Case::new(
                    "later fragment",
                    later,
                    DROP,
                    same,
                    &[stat(Stat::DROP_FRAGMENT_UNMATCHED, 1)],
                ),
            ],
        )
        .map(drop)
    });
}

#[test]
fn a_clients_own_port_within_the_range_is_kept_where_free() {
    privilege::run("datapath_nat_keep_port", || {
        stay_on_one_cpu()?;
        let mut f = nat::nat()?;
        // A port within PORTS: kept, on the address the client's picks.
        let kept = next_conn(&f, 0, (CLIENT4, 40500))?;
        ensure!(kept.source.1 == 40500, "{:?}", kept.source);
        run(
            &mut f,
            &[exact(
                "kept",
                kept.by_client(SYN, 1, 0, b""),
                TX,
                kept.to_backend(SYN, 1, 0, b""),
                &kept,
                &[event(Event::NAT_PORT_TAKEN, 0)],
            )],
        )?;
        // Another client with the same port, on the same SNAT address and
        // backend: the source is taken, the range gives the next one.
        let other = (8..255)
            .map(|last| {
                let client = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, last));
                next_conn(&f, 0, (client, 40500))
            })
            .find(|c| {
                c.as_ref()
                    .is_ok_and(|c| c.backend == kept.backend && c.source == kept.source)
            })
            .context("no client on the same backend and address")??;
        let cpu = nix::sched::sched_getcpu()?;
        let range = f.datapath.snat_ports()?[cpu];
        let (i, port) = range.candidate(range.next, SNAT4.len() as u32);
        let other = Conn {
            source: (SNAT4[i as usize], port),
            ..other
        };
        run(
            &mut f,
            &[exact(
                "taken: the range's next",
                other.by_client(SYN, 1, 0, b""),
                TX,
                other.to_backend(SYN, 1, 0, b""),
                &other,
                &[event(Event::NAT_PORT_TAKEN, 1)],
            )],
        )?;
        // A port outside the range: the range's next source.
        let outside = next_conn(&f, 0, (CLIENT4, 50000))?;
        ensure!((PORTS.first..=PORTS.last).contains(&outside.source.1));
        run(
            &mut f,
            &[exact(
                "outside",
                outside.by_client(SYN, 1, 0, b""),
                TX,
                outside.to_backend(SYN, 1, 0, b""),
                &outside,
                &[],
            )],
        )
        .map(drop)
    });
}
