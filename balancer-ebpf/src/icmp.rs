//! ICMP errors for VIPs: path MTU discovery through the balancer.
//!
//! A router that cannot forward a backend's reply (source: the VIP) sends
//! "fragmentation needed" (ICMP) or "packet too big" (ICMPv6) to the VIP.
//! The message quotes the reply's headers; the flow they describe, seen
//! from the client, picks the backend that sent the reply, and the message
//! goes there.

use balancer_common::{Addr, flow::FlowKey, proto};

use crate::parse::{self, Cursor, IcmpHdr, Ipv4Hdr, Ipv6Hdr};

/// ICMP's destination unreachable, its code fragmentation needed, and
/// ICMPv6's packet too big: the path-MTU errors, those passed on to a
/// flow's backend and those the datapath builds (`pmtu`).
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_FRAG_NEEDED: u8 = 4;
pub const ICMPV6_PACKET_TOO_BIG: u8 = 2;

/// What an ICMP message to a VIP address is.
pub enum Icmp {
    /// A path-MTU error quoting TCP or UDP flow `key` (client to VIP).
    Pmtu(FlowKey),
    /// Anything else (echo, other errors): not the balancer's business.
    Other,
    /// A path-MTU error too short to hold what it must quote.
    Truncated,
}

/// Reads an ICMP (`v6` false) or ICMPv6 message at the cursor.
#[inline(always)]
pub fn parse(c: &mut Cursor, v6: bool) -> Icmp {
    let Some(h) = c.header::<IcmpHdr>() else {
        return Icmp::Truncated;
    };
    // SAFETY: the whole header is inside the packet.
    let h = unsafe { &*h };
    let pmtu = if v6 {
        h.kind == ICMPV6_PACKET_TOO_BIG
    } else {
        h.kind == ICMP_DEST_UNREACH && h.code == ICMP_FRAG_NEEDED
    };
    if !pmtu {
        return Icmp::Other;
    }
    let quoted = if v6 { quoted_v6(c) } else { quoted_v4(c) };
    match quoted {
        Some(key) if key.proto == proto::TCP || key.proto == proto::UDP => Icmp::Pmtu(key),
        Some(_) => Icmp::Other,
        None => Icmp::Truncated,
    }
}

/// The flow of a quoted IPv4 packet (VIP to client), turned around.
#[inline(always)]
fn quoted_v4(c: &mut Cursor) -> Option<FlowKey> {
    let h = c.header::<Ipv4Hdr>()?;
    // SAFETY: the whole base header is inside the packet.
    let h = unsafe { &*h };
    let header_len = ((h.vihl & 0x0f) as usize) * 4;
    if header_len < Ipv4Hdr::LEN {
        return None;
    }
    c.skip(header_len - Ipv4Hdr::LEN)?;
    turned_around(c, parse::v4(h.src), parse::v4(h.dst), h.proto)
}

/// The flow of a quoted IPv6 packet (VIP to client), turned around.
#[inline(always)]
fn quoted_v6(c: &mut Cursor) -> Option<FlowKey> {
    let h = c.header::<Ipv6Hdr>()?;
    // SAFETY: the whole header is inside the packet.
    let h = unsafe { &*h };
    turned_around(c, parse::v6(h.src), parse::v6(h.dst), h.next_hdr)
}

/// The client's flow of a quoted packet from `vip` to `client` over
/// `proto`, whose ports follow at the cursor.
#[inline(always)]
fn turned_around(c: &mut Cursor, vip: Addr, client: Addr, proto: u8) -> Option<FlowKey> {
    let ports = c.header::<[u16; 2]>()?;
    // SAFETY: both ports are inside the packet.
    let [vip_port, client_port] = unsafe { *ports };
    Some(FlowKey::new(client, vip, client_port, vip_port, proto))
}
