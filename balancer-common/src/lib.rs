//! Types and constants shared by the XDP program and the userspace daemon.
//!
//! Everything a BPF map stores or is keyed by lives here, so that both sides
//! agree on the layout byte for byte. Rules for every type in this crate:
//! `#[repr(C)]`, explicit padding fields, a compile-time size assertion, no
//! `bool`, `enum` or `Option` inside a map value, and addresses and ports in
//! network byte order. Kernel object names are cut to 15 bytes, so every
//! name here is at most that long.
//!
//! The hash functions the datapath uses to pick backends are here too, so
//! that userspace (tests, the daemon) computes exactly what the kernel does.
#![cfg_attr(not(test), no_std)]

pub mod backend;
pub mod flow;
pub mod hash;
pub mod maps;
pub mod settings;
pub mod stats;
pub mod vip;

/// Name of the XDP program in the object file (and in `bpftool prog`).
pub const XDP_PROGRAM: &str = "balancer_xdp";

/// An IPv4 or IPv6 address as the maps store it: IPv6 as is, IPv4 as an
/// IPv4-mapped IPv6 address (`::ffff:a.b.c.d`), in network byte order.
pub type Addr = [u8; 16];

/// Maps an IPv4 address (network byte order) into an [`Addr`].
#[inline(always)]
pub const fn addr_from_v4(v4: [u8; 4]) -> Addr {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, v4[0], v4[1], v4[2], v4[3],
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
    use crate::{backend, flow, settings, stats, vip};

    macro_rules! pod {
        ($($ty:ty),* $(,)?) => {
            // SAFETY: see the module comment.
            $(unsafe impl aya::Pod for $ty {})*
        };
    }

    pod!(
        backend::BackendInfo,
        flow::FlowKey,
        flow::FlowState,
        settings::Settings,
        stats::PacketCount,
        stats::VipCounters,
        vip::VipKey,
        vip::VipInfo,
        vip::AddrKey,
        vip::AddrInfo,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_maps_into_the_ipv4_mapped_range() {
        let addr = addr_from_v4([10, 0, 0, 1]);
        assert_eq!(
            std::net::Ipv6Addr::from(addr).to_ipv4_mapped(),
            Some(std::net::Ipv4Addr::new(10, 0, 0, 1))
        );
    }
}
