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
    /// The backend's MAC, from the kernel's neighbour table.
    pub dst_mac: [u8; 6],
    /// The MAC of the interface the backend is reached through.
    pub src_mac: [u8; 6],
    /// That interface's index: XDP_TX when it is the ingress interface,
    /// a redirect through `egress` otherwise.
    pub ifindex: u32,
    /// [`BACKEND_UP`], [`BACKEND_RESOLVED`].
    pub flags: u32,
}

const _: () = assert!(core::mem::size_of::<BackendInfo>() == 36);

/// Healthy: established flows stay on it. A flow whose backend lost this
/// flag picks a new one (fail over).
pub const BACKEND_UP: u32 = 1;
/// `dst_mac`, `src_mac` and `ifindex` are valid. Without it the packet is
/// dropped and counted, never sent to a wrong MAC.
pub const BACKEND_RESOLVED: u32 = 1 << 1;
