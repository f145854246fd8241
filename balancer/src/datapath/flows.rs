//! The connection table as the daemon sees it: read whole (in batches),
//! expired entries removed, and the clock its times are on; the handshake
//! table, read likewise.

use std::os::fd::AsFd as _;

use aya::maps::HashMap;
use balancer_common::{
    flow::{FlowKey, FlowState},
    maps,
};

use super::{Datapath, DatapathError};

/// Entries read per batched call.
const CHUNK: usize = 4096;

impl Datapath {
    /// Every entry of the connection table. Entries written during the
    /// read may be missed; the program is not slowed (it never waits for
    /// the reader).
    pub fn flows(&self) -> Result<Vec<(FlowKey, FlowState)>, DatapathError> {
        self.read_flow_table(maps::FLOWS)
    }

    /// Every entry of the handshake table (new flows between their first
    /// and next packet), read as [`Datapath::flows`] reads the connection
    /// table.
    pub fn handshakes(&self) -> Result<Vec<(FlowKey, FlowState)>, DatapathError> {
        self.read_flow_table(maps::HANDSHAKES)
    }

    fn read_flow_table(
        &self,
        name: &'static str,
    ) -> Result<Vec<(FlowKey, FlowState)>, DatapathError> {
        let Some(aya::maps::Map::LruHashMap(data)) = self.ebpf.map(name) else {
            return Err(DatapathError::MissingMap { name });
        };
        super::batch::lookup_all(data.fd().as_fd(), CHUNK)
            .map_err(|source| DatapathError::MapBatch { name, source })
    }

    /// Removes `keys` from the connection table (entries found expired);
    /// a key already gone is not an error.
    pub fn remove_flows(&mut self, keys: &[FlowKey]) -> Result<(), DatapathError> {
        self.remove_from(maps::FLOWS, keys)
    }

    /// Removes `keys` from the handshake table, as [`Datapath::remove_flows`]
    /// does from the connection table.
    pub fn remove_handshakes(&mut self, keys: &[FlowKey]) -> Result<(), DatapathError> {
        self.remove_from(maps::HANDSHAKES, keys)
    }

    fn remove_from(&mut self, name: &'static str, keys: &[FlowKey]) -> Result<(), DatapathError> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut map: HashMap<_, FlowKey, FlowState> = self.map_mut(name)?;
        for key in keys {
            // The datapath may have evicted or replaced it since it was read.
            super::removed(name, map.remove(key))?;
        }
        Ok(())
    }
}

/// The time on the program's clock (`bpf_ktime_get_coarse_ns`, the
/// monotonic clock at tick resolution) in nanoseconds, to age the
/// connection table's entries.
pub fn now_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC_COARSE)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}
