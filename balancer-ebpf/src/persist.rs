//! Session persistence: the backend each client of a VIP last used, kept
//! in the `persist` table for the VIP's timeout after the client's last
//! packet. Deciding what a new flow gets is the orchestrator's (the crate
//! root); this module only reads and writes the table.

use balancer_common::{
    flow::FlowKey,
    persist::{PersistKey, PersistState},
    vip::VipInfo,
};

use crate::{
    maps::{BACKEND_LOAD, PERSIST, VIP_POLICY},
    ring::{self, Pick},
};

/// What the persistence table says of a new flow's client.
pub enum Client {
    /// Seen within the VIP's timeout on a backend that may take it: that
    /// backend (the entry is refreshed).
    Kept(Pick),
    /// Unknown, expired or on a backend that may not take it: the key to
    /// remember the scheduler's pick under.
    New(PersistKey),
    /// The VIP has no policy: no persistence.
    Off,
}

/// The client of new flow `key` of `vip` (a VIP with persistence).
#[inline(always)]
pub fn client(vip: &VipInfo, key: &FlowKey, now: u64) -> Client {
    let Some(policy) = VIP_POLICY.get(vip.index) else {
        return Client::Off;
    };
    let client = client_key(vip.index, key, &policy.client_mask);
    if let Some(state) = PERSIST.get_ptr_mut(client) {
        // SAFETY: the entry stays valid for this run; a concurrent writer
        // can only replace whole values of plain integers.
        let state = unsafe { &mut *state };
        if now.saturating_sub(state.last_seen_ns) <= policy.persist_ns
            && let Some(pick) = usable(state.backend, vip.index)
        {
            state.last_seen_ns = now;
            return Client::Kept(pick);
        }
    }
    Client::New(client)
}

/// Remembers that `client` now uses `pick`.
#[inline(always)]
pub fn remember(client: PersistKey, pick: &Pick, now: u64) {
    let state = PersistState {
        backend: pick.id,
        _pad: 0,
        last_seen_ns: now,
    };
    let _ = PERSIST.insert(client, state, 0);
}

/// Backend `id` if it may take a persistent client's new flow: up, still a
/// backend of VIP `vip_index`, and not draining.
#[inline(always)]
fn usable(id: u32, vip_index: u32) -> Option<Pick> {
    let pick = ring::backend(id).ok()?;
    if !pick.backend.is_up() || pick.backend.vip != vip_index {
        return None;
    }
    if BACKEND_LOAD.get(id)?.weight == 0 {
        return None;
    }
    Some(pick)
}

/// Keeps the persistence of flow `key`'s client alive while the flow
/// carries packets (called at most once a second per flow), if VIP
/// `vip_index` has persistence and the client still maps to `backend`.
#[inline(always)]
pub fn touch(vip_index: u32, key: &FlowKey, backend: u32, now: u64) {
    let Some(policy) = VIP_POLICY.get(vip_index) else {
        return;
    };
    if policy.persist_ns == 0 {
        return;
    }
    let client = client_key(vip_index, key, &policy.client_mask);
    if let Some(state) = PERSIST.get_ptr_mut(client) {
        // SAFETY: as in `client`.
        let state = unsafe { &mut *state };
        if state.backend == backend {
            state.last_seen_ns = now;
        }
    }
}

/// The persistence key of flow `key`'s client at VIP `vip_index`: its
/// address under the VIP's client mask.
#[inline(always)]
fn client_key(vip_index: u32, key: &FlowKey, mask: &[u32; 4]) -> PersistKey {
    let a = &key.src;
    PersistKey {
        client: [
            a[0] & mask[0],
            a[1] & mask[1],
            a[2] & mask[2],
            a[3] & mask[3],
        ],
        vip: vip_index,
    }
}
