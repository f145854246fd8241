//! From a packet to a backend: VIP match, connection table, Maglev ring.

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use balancer_common::{
    Addr,
    backend::{BACKEND_UP, BackendInfo},
    flow::{FlowKey, FlowState, LAST_SEEN_GRANULARITY_NS},
    hash::{addr_pair_hash, flow_hash, ring_slot, source_hash},
    proto,
    settings::Settings,
    stats::{Event, Stat},
    vip::{ADDR_HAS_WILDCARD, AddrInfo, AddrKey, VIP_SOURCE_HASH, VipInfo, VipKey},
};

use crate::maps::{BACKENDS, FLOWS, RINGS, SETTINGS, VIP_ADDRS, VIPS};

/// The VIP for `(addr, port, proto)`, or the address's port-0 VIP if it has
/// one.
#[inline(always)]
pub fn vip(addr: &Addr, port: u16, l4: u8) -> Option<VipInfo> {
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
    if vip_addr(addr, l4).is_none_or(|a| a.flags & ADDR_HAS_WILDCARD == 0) {
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
        _pad: [0; 3],
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
    /// The flow got a new connection-table entry.
    pub new_flow: bool,
}

/// How a flow's backend is chosen.
pub enum Placement {
    /// Connection table first, then the ring; the choice is remembered.
    Tracked,
    /// Connection table first, then the ring; nothing is written (ICMP
    /// errors about a flow).
    Lookup,
}

/// The backend of flow `key` of `vip`: its connection-table entry while it
/// is live and its backend up, otherwise a pick from the VIP's ring.
#[inline(always)]
pub fn backend_for_flow(
    vip: &VipInfo,
    key: &FlowKey,
    settings: &Settings,
    placement: Placement,
    len: u64,
) -> Result<Pick, Stat> {
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let idle = if key.proto == proto::TCP {
        settings.tcp_idle_ns
    } else {
        settings.udp_idle_ns
    };
    let mut failover = false;
    if let Some(state) = FLOWS.get_ptr_mut(key) {
        // SAFETY: the entry stays valid for this run; a concurrent writer
        // can only replace whole values of plain integers.
        let state = unsafe { &mut *state };
        if now.saturating_sub(state.last_seen_ns) <= idle {
            let id = state.backend;
            if let Some(backend) = BACKENDS.get(id) {
                if backend.flags & BACKEND_UP != 0 {
                    if now.saturating_sub(state.last_seen_ns) > LAST_SEEN_GRANULARITY_NS {
                        state.last_seen_ns = now;
                    }
                    return Ok(Pick {
                        id,
                        backend,
                        new_flow: false,
                    });
                }
                failover = true;
            }
        }
    }
    let hash = if vip.flags & VIP_SOURCE_HASH != 0 {
        source_hash(&key.src, settings.hash_seed)
    } else {
        flow_hash(key, settings.hash_seed)
    };
    let (id, backend) = from_ring(vip.index, hash, settings)?;
    if let Placement::Lookup = placement {
        return Ok(Pick {
            id,
            backend,
            new_flow: false,
        });
    }
    let state = FlowState {
        backend: id,
        _pad: 0,
        last_seen_ns: now,
    };
    // A full table evicts its least recently used entry; an insert that
    // still fails only costs this flow its stickiness.
    let _ = FLOWS.insert(key, state, 0);
    if failover {
        crate::stats::event(Event::FAILOVER, len);
    }
    Ok(Pick {
        id,
        backend,
        new_flow: true,
    })
}

/// The backend of a fragment: placed by its addresses alone, so every
/// fragment of a datagram reaches the same backend.
#[inline(always)]
pub fn backend_for_fragment(
    vip_index: u32,
    src: &Addr,
    dst: &Addr,
    settings: &Settings,
) -> Result<Pick, Stat> {
    let (id, backend) = from_ring(
        vip_index,
        addr_pair_hash(src, dst, settings.hash_seed),
        settings,
    )?;
    Ok(Pick {
        id,
        backend,
        new_flow: false,
    })
}

#[inline(always)]
fn from_ring(
    vip_index: u32,
    hash: u32,
    settings: &Settings,
) -> Result<(u32, &'static BackendInfo), Stat> {
    let slot = ring_slot(hash, settings.ring_size);
    let id = *RINGS
        .get_value(vip_index, &slot)
        .ok_or(Stat::DROP_NO_BACKEND)?;
    let backend = BACKENDS.get(id).ok_or(Stat::DROP_NO_BACKEND)?;
    Ok((id, backend))
}
