//! What the datapath gets of each backend once its VIP's availability
//! policies apply ([`crate::availability`]): its weight, lower while it is
//! in slow start, and whether it is taken as up, which every backend of a
//! VIP that panics is. Pure: from the desired state, what was observed and
//! the time.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Instant,
};

use super::{desired::Desired, observed::Observed};
use crate::{
    availability::{self, Health, Ramp},
    plan::VipPlan,
};

/// The policies' verdicts at one moment.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Effective {
    /// Backend id → its slow start, for those in one.
    pub(super) ramps: BTreeMap<u32, Ramp>,
    /// VIP index → how much of its weight is up, for the VIPs with a
    /// panic threshold (the others need not know: the reconciler runs at
    /// every round and after every neighbour change, so the work is per
    /// VIP unless a policy asks for more).
    pub(super) health: BTreeMap<u32, Health>,
    /// The VIP indexes whose checks are not trusted: less than their
    /// `panic_threshold` of their weight is up.
    pub(super) panicking: BTreeSet<u32>,
}

impl Effective {
    /// The verdicts for `desired` as `observed` sees it at `now`.
    pub(super) fn of(desired: &Desired, observed: &Observed, now: Instant) -> Effective {
        let mut out = Effective::default();
        for (vip, config) in desired.vips() {
            let index = vip.slot.info.index;
            if let Some(threshold) = config.panic_threshold() {
                let health = health(vip, observed);
                out.health.insert(index, health);
                if health.panics(Some(threshold)) {
                    out.panicking.insert(index);
                }
            }
            let Some(length) = config.slow_start() else {
                continue;
            };
            for b in &vip.backends {
                let Some(from) = observed.get(b.id).and_then(|seen| seen.ramp_from) else {
                    continue;
                };
                if let Some(ramp) =
                    availability::ramp(b.weight, now.saturating_duration_since(from), length)
                {
                    out.ramps.insert(b.id, ramp);
                }
            }
        }
        out
    }

    /// The weight the datapath gets for backend `id` configured with
    /// `weight`.
    pub(super) fn weight(&self, id: u32, weight: u32) -> u32 {
        self.ramps.get(&id).map_or(weight, |r| r.weight)
    }

    /// When the first of the slow starts takes its next step, if any is
    /// under way: the maps must change then. `now`: the time these
    /// verdicts are of.
    pub(super) fn next_step(&self, now: Instant) -> Option<Instant> {
        self.ramps.values().map(|r| now + r.next_step).min()
    }

    /// Whether VIP `index` panics.
    pub(super) fn panics(&self, index: u32) -> bool {
        self.panicking.contains(&index)
    }
}

/// How much of `vip`'s weight its checks say is up.
pub(super) fn health(vip: &VipPlan, observed: &Observed) -> Health {
    let weighted = vip.backends.iter().filter(|b| b.weight > 0);
    Health {
        up_weight: weighted
            .clone()
            .filter(|b| observed.is_up(b.id))
            .map(|b| u64::from(b.weight))
            .sum(),
        weight: weighted.map(|b| u64::from(b.weight)).sum(),
    }
}
