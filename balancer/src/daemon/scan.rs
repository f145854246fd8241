//! The periodic scan of the connection table (every
//! `--reconcile-interval`): idle entries removed, connection counts of the
//! least-* schedulers corrected, and each backend's live entries and new
//! flows since the previous scan kept for `vip show` and the metrics.

use std::{collections::BTreeMap, time::Duration};

use anyhow::Result;
use balancer_common::vip::counts_connections;

use super::{connections, state::State};
use crate::datapath::{Datapath, now_ns};

/// New flows per backend over one interval between two scans of the
/// connection table: what `vip show` reports as shares.
pub(super) struct Activity {
    pub(super) interval: Duration,
    pub(super) new_flows: BTreeMap<u32, u64>,
}

impl State {
    /// Reads the connection table: removes entries idle past their
    /// timeout, corrects the connection counts of backends of counting
    /// VIPs (see [`connections::correction`]), and records each backend's
    /// live entries and new flows since the previous scan.
    pub(super) fn reconcile(&mut self) -> Result<()> {
        let counting: Vec<u32> = self
            .plan
            .vips
            .iter()
            .filter(|v| counts_connections(v.slot.info.flags))
            .flat_map(|v| v.backends.iter().map(|b| b.id))
            .collect();
        let conns = |datapath: &Datapath| -> Result<Vec<i64>> {
            counting
                .iter()
                .map(|id| Ok(datapath.backend_load(*id)?.conns as i64))
                .collect()
        };
        let before = conns(&self.datapath)?;
        let entries = self.datapath.flows()?;
        let after = conns(&self.datapath)?;
        let tally = connections::tally(&entries, now_ns(), &self.plan.settings);
        self.datapath.remove_flows(&tally.expired)?;
        self.flow_entries = Some((entries.len() - tally.expired.len()) as u64);
        for (i, id) in counting.iter().enumerate() {
            let get = |m: &BTreeMap<u32, u64>| m.get(id).copied().unwrap_or(0);
            let delta = connections::correction(
                before[i],
                after[i],
                get(&tally.counted),
                get(&tally.expired_counted),
            );
            if delta != 0 {
                self.datapath.correct_backend_conns(*id, delta)?;
                tracing::debug!(backend = id, delta, "connection count corrected");
            }
        }
        self.live = tally.live;
        self.record_activity()
    }

    /// Reads every backend's new-flow counter (one batched read) and keeps
    /// its growth since the previous scan.
    fn record_activity(&mut self) -> Result<()> {
        let ids: Vec<u32> = self.plan.backend_ids().collect();
        let slots = ids.iter().map(|id| id + 1).max().unwrap_or(0);
        let counters = self.datapath.all_counters(0, slots)?;
        let totals: BTreeMap<u32, u64> = ids
            .into_iter()
            .map(|id| {
                let new_flows = counters
                    .backends
                    .get(id as usize)
                    .map_or(0, |c| c.new_flows);
                (id, new_flows)
            })
            .collect();
        let now = std::time::Instant::now();
        if let Some(before) = self.scanned_at {
            self.activity = Some(Activity {
                interval: now - before,
                new_flows: connections::growth(&self.new_flow_totals, &totals),
            });
        }
        self.new_flow_totals = totals;
        self.scanned_at = Some(now);
        Ok(())
    }
}
