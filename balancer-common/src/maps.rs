//! Names, default sizes and specs ([`MAP_SPECS`]) of every BPF map of the
//! datapath.
//!
//! Sizes marked "set at load" are defaults of the object; the daemon sizes
//! them from its configuration when it loads the program.

/// Global per-CPU counters: [`crate::stats::PacketCount`] indexed by
/// [`crate::stats::Stat`], then by [`crate::stats::Event::slot`].
pub const STATS: &str = "counters";
/// VIPs: [`crate::vip::VipKey`] to [`crate::vip::VipInfo`].
pub const VIPS: &str = "vips";
/// Addresses that carry at least one VIP: [`crate::vip::AddrKey`] to
/// [`crate::vip::AddrInfo`]. Used for fragments and to tell a malformed
/// packet for a VIP (dropped) from any other (passed).
pub const VIP_ADDRS: &str = "vip_addrs";
/// Rings: an array of maps indexed by VIP index, each a VIP's ring (an
/// array of backend ids: `ring_size` of them in the Maglev layout, a length
/// then that many in the list layout), created with [`RING_FLAGS`].
pub const RINGS: &str = "rings_mm";
/// Pinned maps of earlier layouts that a daemon adopting a pin directory
/// removes: the previous `rings`, whose inner template was not mmap-able,
/// `stats`, sized for exactly the counters it had (its successor [`STATS`]
/// keeps free slots for new ones), and `settings`, likewise (its successor
/// is [`SETTINGS`]). Programs still attached keep the maps they use until
/// they are replaced.
pub const OBSOLETE_PINS: &[&str] = &["rings", "stats", "settings"];
/// Backends: [`crate::backend::BackendInfo`] indexed by backend id.
pub const BACKENDS: &str = "backends";
/// Connection table: LRU hash of [`crate::flow::FlowKey`] to
/// [`crate::flow::FlowState`], with per-CPU LRU lists.
pub const FLOWS: &str = "flows";
/// Interfaces a backend can be reached through other than the ingress one,
/// for `bpf_redirect_map`: ifindex to ifindex.
pub const EGRESS: &str = "egress";
/// Settings of the datapath: one [`crate::settings::Settings`].
pub const SETTINGS: &str = "dp_settings";
/// Per-VIP per-CPU counters: [`crate::stats::FlowCounters`] by VIP index.
pub const VIP_STATS: &str = "vip_stats";
/// Per-backend per-CPU counters: [`crate::stats::FlowCounters`] by backend id.
pub const BACKEND_STATS: &str = "backend_stats";
/// Per-VIP policy: [`crate::vip::VipPolicy`] by VIP index.
pub const VIP_POLICY: &str = "vip_policy";
/// Per-backend load: [`crate::backend::BackendLoad`] by backend id, created
/// with `BPF_F_MMAPABLE` so the daemon writes it in place.
pub const BACKEND_LOAD: &str = "backend_load";
/// Round-robin position of each VIP on each CPU: a per-CPU array of `u32`
/// by VIP index.
pub const RR_CURSOR: &str = "rr_cursor";
/// Session persistence: LRU hash of [`crate::persist::PersistKey`] to
/// [`crate::persist::PersistState`].
pub const PERSIST: &str = "persist";
/// Handshakes in progress: LRU hash of [`crate::flow::FlowKey`] to
/// [`crate::flow::FlowState`], the backend of each new flow to a VIP that
/// cannot recompute its choice, until the flow's next packet moves it to
/// [`FLOWS`]; per-CPU LRU lists.
pub const HANDSHAKES: &str = "handshakes";
/// The insert budget of [`FLOWS`]: a per-CPU array of one
/// [`crate::budget::Budget`].
pub const INSERT_BUDGET: &str = "insert_budget";
/// Allow and deny lists: an LPM trie of [`crate::access::AccessKey`] to a
/// `u32` kind (`ACCESS_*`), created with `BPF_F_NO_PREALLOC`.
pub const ACCESS: &str = "access";
/// Packets the lists dropped: [`crate::access::AccessCounters`] per CPU,
/// by VIP index, then one slot for packets to no VIP's port.
pub const ACCESS_STATS: &str = "access_stats";
/// Per-source limits of each VIP: [`crate::limit::SourceLimit`] by VIP
/// index.
pub const VIP_LIMITS: &str = "vip_limits";
/// Sources of VIPs with limits and their token buckets: an array of
/// [`crate::limit::SourceSlot`] in sets of two (see [`crate::limit`]).
pub const SOURCES: &str = "sources";
/// Packets the per-source limits dropped: [`crate::limit::LimitCounters`]
/// per CPU, by VIP index.
pub const LIMIT_STATS: &str = "limit_stats";
/// Tunnels of the backends reached in an outer IP header:
/// [`crate::tunnel::TunnelInfo`] by backend id.
pub const TUNNELS: &str = "tunnels";
/// The bucket of the ICMP messages the datapath sends (path MTU of a
/// tunnel): a per-CPU array of one [`crate::budget::Budget`], spending
/// [`crate::budget::ICMP_COST_NS`] a message.
pub const ICMP_BUDGET: &str = "icmp_budget";
/// Fragments: LRU hash of [`crate::fragment::FragmentKey`] to
/// [`crate::fragment::FragmentState`], the backend of each datagram whose
/// first fragment was admitted, with per-CPU LRU lists.
pub const FRAGMENTS: &str = "fragments";
/// New connection-table entries told to the daemon while
/// [`crate::settings::SETTINGS_SHARE_FLOWS`] is set: a ring buffer of
/// [`crate::flow::FlowEvent`]s, [`FLOW_EVENTS_BYTES`] long.
pub const FLOW_EVENTS: &str = "flow_events";
/// NAT connections past their handshake, by the client's flow: LRU hash
/// of [`crate::flow::FlowKey`] to [`crate::nat::NatFlow`], with per-CPU LRU
/// lists (see [`crate::nat`]).
pub const NAT_FLOWS: &str = "nat_flows";
/// Their replies, by the backend's flow: LRU hash of
/// [`crate::flow::FlowKey`] to [`crate::nat::NatReply`].
pub const NAT_BACK: &str = "nat_back";
/// NAT connections between their first packet and their backend's answer,
/// by the client's flow: as [`NAT_FLOWS`], [`crate::nat::NAT_OPEN_ENTRIES`]
/// of them.
pub const NAT_OPEN: &str = "nat_open";
/// Their replies: as [`NAT_BACK`].
pub const NAT_OPEN_BACK: &str = "nat_open_back";
/// The SNAT pools: [`crate::nat::SnatPool`] by family
/// ([`crate::nat::pool_index`]).
pub const SNAT_POOL: &str = "snat_pool";
/// Each CPU's source ports: a per-CPU array of one
/// [`crate::nat::PortRange`].
pub const SNAT_PORTS: &str = "snat_ports";
/// Backends' NAT details: [`crate::nat::NatBackend`] by backend id.
pub const NAT_BACKENDS: &str = "nat_backends";
/// Routes toward clients, for NAT replies: an LPM trie of
/// [`crate::nat::RouteKey`] to [`crate::nat::Hop`], created with
/// `BPF_F_NO_PREALLOC`.
pub const NAT_ROUTES: &str = "nat_routes";
/// The datapath's other programs, for the main one to tail-call: a
/// program array of [`PROGRAMS_LEN`] slots, the NAT program in
/// [`PROGRAM_NAT`].
pub const PROGRAMS: &str = "programs";
/// Slots of [`PROGRAMS`].
pub const PROGRAMS_LEN: u32 = 4;
/// The NAT program's slot of [`PROGRAMS`].
pub const PROGRAM_NAT: u32 = 0;
/// Size of [`FLOW_EVENTS`]: 16,383 events of 64 bytes (with the ring's
/// header; the kernel never fills the last byte), a second of new entries
/// at the default insert budget.
pub const FLOW_EVENTS_BYTES: u32 = 1 << 20;

