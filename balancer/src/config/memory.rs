//! The kernel memory of the maps a configuration sizes, which
//! `check-config` reports so an operator can compare it with the memory
//! cgroup of the daemon's unit: the kernel charges every map to it, and
//! preallocates the hash maps whole at start.

use std::fmt;

use balancer_common::{
    flow::{FlowKey, FlowState},
    fragment::{FragmentKey, FragmentState},
    limit::{SOURCE_SLOTS, SourceSlot},
    maps::{self, MapKind},
    nat::{NAT_OPEN_ENTRIES, NatFlow, NatReply},
    persist::{PersistKey, PersistState},
    vip::{MAX_LIST_LEN, list_slot},
};

use super::{Config, Scheduler};

/// Bytes of the kernel's header of one hash map entry (`struct htab_elem`
/// with its LRU node), before the key and the value.
const HASH_ENTRY_HEADER: u64 = 48;
/// Bytes of one bucket of a hash map (a list head and a spin lock); a hash
/// map has the next power of two of its entries in buckets.
const HASH_BUCKET: u64 = 16;

/// The kernel memory of the maps whose size depends on the configuration,
/// in bytes, as the kernel charges it (the `memlock` of each map's fdinfo;
/// docs/benchmarks.md measures it), with the large tables of fixed size
/// beside them. The other maps are small, about 3 MiB in all on 2 CPUs
/// (their per-CPU counters grow with the CPUs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapMemory {
    /// The connection table: `flow_table_size` entries, all preallocated.
    pub flows: u64,
    /// Every VIP's ring: `ring_size` slots for the hashing schedulers, the
    /// longest list the VIP can have for the others.
    pub rings: u64,
    /// The persistence table, of a fixed number of entries, preallocated.
    pub persistence: u64,
    /// The main NAT tables: `nat_table_size` connections each way, all
    /// preallocated.
    pub nat: u64,
    /// The handshake table, the table of sources, the fragment table and
    /// NAT's open tables: fixed sizes, preallocated.
    pub fixed: u64,
}

impl MapMemory {
    /// The memory the maps of `config` take once every VIP is published.
    pub fn of(config: &Config) -> MapMemory {
        let ring_size = u64::from(*config.datapath.ring_size.get_ref());
        let rings = config
            .vips
            .iter()
            .map(|vip| {
                let vip = vip.get_ref();
                let slots = if vip.scheduler.maglev_ring() {
                    ring_size
                } else if vip.scheduler == Scheduler::RoundRobin {
                    u64::from(list_slot(MAX_LIST_LEN))
                } else {
                    u64::from(list_slot(vip.backends.len() as u32))
                };
                ring_bytes(slots)
            })
            .sum();
        MapMemory {
            flows: lru_hash_bytes::<FlowKey, FlowState>(*config.datapath.flow_table_size.get_ref()),
            rings,
            persistence: lru_hash_bytes::<PersistKey, PersistState>(maps::PERSIST_ENTRIES),
            nat: nat_bytes(*config.datapath.nat_table_size.get_ref()),
            fixed: lru_hash_bytes::<FlowKey, FlowState>(maps::HANDSHAKE_ENTRIES)
                + u64::from(SOURCE_SLOTS) * size_of::<SourceSlot>() as u64
                + lru_hash_bytes::<FragmentKey, FragmentState>(maps::FRAGMENT_ENTRIES)
                + nat_bytes(NAT_OPEN_ENTRIES),
        }
    }

    /// All of them together.
    pub fn total(&self) -> u64 {
        self.flows + self.rings + self.persistence + self.nat + self.fixed
    }

    /// The other maps, of fixed sizes (VIPs, backends, counters, the
    /// flows' ring buffer...), on a host of `cpus` possible CPUs: the
    /// per-CPU counters take their values once per CPU, so these are
    /// about 3 MiB on 2 CPUs and grow with the CPUs (16,384 backends'
    /// counters alone take 24 bytes each per CPU).
    pub fn small_maps(cpus: u32) -> u64 {
        const COUNTED: [&str; 10] = [
            maps::FLOWS,
            maps::PERSIST,
            maps::HANDSHAKES,
            maps::FRAGMENTS,
            maps::SOURCES,
            maps::RINGS,
            maps::NAT_FLOWS,
            maps::NAT_BACK,
            maps::NAT_OPEN,
            maps::NAT_OPEN_BACK,
        ];
        maps::MAP_SPECS
            .iter()
            .filter(|spec| !COUNTED.contains(&spec.name))
            .map(|spec| spec_bytes(spec, cpus))
            .sum()
    }
}

/// Bytes the kernel allocates for the map of `spec` on `cpus` CPUs, by
/// its kind (docs/benchmarks.md reads them back from the kernel).
fn spec_bytes(spec: &maps::MapSpec, cpus: u32) -> u64 {
    let round = |size: u32| u64::from(size).next_multiple_of(8);
    let entries = u64::from(spec.max_entries(maps::Sizes::DEFAULT));
    match spec.kind {
        MapKind::ARRAY => {
            let bytes = entries * round(spec.value_size);
            if spec.flags & maps::BPF_F_MMAPABLE != 0 {
                bytes.next_multiple_of(4096)
            } else {
                bytes
            }
        }
        // Each element's value on every CPU, and a pointer to them.
        MapKind::PERCPU_ARRAY => entries * (round(spec.value_size) * u64::from(cpus) + 8),
        MapKind::HASH | MapKind::LRU_HASH => {
            entries * (HASH_ENTRY_HEADER + round(spec.key_size) + round(spec.value_size))
                + entries.next_power_of_two() * HASH_BUCKET
        }
        // Entries allocated as they come: only the buckets up front.
        MapKind::DEVMAP_HASH => entries.next_power_of_two() * HASH_BUCKET,
        MapKind::ARRAY_OF_MAPS => entries * 8,
        MapKind::RINGBUF => entries,
        _ => 0,
    }
}

impl fmt::Display for MapMemory {
    /// "80.5 MiB (connection table 30.0 MiB, rings 1.0 MiB, persistence
    /// table 13.0 MiB, NAT tables 18.0 MiB, handshake, source, fragment
    /// and NAT open tables 18.5 MiB)".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (connection table {}, rings {}, persistence table {}, NAT tables {}, handshake, source, fragment and NAT open tables {})",
            mib(self.total()),
            mib(self.flows),
            mib(self.rings),
            mib(self.persistence),
            mib(self.nat),
            mib(self.fixed)
        )
    }
}

/// Bytes of a pair of NAT tables of `entries` each: forward and reverse.
fn nat_bytes(entries: u32) -> u64 {
    lru_hash_bytes::<FlowKey, NatFlow>(entries) + lru_hash_bytes::<FlowKey, NatReply>(entries)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

/// Bytes of a preallocated hash map of `entries` `K` → `V` entries: each
/// entry its header, its key and its value rounded up to 8 bytes, and the
/// buckets.
fn lru_hash_bytes<K, V>(entries: u32) -> u64 {
    let round = |size: usize| (size as u64).next_multiple_of(8);
    let entry = HASH_ENTRY_HEADER + round(size_of::<K>()) + round(size_of::<V>());
    let entries = u64::from(entries);
    entries * entry + entries.next_power_of_two() * HASH_BUCKET
}

/// Bytes of a ring of `slots` backend ids: the kernel rounds an array's
/// entries up to a power of two (a ring of 65,537 slots takes 512 KiB).
fn ring_bytes(slots: u64) -> u64 {
    slots.next_power_of_two() * 4
}
