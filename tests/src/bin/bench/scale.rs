//! `scale`: the connection table at size. The memory the kernel charges
//! for every map of the datapath at several `flow_table_size` values (read
//! from the kernel, not computed), and the flow count at which the LRU
//! connection table starts evicting, with new flows from one CPU and from
//! both.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr},
    path::Path,
};

use anyhow::{Context as _, Result};
use aya::maps::{HashMap, Map, MapData, MapInfo, loaded_maps};
use balancer::{config::Scheduler, datapath::LoadOptions};
use balancer_common::{
    flow::{FlowKey, FlowState},
    maps::{DEFAULT_FLOWS, DEFAULT_RING_SIZE, FLOWS},
    proto,
    settings::Settings,
};
use balancer_tests::{
    fixture::{Backend, Fixture, Vip, default_settings},
    packet::Packet,
};

use crate::{
    PinnedCpu,
    plot::{self, Line},
    report::{self, Section, Table},
};

/// Connection table sizes whose memory is read.
const SIZES: [u32; 3] = [DEFAULT_FLOWS, 1 << 20, 1 << 22];
/// New flows between two counts of the table, in eviction runs.
const STEP: usize = 4_096;

const VIP: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 10));

/// Kernel-charged memory of one map.
pub struct MapMemory {
    pub name: String,
    pub max_entries: u32,
    pub bytes: u64,
}

/// One eviction run: flows inserted and flows in the table after each step.
pub struct Fill {
    pub cpus: usize,
    pub points: Vec<(usize, usize)>,
    /// Flows inserted when the table first held fewer than inserted.
    pub onset: Option<usize>,
}

/// Everything the benchmark measured.
pub struct Results {
    /// Per table size: every map of the datapath with one VIP published.
    pub memory: Vec<(u32, Vec<MapMemory>)>,
    pub fills: Vec<Fill>,
    pub table_size: u32,
}

/// Runs the benchmark.
pub fn run() -> Result<Results> {
    let mut memory = Vec::new();
    for size in SIZES {
        eprintln!("scale: memory at flow_table_size {size}");
        memory.push((size, maps_memory(size)?));
    }
    let mut fills = Vec::new();
    for cpus in [1, 2] {
        eprintln!("scale: filling a table of {DEFAULT_FLOWS} from {cpus} CPU(s)");
        fills.push(fill(DEFAULT_FLOWS, cpus)?);
    }
    Ok(Results {
        memory,
        fills,
        table_size: DEFAULT_FLOWS,
    })
}

/// Settings as the daemon writes them by default.
fn settings() -> Settings {
    Settings {
        ring_size: DEFAULT_RING_SIZE,
        ..default_settings(0x5ca1e)
    }
}

/// A fixture with one TCP VIP of ten backends.
fn fixture(flow_table_size: u32) -> Result<Fixture> {
    let options = LoadOptions {
        flow_table_size,
        ..LoadOptions::default()
    };
    let mut f = Fixture::with_options(settings(), options)?;
    f.put_vip(Vip {
        index: 0,
        addr: VIP,
        port: 80,
        proto: proto::TCP,
        scheduler: Scheduler::Maglev,
        persistence: None,
        backends: (0..10)
            .map(|i| Backend::new(i, IpAddr::V4(Ipv4Addr::new(10, 3, 0, i as u8 + 1))))
            .collect(),
        access: false,
        limit: Default::default(),
        snat: true,
    })?;
    Ok(f)
}

fn map_ids() -> BTreeSet<u32> {
    loaded_maps()
        .filter_map(Result::ok)
        .map(|m| m.id())
        .collect()
}

/// Bytes the kernel charges for map `info` (`memlock` in its fdinfo).
fn memlock(info: &MapInfo) -> Result<u64> {
    let fd = info.fd()?;
    let [bytes] = crate::fdinfo(std::os::fd::AsFd::as_fd(&fd), ["memlock"])?;
    Ok(bytes)
}

/// Every map the datapath made, loaded with `flow_table_size` and one VIP
/// published (its ring is a map of its own), largest first.
fn maps_memory(flow_table_size: u32) -> Result<Vec<MapMemory>> {
    let before = map_ids();
    let f = fixture(flow_table_size)?;
    let mut maps = Vec::new();
    for info in loaded_maps().filter_map(Result::ok) {
        if before.contains(&info.id()) {
            continue;
        }
        // Rings are made by userspace, which aya names after their kind.
        let name = match info.name_as_str() {
            Some(name) if !name.is_empty() && !name.starts_with("standalone") => name.to_owned(),
            _ => "ring (one VIP)".to_owned(),
        };
        maps.push(MapMemory {
            name,
            max_entries: info.max_entries(),
            bytes: memlock(&info)?,
        });
    }
    drop(f);
    maps.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.name.cmp(&b.name)));
    Ok(maps)
}

/// The connection table of the fixture, opened by id.
fn flows_map(before: &BTreeSet<u32>) -> Result<HashMap<MapData, FlowKey, FlowState>> {
    let info = loaded_maps()
        .filter_map(Result::ok)
        .find(|m| !before.contains(&m.id()) && m.name_as_str() == Some(FLOWS))
        .context("the connection table is not loaded")?;
    let data = MapData::from_id(info.id())?;
    Ok(HashMap::try_from(Map::LruHashMap(data))?)
}

