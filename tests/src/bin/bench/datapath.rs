//! `datapath`: the XDP program's cost per packet through BPF_PROG_TEST_RUN,
//! against a floor program measured the same way, with a connection table
//! of the default size (262,144 entries) holding 1,000 flows and again
//! holding 100,000; and at 1,000 flows, the cost of a new flow under every
//! scheduler and with session persistence, and of a handshake's promotion,
//! against Maglev's; and NAT's packets both ways and its new connections.
//!
//! Method: many calls with repeat=1, each on a fresh copy of the packet
//! (the kernel copies the input on every call), taking the median of the
//! durations the kernel reports. repeat>1 would rerun the program on its
//! own output, which is only fair for idempotent rewrites. Every figure
//! includes the kernel's fixed cost per call (about 100 ns here), the same
//! for every program, which is why the floor is measured the same way.

use std::{
    cell::RefCell,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
    time::Duration,
};

use anyhow::{Result, bail, ensure};
use balancer::{
    config::{Forwarding, MAX_RATE, Prefix, Scheduler},
    datapath::{LoadOptions, TestOutput, action},
    plan::scope_entries,
};
use balancer_bench::Floor;
use balancer_common::{
    access::SCOPE_GLOBAL,
    limit::{Rate, SourceLimit},
    maps::{DEFAULT_FLOWS, DEFAULT_RING_SIZE},
    proto,
    settings::{SETTINGS_GLOBAL_ACCESS, SETTINGS_SHARE_FLOWS, Settings},
};
use balancer_tests::{
    fixture::{Backend, Fixture, Vip, backend_mac, default_settings},
    packet::{LB_MAC, Packet},
};

mod nat;
mod schedulers;

use crate::{
    plot::{self, Bar},
    report::{self, Section, Table},
    stats::{Rng, Summary, quantile, sorted_ns},
};

/// Options of the datapath benchmark.
pub struct Options {
    /// Measured calls per path in each round.
    pub calls: usize,
    /// Rounds: every path is measured once per round, in turn, and the
    /// figure reported is the median over rounds of each round's median,
    /// so a burst of noise from the rest of the machine moves one round,
    /// not the result.
    pub rounds: usize,
    /// Only these paths (the floor is always measured). The table of
    /// 100,000 flows is only filled when one of its paths (`..._100k`) is
    /// measured.
    pub paths: Vec<String>,
}

const VIP4: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 10));
const VIP6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10));
/// Flows of the small table: the established paths' working set.
const SMALL_TABLE: usize = 1_000;
/// Live flows of the large table, half IPv4 and half IPv6: as many as one
/// CPU's share of a default-size table holds without evicting (entries are
/// split between the CPUs' LRU lists, 131,072 each on 2 CPUs, and every
/// insert here comes from one CPU).
const LARGE_TABLE: usize = 100_000;
/// Every table's size: the default, so that no row is flattered by a table
/// larger than operators run, nor hides its TLB cost.
const TABLE_SIZE: u32 = DEFAULT_FLOWS;

/// Calls of each path over a run, warm-up included: the flows a new-flow
/// path inserts.
fn new_flows(options: &Options) -> usize {
    (options.calls + options.calls / 10) * options.rounds
}

/// One measured path.
pub struct Row {
    pub name: &'static str,
    /// What the table held and what the packet was.
    pub what: &'static str,
    /// The row a new-flow row's cost is compared with: Maglev's `new` of
    /// the same family at 1,000 flows.
    pub compared_with: Option<&'static str>,
    /// Median of each round, in ns.
    pub rounds: Vec<f64>,
    /// p10 and p90 over every call, in ns.
    pub p10: f64,
    pub p90: f64,
}

/// A path under measurement: one call of it, and what it measured so far.
struct Measured<'a> {
    name: &'static str,
    what: &'static str,
    compared_with: Option<&'static str>,
    /// Unmeasured work before each of the path's rounds.
    before_round: Option<Box<dyn FnMut() -> Result<()> + 'a>>,
    run: Box<dyn FnMut() -> Result<Duration> + 'a>,
    rounds: Vec<f64>,
    samples: Vec<Duration>,
}

