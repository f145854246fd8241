//! The handshake table: the backend of a new flow to a VIP whose choice
//! cannot be recomputed from the packet (round robin, least connections,
//! least latency, persistence), from the flow's first packet (a SYN, a UDP
//! datagram) until its next packet from the client promotes it to the
//! connection table. A table of its own, smaller: a flood of spoofed first
//! packets churns it and never evicts a connection.

use balancer_common::{
    flow::{FlowKey, FlowState, LAST_SEEN_GRANULARITY_NS},
    settings::Settings,
};

use crate::{
    maps::HANDSHAKES,
    ring::{self, Pick},
};

/// The backend the handshake table holds for flow `key`, if its entry is
/// younger than the protocol's idle timeout and its backend is up; the
/// entry's time is refreshed (at most every [`LAST_SEEN_GRANULARITY_NS`]),
/// so a flow that stays here under the insert budget keeps it.
#[inline(always)]
pub fn find(key: &FlowKey, settings: &Settings, now: u64) -> Option<Pick> {
    let state = HANDSHAKES.get_ptr_mut(key)?;
    // SAFETY: the entry stays valid for this run; a concurrent writer can
    // only replace whole values of plain integers.
    let state = unsafe { &mut *state };
    if settings.expired(key.proto, state.last_seen_ns, now) {
        return None;
    }
    let pick = ring::backend(state.backend).ok()?;
    if !pick.backend.is_up() {
        return None;
    }
    if now.saturating_sub(state.last_seen_ns) > LAST_SEEN_GRANULARITY_NS {
        state.last_seen_ns = now;
    }
    Some(pick)
}

/// Records that new flow `key` of VIP `vip` starts on `pick`. A full table
/// forgets its least recently used handshake.
#[inline(always)]
pub fn remember(key: &FlowKey, vip: u32, pick: &Pick, now: u64) {
    let state = FlowState::new(pick.id, vip, false, false, now);
    let _ = HANDSHAKES.insert(key, state, 0);
}

/// Forgets flow `key`: it moved to the connection table.
#[inline(always)]
pub fn forget(key: &FlowKey) {
    let _ = HANDSHAKES.remove(key);
}
