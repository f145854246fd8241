//! What the maps hold, as far as this daemon has written them: the record
//! the reconciler compares the desired state against. It changes only by
//! committing a [`Write`] that succeeded, so it never claims more than the
//! maps hold, and a write that failed is simply made again next time.

use std::collections::{BTreeMap, BTreeSet};

use balancer_common::{
    access::AccessKey,
    backend::BackendInfo,
    limit::SourceLimit,
    nat::{Hop, NatBackend, RouteKey, SnatPool},
    settings::Settings,
    tunnel::TunnelInfo,
    vip::{AddrInfo, AddrKey, VipPolicy},
};

use crate::{
    config::PortSpan,
    datapath::{Pinned, VipSlot, Write},
    maglev::Member,
};

/// What a VIP's ring is built from: ring size, VIP flags (scheduler and
/// persistence) and members. The same recipe makes the same ring.
pub(super) type Recipe = (u32, u32, Vec<Member>);

/// The maps' content as written.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Published {
    pub(super) settings: Option<Settings>,
    /// VIP indexes and backend ids whose counters belong to their current
    /// owners (zeroed when handed out, or adopted from the pins).
    pub(super) numbers: Numbers,
    /// Backend id → what its entries hold.
    pub(super) backends: BTreeMap<u32, BackendRecord>,
    /// Interfaces the program may redirect to.
    pub(super) egress: BTreeSet<u32>,
    /// VIP index → what is written for it.
    pub(super) vips: BTreeMap<u32, VipRecord>,
    /// Addresses that carry VIPs.
    pub(super) addrs: Vec<(AddrKey, AddrInfo)>,
    /// The allow and deny lists' entries.
    pub(super) access: BTreeMap<AccessKey, u32>,
    /// The SNAT pools.
    pub(super) snat_pools: Option<[SnatPool; 2]>,
    /// The source ports.
    pub(super) snat_ports: Option<PortSpan>,
    /// The routes toward clients.
    pub(super) nat_routes: BTreeMap<RouteKey, Hop>,
}

/// VIP indexes and backend ids.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Numbers {
    pub(super) vips: BTreeSet<u32>,
    pub(super) backends: BTreeSet<u32>,
}

/// One backend's entries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct BackendRecord {
    pub(super) info: Option<BackendInfo>,
    pub(super) weight: Option<u32>,
    pub(super) latency_us: Option<u32>,
    pub(super) tunnel: Option<TunnelInfo>,
    pub(super) nat: Option<NatBackend>,
}

/// One VIP's entries.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct VipRecord {
    /// Its key and info (the key is in `vips` once its ring is).
    pub(super) slot: VipSlot,
    pub(super) policy: Option<VipPolicy>,
    pub(super) limit: Option<SourceLimit>,
    pub(super) ring: Option<Ring>,
    /// Every backend is down or unreachable: the ring is the last one,
    /// kept rather than dropping the VIP's traffic.
    pub(super) all_down: bool,
    /// It has no ring and no backend of weight above 0: its traffic
    /// passes (said once, when it becomes so).
    pub(super) unweighted: bool,
    /// It panics: every backend is written up (said once, when it starts
    /// and when it ends).
    pub(super) panicking: bool,
}

/// A VIP's ring in force and what it was built from.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Ring {
    pub(super) entries: Vec<u32>,
    /// None for a ring adopted from the pins: its content is not known, so
    /// it is rebuilt and compared like any other, and removed with its
    /// VIP.
    pub(super) recipe: Option<Recipe>,
}

impl Published {
    /// What a previous daemon left in the pinned maps: its VIP keys (each
    /// with a ring of unknown content), addresses, backend entries, list
    /// entries, and the numbers whose counters they own. What the configuration does
    /// not have is then removed by the first reconcile, like anything a
    /// reload removes; what it has is rewritten where it differs.
    pub(super) fn adopting(pinned: &Pinned) -> Published {
        let vips = pinned
            .vips
            .iter()
            .map(|(key, info)| {
                let mut record = VipRecord::new(VipSlot {
                    key: *key,
                    info: *info,
                });
                record.ring = Some(Ring {
                    entries: Vec::new(),
                    recipe: None,
                });
                (info.index, record)
            })
            .collect();
        let backends = pinned
            .backends
            .iter()
            .map(|(id, info)| {
                let record = BackendRecord {
                    info: Some(*info),
                    ..BackendRecord::default()
                };
                (*id, record)
            })
            .collect();
        Published {
            numbers: Numbers {
                vips: pinned.vips.iter().map(|(_, info)| info.index).collect(),
                backends: pinned.backends.iter().map(|(id, _)| *id).collect(),
            },
            backends,
            vips,
            addrs: pinned.addrs.clone(),
            access: pinned.access.iter().copied().collect(),
            nat_routes: pinned.nat_routes.iter().copied().collect(),
            ..Published::default()
        }
    }

