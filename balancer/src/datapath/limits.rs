//! Per-source limits as the daemon writes and reads them: each VIP's
//! limits, the packets they dropped, and the table of sources.

use std::os::fd::AsFd as _;

use aya::maps::Array;
use balancer_common::{
    limit::{LimitCounters, SourceLimit, SourceSlot},
    maps::{self, MAX_VIPS},
};

use super::{Datapath, DatapathError, write::check_range};

/// Slots read per batched call.
const BATCH: usize = 8192;

impl Datapath {
    /// Writes the per-source limits of VIP `index` (zeros: none). Written
    /// before the address is marked as having limits, and zeroed for a VIP
    /// without, so that the program never reads another VIP's limits.
    pub fn set_vip_limit(&mut self, index: u32, limit: &SourceLimit) -> Result<(), DatapathError> {
        check_range("VIP index", index, MAX_VIPS)?;
        let mut map: Array<_, SourceLimit> = self.map_mut(maps::VIP_LIMITS)?;
        map.set(index, limit, 0)
            .map_err(DatapathError::map("write", maps::VIP_LIMITS))
    }

    /// What the limits dropped, for the first `vips` VIP indexes.
    pub fn limit_counters(&self, vips: u32) -> Result<Vec<LimitCounters>, DatapathError> {
        self.sum_all(maps::LIMIT_STATS, vips, LimitCounters::merged)
    }

    /// Every slot of the table of sources, by index, read in batches.
    pub fn sources(&self) -> Result<Vec<SourceSlot>, DatapathError> {
        let name = maps::SOURCES;
        let Some(aya::maps::Map::Array(data)) = self.ebpf.map(name) else {
            return Err(DatapathError::MissingMap { name });
        };
        super::batch::lookup_all::<u32, SourceSlot>(data.fd().as_fd(), BATCH)
            .map(|slots| slots.into_iter().map(|(_, slot)| slot).collect())
            .map_err(|source| DatapathError::MapBatch { name, source })
    }

    /// Empties slot `index` of the table of sources, as when another
    /// source takes it: its source starts with full buckets.
    pub fn forget_source(&mut self, index: u32) -> Result<(), DatapathError> {
        let mut map: Array<_, SourceSlot> = self.map_mut(maps::SOURCES)?;
        map.set(index, SourceSlot::default(), 0)
            .map_err(DatapathError::map("write", maps::SOURCES))
    }
}
