//! From a packet to a backend: VIP match, connection table, the VIP's
//! table (a Maglev ring or a list; the schedulers that use lists are in
//! the schedule module).

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use balancer_common::{
    Addr,
    backend::{BACKEND_UP, BackendInfo},
    flow::{FLOW_COUNTED, FlowKey, FlowState, LAST_SEEN_GRANULARITY_NS},
    hash::{addr_pair_hash, flow_hash, ring_slot, source_hash},
    proto,
    settings::Settings,
    stats::Stat,
    vip::{
        ADDR_HAS_WILDCARD, AddrInfo, AddrKey, LIST_LEN_SLOT, SCHED_SOURCE_HASH, VipInfo, VipKey,
        counts_connections, has_list, scheduler,
    },
};

use crate::{
    maps::{BACKENDS, FLOWS, RINGS, Ring, SETTINGS, VIP_ADDRS, VIPS},
    schedule,
};

/// The VIP for `(addr, port, proto)`, or the address's port-0 VIP if it has
/// one. `addr_flags` are the address's [`AddrInfo`] flags.
#[inline(always)]
pub fn vip(addr: &Addr, port: u16, l4: u8, addr_flags: u32) -> Option<VipInfo> {
    let mut key = VipKey {
        addr: *addr,
        port,
        proto: l4,
        _pad: 0,
    };
    // SAFETY: map values are plain data, read once.
    if let Some(info) = unsafe { VIPS.get(key) } {
        return Some(*info);
    }
    if addr_flags & ADDR_HAS_WILDCARD == 0 {
        return None;
    }
    key.port = 0;
    // SAFETY: as above.
    unsafe { VIPS.get(key) }.copied()
}

/// What the datapath knows of an address carrying VIPs for `l4`.
#[inline(always)]
pub fn vip_addr(addr: &Addr, l4: u8) -> Option<AddrInfo> {
    let key = AddrKey {
        addr: *addr,
        proto: l4,
        _pad1: 0,
        _pad2: 0,
    };
    // SAFETY: map values are plain data, read once.
    unsafe { VIP_ADDRS.get(key) }.copied()
}

/// The datapath's settings (written by the daemon before any VIP).
#[inline(always)]
pub fn settings() -> Option<&'static Settings> {
    SETTINGS.get(0)
}

/// A backend picked for a packet.
pub struct Pick {
    pub id: u32,
    pub backend: &'static BackendInfo,
}

/// What the connection table says of a flow.
pub enum Known {
    /// A live entry whose backend is up: use it.
    Live { pick: Pick, vip: u32 },
    /// A live entry whose backend is down: pick again (fail over).
    Down,
    /// No entry, or an entry idle for longer than the timeout.
    Unknown,
}

/// The current time for the connection table.
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: plain helper call.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// Looks flow `key` up in the connection table, refreshing its last-seen
/// time (and its client's persistence) at most every
/// [`LAST_SEEN_GRANULARITY_NS`]. `end` (a FIN or RST) ends the flow's
/// count in its backend's active connections; the entry stays, for the
/// rest of the close.
#[inline(always)]
pub fn known_flow(key: &FlowKey, settings: &Settings, now: u64, end: bool) -> Known {
    let Some(state) = FLOWS.get_ptr_mut(key) else {
        return Known::Unknown;
    };
    // SAFETY: the entry stays valid for this run; a concurrent writer can
    // only replace whole values of plain integers.
    let state = unsafe { &mut *state };
    let idle = if key.proto == proto::TCP {
        settings.tcp_idle_ns
    } else {
        settings.udp_idle_ns
    };
    let age = now.saturating_sub(state.last_seen_ns);
    if age > idle {
        return Known::Unknown;
    }
    let id = state.backend;
    let Some(backend) = BACKENDS.get(id) else {
        return Known::Unknown;
    };
    if backend.flags & BACKEND_UP == 0 {
        return Known::Down;
    }
    let vip = state.vip_index();
    if end && state.vip & FLOW_COUNTED != 0 {
        state.vip = vip;
        schedule::closed(id);
    }
    if age > LAST_SEEN_GRANULARITY_NS {
        state.last_seen_ns = now;
        schedule::touch(vip, key, id, now);
    }
    Known::Live {
        pick: Pick { id, backend },
        vip,
    }
}

