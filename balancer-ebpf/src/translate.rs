//! Rewriting a packet's addresses and ports for NAT, the IP, TCP and UDP
//! checksums updated in place from what changed (RFC 1624), never summed
//! over the payload. UDP over IPv4 without a checksum (0) keeps none; a
//! UDP checksum that comes out 0 is written as its other form, 0xffff.
//! An ICMP error about a NAT connection is rewritten likewise ([`icmp`]):
//! its outer addresses and the packet it quotes, whose checksums the ICMP
//! checksum covers.

use aya_ebpf::programs::XdpContext;
use balancer_common::{flow::FlowKey, nat::csum, proto, stats::Stat};

/// Where a packet's headers start, as offsets from the frame's first byte
/// (so that they cross into a BPF function as plain numbers), and what
/// they are.
#[derive(Clone, Copy)]
pub struct Headers {
    /// The IP header's first byte.
    pub l3: usize,
    /// The transport header's first byte.
    pub l4: usize,
    pub v6: bool,
    /// TCP or UDP.
    pub proto: u8,
}

/// The farthest a transport header starts: 18 bytes of Ethernet and a
/// VLAN tag, 60 of IPv4 header, or 40 of IPv6 and 8 of fragment header.
const MAX_L4: usize = 18 + 60;

impl Headers {
    /// The headers' first bytes in `ctx`'s frame, bounded for the
    /// verifier (an offset beyond [`MAX_L4`] is no parsed packet's).
    #[inline(always)]
    fn at(&self, ctx: &XdpContext) -> Result<(usize, usize), Stat> {
        if self.l3 > MAX_L4 || self.l4 > MAX_L4 {
            return Err(Stat::DROP_TRUNCATED);
        }
        Ok((ctx.data() + self.l3, ctx.data() + self.l4))
    }

    /// A TCP segment's sequence and acknowledgement numbers (host byte
    /// order).
    #[inline(always)]
    pub fn tcp_numbers(&self, ctx: &XdpContext) -> Result<(u32, u32), Stat> {
        let (_, l4) = self.at(ctx)?;
        if l4 + 20 > ctx.data_end() {
            return Err(Stat::DROP_TRUNCATED);
        }
        let words = l4 as *const u16;
        // SAFETY: inside the TCP header (checked above), at even offsets.
        let (seq, ack) = unsafe {
            (
                [words.add(2).read(), words.add(3).read()],
                [words.add(4).read(), words.add(5).read()],
            )
        };
        let number = |w: [u16; 2]| u32::from_be((w[0] as u32) | ((w[1] as u32) << 16));
        Ok((number(seq), number(ack)))
    }
}

/// Offsets in 16-bit words: of the IPv4 header's checksum, of its source
/// (the destination follows), of IPv6's source (likewise).
const IPV4_CHECK: usize = 5;
const IPV4_SRC: usize = 6;
const IPV6_SRC: usize = 4;
/// TCP's and UDP's checksum fields, in 16-bit words.
const TCP_CHECK: usize = 8;
const UDP_CHECK: usize = 3;

