//! Reads of a VIP's table and of the backends it names. A VIP's table
//! (`rings_mm[vip]`) is a Maglev ring of the settings' size for the hashing
//! schedulers, or a list (length slot, then the entries; the layout is
//! balancer-common's) for the others.

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

/// Slot `slot` of a VIP's table.
#[inline(always)]
pub fn entry(table: &Ring, slot: u32) -> Result<u32, Stat> {
    table.get(slot).copied().ok_or(Stat::DROP_NO_BACKEND)
}

/// Entry `i` (from 0) of a list table.
#[inline(always)]
pub fn list_entry(table: &Ring, i: u32) -> Result<u32, Stat> {
    entry(table, list_slot(i))
}

/// The list of VIP `vip_index` and its length (never 0): the table of
/// every scheduler that is not a hash.
#[inline(always)]
pub fn list(vip_index: u32) -> Result<(&'static Ring, u32), Stat> {
    let table = RINGS.get(vip_index).ok_or(Stat::DROP_NO_BACKEND)?;
    match entry(table, LIST_LEN_SLOT)? {
        0 => Err(Stat::DROP_NO_BACKEND),
        len => Ok((table, len)),
    }
}

/// The backend at the slot `hash` selects in VIP `vip_index`'s table: a
/// Maglev ring of the settings' size, or a list (`list`) indexed modulo
/// its length.
#[inline(always)]
pub fn at_hash(vip_index: u32, hash: u32, list: bool, settings: &Settings) -> Result<Pick, Stat> {
    let id = if list {
        let (table, len) = self::list(vip_index)?;
        list_entry(table, hash % len)?
    } else {
        let table = RINGS.get(vip_index).ok_or(Stat::DROP_NO_BACKEND)?;
        entry(table, ring_slot(hash, settings.ring_size))?
    };
    backend(id)
}
