//! L2 direct server return: rewrite the MACs, send to the backend.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use balancer_common::{backend::BackendInfo, stats::Stat};
use network_types::eth::EthHdr;

use crate::maps::EGRESS;

/// Sends the frame to `backend`: destination MAC to the backend's, source
/// MAC to the egress interface's, IP and transport headers untouched.
/// XDP_TX when the backend is reached through the ingress interface, a
/// redirect through `egress` otherwise. Returns the action and its reason.
#[inline(always)]
pub fn to_backend(ctx: &XdpContext, backend: &BackendInfo) -> (u32, Stat) {
    if !backend.is_resolved() {
        return (xdp_action::XDP_DROP, Stat::DROP_NO_NEIGHBOUR);
    }
    let start = ctx.data();
    if start + EthHdr::LEN > ctx.data_end() {
        // Unreachable: the frame was parsed, but the verifier wants the
        // check next to the write.
        return (xdp_action::XDP_DROP, Stat::DROP_TRUNCATED);
    }
    // Both MACs as six 16-bit stores; the frame starts at an even address
    // (see the parse module). Volatile, so that LLVM keeps six stores
    // instead of calling memmove (a byte loop on BPF: the program is built
    // without builtins).
    let words = start as *mut u16;
    for (i, word) in backend.macs.iter().enumerate() {
        // SAFETY: the Ethernet header (12 bytes of MACs) is inside the
        // packet (checked above) and `i` < 6.
        unsafe { words.add(i).write_volatile(*word) };
    }
    if backend.ifindex as usize == ctx.ingress_ifindex() {
        return (xdp_action::XDP_TX, Stat::TX);
    }
    match EGRESS.redirect(backend.ifindex, 0) {
        Ok(action) => (action, Stat::REDIRECT),
        Err(_) => (xdp_action::XDP_DROP, Stat::DROP_REDIRECT),
    }
}
