//! A read-only view of the daemon's state: what control answers and
//! metrics scrapes are built from. It reads the three parts of the state
//! and the datapath's counters, and changes nothing.

use balancer_common::vip::counts_connections;

use super::{
    announcer::Announcer, desired::Desired, effective::Effective, gates, observed::Observed,
    published::Published, sharing::Sharing,
};
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
    /// The announcements, with `[announce]`.
    pub(super) announcer: Option<&'a Announcer>,
    /// The flows shared with peers, with `[sync]`.
    pub(super) sharing: Option<&'a Sharing>,
}

impl View<'_> {
    /// The plan in force.
    pub(super) fn plan(&self) -> &crate::plan::Plan {
        &self.desired.plan
    }

    /// Every VIP of the plan with its configuration, in file order.
    pub(super) fn vips(
        &self,
    ) -> impl Iterator<Item = (&crate::plan::VipPlan, &crate::config::VipConfig)> {
        self.desired.vips()
    }

    /// The availability policies' verdicts now: slow starts, panics.
    pub(super) fn effective(&self) -> Effective {
        Effective::of(self.desired, self.observed, std::time::Instant::now())
    }

    /// What the gates of the announcements are given: per VIP whether
    /// the maps hold it and how many of its backends they let take new
    /// flows, of those whose health is known (see
    /// [`super::observed::Seen::confirmed`]) and good: a VIP that panics
    /// writes its down backends up, and they do not count.
    pub(super) fn gate_inputs(&self) -> Vec<gates::Input> {
        self.vips()
            .map(|(vip, config)| {
                // As `VipPlan::members` counts them, without making them.
                let up = vip
                    .backends
                    .iter()
                    .filter(|b| {
                        b.weight > 0
                            && self.observed.confirmed(b.id)
                            && self.observed.is_up(b.id)
                            && self
                                .published
                                .backend(b.id)
                                .info
                                .is_some_and(|info| info.is_usable())
                    })
                    .count();
                gates::Input {
                    name: vip.name.clone(),
                    // As the maps hold it: an IPv4-mapped address is IPv4.
                    address: config.address.get_ref().to_canonical(),
                    in_maps: self
                        .published
                        .vip(&vip.slot)
                        .is_some_and(|r| r.ring.is_some()),
                    up,
                    min_healthy: config.min_healthy(),
                }
            })
            .collect()
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
