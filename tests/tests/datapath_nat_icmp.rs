//! ICMP errors about NAT connections in the XDP program, through
//! BPF_PROG_TEST_RUN: each way, for TCP and UDP over IPv4 and IPv6, the
//! exact frame an error leaves as, built here from scratch (outer header,
//! ICMP checksum over the quote, the quoted headers and their checksums as
//! the other end of the connection sent them) while the program updates
//! them in place. Errors from either end itself and from routers between;
//! quotes whole and cut to 8 bytes of transport header (TCP's checksum
//! then lies outside, only the ports change); NAT without source NAT; and
//! errors that no connection holds, which pass.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context as _, Result, ensure};
use balancer::datapath::action::{DROP, PASS, TX};
use balancer_common::{
    nat::NatFlow,
    proto,
    stats::{Event, Stat},
};
use balancer_tests::{
    case::{Case, Counter, Out, run},
    fixture::{
        Fixture, backend_mac,
        nat::{self, Conn, PLAIN4, ROUTER_MAC, SNAT4, TCP_PORT, next_conn},
        standard::{CLIENT4, CLIENT6},
        stay_on_one_cpu,
    },
    packet::{IcmpError, LB_MAC, echo_request, icmp_error, quote},
    privilege,
};

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

/// A router between the balancer and the backends, of each family.
const BACK_ROUTER4: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 1, 0, 254));
const BACK_ROUTER6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 0xfe));
/// A router between the balancer and the clients, of each family.
const FRONT_ROUTER4: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 254));
const FRONT_ROUTER6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 1));

/// How much of the quoted packet's transport header an error quotes:
/// all of the packet, or the 8 bytes every error holds.
const WHOLE: Option<usize> = None;
const EIGHT: Option<usize> = Some(8);

fn stat(s: Stat, n: u64) -> (Counter, u64) {
    (Counter::Stat(s), n)
}

fn event(e: Event, n: u64) -> (Counter, u64) {
    (Counter::Event(e), n)
}

/// A packet of `c` with `payload`: a TCP segment with ACK, or a UDP
/// datagram, as `build` (one of `Conn`'s) makes it.
fn packet(c: &Conn, build: fn(&Conn, u8, u32, u32, &[u8]) -> Vec<u8>) -> Vec<u8> {
    build(c, ACK, 1001, 5001, b"GET / HTTP/1.1\r\n\r\n")
}

/// The client's first packet of `c`, which opens it, as it comes in and
/// as it leaves.
fn open(c: &Conn) -> Case {
    let flags = if c.proto == proto::TCP { SYN } else { 0 };
    Case::exact(
        "open",
        c.by_client(flags, 1000, 0, b"q"),
        TX,
        c.to_backend(flags, 1000, 0, b"q"),
        Some(c.backend),
        &[event(Event::NAT_OPENED, 1)],
    )
}

/// Error `kind` from `from` on the backend's side about a packet the
/// balancer sent `c`'s backend (quoting `l4` bytes of its transport
/// header), and the same error as the client must get it: from the VIP
/// when the backend itself sent it, about the client's own packet.
fn to_client(name: &str, c: &Conn, from: IpAddr, kind: IcmpError, l4: Option<usize>) -> Case {
    let sent = quote(&packet(c, Conn::to_backend), l4);
    let own = quote(&packet(c, Conn::by_client), l4);
    let frame = icmp_error(
        (backend_mac(c.backend), LB_MAC),
        from,
        c.source.0,
        kind,
        &sent,
    );
    let outer_src = if from == c.backend_addr.0 {
        c.vip.0
    } else {
        from
    };
    let out = icmp_error((LB_MAC, ROUTER_MAC), outer_src, c.client.0, kind, &own);
    Case::exact(
        name,
        frame,
        TX,
        out,
        None,
        &[
            stat(Stat::TX_REPLY, 1),
            event(Event::NAT_ICMP_TO_CLIENT, 1),
            event(Event::NAT_ICMP_TO_BACKEND, 0),
        ],
    )
}

/// Error `kind` from `from` on the client's side about a reply the
/// balancer sent `c`'s client, and the same error as the backend must get
/// it: from the connection's source with source NAT, about the backend's
/// own reply.
fn to_backend(name: &str, c: &Conn, from: IpAddr, kind: IcmpError, l4: Option<usize>) -> Case {
    let sent = quote(&packet(c, Conn::to_client), l4);
    let own = quote(&packet(c, Conn::by_backend), l4);
    let frame = icmp_error((ROUTER_MAC, LB_MAC), from, c.vip.0, kind, &sent);
    let outer_src = if c.source == c.client {
        from
    } else {
        c.source.0
    };
    let out = icmp_error(
        (LB_MAC, backend_mac(c.backend)),
        outer_src,
        c.backend_addr.0,
        kind,
        &own,
    );
    Case::exact(
        name,
        frame,
        TX,
        out,
        Some(c.backend),
        &[
            stat(Stat::TX, 1),
            event(Event::NAT_ICMP_TO_BACKEND, 1),
            event(Event::NAT_ICMP_TO_CLIENT, 0),
            (Counter::BackendPackets, 1),
        ],
    )
}

