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
    parse::{Fragment, Ip},
    ring::{self, Pick},
};

/// The table's key for fragment `f` of `ip`.
#[inline(always)]
fn key(ip: &Ip, f: &Fragment) -> FragmentKey {
    FragmentKey::new(ip.src, ip.dst, f.id, ip.proto)
}

/// Records that the first fragment `f` of `ip` went to `pick` of VIP
/// `vip`. A full table forgets its least recently used datagram.
#[inline(always)]
pub fn admit(ip: &Ip, f: &Fragment, vip: u32, pick: &Pick, now: u64) {
    let state = FragmentState {
        backend: pick.id,
        vip,
        first_ns: now,
    };
    let _ = FRAGMENTS.insert(key(ip, f), state, 0);
}

/// Where the later fragment `f` of `ip` goes: the VIP and backend of its
/// datagram's first fragment, if that was admitted within
/// [`FRAGMENT_WINDOW_NS`].
#[inline(always)]
pub fn follow(ip: &Ip, f: &Fragment, now: u64) -> Result<(u32, Pick), Stat> {
    let Some(state) = FRAGMENTS.get_ptr(key(ip, f)) else {
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
