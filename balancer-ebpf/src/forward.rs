//! Sending a frame to its backend: L2 direct server return (the MACs
//! rewritten, the IP packet untouched) or, for a backend reached through a
//! route, the packet in an outer IP header ([`crate::encap`]); and sending
//! a NAT connection's reply to its client, through the hop the daemon's
//! routes toward clients give.

use aya_ebpf::btf_maps::lpm_trie::Key;
use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use balancer_common::{Addr, nat::Hop, stats::Stat};
use network_types::eth::EthHdr;

use crate::{
    encap::{self, Sent},
    maps::{EGRESS, NAT_ROUTES},
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
        rewrite_macs(ctx, &backend.macs).map(|()| Sent::Backend)
    };
    match written {
        Ok(Sent::Backend) => out(ctx, backend.ifindex, Stat::TX, Stat::REDIRECT),
        // An ICMP message for the client, back where the packet came from.
        Ok(Sent::Client) => (xdp_action::XDP_TX, Stat::TX_TOO_BIG),
        Err(reason) => (xdp_action::XDP_DROP, reason),
    }
}

/// Sends a rewritten NAT packet to `pick`'s backend: MACs only (a NAT
/// backend is never in a tunnel: its entry has no tunnel flag), XDP_TX or
/// a redirect as for [`to_backend`].
#[inline(always)]
pub fn to_nat_backend(ctx: &XdpContext, pick: &Pick) -> (u32, Stat) {
    let backend = pick.backend;
    if !backend.is_resolved() {
        return (xdp_action::XDP_DROP, Stat::DROP_NO_NEIGHBOUR);
    }
    if let Err(reason) = rewrite_macs(ctx, &backend.macs) {
        return (xdp_action::XDP_DROP, reason);
    }
    out(ctx, backend.ifindex, Stat::TX, Stat::REDIRECT)
}

/// The hop toward `client` of a NAT connection's reply: the most specific
/// route toward it the daemon wrote.
#[inline(always)]
pub fn client_hop(client: &Addr) -> Option<&'static Hop> {
    NAT_ROUTES.get(&Key::new(128, crate::copy::read(client)))
}

/// Sends a NAT connection's reply through `hop`: its MACs (the next
/// hop's, the egress interface's), XDP_TX when that interface is the
/// ingress one, a redirect otherwise.
#[inline(always)]
pub fn to_client(ctx: &XdpContext, hop: &Hop) -> (u32, Stat) {
    if let Err(reason) = rewrite_macs(ctx, &hop.macs) {
        return (xdp_action::XDP_DROP, reason);
    }
    out(ctx, hop.ifindex, Stat::TX_REPLY, Stat::REDIRECT_REPLY)
}

/// Sends the rewritten frame out of interface `ifindex`: XDP_TX when it
/// is the ingress interface (counted under `tx`), a redirect through
/// `egress` otherwise (under `redirect`; a failed one is
/// `drop_redirect`).
#[inline(always)]
fn out(ctx: &XdpContext, ifindex: u32, tx: Stat, redirect: Stat) -> (u32, Stat) {
    if ifindex as usize == ctx.ingress_ifindex() {
        return (xdp_action::XDP_TX, tx);
    }
    match EGRESS.redirect(ifindex, 0) {
        Ok(action) => (action, redirect),
        Err(_) => (xdp_action::XDP_DROP, Stat::DROP_REDIRECT),
    }
}

/// Writes `macs` (destination, then source, as 16-bit words) over the
/// frame's.
#[inline(always)]
fn rewrite_macs(ctx: &XdpContext, macs: &[u16; 6]) -> Result<(), Stat> {
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
    for (i, word) in macs.iter().enumerate() {
        // SAFETY: the Ethernet header (12 bytes of MACs) is inside the
        // packet (checked above) and `i` < 6.
        unsafe { words.add(i).write_volatile(*word) };
    }
    Ok(())
}