/// The backend the table of `vip` gives flow `key` by hashing: its 5-tuple,
/// or its client address for source affinity. For a VIP whose table is a
/// list (ICMP errors of flows it does not know), the hash indexes the list.
#[inline(always)]
pub fn hash_pick(vip: &VipInfo, key: &FlowKey, settings: &Settings) -> Result<Pick, Stat> {
    let hash = if scheduler(vip.flags) == SCHED_SOURCE_HASH {
        source_hash(&key.src, settings.hash_seed)
    } else {
        flow_hash(key, settings.hash_seed)
    };
    from_table(vip.index, hash, has_list(vip.flags), settings)
}

/// Remembers that flow `key` of `vip` uses `pick`. A full table evicts its
/// least recently used entry; an insert that still fails only costs this
/// flow its stickiness. For a VIP whose scheduler compares connections,
/// the flow counts on its backend unless its first packet already ends
/// it, and an entry it replaces (a reused port, a failed-over or expired
/// flow) stops counting.
#[inline(always)]
pub fn remember(key: &FlowKey, vip: &VipInfo, pick: &Pick, now: u64, end: bool) {
    let mut flags = 0;
    if counts_connections(vip.flags) {
        if let Some(old) = FLOWS.get_ptr(key) {
            // SAFETY: plain data, read once.
            let old = unsafe { *old };
            if old.vip & FLOW_COUNTED != 0 {
                schedule::closed(old.backend);
            }
        }
        if !end {
            schedule::opened(pick.id);
            flags = FLOW_COUNTED;
        }
    }
    let state = FlowState {
        backend: pick.id,
        vip: vip.index | flags,
        last_seen_ns: now,
    };
    let _ = FLOWS.insert(key, state, 0);
}

/// The backend of a fragment: placed by its addresses alone, so every
/// fragment of a datagram reaches the same backend. `list` says the VIP's
/// table is a list.
#[inline(always)]
pub fn backend_for_fragment(
    vip_index: u32,
    list: bool,
    src: &Addr,
    dst: &Addr,
    settings: &Settings,
) -> Result<Pick, Stat> {
    from_table(
        vip_index,
        addr_pair_hash(src, dst, settings.hash_seed),
        list,
        settings,
    )
}

/// The backend at the slot `hash` selects in VIP `vip_index`'s table: a
/// Maglev ring of the settings' size, or a list (`list`) indexed modulo
/// its length.
#[inline(always)]
fn from_table(vip_index: u32, hash: u32, list: bool, settings: &Settings) -> Result<Pick, Stat> {
    let id = if list {
        let (table, len) = self::list(vip_index)?;
        entry(table, 1 + hash % len)?
    } else {
        let table = RINGS.get(vip_index).ok_or(Stat::DROP_NO_BACKEND)?;
        entry(table, ring_slot(hash, settings.ring_size))?
    };
    backend(id)
}

/// The list of VIP `vip_index` and its length (never 0): the table of
/// every scheduler that is not a hash.
#[inline(always)]
pub fn list(vip_index: u32) -> Result<(&'static Ring, u32), Stat> {
    let table = RINGS.get(vip_index).ok_or(Stat::DROP_NO_BACKEND)?;
    match entry(table, LIST_LEN_SLOT)? {
        0 => Err(Stat::DROP_NO_BACKEND),
        len => Ok((table, len)),
    }
}

/// Slot `slot` of a VIP's table.
#[inline(always)]
pub fn entry(table: &Ring, slot: u32) -> Result<u32, Stat> {
    table.get(slot).copied().ok_or(Stat::DROP_NO_BACKEND)
}

/// Backend `id`, as a pick.
#[inline(always)]
pub fn backend(id: u32) -> Result<Pick, Stat> {
    let backend = BACKENDS.get(id).ok_or(Stat::DROP_NO_BACKEND)?;
    Ok(Pick { id, backend })
}
