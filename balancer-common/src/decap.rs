//! The backend-side decapsulator (`balancer decap`): a small XDP program
//! of its own object (`balancer-decap`) that takes the outer IPIP or GUE
//! headers off packets addressed to the host and passes the client's packet
//! on to the kernel's stack, for hosts without the kernel's ipip or fou
//! modules. Its maps are named here, as the balancer's are in
//! [`crate::maps`].

use crate::stats::PacketCount;

/// Name of the decapsulator in its object (and in `bpftool prog`).
pub const DECAP_PROGRAM: &str = "balancer_decap";
/// The host's addresses whose tunnelled packets are decapsulated:
/// [`crate::Addr`] to 1.
pub const DECAP_ADDRS: &str = "decap_addrs";
/// What the decapsulator did: per-CPU [`PacketCount`] by `DECAP_*` slot.
pub const DECAP_STATS: &str = "decap_stats";
/// Its settings: one [`DecapConfig`].
pub const DECAP_CONFIG: &str = "decap_config";

/// Most addresses of `decap_addrs`.
pub const DECAP_ADDR_ENTRIES: u32 = 256;

/// Slot of `decap_stats`: IPIP with an outer IPv4 header taken off.
pub const DECAP_IPIP4: u32 = 0;
/// IPIP with an outer IPv6 header taken off.
pub const DECAP_IPIP6: u32 = 1;
/// GUE (outer IPv4 or IPv6 and UDP) taken off.
pub const DECAP_GUE: u32 = 2;
/// Passed as it came: not a tunnelled packet for the host, or one the
/// decapsulator leaves to the stack (IP options, fragments).
pub const DECAP_PASSED: u32 = 3;
/// Slots of `decap_stats`.
pub const DECAP_SLOTS: u32 = 4;

/// The decapsulator's settings.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecapConfig {
    /// GUE's UDP port, network byte order (0: no GUE).
    pub gue_port: u16,
    pub _pad: u16,
    pub _reserved: u32,
}

const _: () = assert!(core::mem::size_of::<DecapConfig>() == 8);

/// The counters of `decap_stats` by slot, summed over CPUs, as userspace
/// reports them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecapCounters {
    pub ipip4: PacketCount,
    pub ipip6: PacketCount,
    pub gue: PacketCount,
    pub passed: PacketCount,
}
