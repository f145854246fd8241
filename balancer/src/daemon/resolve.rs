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
use crate::{client_routes, config::Forwarding, neighbour::Neighbours};

/// Reads the path of the backends of `desired` from the kernel into
/// `observed`: every resolved one, and the unresolved ones `pacer` says
/// are due (the others keep what was last read); logs backends that become
/// unreachable or resolve.
pub(super) async fn resolve(
    neighbours: &Neighbours,
    desired: &Desired,
    observed: &mut Observed,
    pacer: &mut Pacer<(IpAddr, bool)>,
) {
    // Each backend with whether it may be reached through a gateway (in
    // a tunnel, or by NAT), which decides how it resolves.
    let backends: Vec<(u32, (IpAddr, bool))> = desired
        .backends()
        .map(|(vip, b)| (b.id, (b.address, vip.forwarding.routed())))
        .collect();
    // A backend of many VIPs is resolved once (per way of reaching it).
    let resolved: BTreeSet<(IpAddr, bool)> = backends
        .iter()
        .filter(|(id, _)| observed.reach(*id).mac().is_some())
        .map(|(_, target)| *target)
        .collect();
    let unresolved: Vec<(IpAddr, bool)> = backends
        .iter()
        .map(|(_, target)| *target)
        .filter(|target| !resolved.contains(target))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    pacer.retain(|target| unresolved.contains(target));
    let now = std::time::Instant::now();
    let mut targets: Vec<(IpAddr, bool)> = resolved.into_iter().collect();
    targets.extend(pacer.due(&unresolved, now));
    let results: BTreeMap<(IpAddr, bool), _> =
        neighbours.resolve_all(&targets).await.into_iter().collect();
    for (target, result) in &results {
        let known = result.as_ref().is_ok_and(|path| path.dst_mac.is_some());
        pacer.record(*target, known, now);
    }
    let mut reported = BTreeSet::new();
    for (id, target) in &backends {
        let address = &target.0;
        let Some(result) = results.get(target) else {
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

/// Reads the routes toward clients of NAT replies (the main table's routes
/// and neighbours on the `served` interfaces) into `observed`, when
/// `desired` has a NAT VIP; none otherwise. Gateways whose MAC is unknown
/// are asked for; a read that fails keeps what was read before.
pub(super) async fn client_routes(
    neighbours: &Neighbours,
    desired: &Desired,
    observed: &mut Observed,
    served: &BTreeSet<u32>,
) {
    let nat = desired
        .plan
        .vips
        .iter()
        .any(|v| v.forwarding == Forwarding::Nat);
    if !nat {
        observed.client_routes.clear();
        return;
    }
    match client_routes::read(neighbours, served).await {
        Ok(read) => {
            for (_, gateway) in &read.unresolved {
                crate::neighbour::provoke_resolution(*gateway);
            }
            if read.left_out > 0 {
                tracing::warn!(
                    left_out = read.left_out,
                    "more routes toward clients than the datapath holds: the most specific are left out"
                );
            }
            observed.client_routes = read.entries;
        }
        Err(err) => tracing::warn!(error = %err, "cannot read the routes toward clients"),
    }
}
