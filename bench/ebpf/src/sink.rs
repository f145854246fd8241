//! The benchmarks' counting sink, attached to the receiving end of a veth:
//! counts the frames sent to one TCP or UDP destination port (or every
//! frame; IPv4 in IPv4 by its inner port) in a per-CPU array and drops them, so that a load test measures
//! what arrived without the network stack's cost. Every other frame passes,
//! so ARP, neighbour discovery and other traffic on the interface keep
//! working.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

mod runtime;

use aya_ebpf::{
    bindings::xdp_action,
    btf_maps::{Array, PerCpuArray},
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use balancer_bench_common::{SinkConfig, SinkSlot};
use balancer_common::{proto, stats::PacketCount, tunnel::PROTO_IPIP};
use network_types::eth::{EthHdr, EtherType};

/// What to count (map `sink_config`).
#[btf_map(name = "sink_config")]
static CONFIG: Array<SinkConfig, 1> = Array::new();

/// Per-CPU counters by [`SinkSlot`] (map `sink_counts`).
#[btf_map(name = "sink_counts")]
static COUNTS: PerCpuArray<PacketCount, { SinkSlot::COUNT as usize }> = PerCpuArray::new();

/// Bytes of an IPv4 header without options.
const IPV4_LEN: usize = 20;
/// Bytes of the IPv6 header.
const IPV6_LEN: usize = 40;
/// IPv4 fragment offset bits, in network byte order as the packet holds
/// them: a fragment other than the first carries no transport header.
const FRAGMENT_OFFSET: u16 = u16::from_be(0x1fff);

#[xdp]
pub fn sink_xdp(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let (slot, action) = if matches(&ctx) {
        (SinkSlot::MATCHED, xdp_action::XDP_DROP)
    } else {
        (SinkSlot::PASSED, xdp_action::XDP_PASS)
    };
    if let Some(count) = COUNTS.get_ptr_mut(slot.0) {
        // SAFETY: the pointer comes from a successful lookup and stays
        // valid for the whole run; only this CPU writes its slot.
        unsafe {
            (*count).packets += 1;
            (*count).bytes += len;
        }
    }
    action
}

/// Whether the frame is one the sink counts and drops.
#[inline(always)]
fn matches(ctx: &XdpContext) -> bool {
    let Some(config) = CONFIG.get(0) else {
        return false;
    };
    if config.dst_port == 0 {
        return true;
    }
    destination_port(ctx) == Some(config.dst_port)
}

/// The TCP or UDP destination port of an Ethernet II frame carrying IPv4
/// or IPv6 (no extension headers), in network byte order.
#[inline(always)]
fn destination_port(ctx: &XdpContext) -> Option<u16> {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + EthHdr::LEN > end {
        return None;
    }
    // SAFETY: the Ethernet header is inside the frame (checked above).
    let ether_type = unsafe { (*(start as *const EthHdr)).ether_type };
    let ip = start + EthHdr::LEN;
    if ether_type == EtherType::Ipv4 as u16 {
        ipv4_port(ip, end)
    } else if ether_type == EtherType::Ipv6 as u16 {
        ipv6_port(ip, end)
    } else {
        None
    }
}

/// The destination port of the IPv4 packet at `ip`, if it is TCP or UDP
/// and not a later fragment; through one outer IPv4 header of IPIP (the
/// balancer's `ipip` forwarding), so that an encapsulated load is counted
/// as a plain one.
#[inline(always)]
fn ipv4_port(ip: usize, end: usize) -> Option<u16> {
    let (mut ip, (mut header, mut protocol)) = (ip, ipv4(ip, end)?);
    if protocol == PROTO_IPIP {
        ip += header;
        (header, protocol) = ipv4(ip, end)?;
    }
    if protocol != proto::TCP && protocol != proto::UDP {
        return None;
    }
    read_port(ip + header, end)
}

/// The header length and protocol of the IPv4 packet at `ip`, unless it
/// is a later fragment.
#[inline(always)]
fn ipv4(ip: usize, end: usize) -> Option<(usize, u8)> {
    if ip + IPV4_LEN > end {
        return None;
    }
    // SAFETY: the IPv4 header without options is inside the frame
    // (checked above): version and length in byte 0, fragment offset in
    // bytes 6-7, protocol in byte 9.
    let (vihl, frags, protocol) = unsafe {
        (
            *(ip as *const u8),
            ((ip + 6) as *const u16).read_unaligned(),
            *((ip + 9) as *const u8),
        )
    };
    let header = ((vihl & 0x0f) as usize) * 4;
    if frags & FRAGMENT_OFFSET != 0 || header < IPV4_LEN {
        return None;
    }
    Some((header, protocol))
}

/// The destination port of the IPv6 packet at `ip`, if its next header is
/// TCP or UDP.
#[inline(always)]
fn ipv6_port(ip: usize, end: usize) -> Option<u16> {
    if ip + IPV6_LEN > end {
        return None;
    }
    // SAFETY: the IPv6 header is inside the frame (checked above); the
    // next header is its byte 6.
    let next = unsafe { *((ip + 6) as *const u8) };
    if next != proto::TCP && next != proto::UDP {
        return None;
    }
    read_port(ip + IPV6_LEN, end)
}

/// The destination port (bytes 2-3) of the transport header at `l4`.
#[inline(always)]
fn read_port(l4: usize, end: usize) -> Option<u16> {
    if l4 + 4 > end {
        return None;
    }
    // SAFETY: the first four bytes of the transport header are inside the
    // frame (checked above).
    Some(unsafe { ((l4 + 2) as *const u16).read_unaligned() })
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
