//! The connection table: what it knows of a flow, remembering a new flow's
//! backend, and the active-connection counts of the least-* schedulers,
//! which follow the table's entries (opened with a counted entry, closed
//! by its FIN or RST or when a new entry replaces it).

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use balancer_common::{
    flow::{FlowKey, FlowState, LAST_SEEN_GRANULARITY_NS},
    settings::Settings,
    vip::VipInfo,
};

use crate::{
    maps::{BACKEND_LOAD, FLOWS},
    persist,
    ring::{self, Pick},
};

/// What the connection table says of a flow.
pub enum Known {
    /// A live entry whose backend is up: use it; `generation` is that of
    /// the lists it was last admitted under.
    Live {
        pick: Pick,
        vip: u32,
        generation: u32,
    },
    /// A live entry whose backend is down: pick again (fail over).
    Down,
    /// An entry idle for longer than the timeout, one a SYN reopens after
    /// the client closed it, or one naming no backend: pick again, in
    /// its place.
    Stale,
    /// No entry.
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
/// [`LAST_SEEN_GRANULARITY_NS`]. A `syn` keeps a live flow's backend (a
/// retransmitted or spoofed SYN must not move a connection; a backend
/// answers a SYN for a connection it holds itself), unless the client was
/// seen closing the flow: then it starts a new connection. `end` (a FIN or
/// RST) marks the flow closing and ends its count in its backend's active
/// connections; the entry stays, for the rest of the close.
#[inline(always)]
pub fn known(key: &FlowKey, settings: &Settings, now: u64, syn: bool, end: bool) -> Known {
    let Some(state) = FLOWS.get_ptr_mut(key) else {
        return Known::Unknown;
    };
    // SAFETY: the entry stays valid for this run; a concurrent writer can
    // only replace whole values of plain integers.
    let state = unsafe { &mut *state };
    let age = now.saturating_sub(state.last_seen_ns);
    if age > settings.idle_ns(key.proto) || (syn && state.is_closing()) {
        return Known::Stale;
    }
    let id = state.backend;
    let Ok(pick) = ring::backend(id) else {
        return Known::Stale;
    };
    if !pick.backend.is_up() {
        return Known::Down;
    }
    let vip = state.vip_index();
    if end && !state.is_closing() {
        if state.is_counted() {
            closed(id);
        }
        state.close();
    }
    if age > LAST_SEEN_GRANULARITY_NS {
        state.last_seen_ns = now;
        persist::touch(vip, key, id, now);
    }
    Known::Live {
        pick,
        vip,
        generation: state.access_generation(),
    }
}

/// Records that flow `key` was admitted by the lists of `generation`, so
/// that its next packets skip them until the lists change.
#[inline(always)]
pub fn admitted(key: &FlowKey, generation: u32) {
    if let Some(state) = FLOWS.get_ptr_mut(key) {
        // SAFETY: as in `known`.
        unsafe { (*state).set_access_generation(generation) };
    }
}

/// Remembers that flow `key` of `vip` uses `pick` (admitted by the lists
/// of `generation`), in place of the entry
/// the table holds for it, if any. A full table evicts its least recently
/// used entry; an insert that still fails only costs this flow its
/// stickiness. Whether a new entry may go in is the caller's (the insert
/// budget). For a VIP whose scheduler compares connections,
/// the flow counts on its backend unless its first packet already ends
/// it, and an entry it replaces (a reused port, a failed-over or expired
/// flow) stops counting.
#[inline(always)]
pub fn remember(key: &FlowKey, vip: &VipInfo, pick: &Pick, now: u64, end: bool, generation: u32) {
    let mut counted = false;
    if vip.counts_connections() {
        if let Some(old) = FLOWS.get_ptr(key) {
            // SAFETY: plain data, read once.
            let old = unsafe { *old };
            if old.is_counted() {
                closed(old.backend);
            }
        }
        if !end {
            opened(pick.id);
            counted = true;
        }
    }
    let mut state = FlowState::new(pick.id, vip.index, counted, end, now);
    state.set_access_generation(generation);
    let _ = FLOWS.insert(key, state, 0);
}

/// A flow of a counting VIP starts on backend `id`.
#[inline(always)]
pub fn opened(id: u32) {
    add_conns(id, 1);
}

/// A counted flow on backend `id` ends.
#[inline(always)]
pub fn closed(id: u32) {
    add_conns(id, u64::MAX);
}

/// One atomic add per flow event (not per packet): the count is shared by
/// every CPU. On BPF through the intrinsic, because `AtomicU64::fetch_add`
/// does not exist on that target (it has no compare-and-swap), while the
/// add itself is one BPF instruction; the host build (lint and type
/// checks only) uses the atomic type.
#[inline(always)]
fn add_conns(id: u32, delta: u64) {
    if let Some(load) = BACKEND_LOAD.get_ptr_mut(id) {
        // SAFETY: the value lives as long as the map and is 8-byte aligned
        // (array values are); the datapath and the daemon only ever add to
        // it atomically.
        let conns = unsafe { &raw mut (*load).conns };
        #[cfg(target_arch = "bpf")]
        // SAFETY: as above.
        unsafe {
            core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
                conns, delta,
            )
        };
        #[cfg(not(target_arch = "bpf"))]
        // SAFETY: as above.
        unsafe { core::sync::atomic::AtomicU64::from_ptr(conns) }
            .fetch_add(delta, core::sync::atomic::Ordering::Relaxed);
    }
}
