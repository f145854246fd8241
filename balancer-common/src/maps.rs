//! Names and default sizes of every BPF map of the datapath.
//!
//! Sizes marked "set at load" are defaults of the object; the daemon sizes
//! them from its configuration when it loads the program.

/// Global per-CPU counters by reason: [`crate::stats::PacketCount`]
/// indexed by [`crate::stats::Stat`].
pub const STATS: &str = "stats";
/// VIPs: [`crate::vip::VipKey`] to [`crate::vip::VipInfo`].
pub const VIPS: &str = "vips";
/// Addresses that carry at least one VIP: [`crate::vip::AddrKey`] to
/// [`crate::vip::AddrInfo`]. Used for fragments and to tell a malformed
/// packet for a VIP (dropped) from any other (passed).
pub const VIP_ADDRS: &str = "vip_addrs";
/// Maglev lookup tables: an array of maps indexed by VIP index, each an
/// array of `ring_size` backend ids, created with [`RING_FLAGS`].
pub const RINGS: &str = "rings_mm";
/// Pinned maps of earlier layouts that a daemon adopting a pin directory
/// removes: the previous `rings`, whose inner template was not mmap-able.
/// Programs still attached keep the maps they use until they are replaced.
pub const OBSOLETE_PINS: &[&str] = &["rings"];
/// Backends: [`crate::backend::BackendInfo`] indexed by backend id.
pub const BACKENDS: &str = "backends";
/// Connection table: LRU hash of [`crate::flow::FlowKey`] to
/// [`crate::flow::FlowState`], with per-CPU LRU lists.
pub const FLOWS: &str = "flows";
/// Interfaces a backend can be reached through other than the ingress one,
/// for `bpf_redirect_map`: ifindex to ifindex.
pub const EGRESS: &str = "egress";
/// Settings of the datapath: one [`crate::settings::Settings`].
pub const SETTINGS: &str = "settings";
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
/// Entries of the persistence table: clients remembered over all VIPs
/// with persistence; the least recently seen are forgotten first.
pub const PERSIST_ENTRIES: u32 = 131_072;
/// Largest ring size the daemon accepts.
pub const MAX_RING_SIZE: u32 = 4_194_301;

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

macro_rules! assert_name_len {
    ($($name:expr),* $(,)?) => {
        $(const _: () = assert!($name.len() <= 15);)*
    };
}

assert_name_len!(
    crate::XDP_PROGRAM,
    STATS,
    VIPS,
    VIP_ADDRS,
    RINGS,
    BACKENDS,
    FLOWS,
    EGRESS,
    SETTINGS,
    VIP_STATS,
    BACKEND_STATS,
    VIP_POLICY,
    BACKEND_LOAD,
    RR_CURSOR,
    PERSIST,
);
