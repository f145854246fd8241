//! NAT's paths (`forwarding = "nat"`), beside L2 DSR's: a client's segment
//! of an established connection, its backend's reply, and a new
//! connection's SYN, at 1,000 connections per family, on datapaths of
//! their own.
//!
//! A connection's entries live in the open tables from its first packet
//! until the backend's answer and the client's ACK of it move them to the
//! main tables; the established paths use connections so moved. A SYN
//! repeated on one 5-tuple would find its own open entry (and cost what a
//! segment of a live connection costs), so the new-connection path sends
//! a 5-tuple never seen before on every call, and completes each
//! handshake after the measured SYN, unmeasured, so that the open tables
//! hold only the handshakes in flight, as they do in service.

use std::{
    cell::RefCell,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use anyhow::{Context as _, Result, bail, ensure};
use balancer::{
    config::PortSpan,
    datapath::{LoadOptions, TestOutput, action},
    plan,
};
use balancer_common::{
    maps::DEFAULT_NAT_ENTRIES,
    nat::{NAT_OPEN_ENTRIES, RouteKey, SnatPool},
    proto,
};
use balancer_tests::{
    fixture::{Fixture, Vip, nat::hop},
    packet::{CLIENT_MAC, LB_MAC, segment},
};
use etherparse::{NetHeaders, PacketHeaders, TransportHeader};

use super::{
    Measured, Options, SMALL_TABLE, TABLE_SIZE, backends, checked_call, client, new_flows, packet,
    settings, vip,
};
use crate::{report, stats::Rng};

/// The paths' names, per family (IPv4, IPv6).
const FORWARD: [&str; 2] = ["nat_forward_v4", "nat_forward_v6"];
const REPLY: [&str; 2] = ["nat_reply_v4", "nat_reply_v6"];
const NEW: [&str; 2] = ["nat_new_v4", "nat_new_v6"];

/// The port the backends listen on (the VIPs' is 80): NAT rewrites both
/// ports.
const BACKEND_PORT: u16 = 8080;
/// Addresses of each family's SNAT pool.
const POOL: u8 = 8;
/// The source ports, split between the CPUs: with [`POOL`] addresses,
/// enough sources on one CPU for every connection a run opens, so that
/// no source is looked for twice.
const PORTS: PortSpan = PortSpan {
    first: 1024,
    last: 65535,
};

/// TCP flags.
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
/// Sequence numbers of the handshakes: the client's SYN (what
/// [`packet`] sends) and the backend's.
const CLIENT_SEQ: u32 = 1000;
const BACKEND_SEQ: u32 = 5000;

/// Whether options ask for any NAT path.
pub fn wanted(options: &Options) -> bool {
    options.paths.is_empty() || options.paths.iter().any(|n| n.starts_with("nat_"))
}

/// A datapath with a NAT VIP per family and [`SMALL_TABLE`] connections
/// of each family established on it.
pub struct NatTable {
    f: RefCell<Fixture>,
    /// Per family, each connection's frames as they come in.
    conns: [Vec<Frames>; 2],
}

/// An established connection's frames, as they reach the balancer.
struct Frames {
    /// The client's segment (ACK, no payload), to the VIP.
    forward: Vec<u8>,
    /// The backend's segment (ACK, no payload), to the connection's
    /// source.
    reply: Vec<u8>,
}

impl NatTable {
    /// Loads the datapath: one TCP VIP per family on port 80 (the other
    /// rows' addresses), ten backends each on [`BACKEND_PORT`], SNAT pools
    /// of [`POOL`] addresses, the source ports [`PORTS`], a route toward
    /// each family's clients; then opens [`SMALL_TABLE`] connections of
    /// each family through their handshakes.
    pub fn new() -> Result<NatTable> {
        let options = LoadOptions {
            flow_table_size: TABLE_SIZE,
            ..LoadOptions::default()
        };
        let mut f = Fixture::with_options(settings(), options)?;
        f.put_nat(&pools(), PORTS)?;
        for (index, v6) in [(0, false), (1, true)] {
            let members = backends(index * 10, v6)
                .into_iter()
                .map(|b| b.nat(Some(BACKEND_PORT)))
                .collect();
            f.put_vip(Vip::new(index, vip(v6), 80, proto::TCP, members))?;
        }
        let route = |addr: IpAddr, len| RouteKey::prefix(plan::addr(addr), len, addr.is_ipv4());
        f.datapath.set_nat_routes(&[
            (route(client(0, false).0, 10), hop()),
            (route(client(0, true).0, 64), hop()),
        ])?;
        let f = RefCell::new(f);
        let mut conns = [Vec::new(), Vec::new()];
        for i in 0..SMALL_TABLE {
            for v6 in [false, true] {
                let syn = checked_call(&f, &packet(i, vip(v6), false), action::TX)?;
                conns[usize::from(v6)].push(handshake(&f, i, v6, &syn)?);
            }
        }
        let established = f
            .borrow()
            .datapath
            .nat_flows()?
            .iter()
            .filter(|(_, _, open)| !open)
            .count();
        ensure!(
            established == 2 * SMALL_TABLE,
            "{established} NAT connections in the main tables, not {}",
            2 * SMALL_TABLE
        );
        Ok(NatTable { f, conns })
    }
}

/// The SNAT pools: 10.8.0.1 to .8, fd00:8::1 to ::8.
fn pools() -> [SnatPool; 2] {
    let mut pools = [SnatPool::default(); 2];
    for n in 0..POOL {
        let v4 = IpAddr::V4(Ipv4Addr::new(10, 8, 0, n + 1));
        let v6 = IpAddr::V6(Ipv6Addr::new(0xfd00, 8, 0, 0, 0, 0, 0, u16::from(n) + 1));
        for (pool, addr) in pools.iter_mut().zip([v4, v6]) {
            pool.addrs[usize::from(n)] = plan::addr(addr);
        }
    }
    for pool in &mut pools {
        pool.count = u32::from(POOL);
    }
    pools
}

/// Completes the handshake of flow `i` of a family whose SYN left as
/// `syn`: the backend's SYN-ACK, then the client's ACK of it, which moves
/// the connection to the main tables. Its frames for the established
/// paths.
fn handshake(f: &RefCell<Fixture>, i: usize, v6: bool, syn: &TestOutput) -> Result<Frames> {
    let to = sent(&syn.packet)?;
    let from_backend = |flags, seq, ack| {
        segment(
            (to.mac, LB_MAC),
            to.backend,
            to.source,
            flags,
            seq,
            ack,
            b"",
        )
    };
    let forward = segment(
        (CLIENT_MAC, LB_MAC),
        client(i, v6),
        (vip(v6), 80),
        ACK,
        CLIENT_SEQ + 1,
        BACKEND_SEQ + 1,
        b"",
    );
    checked_call(
        f,
        &from_backend(SYN | ACK, BACKEND_SEQ, CLIENT_SEQ + 1),
        action::TX,
    )?;
    checked_call(f, &forward, action::TX)?;
    Ok(Frames {
        forward,
        reply: from_backend(ACK, BACKEND_SEQ + 1, CLIENT_SEQ + 1),
    })
}

/// Where a frame the program sent to a backend went.
struct Sent {
    /// The backend's MAC.
    mac: [u8; 6],
    /// The connection's source, address and port.
    source: (IpAddr, u16),
    /// The backend's address and port.
    backend: (IpAddr, u16),
}

/// Where `frame`, which the program sent to a backend, goes.
fn sent(frame: &[u8]) -> Result<Sent> {
    let mac = frame
        .get(..6)
        .context("the program sent a frame shorter than a MAC")?
        .try_into()?;
    let headers = PacketHeaders::from_ethernet_slice(frame)
        .map_err(|err| anyhow::anyhow!("the program sent a frame that does not parse: {err}"))?;
    let (src, dst) = match &headers.net {
        Some(NetHeaders::Ipv4(ip, _)) => (IpAddr::from(ip.source), IpAddr::from(ip.destination)),
        Some(NetHeaders::Ipv6(ip, _)) => (IpAddr::from(ip.source), IpAddr::from(ip.destination)),
        _ => bail!("the program sent a frame without IP"),
    };
    let Some(TransportHeader::Tcp(tcp)) = &headers.transport else {
        bail!("the program sent a frame without TCP");
    };
    Ok(Sent {
        mac,
        source: (src, tcp.source_port),
        backend: (dst, tcp.destination_port),
    })
}

/// Segments of established connections of a family, a random one on
/// every call (the seed of [`super::established`]'s): the client's, or
/// with `reply` the backend's.
fn established(t: &NatTable, v6: bool, reply: bool) -> impl FnMut() -> Result<Duration> + '_ {
    let conns = &t.conns[usize::from(v6)];
    let mut rng = Rng::new(conns.len() as u64 * 2 + u64::from(v6));
    move || {
        let c = &conns[rng.below(conns.len())];
        let frame = if reply { &c.reply } else { &c.forward };
        Ok(checked_call(&t.f, frame, action::TX)?.duration)
    }
}

