//! Per-CPU packet counters.

use aya_ebpf::{macros::map, maps::PerCpuArray, programs::XdpContext};
use balancer_common::stats::{PacketCount, Stat};

/// Global counters, indexed by [`Stat`]; the name is
/// `balancer_common::stats::STATS_MAP`.
#[map(name = "stats")]
static STATS: PerCpuArray<PacketCount> = PerCpuArray::with_max_entries(Stat::COUNT, 0);

/// Adds the frame to counter `stat` on this CPU. Per-CPU slots need no
/// atomics: only this CPU writes its slot, and XDP does not preempt itself.
#[inline(always)]
pub fn count(stat: Stat, ctx: &XdpContext) {
    if let Some(slot) = STATS.get_ptr_mut(stat.0) {
        let len = (ctx.data_end() - ctx.data()) as u64;
        // SAFETY: the pointer comes from a successful map lookup and stays
        // valid for the whole program run.
        unsafe {
            (*slot).packets += 1;
            (*slot).bytes += len;
        }
    }
}