impl<'a> Measured<'a> {
    fn new(
        name: &'static str,
        what: &'static str,
        run: impl FnMut() -> Result<Duration> + 'a,
    ) -> Measured<'a> {
        Measured {
            name,
            what,
            compared_with: None,
            before_round: None,
            run: Box::new(run),
            rounds: Vec::new(),
            samples: Vec::new(),
        }
    }

    /// The same path, its cost compared with row `name`'s.
    fn compared_with(self, name: &'static str) -> Measured<'a> {
        Measured {
            compared_with: Some(name),
            ..self
        }
    }

    /// The same path, with `prepare` run (unmeasured) before each round.
    fn before_each_round(self, prepare: impl FnMut() -> Result<()> + 'a) -> Measured<'a> {
        Measured {
            before_round: Some(Box::new(prepare)),
            ..self
        }
    }
}

/// Settings as the daemon writes them by default: the full-size ring, and
/// an insert budget that is on (every insert
/// pays for its check) but never runs out during a run.
fn settings() -> Settings {
    Settings {
        ring_size: DEFAULT_RING_SIZE,
        insert_cost_ns: 1,
        ..default_settings(0xbe9c)
    }
}

fn backends(first: u32, v6: bool) -> Vec<Backend> {
    (first..first + 10)
        .map(|id| {
            let addr = if v6 {
                IpAddr::V6(Ipv6Addr::new(0xfd00, 3, 0, 0, 0, 0, 0, id as u16 + 1))
            } else {
                IpAddr::V4(Ipv4Addr::new(10, 3, 0, id as u8 + 1))
            };
            Backend::new(id, addr)
        })
        .collect()
}

/// A fixture with one TCP VIP per family, ten backends each (ids 0 to 19).
fn fixture(flow_table_size: u32) -> Result<Fixture> {
    fixture_with(flow_table_size, settings(), Extras::default())
}

/// What a fixture's VIPs have beyond L2 DSR to their backends.
#[derive(Clone, Copy, Default)]
struct Extras {
    /// Marked as having lists of their own.
    access: bool,
    /// Per-source limits: the IPv4 VIP's, the IPv6 one's.
    limits: [SourceLimit; 2],
    /// Backends reached in IPIP or GUE (from an outer source of their
    /// family); L2 DSR when `Dsr`.
    forwarding: Forwarding,
}

/// [`fixture`] with `settings` and `extras`.
fn fixture_with(flow_table_size: u32, settings: Settings, extras: Extras) -> Result<Fixture> {
    let options = LoadOptions {
        flow_table_size,
        ..LoadOptions::default()
    };
    let mut f = Fixture::with_options(settings, options)?;
    for (index, (addr, v6)) in [(VIP4, false), (VIP6, true)].into_iter().enumerate() {
        f.put_vip(Vip {
            index: index as u32,
            addr,
            port: 80,
            proto: proto::TCP,
            scheduler: Scheduler::Maglev,
            persistence: None,
            backends: backends(index as u32 * 10, v6)
                .into_iter()
                .map(|b| match (extras.forwarding, v6) {
                    (Forwarding::Dsr, _) => b,
                    (f, false) => b.tunnelled(f, IpAddr::V4(Ipv4Addr::new(10, 9, 0, 1))),
                    (f, true) => {
                        b.tunnelled(f, IpAddr::V6(Ipv6Addr::new(0xfd00, 9, 0, 0, 0, 0, 0, 1)))
                    }
                })
                .collect(),
            access: extras.access,
            limit: extras.limits[index],
            snat: true,
        })?;
    }
    Ok(f)
}

/// Prefixes of the global deny list of the lists' fixture, per family: none
/// covers a client of [`client`].
const DENIED_PREFIXES: u16 = 1_000;

/// [`fixture`] with allow and deny lists: a global deny list of
/// [`DENIED_PREFIXES`] IPv4 /24s and as many IPv6 /48s that no client is
/// in, and each VIP's own allow list of its clients' prefix; so a packet
/// of an established flow pays both lookups, a miss in the global scope
/// and a hit in the VIP's.
fn listed_fixture() -> Result<Fixture> {
    let settings = Settings {
        flags: SETTINGS_GLOBAL_ACCESS,
        ..settings()
    }
    .with_access_generation(1);
    let extras = Extras {
        access: true,
        ..Extras::default()
    };
    let mut f = fixture_with(TABLE_SIZE, settings, extras)?;
    let denied: Vec<Prefix> = (0..DENIED_PREFIXES)
        .flat_map(|n| {
            [
                format!("198.{}.{}.0/24", 18 + n / 256, n % 256),
                format!("2001:db8:f{n:03x}::/48"),
            ]
        })
        .map(|p| p.parse())
        .collect::<Result<_, _>>()
        .map_err(anyhow::Error::msg)?;
    let mut entries: Vec<_> = scope_entries(SCOPE_GLOBAL, denied.into_iter(), std::iter::empty())
        .into_iter()
        .collect();
    for (scope, allowed) in [(0, "100.64.0.0/10"), (1, "2001:db8:c::/48")] {
        let allowed: Prefix = allowed.parse().map_err(anyhow::Error::msg)?;
        entries.extend(scope_entries(
            scope,
            std::iter::empty(),
            std::iter::once(allowed),
        ));
    }
    f.datapath.set_access(&entries)?;
    Ok(f)
}

/// [`fixture`] with per-source limits on both VIPs: new flows and packets,
/// at rates no run reaches (one token a nanosecond), so that every packet
/// of an established flow pays the whole check (its source's entry found,
/// its packet bucket spent and written) and none is dropped. Sources are
/// IPv4 /32s (four for 1,000 flows) and IPv6 /64s (one).
fn limited_fixture() -> Result<Fixture> {
    let rate = Rate::new(MAX_RATE, MAX_RATE);
    let limit = |v6: bool| SourceLimit {
        new_flows: rate,
        packets: rate,
        source_mask: if v6 {
            [u32::MAX, u32::MAX, 0, 0]
        } else {
            [u32::MAX; 4]
        },
        ..SourceLimit::default()
    };
    let extras = Extras {
        limits: [limit(false), limit(true)],
        ..Extras::default()
    };
    fixture_with(TABLE_SIZE, settings(), extras)
}

/// A client address and port for flow `i`, distinct for every `i`.
fn client(i: usize, v6: bool) -> (IpAddr, u16) {
    let n = i as u32;
    let addr = if v6 {
        IpAddr::V6(Ipv6Addr::new(
            0x2001,
            0xdb8,
            0xc,
            0,
            0,
            0,
            (n >> 16) as u16,
            n as u16,
        ))
    } else {
        IpAddr::V4(Ipv4Addr::from(0x6440_0000 | (n >> 8)))
    };
    (addr, 1024 + (n & 0xff) as u16)
}

/// Packet of flow `i` of a family to `vip`: a SYN, or a segment of an
/// established connection.
fn packet(i: usize, vip: IpAddr, established: bool) -> Vec<u8> {
    let (src, port) = client(i, vip.is_ipv6());
    let packet = Packet::tcp(src, port, vip, 80);
    if established {
        packet.established().build()
    } else {
        packet.build()
    }
}

/// Runs the benchmark.
pub fn run(options: &Options) -> Result<Vec<Row>> {
    // One CPU for every measurement: BPF_PROG_TEST_RUN runs the program
    // on the calling CPU, and the two CPUs' caches differ.
    let _pinned = crate::PinnedCpu::to(1);
    let mut small = fixture(TABLE_SIZE)?;
    schedulers::put_vips(&mut small)?;
    // Each flow's first ACK makes its entry (a SYN to a Maglev VIP leaves
    // none).
    for i in 0..SMALL_TABLE {
        for v6 in [false, true] {
            small.datapath.test_run(&packet(i, vip(v6), true), 0)?;
        }
    }
    let small = RefCell::new(small);
    let listed_wanted =
        options.paths.is_empty() || options.paths.iter().any(|name| name.ends_with("_lists"));
    let listed = if listed_wanted {
        let mut listed = listed_fixture()?;
        for i in 0..SMALL_TABLE {
            for v6 in [false, true] {
                listed.datapath.test_run(&packet(i, vip(v6), true), 0)?;
            }
        }
        Some(RefCell::new(listed))
    } else {
        None
    };
    let limited_wanted =
        options.paths.is_empty() || options.paths.iter().any(|name| name.ends_with("_limits"));
    let limited = if limited_wanted {
        let mut limited = limited_fixture()?;
        for i in 0..SMALL_TABLE {
            for v6 in [false, true] {
                limited.datapath.test_run(&packet(i, vip(v6), true), 0)?;
            }
        }
        Some(RefCell::new(limited))
    } else {
        None
    };
    // The tunnels' fixtures, each with its flows established, and their
    // rows' names: established and new, IPv4 and IPv6.
    let mut tunnels = Vec::new();
    for (forwarding, names, label, new_label) in [
        (
            Forwarding::Ipip,
            [
                "established_v4_ipip",
                "established_v6_ipip",
                "new_v4_ipip",
                "new_v6_ipip",
            ],
            "1,000 flows, IPIP",
            "1,000 flows, new SYN, IPIP",
        ),
        (
            Forwarding::Gue,
            [
                "established_v4_gue",
                "established_v6_gue",
                "new_v4_gue",
                "new_v6_gue",
            ],
            "1,000 flows, GUE",
            "1,000 flows, new SYN, GUE",
        ),
    ] {
        let wanted =
            options.paths.is_empty() || names.iter().any(|n| options.paths.iter().any(|p| p == n));
        if !wanted {
            continue;
        }
        let extras = Extras {
            forwarding,
            ..Extras::default()
        };
        let mut f = fixture_with(TABLE_SIZE, settings(), extras)?;
        for i in 0..SMALL_TABLE {
            for v6 in [false, true] {
                f.datapath.test_run(&packet(i, vip(v6), true), 0)?;
            }
        }
        tunnels.push((names, label, new_label, RefCell::new(f)));
    }
    // Entries made (a flow's first ACK), with sharing off and on: what
    // telling the daemon of each new entry ([sync]) costs. The ring buffer
    // is emptied before each round, out of the measure.
    let entries_wanted =
        options.paths.is_empty() || options.paths.iter().any(|n| n.starts_with("entry_"));
    let mut entries = Vec::new();
    if entries_wanted {
        for share in [false, true] {
            let mut s = settings();
            if share {
                s.flags |= SETTINGS_SHARE_FLOWS;
            }
            let mut f = fixture_with(TABLE_SIZE, s, Extras::default())?;
            let mut events = f.datapath.take_flow_events()?;
            for i in 0..SMALL_TABLE {
                for v6 in [false, true] {
                    f.datapath.test_run(&packet(i, vip(v6), true), 0)?;
                }
            }
            events.drain(drop);
            entries.push((share, RefCell::new(f), RefCell::new(events)));
        }
    }
    // NAT's: one datapath for the established paths, another for the new
    // connections, whose main tables they fill.
    let nat_tables = if nat::wanted(options) {
        Some((nat::NatTable::new()?, nat::NatTable::new()?))
    } else {
        None
    };
    let large_wanted =
        options.paths.is_empty() || options.paths.iter().any(|name| name.ends_with("_100k"));
    let large = if large_wanted {
        let mut large = fixture(TABLE_SIZE)?;
        eprintln!("datapath: filling a table with {LARGE_TABLE} flows");
        for i in 0..LARGE_TABLE {
            let v6 = i % 2 == 1;
            large.datapath.test_run(&packet(i / 2, vip(v6), true), 0)?;
        }
        Some(RefCell::new(large))
    } else {
        None
    };
    let mut floor = Floor::load(backend_mac(0), LB_MAC)?;
    let floor_packet = Packet::tcp(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 1000, VIP4, 80).build();
    let other = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9));
    let pass_packet = Packet::tcp(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 1000, other, 80)
        .established()
        .build();

    let mut paths = vec![
        Measured::new("floor", "floor program, any packet", || {
            let out = floor.test_run(&floor_packet)?;
            ensure!(out.verdict == action::TX, "floor verdict {}", out.verdict);
            Ok(out.duration)
        }),
        Measured::new("pass_v4", "not for a VIP", || {
            call(&small, &pass_packet, action::PASS)
        }),
        // Established before new in every round: a new-flow phase fills
        // the table and the caches with entries of its own.
        Measured::new(
            "established_v4",
            "1,000 flows",
            established(&small, SMALL_TABLE, false),
        ),
        Measured::new(
            "established_v6",
            "1,000 flows",
            established(&small, SMALL_TABLE, true),
        ),
        Measured::new(
            "new_v4",
            "1,000 flows, new SYN",
            fresh(&small, SMALL_TABLE, VIP4),
        )
        .compared_with("new_v4"),
        Measured::new(
            "new_v6",
            "1,000 flows, new SYN",
            fresh(&small, SMALL_TABLE, VIP6),
        )
        .compared_with("new_v6"),
    ];
    paths.extend(schedulers::measured(&small));
    if let Some(listed) = &listed {
        paths.extend([
            Measured::new(
                "established_v4_lists",
                "1,000 flows, lists",
                established(listed, SMALL_TABLE, false),
            ),
            Measured::new(
                "established_v6_lists",
                "1,000 flows, lists",
                established(listed, SMALL_TABLE, true),
            ),
        ]);
    }
    if let Some(limited) = &limited {
        paths.extend([
            Measured::new(
                "established_v4_limits",
                "1,000 flows, limits",
                established(limited, SMALL_TABLE, false),
            ),
            Measured::new(
                "established_v6_limits",
                "1,000 flows, limits",
                established(limited, SMALL_TABLE, true),
            ),
        ]);
    }
    for (names, label, new_label, f) in &tunnels {
        paths.extend([
            Measured::new(names[0], label, established(f, SMALL_TABLE, false)),
            Measured::new(names[1], label, established(f, SMALL_TABLE, true)),
            Measured::new(names[2], new_label, fresh(f, SMALL_TABLE, VIP4)),
            Measured::new(names[3], new_label, fresh(f, SMALL_TABLE, VIP6)),
        ]);
    }
    if let Some((established_on, fresh)) = &nat_tables {
        paths.extend(nat::measured(established_on, fresh));
    }
    for (share, f, events) in &entries {
        for v6 in [false, true] {
            let (name, plain) = match (share, v6) {
                (false, false) => ("entry_v4", None),
                (false, true) => ("entry_v6", None),
                (true, false) => ("entry_v4_shared", Some("entry_v4")),
                (true, true) => ("entry_v6_shared", Some("entry_v6")),
            };
            let label = if *share {
                "1,000 flows, first ACK: entry, shared"
            } else {
                "1,000 flows, first ACK: entry"
            };
            let mut measured = Measured::new(name, label, entry_made(f, SMALL_TABLE, vip(v6)))
                .before_each_round(|| {
                    events.borrow_mut().drain(drop);
                    Ok(())
                });
            if let Some(plain) = plain {
                measured = measured.compared_with(plain);
            }
            paths.push(measured);
        }
    }
    if let Some(large) = &large {
        paths.extend([
            Measured::new(
                "established_v4_100k",
                "100,000 flows",
                established(large, LARGE_TABLE / 2, false),
            ),
            Measured::new(
                "established_v6_100k",
                "100,000 flows",
                established(large, LARGE_TABLE / 2, true),
            ),
            Measured::new(
                "new_v4_100k",
                "100,000 flows, new SYN",
                fresh(large, LARGE_TABLE / 2, VIP4),
            ),
            Measured::new(
                "new_v6_100k",
                "100,000 flows, new SYN",
                fresh(large, LARGE_TABLE / 2, VIP6),
            ),
        ]);
    }
    if let Some(unknown) = options
        .paths
        .iter()
        .find(|n| !paths.iter().any(|p| p.name == n.as_str()))
    {
        bail!("no datapath path is named {unknown:?}");
    }
    if !options.paths.is_empty() {
        paths.retain(|p| p.name == "floor" || options.paths.iter().any(|n| n == p.name));
    }
    for round in 0..options.rounds {
        eprintln!("datapath: round {} of {}", round + 1, options.rounds);
        for path in &mut paths {
            if let Some(prepare) = &mut path.before_round {
                prepare()?;
            }
            let warmup = options.calls / 10;
            let mut samples = Vec::with_capacity(options.calls);
            for i in 0..warmup + options.calls {
                let d = (path.run)()?;
                if i >= warmup {
                    samples.push(d);
                }
            }
            path.rounds.push(quantile(&sorted_ns(&samples), 0.5));
            path.samples.extend(samples);
        }
    }
    Ok(paths
        .into_iter()
        .map(|p| {
            let all = sorted_ns(&p.samples);
            Row {
                name: p.name,
                what: p.what,
                compared_with: p.compared_with,
                p10: quantile(&all, 0.1),
                p90: quantile(&all, 0.9),
                rounds: p.rounds,
            }
        })
        .collect())
}