/// New connections of a family: the SYN of a 5-tuple never seen before on
/// every call (measured), then its handshake completed (unmeasured).
fn opened(t: &NatTable, v6: bool) -> impl FnMut() -> Result<Duration> + '_ {
    let mut next = SMALL_TABLE;
    move || {
        next += 1;
        let syn = checked_call(&t.f, &packet(next, vip(v6), false), action::TX)?;
        handshake(&t.f, next, v6, &syn)?;
        Ok(syn.duration)
    }
}

/// The measured paths: forward, reply, new, IPv4 then IPv6 for each; the
/// established ones on `established`, the new ones on `fresh` (whose main
/// tables the new connections fill).
pub fn measured<'a>(established_on: &'a NatTable, fresh: &'a NatTable) -> Vec<Measured<'a>> {
    let mut paths = Vec::new();
    for v6 in [false, true] {
        paths.push(Measured::new(
            FORWARD[usize::from(v6)],
            "1,000 flows, NAT",
            established(established_on, v6, false),
        ));
    }
    for v6 in [false, true] {
        paths.push(Measured::new(
            REPLY[usize::from(v6)],
            "1,000 flows, NAT reply",
            established(established_on, v6, true),
        ));
    }
    for v6 in [false, true] {
        let maglev = if v6 { "new_v6" } else { "new_v4" };
        paths.push(
            Measured::new(
                NEW[usize::from(v6)],
                "1,000 flows, new SYN, NAT",
                opened(fresh, v6),
            )
            .compared_with(maglev),
        );
    }
    paths
}