    /// VIP `slot`'s record, if what is written is for that very slot (an
    /// index handed to another VIP, or a VIP moved to another key or
    /// scheduler, has nothing written yet).
    pub(super) fn vip(&self, slot: &VipSlot) -> Option<&VipRecord> {
        self.vips.get(&slot.info.index).filter(|r| r.slot == *slot)
    }

    /// Backend `id`'s record (empty when nothing is written).
    pub(super) fn backend(&self, id: u32) -> BackendRecord {
        self.backends.get(&id).copied().unwrap_or_default()
    }

    /// Records `write`, which succeeded. A ring written is recorded
    /// without its recipe, which [`super::reconcile::apply`] adds once every
    /// write is in (a ring without one is rebuilt and compared next time).
    /// written was built from.
    pub(super) fn commit(&mut self, write: &Write) {
        match write {
            Write::Settings(settings) => self.settings = Some(*settings),
            Write::ResetNumbers { vips, backends } => {
                self.numbers.vips.extend(vips);
                self.numbers.backends.extend(backends);
            }
            Write::RemoveVips(slots) => {
                for slot in slots {
                    self.vips.remove(&slot.info.index);
                }
            }
            Write::RemoveAddr(key) => self.addrs.retain(|(k, _)| k != key),
            Write::Weight { id, weight } => {
                self.backends.entry(*id).or_default().weight = Some(*weight);
            }
            Write::Latency { id, us } => {
                self.backends.entry(*id).or_default().latency_us = Some(*us);
            }
            Write::Egress(ifindex) => {
                self.egress.insert(*ifindex);
            }
            Write::Backend { id, info } => {
                self.backends.entry(*id).or_default().info = Some(*info);
            }
            Write::Tunnel { id, tunnel } => {
                self.backends.entry(*id).or_default().tunnel = Some(*tunnel);
            }
            Write::NatBackend { id, nat } => {
                self.backends.entry(*id).or_default().nat = Some(*nat);
            }
            Write::SnatPools(pools) => self.snat_pools = Some(**pools),
            Write::SnatPorts(ports) => self.snat_ports = Some(*ports),
            Write::NatRoutes(routes) => self.nat_routes.extend(routes.iter().copied()),
            Write::RemoveNatRoutes(keys) => {
                for key in keys {
                    self.nat_routes.remove(key);
                }
            }
            Write::Policy { slot, policy } => self.vip_mut(slot).policy = Some(*policy),
            Write::Limit { slot, limit } => self.vip_mut(slot).limit = Some(*limit),
            Write::Rings(rings) => {
                for (slot, entries) in rings {
                    let record = self.vip_mut(slot);
                    record.ring = Some(Ring {
                        entries: entries.clone(),
                        recipe: None,
                    });
                    record.all_down = false;
                }
            }
            Write::Addr { key, info } => match self.addrs.iter_mut().find(|(k, _)| k == key) {
                Some((_, old)) => *old = *info,
                None => self.addrs.push((*key, *info)),
            },
            Write::Access(entries) => self.access.extend(entries.iter().copied()),
            Write::RemoveAccess(keys) => {
                for key in keys {
                    self.access.remove(key);
                }
            }
        }
    }

    /// VIP `slot`'s record, replacing one written for another slot at its
    /// index.
    fn vip_mut(&mut self, slot: &VipSlot) -> &mut VipRecord {
        let record = self
            .vips
            .entry(slot.info.index)
            .or_insert_with(|| VipRecord::new(*slot));
        if record.slot != *slot {
            *record = VipRecord::new(*slot);
        }
        record
    }
}

impl VipRecord {
    pub(super) fn new(slot: VipSlot) -> VipRecord {
        VipRecord {
            slot,
            policy: None,
            limit: None,
            ring: None,
            all_down: false,
            unweighted: false,
            panicking: false,
        }
    }
}
