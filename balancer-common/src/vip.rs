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
    /// Index of the VIP's ring in `rings` and of its counters.
    pub index: u32,
    /// [`VIP_SOURCE_HASH`] and future flags.
    pub flags: u32,
}

const _: () = assert!(core::mem::size_of::<VipInfo>() == 8);

/// New flows hash the source address only (source affinity), not the
/// whole 5-tuple.
pub const VIP_SOURCE_HASH: u32 = 1;

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
