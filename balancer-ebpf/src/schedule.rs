//! Picking the backend of a new flow by the VIP's scheduler, and of ICMP
//! errors by hashing. The hashing schedulers read a Maglev ring; round
//! robin and the least-* schedulers read a list ring, whose length slot
//! comes with it, so a ring swapped in by the daemon always comes with its
//! own length. Picking only: persistence and the connection table are the
//! orchestrator's (the crate root).

use aya_ebpf::helpers::bpf_get_prandom_u32;
use balancer_common::{
    flow::FlowKey,
    hash::{flow_hash, source_hash},
    settings::Settings,
    stats::Stat,
    vip::{
        SCHED_LEAST_CONNECTIONS, SCHED_LEAST_LATENCY, SCHED_ROUND_ROBIN, SCHED_SOURCE_HASH, VipInfo,
    },
};

use crate::{
    maps::{BACKEND_LOAD, RR_CURSOR},
    ring::{self, Pick},
};

/// The backend the scheduler of `vip` gives new flow `key`.
#[inline(always)]
pub fn pick(vip: &VipInfo, key: &FlowKey, settings: &Settings) -> Result<Pick, Stat> {
    match vip.scheduler() {
        SCHED_ROUND_ROBIN => round_robin(vip.index),
        SCHED_LEAST_CONNECTIONS => two_choices(vip.index, false),
        SCHED_LEAST_LATENCY => two_choices(vip.index, true),
        _ => hash_pick(vip, key, settings),
    }
}

/// The backend the ring of `vip` gives flow `key` by hashing: its 5-tuple,
/// or its client address for source affinity. For a VIP whose ring is a
/// list ring (ICMP errors of flows it does not know), the hash indexes its
/// entries.
#[inline(always)]
pub fn hash_pick(vip: &VipInfo, key: &FlowKey, settings: &Settings) -> Result<Pick, Stat> {
    let hash = if vip.scheduler() == SCHED_SOURCE_HASH {
        source_hash(&key.src, settings.hash_seed)
    } else {
        flow_hash(key, settings.hash_seed)
    };
    ring::at_hash(vip.index, hash, vip.has_list(), settings)
}

/// The next entry of the VIP's round-robin cycle on this CPU. The cursor
/// is per CPU (no atomics) and wraps at the cycle's length, so every
/// window of one cycle of new flows on a CPU holds each backend exactly as
/// often as its weight says.
#[inline(always)]
fn round_robin(vip_index: u32) -> Result<Pick, Stat> {
    let (ring, len) = ring::list_ring(vip_index)?;
    let cursor = RR_CURSOR
        .get_ptr_mut(vip_index)
        .ok_or(Stat::DROP_NO_BACKEND)?;
    // SAFETY: this CPU's slot, valid for the whole run; XDP does not
    // preempt itself on a CPU.
    let at = unsafe { *cursor } % len;
    // SAFETY: as above.
    unsafe { *cursor = if at + 1 >= len { 0 } else { at + 1 } };
    ring::backend(ring::list_entry(ring, at)?)
}

/// Power of two choices over the VIP's list ring: two distinct random
/// members, and the one with the lower cost wins. The cost is active
/// connections divided by weight, or with `latency` the smoothed latency
/// times (connections + 1) divided by weight; the division is done by
/// cross-multiplying. A member that is down or drained loses to one that
/// is not (the daemon takes it out of the ring soon after).
#[inline(always)]
fn two_choices(vip_index: u32, latency: bool) -> Result<Pick, Stat> {
    let (ring, len) = ring::list_ring(vip_index)?;
    // SAFETY: plain helper call.
    let random = unsafe { bpf_get_prandom_u32() };
    let a = (random & 0xffff) % len;
    let b = if len > 1 {
        (a + 1 + (random >> 16) % (len - 1)) % len
    } else {
        a
    };
    let a = Candidate::new(ring::list_entry(ring, a)?, latency)?;
    let b = Candidate::new(ring::list_entry(ring, b)?, latency)?;
    Ok(if a.beats(&b) { a.pick } else { b.pick })
}

/// A member of the list ring as two choices compare it: the backend (so the
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
        let pick = ring::backend(id)?;
        let up = pick.backend.is_up();
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
