//! Session persistence: the backend each client address of a VIP last
//! used, kept in an LRU map for as long as the VIP's timeout after the
//! client's last packet.

use crate::Addr;

/// A client (its address under the VIP's mask) of a VIP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PersistKey {
    pub client: Addr,
    /// Index of the VIP.
    pub vip: u32,
}

const _: () = assert!(core::mem::size_of::<PersistKey>() == 20);

/// The backend a client last used and when it last sent a packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PersistState {
    pub backend: u32,
    pub _pad: u32,
    /// `bpf_ktime_get_coarse_ns` of the client's last new flow, or of a
    /// packet of its flows (refreshed at most every
    /// [`crate::flow::LAST_SEEN_GRANULARITY_NS`]).
    pub last_seen_ns: u64,
}

const _: () = assert!(core::mem::size_of::<PersistState>() == 16);
