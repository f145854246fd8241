//! Every write to the datapath's maps. The daemon decides what to write;
//! this module decides how, so that the program never sees a half-written
//! VIP: a VIP's ring is a fresh map, filled completely and then swapped in
//! with one update of `rings`, and a new VIP's key is inserted only after
//! its ring is in place.

use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::maps::{Array, HashMap, IterableMap as _, MapData, xdp::DevMapHash};
use balancer_common::{
    backend::BackendInfo,
    maps::{self, MAX_BACKENDS, MAX_VIPS, RING_FLAGS},
    settings::Settings,
    tunnel::TunnelInfo,
    vip::{AddrInfo, AddrKey, MAX_LIST_LEN, VipInfo, VipKey, VipPolicy, list_len},
};

use super::{Datapath, DatapathError};

/// Where a VIP lives in the datapath: its key and its index (ring and
/// counters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VipSlot {
    pub key: VipKey,
    pub info: VipInfo,
}

impl Datapath {
    /// Writes the settings. Must precede the first VIP: without settings
    /// the program treats every packet as not for a VIP.
    pub fn set_settings(&mut self, settings: &Settings) -> Result<(), DatapathError> {
        let mut map: Array<_, Settings> = self.map_mut(maps::SETTINGS)?;
        map.set(0, settings, 0)
            .map_err(DatapathError::map("write", maps::SETTINGS))?;
        self.ring_size = settings.ring_size;
        Ok(())
    }

    /// Writes backend `id`. Changing `flags` is how a backend goes down
    /// (flows fail over) or comes back.
    pub fn set_backend(&mut self, id: u32, backend: &BackendInfo) -> Result<(), DatapathError> {
        check_range("backend id", id, MAX_BACKENDS)?;
        let mut map: Array<_, BackendInfo> = self.map_mut(maps::BACKENDS)?;
        map.set(id, backend, 0)
            .map_err(DatapathError::map("write", maps::BACKENDS))
    }

    /// Writes the tunnel of backend `id` (the outer header's source, GUE's
    /// port), read for a backend whose entry says it is reached in IPIP or
    /// GUE: written before that entry.
    pub fn set_tunnel(&mut self, id: u32, tunnel: &TunnelInfo) -> Result<(), DatapathError> {
        check_range("backend id", id, MAX_BACKENDS)?;
        let mut map: Array<_, TunnelInfo> = self.map_mut(maps::TUNNELS)?;
        map.set(id, tunnel, 0)
            .map_err(DatapathError::map("write", maps::TUNNELS))
    }

    /// Puts VIP `slot` in place with `ring`, its ring: for the hashing
    /// schedulers the Maglev layout (backend ids, one per slot, as many as
    /// the settings' ring size), for the others the list layout (its
    /// length, then that many backend ids; see
    /// [`balancer_common::vip::list_len`]). For a VIP
    /// already in place this swaps its ring atomically: every packet sees
    /// the old ring or the new one, never a mix.
    pub fn publish_vip(&mut self, slot: &VipSlot, ring: &[u32]) -> Result<(), DatapathError> {
        self.publish_vips(&[(*slot, ring)])
    }

    /// [`Datapath::publish_vip`] for many VIPs, their rings swapped in with
    /// one batched update per [`RINGS_PER_BATCH`] VIPs, since each update
    /// of `rings` waits for an RCU grace period.
    pub fn publish_vips(&mut self, vips: &[(VipSlot, &[u32])]) -> Result<(), DatapathError> {
        for (slot, ring) in vips {
            check_range("VIP index", slot.info.index, MAX_VIPS)?;
            if slot.info.has_list() {
                if list_len(ring).is_none() {
                    return Err(DatapathError::ListSize {
                        len: ring.len(),
                        max: MAX_LIST_LEN,
                    });
                }
            } else if ring.len() != self.ring_size as usize {
                return Err(DatapathError::RingSize {
                    len: ring.len(),
                    expected: self.ring_size,
                });
            }
        }
        for chunk in vips.chunks(RINGS_PER_BATCH) {
            let inner = chunk
                .iter()
                .map(|(_, ring)| ring_map(ring))
                .collect::<Result<Vec<_>, _>>()?;
            let indices: Vec<u32> = chunk.iter().map(|(slot, _)| slot.info.index).collect();
            let fds: Vec<u32> = inner
                .iter()
                .map(|map| map.map().fd().as_fd().as_raw_fd() as u32)
                .collect();
            self.swap_rings(&indices, &fds)?;
            let mut keys: HashMap<_, VipKey, VipInfo> = self.map_mut(maps::VIPS)?;
            for (slot, _) in chunk {
                keys.insert(slot.key, slot.info, 0)
                    .map_err(DatapathError::map("write", maps::VIPS))?;
            }
        }
        Ok(())
    }

    /// Removes a VIP: its key first, so no new packet finds it, then its
    /// ring, replaced by a one-slot placeholder so the kernel frees the
    /// ring's memory once no program run uses it.
    pub fn remove_vip(&mut self, slot: &VipSlot) -> Result<(), DatapathError> {
        self.remove_vips(&[*slot])
    }

