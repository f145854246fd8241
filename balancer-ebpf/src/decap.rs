//! The backend-side decapsulator (object `balancer-decap`, see
//! `balancer_common::decap`): takes the outer IPIP or GUE headers off a
//! packet addressed to one of the host's addresses (`decap_addrs`) and
//! passes the client's packet to the stack, as if it had arrived as it
//! is; passes everything else untouched. A program of its own, small,
//! without the balancer's maps: it runs on backends.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

mod runtime;

use aya_ebpf::{
    bindings::xdp_action,
    btf_maps::{Array, HashMap, PerCpuArray},
    helpers::generated::bpf_xdp_adjust_head,
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use balancer_common::{
    Addr, addr_from_v4_word,
    decap::{
        DECAP_ADDR_ENTRIES, DECAP_GUE, DECAP_IPIP4, DECAP_IPIP6, DECAP_PASSED, DECAP_SLOTS,
        DecapConfig,
    },
    proto,
    stats::PacketCount,
    tunnel::{PROTO_IPIP, PROTO_IPV6, UDP_LEN},
};

#[btf_map(name = "decap_addrs")]
static ADDRS: HashMap<Addr, u32, { DECAP_ADDR_ENTRIES as usize }> = HashMap::new();

#[btf_map(name = "decap_stats")]
static STATS: PerCpuArray<PacketCount, { DECAP_SLOTS as usize }> = PerCpuArray::new();

#[btf_map(name = "decap_config")]
static CONFIG: Array<DecapConfig, 1> = Array::new();

/// Ethernet types, as they lie in the frame, and header lengths.
use balancer_common::tunnel::ether::{
    IPV4 as ETH_IPV4, IPV6 as ETH_IPV6, LEN as ETH_LEN, TAGGED_LEN, VLAN as ETH_VLAN,
};

/// XDP entry point, attached to a backend's interfaces.
#[xdp]
pub fn balancer_decap(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    let slot = match ether_type(&ctx) {
        Some((ETH_VLAN, inner @ (ETH_IPV4 | ETH_IPV6))) => decap::<TAGGED_LEN>(&ctx, inner),
        Some((outer @ (ETH_IPV4 | ETH_IPV6), _)) => decap::<ETH_LEN>(&ctx, outer),
        _ => None,
    };
    count(slot.unwrap_or(DECAP_PASSED), len);
    xdp_action::XDP_PASS
}

/// The frame's first Ethernet type, and the one after a VLAN tag.
#[inline(always)]
fn ether_type(ctx: &XdpContext) -> Option<(u16, u16)> {
    let start = ctx.data();
    if start + TAGGED_LEN > ctx.data_end() {
        return None;
    }
    // SAFETY: inside the frame (checked above); even offsets.
    unsafe {
        Some((
            ((start + 12) as *const u16).read(),
            ((start + 16) as *const u16).read(),
        ))
    }
}

/// What one tunnelled packet needs taken off.
struct Outer {
    /// Bytes of the outer headers.
    len: usize,
    /// The inner packet's Ethernet type.
    inner_type: u16,
    /// Its counter.
    slot: u32,
}

/// Takes the outer headers off a tunnelled packet for the host whose IP
/// header is at `L3`; the slot to count it under, or None to pass it.
#[inline(always)]
fn decap<const L3: usize>(ctx: &XdpContext, ether_type: u16) -> Option<u32> {
    let outer = outer::<L3>(ctx, ether_type)?;
    let start = ctx.data();
    if start + L3 > ctx.data_end() {
        return None;
    }
    // The Ethernet header (and tag) to write again in front of the inner
    // packet.
    let mut head = [0u16; TAGGED_LEN / 2 - 1];
    for (i, word) in head.iter_mut().enumerate().take(L3 / 2 - 1) {
        // SAFETY: inside the frame (checked above).
        *word = unsafe { (start as *const u16).add(i).read() };
    }
    // SAFETY: plain helper call; every packet pointer is loaded and
    // checked again below.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, outer.len as i32) } != 0 {
        return None;
    }
    let start = ctx.data();
    if start + L3 > ctx.data_end() {
        return None;
    }
    let words = start as *mut u16;
    for (i, word) in head.iter().enumerate().take(L3 / 2 - 1) {
        // SAFETY: inside the frame (checked above).
        unsafe { words.add(i).write_volatile(*word) };
    }
    // SAFETY: the Ethernet type ends at L3, inside the frame.
    unsafe { words.add(L3 / 2 - 1).write_volatile(outer.inner_type) };
    Some(outer.slot)
}

