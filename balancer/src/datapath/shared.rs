//! Flows shared between balancer hosts, at the maps: the ring buffer in
//! which the program tells of new connection-table entries, and entries
//! put in for flows a peer host placed.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use aya::maps::{HashMap, MapData, RingBuf};
use balancer_common::{
    flow::{FlowEvent, FlowKey, FlowState, LAST_SEEN_GRANULARITY_NS},
    maps,
};

use super::{Datapath, DatapathError};

/// `BPF_NOEXIST`: an entry already there is kept.
const BPF_NOEXIST: u64 = 1;
/// `BPF_EXIST`: only an entry already there is written.
const BPF_EXIST: u64 = 2;

/// The program's new-flow events. Read them with [`FlowEvents::drain`]
/// whenever the descriptor is readable.
pub struct FlowEvents {
    ring: RingBuf<MapData>,
}

impl FlowEvents {
    /// Calls `each` for every event waiting; returns how many there were.
    pub fn drain(&mut self, mut each: impl FnMut(FlowEvent)) -> usize {
        let mut n = 0;
        while let Some(item) = self.ring.next() {
            if item.len() >= size_of::<FlowEvent>() {
                // SAFETY: the program writes whole `FlowEvent`s, plain data
                // of this size; the read does not assume alignment.
                each(unsafe { item.as_ptr().cast::<FlowEvent>().read_unaligned() });
                n += 1;
            }
        }
        n
    }
}

impl AsFd for FlowEvents {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.ring.as_fd()
    }
}

impl AsRawFd for FlowEvents {
    fn as_raw_fd(&self) -> RawFd {
        self.ring.as_raw_fd()
    }
}

/// What putting in peers' flows did.
#[derive(Debug, Default)]
pub struct Inserted {
    /// Entries put in.
    pub new: usize,
    /// Entries the table held on the same backend, their last packet
    /// moved up to the peer's.
    pub refreshed: usize,
    /// Entries kept because the table already held the flow (this host's
    /// own entry wins).
    pub existing: usize,
    /// Entries not made because `max_new` were made already.
    pub over_budget: usize,
    /// Entries the kernel refused otherwise, and the last error.
    pub failed: usize,
    pub error: Option<DatapathError>,
}

impl Datapath {
    /// Takes the ring buffer of new-flow events (once).
    pub fn take_flow_events(&mut self) -> Result<FlowEvents, DatapathError> {
        let name = maps::FLOW_EVENTS;
        let map = self
            .ebpf
            .take_map(name)
            .ok_or(DatapathError::MissingMap { name })?;
        let ring = RingBuf::try_from(map).map_err(DatapathError::map("open", name))?;
        Ok(FlowEvents { ring })
    }

    /// Puts `entries` in the connection table where it does not hold the
    /// flow already; where it holds it on the same backend, moves its last
    /// packet's time up to the entry's (a peer still sees the flow: it
    /// must not expire here). At most `max_new` entries are made. An entry
    /// refused does not stop the others.
    pub fn insert_flows(&mut self, entries: &[(FlowKey, FlowState)], max_new: usize) -> Inserted {
        let name = maps::FLOWS;
        let mut out = Inserted::default();
        let mut map: HashMap<_, FlowKey, FlowState> = match self.map_mut(name) {
            Ok(map) => map,
            Err(err) => {
                out.failed = entries.len();
                out.error = Some(err);
                return out;
            }
        };
        for (key, state) in entries {
            // Looked up first: a write that finds the flow still takes a
            // free slot of the table (or evicts for one) before it fails.
            if let Ok(mut held) = map.get(key, 0) {
                let same = held.backend == state.backend && held.vip_index() == state.vip_index();
                if same && state.last_seen_ns > held.last_seen_ns + LAST_SEEN_GRANULARITY_NS {
                    held.last_seen_ns = state.last_seen_ns;
                    if map.insert(key, held, BPF_EXIST).is_ok() {
                        out.refreshed += 1;
                        continue;
                    }
                }
                out.existing += 1;
                continue;
            }
            if out.new >= max_new {
                out.over_budget += 1;
                continue;
            }
            match map.insert(key, state, BPF_NOEXIST) {
                Ok(()) => out.new += 1,
                Err(aya::maps::MapError::SyscallError(e))
                    if e.io_error.raw_os_error() == Some(libc::EEXIST) =>
                {
                    out.existing += 1;
                }
                Err(err) => {
                    out.failed += 1;
                    out.error = Some(DatapathError::map("insert into", name)(err));
                }
            }
        }
        out
    }
}
