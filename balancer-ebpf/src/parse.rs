//! Bounds-checked packet parsing.
//!
//! Every read of packet memory goes through [`Cursor::header`], which checks
//! the whole header against the end once, before any field is read. Nothing
//! here reads past `data_end` or past the end the IP header announces.
//!
//! The IP and transport headers are read through the structs below, whose
//! fields are 16-bit words: BPF loads an aligned word in one instruction
//! where a byte array costs one per byte. Frames start at an even address
//! (drivers and the kernel place them after an aligned headroom) and every
//! header here starts at an even offset (14 or 18 bytes of Ethernet, IP
//! headers that are multiples of 4 bytes, 8-byte extension headers), so
//! the words are aligned. Multi-byte fields stay in network byte order.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use balancer_common::{Addr, addr_from_v4_word, proto, stats::Stat};
use network_types::{
    eth::{EthHdr, EtherType},
    vlan::VlanHdr,
};

/// The IPv4 header without options.
#[repr(C)]
pub struct Ipv4Hdr {
    pub vihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frags: u16,
    pub ttl: u8,
    pub proto: u8,
    pub check: u16,
    pub src: [u16; 2],
    pub dst: [u16; 2],
}

impl Ipv4Hdr {
    pub const LEN: usize = size_of::<Ipv4Hdr>();
}

/// The IPv6 header.
#[repr(C)]
pub struct Ipv6Hdr {
    pub vcf: [u16; 2],
    pub payload_len: u16,
    pub next_hdr: u8,
    pub hop_limit: u8,
    pub src: [u16; 8],
    pub dst: [u16; 8],
}

impl Ipv6Hdr {
    pub const LEN: usize = size_of::<Ipv6Hdr>();
}

/// The TCP header without options.
#[repr(C)]
struct TcpHdr {
    src: u16,
    dst: u16,
    seq: [u16; 2],
    ack: [u16; 2],
    /// Data offset in the high nibble of the first byte, then the flags.
    off_flags: u16,
    window: u16,
    check: u16,
    urgent: u16,
}

/// The UDP header.
#[repr(C)]
struct UdpHdr {
    src: u16,
    dst: u16,
    len: u16,
    check: u16,
}

/// Two 16-bit words of an address, as they lie in the packet, into the
/// 32-bit word the maps hold.
#[inline(always)]
pub const fn word(pair: [u16; 2]) -> u32 {
    (pair[0] as u32) | ((pair[1] as u32) << 16)
}

/// An IPv4 address as it lies in the packet.
#[inline(always)]
pub const fn v4(pair: [u16; 2]) -> Addr {
    addr_from_v4_word(word(pair))
}

/// An IPv6 address as it lies in the packet.
#[inline(always)]
pub const fn v6(w: [u16; 8]) -> Addr {
    [
        word([w[0], w[1]]),
        word([w[2], w[3]]),
        word([w[4], w[5]]),
        word([w[6], w[7]]),
    ]
}

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
    /// The IP header's first byte.
    pub at: usize,
    pub src: Addr,
    pub dst: Addr,
    pub proto: u8,
    /// An IPv4 fragment or an IPv6 packet with a fragment header that is
    /// not a whole datagram: which datagram, and whether it is its first
    /// fragment (offset 0, the one with the transport header).
    pub fragment: Option<Fragment>,
}

/// What a fragment says of itself.
#[derive(Clone, Copy)]
pub struct Fragment {
    /// The datagram's identification as it lies in the packet (IPv4's 16
    /// bits in the low half).
    pub id: u32,
    /// Offset 0: the fragment that carries the transport header.
    pub first: bool,
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
    offset_flags: u16,
    id: [u16; 2],
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
    let frags = u16::from_be(h.frags);
    let ip = Ip {
        at: start,
        src: v4(h.src),
        dst: v4(h.dst),
        proto: h.proto,
        fragment: (frags & (IPV4_MF | IPV4_OFFSET) != 0).then_some(Fragment {
            id: h.id as u32,
            first: frags & IPV4_OFFSET == 0,
        }),
    };
    let header_len = ((h.vihl & 0x0f) as usize) * 4;
    let total_len = u16::from_be(h.tot_len) as usize;
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
        at: start,
        src: v6(h.src),
        dst: v6(h.dst),
        proto: h.next_hdr,
        fragment: None,
    };
    // The version is the high nibble of the first byte.
    if (h.vcf[0] & 0xff) >> 4 != 6 {
        return IpParse::Bad(BadIp {
            ip,
            reason: Stat::DROP_MALFORMED,
        });
    }
    let total_len = Ipv6Hdr::LEN + u16::from_be(h.payload_len) as usize;
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
        let offset_flags = u16::from_be(f.offset_flags);
        ip.fragment = (offset_flags & 0xfff9 != 0).then_some(Fragment {
            id: word(f.id),
            first: offset_flags & 0xfff8 == 0,
        });
    }
    IpParse::Ok(ip)
}

