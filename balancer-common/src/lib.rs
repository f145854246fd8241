//! Types and constants shared by the XDP program and the userspace daemon.
//!
//! Everything a BPF map stores or is keyed by lives here, so that both sides
//! agree on the layout byte for byte. Rules for every type in this crate:
//! `#[repr(C)]`, explicit padding fields, a compile-time size assertion, no
//! `bool`, `enum` or `Option` inside a map value, and addresses and ports in
//! network byte order. Padding is made of scalar fields, not byte arrays:
//! zeroing an array makes LLVM call memset, a byte loop on BPF. Kernel
//! object names are cut to 15 bytes, so every name here is at most that
//! long.
//!
//! This crate is the whole contract between the kernel and userspace,
//! stated once: every map's spec ([`maps::MAP_SPECS`]), the layout of a
//! VIP's list ring ([`vip::LIST_LEN_SLOT`], [`vip::list_slot`],
//! [`vip::MAX_LIST_LEN`]), the idle timeout by protocol
//! ([`settings::Settings::idle_ns`]), the flags and their one-line
//! predicates (`is_up`, `is_counted`, `persists`, `has_list`, ...) and the
//! key constructors (`VipKey::new`, `AddrKey::new`, `FlowKey::new`).
//!
//! The hash functions the datapath uses to pick backends are here too, so
//! that userspace (tests, the daemon) computes exactly what the kernel does.
#![cfg_attr(not(test), no_std)]

pub mod access;
pub mod backend;
pub mod budget;
pub mod decap;
pub mod flow;
pub mod fragment;
pub mod hash;
pub mod limit;
pub mod maps;
pub mod nat;
pub mod persist;
pub mod settings;
pub mod stats;
pub mod tunnel;
pub mod vip;

/// Name of the XDP program in the object file (and in `bpftool prog`).
pub const XDP_PROGRAM: &str = "balancer_xdp";
/// Name of the NAT program, which the XDP program tail-calls (slot
/// [`maps::PROGRAM_NAT`] of [`maps::PROGRAMS`]).
pub const NAT_PROGRAM: &str = "balancer_nat";

/// An IPv4 or IPv6 address as the maps store it: IPv6 as is, IPv4 as an
/// IPv4-mapped IPv6 address (`::ffff:a.b.c.d`). The 16 bytes are in
/// network byte order in memory; they are held as four 32-bit words so
/// that the datapath copies, compares and hashes them a word at a time (a
/// byte array would cost a byte at a time on BPF).
pub type Addr = [u32; 4];

/// The word of an IPv4-mapped address that holds `::ffff`.
const V4_MAPPED: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// Whether `addr` is an IPv4 address (IPv4-mapped).
#[inline(always)]
pub const fn is_v4(addr: &Addr) -> bool {
    addr[0] == 0 && addr[1] == 0 && addr[2] == V4_MAPPED
}

/// An [`Addr`] from the 16 bytes of an IPv6 address.
#[inline(always)]
pub const fn addr_from_octets(o: [u8; 16]) -> Addr {
    [
        u32::from_ne_bytes([o[0], o[1], o[2], o[3]]),
        u32::from_ne_bytes([o[4], o[5], o[6], o[7]]),
        u32::from_ne_bytes([o[8], o[9], o[10], o[11]]),
        u32::from_ne_bytes([o[12], o[13], o[14], o[15]]),
    ]
}

/// An [`Addr`] from an IPv4 address word as it lies in the packet.
#[inline(always)]
pub const fn addr_from_v4_word(v4: u32) -> Addr {
    [0, 0, V4_MAPPED, v4]
}

/// An [`Addr`] from the 4 bytes of an IPv4 address.
#[inline(always)]
pub const fn addr_from_v4(v4: [u8; 4]) -> Addr {
    addr_from_v4_word(u32::from_ne_bytes(v4))
}

/// The 16 bytes of an [`Addr`], in network byte order.
pub const fn addr_octets(addr: &Addr) -> [u8; 16] {
    let [a, b, c, d] = [
        addr[0].to_ne_bytes(),
        addr[1].to_ne_bytes(),
        addr[2].to_ne_bytes(),
        addr[3].to_ne_bytes(),
    ];
    [
        a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1], d[2],
        d[3],
    ]
}

/// IP protocol numbers the datapath handles.
pub mod proto {
    /// ICMP (IPv4).
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;
}

#[cfg(feature = "user")]
mod user {
    //! `aya::Pod` for every map key and value: all are `repr(C)`, made of
    //! integers and byte arrays with explicit padding, and valid for every
    //! bit pattern.
    use crate::{access, backend, decap, flow, limit, nat, persist, settings, stats, tunnel, vip};

    macro_rules! pod {
        ($($ty:ty),* $(,)?) => {
            // SAFETY: see the module comment.
            $(unsafe impl aya::Pod for $ty {})*
        };
    }

    pod!(
        access::AccessData,
        access::AccessKey,
        access::AccessCounters,
        backend::BackendInfo,
        backend::BackendLoad,
        decap::DecapConfig,
        flow::FlowKey,
        flow::FlowState,
        limit::LimitCounters,
        limit::SourceLimit,
        limit::SourceSlot,
        settings::Settings,
        stats::PacketCount,
        stats::FlowCounters,
        tunnel::TunnelInfo,
        vip::VipKey,
        vip::VipInfo,
        vip::AddrKey,
        vip::AddrInfo,
        vip::VipPolicy,
        persist::PersistKey,
        persist::PersistState,
        nat::NatFlow,
        nat::NatReply,
        nat::SnatPool,
        nat::PortRange,
        nat::NatBackend,
        nat::RouteKey,
        nat::Hop,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_maps_into_the_ipv4_mapped_range() {
        let addr = addr_from_v4([10, 0, 0, 1]);
        assert_eq!(
            std::net::Ipv6Addr::from(addr_octets(&addr)).to_ipv4_mapped(),
            Some(std::net::Ipv4Addr::new(10, 0, 0, 1))
        );
    }

    #[test]
    fn octets_round_trip() {
        let octets: [u8; 16] = core::array::from_fn(|i| i as u8 * 17);
        assert_eq!(addr_octets(&addr_from_octets(octets)), octets);
    }
}