/// Most VIPs the datapath holds (VIP indexes are below this).
pub const MAX_VIPS: u32 = 1024;
/// Most backends over all VIPs (backend ids are below this).
pub const MAX_BACKENDS: u32 = 16384;
/// Most interfaces the program redirects to.
pub const MAX_EGRESS: u32 = 64;
/// Default size of the connection table (set at load).
pub const DEFAULT_FLOWS: u32 = 262_144;
/// Default Maglev ring size: a prime, so every skip is coprime with it.
pub const DEFAULT_RING_SIZE: u32 = 65_537;
// A list ring of the longest list fills a ring of the default size exactly.
const _: () = assert!(crate::vip::MAX_LIST_LEN == DEFAULT_RING_SIZE - 1);
/// Entries of the persistence table: clients remembered over all VIPs
/// with persistence; the least recently seen are forgotten first.
pub const PERSIST_ENTRIES: u32 = 131_072;
/// Entries of the fragment table: datagrams in flight in fragments, over
/// every VIP. A table of its own, so that no fragment (spoofed or not)
/// evicts a connection.
pub const FRAGMENT_ENTRIES: u32 = 16_384;
/// Entries of the handshake table: new flows between their first and
/// second packet, over every VIP that keeps its choice from the first
/// packet. A quarter of the default connection table, in per-CPU LRU
/// lists: a flood of 200,000 spoofed SYNs a second on one CPU of two turns
/// that CPU's share over in about 0.15 s, a thousand times a real
/// handshake's round trip.
pub const HANDSHAKE_ENTRIES: u32 = 65_536;
/// Default entries of each main NAT table ([`NAT_FLOWS`], [`NAT_BACK`]):
/// NAT connections held past their handshake, over every NAT VIP (set at
/// load).
pub const DEFAULT_NAT_ENTRIES: u32 = 65_536;
/// Largest ring size the daemon accepts.
pub const MAX_RING_SIZE: u32 = 4_194_301;

