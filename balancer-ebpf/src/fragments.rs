//! The fragment table: a datagram's first fragment is placed as a packet
//! of its flow (it carries the ports) and recorded here; its later
//! fragments, which carry no ports, follow it if it was admitted shortly
//! before, and are dropped otherwise. A table of its own, so that no
//! fragment can evict a connection.

use balancer_common::{
    fragment::{FRAGMENT_WINDOW_NS, FragmentKey, FragmentState},
    stats::Stat,
};

use crate::{
    maps::FRAGMENTS,
    ring::{self, Pick},
};

/// Records that the first fragment of datagram `key` went to `pick` of
/// VIP `vip`. A full table forgets its least recently used datagram.
#[inline(always)]
pub fn admit(key: &FragmentKey, vip: u32, pick: &Pick, now: u64) {
    let state = FragmentState {
        backend: pick.id,
        vip,
        first_ns: now,
    };
    let _ = FRAGMENTS.insert(key, state, 0);
}

/// Where a later fragment of datagram `key` goes: the VIP and backend of
/// its first fragment, if that was admitted within [`FRAGMENT_WINDOW_NS`].
#[inline(always)]
pub fn follow(key: &FragmentKey, now: u64) -> Result<(u32, Pick), Stat> {
    let Some(state) = FRAGMENTS.get_ptr(key) else {
        return Err(Stat::DROP_FRAGMENT_UNMATCHED);
    };
    // SAFETY: plain data, read once.
    let state = unsafe { *state };
    if now.saturating_sub(state.first_ns) > FRAGMENT_WINDOW_NS {
        return Err(Stat::DROP_FRAGMENT_UNMATCHED);
    }
    let pick = ring::backend(state.backend)?;
    Ok((state.vip, pick))
}
