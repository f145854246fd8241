//! A verdict and the counter that explains it, as every handler returns
//! them.

use aya_ebpf::bindings::xdp_action;
use balancer_common::stats::Stat;

/// The frame passes to the kernel, counted under `stat`.
#[inline(always)]
pub fn pass(stat: Stat) -> (u32, Stat) {
    (xdp_action::XDP_PASS, stat)
}

/// The frame is dropped, counted under `stat`.
#[inline(always)]
pub fn drop(stat: Stat) -> (u32, Stat) {
    (xdp_action::XDP_DROP, stat)
}
