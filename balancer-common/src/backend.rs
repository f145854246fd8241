//! Backends: where the datapath sends packets.

use crate::Addr;

/// A backend as the datapath sees it: where to send frames, and whether it
/// may receive them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendInfo {
    /// The backend's address (for the datapath's own checks and for
    /// userspace; forwarding is by MAC).
    pub addr: Addr,
    /// The new Ethernet addresses, as they are written over the frame's:
    /// the backend's MAC (from the kernel's neighbour table), then the MAC
    /// of the interface the backend is reached through. Held as 16-bit
    /// words so the datapath writes them six stores at a time.
    pub macs: [u16; 6],
    /// That interface's index: XDP_TX when it is the ingress interface,
    /// a redirect through `egress` otherwise.
    pub ifindex: u32,
    /// [`BACKEND_UP`], [`BACKEND_RESOLVED`], [`BACKEND_IPIP`],
    /// [`BACKEND_GUE`]; 0 for an unused id.
    pub flags: u32,
    /// Index of the VIP the backend serves: with `addr`, what a restarted
    /// daemon reads back to give every backend the id its flows use.
    pub vip: u32,
}

const _: () = assert!(core::mem::size_of::<BackendInfo>() == 40);

impl BackendInfo {
    /// Whether the backend is healthy ([`BACKEND_UP`]).
    #[inline(always)]
    pub const fn is_up(&self) -> bool {
        self.flags & BACKEND_UP != 0
    }

    /// Whether `macs` and `ifindex` are valid ([`BACKEND_RESOLVED`]).
    #[inline(always)]
    pub const fn is_resolved(&self) -> bool {
        self.flags & BACKEND_RESOLVED != 0
    }

    /// Whether packets reach the backend in an outer IP header
    /// ([`BACKEND_IPIP`]).
    #[inline(always)]
    pub const fn is_ipip(&self) -> bool {
        self.flags & BACKEND_IPIP != 0
    }

    /// Whether packets reach the backend in an outer IP and UDP header
    /// ([`BACKEND_GUE`]).
    #[inline(always)]
    pub const fn is_gue(&self) -> bool {
        self.flags & BACKEND_GUE != 0
    }

    /// Whether packets reach the backend in a tunnel (IPIP or GUE): one
    /// test of the flags on the per-packet path.
    #[inline(always)]
    pub const fn is_tunnelled(&self) -> bool {
        self.flags & (BACKEND_IPIP | BACKEND_GUE) != 0
    }

    /// Whether the datapath can send to the backend: up and resolved.
    #[inline(always)]
    pub const fn is_usable(&self) -> bool {
        self.is_up() && self.is_resolved()
    }

    /// The flags of a backend that is `up` and `resolved` or not.
    #[inline(always)]
    pub const fn flags_for(up: bool, resolved: bool) -> u32 {
        (if up { BACKEND_UP } else { 0 }) | (if resolved { BACKEND_RESOLVED } else { 0 })
    }

    /// The `macs` words for destination `dst` and source `src`.
    pub const fn mac_words(dst: [u8; 6], src: [u8; 6]) -> [u16; 6] {
        [
            u16::from_ne_bytes([dst[0], dst[1]]),
            u16::from_ne_bytes([dst[2], dst[3]]),
            u16::from_ne_bytes([dst[4], dst[5]]),
            u16::from_ne_bytes([src[0], src[1]]),
            u16::from_ne_bytes([src[2], src[3]]),
            u16::from_ne_bytes([src[4], src[5]]),
        ]
    }
}

/// Healthy: established flows stay on it. A flow whose backend lost this
/// flag picks a new one (fail over).
pub const BACKEND_UP: u32 = 1;
/// `macs` and `ifindex` are valid. Without it the packet is
/// dropped and counted, never sent to a wrong MAC.
pub const BACKEND_RESOLVED: u32 = 1 << 1;
/// Packets reach the backend encapsulated in an outer IP header (IPIP:
/// IPv4 or IPv6 in IPv4 or IPv6), from the address its entry of `tunnels`
/// gives, to `addr`; `macs` and `ifindex` are then those of the route's
/// next hop (see [`crate::tunnel`]).
pub const BACKEND_IPIP: u32 = 1 << 2;
/// Packets reach the backend in GUE: an outer IP header and a UDP header
/// to the port its entry of `tunnels` gives, then the client's packet
/// (see [`crate::tunnel`]). As for [`BACKEND_IPIP`], `macs` and `ifindex`
/// are the next hop's.
pub const BACKEND_GUE: u32 = 1 << 3;
/// The daemon's own mark, which the program ignores: the backend's health
/// is known (it passed a check since a daemon started, or has no checks),
/// not assumed. A restarted daemon adopts it, so a backend a crashed
/// daemon left up before any check passed does not count toward
/// announcing its VIP.
pub const BACKEND_CONFIRMED: u32 = 1 << 4;

/// What the least-* schedulers compare, per backend id, in an mmap-able
/// array: the datapath counts connections with atomic adds on a new flow
/// and on its FIN or RST (per flow, not per packet), and the daemon writes
/// the weight and latency, and corrects the count for flows that ended
/// without either, through its mapping of the array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendLoad {
    /// Active connections of counting VIPs (see
    /// [`crate::vip::counts_connections`]). Read as signed: a correction
    /// racing a close may leave it briefly below zero.
    pub conns: u64,
    /// The backend's weight; 0 while it drains (no new flows, and no
    /// persistence).
    pub weight: u32,
    /// Smoothed health-check latency in microseconds; 0 before the first
    /// check.
    pub latency_us: u32,
}

const _: () = assert!(core::mem::size_of::<BackendLoad>() == 16);

impl BackendLoad {
    /// The connection count, a value briefly below zero read as zero.
    pub const fn active(&self) -> u64 {
        let conns = self.conns as i64;
        if conns < 0 { 0 } else { conns as u64 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backend_is_usable_when_up_and_resolved() {
        for (up, resolved) in [(false, false), (true, false), (false, true), (true, true)] {
            let b = BackendInfo {
                flags: BackendInfo::flags_for(up, resolved),
                ..BackendInfo::default()
            };
            assert_eq!((b.is_up(), b.is_resolved()), (up, resolved));
            assert_eq!(b.is_usable(), up && resolved);
        }
    }
}
