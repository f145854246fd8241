//! The new-flow paths of the schedulers other than plain Maglev, and of
//! session persistence, at 1,000 flows: each compared with Maglev's `new`
//! path of the same family, measured in the same run on the same table.

use std::{
    cell::RefCell,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    rc::Rc,
    time::Duration,
};

use anyhow::{Result, bail, ensure};
use balancer::{
    config::{Persistence, Scheduler},
    datapath::{TestOutput, action},
};
use balancer_common::{maps::PERSIST_ENTRIES, proto};
use balancer_tests::{
    fixture::{Fixture, Vip},
    packet::Packet,
};

use super::{
    Measured, Options, SMALL_TABLE, backends, call, checked_call, fresh, new_flows, packet,
};
use crate::report;

/// The new-flow paths beside Maglev's (`new_v4`, `new_v6`), all at 1,000
/// flows. Each has a TCP VIP of its own in each family, with ten backends
/// of its own, and its cost is compared with Maglev's in the same family.
pub const PATHS: [NewFlowPath; 6] = [
    NewFlowPath {
        names: ["new_v4_source_hash", "new_v6_source_hash"],
        what: "1,000 flows, new SYN",
        scheduler: Scheduler::SourceHash,
        persistence: false,
        clients: Clients::Fresh,
    },
    NewFlowPath {
        names: ["new_v4_round_robin", "new_v6_round_robin"],
        what: "1,000 flows, new SYN",
        scheduler: Scheduler::RoundRobin,
        persistence: false,
        clients: Clients::Fresh,
    },
    NewFlowPath {
        names: ["new_v4_least_connections", "new_v6_least_connections"],
        what: "1,000 flows, new SYN",
        scheduler: Scheduler::LeastConnections,
        persistence: false,
        clients: Clients::Fresh,
    },
    NewFlowPath {
        names: ["new_v4_least_latency", "new_v6_least_latency"],
        what: "1,000 flows, new SYN",
        scheduler: Scheduler::LeastLatency,
        persistence: false,
        clients: Clients::Fresh,
    },
    NewFlowPath {
        names: ["new_v4_maglev_persist", "new_v6_maglev_persist"],
        what: "1,000 flows, SYN of a new client",
        scheduler: Scheduler::Maglev,
        persistence: true,
        clients: Clients::New,
    },
    NewFlowPath {
        names: ["new_v4_persist_hit", "new_v6_persist_hit"],
        what: "1,000 flows, new SYN of a known client",
        scheduler: Scheduler::Maglev,
        persistence: true,
        clients: Clients::Known,
    },
];

/// Session persistence of the VIPs that have it: long enough that no
/// client is forgotten during a run.
const PERSISTENCE: Persistence = Persistence {
    timeout: Duration::from_secs(3600),
    ipv6_prefix: 64,
};

/// Clients the persistence table knows for a persist-hit VIP.
const KNOWN_CLIENTS: usize = 1_000;

/// A new-flow path of [`PATHS`].
pub struct NewFlowPath {
    /// Its name in each family (IPv4, IPv6).
    names: [&'static str; 2],
    what: &'static str,
    scheduler: Scheduler,
    persistence: bool,
    clients: Clients,
}

/// Where a new-flow path's SYNs come from.
#[derive(Clone, Copy)]
enum Clients {
    /// A 5-tuple never seen before on every call, from the clients of
    /// Maglev's `new` path.
    Fresh,
    /// A client address never seen before on every call (and for IPv6, a
    /// /64 never seen before): a persistence miss, and an insert.
    New,
    /// A new 5-tuple of one of the clients the persistence table knows, in
    /// turn: a persistence hit.
    Known,
}

/// What the document says of evictions from the persistence table: the
/// persistence-miss paths insert [`new_flows`] clients each, beside the
/// persist-hit paths' known clients, and past its size the table evicts.
fn persist_evicts(options: &Options) -> String {
    let inserted = 2 * new_flows(options);
    if inserted + 2 * KNOWN_CLIENTS <= PERSIST_ENTRIES as usize {
        return String::new();
    }
    format!(
        ";
  the two persistence-miss paths insert {} clients in this run, so in its
  last rounds the table is full and inserts also evict the least recently
  seen clients",
        report::number(inserted as f64, 0)
    )
}

/// The VIP of path `k` of [`PATHS`] in a family: its index
/// (from 2 on, after the fixture's two) and its address.
fn other_vip(k: usize, v6: bool) -> (u32, IpAddr) {
    let index = 2 + 2 * k as u32 + u32::from(v6);
    let addr = if v6 {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x20 + k as u16))
    } else {
        IpAddr::V4(Ipv4Addr::new(198, 51, 100, 20 + k as u8))
    };
    (index, addr)
}

