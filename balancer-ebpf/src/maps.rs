//! Every map of the datapath. Types, names and sizes come from
//! balancer-common (`maps` module), which documents each map.

use aya_ebpf::{
    btf_maps::{
        Array, ArrayOfMaps, DevMapHash, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray,
        RingBuf,
    },
    macros::btf_map,
};
use balancer_common::{
    Addr,
    access::{ACCESS_ENTRIES, AccessCounters, AccessData},
    backend::{BackendInfo, BackendLoad},
    budget::Budget,
    flow::{FlowEvent, FlowKey, FlowState},
    fragment::{FragmentKey, FragmentState},
    limit::{LimitCounters, SOURCE_SLOTS, SourceLimit, SourceSlot},
    maps::{
        BPF_F_MMAPABLE, BPF_F_NO_COMMON_LRU, DEFAULT_FLOWS, DEFAULT_NAT_ENTRIES, DEFAULT_RING_SIZE,
        FLOW_EVENTS_BYTES, FRAGMENT_ENTRIES, HANDSHAKE_ENTRIES, MAX_BACKENDS, MAX_EGRESS, MAX_VIPS,
        PERSIST_ENTRIES, PROGRAMS_LEN, RING_FLAGS,
    },
    nat::{Hop, MAX_ROUTES, NAT_OPEN_ENTRIES, NatBackend, NatFlow, NatReply, PortRange, SnatPool},
    persist::{PersistKey, PersistState},
    settings::Settings,
    stats::{FlowCounters, PacketCount, STATS_SLOTS},
    tunnel::TunnelInfo,
    vip::{AddrInfo, AddrKey, VipInfo, VipKey, VipPolicy},
};

const VIPS_N: usize = MAX_VIPS as usize;
const BACKENDS_N: usize = MAX_BACKENDS as usize;

#[btf_map(name = "vips")]
pub static VIPS: HashMap<VipKey, VipInfo, VIPS_N> = HashMap::new();

#[btf_map(name = "vip_addrs")]
pub static VIP_ADDRS: HashMap<AddrKey, AddrInfo, VIPS_N> = HashMap::new();

/// The inner template: rings made by the daemon may have any size
/// (`BPF_F_INNER_MAP`), the settings say which, and are mmap-able.
pub type Ring = Array<u32, { DEFAULT_RING_SIZE as usize }, { RING_FLAGS as usize }>;

#[btf_map(name = "rings_mm")]
pub static RINGS: ArrayOfMaps<Ring, VIPS_N> = ArrayOfMaps::new();

#[btf_map(name = "backends")]
pub static BACKENDS: Array<BackendInfo, BACKENDS_N> = Array::new();

#[btf_map(name = "flows")]
pub static FLOWS: LruHashMap<
    FlowKey,
    FlowState,
    { DEFAULT_FLOWS as usize },
    { BPF_F_NO_COMMON_LRU as usize },
> = LruHashMap::new();

#[btf_map(name = "egress")]
pub static EGRESS: DevMapHash<{ MAX_EGRESS as usize }> = DevMapHash::new();

#[btf_map(name = "dp_settings")]
pub static SETTINGS: Array<Settings, 1> = Array::new();

#[btf_map(name = "counters")]
pub static STATS: PerCpuArray<PacketCount, { STATS_SLOTS as usize }> = PerCpuArray::new();

#[btf_map(name = "vip_stats")]
pub static VIP_STATS: PerCpuArray<FlowCounters, VIPS_N> = PerCpuArray::new();

#[btf_map(name = "backend_stats")]
pub static BACKEND_STATS: PerCpuArray<FlowCounters, BACKENDS_N> = PerCpuArray::new();

#[btf_map(name = "vip_policy")]
pub static VIP_POLICY: Array<VipPolicy, VIPS_N> = Array::new();

#[btf_map(name = "backend_load")]
pub static BACKEND_LOAD: Array<BackendLoad, BACKENDS_N, { BPF_F_MMAPABLE as usize }> = Array::new();

#[btf_map(name = "rr_cursor")]
pub static RR_CURSOR: PerCpuArray<u32, VIPS_N> = PerCpuArray::new();