/// Inserts new flows (each one's first ACK through the program: a SYN to a
/// Maglev VIP leaves no state) into a table of `size` entries, from `cpus`
/// CPUs in turn, and counts the table after every STEP flows, until it has
/// evicted for a while.
fn fill(size: u32, cpus: usize) -> Result<Fill> {
    let before = map_ids();
    let mut f = fixture(size)?;
    let table = flows_map(&before)?;
    let limit = size as usize + size as usize / 4;
    let mut points = vec![(0, 0)];
    let mut onset = None;
    let mut inserted = 0;
    while inserted < limit {
        for i in inserted..inserted + STEP {
            let _cpu = PinnedCpu::to(if cpus == 1 { 1 } else { i % cpus });
            let src = IpAddr::V4(Ipv4Addr::from(0x6440_0000 | (i as u32 >> 8)));
            let packet = Packet::tcp(src, 1024 + (i & 0xff) as u16, VIP, 80)
                .established()
                .build();
            f.datapath.test_run(&packet, 0)?;
        }
        inserted += STEP;
        let held = table.keys().filter(Result::is_ok).count();
        points.push((inserted, held));
        if held < inserted && onset.is_none() {
            onset = Some(inserted);
        }
        if let Some(at) = onset
            && inserted >= at + size as usize / 8
        {
            break;
        }
    }
    Ok(Fill {
        cpus,
        points,
        onset,
    })
}

/// The tables, for the terminal and the document.
pub fn tables(r: &Results) -> (Table, Table) {
    let mut memory = Table::new(&["flow_table_size", "map", "entries", "MiB"]);
    for (size, maps) in &r.memory {
        let total: u64 = maps.iter().map(|m| m.bytes).sum();
        for m in maps {
            memory.row(vec![
                report::number(f64::from(*size), 0),
                format!("`{}`", m.name),
                report::number(f64::from(m.max_entries), 0),
                report::number(m.bytes as f64 / (1 << 20) as f64, 2),
            ]);
        }
        memory.row(vec![
            report::number(f64::from(*size), 0),
            "**all maps**".into(),
            String::new(),
            format!("**{}**", report::number(total as f64 / (1 << 20) as f64, 2)),
        ]);
    }
    let mut eviction = Table::new(&[
        "new flows from",
        "table size",
        "first eviction seen at",
        "share of the table",
    ]);
    for fill in &r.fills {
        eviction.row(vec![
            format!("{} CPU{}", fill.cpus, if fill.cpus > 1 { "s" } else { "" }),
            report::number(f64::from(r.table_size), 0),
            fill.onset.map_or("none".into(), |n| {
                format!("{} flows", report::number(n as f64, 0))
            }),
            fill.onset.map_or("-".into(), |n| {
                format!("{:.0} %", n as f64 * 100.0 / f64::from(r.table_size))
            }),
        ]);
    }
    (memory, eviction)
}

/// The document's section, with its plot written to `img`.
pub fn section(r: &Results, img: &Path) -> Result<Section> {
    let size = f64::from(r.table_size);
    let reference = Line {
        label: "no eviction (flows inserted)".into(),
        points: vec![(0.0, 0.0), (size * 1.25, size * 1.25)],
    };
    let lines: Vec<Line> = std::iter::once(reference)
        .chain(r.fills.iter().map(|fill| {
            Line {
                label: format!(
                    "new flows from {} CPU{}",
                    fill.cpus,
                    if fill.cpus > 1 { "s" } else { "" }
                ),
                points: fill
                    .points
                    .iter()
                    .map(|&(x, y)| (x as f64, y as f64))
                    .collect(),
            }
        }))
        .collect();
    plot::lines(
        &img.join("lru.png"),
        &format!(
            "Connection table of {} entries: flows held as new flows arrive",
            report::number(size, 0)
        ),
        ("new flows inserted", 0.0..size * 1.25),
        ("flows in the table", 0.0..size * 1.3),
        &lines,
    )?;
    let (memory, eviction) = tables(r);
    let body = format!(
        "## Connection-table scale

Measured on {machine}.

Memory: the datapath is loaded with each `flow_table_size` and one VIP
published (its ring of {ring} slots is a map of its own, one per VIP), and
every map it made is read back from the kernel: the `memlock` figure of
each map's fdinfo, what the kernel charges to the memory cgroup. The
connection table is an LRU hash with per-CPU LRU lists
(`BPF_F_NO_COMMON_LRU`), preallocated: its memory does not grow with
traffic.

{memory}
Eviction: a table of {table} entries (the default `flow_table_size`) gets
new flows (SYNs of never-seen 5-tuples through BPF_PROG_TEST_RUN), and
after every {step} flows its entries are counted from userspace. Eviction
begins when the table holds fewer flows than were inserted. The kernel
splits the entries evenly between the CPUs' LRU lists, and a CPU takes
free entries from its own list first: when all new flows arrive on one CPU
(one receive queue, or RSS hashing a flood to one queue) eviction begins
near half the configured size; spread over both CPUs, near the full size.
Size the table for the flows of the busiest CPU, times the number of CPUs.

{eviction}
![LRU](img/lru.png)
",
        machine = report::machine(),
        ring = report::number(f64::from(DEFAULT_RING_SIZE), 0),
        table = report::number(size, 0),
        step = report::number(STEP as f64, 0),
        memory = memory.markdown(),
        eviction = eviction.markdown(),
    );
    Ok(Section {
        name: "scale",
        body,
    })
}