/// Puts the VIPs of [`PATHS`] in place in both families, each with ten
/// backends of its own (ids from 10 × its index on, after the fixture's 0
/// to 19), and gives the least-latency backends latencies of 100 to 1,000
/// µs.
pub fn put_vips(f: &mut Fixture) -> Result<()> {
    for (k, path) in PATHS.iter().enumerate() {
        for v6 in [false, true] {
            let (index, addr) = other_vip(k, v6);
            let members = backends(index * 10, v6);
            let ids: Vec<u32> = members.iter().map(|b| b.id).collect();
            f.put_vip(Vip {
                index,
                addr,
                port: 80,
                proto: proto::TCP,
                scheduler: path.scheduler,
                persistence: path.persistence.then_some(PERSISTENCE),
                backends: members,
                access: false,
                limit: Default::default(),
                snat: true,
            })?;
            if path.scheduler == Scheduler::LeastLatency {
                for (n, id) in ids.into_iter().enumerate() {
                    f.datapath.set_backend_latency(id, 100 * (n as u32 + 1))?;
                }
            }
        }
    }
    Ok(())
}

/// The clients a persist-hit VIP's persistence table knows, and the MAC of
/// each one's backend.
struct KnownClients {
    vip: IpAddr,
    macs: RefCell<Vec<[u8; 6]>>,
}

impl KnownClients {
    /// Makes the persistence table know [`KNOWN_CLIENTS`] clients of `vip`
    /// (again: the persistence-miss paths insert clients of their own, and
    /// once the table is full it evicts), through one SYN of each from
    /// port 1024, and notes their backends. The SYNs only reach the
    /// handshake table: the connection table holds what it held before.
    fn refresh(&self, table: &RefCell<Fixture>) -> Result<()> {
        let v6 = self.vip.is_ipv6();
        let mut macs = self.macs.borrow_mut();
        macs.clear();
        let mut f = table.borrow_mut();
        for i in 0..KNOWN_CLIENTS {
            let src = new_client(i, v6);
            let out = f
                .datapath
                .test_run(&Packet::tcp(src, 1024, self.vip, 80).build(), 0)?;
            ensure!(out.verdict == action::TX, "verdict {}", out.verdict);
            macs.push(destination_mac(&out)?);
        }
        Ok(())
    }
}

/// The destination MAC of a frame the program sent: its backend's.
fn destination_mac(out: &TestOutput) -> Result<[u8; 6]> {
    match out.packet.get(..6) {
        Some(mac) => Ok(mac.try_into()?),
        None => bail!("a frame of {} bytes", out.packet.len()),
    }
}

/// Client address `i` of the persistence paths, distinct for every `i`,
/// and for IPv6 in a /64 of its own.
fn new_client(i: usize, v6: bool) -> IpAddr {
    let n = i as u32;
    if v6 {
        IpAddr::V6(Ipv6Addr::new(
            0x2001,
            0xdb8,
            0xd000 | (n >> 16) as u16,
            n as u16,
            0,
            0,
            0,
            1,
        ))
    } else {
        // 198.18.0.0/15 and up.
        IpAddr::V4(Ipv4Addr::from(0xc612_0000 + n))
    }
}

/// New clients of `vip`: a SYN from a client address never seen before
/// on every call.
fn new_clients(table: &RefCell<Fixture>, vip: IpAddr) -> impl FnMut() -> Result<Duration> + '_ {
    let mut next = 0;
    move || {
        next += 1;
        let packet = Packet::tcp(new_client(next, vip.is_ipv6()), 1024, vip, 80).build();
        call(table, &packet, action::TX)
    }
}

/// New flows of the known clients, in turn, each from a port it has not
/// used before; checked to reach the client's backend, so that every call
/// is a persistence hit.
fn known_clients(
    table: &RefCell<Fixture>,
    clients: Rc<KnownClients>,
) -> impl FnMut() -> Result<Duration> + '_ {
    let mut next = 0;
    move || {
        let i = next % KNOWN_CLIENTS;
        // The clients' refreshing SYNs come from port 1024.
        let port = 1025 + (next / KNOWN_CLIENTS % 60_000) as u16;
        next += 1;
        let vip = clients.vip;
        let packet = Packet::tcp(new_client(i, vip.is_ipv6()), port, vip, 80).build();
        let out = checked_call(table, &packet, action::TX)?;
        ensure!(
            Some(&destination_mac(&out)?) == clients.macs.borrow().get(i),
            "known client {i} of {vip} was placed anew: a persistence miss"
        );
        Ok(out.duration)
    }
}

/// The measured paths, IPv4's then IPv6's, on the small table `small`
/// once [`put_vips`] has put their VIPs in place.
pub fn measured(small: &RefCell<Fixture>) -> Vec<Measured<'_>> {
    let mut paths = Vec::new();
    for v6 in [false, true] {
        let maglev = if v6 { "new_v6" } else { "new_v4" };
        for (k, path) in PATHS.iter().enumerate() {
            let (_, vip) = other_vip(k, v6);
            let name = path.names[usize::from(v6)];
            let measured = match path.clients {
                Clients::Fresh => Measured::new(name, path.what, fresh(small, SMALL_TABLE, vip)),
                Clients::New => Measured::new(name, path.what, new_clients(small, vip)),
                Clients::Known => {
                    let clients = Rc::new(KnownClients {
                        vip,
                        macs: RefCell::new(Vec::new()),
                    });
                    let refresh = Rc::clone(&clients);
                    Measured::new(name, path.what, known_clients(small, clients))
                        .before_each_round(move || refresh.refresh(small))
                }
            };
            paths.push(measured.compared_with(maglev));
        }
        let (name, rr) = (PROMOTE[usize::from(v6)], ROUND_ROBIN);
        let (_, vip) = other_vip(rr, v6);
        paths.push(
            Measured::new(
                name,
                "1,000 flows, a handshake's ACK",
                promotions(small, vip),
            )
            .compared_with(maglev),
        );
    }
    paths
}

