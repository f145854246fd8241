//! Per-CPU counters: one slot per CPU, so no atomics; XDP does not preempt
//! itself on a CPU.

use balancer_common::stats::{Event, Stat};

use crate::maps::{BACKEND_STATS, STATS, VIP_STATS};

/// Counts a frame of `len` bytes under verdict reason `stat`.
#[inline(always)]
pub fn count(stat: Stat, len: u64) {
    bump(stat.0, len);
}

/// Counts an event (on top of the frame's verdict reason).
#[inline(always)]
pub fn event(event: Event, len: u64) {
    bump(event.slot(), len);
}

#[inline(always)]
fn bump(slot: u32, len: u64) {
    if let Some(c) = STATS.get_ptr_mut(slot) {
        // SAFETY: the pointer comes from a successful lookup and stays valid
        // for the whole run; only this CPU writes its slot.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += len;
        }
    }
}

/// Counts a frame forwarded for VIP `vip` to backend `backend`.
#[inline(always)]
pub fn forwarded(vip: u32, backend: u32, len: u64, new_flow: bool) {
    if let Some(c) = VIP_STATS.get_ptr_mut(vip) {
        // SAFETY: as in `bump`.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += len;
            (*c).new_flows += new_flow as u64;
        }
    }
    if let Some(c) = BACKEND_STATS.get_ptr_mut(backend) {
        // SAFETY: as in `bump`.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += len;
            (*c).new_flows += new_flow as u64;
        }
    }
}
