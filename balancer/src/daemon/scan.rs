//! The periodic scan of the connection table and the NAT tables (every
//! `--reconcile-interval`): idle entries removed, connection counts of the
//! least-* schedulers corrected, and each backend's live entries (flows
//! and NAT connections) and new flows since the previous scan kept for
//! `vip show` and the metrics; of the handshake table: idle entries
//! removed, the rest counted; and of the table of sources: the sources
//! that owe tokens counted.

use std::collections::BTreeMap;

use anyhow::Result;
use balancer_common::{
    flow::{FlowKey, FlowState},
    vip::counts_connections,
};

use super::{connections, observed::Scan};
use crate::{
    datapath::{Datapath, now_ns},
    plan::Plan,
};

/// Reads the connection table of the VIPs of `plan`: removes entries idle
/// past their timeout, corrects the connection counts of backends of
/// counting VIPs (see [`connections::correction`]), and returns each
/// backend's live entries and new-flow counter; with `keep`, the entries
/// left too (for the peers).
pub(super) fn scan(
    datapath: &mut Datapath,
    plan: &Plan,
    keep: bool,
) -> Result<(Scan, Vec<(FlowKey, FlowState)>)> {
    let counting: Vec<u32> = plan
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
    let nat = plan
        .vips
        .iter()
        .any(|v| v.forwarding == crate::config::Forwarding::Nat);
    let before = conns(datapath)?;
    let entries = datapath.flows()?;
    let (nat_flows, nat_replies) = if nat {
        (datapath.nat_flows()?, datapath.nat_replies()?)
    } else {
        (Vec::new(), Vec::new())
    };
    let after = conns(datapath)?;
    let now = now_ns();
    let mut tally = connections::tally(&entries, now, &plan.settings);
    connections::tally_nat(&mut tally, &nat_flows, &nat_replies, now, &plan.settings);
    datapath.remove_flows(&tally.expired)?;
    datapath.remove_nat_entries(&tally.expired_nat, &tally.expired_replies)?;
    let left = entries.len() - tally.expired.len();
    let kept = if keep {
        entries
            .iter()
            .filter(|(key, state)| !plan.settings.expired(key.proto, state.last_seen_ns, now))
            .copied()
            .collect()
    } else {
        Vec::new()
    };
    for (i, id) in counting.iter().enumerate() {
        let get = |m: &BTreeMap<u32, u64>| m.get(id).copied().unwrap_or(0);
        let delta = connections::correction(
            before[i],
            after[i],
            get(&tally.counted),
            get(&tally.expired_counted),
        );
        if delta != 0 {
            datapath.correct_backend_conns(*id, delta)?;
            tracing::debug!(backend = id, delta, "connection count corrected");
        }
    }
    let handshakes = datapath.handshakes()?;
    let idle: Vec<_> = handshakes
        .iter()
        .filter(|(key, state)| plan.settings.expired(key.proto, state.last_seen_ns, now))
        .map(|(key, _)| *key)
        .collect();
    datapath.remove_handshakes(&idle)?;
    let sources = if plan.vips.iter().any(|v| v.limit.on()) {
        datapath
            .sources()?
            .iter()
            .filter(|slot| slot.active(now))
            .count() as u64
    } else {
        0
    };
    let scan = Scan {
        live: tally.live,
        new_flow_totals: new_flow_totals(datapath, plan)?,
        entries: left as u64,
        handshakes: (handshakes.len() - idle.len()) as u64,
        sources,
    };
    Ok((scan, kept))
}

/// Every backend's new-flow counter, in one batched read.
fn new_flow_totals(datapath: &Datapath, plan: &Plan) -> Result<BTreeMap<u32, u64>> {
    let ids: Vec<u32> = plan.backend_ids().collect();
    let slots = ids.iter().map(|id| id + 1).max().unwrap_or(0);
    let counters = datapath.all_counters(0, slots)?;
    Ok(ids
        .into_iter()
        .map(|id| {
            let new_flows = counters
                .backends
                .get(id as usize)
                .map_or(0, |c| c.new_flows);
            (id, new_flows)
        })
        .collect())
}