/// The promotion paths' names, per family.
const PROMOTE: [&str; 2] = ["promote_v4_round_robin", "promote_v6_round_robin"];
/// The path of [`PATHS`] whose VIP the promotion paths use.
const ROUND_ROBIN: usize = 1;
/// Where the promotion paths number their flows: past every other path's.
const PROMOTED_FLOWS: usize = 1 << 24;

/// Handshakes completing at `vip` (a round-robin VIP): a SYN of a 5-tuple
/// never seen before, unmeasured, puts the flow in the handshake table;
/// the measured call is its ACK, which finds it there, inserts it into the
/// connection table and removes it from the handshake table.
fn promotions(table: &RefCell<Fixture>, vip: IpAddr) -> impl FnMut() -> Result<Duration> + '_ {
    let mut next = PROMOTED_FLOWS;
    move || {
        next += 1;
        call(table, &packet(next, vip, false), action::TX)?;
        call(table, &packet(next, vip, true), action::TX)
    }
}

/// What the document says of these paths.
pub fn prose(options: &Options) -> String {
    format!(
        "The other schedulers, at 1,000 flows: a SYN of a 5-tuple never seen before
to a VIP of the scheduler's own, a miss in the connection table and in the
handshake table, then an insert into the handshake table (these VIPs keep
their choice from the first packet; `source_hash` without persistence is
placed like `new`, without state).

- `source_hash`: the Maglev ring lookup, on a hash of the client address
  instead of the 5-tuple.
- `round_robin`: no hash; the next entry of the VIP's list ring, at this CPU's
  cursor (a per-CPU array), which moves on.
- `least_connections`, `least_latency`: two distinct members of the list ring
  drawn at random (one `bpf_get_prandom_u32`), each one's backend and
  `backend_load` entry read, the lower cost wins (connections per weight;
  latency times connections + 1 per weight, the backends' latencies set to
  100, 200, ... 1,000 µs); the winner's connection count grows only when
  the flow's next packet moves it to the connection table.
- `maglev_persist`: Maglev with session persistence, every SYN from a
  client never seen before (for IPv6, a /64 never seen before): the VIP's
  policy read, a persistence-table lookup that misses, the ring lookup,
  and an insert into the persistence table (an LRU hash of
  {persist_entries} clients, its lists shared by every CPU){persist_evicts}.
- `persist_hit`: the same VIP setup, a new 5-tuple from one of
  {known} clients the persistence table already holds (each sends one SYN,
  unmeasured, before every round, so that the table holds them all; every
  call is checked to reach its client's backend): the policy read, a
  persistence-table hit, the backend's state and weight checked and its
  last-seen time written, no ring lookup.
- `promote_round_robin`: the ACK of a handshake whose SYN (unmeasured)
  went to the round-robin VIP: misses in the connection table, a hit in
  the handshake table, the backend's record, the insert budget (on, with
  credit), an insert into the connection table and a delete from the
  handshake table.

The connection-table entry of a Maglev VIP's flow, made by its first ACK
(a 5-tuple never seen before on every call; its SYN, unmeasured, is not
sent: it would leave no state anyway): a miss in the connection table and
in the handshake table, the ring lookup, the insert budget (on, with
credit) and an insert into the connection table.

- `entry`: with sharing off.
- `entry_shared`: with `[sync]` on, the entry also told to the daemon: a
  `FlowEvent` (56 bytes) written to the `flow_events` ring buffer
  (`bpf_ringbuf_output`), which the benchmark empties before each round,
  unmeasured. Its `x maglev new` column is its median over `entry`'s of
  the same family: what telling the peers of a new flow costs the packet
  that makes it.

`x maglev new` is a new-flow row's median over the median of `new` in the
same family, from the same run, with the kernel's fixed cost of a call in
both: what the scheduler or persistence adds to a new flow. Maglev's SYN
makes no insert, so the schedulers that must remember their choice pay
theirs (into the handshake table) on top of their pick. The rows at
100,000 flows are compared only with the floor: there the SYN to a Maglev
VIP costs about what an established packet does (the aim is 1.3 times or
less).
",
        persist_entries = report::number(f64::from(PERSIST_ENTRIES), 0),
        persist_evicts = persist_evicts(options),
        known = report::number(KNOWN_CLIENTS as f64, 0),
    )
}