/// The forward entry of `c`.
fn entry(f: &Fixture, c: &Conn) -> Result<NatFlow> {
    let key = c.key();
    f.datapath
        .nat_flows()?
        .into_iter()
        .find(|(k, _, _)| *k == key)
        .map(|(_, flow, _)| flow)
        .context("the connection has no forward entry")
}

/// Opens a connection to each NAT VIP with source NAT (IPv4 and IPv6, TCP
/// and UDP) and runs the cases `cases` makes for it; the errors change
/// nothing of the connection.
fn each_connection(test: &str, cases: impl Fn(&Conn, &str, IpAddr) -> Vec<Case>) {
    privilege::run(test, || {
        stay_on_one_cpu()?;
        let mut f = nat::nat()?;
        for (index, client, name) in [
            (0, CLIENT4, "IPv4 TCP"),
            (1, CLIENT4, "IPv4 UDP"),
            (2, CLIENT6, "IPv6 TCP"),
            (3, CLIENT6, "IPv6 UDP"),
        ] {
            let c = next_conn(&f, index, (client, 41000))?;
            run(&mut f, &[open(&c)]).context(name)?;
            let before = entry(&f, &c)?;
            run(&mut f, &cases(&c, name, client)).context(name)?;
            ensure!(
                entry(&f, &c)? == before,
                "{name}: an error changed the connection"
            );
        }
        Ok(())
    });
}

#[test]
fn errors_from_the_backends_side_reach_the_client_about_its_own_packet() {
    each_connection("datapath_nat_icmp_to_client", |c, name, client| {
        let router = if client.is_ipv4() {
            BACK_ROUTER4
        } else {
            BACK_ROUTER6
        };
        let backend = c.backend_addr.0;
        vec![
            to_client(
                &format!("{name}: too big, from the backend"),
                c,
                backend,
                IcmpError::TooBig(1400),
                WHOLE,
            ),
            to_client(
                &format!("{name}: port unreachable, from the backend, 8 bytes quoted"),
                c,
                backend,
                IcmpError::PortUnreachable,
                EIGHT,
            ),
            to_client(
                &format!("{name}: time exceeded, from a router"),
                c,
                router,
                IcmpError::TimeExceeded,
                WHOLE,
            ),
            to_client(
                &format!("{name}: too big, from a router, 8 bytes quoted"),
                c,
                router,
                IcmpError::TooBig(1280),
                EIGHT,
            ),
        ]
    });
}

#[test]
fn errors_from_the_clients_side_reach_the_backend_about_its_own_reply() {
    each_connection("datapath_nat_icmp_to_backend", |c, name, client| {
        let router = if client.is_ipv4() {
            FRONT_ROUTER4
        } else {
            FRONT_ROUTER6
        };
        vec![
            to_backend(
                &format!("{name}: too big, from a router"),
                c,
                router,
                IcmpError::TooBig(1280),
                WHOLE,
            ),
            to_backend(
                &format!("{name}: time exceeded, from a router, 8 bytes quoted"),
                c,
                router,
                IcmpError::TimeExceeded,
                EIGHT,
            ),
            to_backend(
                &format!("{name}: port unreachable, from the client"),
                c,
                client,
                IcmpError::PortUnreachable,
                WHOLE,
            ),
            to_backend(
                &format!("{name}: too big, from the client, 8 bytes quoted"),
                c,
                client,
                IcmpError::TooBig(1400),
                EIGHT,
            ),
        ]
    });
}

#[test]
fn a_quoted_udp_datagram_over_ipv4_without_a_checksum_keeps_none() {
    privilege::run("datapath_nat_icmp_udp_zero", || {
        stay_on_one_cpu()?;
        let mut f = nat::nat()?;
        let c = next_conn(&f, 1, (CLIENT4, 41002))?;
        // Ethernet 14, IPv4 20, UDP checksum at 6.
        let zero = |mut frame: Vec<u8>| {
            frame[40..42].copy_from_slice(&[0, 0]);
            frame
        };
        let kind = IcmpError::PortUnreachable;
        let (backend, client) = (c.backend_addr.0, c.client.0);
        let sent = quote(&zero(packet(&c, Conn::to_backend)), WHOLE);
        let own = quote(&zero(packet(&c, Conn::by_client)), WHOLE);
        let reply_sent = quote(&zero(packet(&c, Conn::to_client)), WHOLE);
        let reply_own = quote(&zero(packet(&c, Conn::by_backend)), WHOLE);
        let (snat, vip) = (c.source.0, c.vip.0);
        run(
            &mut f,
            &[
                open(&c),
                Case::exact(
                    "to the client",
                    icmp_error((backend_mac(c.backend), LB_MAC), backend, snat, kind, &sent),
                    TX,
                    icmp_error((LB_MAC, ROUTER_MAC), vip, client, kind, &own),
                    None,
                    &[event(Event::NAT_ICMP_TO_CLIENT, 1)],
                ),
                Case::exact(
                    "to the backend",
                    icmp_error((ROUTER_MAC, LB_MAC), client, vip, kind, &reply_sent),
                    TX,
                    icmp_error(
                        (LB_MAC, backend_mac(c.backend)),
                        snat,
                        backend,
                        kind,
                        &reply_own,
                    ),
                    Some(c.backend),
                    &[event(Event::NAT_ICMP_TO_BACKEND, 1)],
                ),
            ],
        )
        .map(drop)
    });
}