/// `BPF_F_NO_PREALLOC`: entries allocated as they come (an LPM trie must
/// have it).
pub const BPF_F_NO_PREALLOC: u32 = 1;
/// `BPF_F_NO_COMMON_LRU`: per-CPU LRU lists in a shared hash table, so CPUs
/// do not contend on one list.
pub const BPF_F_NO_COMMON_LRU: u32 = 1 << 1;
/// `BPF_F_INNER_MAP`: inner maps of an array of maps may differ in size.
pub const BPF_F_INNER_MAP: u32 = 1 << 12;
/// `BPF_F_MMAPABLE`: an array userspace can map and write directly.
pub const BPF_F_MMAPABLE: u32 = 1 << 10;
/// Flags of every ring (and of the template of `rings`, which must match):
/// any size, and mmap-able, so the daemon fills a ring of 65,537 slots
/// with one memory copy instead of 65,537 element updates (about 20 ms
/// even batched).
pub const RING_FLAGS: u32 = BPF_F_INNER_MAP | BPF_F_MMAPABLE;

/// A kind of BPF map, by its `bpf_map_type` number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapKind(pub u32);

impl MapKind {
    /// `BPF_MAP_TYPE_HASH`.
    pub const HASH: MapKind = MapKind(1);
    /// `BPF_MAP_TYPE_ARRAY`.
    pub const ARRAY: MapKind = MapKind(2);
    /// `BPF_MAP_TYPE_PROG_ARRAY`.
    pub const PROG_ARRAY: MapKind = MapKind(3);
    /// `BPF_MAP_TYPE_PERCPU_ARRAY`.
    pub const PERCPU_ARRAY: MapKind = MapKind(6);
    /// `BPF_MAP_TYPE_LRU_HASH`.
    pub const LRU_HASH: MapKind = MapKind(9);
    /// `BPF_MAP_TYPE_LPM_TRIE`.
    pub const LPM_TRIE: MapKind = MapKind(11);
    /// `BPF_MAP_TYPE_ARRAY_OF_MAPS`.
    pub const ARRAY_OF_MAPS: MapKind = MapKind(12);
    /// `BPF_MAP_TYPE_DEVMAP_HASH`.
    pub const DEVMAP_HASH: MapKind = MapKind(25);
    /// BPF_MAP_TYPE_RINGBUF.
    pub const RINGBUF: MapKind = MapKind(27);
}

/// How many entries a map has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entries {
    /// Always this many.
    Fixed(u32),
    /// Set at load from the configuration; the object declares
    /// [`DEFAULT_FLOWS`].
    FlowTable,
    /// Set at load from the configuration; the object declares
    /// [`DEFAULT_NAT_ENTRIES`].
    NatTable,
}

/// The sizes set at load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizes {
    /// Entries of the connection table.
    pub flows: u32,
    /// Entries of each main NAT table.
    pub nat: u32,
}

impl Sizes {
    /// The sizes the object declares.
    pub const DEFAULT: Sizes = Sizes {
        flows: DEFAULT_FLOWS,
        nat: DEFAULT_NAT_ENTRIES,
    };
}

/// One map of the datapath as the kernel holds it: what the XDP program
/// declares, what the daemon pins and what a restarted daemon must find
/// again before it adopts a pinned map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSpec {
    /// Name in the object, in the kernel and of its pin.
    pub name: &'static str,
    pub kind: MapKind,
    /// Key size in bytes.
    pub key_size: u32,
    /// Value size in bytes (for an array of maps, an inner map's id).
    pub value_size: u32,
    pub entries: Entries,
    /// `map_flags` at creation.
    pub flags: u32,
}

