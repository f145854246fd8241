//! ICMP errors about the balancer's flows.
//!
//! A router that cannot forward a backend's reply (source: the VIP) sends
//! "fragmentation needed" (ICMP) or "packet too big" (ICMPv6) to the VIP.
//! The message quotes the reply's headers; the flow they describe, seen
//! from the client, picks the backend that sent the reply, and the message
//! goes there. For NAT connections, every error either way is translated
//! ([`crate::nat_icmp`]): the quoted packet, turned around, is the flow
//! the connection's tables hold.

use balancer_common::{Addr, flow::FlowKey, proto};

use crate::parse::{self, Cursor, IcmpHdr, Ipv4Hdr, Ipv6Hdr};

/// ICMP's destination unreachable, its code fragmentation needed, and
/// ICMPv6's packet too big: the path-MTU errors, those passed on to a
/// flow's backend and those the datapath builds (`pmtu`).
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_FRAG_NEEDED: u8 = 4;
pub const ICMPV6_PACKET_TOO_BIG: u8 = 2;
/// The other errors about a packet: ICMP's time exceeded, ICMPv6's
/// destination unreachable and time exceeded.
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMPV6_DEST_UNREACH: u8 = 1;
pub const ICMPV6_TIME_EXCEEDED: u8 = 3;

/// What an ICMP message is.
pub enum Icmp {
    /// An error (destination unreachable, packet too big, time exceeded)
    /// quoting a TCP or UDP packet.
    Error(Quoted),
    /// Anything else (echo, other errors, other quoted protocols): not
    /// the balancer's business.
    Other,
    /// An error too short to hold what it must quote: the IP header and 8
    /// bytes of the transport header.
    Truncated,
}

/// The packet an ICMP error quotes.
pub struct Quoted {
    /// Its flow turned around: for a reply the balancer sent, the flow it
    /// answers (a client's to a VIP, or a NAT connection's reply from its
    /// backend to its source).
    pub key: FlowKey,
    /// Whether the error is a path-MTU one.
    pub pmtu: bool,
    /// Where the ICMP header starts, the quoted transport header starts,
    /// and the quote ends (the end of the IP packet), as packet positions.
    pub icmp: usize,
    pub l4: usize,
    pub end: usize,
}

/// Reads an ICMP (`v6` false) or ICMPv6 message at the cursor.
#[inline(always)]
pub fn parse(c: &mut Cursor, v6: bool) -> Icmp {
    let icmp = c.pos;
    let Some(h) = c.header::<IcmpHdr>() else {
        return Icmp::Truncated;
    };
    // SAFETY: the whole header is inside the packet.
    let h = unsafe { &*h };
    let (pmtu, error) = if v6 {
        (
            h.kind == ICMPV6_PACKET_TOO_BIG,
            h.kind == ICMPV6_DEST_UNREACH || h.kind == ICMPV6_TIME_EXCEEDED,
        )
    } else {
        (
            h.kind == ICMP_DEST_UNREACH && h.code == ICMP_FRAG_NEEDED,
            h.kind == ICMP_DEST_UNREACH || h.kind == ICMP_TIME_EXCEEDED,
        )
    };
    if !pmtu && !error {
        return Icmp::Other;
    }
    let quoted = if v6 { quoted_v6(c) } else { quoted_v4(c) };
    match quoted {
        Some(key) if key.proto == proto::TCP || key.proto == proto::UDP => Icmp::Error(Quoted {
            key,
            pmtu,
            icmp,
            // The cursor is past the 8 bytes of the quoted transport
            // header.
            l4: c.pos - 8,
            end: c.limit,
        }),
        Some(_) => Icmp::Other,
        None => Icmp::Truncated,
    }
}

/// The flow of a quoted IPv4 packet, turned around.
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

/// The flow of a quoted IPv6 packet, turned around.
#[inline(always)]
fn quoted_v6(c: &mut Cursor) -> Option<FlowKey> {
    let h = c.header::<Ipv6Hdr>()?;
    // SAFETY: the whole header is inside the packet.
    let h = unsafe { &*h };
    turned_around(c, parse::v6(h.src), parse::v6(h.dst), h.next_hdr)
}

/// The flow answering a quoted packet from `src` to `dst` over `proto`,
/// whose transport header follows at the cursor (its first 8 bytes, the
/// ports among them, must be there).
#[inline(always)]
fn turned_around(c: &mut Cursor, src: Addr, dst: Addr, proto: u8) -> Option<FlowKey> {
    let l4 = c.header::<[u16; 4]>()?;
    // SAFETY: the first 8 bytes are inside the packet.
    let [src_port, dst_port, ..] = unsafe { *l4 };
    Some(FlowKey::new(dst, src, dst_port, src_port, proto))
}
