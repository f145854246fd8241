//! The connection table's insert budget on this CPU (see
//! `balancer_common::budget`): whether one more entry may go in now.

use crate::maps::INSERT_BUDGET;

/// Spends one insert of `cost_ns` at `now` from this CPU's bucket; `false`
/// when the bucket is empty (or its slot is missing, which cannot happen
/// for a one-entry per-CPU array).
#[inline(always)]
pub fn take(cost_ns: u64, now: u64) -> bool {
    if cost_ns == 0 {
        return true;
    }
    let Some(bucket) = INSERT_BUDGET.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's slot, valid for the whole run; XDP does not
    // preempt itself on a CPU.
    unsafe { (*bucket).take(cost_ns, now) }
}
