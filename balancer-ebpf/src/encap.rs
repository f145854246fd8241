//! IPIP encapsulation (see `balancer_common::tunnel`): an outer IPv4 or
//! IPv6 header in front of the client's packet, which stays byte for byte
//! as it came, for a backend reached through a route.

use aya_ebpf::{helpers::generated::bpf_xdp_adjust_head, programs::XdpContext};
use balancer_common::{
    backend::BackendInfo,
    is_v4,
    stats::{Event, Stat},
    tunnel::{
        IPIP4_OVERHEAD, IPIP6_OVERHEAD, OUTER_TTL, PROTO_IPIP, PROTO_IPV6, TunnelInfo, checksum,
        flow_label,
    },
};
use network_types::eth::EthHdr;

use crate::{maps::TUNNELS, stats};

/// Ethernet types, as they lie in the frame.
const ETH_IPV4: u16 = 0x0800u16.to_be();
const ETH_IPV6: u16 = 0x86ddu16.to_be();
const ETH_VLAN: u16 = 0x8100u16.to_be();
/// The Ethernet header with one VLAN tag.
const TAGGED_LEN: usize = EthHdr::LEN + 4;

/// What the outer header needs of the client's packet.
struct Inner {
    v6: bool,
    /// Its length from its IP header.
    len: u16,
    /// DSCP and ECN (IPv4's TOS, IPv6's traffic class).
    tos: u8,
}

/// Puts the outer header of backend `id` (`backend`, reached in IPIP) in
/// front of the frame's IP packet, after new Ethernet addresses (the
/// next hop's, the egress interface's) and the frame's VLAN tag if it has
/// one. `flow`: hash material of the packet's flow, for the flow label.
#[inline(always)]
pub fn ipip(
    ctx: &XdpContext,
    id: u32,
    backend: &BackendInfo,
    flow: u32,
    len: u64,
) -> Result<(), Stat> {
    let tunnel = TUNNELS.get(id).ok_or(Stat::DROP_ENCAP)?;
    let tagged = ether_type(ctx)? == ETH_VLAN;
    let outer_v6 = !is_v4(&backend.addr);
    match (tagged, outer_v6) {
        (false, false) => wrap::<{ EthHdr::LEN }, IPIP4_OVERHEAD>(ctx, backend, tunnel, flow),
        (false, true) => wrap::<{ EthHdr::LEN }, IPIP6_OVERHEAD>(ctx, backend, tunnel, flow),
        (true, false) => wrap::<TAGGED_LEN, IPIP4_OVERHEAD>(ctx, backend, tunnel, flow),
        (true, true) => wrap::<TAGGED_LEN, IPIP6_OVERHEAD>(ctx, backend, tunnel, flow),
    }?;
    stats::event(Event::ENCAP, len);
    Ok(())
}

/// The frame's first Ethernet type.
#[inline(always)]
fn ether_type(ctx: &XdpContext) -> Result<u16, Stat> {
    let start = ctx.data();
    if start + EthHdr::LEN > ctx.data_end() {
        return Err(Stat::DROP_TRUNCATED);
    }
    // SAFETY: inside the frame (checked above); even offset.
    Ok(unsafe { ((start + 12) as *const u16).read() })
}

/// Reads what the outer header needs of the IP packet at `L3`.
#[inline(always)]
fn inner<const L3: usize>(ctx: &XdpContext) -> Result<Inner, Stat> {
    let start = ctx.data();
    // The longer of the two headers' first 8 bytes: enough for either.
    if start + L3 + 8 > ctx.data_end() {
        return Err(Stat::DROP_TRUNCATED);
    }
    let ip = (start + L3) as *const u8;
    // SAFETY: the first 8 bytes of the IP header are inside the frame.
    let (b0, b1, w1, w2) = unsafe {
        (
            ip.read(),
            ip.add(1).read(),
            (ip.add(2) as *const u16).read(),
            (ip.add(4) as *const u16).read(),
        )
    };
    Ok(if b0 >> 4 == 6 {
        Inner {
            v6: true,
            len: u16::from_be(w2).checked_add(40).ok_or(Stat::DROP_ENCAP)?,
            tos: (b0 << 4) | (b1 >> 4),
        }
    } else {
        Inner {
            v6: false,
            len: u16::from_be(w1),
            tos: b1,
        }
    })
}