impl MapSpec {
    /// The map's entries once loaded with `sizes`.
    pub const fn max_entries(&self, sizes: Sizes) -> u32 {
        match self.entries {
            Entries::Fixed(n) => n,
            Entries::FlowTable => sizes.flows,
            Entries::NatTable => sizes.nat,
        }
    }
}

/// Size of `T` as a map's key or value size.
const fn size<T>() -> u32 {
    core::mem::size_of::<T>() as u32
}

/// A map keyed by a `u32` index.
const fn indexed<V>(name: &'static str, kind: MapKind, entries: u32, flags: u32) -> MapSpec {
    MapSpec {
        name,
        kind,
        key_size: size::<u32>(),
        value_size: size::<V>(),
        entries: Entries::Fixed(entries),
        flags,
    }
}

/// A hash map keyed by `K`.
const fn hashed<K, V>(name: &'static str, kind: MapKind, entries: Entries, flags: u32) -> MapSpec {
    MapSpec {
        name,
        kind,
        key_size: size::<K>(),
        value_size: size::<V>(),
        entries,
        flags,
    }
}

/// The value of `egress`: `struct bpf_devmap_val`, the interface index
/// and a program descriptor (unused).
pub type DevMapValue = [u32; 2];

/// The template of every ring in [`RINGS`]: `u32` backend ids (or a
/// list ring's length, then ids), [`RING_FLAGS`]; each ring the daemon
/// makes has its own size.
pub const RING_TEMPLATE: MapSpec =
    indexed::<u32>("ring", MapKind::ARRAY, DEFAULT_RING_SIZE, RING_FLAGS);