#[test]
fn without_source_nat_errors_go_to_and_come_from_the_clients_own_address() {
    privilege::run("datapath_nat_icmp_no_snat", || {
        stay_on_one_cpu()?;
        let mut f = nat::nat()?;
        let c = next_conn(&f, 4, (CLIENT4, 46000))?;
        ensure!(c.source == c.client && c.vip == (PLAIN4, TCP_PORT));
        let backend = c.backend_addr.0;
        run(
            &mut f,
            &[
                open(&c),
                to_client(
                    "from the backend, to the client's address",
                    &c,
                    backend,
                    IcmpError::TooBig(1400),
                    WHOLE,
                ),
                to_client(
                    "from a router, to the client's address",
                    &c,
                    BACK_ROUTER4,
                    IcmpError::TimeExceeded,
                    EIGHT,
                ),
                // The backend sees the router's address, as it would
                // without the balancer.
                to_backend(
                    "from a router, to the VIP",
                    &c,
                    FRONT_ROUTER4,
                    IcmpError::TooBig(1280),
                    WHOLE,
                ),
            ],
        )
        .map(drop)
    });
}

#[test]
fn errors_no_connection_holds_pass_and_others_are_left_alone() {
    privilege::run("datapath_nat_icmp_strays", || {
        stay_on_one_cpu()?;
        let mut f = nat::nat()?;
        // A client no route reaches: its connection's errors have nowhere
        // to go.
        let far = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9));
        let unrouted = next_conn(&f, 0, (far, 47001))?;
        run(&mut f, &[open(&unrouted)])?;
        let unrouted_sent = quote(&packet(&unrouted, Conn::to_backend), WHOLE);
        let c = next_conn(&f, 0, (CLIENT4, 47000))?;
        let plain = next_conn(&f, 4, (CLIENT4, 47002))?;
        let kind = IcmpError::TooBig(1400);
        let by_backend = (backend_mac(c.backend), LB_MAC);
        let backend = c.backend_addr.0;
        let sent = quote(&packet(&c, Conn::to_backend), WHOLE);
        let pass = |name: &str, frame: Vec<u8>| {
            Case::new(
                name,
                frame,
                PASS,
                Out::Same,
                &[
                    stat(Stat::PASS_ICMP, 1),
                    event(Event::NAT_ICMP_TO_CLIENT, 0),
                ],
            )
        };
        run(
            &mut f,
            &[
                // Before the connection opens, nothing holds what the
                // errors quote.
                pass(
                    "about no connection, to a SNAT address",
                    icmp_error(by_backend, backend, c.source.0, kind, &sent),
                ),
                pass(
                    "about no connection, to a NAT VIP",
                    icmp_error(
                        (ROUTER_MAC, LB_MAC),
                        FRONT_ROUTER4,
                        c.vip.0,
                        kind,
                        &quote(&packet(&c, Conn::to_client), WHOLE),
                    ),
                ),
                pass(
                    "about no connection, to a client's address",
                    icmp_error(
                        (backend_mac(plain.backend), LB_MAC),
                        plain.backend_addr.0,
                        CLIENT4,
                        kind,
                        &quote(&packet(&plain, Conn::to_backend), WHOLE),
                    ),
                ),
                open(&c),
                // The quoted packet did not leave from where the error
                // goes.
                pass(
                    "to another SNAT address than the quoted source",
                    icmp_error(by_backend, backend, SNAT4[1 - index(&c)], kind, &sent),
                ),
                pass(
                    "an echo request to a SNAT address",
                    echo_request(backend, c.source.0),
                ),
                Case::new(
                    "about the connection of a client no route reaches",
                    icmp_error(by_backend, backend, unrouted.source.0, kind, &unrouted_sent),
                    DROP,
                    Out::Same,
                    &[stat(Stat::DROP_NAT_NO_ROUTE, 1)],
                ),
                to_client("about the connection, at last", &c, backend, kind, WHOLE),
            ],
        )
        .map(drop)
    });
}

/// The index in [`SNAT4`] of `c`'s source.
fn index(c: &Conn) -> usize {
    SNAT4
        .iter()
        .position(|a| *a == c.source.0)
        .expect("an IPv4 source of the pool")
}
