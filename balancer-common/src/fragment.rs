//! The fragment table: where the first fragment of a datagram went, so
//! that its later fragments (which carry no ports) follow it there, and
//! nowhere else.

use crate::Addr;

/// A datagram being fragmented: its addresses, its identification (IPv4's
/// 16 bits, or IPv6's 32, as they lie in the packet) and its protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragmentKey {
    pub src: Addr,
    pub dst: Addr,
    pub id: u32,
    pub proto: u8,
    pub _pad1: u8,
    pub _pad2: u16,
}

const _: () = assert!(core::mem::size_of::<FragmentKey>() == 40);

impl FragmentKey {
    /// The datagram `id` of `proto` from `src` to `dst`.
    #[inline(always)]
    pub const fn new(src: Addr, dst: Addr, id: u32, proto: u8) -> FragmentKey {
        FragmentKey {
            src,
            dst,
            id,
            proto,
            _pad1: 0,
            _pad2: 0,
        }
    }
}

/// Where a datagram's first fragment went: its backend and VIP, and when.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragmentState {
    pub backend: u32,
    pub vip: u32,
    /// `bpf_ktime_get_coarse_ns` of the first fragment.
    pub first_ns: u64,
}

const _: () = assert!(core::mem::size_of::<FragmentState>() == 16);

/// How long after its first fragment a datagram's later fragments are
/// admitted. Fragments of one datagram leave their sender back to back;
/// two seconds cover any queueing on the way, and keep an identification
/// reused later (IPv4 has 65,536) from following an old entry.
pub const FRAGMENT_WINDOW_NS: u64 = 2_000_000_000;
