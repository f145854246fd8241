//! Picking the backend of a new flow: session persistence first, then the
//! VIP's scheduler. The hashing schedulers read a Maglev ring (lookup
//! module); round robin and the least-* schedulers read the VIP's list,
//! whose slot 0 holds its length, so a list swapped in by the daemon always
//! comes with its own length.

use aya_ebpf::helpers::bpf_get_prandom_u32;
use balancer_common::{
    backend::BACKEND_UP,
    flow::FlowKey,
    persist::{PersistKey, PersistState},
    settings::Settings,
    stats::Stat,
    vip::{
        SCHED_LEAST_CONNECTIONS, SCHED_LEAST_LATENCY, SCHED_ROUND_ROBIN, VIP_PERSIST, VipInfo,
        scheduler,
    },
};

use crate::{
    lookup::{self, Pick},
    maps::{BACKEND_LOAD, BACKENDS, PERSIST, RR_CURSOR, VIP_POLICY},
};

/// The backend for new flow `key` of `vip`.
#[inline(always)]
pub fn pick(vip: &VipInfo, key: &FlowKey, settings: &Settings, now: u64) -> Result<Pick, Stat> {
    if vip.flags & VIP_PERSIST != 0 {
        persistent(vip, key, settings, now)
    } else {
        by_scheduler(vip, key, settings)
    }
}

#[inline(always)]
fn by_scheduler(vip: &VipInfo, key: &FlowKey, settings: &Settings) -> Result<Pick, Stat> {
    match scheduler(vip.flags) {
        SCHED_ROUND_ROBIN => round_robin(vip.index),
        SCHED_LEAST_CONNECTIONS => two_choices(vip.index, false),
        SCHED_LEAST_LATENCY => two_choices(vip.index, true),
        _ => lookup::hash_pick(vip, key, settings),
    }
}

/// The next entry of the VIP's round-robin cycle on this CPU. The cursor
/// is per CPU (no atomics) and wraps at the cycle's length, so every
/// window of one cycle of new flows on a CPU holds each backend exactly as
/// often as its weight says.
#[inline(always)]
fn round_robin(vip_index: u32) -> Result<Pick, Stat> {
    let (table, len) = lookup::list(vip_index)?;
    let cursor = RR_CURSOR
        .get_ptr_mut(vip_index)
        .ok_or(Stat::DROP_NO_BACKEND)?;
    // SAFETY: this CPU's slot, valid for the whole run; XDP does not
    // preempt itself on a CPU.
    let at = unsafe { *cursor } % len;
    // SAFETY: as above.
    unsafe { *cursor = if at + 1 >= len { 0 } else { at + 1 } };
    lookup::backend(lookup::entry(table, 1 + at)?)
}

/// Power of two choices over the VIP's member list: two distinct random
/// members, and the one with the lower cost wins. The cost is active
/// connections divided by weight, or with `latency` the smoothed latency
/// times (connections + 1) divided by weight; the division is done by
/// cross-multiplying. A member that is down or drained loses to one that
/// is not (the daemon takes it out of the list soon after).
#[inline(always)]
fn two_choices(vip_index: u32, latency: bool) -> Result<Pick, Stat> {
    let (table, len) = lookup::list(vip_index)?;
    // SAFETY: plain helper call.
    let random = unsafe { bpf_get_prandom_u32() };
    let a = (random & 0xffff) % len;
    let b = if len > 1 {
        (a + 1 + (random >> 16) % (len - 1)) % len
    } else {
        a
    };
    let a = Candidate::new(lookup::entry(table, 1 + a)?, latency)?;
    let b = Candidate::new(lookup::entry(table, 1 + b)?, latency)?;
    Ok(if a.beats(&b) { a.pick } else { b.pick })
}

/// A member of the list as two choices compare it: the backend (so the
/// winner is not looked up again), whether it may take new flows, its load
/// (connections, or latency times connections + 1) and weight.
struct Candidate {
    pick: Pick,
    eligible: bool,
    load: u64,
    weight: u64,
}