/// The outer headers of the packet at `L3`, if it is IPIP or GUE to one of
/// the host's addresses, without IP options or fragmentation.
#[inline(always)]
fn outer<const L3: usize>(ctx: &XdpContext, ether_type: u16) -> Option<Outer> {
    let start = ctx.data();
    // The longest outer headers (IPv6 and UDP) and the inner packet's
    // first byte.
    if start + L3 + 1 > ctx.data_end() {
        return None;
    }
    // SAFETY: inside the frame (checked above).
    let version = unsafe { ((start + L3) as *const u8).read() } >> 4;
    let (ip_len, protocol, dst) = if version == 4 && ether_type == ETH_IPV4 {
        if start + L3 + 20 > ctx.data_end() {
            return None;
        }
        let ip = (start + L3) as *const u8;
        // SAFETY: the 20-byte header is inside the frame.
        let (vihl, frags, protocol, dst) = unsafe {
            (
                ip.read(),
                (ip.add(6) as *const u16).read(),
                ip.add(9).read(),
                (ip.add(16) as *const u32).read_unaligned(),
            )
        };
        if vihl != 0x45 || u16::from_be(frags) & 0x3fff != 0 {
            return None;
        }
        (20, protocol, addr_from_v4_word(dst))
    } else if version == 6 && ether_type == ETH_IPV6 {
        if start + L3 + 40 > ctx.data_end() {
            return None;
        }
        let ip = (start + L3) as *const u8;
        // SAFETY: the 40-byte header is inside the frame.
        let (protocol, dst) = unsafe {
            let dst = ip.add(24) as *const u32;
            (
                ip.add(6).read(),
                [
                    dst.read_unaligned(),
                    dst.add(1).read_unaligned(),
                    dst.add(2).read_unaligned(),
                    dst.add(3).read_unaligned(),
                ],
            )
        };
        (40, protocol, dst)
    } else {
        return None;
    };
    let (len, inner_type, slot) = match protocol {
        PROTO_IPIP => (
            ip_len,
            ETH_IPV4,
            if version == 4 {
                DECAP_IPIP4
            } else {
                DECAP_IPIP6
            },
        ),
        PROTO_IPV6 => (
            ip_len,
            ETH_IPV6,
            if version == 4 {
                DECAP_IPIP4
            } else {
                DECAP_IPIP6
            },
        ),
        proto::UDP => {
            let port = CONFIG.get(0)?.gue_port;
            let udp = start + L3 + ip_len;
            if port == 0 || udp + 9 > ctx.data_end() {
                return None;
            }
            // SAFETY: the UDP header and the inner packet's first byte are
            // inside the frame (checked above).
            let (dport, first) = unsafe {
                (
                    ((udp + 2) as *const u16).read_unaligned(),
                    ((udp + 8) as *const u8).read(),
                )
            };
            if dport != port {
                return None;
            }
            let inner_type = match first >> 4 {
                4 => ETH_IPV4,
                6 => ETH_IPV6,
                _ => return None,
            };
            (ip_len + UDP_LEN, inner_type, DECAP_GUE)
        }
        _ => return None,
    };
    // SAFETY: a lookup; the value is not kept.
    unsafe { ADDRS.get(dst) }?;
    Some(Outer {
        len,
        inner_type,
        slot,
    })
}

/// Counts a frame of `len` bytes under `slot`.
#[inline(always)]
fn count(slot: u32, len: u64) {
    if let Some(c) = STATS.get_ptr_mut(slot) {
        // SAFETY: this CPU's slot, valid for the whole run.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += len;
        }
    }
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