/// What the document says of the main tables of the new-connection
/// paths' datapath: every connection the run opens there is moved to
/// them, all from one CPU, and past that CPU's share of their LRU lists
/// the moves evict.
fn main_tables_fill(options: &Options) -> String {
    let opened = 2 * (SMALL_TABLE + new_flows(options));
    let cpus = aya::util::nr_cpus().map_or(1, |n| n.max(1)) as u32;
    let share = DEFAULT_NAT_ENTRIES / cpus;
    let (opened_text, share_text) = (
        report::number(opened as f64, 0),
        report::number(f64::from(share), 0),
    );
    if opened <= share as usize {
        format!(
            "The run opens {opened_text} connections there, on one CPU, within
    its share of the main tables' LRU lists ({share_text} entries each):
    nothing is evicted."
        )
    } else {
        format!(
            "The run opens {opened_text} connections there, on one CPU, past
    its share of the main tables' LRU lists ({share_text} entries each):
    once they are full, the unmeasured moves evict the least recently
    used."
        )
    }
}

/// What the document says of these paths.
pub fn prose(options: &Options) -> String {
    format!(
        "- `nat_forward`, `nat_reply`, `nat_new`: NAT (`forwarding = \"nat\"`),
  on datapaths of their own: one TCP VIP per family, ten backends
  listening on port {BACKEND_PORT}, a SNAT pool of {POOL} addresses per family,
  source ports {PORTS}, a route toward the clients' prefix. The main
  program finds the address marked NAT (a VIP's or a SNAT address) and
  tail-calls the NAT program, which parses the frame again. Each holds
  1,000 connections per family, each opened by its handshake (the SYN,
  the backend's SYN-ACK, the client's ACK of it), which moved it from the
  open tables to the main ones (`nat_table_size` {nat_table}, the
  default).
  - `nat_forward`: a client's segment (an ACK) of one of them, a random
    one on every call: a hit in the main forward table, the state machine
    (no change), both addresses and ports rewritten with the checksums
    updated in place, XDP_TX to the backend. Compare with `established`.
  - `nat_reply`: the backend's segment (an ACK) of one of them, to its
    SNAT address and port: a hit in the main reverse table, the route
    toward the client (an LPM trie lookup), the forward entry's state
    machine (no change), the rewrite to VIP → client, XDP_TX toward the
    route's next hop. DSR has no such packet: there replies bypass the
    balancer.
  - `nat_new`: a SYN of a 5-tuple never seen before (a SYN sent again
    would find its own open entry, and cost about what `nat_forward`
    does, with a miss in the main table first): misses in both forward
    tables, the Maglev ring lookup, a source taken
    (this CPU's port cursor, a pool address, misses in both reverse
    tables), the backend's port read, an insert into each open table, the
    rewrite, XDP_TX. After each call, unmeasured, its SYN-ACK and ACK move
    the connection to the main tables, so that the open tables
    ({open} entries, per-CPU LRU lists) hold only handshakes in flight, as
    in service, and never evict.
    {fill}
    `x maglev new` is its median over `new`'s: what NAT adds to a new flow.
",
        nat_table = report::number(f64::from(DEFAULT_NAT_ENTRIES), 0),
        open = report::number(f64::from(NAT_OPEN_ENTRIES), 0),
        fill = main_tables_fill(options),
    )
}