/// Connections and latencies are capped so that load × weight fits 64
/// bits: 2^24 connections, 2^24 µs (16 s), weight at most 10,000 (< 2^14).
const CAP: u64 = (1 << 24) - 1;

impl Candidate {
    #[inline(always)]
    fn new(id: u32, latency: bool) -> Result<Candidate, Stat> {
        let pick = lookup::backend(id)?;
        let up = pick.backend.flags & BACKEND_UP != 0;
        let Some(load) = BACKEND_LOAD.get(id) else {
            return Ok(Candidate {
                pick,
                eligible: false,
                load: 0,
                weight: 0,
            });
        };
        let conns = load.active().min(CAP);
        let load_value = if latency {
            (load.latency_us as u64).clamp(1, CAP) * (conns + 1)
        } else {
            conns
        };
        Ok(Candidate {
            pick,
            eligible: up && load.weight > 0,
            load: load_value,
            weight: load.weight as u64,
        })
    }

    /// Whether this candidate should win over `other`: eligibility first,
    /// then load / weight, ties to this one.
    #[inline(always)]
    fn beats(&self, other: &Candidate) -> bool {
        if self.eligible != other.eligible {
            return self.eligible;
        }
        self.load * other.weight <= other.load * self.weight
    }
}

/// A new flow of a VIP with persistence: the backend its client last used,
/// if the client was seen within the VIP's timeout and that backend is up,
/// of this VIP and not draining; else the scheduler's pick, remembered.
#[inline(always)]
fn persistent(vip: &VipInfo, key: &FlowKey, settings: &Settings, now: u64) -> Result<Pick, Stat> {
    let Some(policy) = VIP_POLICY.get(vip.index) else {
        return by_scheduler(vip, key, settings);
    };
    let client = PersistKey {
        client: masked(&key.src, &policy.client_mask),
        vip: vip.index,
    };
    if let Some(state) = PERSIST.get_ptr_mut(client) {
        // SAFETY: the entry stays valid for this run; a concurrent writer
        // can only replace whole values of plain integers.
        let state = unsafe { &mut *state };
        if now.saturating_sub(state.last_seen_ns) <= policy.persist_ns
            && let Some(pick) = usable(state.backend, vip.index)
        {
            state.last_seen_ns = now;
            return Ok(pick);
        }
    }
    let pick = by_scheduler(vip, key, settings)?;
    let state = PersistState {
        backend: pick.id,
        _pad: 0,
        last_seen_ns: now,
    };
    let _ = PERSIST.insert(client, state, 0);
    Ok(pick)
}

/// Backend `id` if it may take a persistent client's new flow: up, still a
/// backend of VIP `vip_index`, and not draining.
#[inline(always)]
fn usable(id: u32, vip_index: u32) -> Option<Pick> {
    let backend = BACKENDS.get(id)?;
    if backend.flags & BACKEND_UP == 0 || backend.vip != vip_index {
        return None;
    }
    if BACKEND_LOAD.get(id)?.weight == 0 {
        return None;
    }
    Some(Pick { id, backend })
}

/// Keeps the persistence of flow `key`'s client alive while the flow
/// carries packets (called at most once a second per flow), if VIP
/// `vip_index` has persistence and the client still maps to `backend`.
#[inline(always)]
pub fn touch(vip_index: u32, key: &FlowKey, backend: u32, now: u64) {
    let Some(policy) = VIP_POLICY.get(vip_index) else {
        return;
    };
    if policy.persist_ns == 0 {
        return;
    }
    let client = PersistKey {
        client: masked(&key.src, &policy.client_mask),
        vip: vip_index,
    };
    if let Some(state) = PERSIST.get_ptr_mut(client) {
        // SAFETY: as in `persistent`.
        let state = unsafe { &mut *state };
        if state.backend == backend {
            state.last_seen_ns = now;
        }
    }
}

#[inline(always)]
fn masked(addr: &[u32; 4], mask: &[u32; 4]) -> [u32; 4] {
    [
        addr[0] & mask[0],
        addr[1] & mask[1],
        addr[2] & mask[2],
        addr[3] & mask[3],
    ]
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
