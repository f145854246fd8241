//! Reading backends' paths from the kernel into what the daemon has
//! observed: every resolved backend at each round, the unresolved ones at
//! the pace [`Pacer`] sets.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use super::{
    desired::Desired,
    events::format_mac,
    observed::{Observed, Reach},
    pacing::Pacer,
};
use crate::neighbour::Neighbours;

/// Reads the path of the backends of `desired` from the kernel into
/// `observed`: every resolved one, and the unresolved ones `pacer` says
/// are due (the others keep what was last read); logs backends that become
/// unreachable or resolve.
pub(super) async fn resolve(
    neighbours: &Neighbours,
    desired: &Desired,
    observed: &mut Observed,
    pacer: &mut Pacer,
) {
    let backends: Vec<(u32, IpAddr)> = desired.backends().map(|(_, b)| (b.id, b.address)).collect();
    // A backend of many VIPs is resolved once.
    let resolved: BTreeSet<IpAddr> = backends
        .iter()
        .filter(|(id, _)| observed.reach(*id).mac().is_some())
        .map(|(_, address)| *address)
        .collect();
    let unresolved: Vec<IpAddr> = backends
        .iter()
        .map(|(_, address)| *address)
        .filter(|address| !resolved.contains(address))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    pacer.retain(|address| unresolved.contains(address));
    let now = std::time::Instant::now();
    let mut addresses: Vec<IpAddr> = resolved.into_iter().collect();
    addresses.extend(pacer.due(&unresolved, now));
    let results: BTreeMap<IpAddr, _> = neighbours
        .resolve_all(&addresses)
        .await
        .into_iter()
        .collect();
    for (address, result) in &results {
        let known = result.as_ref().is_ok_and(|path| path.dst_mac.is_some());
        pacer.record(*address, known, now);
    }
    let mut reported = BTreeSet::new();
    for (id, address) in &backends {
        let Some(result) = results.get(address) else {
            continue;
        };
        let reach = match result {
            Ok(path) => Reach::Path(*path),
            Err(err) => {
                if observed.reach(*id) != Reach::Unreachable && reported.insert(*address) {
                    tracing::warn!(backend = %address, error = %err, "backend unreachable");
                }
                Reach::Unreachable
            }
        };
        let before = observed.set_reach(*id, reach).unwrap_or_default();
        if before.mac() != reach.mac()
            && let Some(mac) = reach.mac()
            && reported.insert(*address)
        {
            tracing::info!(backend = %address, mac = %format_mac(mac), "backend neighbour resolved");
        }
    }
}
