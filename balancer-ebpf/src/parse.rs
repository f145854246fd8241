//! Bounds-checked packet parsing.
//!
//! Every read of packet memory goes through [`Cursor::header`], which checks
//! the whole header against the end once, before any field is read. Nothing
//! here reads past `data_end` or past the end the IP header announces.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use balancer_common::{Addr, addr_from_v4, proto, stats::Stat};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::{Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
    vlan::VlanHdr,
};

/// A read position inside the packet, never past `end` (the frame's end,
/// which the verifier knows) nor `limit` (the end of the IP packet its
/// header announces, once known; Ethernet padding lies beyond it).
#[derive(Clone, Copy)]
pub struct Cursor {
    pub pos: usize,
    pub end: usize,
    pub limit: usize,
}

impl Cursor {
    /// A cursor at the first byte of the frame.
    #[inline(always)]
    pub fn new(ctx: &XdpContext) -> Self {
        Cursor {
            pos: ctx.data(),
            end: ctx.data_end(),
            limit: ctx.data_end(),
        }
    }

    /// Returns a pointer to a `T` at the cursor and moves past it, or `None`
    /// when the bytes left cannot hold it.
    #[inline(always)]
    pub fn header<T>(&mut self) -> Option<*const T> {
        let start = self.pos;
        let next = start + size_of::<T>();
        if next > self.end || next > self.limit {
            return None;
        }
        self.pos = next;
        Some(start as *const T)
    }

    /// Moves past `len` bytes, or `None` when fewer are left.
    #[inline(always)]
    pub fn skip(&mut self, len: usize) -> Option<()> {
        if self.pos + len > self.end || self.pos + len > self.limit {
            return None;
        }
        self.pos += len;
        Some(())
    }
}

/// Network protocol carried by an Ethernet frame.
pub enum L3 {
    Ipv4,
    Ipv6,
    Other,
}

/// Parses the Ethernet header and at most one 802.1Q tag, leaving the
/// cursor on the network header. `None`: the frame is too short.
#[inline(always)]
pub fn ethernet(c: &mut Cursor) -> Option<L3> {
    let eth = c.header::<EthHdr>()?;
    // SAFETY: `header` checked that the whole header is inside the packet.
    let mut ether_type = unsafe { (*eth).ether_type };
    if ether_type == EtherType::Ieee8021q as u16 {
        let vlan = c.header::<VlanHdr>()?;
        // SAFETY: as above.
        ether_type = unsafe { (*vlan).ether_type };
    }
    Some(if ether_type == EtherType::Ipv4 as u16 {
        L3::Ipv4
    } else if ether_type == EtherType::Ipv6 as u16 {
        L3::Ipv6
    } else {
        L3::Other
    })
}

/// The addresses and transport protocol of an IP packet.
#[derive(Clone, Copy)]
pub struct Ip {
    pub src: Addr,
    pub dst: Addr,
    pub proto: u8,
    /// An IPv4 fragment or an IPv6 packet with a fragment header that is
    /// not a whole datagram.
    pub fragment: bool,
}

/// What is wrong with an IP packet whose addresses could be read.
pub struct BadIp {
    pub ip: Ip,
    pub reason: Stat,
}

/// Outcome of parsing the network header.
pub enum IpParse {
    /// Valid; the cursor is on the transport header and its `end` is the
    /// end of the IP packet.
    Ok(Ip),
    /// The addresses are readable but the packet is not valid.
    Bad(BadIp),
    /// Too short to read the addresses.
    Unreadable,
}

const IPV4_MF: u16 = 0x2000;
const IPV4_OFFSET: u16 = 0x1fff;
const IPV6_FRAGMENT: u8 = 44;

/// The IPv6 fragment extension header.
#[repr(C)]
struct Ipv6FragHdr {
    next_hdr: u8,
    _reserved: u8,
    /// Offset (13 bits), 2 reserved bits, M flag; network byte order.
    offset_flags: [u8; 2],
    _id: [u8; 4],
}

