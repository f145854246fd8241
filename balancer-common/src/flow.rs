//! The connection table: which backend each flow uses.

use crate::Addr;

/// A flow as seen from the client: client address and port to VIP address
/// and port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: Addr,
    pub dst: Addr,
    /// Network byte order.
    pub src_port: u16,
    /// Network byte order.
    pub dst_port: u16,
    pub proto: u8,
    pub _pad1: u8,
    pub _pad2: u16,
}

const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);

impl FlowKey {
    /// The flow from `src`:`src_port` to `dst`:`dst_port` over `proto`
    /// (ports in network byte order).
    #[inline(always)]
    pub const fn new(src: Addr, dst: Addr, src_port: u16, dst_port: u16, proto: u8) -> FlowKey {
        FlowKey {
            src,
            dst,
            src_port,
            dst_port,
            proto,
            _pad1: 0,
            _pad2: 0,
        }
    }
}

/// The backend a flow uses, its VIP, and when it last saw a packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowState {
    pub backend: u32,
    /// Index of the flow's VIP, so that a packet of a known flow is
    /// forwarded and counted without looking the VIP up, with
    /// [`FLOW_COUNTED`] on top (see [`FlowState::vip_index`]).
    pub vip: u32,
    /// `bpf_ktime_get_coarse_ns` of the last packet, refreshed at most
    /// every [`LAST_SEEN_GRANULARITY_NS`].
    pub last_seen_ns: u64,
}

const _: () = assert!(core::mem::size_of::<FlowState>() == 16);

/// The flow counts in its backend's active connections
/// ([`crate::backend::BackendLoad::conns`]) until its FIN or RST, which
/// clears the flag, or until it expires. Kept in the top bit of
/// [`FlowState::vip`] so that the entry's layout, and with it the pinned
/// table of a running balancer, stays as it was.
pub const FLOW_COUNTED: u32 = 1 << 31;

/// The client sent a FIN or RST on the flow: the entry still forwards the
/// rest of the close, but a SYN for the same 5-tuple starts a new
/// connection and is placed afresh. Any other SYN keeps the flow's
/// backend. Kept in [`FlowState::vip`] beside [`FLOW_COUNTED`].
pub const FLOW_CLOSING: u32 = 1 << 30;

/// The bits of [`FlowState::vip`] that hold the VIP index.
const FLOW_VIP_INDEX: u32 = (1 << 10) - 1;
/// Where [`FlowState::vip`] keeps the generation of the allow and deny
/// lists the flow was last admitted under (see
/// [`crate::settings::Settings::access_generation`]): bits 10 to 29. A
/// packet of a flow admitted under the lists in force skips their lookups.
const FLOW_ACCESS_SHIFT: u32 = 10;
/// The generation's bits, once shifted down.
pub const ACCESS_GENERATION_MASK: u32 = (1 << 20) - 1;

// VIP indexes fit below the generation, which fits below the flags.
const _: () = assert!(crate::maps::MAX_VIPS <= FLOW_VIP_INDEX + 1);
const _: () =
    assert!((ACCESS_GENERATION_MASK << FLOW_ACCESS_SHIFT) & (FLOW_COUNTED | FLOW_CLOSING) == 0);

impl FlowState {
    /// A flow of VIP `vip_index` on `backend`, last seen at `last_seen_ns`,
    /// [`counted`](FlowState::is_counted) or not, and
    /// [`closing`](FlowState::is_closing) when its first packet already
    /// ends it.
    #[inline(always)]
    pub const fn new(
        backend: u32,
        vip_index: u32,
        counted: bool,
        closing: bool,
        last_seen_ns: u64,
    ) -> FlowState {
        FlowState {
            backend,
            vip: vip_index
                | if counted { FLOW_COUNTED } else { 0 }
                | if closing { FLOW_CLOSING } else { 0 },
            last_seen_ns,
        }
    }

    /// The index of the flow's VIP, without flags.
    #[inline(always)]
    pub const fn vip_index(&self) -> u32 {
        self.vip & FLOW_VIP_INDEX
    }

    /// The generation of the lists the flow was last admitted under (0:
    /// never checked).
    #[inline(always)]
    pub const fn access_generation(&self) -> u32 {
        (self.vip >> FLOW_ACCESS_SHIFT) & ACCESS_GENERATION_MASK
    }

    /// Records that the flow was admitted under lists of `generation`.
    #[inline(always)]
    pub const fn set_access_generation(&mut self, generation: u32) {
        let shifted = (generation & ACCESS_GENERATION_MASK) << FLOW_ACCESS_SHIFT;
        self.vip = (self.vip & !(ACCESS_GENERATION_MASK << FLOW_ACCESS_SHIFT)) | shifted;
    }

    /// Whether the client was seen closing the flow ([`FLOW_CLOSING`]).
    #[inline(always)]
    pub const fn is_closing(&self) -> bool {
        self.vip & FLOW_CLOSING != 0
    }

    /// Marks the flow closing (its FIN or RST was seen) and stops counting
    /// it.
    #[inline(always)]
    pub const fn close(&mut self) {
        self.vip = (self.vip & !FLOW_COUNTED) | FLOW_CLOSING;
    }

    /// Whether the flow counts in its backend's active connections
    /// ([`FLOW_COUNTED`]).
    #[inline(always)]
    pub const fn is_counted(&self) -> bool {
        self.vip & FLOW_COUNTED != 0
    }
}

/// A flow that got a connection-table entry, told to the daemon through
/// the [`crate::maps::FLOW_EVENTS`] ring buffer while
/// [`crate::settings::SETTINGS_SHARE_FLOWS`] is set, so that peer hosts
/// learn its backend before ECMP moves the flow to them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEvent {
    pub key: FlowKey,
    /// The backend's id on this host.
    pub backend: u32,
    /// The VIP's index on this host.
    pub vip: u32,
    /// `bpf_ktime_get_coarse_ns` of the packet that made the entry.
    pub at_ns: u64,
}

const _: () = assert!(core::mem::size_of::<FlowEvent>() == 56);

/// The datapath refreshes a flow's `last_seen_ns` only when it is older
/// than this, to avoid a write to a shared cache line on every packet.
pub const LAST_SEEN_GRANULARITY_NS: u64 = 1_000_000_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flags_ride_on_the_vip_index() {
        let mut state = FlowState::new(4, 9, true, false, 100);
        assert_eq!(state.vip, 9 | FLOW_COUNTED);
        assert_eq!(state.vip_index(), 9);
        assert!(state.is_counted() && !state.is_closing());
        state.close();
        assert_eq!(state, FlowState::new(4, 9, false, true, 100));
        assert_eq!(state.vip_index(), 9);
        assert!(!state.is_counted() && state.is_closing());
    }

    #[test]
    fn the_lists_generation_rides_beside_the_index_and_the_flags() {
        let mut state = FlowState::new(4, 1023, true, false, 100);
        assert_eq!(state.access_generation(), 0);
        state.set_access_generation(ACCESS_GENERATION_MASK);
        assert_eq!(state.vip_index(), 1023);
        assert!(state.is_counted() && !state.is_closing());
        assert_eq!(state.access_generation(), ACCESS_GENERATION_MASK);
        state.close();
        assert_eq!(state.access_generation(), ACCESS_GENERATION_MASK);
        assert_eq!(state.vip_index(), 1023);
        state.set_access_generation(5);
        assert_eq!((state.access_generation(), state.vip_index()), (5, 1023));
        assert!(state.is_closing() && !state.is_counted());
    }
}
