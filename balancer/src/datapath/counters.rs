//! Reading the per-CPU counters, summed over CPUs.

use aya::maps::{MapData, PerCpuArray, PerCpuValues};
use balancer_common::{
    access::{ACCESS_NO_VIP, AccessCounters, AccessKey},
    backend::BackendInfo,
    limit::LimitCounters,
    maps,
    stats::{Event, FlowCounters, PacketCount, STATS_SLOTS, Stat},
    vip::{AddrInfo, AddrKey, VipInfo, VipKey},
};

use super::{Datapath, DatapathError};

/// The global counters: one per verdict reason and one per event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reasons {
    slots: Vec<PacketCount>,
}

impl Reasons {
    /// The count of verdict reason `stat`.
    pub fn stat(&self, stat: Stat) -> PacketCount {
        self.slots.get(stat.0 as usize).copied().unwrap_or_default()
    }

    /// The count of event `event`.
    pub fn event(&self, event: Event) -> PacketCount {
        self.slots
            .get(event.slot() as usize)
            .copied()
            .unwrap_or_default()
    }

    /// Every counter with its name: reasons, then events.
    pub fn named(&self) -> impl Iterator<Item = (&'static str, PacketCount)> + '_ {
        self.verdicts().chain(self.events())
    }

    /// Every verdict reason with its name; each frame counts in one.
    pub fn verdicts(&self) -> impl Iterator<Item = (&'static str, PacketCount)> + '_ {
        Stat::ALL.iter().map(|s| (s.name(), self.stat(*s)))
    }

    /// Every event with its name, counted on top of the verdicts.
    pub fn events(&self) -> impl Iterator<Item = (&'static str, PacketCount)> + '_ {
        Event::ALL.iter().map(|e| (e.name(), self.event(*e)))
    }
}

/// Elements per BPF_MAP_LOOKUP_BATCH call of a counter array.
const BATCH_CHUNK: u32 = 1024;

/// Every counter, as one scrape reads them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllCounters {
    /// The global counters.
    pub reasons: Reasons,
    /// By VIP index, from 0.
    pub vips: Vec<FlowCounters>,
    /// By backend id, from 0.
    pub backends: Vec<FlowCounters>,
    /// Drops by the allow and deny lists, by VIP index, then the slot
    /// of packets to no VIP's port ([`ACCESS_NO_VIP`]).
    pub access: Vec<AccessCounters>,
    /// Drops by the per-source limits, by VIP index, from 0.
    pub limits: Vec<LimitCounters>,
}

/// What the `vips`, `vip_addrs` and `backends` maps hold when they are
/// adopted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pinned {
    pub vips: Vec<(VipKey, VipInfo)>,
    pub addrs: Vec<(AddrKey, AddrInfo)>,
    /// Backend ids in use, with their records.
    pub backends: Vec<(u32, BackendInfo)>,
    /// The allow and deny lists' entries.
    pub access: Vec<(AccessKey, u32)>,
    /// The routes toward clients of NAT replies.
    pub nat_routes: Vec<(balancer_common::nat::RouteKey, balancer_common::nat::Hop)>,
}

impl Datapath {
    /// What pinned maps adopted from a previous daemon hold: every VIP key
    /// with its info, every VIP address, and every backend id in use with
    /// its record. Empty for fresh maps.
    pub fn pinned(&self) -> Result<Pinned, DatapathError> {
        let map = self
            .ebpf
            .map(maps::BACKENDS)
            .ok_or(DatapathError::MissingMap {
                name: maps::BACKENDS,
            })?;
        let array: aya::maps::Array<_, BackendInfo> =
            aya::maps::Array::try_from(map).map_err(DatapathError::map("open", maps::BACKENDS))?;
        let mut backends = Vec::new();
        for (id, info) in array.iter().enumerate() {
            let info = info.map_err(DatapathError::map("read", maps::BACKENDS))?;
            if info != BackendInfo::default() {
                backends.push((id as u32, info));
            }
        }
        Ok(Pinned {
            vips: self.hash_entries(maps::VIPS)?,
            addrs: self.hash_entries(maps::VIP_ADDRS)?,
            backends,
            access: self.access_entries()?,
            nat_routes: self.nat_routes()?,
        })
    }

    /// Every entry of the hash map `name`.
    fn hash_entries<K: aya::Pod, V: aya::Pod>(
        &self,
        name: &'static str,
    ) -> Result<Vec<(K, V)>, DatapathError> {
        let map = self
            .ebpf
            .map(name)
            .ok_or(DatapathError::MissingMap { name })?;
        let map: aya::maps::HashMap<_, K, V> =
            aya::maps::HashMap::try_from(map).map_err(DatapathError::map("open", name))?;
        map.iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(DatapathError::map("read", name))
    }