/// Grows the frame's head by `OUTER` bytes and writes the Ethernet header
/// (`L3` bytes, tag kept) and an outer header of `OUTER` bytes (20: IPv4,
/// 40: IPv6) for `backend` from `tunnel`'s source.
#[inline(always)]
fn wrap<const L3: usize, const OUTER: usize>(
    ctx: &XdpContext,
    backend: &BackendInfo,
    tunnel: &TunnelInfo,
    flow: u32,
) -> Result<(), Stat> {
    let inner = inner::<L3>(ctx)?;
    let total = inner.len as usize + OUTER;
    // An outer IPv4 header counts itself in its length; an IPv6 one only
    // its payload, the inner packet, which always fits.
    if OUTER == IPIP4_OVERHEAD && total > u16::MAX as usize {
        return Err(Stat::DROP_ENCAP);
    }
    let start = ctx.data();
    if start + L3 > ctx.data_end() {
        return Err(Stat::DROP_TRUNCATED);
    }
    let tag = if L3 == TAGGED_LEN {
        // SAFETY: inside the frame (checked above): the tag (its TPID and
        // TCI), kept for the new Ethernet header.
        unsafe { ((start + 12) as *const u32).read_unaligned() }
    } else {
        0
    };
    // SAFETY: plain helper call; on success every packet pointer must be
    // loaded and checked again, which the code below does.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(OUTER as i32)) } != 0 {
        return Err(Stat::DROP_ENCAP);
    }
    let start = ctx.data();
    if start + L3 + OUTER > ctx.data_end() {
        return Err(Stat::DROP_ENCAP);
    }
    let words = start as *mut u16;
    for (i, word) in backend.macs.iter().enumerate() {
        // SAFETY: the new Ethernet header is inside the frame (checked
        // above) and `i` < 6. Volatile: six stores, not a memmove call.
        unsafe { words.add(i).write_volatile(*word) };
    }
    if L3 == TAGGED_LEN {
        // SAFETY: bytes 12 to 16 are inside the frame.
        unsafe { ((start + 12) as *mut u32).write_unaligned(tag) };
    }
    let outer_type = if OUTER == IPIP6_OVERHEAD {
        ETH_IPV6
    } else {
        ETH_IPV4
    };
    // SAFETY: the Ethernet type ends at L3, inside the frame.
    unsafe { ((start + L3 - 2) as *mut u16).write_volatile(outer_type) };
    let proto = if inner.v6 { PROTO_IPV6 } else { PROTO_IPIP };
    let at = (start + L3) as *mut u16;
    if OUTER == IPIP6_OVERHEAD {
        let first = (6u32 << 28) | ((inner.tos as u32) << 20) | flow_label(flow);
        let mut h = [0u16; 20];
        h[0] = ((first >> 16) as u16).to_be();
        h[1] = (first as u16).to_be();
        h[2] = inner.len.to_be();
        h[3] = u16::from_ne_bytes([proto, OUTER_TTL]);
        for i in 0..4 {
            h[4 + 2 * i] = tunnel.src[i] as u16;
            h[5 + 2 * i] = (tunnel.src[i] >> 16) as u16;
            h[12 + 2 * i] = backend.addr[i] as u16;
            h[13 + 2 * i] = (backend.addr[i] >> 16) as u16;
        }
        for (i, word) in h.iter().enumerate() {
            // SAFETY: the 40-byte outer header is inside the frame.
            unsafe { at.add(i).write_volatile(*word) };
        }
    } else {
        let mut h = [0u16; 10];
        h[0] = u16::from_ne_bytes([0x45, inner.tos]);
        h[1] = (total as u16).to_be();
        h[3] = 0x4000u16.to_be();
        h[4] = u16::from_ne_bytes([OUTER_TTL, proto]);
        h[6] = tunnel.src[3] as u16;
        h[7] = (tunnel.src[3] >> 16) as u16;
        h[8] = backend.addr[3] as u16;
        h[9] = (backend.addr[3] >> 16) as u16;
        h[5] = checksum(&h);
        for (i, word) in h.iter().enumerate() {
            // SAFETY: the 20-byte outer header is inside the frame.
            unsafe { at.add(i).write_volatile(*word) };
        }
    }
    Ok(())
}