/// Rewrites the packet described by `from` (its addresses and ports, as
/// parsed) into `to`: addresses in the IP header, ports in the transport
/// header, and the checksums that cover them.
#[inline(always)]
pub fn rewrite(ctx: &XdpContext, h: &Headers, from: &FlowKey, to: &FlowKey) -> Result<(), Stat> {
    let end = ctx.data_end();
    let (l3, l4) = h.at(ctx)?;
    let (ip_len, l4_len) = (
        if h.v6 { 40 } else { 20 },
        if h.proto == proto::TCP { 20 } else { 8 },
    );
    // Unreachable for a parsed packet, but the verifier wants the checks
    // next to the writes.
    if l3 + ip_len > end || l4 + l4_len > end {
        return Err(Stat::DROP_TRUNCATED);
    }
    let mut sum = csum::addr(0, &from.src, &to.src, h.v6);
    sum = csum::addr(sum, &from.dst, &to.dst, h.v6);
    let ip = l3 as *mut u16;
    // SAFETY (every access below): inside the headers checked above, at
    // even offsets of headers that start at even offsets (see `parse`).
    unsafe {
        if h.v6 {
            write_addr(ip.add(IPV6_SRC), &to.src, true);
            write_addr(ip.add(IPV6_SRC + 8), &to.dst, true);
        } else {
            let check = ip.add(IPV4_CHECK);
            check.write(csum::apply(check.read(), sum));
            write_addr(ip.add(IPV4_SRC), &to.src, false);
            write_addr(ip.add(IPV4_SRC + 2), &to.dst, false);
        }
        let l4 = l4 as *mut u16;
        l4.write(to.src_port);
        l4.add(1).write(to.dst_port);
        sum = csum::word(sum, from.src_port, to.src_port);
        sum = csum::word(sum, from.dst_port, to.dst_port);
        if h.proto == proto::TCP {
            let check = l4.add(TCP_CHECK);
            check.write(csum::apply(check.read(), sum));
        } else {
            let check = l4.add(UDP_CHECK);
            let old = check.read();
            // UDP over IPv4 may go without a checksum; IPv6 never does.
            if old != 0 || h.v6 {
                let new = csum::apply(old, sum);
                check.write(if new == 0 { 0xffff } else { new });
            }
        }
    }
    Ok(())
}

/// Writes address `addr` at `at`: its last word for IPv4, all of it for
/// IPv6, as 16-bit words in the order they lie in memory.
///
/// # Safety
///
/// `at` must point at 4 (IPv4) or 16 (IPv6) writable bytes of the packet,
/// at an even address.
#[inline(always)]
unsafe fn write_addr(at: *mut u16, addr: &balancer_common::Addr, v6: bool) {
    // SAFETY: the caller's.
    unsafe {
        if v6 {
            for (i, word) in addr.iter().enumerate() {
                at.add(2 * i).write(*word as u16);
                at.add(2 * i + 1).write((*word >> 16) as u16);
            }
        } else {
            at.write(addr[3] as u16);
            at.add(1).write((addr[3] >> 16) as u16);
        }
    }
}

/// Where an ICMP error's headers start, as offsets from the frame's first
/// byte (see [`Headers`]), and what they are.
#[derive(Clone, Copy)]
pub struct Quote {
    /// The outer IP header's first byte.
    pub l3: usize,
    /// The ICMP header's (the quoted IP header follows its 8 bytes).
    pub icmp: usize,
    /// The quoted transport header's.
    pub l4: usize,
    /// The end of the quote: the outer IP packet's.
    pub end: usize,
    pub v6: bool,
    /// The quoted protocol: TCP or UDP.
    pub proto: u8,
}

/// The farthest a quoted transport header starts: an ICMP header at
/// [`MAX_L4`], its 8 bytes, 60 of quoted IPv4 header.
const MAX_QUOTED_L4: usize = MAX_L4 + 8 + 60;