/// Every map of the datapath: the contract between the XDP program, which
/// declares them, and the daemon, which pins, adopts and writes them. A
/// unit test of `balancer` holds it to the maps of the built object.
pub const MAP_SPECS: [MapSpec; 34] = {
    use crate::{
        access::{ACCESS_ENTRIES, AccessCounters, AccessKey},
        backend::{BackendInfo, BackendLoad},
        budget::Budget,
        flow::{FlowKey, FlowState},
        fragment::{FragmentKey, FragmentState},
        limit::{LimitCounters, SOURCE_SLOTS, SourceLimit, SourceSlot},
        nat::{
            Hop, MAX_ROUTES, NAT_OPEN_ENTRIES, NatBackend, NatFlow, NatReply, PortRange, RouteKey,
            SnatPool,
        },
        persist::{PersistKey, PersistState},
        settings::Settings,
        stats::{FlowCounters, PacketCount, STATS_SLOTS},
        tunnel::TunnelInfo,
        vip::{AddrInfo, AddrKey, VipInfo, VipKey, VipPolicy},
    };
    let lru = MapKind::LRU_HASH;
    [
        hashed::<VipKey, VipInfo>(VIPS, MapKind::HASH, Entries::Fixed(MAX_VIPS), 0),
        hashed::<AddrKey, AddrInfo>(VIP_ADDRS, MapKind::HASH, Entries::Fixed(MAX_VIPS), 0),
        indexed::<u32>(RINGS, MapKind::ARRAY_OF_MAPS, MAX_VIPS, 0),
        indexed::<BackendInfo>(BACKENDS, MapKind::ARRAY, MAX_BACKENDS, 0),
        hashed::<FlowKey, FlowState>(FLOWS, lru, Entries::FlowTable, BPF_F_NO_COMMON_LRU),
        indexed::<DevMapValue>(EGRESS, MapKind::DEVMAP_HASH, MAX_EGRESS, 0),
        indexed::<Settings>(SETTINGS, MapKind::ARRAY, 1, 0),
        indexed::<PacketCount>(STATS, MapKind::PERCPU_ARRAY, STATS_SLOTS, 0),
        indexed::<FlowCounters>(VIP_STATS, MapKind::PERCPU_ARRAY, MAX_VIPS, 0),
        indexed::<FlowCounters>(BACKEND_STATS, MapKind::PERCPU_ARRAY, MAX_BACKENDS, 0),
        indexed::<VipPolicy>(VIP_POLICY, MapKind::ARRAY, MAX_VIPS, 0),
        indexed::<BackendLoad>(BACKEND_LOAD, MapKind::ARRAY, MAX_BACKENDS, BPF_F_MMAPABLE),
        indexed::<u32>(RR_CURSOR, MapKind::PERCPU_ARRAY, MAX_VIPS, 0),
        hashed::<PersistKey, PersistState>(PERSIST, lru, Entries::Fixed(PERSIST_ENTRIES), 0),
        hashed::<FragmentKey, FragmentState>(
            FRAGMENTS,
            lru,
            Entries::Fixed(FRAGMENT_ENTRIES),
            BPF_F_NO_COMMON_LRU,
        ),
        hashed::<FlowKey, FlowState>(
            HANDSHAKES,
            lru,
            Entries::Fixed(HANDSHAKE_ENTRIES),
            BPF_F_NO_COMMON_LRU,
        ),
        indexed::<Budget>(INSERT_BUDGET, MapKind::PERCPU_ARRAY, 1, 0),
        hashed::<AccessKey, u32>(
            ACCESS,
            MapKind::LPM_TRIE,
            Entries::Fixed(ACCESS_ENTRIES),
            BPF_F_NO_PREALLOC,
        ),
        indexed::<AccessCounters>(ACCESS_STATS, MapKind::PERCPU_ARRAY, MAX_VIPS + 1, 0),
        indexed::<SourceLimit>(VIP_LIMITS, MapKind::ARRAY, MAX_VIPS, 0),
        indexed::<SourceSlot>(SOURCES, MapKind::ARRAY, SOURCE_SLOTS, 0),
        indexed::<LimitCounters>(LIMIT_STATS, MapKind::PERCPU_ARRAY, MAX_VIPS, 0),
        indexed::<TunnelInfo>(TUNNELS, MapKind::ARRAY, MAX_BACKENDS, 0),
        indexed::<Budget>(ICMP_BUDGET, MapKind::PERCPU_ARRAY, 1, 0),
        MapSpec {
            name: FLOW_EVENTS,
            kind: MapKind::RINGBUF,
            key_size: 0,
            value_size: 0,
            entries: Entries::Fixed(FLOW_EVENTS_BYTES),
            flags: 0,
        },
        hashed::<FlowKey, NatFlow>(NAT_FLOWS, lru, Entries::NatTable, BPF_F_NO_COMMON_LRU),
        hashed::<FlowKey, NatReply>(NAT_BACK, lru, Entries::NatTable, BPF_F_NO_COMMON_LRU),
        hashed::<FlowKey, NatFlow>(
            NAT_OPEN,
            lru,
            Entries::Fixed(NAT_OPEN_ENTRIES),
            BPF_F_NO_COMMON_LRU,
        ),
        hashed::<FlowKey, NatReply>(
            NAT_OPEN_BACK,
            lru,
            Entries::Fixed(NAT_OPEN_ENTRIES),
            BPF_F_NO_COMMON_LRU,
        ),
        indexed::<SnatPool>(SNAT_POOL, MapKind::ARRAY, 2, 0),
        indexed::<PortRange>(SNAT_PORTS, MapKind::PERCPU_ARRAY, 1, 0),
        indexed::<NatBackend>(NAT_BACKENDS, MapKind::ARRAY, MAX_BACKENDS, 0),
        hashed::<RouteKey, Hop>(
            NAT_ROUTES,
            MapKind::LPM_TRIE,
            Entries::Fixed(MAX_ROUTES),
            BPF_F_NO_PREALLOC,
        ),
        indexed::<u32>(PROGRAMS, MapKind::PROG_ARRAY, PROGRAMS_LEN, 0),
    ]
};

// Kernel object names are cut to 15 bytes.
const _: () = assert!(crate::XDP_PROGRAM.len() <= 15);
const _: () = assert!(crate::NAT_PROGRAM.len() <= 15);
const _: () = {
    let mut i = 0;
    while i < MAP_SPECS.len() {
        assert!(MAP_SPECS[i].name.len() <= 15);
        i += 1;
    }
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_map_is_named_once() {
        for (i, spec) in MAP_SPECS.iter().enumerate() {
            assert!(
                MAP_SPECS[..i].iter().all(|other| other.name != spec.name),
                "{} twice",
                spec.name
            );
        }
    }

    #[test]
    fn only_the_connection_and_nat_tables_are_sized_at_load() {
        let sizes = Sizes { flows: 7, nat: 9 };
        for spec in &MAP_SPECS {
            assert_eq!(
                spec.max_entries(sizes) == 7,
                spec.name == FLOWS,
                "{}",
                spec.name
            );
            assert_eq!(
                spec.max_entries(sizes) == 9,
                spec.name == NAT_FLOWS || spec.name == NAT_BACK,
                "{}",
                spec.name
            );
        }
    }
}