/// The VIP of the fixture's family.
fn vip(v6: bool) -> IpAddr {
    if v6 { VIP6 } else { VIP4 }
}

/// One call on `table`, checking the verdict.
fn call(table: &RefCell<Fixture>, packet: &[u8], want: u32) -> Result<Duration> {
    Ok(checked_call(table, packet, want)?.duration)
}

/// One call on `table`, checking the verdict; what the program left.
fn checked_call(table: &RefCell<Fixture>, packet: &[u8], want: u32) -> Result<TestOutput> {
    let out = table.borrow_mut().datapath.test_run(packet, 0)?;
    ensure!(
        out.verdict == want,
        "verdict {} instead of {want}",
        out.verdict
    );
    Ok(out)
}

/// Established flows: a random one of the table's first `flows` flows of
/// a family on every call (fixed seed).
fn established(
    table: &RefCell<Fixture>,
    flows: usize,
    v6: bool,
) -> impl FnMut() -> Result<Duration> + '_ {
    let mut rng = Rng::new(flows as u64 * 2 + u64::from(v6));
    move || call(table, &packet(rng.below(flows), vip(v6), true), action::TX)
}

/// New flows to `vip`: a 5-tuple never seen before on every call,
/// numbered from `first` on (past the flows already in the table).
fn fresh(
    table: &RefCell<Fixture>,
    first: usize,
    vip: IpAddr,
) -> impl FnMut() -> Result<Duration> + '_ {
    unseen(table, first, vip, false)
}

