//! A read-only view of the daemon's state: what control answers and
//! metrics scrapes are built from. It reads the three parts of the state
//! and the datapath's counters, and changes nothing.

use balancer_common::vip::counts_connections;

use super::{desired::Desired, observed::Observed, published::Published};
use crate::datapath::Datapath;

/// The state as answers see it.
pub(super) struct View<'a> {
    pub(super) desired: &'a Desired,
    pub(super) observed: &'a Observed,
    pub(super) published: &'a Published,
    pub(super) datapath: &'a Datapath,
    /// Where the metrics are served, "off", or why they are not.
    pub(super) metrics_endpoint: &'a str,
    /// Why the maps are behind the desired state, if they are.
    pub(super) maps_error: Option<&'a str>,
    /// Sets of map writes that failed since the daemon started.
    pub(super) write_failures: u64,
}

impl View<'_> {
    /// The plan in force.
    pub(super) fn plan(&self) -> &crate::plan::Plan {
        &self.desired.plan
    }

    /// Whether backend `id` is up.
    pub(super) fn is_up(&self, id: u32) -> bool {
        self.observed.is_up(id)
    }

    /// up, down or draining (up with weight 0).
    pub(super) fn backend_state(&self, id: u32, weight: u32) -> &'static str {
        match (self.is_up(id), weight) {
            (false, _) => "down",
            (true, 0) => "draining",
            (true, _) => "up",
        }
    }

    /// Whether VIP `index` keeps its last ring because every backend is
    /// down or unreachable.
    pub(super) fn all_down(&self, index: u32) -> bool {
        self.published.vips.get(&index).is_some_and(|r| r.all_down)
    }

    /// Open connections of backend `id` of a VIP with `flags`: the
    /// datapath's count for the least-* schedulers (a TCP connection until
    /// its FIN or RST), else the backend's live connection-table entries
    /// at the last scan.
    pub(super) fn active_connections(&self, flags: u32, id: u32) -> anyhow::Result<u64> {
        Ok(if counts_connections(flags) {
            self.datapath.backend_load(id)?.active()
        } else {
            self.observed.get(id).map_or(0, |seen| seen.live)
        })
    }
}