/// Parses an IPv4 header, honouring IHL (options are skipped).
#[inline(always)]
pub fn ipv4(c: &mut Cursor) -> IpParse {
    let start = c.pos;
    let Some(h) = c.header::<Ipv4Hdr>() else {
        return IpParse::Unreadable;
    };
    // SAFETY: the whole base header is inside the packet.
    let h = unsafe { &*h };
    let frags = u16::from_be_bytes(h.frags);
    let ip = Ip {
        src: addr_from_v4(h.src_addr),
        dst: addr_from_v4(h.dst_addr),
        proto: h.proto,
        fragment: frags & (IPV4_MF | IPV4_OFFSET) != 0,
    };
    let header_len = ((h.vihl & 0x0f) as usize) * 4;
    let total_len = u16::from_be_bytes(h.tot_len) as usize;
    if h.vihl >> 4 != 4 || header_len < Ipv4Hdr::LEN || total_len < header_len {
        return IpParse::Bad(BadIp {
            ip,
            reason: Stat::DROP_MALFORMED,
        });
    }
    if start + total_len > c.end || c.skip(header_len - Ipv4Hdr::LEN).is_none() {
        return IpParse::Bad(BadIp {
            ip,
            reason: Stat::DROP_TRUNCATED,
        });
    }
    // Ethernet padding after the datagram is not part of it.
    c.limit = start + total_len;
    IpParse::Ok(ip)
}

/// Parses an IPv6 header and, if present right after it, a fragment header.
#[inline(always)]
pub fn ipv6(c: &mut Cursor) -> IpParse {
    let start = c.pos;
    let Some(h) = c.header::<Ipv6Hdr>() else {
        return IpParse::Unreadable;
    };
    // SAFETY: the whole base header is inside the packet.
    let h = unsafe { &*h };
    let mut ip = Ip {
        src: h.src_addr,
        dst: h.dst_addr,
        proto: h.next_hdr,
        fragment: false,
    };
    if h.vcf[0] >> 4 != 6 {
        return IpParse::Bad(BadIp {
            ip,
            reason: Stat::DROP_MALFORMED,
        });
    }
    let total_len = Ipv6Hdr::LEN + u16::from_be_bytes(h.payload_len) as usize;
    if start + total_len > c.end {
        return IpParse::Bad(BadIp {
            ip,
            reason: Stat::DROP_TRUNCATED,
        });
    }
    c.limit = start + total_len;
    if ip.proto == IPV6_FRAGMENT {
        let Some(f) = c.header::<Ipv6FragHdr>() else {
            return IpParse::Bad(BadIp {
                ip,
                reason: Stat::DROP_TRUNCATED,
            });
        };
        // SAFETY: the whole fragment header is inside the packet.
        let f = unsafe { &*f };
        ip.proto = f.next_hdr;
        // Offset in the top 13 bits, M flag in the lowest bit: an atomic
        // fragment (offset 0, M clear) is a whole datagram.
        ip.fragment = u16::from_be_bytes(f.offset_flags) & 0xfff9 != 0;
    }
    IpParse::Ok(ip)
}

/// Ports (network byte order) and TCP SYN of a transport header.
#[derive(Clone, Copy)]
pub struct Ports {
    pub src: u16,
    pub dst: u16,
}

/// Reads the ports of a TCP or UDP header. `Err` carries the drop reason.
#[inline(always)]
pub fn ports(c: &mut Cursor, l4: u8) -> Result<Ports, Stat> {
    if l4 == proto::TCP {
        let t = c.header::<TcpHdr>().ok_or(Stat::DROP_TRUNCATED)?;
        // SAFETY: the whole base header is inside the packet.
        let t = unsafe { &*t };
        if t.doff() < 5 {
            return Err(Stat::DROP_MALFORMED);
        }
        Ok(Ports {
            src: u16::from_ne_bytes(t.source),
            dst: u16::from_ne_bytes(t.dest),
        })
    } else {
        let u = c.header::<UdpHdr>().ok_or(Stat::DROP_TRUNCATED)?;
        // SAFETY: the whole header is inside the packet.
        let u = unsafe { &*u };
        Ok(Ports {
            src: u16::from_ne_bytes(u.src),
            dst: u16::from_ne_bytes(u.dst),
        })
    }
}

/// The first 8 bytes of an ICMP or ICMPv6 message (same layout).
#[repr(C)]
pub struct IcmpHdr {
    pub kind: u8,
    pub code: u8,
    _check: [u8; 2],
    _rest: [u8; 4],
}