    /// Reads the global counters.
    pub fn reasons(&self) -> Result<Reasons, DatapathError> {
        let slots = self.sum_all(maps::STATS, STATS_SLOTS, PacketCount::merged)?;
        Ok(Reasons { slots })
    }

    /// Reads the counters of VIP `index`.
    pub fn vip_counters(&self, index: u32) -> Result<FlowCounters, DatapathError> {
        let map = self.percpu::<FlowCounters>(maps::VIP_STATS)?;
        map.get(&index, 0)
            .map(|v| sum(&v, FlowCounters::merged))
            .map_err(DatapathError::map("read", maps::VIP_STATS))
    }

    /// Reads the counters of backend `id`.
    pub fn backend_counters(&self, id: u32) -> Result<FlowCounters, DatapathError> {
        let map = self.percpu::<FlowCounters>(maps::BACKEND_STATS)?;
        map.get(&id, 0)
            .map(|v| sum(&v, FlowCounters::merged))
            .map_err(DatapathError::map("read", maps::BACKEND_STATS))
    }

    /// Every counter at once, for a metrics scrape: the global counters
    /// and the first `vips` VIP and `backends` backend slots, each map
    /// read in a few batched calls (BPF_MAP_LOOKUP_BATCH) rather than one
    /// call per slot.
    pub fn all_counters(&self, vips: u32, backends: u32) -> Result<AllCounters, DatapathError> {
        let slots = self.sum_all(maps::STATS, STATS_SLOTS, PacketCount::merged)?;
        Ok(AllCounters {
            reasons: Reasons { slots },
            vips: self.sum_all(maps::VIP_STATS, vips, FlowCounters::merged)?,
            backends: self.sum_all(maps::BACKEND_STATS, backends, FlowCounters::merged)?,
            access: self.access_counters()?,
            limits: self.limit_counters(vips)?,
        })
    }

    /// What the allow and deny lists dropped, by VIP index, then the slot
    /// of packets to no VIP's port ([`ACCESS_NO_VIP`]).
    pub fn access_counters(&self) -> Result<Vec<AccessCounters>, DatapathError> {
        self.sum_all(
            maps::ACCESS_STATS,
            ACCESS_NO_VIP + 1,
            AccessCounters::merged,
        )
    }

    /// Zeroes the counters of VIP indexes `vips` and backend ids
    /// `backends` on every CPU.
    pub fn reset_counters(&mut self, vips: &[u32], backends: &[u32]) -> Result<(), DatapathError> {
        self.zero::<FlowCounters>(maps::VIP_STATS, vips)?;
        self.zero::<FlowCounters>(maps::BACKEND_STATS, backends)?;
        self.zero::<AccessCounters>(maps::ACCESS_STATS, vips)?;
        self.zero::<LimitCounters>(maps::LIMIT_STATS, vips)
    }

    /// Zeroes entries `indexes` of per-CPU array `name` on every CPU.
    fn zero<V: aya::Pod + Default>(
        &mut self,
        name: &'static str,
        indexes: &[u32],
    ) -> Result<(), DatapathError> {
        if indexes.is_empty() {
            return Ok(());
        }
        let cpus = aya::util::nr_cpus()
            .map_err(|(_, err)| DatapathError::MapBatch { name, source: err })?;
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(DatapathError::MissingMap { name })?;
        let mut array: PerCpuArray<&mut MapData, V> =
            PerCpuArray::try_from(map).map_err(DatapathError::map("open", name))?;
        for index in indexes {
            let zeros = PerCpuValues::try_from(vec![V::default(); cpus])
                .map_err(|err| DatapathError::MapBatch { name, source: err })?;
            array
                .set(*index, zeros, 0)
                .map_err(DatapathError::map("write", name))?;
        }
        Ok(())
    }

    pub(super) fn sum_all<V: aya::Pod + Default>(
        &self,
        name: &'static str,
        entries: u32,
        merge: fn(V, V) -> V,
    ) -> Result<Vec<V>, DatapathError> {
        use std::os::fd::AsFd as _;
        let Some(aya::maps::Map::PerCpuArray(data)) = self.ebpf.map(name) else {
            return Err(DatapathError::MissingMap { name });
        };
        super::batch::sum_percpu_array(data.fd().as_fd(), entries, BATCH_CHUNK, merge)
            .map_err(|source| DatapathError::MapBatch { name, source })
    }

    fn percpu<V: aya::Pod>(
        &self,
        name: &'static str,
    ) -> Result<PerCpuArray<&MapData, V>, DatapathError> {
        let map = self
            .ebpf
            .map(name)
            .ok_or(DatapathError::MissingMap { name })?;
        PerCpuArray::try_from(map).map_err(DatapathError::map("open", name))
    }
}

fn sum<V: aya::Pod + Default>(values: &PerCpuValues<V>, merge: fn(V, V) -> V) -> V {
    values.iter().fold(V::default(), |acc, v| merge(acc, *v))
}
