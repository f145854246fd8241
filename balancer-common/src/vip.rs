//! Virtual IPs: what the datapath matches packets against.

use crate::Addr;

/// A VIP: address, port and protocol. Port 0 takes every port of the
/// address and protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipKey {
    pub addr: Addr,
    /// Network byte order.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

const _: () = assert!(core::mem::size_of::<VipKey>() == 20);

/// What the datapath knows of a VIP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipInfo {
    /// Index of the VIP's table in `rings_mm`, of its policy and of its
    /// counters.
    pub index: u32,
    /// The scheduler (`SCHED_*`, under [`VIP_SCHEDULER`]) and
    /// [`VIP_PERSIST`].
    pub flags: u32,
}

const _: () = assert!(core::mem::size_of::<VipInfo>() == 8);

/// The bits of [`VipInfo::flags`] that hold the VIP's scheduler: how a new
/// flow picks its backend.
pub const VIP_SCHEDULER: u32 = 0xff;
/// Maglev consistent hashing of the 5-tuple; the VIP's table is a Maglev
/// ring of the settings' ring size.
pub const SCHED_MAGLEV: u32 = 0;
/// Maglev consistent hashing of the client address alone (source
/// affinity). The value is that of the flag that meant it before other
/// schedulers existed, so pinned VIPs keep their meaning.
pub const SCHED_SOURCE_HASH: u32 = 1;
/// Smooth weighted round robin: the VIP's table is a list (see
/// [`LIST_LEN_SLOT`]) holding one cycle of the weighted order, walked by a
/// per-CPU cursor.
pub const SCHED_ROUND_ROBIN: u32 = 2;
/// The better of two random backends of the VIP's list by active
/// connections divided by weight (power of two choices).
pub const SCHED_LEAST_CONNECTIONS: u32 = 3;
/// The better of two random backends of the VIP's list by smoothed
/// health-check latency times (active connections + 1), divided by weight.
pub const SCHED_LEAST_LATENCY: u32 = 4;
/// New flows from a client address go to the backend that address last
/// used, while the VIP's [`VipPolicy`] timeout has not run out.
pub const VIP_PERSIST: u32 = 1 << 8;

/// The scheduler of a VIP with `flags`.
#[inline(always)]
pub const fn scheduler(flags: u32) -> u32 {
    flags & VIP_SCHEDULER
}

/// Whether the table of a VIP with `flags` is a list (slot
/// [`LIST_LEN_SLOT`] holds the number of entries, slots 1 to n the
/// backend ids) rather than a Maglev ring.
#[inline(always)]
pub const fn has_list(flags: u32) -> bool {
    scheduler(flags) > SCHED_SOURCE_HASH
}

/// Whether the datapath counts the active connections of a VIP's
/// backends (the least-* schedulers compare them).
#[inline(always)]
pub const fn counts_connections(flags: u32) -> bool {
    let s = scheduler(flags);
    s == SCHED_LEAST_CONNECTIONS || s == SCHED_LEAST_LATENCY
}

/// The slot of a list table that holds its number of entries; the entries
/// follow it.
pub const LIST_LEN_SLOT: u32 = 0;
/// Most entries of a list table (a round-robin cycle or a member list).
pub const MAX_LIST_LEN: u32 = 65_536;

/// What the datapath needs of a VIP beyond [`VipInfo`], read only for VIPs
/// whose flags ask for it (persistence) and, at most once a second per
/// flow, to keep a client's persistence alive.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipPolicy {
    /// How long after its last packet a client keeps its backend; 0: no
    /// persistence.
    pub persist_ns: u64,
    /// Mask applied to a client address to key its persistence: all ones
    /// for IPv4, the prefix (64 bits by default) for IPv6.
    pub client_mask: Addr,
}

const _: () = assert!(core::mem::size_of::<VipPolicy>() == 24);

/// An address and protocol that carry at least one VIP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AddrKey {
    pub addr: Addr,
    pub proto: u8,
    pub _pad1: u8,
    pub _pad2: u16,
}

const _: () = assert!(core::mem::size_of::<AddrKey>() == 20);

/// What the datapath knows of a VIP address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddrInfo {
    /// Index of the VIP whose ring places fragments sent to this address
    /// (their ports are unknown, so the daemon designates one VIP).
    pub fragment_vip: u32,
    /// [`ADDR_HAS_WILDCARD`].
    pub flags: u32,
}

const _: () = assert!(core::mem::size_of::<AddrInfo>() == 8);

/// A port-0 VIP exists for this address and protocol: a packet to a port
/// without a VIP of its own goes to it.
pub const ADDR_HAS_WILDCARD: u32 = 1;
/// The fragment VIP's table is a list, not a Maglev ring (see
/// [`has_list`]): fragments index it by their address hash modulo its
/// length.
pub const ADDR_FRAGMENT_LIST: u32 = 1 << 1;
