//! Path MTU for backends reached through a tunnel: a client's packet that
//! would exceed the egress MTU once encapsulated is not sent. The client
//! gets an ICMP fragmentation-needed (IPv4 with DF) or ICMPv6
//! packet-too-big carrying the MTU less the tunnel's overhead, built here
//! over the packet itself and sent back the way it came (XDP_TX), as a
//! router on the path would: from the VIP, quoting the start of the
//! client's packet. An IPv4 packet without DF is dropped (`drop_too_big`):
//! fragmenting is the stack's business, not the datapath's.

use aya_ebpf::{
    helpers::generated::{bpf_csum_diff, bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use balancer_common::{
    budget::ICMP_COST_NS,
    proto,
    stats::Stat,
    tunnel::{
        checksum,
        ether::{self, TAGGED_LEN},
        fold,
    },
};

use crate::{
    flows,
    icmp::{ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED, ICMPV6_PACKET_TOO_BIG},
    maps::ICMP_BUDGET,
};

/// Bytes of the client's packet the message quotes: its IP header (with
/// options, at most 60 bytes) and the start of its transport header, as
/// much as the stack needs to find the connection. A constant, so that
/// the checksum is one helper call of a size the verifier knows.
pub const QUOTE: usize = 128;
/// IPv4 and ICMP headers in front of the quote.
const HEADERS4: usize = 20 + 8;
/// IPv6 and ICMPv6 headers in front of the quote.
const HEADERS6: usize = 40 + 8;
/// IPv4's "don't fragment" flag, as the flags word lies in the packet.
const DF: u16 = 0x4000u16.to_be();
const TTL: u8 = 64;

/// Turns the frame (its IP packet at `L3`, of family `v6`) into the ICMP
/// message that tells its sender the path takes `mtu` bytes at most.
/// Err: the packet is an IPv4 one without DF, an ICMP message (an error
/// is never answered with one), too short to quote, or over this CPU's
/// rate of ICMP messages (`DROP_TOO_BIG`); or the frame cannot be
/// reshaped.
#[inline(always)]
pub fn too_big<const L3: usize>(ctx: &XdpContext, v6: bool, mtu: u16) -> Result<(), Stat> {
    if v6 {
        reply::<L3, HEADERS6>(ctx, mtu)
    } else {
        reply::<L3, HEADERS4>(ctx, mtu)
    }
}

/// [`too_big`] for one family: `HEADERS` is 28 for IPv4, 48 for IPv6.
#[inline(always)]
fn reply<const L3: usize, const HEADERS: usize>(ctx: &XdpContext, mtu: u16) -> Result<(), Stat> {
    let v6 = HEADERS == HEADERS6;
    let start = ctx.data();
    if start + L3 + QUOTE > ctx.data_end() {
        return Err(Stat::DROP_TOO_BIG);
    }
    let words = start as *const u16;
    let ip = (start + L3) as *const u16;
    // The sender's and the receiver's MACs and addresses, swapped below.
    let mut macs = [0u16; 6];
    for (i, word) in macs.iter_mut().enumerate() {
        // SAFETY: the MACs are inside the frame (checked above).
        *word = unsafe { words.add(i).read() };
    }
    // SAFETY: inside the frame (checked above): the tag's TPID and TCI.
    let tag = unsafe { ((start + 12) as *const u32).read_unaligned() };
    // The message is of the packet's family.
    let ether_type = if v6 { ether::IPV6 } else { ether::IPV4 };
    // Source then destination: 4 words of IPv4 at word 6, 16 of IPv6 at 4.
    let mut addrs = [0u16; 16];
    if v6 {
        // SAFETY: the next header (byte 6) is quoted, inside the frame.
        if unsafe { *((start + L3 + 6) as *const u8) } == proto::ICMPV6 {
            return Err(Stat::DROP_TOO_BIG);
        }
        for (i, word) in addrs.iter_mut().enumerate() {
            // SAFETY: the IPv6 addresses (bytes 8 to 40) are quoted, inside
            // the frame.
            *word = unsafe { ip.add(4 + i).read() };
        }
    } else {
        // SAFETY: the IPv4 header's flags word and protocol are quoted.
        let (flags, protocol) = unsafe { (ip.add(3).read(), *((start + L3 + 9) as *const u8)) };
        if flags & DF == 0 || protocol == proto::ICMP {
            return Err(Stat::DROP_TOO_BIG);
        }
        for (i, word) in addrs[..4].iter_mut().enumerate() {
            // SAFETY: the IPv4 addresses (bytes 12 to 20) are quoted.
            *word = unsafe { ip.add(6 + i).read() };
        }
    }
    let Some(bucket) = ICMP_BUDGET.get_ptr_mut(0) else {
        return Err(Stat::DROP_TOO_BIG);
    };
    // SAFETY: this CPU's slot, valid for the whole run; XDP does not
    // preempt itself on a CPU.
    if !unsafe { (*bucket).take(ICMP_COST_NS, flows::now()) } {
        return Err(Stat::DROP_TOO_BIG);
    }
    // SAFETY: plain helper calls; every packet pointer is loaded and
    // checked again after them.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(HEADERS as i32)) } != 0 {
        return Err(Stat::DROP_ENCAP);
    }
    let len = (ctx.data_end() - ctx.data()) as i32;
    let keep = (L3 + HEADERS + QUOTE) as i32;
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, keep - len) } != 0 {
        return Err(Stat::DROP_ENCAP);
    }
    let start = ctx.data();
    if start + L3 + HEADERS + QUOTE > ctx.data_end() {
        return Err(Stat::DROP_ENCAP);
    }
    let out = start as *mut u16;
    for i in 0..3 {
        // SAFETY: the Ethernet header is inside the frame (checked above).
        // The sender's MAC becomes the destination and ours the source.
        unsafe {
            out.add(i).write_volatile(macs[3 + i]);
            out.add(3 + i).write_volatile(macs[i]);
        }
    }
    // SAFETY: as above.
    unsafe {
        if L3 == TAGGED_LEN {
            ((start + 12) as *mut u32).write_unaligned(tag);
        }
        ((start + L3 - 2) as *mut u16).write_volatile(ether_type);
    }
    let at = (start + L3) as *mut u16;
    let message = (8 + QUOTE) as u16;
    let mut sum: u32;
    if v6 {
        // IPv6: version 6, no traffic class or label, ICMPv6, from the
        // packet's destination (the VIP) to its source.
        let mut h = [0u16; 24];
        h[0] = 0x6000u16.to_be();
        h[2] = message.to_be();
        h[3] = u16::from_ne_bytes([58, TTL]);
        let (src, dst) = addrs.split_at(8);
        for (i, (s, d)) in src.iter().zip(dst).enumerate() {
            h[4 + i] = *d;
            h[12 + i] = *s;
        }
        // ICMPv6 packet too big: type 2, code 0, the MTU in 32 bits.
        h[20] = u16::from_ne_bytes([ICMPV6_PACKET_TOO_BIG, 0]);
        h[23] = mtu.to_be();
        // The pseudo-header: addresses, length, next header.
        sum = message.to_be() as u32 + u16::from_ne_bytes([0, 58]) as u32;
        for word in &h[4..20] {
            sum += *word as u32;
        }
        for (i, word) in h.iter().enumerate() {
            // SAFETY: the 48 bytes of headers are inside the frame.
            unsafe { at.add(i).write_volatile(*word) };
        }
    } else {
        let mut h = [0u16; 14];
        h[0] = u16::from_ne_bytes([0x45, 0]);
        h[1] = ((20 + 8 + QUOTE) as u16).to_be();
        h[4] = u16::from_ne_bytes([TTL, 1]);
        h[6] = addrs[2];
        h[7] = addrs[3];
        h[8] = addrs[0];
        h[9] = addrs[1];
        h[5] = checksum(&h[..10]);
        // ICMP destination unreachable, fragmentation needed: type 3,
        // code 4, 16 unused bits, the next hop's MTU.
        h[10] = u16::from_ne_bytes([ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED]);
        h[13] = mtu.to_be();
        sum = 0;
        for (i, word) in h.iter().enumerate() {
            // SAFETY: the 28 bytes of headers are inside the frame.
            unsafe { at.add(i).write_volatile(*word) };
        }
    }
    let icmp = start + L3 + HEADERS - 8;
    // SAFETY: the ICMP message (8 bytes of header and the quote) is inside
    // the frame (checked above); the helper only reads it.
    let got = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            icmp as *mut u32,
            (8 + QUOTE) as u32,
            sum,
        )
    };
    if got < 0 {
        return Err(Stat::DROP_ENCAP);
    }
    let check = !fold(got as u32);
    // SAFETY: the checksum field is inside the ICMP header.
    unsafe { ((icmp + 2) as *mut u16).write_volatile(check) };
    Ok(())
}
