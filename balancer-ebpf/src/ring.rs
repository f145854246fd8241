//! Reads of a VIP's ring and of the backends it names. A VIP's ring
//! (`rings_mm[vip]`) has the Maglev layout (as many slots as the settings'
//! ring size) for the hashing schedulers, or the list layout (length slot,
//! then the entries; balancer-common's) for the others.

use balancer_common::{
    backend::BackendInfo,
    hash::ring_slot,
    settings::Settings,
    stats::Stat,
    vip::{LIST_LEN_SLOT, list_slot},
};

use crate::maps::{BACKENDS, RINGS, Ring};

/// A backend picked for a packet.
pub struct Pick {
    pub id: u32,
    pub backend: &'static BackendInfo,
}

/// Backend `id`, as a pick.
#[inline(always)]
pub fn backend(id: u32) -> Result<Pick, Stat> {
    let backend = BACKENDS.get(id).ok_or(Stat::DROP_NO_BACKEND)?;
    Ok(Pick { id, backend })
}

/// Slot `slot` of a VIP's ring.
#[inline(always)]
pub fn entry(ring: &Ring, slot: u32) -> Result<u32, Stat> {
    ring.get(slot).copied().ok_or(Stat::DROP_NO_BACKEND)
}

/// Entry `i` (from 0) of a list ring.
#[inline(always)]
pub fn list_entry(ring: &Ring, i: u32) -> Result<u32, Stat> {
    entry(ring, list_slot(i))
}

/// The ring of VIP `vip_index`, in the list layout, and its length (never
/// 0): the ring of every scheduler that is not a hash.
#[inline(always)]
pub fn list_ring(vip_index: u32) -> Result<(&'static Ring, u32), Stat> {
    let ring = RINGS.get(vip_index).ok_or(Stat::DROP_NO_BACKEND)?;
    match entry(ring, LIST_LEN_SLOT)? {
        0 => Err(Stat::DROP_NO_BACKEND),
        len => Ok((ring, len)),
    }
}

/// The backend at the slot `hash` selects in VIP `vip_index`'s ring: a
/// Maglev ring of the settings' size, or a list ring (`list`) indexed
/// modulo its length.
#[inline(always)]
pub fn at_hash(vip_index: u32, hash: u32, list: bool, settings: &Settings) -> Result<Pick, Stat> {
    let id = if list {
        let (ring, len) = list_ring(vip_index)?;
        list_entry(ring, hash % len)?
    } else {
        let ring = RINGS.get(vip_index).ok_or(Stat::DROP_NO_BACKEND)?;
        entry(ring, ring_slot(hash, settings.ring_size))?
    };
    backend(id)
}