/// A flow's first ACK (its connection-table entry made) to `vip`, as
/// [`fresh`] numbers them.
fn entry_made(
    table: &RefCell<Fixture>,
    first: usize,
    vip: IpAddr,
) -> impl FnMut() -> Result<Duration> + '_ {
    unseen(table, first, vip, true)
}

/// A packet of a 5-tuple never seen before on every call: a SYN, or with
/// `established` an ACK.
fn unseen(
    table: &RefCell<Fixture>,
    first: usize,
    vip: IpAddr,
    established: bool,
) -> impl FnMut() -> Result<Duration> + '_ {
    let mut next = first;
    move || {
        next += 1;
        call(table, &packet(next, vip, established), action::TX)
    }
}

/// One key per path: `{"floor_ns": .., "established_v4_ns": .., ...}`.
pub fn json(rows: &[Row]) -> serde_json::Value {
    let mut object = serde_json::Map::new();
    for row in rows {
        object.insert(
            format!("{}_ns", row.name),
            serde_json::json!(Summary::of(&row.rounds).median),
        );
    }
    serde_json::Value::Object(object)
}

/// The table, for the terminal and the document.
pub fn table(rows: &[Row]) -> Table {
    let median = |row: &Row| Summary::of(&row.rounds).median;
    let floor = median(&rows[0]);
    let mut table = Table::new(&[
        "path",
        "table",
        "median ns",
        "min",
        "max",
        "p10",
        "p90",
        "x floor",
        "x maglev new",
    ]);
    for row in rows {
        let s = Summary::of(&row.rounds);
        let [median_ns, min, max] = report::spread(&s, 0);
        // Blank where the row is not a new flow at 1,000 flows, or its
        // family's Maglev row was not measured.
        let against_maglev = row
            .compared_with
            .and_then(|name| rows.iter().find(|r| r.name == name))
            .map_or_else(String::new, |maglev| {
                format!("{:.2}", s.median / median(maglev))
            });
        table.row(vec![
            format!("`{}`", row.name),
            row.what.to_owned(),
            median_ns,
            min,
            max,
            report::number(row.p10, 0),
            report::number(row.p90, 0),
            format!("{:.2}", s.median / floor),
            against_maglev,
        ]);
    }
    table
}

