//! Encapsulation (see `balancer_common::tunnel`): an outer IPv4 or IPv6
//! header (IPIP), or one and a UDP header (GUE), in front of the client's
//! packet, which stays byte for byte as it came, for a backend reached
//! through a route.

use aya_ebpf::{helpers::generated::bpf_xdp_adjust_head, programs::XdpContext};
use balancer_common::{
    backend::BackendInfo,
    is_v4, proto,
    stats::{Event, Stat},
    tunnel::{
        IPIP4_OVERHEAD, IPIP6_OVERHEAD, OUTER_TTL, PROTO_IPIP, PROTO_IPV6, TunnelInfo, UDP_LEN,
        checksum,
        ether::{self, TAGGED_LEN},
        flow_label, fold, gue_source_port,
    },
};

use crate::{maps::TUNNELS, pmtu, stats};

/// What the outer header needs of the client's packet.
struct Inner {
    v6: bool,
    /// Its length from its IP header.
    len: u16,
    /// DSCP and ECN (IPv4's TOS, IPv6's traffic class).
    tos: u8,
}

/// Where an encapsulated frame goes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// To the backend, in its tunnel.
    Backend,
    /// Back to the client: too big for the tunnel, the frame became an
    /// ICMP message saying so ([`pmtu`]).
    Client,
}

/// Puts the outer headers of backend `id` (`backend`, reached in IPIP or
/// GUE) in front of the frame's IP packet, after new Ethernet addresses
/// (the next hop's, the egress interface's) and the frame's VLAN tag if
/// it has one. `flow`: hash material of the packet's flow, for the flow
/// label and GUE's source port. A packet that would not fit the backend's
/// path MTU with them is answered instead.
#[inline(always)]
pub fn encapsulate(
    ctx: &XdpContext,
    id: u32,
    backend: &BackendInfo,
    flow: u32,
    len: u64,
) -> Result<Sent, Stat> {
    let tunnel = TUNNELS.get(id).ok_or(Stat::DROP_ENCAP)?;
    let sent = if ether_type(ctx)? == ether::VLAN {
        encapsulate_at::<TAGGED_LEN>(ctx, backend, tunnel, flow)
    } else {
        encapsulate_at::<{ ether::LEN }>(ctx, backend, tunnel, flow)
    }?;
    if sent == Sent::Backend {
        stats::event(Event::ENCAP, len);
    }
    Ok(sent)
}

/// [`encapsulate`] for a frame whose IP packet starts at `L3`: the client's
/// packet read once, checked against the tunnel's MTU, then wrapped.
#[inline(always)]
fn encapsulate_at<const L3: usize>(
    ctx: &XdpContext,
    backend: &BackendInfo,
    tunnel: &TunnelInfo,
    flow: u32,
) -> Result<Sent, Stat> {
    const V4: usize = IPIP4_OVERHEAD;
    const V6: usize = IPIP6_OVERHEAD;
    let inner = inner::<L3>(ctx)?;
    let outer_v6 = !is_v4(&backend.addr);
    let gue = backend.is_gue();
    let overhead = if outer_v6 { V6 } else { V4 } + if gue { UDP_LEN } else { 0 };
    let mtu = tunnel.mtu as usize;
    if mtu != 0 && inner.len as usize + overhead > mtu {
        pmtu::too_big::<L3>(ctx, inner.v6, mtu.saturating_sub(overhead) as u16)?;
        return Ok(Sent::Client);
    }
    match (outer_v6, gue) {
        (false, false) => wrap::<L3, V4, 0>(ctx, backend, tunnel, flow, &inner),
        (true, false) => wrap::<L3, V6, 0>(ctx, backend, tunnel, flow, &inner),
        (false, true) => wrap::<L3, V4, UDP_LEN>(ctx, backend, tunnel, flow, &inner),
        (true, true) => wrap::<L3, V6, UDP_LEN>(ctx, backend, tunnel, flow, &inner),
    }?;
    Ok(Sent::Backend)
}