#[btf_map(name = "fragments")]
pub static FRAGMENTS: LruHashMap<
    FragmentKey,
    FragmentState,
    { FRAGMENT_ENTRIES as usize },
    { BPF_F_NO_COMMON_LRU as usize },
> = LruHashMap::new();

#[btf_map(name = "persist")]
pub static PERSIST: LruHashMap<PersistKey, PersistState, { PERSIST_ENTRIES as usize }> =
    LruHashMap::new();

#[btf_map(name = "handshakes")]
pub static HANDSHAKES: LruHashMap<
    FlowKey,
    FlowState,
    { HANDSHAKE_ENTRIES as usize },
    { BPF_F_NO_COMMON_LRU as usize },
> = LruHashMap::new();

#[btf_map(name = "insert_budget")]
pub static INSERT_BUDGET: PerCpuArray<Budget, 1> = PerCpuArray::new();

#[btf_map(name = "access")]
pub static ACCESS: LpmTrie<AccessData, u32, { ACCESS_ENTRIES as usize }> = LpmTrie::new();

#[btf_map(name = "access_stats")]
pub static ACCESS_STATS: PerCpuArray<AccessCounters, { VIPS_N + 1 }> = PerCpuArray::new();

#[btf_map(name = "vip_limits")]
pub static VIP_LIMITS: Array<SourceLimit, VIPS_N> = Array::new();

#[btf_map(name = "sources")]
pub static SOURCES: Array<SourceSlot, { SOURCE_SLOTS as usize }> = Array::new();

#[btf_map(name = "limit_stats")]
pub static LIMIT_STATS: PerCpuArray<LimitCounters, VIPS_N> = PerCpuArray::new();

#[btf_map(name = "tunnels")]
pub static TUNNELS: Array<TunnelInfo, BACKENDS_N> = Array::new();

#[btf_map(name = "icmp_budget")]
pub static ICMP_BUDGET: PerCpuArray<Budget, 1> = PerCpuArray::new();

#[btf_map(name = "flow_events")]
pub static FLOW_EVENTS: RingBuf<FlowEvent, { FLOW_EVENTS_BYTES as usize }> = RingBuf::new();

#[btf_map(name = "nat_flows")]
pub static NAT_FLOWS: LruHashMap<
    FlowKey,
    NatFlow,
    { DEFAULT_NAT_ENTRIES as usize },
    { BPF_F_NO_COMMON_LRU as usize },
> = LruHashMap::new();

#[btf_map(name = "nat_back")]
pub static NAT_BACK: LruHashMap<
    FlowKey,
    NatReply,
    { DEFAULT_NAT_ENTRIES as usize },
    { BPF_F_NO_COMMON_LRU as usize },
> = LruHashMap::new();

#[btf_map(name = "nat_open")]
pub static NAT_OPEN: LruHashMap<
    FlowKey,
    NatFlow,
    { NAT_OPEN_ENTRIES as usize },
    { BPF_F_NO_COMMON_LRU as usize },
> = LruHashMap::new();

#[btf_map(name = "nat_open_back")]
pub static NAT_OPEN_BACK: LruHashMap<
    FlowKey,
    NatReply,
    { NAT_OPEN_ENTRIES as usize },
    { BPF_F_NO_COMMON_LRU as usize },
> = LruHashMap::new();

#[btf_map(name = "snat_pool")]
pub static SNAT_POOL: Array<SnatPool, 2> = Array::new();

#[btf_map(name = "snat_ports")]
pub static SNAT_PORTS: PerCpuArray<PortRange, 1> = PerCpuArray::new();

#[btf_map(name = "nat_backends")]
pub static NAT_BACKENDS: Array<NatBackend, BACKENDS_N> = Array::new();

#[btf_map(name = "nat_routes")]
pub static NAT_ROUTES: LpmTrie<Addr, Hop, { MAX_ROUTES as usize }> = LpmTrie::new();

#[btf_map(name = "programs")]
pub static PROGRAMS: ProgramArray<{ PROGRAMS_LEN as usize }> = ProgramArray::new();