/// The document's section, with its plot written to `img`.
pub fn section(rows: &[Row], options: &Options, img: &Path) -> Result<Section> {
    let bars: Vec<Bar> = rows
        .iter()
        .map(|r| Bar {
            label: r.name.to_owned(),
            value: Summary::of(&r.rounds),
        })
        .collect();
    plot::bars(
        &img.join("datapath.png"),
        "XDP program, ns per packet (BPF_PROG_TEST_RUN, repeat=1)",
        "ns per packet (median over rounds; whiskers: lowest and highest round)",
        &bars,
    )?;
    let body = format!(
        "## Datapath: cost per packet

Measured on {machine}.

Each path is one packet through BPF_PROG_TEST_RUN with repeat=1, on a
fresh copy of the packet every call (repeat>1 would rerun the program on its
own rewritten output). A round measures every path in turn with {calls}
calls after {warmup} warm-up calls; the figure is the median over
{rounds} rounds of each round's median, with the lowest and highest round, and
p10/p90 over every call. All calls run on one CPU. Every figure includes the
kernel's fixed cost of a call (about 100 ns here), which is why the floor
program (parse Ethernet, read one map, rewrite both MACs, XDP_TX) is
measured the same way: `x floor` is the path's median over the floor's.

- `pass`: a TCP packet to an address that is not a VIP (XDP_PASS).
- `established`: a segment of a known flow, a random one of the table's
  flows on every call (fixed seed), forwarded (XDP_TX).
- `new`: a SYN of a 5-tuple never seen before: a connection-table miss and
  the Maglev ring lookup; a SYN leaves no state.
- `established_lists`: `established` with allow and deny lists: a global
  deny list of 1,000 IPv4 /24s and 1,000 IPv6 /48s that no client is in,
  and each VIP's own allow list of its clients' prefix. A flow's first
  packet paid the lookups (a miss in the global scope, a hit in the
  VIP's) and its entry records the lists' generation, so these packets of
  established flows only compare it; compare the row with `established`
  (the aim is 25 ns more or less; without lists the datapath only tests
  two flags).
- `established_limits`: `established` to VIPs with per-source limits of
  new flows and packets, at rates no run reaches, so that every packet
  pays the whole check and none is dropped: the VIP's limits read, the
  source's set of the table of sources found by a hash, its slot matched,
  its packet bucket spent and written. Sources are IPv4 /32s (four for
  the 1,000 flows) and IPv6 /64s (one). Compare the row with
  `established` (the aim is 25 ns more at most; without limits the
  datapath tests one flag).
- `established_ipip`, `new_ipip`: `established` and `new` to VIPs whose
  backends are reached in IPIP (IPv4 in IPv4, IPv6 in IPv6): the packet's
  length is checked against the tunnel's MTU, the frame grows by the
  outer header (`bpf_xdp_adjust_head`), which is written with its
  checksum (IPv4) or flow label (IPv6) in front of the client's packet.
  Compare with `established` and `new` (the aim is 40 ns more at most).
- `established_gue`, `new_gue`: the same in GUE: a UDP header after the
  outer one, its source port from the flow's hash, its checksum 0 over
  IPv4 and over IPv6 derived from the client packet's own checksum.
{nat}- `1,000 flows`: the connection table (`flow_table_size` {table_size}, the
  default, as for every row) holds 1,000 flows per family when the run
  starts (each made by its first ACK); the new-flow paths of VIPs that keep
  their choice add theirs to the handshake table, and the promotion paths
  theirs to the connection table;
  `100,000 flows`: it holds 50,000 IPv4 and 50,000 IPv6 flows, as many as
  one CPU's share of the table's LRU lists holds, and the established path
  draws from all of them: most lookups miss the CPU caches.

{schedulers}
VIPs: one TCP VIP per family and path, ten backends each; Maglev and
source-hash rings of {ring} slots.

{table}
![datapath](img/datapath.png)

Reading: at 1,000 flows the table and ring stay in the CPU caches; at
100,000 random flows most lookups miss the caches and the TLB, which is
the cost a busy edge host pays. `cargo xtask bench datapath --json` prints
the medians as one JSON object.
",
        machine = report::machine(),
        calls = options.calls,
        warmup = options.calls / 10,
        rounds = options.rounds,
        ring = report::number(f64::from(DEFAULT_RING_SIZE), 0),
        table_size = report::number(f64::from(TABLE_SIZE), 0),
        schedulers = schedulers::prose(options),
        nat = nat::prose(options),
        table = table(rows).markdown(),
    );
    Ok(Section {
        name: "datapath",
        body,
    })
}