/// Rewrites the ICMP error `q` describes, whose quoted packet becomes
/// `to` (addresses and ports, in the quoted packet's direction): its
/// addresses in the quoted IP header, its ports, the quoted IPv4 header's
/// checksum and the quoted transport checksum when the quote holds it
/// (TCP's lies past the 8 bytes every quote has); the outer destination
/// becomes the quoted packet's new source, which the error goes back to,
/// and with `outer_src` the outer source its new destination. The ICMP
/// checksum follows every word that changed in the message, and for
/// ICMPv6 the outer addresses of its pseudo-header; the outer IPv4
/// header's checksum, the outer addresses.
#[inline(always)]
pub fn icmp(ctx: &XdpContext, q: &Quote, to: &FlowKey, outer_src: bool) -> Result<(), Stat> {
    if q.l3 > MAX_L4 || q.icmp > MAX_L4 || q.l4 > MAX_QUOTED_L4 {
        return Err(Stat::DROP_TRUNCATED);
    }
    let (data, end) = (ctx.data(), ctx.data_end());
    let (l3, icmp, l4) = (data + q.l3, data + q.icmp, data + q.l4);
    let ip_len = if q.v6 { 40 } else { 20 };
    // Unreachable for a parsed message, but the verifier wants the checks
    // next to the writes.
    if l3 + ip_len > end || icmp + 8 + ip_len > end || l4 + 8 > end {
        return Err(Stat::DROP_TRUNCATED);
    }
    let (src, dst) = if q.v6 {
        (IPV6_SRC, IPV6_SRC + 8)
    } else {
        (IPV4_SRC, IPV4_SRC + 2)
    };
    // SAFETY (every access below): inside the headers checked above, at
    // even offsets of headers that start at even offsets (see `parse`).
    unsafe {
        let quoted = (icmp + 8) as *mut u16;
        let mut addrs = swap_addr(quoted.add(src), &to.src, q.v6, 0);
        addrs = swap_addr(quoted.add(dst), &to.dst, q.v6, addrs);
        // What the ICMP checksum sees change.
        let mut message = addrs;
        if !q.v6 {
            message = swap_check(quoted.add(IPV4_CHECK), addrs, message);
        }
        let ports = l4 as *mut u16;
        let mut moved = swap_word(ports, to.src_port, 0);
        moved = swap_word(ports.add(1), to.dst_port, moved);
        // What the quoted transport checksum covers: its pseudo-header's
        // addresses and the ports.
        let pseudo = addrs + moved;
        message += moved;
        if q.proto == proto::TCP {
            if l4 + 2 * TCP_CHECK + 2 <= end && q.l4 + 2 * TCP_CHECK + 2 <= q.end {
                message = swap_check(ports.add(TCP_CHECK), pseudo, message);
            }
        } else {
            let check = ports.add(UDP_CHECK);
            let old = check.read();
            if old != 0 || q.v6 {
                let new = csum::apply(old, pseudo);
                let new = if new == 0 { 0xffff } else { new };
                check.write(new);
                message = csum::word(message, old, new);
            }
        }
        let ip = l3 as *mut u16;
        let mut outer = 0;
        if outer_src {
            outer = swap_addr(ip.add(src), &to.dst, q.v6, outer);
        }
        outer = swap_addr(ip.add(dst), &to.src, q.v6, outer);
        if q.v6 {
            message += outer;
        } else {
            let check = ip.add(IPV4_CHECK);
            check.write(csum::apply(check.read(), outer));
        }
        let check = (icmp as *mut u16).add(1);
        check.write(csum::apply(check.read(), message));
    }
    Ok(())
}

/// Writes `new` over the word at `at`; returns `sum` with the change
/// added.
///
/// # Safety
///
/// `at` must point at 2 writable bytes of the packet, at an even address.
#[inline(always)]
unsafe fn swap_word(at: *mut u16, new: u16, sum: u32) -> u32 {
    // SAFETY: the caller's.
    let old = unsafe { at.read() };
    // SAFETY: as above.
    unsafe { at.write(new) };
    csum::word(sum, old, new)
}

/// Writes address `addr` at `at` as [`write_addr`] does; returns `sum`
/// with the change added (folded for IPv6, as `csum::addr`).
///
/// # Safety
///
/// As [`write_addr`].
#[inline(always)]
unsafe fn swap_addr(at: *mut u16, addr: &balancer_common::Addr, v6: bool, sum: u32) -> u32 {
    let mut sum = sum;
    // SAFETY: the caller's.
    unsafe {
        if v6 {
            for (i, word) in addr.iter().enumerate() {
                sum = swap_word(at.add(2 * i), *word as u16, sum);
                sum = swap_word(at.add(2 * i + 1), (*word >> 16) as u16, sum);
            }
            sum = (sum & 0xffff) + (sum >> 16);
        } else {
            sum = swap_word(at, addr[3] as u16, sum);
            sum = swap_word(at.add(1), (addr[3] >> 16) as u16, sum);
        }
    }
    sum
}

/// Updates the checksum at `at` by changes `changes`; returns `sum` with
/// the checksum's own change added.
///
/// # Safety
///
/// As [`swap_word`].
#[inline(always)]
unsafe fn swap_check(at: *mut u16, changes: u32, sum: u32) -> u32 {
    // SAFETY: the caller's.
    let old = unsafe { at.read() };
    // SAFETY: as above.
    unsafe { swap_word(at, csum::apply(old, changes), sum) }
}
