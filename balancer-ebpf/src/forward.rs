//! Sending a frame to its backend: L2 direct server return (the MACs
//! rewritten, the IP packet untouched) or, for a backend reached through a
//! route, the packet in an outer IP header ([`crate::encap`]).

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use balancer_common::{backend::BackendInfo, stats::Stat};
use network_types::eth::EthHdr;

use crate::{
    encap::{self, Sent},
    maps::EGRESS,
    ring::Pick,
};

/// Sends the frame to `pick`'s backend: destination MAC to the backend's
/// (or its route's next hop's), source MAC to the egress interface's, and
/// for a backend reached in IPIP the outer header in front (`flow`: hash
/// material of the packet's flow, `len`: its length, for the counters).
/// XDP_TX when the backend is reached through the ingress interface, a
/// redirect through `egress` otherwise; XDP_TX of an ICMP message to the
/// client (`tx_too_big`) when the packet does not fit the backend's
/// tunnel. Returns the action and its reason.
#[inline(always)]
pub fn to_backend(ctx: &XdpContext, pick: &Pick, flow: u32, len: u64) -> (u32, Stat) {
    let backend = pick.backend;
    if !backend.is_resolved() {
        return (xdp_action::XDP_DROP, Stat::DROP_NO_NEIGHBOUR);
    }
    let written = if backend.is_tunnelled() {
        encap::encapsulate(ctx, pick.id, backend, flow, len)
    } else {
        rewrite_macs(ctx, backend).map(|()| Sent::Backend)
    };
    match written {
        Ok(Sent::Backend) => {}
        // An ICMP message for the client, back where the packet came from.
        Ok(Sent::Client) => return (xdp_action::XDP_TX, Stat::TX_TOO_BIG),
        Err(reason) => return (xdp_action::XDP_DROP, reason),
    }
    if backend.ifindex as usize == ctx.ingress_ifindex() {
        return (xdp_action::XDP_TX, Stat::TX);
    }
    match EGRESS.redirect(backend.ifindex, 0) {
        Ok(action) => (action, Stat::REDIRECT),
        Err(_) => (xdp_action::XDP_DROP, Stat::DROP_REDIRECT),
    }
}

/// Writes `backend`'s MACs over the frame's.
#[inline(always)]
fn rewrite_macs(ctx: &XdpContext, backend: &BackendInfo) -> Result<(), Stat> {
    let start = ctx.data();
    if start + EthHdr::LEN > ctx.data_end() {
        // Unreachable: the frame was parsed, but the verifier wants the
        // check next to the write.
        return Err(Stat::DROP_TRUNCATED);
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
    Ok(())
}
