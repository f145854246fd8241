//! Encapsulation: what the datapath writes around a client's packet for a
//! backend reached through an outer IP header ([`crate::backend::BACKEND_IPIP`]),
//! or through an outer IP and UDP header ([`crate::backend::BACKEND_GUE`]:
//! GUE variant 1, the inner IP packet as the UDP payload, whose first two
//! bits, 01 for both IPv4 and IPv6, say so).
//!
//! The outer header goes from an address of the balancer ([`TunnelInfo`],
//! per backend, as the daemon chose it for the backend's route) to the
//! backend's address, in the backend's family: IPv4 (protocol 4 for an
//! IPv4 packet inside, 41 for IPv6) or IPv6 (next header likewise). The
//! client's packet follows byte for byte. The outer IPv4 header forbids
//! fragmentation (DF) and its TTL, like the IPv6 hop limit, is
//! [`OUTER_TTL`]; it carries the inner packet's DSCP and ECN bits, and an
//! outer IPv6 header a flow label from the flow's hash, so that routers on
//! the way spread flows over their paths. GUE's UDP source port comes from
//! the flow's hash too ([`gue_source_port`]), so that backends' receive
//! side scaling spreads flows. Its checksum is 0 over IPv4 (RFC 768
//! allows it, and the inner packet has its own) and computed over IPv6
//! (RFC 8200), without reading the payload: a valid inner packet's own
//! checksums give its sum. Where they do not (a fragment, an IPv6
//! extension header, UDP over IPv4 without a checksum) it is 0, which RFC
//! 6935 allows for tunnels and which Linux's fou and `balancer decap`
//! accept.

use crate::Addr;

/// A backend's tunnel (`tunnels`, by backend id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TunnelInfo {
    /// The outer header's source: an address of the balancer, of the
    /// backend's family (IPv4-mapped for IPv4).
    pub src: Addr,
    /// GUE: the UDP destination port, network byte order.
    pub port: u16,
    /// The most bytes an IP packet may have on the backend's route (the
    /// egress interface's MTU, or the route's own if lower); 0: unknown,
    /// not checked. A client's packet that would exceed it once
    /// encapsulated is answered with ICMP instead (see the datapath's
    /// `pmtu`).
    pub mtu: u16,
    pub _reserved: u32,
}

const _: () = assert!(core::mem::size_of::<TunnelInfo>() == 24);

/// TTL of an outer IPv4 header and hop limit of an outer IPv6 one.
pub const OUTER_TTL: u8 = 64;
/// Bytes an outer IPv4 header adds.
pub const IPIP4_OVERHEAD: usize = 20;
/// Bytes an outer IPv6 header adds.
pub const IPIP6_OVERHEAD: usize = 40;
/// IP protocol of IPv4 in IP.
pub const PROTO_IPIP: u8 = 4;
/// IP protocol of IPv6 in IP.
pub const PROTO_IPV6: u8 = 41;
/// Bytes GUE's UDP header adds to the outer IP header.
pub const UDP_LEN: usize = 8;
/// The GUE destination port when the configuration names none.
pub const DEFAULT_GUE_PORT: u16 = 6080;

/// `flow` mixed so that every bit of it moves every bit of the result
/// (MurmurHash3's finaliser): outer headers take a few bits of it, and a
/// flow's hash material differs from another's in a few bits only (a
/// client's port).
#[inline(always)]
pub const fn mix(flow: u32) -> u32 {
    let mut h = flow ^ (flow >> 16);
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// The GUE UDP source port of a flow of hash material `flow`: one of the
/// dynamic ports (49152 to 65535), from a mix of it.
#[inline(always)]
pub const fn gue_source_port(flow: u32) -> u16 {
    0xc000 | (mix(flow) as u16 & 0x3fff)
}

/// The flow label of an outer IPv6 header for a flow of hash material
/// `flow`: 20 bits of a mix of it, never 0 (0 means no label).
#[inline(always)]
pub const fn flow_label(flow: u32) -> u32 {
    let label = (mix(flow) >> 12) & 0xf_ffff;
    if label == 0 { 1 } else { label }
}

/// Hash material of the flow of a packet with these addresses and ports
/// (network byte order; 0 for a packet without ports), for the outer
/// header's flow label.
#[inline(always)]
pub const fn flow_bits(src: &Addr, dst: &Addr, src_port: u16, dst_port: u16) -> u32 {
    src[3] ^ src[2] ^ dst[3] ^ (((src_port as u32) << 16) | dst_port as u32)
}

/// The ones' complement checksum of `words`, 16-bit words as they lie in
/// the packet (the sum does not depend on the byte order), ready to store.
#[inline(always)]
pub const fn checksum(words: &[u16]) -> u16 {
    let mut sum: u32 = 0;
    let mut i = 0;
    while i < words.len() {
        sum += words[i] as u32;
        i += 1;
    }
    !fold(sum)
}

/// The ones' complement sum `sum` (of 16-bit words, up to 65,537 of them)
/// folded to 16 bits; a checksum is its complement.
#[inline(always)]
pub const fn fold(sum: u32) -> u16 {
    let sum = (sum & 0xffff) + (sum >> 16);
    ((sum & 0xffff) + (sum >> 16)) as u16
}

/// Ethernet types as they lie in the frame (loaded as a native `u16`),
/// and the lengths of the Ethernet header without and with one 802.1Q
/// tag: what the encapsulation, its path-MTU replies and the decapsulator
/// look at before the IP header.
pub mod ether {
    pub const IPV4: u16 = 0x0800u16.to_be();
    pub const IPV6: u16 = 0x86ddu16.to_be();
    pub const VLAN: u16 = 0x8100u16.to_be();
    pub const LEN: usize = 14;
    pub const TAGGED_LEN: usize = 18;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checksum_of_a_known_header() {
        // The IPv4 header of RFC 1071's usual example (Wikipedia's):
        // 4500 0073 0000 4000 4011 [b861] c0a8 0001 c0a8 00c7.
        let be = [
            0x4500u16, 0x0073, 0x0000, 0x4000, 0x4011, 0x0000, 0xc0a8, 0x0001, 0xc0a8, 0x00c7,
        ];
        let stored: Vec<u16> = be.iter().map(|w| w.to_be()).collect();
        assert_eq!(u16::from_be(checksum(&stored)), 0xb861);
    }

    #[test]
    fn gue_source_ports_are_dynamic_and_spread() {
        let ports: std::collections::BTreeSet<u16> = (0..1000u32)
            .map(|n| gue_source_port(n.wrapping_mul(7919)))
            .collect();
        assert!(ports.iter().all(|p| *p >= 49152));
        assert!(ports.len() > 950, "{}", ports.len());
    }

    #[test]
    fn flow_labels_are_20_bits_and_never_0() {
        for flow in [0, 1, 0x1234_5678, u32::MAX] {
            let label = flow_label(flow);
            assert!(label != 0 && label <= 0xf_ffff, "{flow}: {label}");
        }
        assert_ne!(flow_label(1), flow_label(2));
    }
}