/// Ports (network byte order) of a transport header, its TCP flags, and
/// where it starts.
#[derive(Clone, Copy)]
pub struct Ports {
    pub src: u16,
    pub dst: u16,
    /// TCP SYN: the packet starts a connection, unless the connection
    /// table holds its flow as live.
    pub syn: bool,
    /// TCP FIN or RST: the sender ends the flow.
    pub end: bool,
    /// TCP's flags byte (0 for UDP).
    pub flags: u8,
    /// The transport header's first byte.
    pub at: usize,
}

/// TCP FIN, in the flags byte (the high byte of `off_flags` as loaded).
const TCP_FIN: u16 = 0x01 << 8;
/// TCP SYN, likewise.
const TCP_SYN: u16 = 0x02 << 8;
/// TCP RST, likewise.
const TCP_RST: u16 = 0x04 << 8;

/// Which combinations of FIN, SYN, RST and ACK a client sends to a
/// server, as a bit set indexed by those four flags (FIN the lowest bit,
/// then SYN, RST, ACK): SYN, ACK, FIN+ACK, RST and RST+ACK. PSH, URG and
/// the ECN flags do not matter. Everything else (no flag, SYN with
/// anything but itself, FIN with RST, FIN without ACK) is a scan or an
/// attack, as conntrack's table of valid flags says too.
const TCP_CLIENT_FLAGS: u16 = 1 << 0b0010 | 1 << 0b1000 | 1 << 0b1001 | 1 << 0b0100 | 1 << 0b1100;
/// Likewise for what a server sends back: SYN+ACK in place of SYN.
const TCP_SERVER_FLAGS: u16 = 1 << 0b1010 | 1 << 0b1000 | 1 << 0b1001 | 1 << 0b0100 | 1 << 0b1100;

/// Whether TCP flags byte `flags` is in `valid` (one of the sets above):
/// one table lookup, no branch per combination.
#[inline(always)]
fn tcp_flags_in(flags: u8, valid: u16) -> bool {
    let index = (flags & 0x07) | ((flags & 0x10) >> 1);
    valid >> index & 1 != 0
}

impl Ports {
    /// Whether the TCP flags are a combination a client sends (always
    /// for UDP); Err([`Stat::DROP_TCP_FLAGS`]) otherwise.
    #[inline(always)]
    pub fn client_flags(&self, l4: u8) -> Result<(), Stat> {
        if l4 == proto::TCP && !tcp_flags_in(self.flags, TCP_CLIENT_FLAGS) {
            return Err(Stat::DROP_TCP_FLAGS);
        }
        Ok(())
    }

    /// Whether the TCP flags are a combination a server sends (always for
    /// UDP).
    #[inline(always)]
    pub fn server_flags(&self, l4: u8) -> bool {
        l4 != proto::TCP || tcp_flags_in(self.flags, TCP_SERVER_FLAGS)
    }
}

/// Reads the ports of a TCP or UDP header and checks the header against
/// the packet: a TCP data offset within the packet, a UDP length that is
/// the datagram's (for a first fragment, a datagram longer than the
/// fragment). `Err` carries the drop reason. TCP's flags are the caller's
/// to check ([`Ports::client_flags`], [`Ports::server_flags`]), as which
/// are valid depends on who sent them.
#[inline(always)]
pub fn ports(c: &mut Cursor, l4: u8, first_fragment: bool) -> Result<Ports, Stat> {
    let start = c.pos;
    // The IP packet's end: the cursor's limit never exceeds the frame's.
    let len = c.limit - start;
    if l4 == proto::TCP {
        let t = c.header::<TcpHdr>().ok_or(Stat::DROP_TRUNCATED)?;
        // SAFETY: the whole base header is inside the packet.
        let t = unsafe { &*t };
        // The data offset, in 32-bit words, is the high nibble of the
        // first byte.
        let words = ((t.off_flags & 0xf0) >> 4) as usize;
        if words < 5 || words * 4 > len {
            return Err(Stat::DROP_TCP_OFFSET);
        }
        Ok(Ports {
            src: t.src,
            dst: t.dst,
            syn: t.off_flags & TCP_SYN != 0,
            end: t.off_flags & (TCP_FIN | TCP_RST) != 0,
            flags: (t.off_flags >> 8) as u8,
            at: start,
        })
    } else {
        let u = c.header::<UdpHdr>().ok_or(Stat::DROP_TRUNCATED)?;
        // SAFETY: the whole header is inside the packet.
        let u = unsafe { &*u };
        // A whole datagram is the IP payload; a first fragment carries
        // only the start of a longer one.
        let datagram = u16::from_be(u.len) as usize;
        let fits = if first_fragment {
            datagram > len
        } else {
            datagram == len
        };
        if !fits {
            return Err(Stat::DROP_UDP_LENGTH);
        }
        Ok(Ports {
            src: u.src,
            dst: u.dst,
            syn: false,
            end: false,
            flags: 0,
            at: start,
        })
    }
}

/// The first 8 bytes of an ICMP or ICMPv6 message (same layout).
#[repr(C)]
pub struct IcmpHdr {
    pub kind: u8,
    pub code: u8,
    _check: u16,
    _rest: [u16; 2],
}