/// The frame's first Ethernet type.
#[inline(always)]
fn ether_type(ctx: &XdpContext) -> Result<u16, Stat> {
    let start = ctx.data();
    if start + ether::LEN > ctx.data_end() {
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

/// Grows the frame's head by `OUTER` + `UDP` bytes and writes the
/// Ethernet header (`L3` bytes, tag kept), an outer header of `OUTER`
/// bytes (20: IPv4, 40: IPv6) for `backend` from `tunnel`'s source and,
/// for GUE (`UDP` 8), the UDP header.
#[inline(always)]
fn wrap<const L3: usize, const OUTER: usize, const UDP: usize>(
    ctx: &XdpContext,
    backend: &BackendInfo,
    tunnel: &TunnelInfo,
    flow: u32,
    inner: &Inner,
) -> Result<(), Stat> {
    // What follows the outer IP header.
    let payload = inner.len as usize + UDP;
    // An outer IPv4 header counts itself in its length, an IPv6 one only
    // its payload.
    let limit = if OUTER == IPIP4_OVERHEAD {
        u16::MAX as usize - OUTER
    } else {
        u16::MAX as usize
    };
    if payload > limit {
        return Err(Stat::DROP_ENCAP);
    }
    // GUE over IPv6 sums the inner packet into its checksum: read before
    // the head moves.
    let inner_sum = if UDP != 0 && OUTER == IPIP6_OVERHEAD {
        inner_sum::<L3>(ctx, inner.v6)
    } else {
        None
    };
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
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -((OUTER + UDP) as i32)) } != 0 {
        return Err(Stat::DROP_ENCAP);
    }
    let start = ctx.data();
    if start + L3 + OUTER + UDP > ctx.data_end() {
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
        ether::IPV6
    } else {
        ether::IPV4
    };
    // SAFETY: the Ethernet type ends at L3, inside the frame.
    unsafe { ((start + L3 - 2) as *mut u16).write_volatile(outer_type) };
    let proto = match (UDP, inner.v6) {
        (0, true) => PROTO_IPV6,
        (0, false) => PROTO_IPIP,
        _ => proto::UDP,
    };
    let mut udp = [
        gue_source_port(flow).to_be(),
        tunnel.port,
        (payload as u16).to_be(),
        0,
    ];
    let at = (start + L3) as *mut u16;
    if OUTER == IPIP6_OVERHEAD {
        let first = (6u32 << 28) | ((inner.tos as u32) << 20) | flow_label(flow);
        let h = [
            ((first >> 16) as u16).to_be(),
            (first as u16).to_be(),
            (payload as u16).to_be(),
            u16::from_ne_bytes([proto, OUTER_TTL]),
        ];
        for (i, word) in h.iter().enumerate() {
            // SAFETY: the 40-byte outer header is inside the frame.
            unsafe { at.add(i).write_volatile(*word) };
        }
        // The addresses as the maps hold them, as they lie in the packet:
        // 32-bit stores (unaligned: the header starts at an even offset).
        let addrs = (start + L3 + 8) as *mut u32;
        for i in 0..4 {
            // SAFETY: bytes 8 to 40 of the outer header are inside the
            // frame.
            unsafe {
                addrs.add(i).write_unaligned(tunnel.src[i]);
                addrs.add(4 + i).write_unaligned(backend.addr[i]);
            }
        }
        if let Some(inner_sum) = inner_sum {
            // The pseudo-header (the addresses, the UDP length, the
            // protocol), the UDP header, then the inner packet.
            let mut sum = inner_sum + udp[2] as u32 + u16::from_ne_bytes([0, proto::UDP]) as u32;
            for i in 0..4 {
                for word in [tunnel.src[i], backend.addr[i]] {
                    sum += (word & 0xffff) + (word >> 16);
                }
            }
            for word in &udp[..3] {
                sum += *word as u32;
            }
            udp[3] = udp_checksum(sum);
        }
    } else {
        let mut h = [0u16; 10];
        h[0] = u16::from_ne_bytes([0x45, inner.tos]);
        h[1] = ((payload + OUTER) as u16).to_be();
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
    if UDP != 0 {
        let at = (start + L3 + OUTER) as *mut u16;
        for (i, word) in udp.iter().enumerate() {
            // SAFETY: the 8-byte UDP header is inside the frame.
            unsafe { at.add(i).write_volatile(*word) };
        }
    }
    Ok(())
}

/// The ones' complement sum (unfolded) of the whole IP packet at `L3`,
/// without reading its payload: a valid packet's transport checksum makes
/// its transport segment sum to the complement of its pseudo-header, and a
/// valid IPv4 header sums to zero; an IPv6 header's addresses cancel its
/// pseudo-header's, which leaves its first 8 bytes and the complement of
/// its length and next header. An ICMP message (no pseudo-header) sums to zero.
/// `None` where this does not hold: fragments, an IPv6 extension header,
/// UDP over IPv4 without a checksum.
#[inline(always)]
fn inner_sum<const L3: usize>(ctx: &XdpContext, v6: bool) -> Option<u32> {
    let ip = ctx.data() + L3;
    if v6 {
        if ip + 8 > ctx.data_end() {
            return None;
        }
        let w = ip as *const u16;
        // SAFETY: the header's first 8 bytes are inside the frame (checked
        // above).
        let next = unsafe { *(ip as *const u8).add(6) };
        if !matches!(next, proto::TCP | proto::UDP | proto::ICMPV6) {
            return None;
        }
        let mut header: u32 = 0;
        for i in 0..4 {
            // SAFETY: as above, `i` < 4.
            header += unsafe { w.add(i).read() } as u32;
        }
        // The header's addresses and the pseudo-header's cancel out: what
        // is left of the pseudo-header is its length (the header's payload
        // length) and next header.
        // SAFETY: as above.
        let len = unsafe { w.add(2).read() } as u32;
        let rest = len + u16::from_ne_bytes([0, next]) as u32;
        Some(header + (!fold(rest)) as u32)
    } else {
        if ip + 20 > ctx.data_end() {
            return None;
        }
        let w = ip as *const u16;
        // SAFETY: the 20-byte base header is inside the frame (checked
        // above).
        let (vihl, total, frags, proto) = unsafe {
            (
                *(ip as *const u8),
                u16::from_be(w.add(1).read()),
                u16::from_be(w.add(3).read()),
                *(ip as *const u8).add(9),
            )
        };
        if frags & 0x3fff != 0 {
            return None;
        }
        let header_len = ((vihl & 0x0f) as usize) * 4;
        let segment = (total as usize).checked_sub(header_len)?;
        match proto {
            proto::ICMP => return Some(0),
            proto::TCP => {}
            proto::UDP => {
                let check = ip + header_len + 8;
                if !(20..=60).contains(&header_len) || check > ctx.data_end() {
                    return None;
                }
                // SAFETY: the UDP header is inside the frame (checked
                // above).
                if unsafe { ((check - 2) as *const u16).read() } == 0 {
                    return None;
                }
            }
            _ => return None,
        }
        let mut pseudo = (segment as u16).to_be() as u32 + u16::from_ne_bytes([0, proto]) as u32;
        for i in 6..10 {
            // SAFETY: the addresses are inside the base header.
            pseudo += unsafe { w.add(i).read() } as u32;
        }
        Some((!fold(pseudo)) as u32)
    }
}

/// The UDP checksum to store for ones' complement sum `sum`: folded and
/// complemented, a result of 0 sent as 0xffff (0 means none).
#[inline(always)]
fn udp_checksum(sum: u32) -> u16 {
    let check = !fold(sum);
    if check == 0 { 0xffff } else { check }
}