    /// [`Datapath::remove_vip`] for many VIPs, with one batched update of
    /// `rings` per [`RINGS_PER_BATCH`] VIPs.
    pub fn remove_vips(&mut self, slots: &[VipSlot]) -> Result<(), DatapathError> {
        if slots.is_empty() {
            return Ok(());
        }
        let mut keys: HashMap<_, VipKey, VipInfo> = self.map_mut(maps::VIPS)?;
        for slot in slots {
            keys.remove(&slot.key)
                .map_err(DatapathError::map("remove from", maps::VIPS))?;
        }
        let placeholder = Array::<MapData, u32>::create(1, RING_FLAGS)
            .map_err(DatapathError::map("create", "ring"))?;
        let fd = placeholder.map().fd().as_fd().as_raw_fd() as u32;
        for chunk in slots.chunks(RINGS_PER_BATCH) {
            let indices: Vec<u32> = chunk.iter().map(|slot| slot.info.index).collect();
            self.swap_rings(&indices, &vec![fd; indices.len()])?;
        }
        Ok(())
    }

    /// Points `rings[indices[i]]` at the map whose descriptor is `fds[i]`.
    fn swap_rings(&mut self, indices: &[u32], fds: &[u32]) -> Result<(), DatapathError> {
        let Some(aya::maps::Map::ArrayOfMaps(rings)) = self.ebpf.map(maps::RINGS) else {
            return Err(DatapathError::MissingMap { name: maps::RINGS });
        };
        super::batch::update_u32(rings.fd().as_fd(), indices, fds).map_err(|source| {
            DatapathError::RingSwap {
                vips: indices.len(),
                source,
            }
        })
    }

    /// Writes the policy of VIP `index` (persistence). Written before the
    /// VIP's key, and with zeros for a VIP without persistence, so that
    /// the program never reads another VIP's policy.
    pub fn set_vip_policy(&mut self, index: u32, policy: &VipPolicy) -> Result<(), DatapathError> {
        check_range("VIP index", index, MAX_VIPS)?;
        let mut map: Array<_, VipPolicy> = self.map_mut(maps::VIP_POLICY)?;
        map.set(index, policy, 0)
            .map_err(DatapathError::map("write", maps::VIP_POLICY))
    }

    /// Records that `key` (an address and protocol) carries VIPs.
    pub fn set_vip_addr(&mut self, key: &AddrKey, info: &AddrInfo) -> Result<(), DatapathError> {
        let mut map: HashMap<_, AddrKey, AddrInfo> = self.map_mut(maps::VIP_ADDRS)?;
        map.insert(key, info, 0)
            .map_err(DatapathError::map("write", maps::VIP_ADDRS))
    }

    /// Forgets an address that no longer carries VIPs.
    pub fn remove_vip_addr(&mut self, key: &AddrKey) -> Result<(), DatapathError> {
        let mut map: HashMap<_, AddrKey, AddrInfo> = self.map_mut(maps::VIP_ADDRS)?;
        map.remove(key)
            .map_err(DatapathError::map("remove from", maps::VIP_ADDRS))
    }

    /// Lets the program redirect frames to interface `ifindex` (backends
    /// reached through an interface other than the ingress one).
    pub fn add_egress(&mut self, ifindex: u32) -> Result<(), DatapathError> {
        let mut map: DevMapHash<_> = self.map_mut(maps::EGRESS)?;
        map.insert(ifindex, ifindex, None, 0)
            .map_err(|err| DatapathError::Egress {
                ifindex,
                source: Box::new(err),
            })
    }

    pub(super) fn map_mut<'a, M>(&'a mut self, name: &'static str) -> Result<M, DatapathError>
    where
        M: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
    {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(DatapathError::MissingMap { name })?;
        M::try_from(map).map_err(DatapathError::map("open", name))
    }
}

/// VIPs whose rings are swapped in by one batched update: few enough that
/// the inner maps' descriptors, open together, stay far below the common
/// limit of 1,024 open files.
pub const RINGS_PER_BATCH: usize = 128;

/// A fresh ring map holding `ring`, ready to be swapped into `rings`:
/// mmap-able, filled with one copy through a mapping of its memory (one
/// update call per slot took about 100 ms for a ring of 65,537 slots, one
/// batched call about 20 ms).
pub fn ring_map(ring: &[u32]) -> Result<Array<MapData, u32>, DatapathError> {
    let inner = Array::<MapData, u32>::create(ring.len() as u32, RING_FLAGS)
        .map_err(DatapathError::map("create", "ring"))?;
    super::mapped::write_u32_array(inner.map().fd().as_fd(), ring).map_err(|source| {
        DatapathError::RingFill {
            slots: ring.len(),
            source,
        }
    })?;
    Ok(inner)
}

pub(super) fn check_range(what: &'static str, value: u32, limit: u32) -> Result<(), DatapathError> {
    if value >= limit {
        return Err(DatapathError::OutOfRange {
            what,
            value,
            max: limit - 1,
        });
    }
    Ok(())
}
