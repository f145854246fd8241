//! The reconciler: from what should be ([`Desired`]), what has been seen
//! ([`Observed`]) and what the maps hold ([`Published`]), the writes that
//! bring the maps in line ([`reconcile`]), and carrying them out
//! ([`apply`]). Deciding is pure: nothing is written until every write is
//! known, so a configuration that cannot be laid out changes nothing.
//!
//! Writes come in the order the datapath needs: VIPs and addresses that
//! go, then backends that go (marked down, so their flows fail over), the
//! settings, every backend's weight before its entry (a backend put in
//! place is never seen with the weight of its id's previous owner),
//! policies before rings, rings before VIP keys (one write), and
//! addresses last: a VIP is published only once all it points to is.
//! Entries of the allow and deny lists go in before the settings (and
//! addresses) that turn their lookups on, and out last.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Instant,
};

use balancer_common::{
    backend::{BACKEND_CONFIRMED, BackendInfo},
    limit::is_exempt_scope,
    tunnel::TunnelInfo,
};

use super::{
    desired::Desired,
    effective::Effective,
    observed::Observed,
    published::{Numbers, Published, Recipe},
};
use crate::{
    availability::Health,
    config::Forwarding,
    datapath::{RINGS_PER_BATCH, Write, Writer},
    maglev::MaglevError,
    plan::{self, BackendPlan, Delivery, Plan},
    schedule,
};

/// Everything to write, and what to record once it is written.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Writes {
    pub(super) ops: Vec<Write>,
    /// VIP index → the recipe of its ring, for every ring written and
    /// every ring rebuilt identical to the one in force.
    pub(super) recipes: BTreeMap<u32, Recipe>,
    /// VIP indexes whose last ring stays because no backend is usable.
    pub(super) all_down: BTreeSet<u32>,
    /// VIP indexes with no ring and no backend of weight above 0.
    pub(super) unweighted: BTreeSet<u32>,
    /// VIP indexes that panic: every backend taken as up.
    pub(super) panicking: BTreeSet<u32>,
    /// When a slow start under way takes its next step: the weights
    /// change then.
    pub(super) next_step: Option<Instant>,
    /// The numbers in use once written.
    pub(super) numbers: Numbers,
    /// What to log once written.
    pub(super) notes: Vec<Note>,
}

/// Something worth a log line once the writes are in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Note {
    /// A VIP's ring was published, over this many backends.
    RingPublished { vip: String, backends: usize },
    /// Every backend of a VIP went down or unreachable: its last ring
    /// stays.
    AllDown { vip: String },
    /// A VIP has no backend with a weight above 0 and no ring: its
    /// traffic passes.
    NoWeight { vip: String },
    /// Less than a VIP's panic threshold of its weight is up: its checks
    /// are not trusted, every backend takes new flows.
    Panic {
        vip: String,
        health: Health,
        threshold: u8,
    },
    /// A VIP that panicked has enough of its weight up again.
    PanicOver { vip: String, health: Health },
}

/// How a set of writes went wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(super) enum ApplyError {
    /// Nothing was changed, for the reason given (which says so).
    #[error("{0}")]
    Refused(String),
    /// The first `done` of `total` writes are in; the rest are not.
    #[error(
        "failed part-way: {done} of {total} map writes done, then: {error}; the rest is retried"
    )]
    Partial {
        done: usize,
        total: usize,
        error: String,
    },
    /// The first `done` of `total` writes went in, then one failed, and the
    /// maps were brought back to the state in force before: nothing was
    /// changed.
    #[error(
        "failed part-way ({done} of {total} map writes done, then: {error}), and the maps were brought back to the configuration in force before; nothing was changed"
    )]
    RolledBack {
        done: usize,
        total: usize,
        error: String,
    },
}

impl ApplyError {
    /// Whether nothing changed: the maps hold what they held before.
    pub(super) fn changed_nothing(&self) -> bool {
        !matches!(self, ApplyError::Partial { .. })
    }
}

/// The writes that bring `published` in line with `desired` as `observed`
/// sees it at `now` (slow starts move with time). Fails only when a ring
/// cannot be built.
pub(super) fn reconcile(
    desired: &Desired,
    observed: &Observed,
    published: &Published,
    now: Instant,
) -> Result<Writes, MaglevError> {
    let plan = &desired.plan;
    let effective = Effective::of(desired, observed, now);
    let mut out = Writes {
        numbers: Numbers {
            vips: plan.vip_indexes().collect(),
            backends: plan.backend_ids().collect(),
        },
        next_step: effective.next_step(now),
        ..Writes::default()
    };
    let ops = &mut out.ops;
    let fresh = |want: &BTreeSet<u32>, have: &BTreeSet<u32>| -> Vec<u32> {
        want.difference(have).copied().collect()
    };
    let vips = fresh(&out.numbers.vips, &published.numbers.vips);
    let backends = fresh(&out.numbers.backends, &published.numbers.backends);
    if !vips.is_empty() || !backends.is_empty() {
        ops.push(Write::ResetNumbers { vips, backends });
    }
    let gone: Vec<_> = published
        .vips
        .values()
        .filter(|r| r.ring.is_some() && !plan.vips.iter().any(|v| v.slot == r.slot))
        .map(|r| r.slot)
        .collect();
    if !gone.is_empty() {
        ops.push(Write::RemoveVips(gone));
    }
    for (key, _) in &published.addrs {
        if !plan.addrs.iter().any(|(k, _)| k == key) {
            ops.push(Write::RemoveAddr(*key));
        }
    }
    for (id, record) in &published.backends {
        let down = record.info.is_some_and(|i| i.flags == 0) && record.weight == Some(0);
        if !out.numbers.backends.contains(id) && !down {
            let info = BackendInfo {
                flags: 0,
                ..record.info.unwrap_or_default()
            };
            ops.push(Write::Backend { id: *id, info });
            ops.push(Write::Weight { id: *id, weight: 0 });
        }
    }
    // List entries go in before the settings and addresses that make the
    // datapath look them up, and out after those stop it.
    let access: Vec<_> = plan
        .access
        .iter()
        .filter(|(key, kind)| published.access.get(key) != Some(kind))
        .map(|(key, kind)| (*key, *kind))
        .collect();
    if !access.is_empty() {
        ops.push(Write::Access(access));
    }
    // Exempt entries and the VIPs' limits (with their own-exempt flag) are
    // in place, and exempt entries out, before the settings whose new
    // generation makes every source decide again whether it is exempt: a
    // decision under the new generation sees them all. An exempt entry
    // refuses nothing, so one out early only ends an exemption early.
    let unexempt: Vec<_> = published
        .access
        .keys()
        .filter(|key| is_exempt_scope(key.data.scope) && !plan.access.contains_key(key))
        .copied()
        .collect();
    if !unexempt.is_empty() {
        ops.push(Write::RemoveAccess(unexempt));
    }
    for vip in &plan.vips {
        let written = published.vip(&vip.slot).and_then(|r| r.limit);
        if written != Some(vip.limit) {
            ops.push(Write::Limit {
                slot: vip.slot,
                limit: vip.limit,
            });
        }
    }
    // The SNAT pools and ports before the settings and the SNAT
    // addresses' entries that make the datapath use them.
    if plan.nat.ports.is_some() && published.snat_pools != Some(plan.nat.pools) {
        ops.push(Write::SnatPools(Box::new(plan.nat.pools)));
    }
    if let Some(ports) = plan.nat.ports
        && published.snat_ports != Some(ports)
    {
        ops.push(Write::SnatPorts(ports));
    }
    let mut egress = published.egress.clone();
    nat_routes(observed, published, &mut egress, ops);
    if published.settings != Some(plan.settings) {
        ops.push(Write::Settings(plan.settings));
    }
    let infos = backend_infos(desired, observed, &effective);
    let tunnels = tunnel_infos(desired, observed);
    for (vip, b) in desired.backends() {
        let weight = effective.weight(b.id, b.weight);
        let record = published.backend(b.id);
        // A tunnel's source before the entry that makes the datapath read
        // it.
        if let Some(tunnel) = tunnels.get(&b.id)
            && record.tunnel != Some(*tunnel)
        {
            ops.push(Write::Tunnel {
                id: b.id,
                tunnel: *tunnel,
            });
        }
        // A NAT backend's port before the entry that may open
        // connections to it.
        let nat = b.nat();
        if vip.forwarding == Forwarding::Nat && record.nat != Some(nat) {
            ops.push(Write::NatBackend { id: b.id, nat });
        }
        if record.weight != Some(weight) {
            ops.push(Write::Weight { id: b.id, weight });
        }
        let info = infos[&b.id];
        if record.info != Some(info) {
            if info.ifindex != 0 && egress.insert(info.ifindex) {
                ops.push(Write::Egress(info.ifindex));
            }
            ops.push(Write::Backend { id: b.id, info });
        }
        let latency = observed.get(b.id).and_then(|seen| seen.latency_us());
        if let Some(us) = latency.filter(|us| record.latency_us != Some(*us)) {
            ops.push(Write::Latency { id: b.id, us });
        }
    }
    for vip in &plan.vips {
        let written = published.vip(&vip.slot).and_then(|r| r.policy);
        if written != Some(vip.policy) {
            ops.push(Write::Policy {
                slot: vip.slot,
                policy: vip.policy,
            });
        }
    }
    panic_notes(desired, published, &effective, &mut out);
    let rings = rings(plan, published, &infos, &effective, &mut out)?;
    for chunk in rings.chunks(RINGS_PER_BATCH) {
        out.ops.push(Write::Rings(chunk.to_vec()));
    }
    for (key, info) in &plan.addrs {
        if !published.addrs.iter().any(|(k, i)| k == key && i == info) {
            out.ops.push(Write::Addr {
                key: *key,
                info: *info,
            });
        }
    }
    let unlisted: Vec<_> = published
        .access
        .keys()
        .filter(|key| !is_exempt_scope(key.data.scope) && !plan.access.contains_key(key))
        .copied()
        .collect();
    if !unlisted.is_empty() {
        out.ops.push(Write::RemoveAccess(unlisted));
    }
    Ok(out)
}

/// The writes that bring the routes toward clients in line with those
/// `observed` read: the interfaces they go out of that `egress` (the
/// interfaces the program may redirect to) lacks first, then new and
/// changed routes, then those gone.
fn nat_routes(
    observed: &Observed,
    published: &Published,
    egress: &mut BTreeSet<u32>,
    ops: &mut Vec<Write>,
) {
    for hop in observed.client_routes.values() {
        if hop.ifindex != 0 && egress.insert(hop.ifindex) {
            ops.push(Write::Egress(hop.ifindex));
        }
    }
    let changed: Vec<_> = observed
        .client_routes
        .iter()
        .filter(|(key, hop)| published.nat_routes.get(key) != Some(hop))
        .map(|(key, hop)| (*key, *hop))
        .collect();
    if !changed.is_empty() {
        ops.push(Write::NatRoutes(changed));
    }
    let gone: Vec<_> = published
        .nat_routes
        .keys()
        .filter(|key| !observed.client_routes.contains_key(key))
        .copied()
        .collect();
    if !gone.is_empty() {
        ops.push(Write::RemoveNatRoutes(gone));
    }
}

/// The rings to write: those of VIPs whose usable backends changed (a
/// VIP with none keeps the ring it has; one that never had a ring gets
/// one over every weighted backend, so its packets are counted as
/// unresolved rather than lost without a trace until neighbours resolve).
fn rings(
    plan: &Plan,
    published: &Published,
    infos: &BTreeMap<u32, BackendInfo>,
    effective: &Effective,
    out: &mut Writes,
) -> Result<Vec<(crate::datapath::VipSlot, Vec<u32>)>, MaglevError> {
    let weight = |b: &BackendPlan| effective.weight(b.id, b.weight);
    let usable = |b: &BackendPlan| {
        if infos[&b.id].is_usable() {
            weight(b)
        } else {
            0
        }
    };
    let ring_size = plan.settings.ring_size;
    let mut changed = Vec::new();
    for vip in &plan.vips {
        let index = vip.slot.info.index;
        let record = published.vip(&vip.slot);
        let in_force = record.and_then(|r| r.ring.as_ref());
        let mut members = vip.members(usable);
        if members.is_empty() {
            if in_force.is_some() {
                out.all_down.insert(index);
                if record.is_some_and(|r| !r.all_down) {
                    out.notes.push(Note::AllDown {
                        vip: vip.name.clone(),
                    });
                }
                continue;
            }
            members = vip.members(weight);
            if members.is_empty() {
                out.unweighted.insert(index);
                if !record.is_some_and(|r| r.unweighted) {
                    out.notes.push(Note::NoWeight {
                        vip: vip.name.clone(),
                    });
                }
                continue;
            }
        }
        // The same members make the same ring: with many VIPs, one
        // backend's change rebuilds one ring, not all of them.
        let recipe = (ring_size, vip.slot.info.flags, members);
        if in_force.is_some_and(|r| r.recipe.as_ref() == Some(&recipe)) {
            continue;
        }
        let ring = schedule::ring(vip.scheduler, &recipe.2, ring_size)?;
        let backends = recipe.2.len();
        out.recipes.insert(index, recipe);
        if in_force.is_some_and(|r| r.entries == ring) {
            continue;
        }
        out.notes.push(Note::RingPublished {
            vip: vip.name.clone(),
            backends,
        });
        changed.push((vip.slot, ring));
    }
    Ok(changed)
}

/// Notes a VIP that starts or stops panicking, and records which do.
fn panic_notes(desired: &Desired, published: &Published, effective: &Effective, out: &mut Writes) {
    for (vip, config) in desired.vips() {
        let index = vip.slot.info.index;
        let panics = effective.panics(index);
        let health = effective.health.get(&index).copied().unwrap_or_default();
        let panicked = published.vip(&vip.slot).is_some_and(|r| r.panicking);
        if panics {
            out.panicking.insert(index);
        }
        match (panicked, panics, config.panic_threshold()) {
            (false, true, Some(threshold)) => out.notes.push(Note::Panic {
                vip: vip.name.clone(),
                health,
                threshold,
            }),
            (true, false, _) => out.notes.push(Note::PanicOver {
                vip: vip.name.clone(),
                health,
            }),
            _ => {}
        }
    }
}

/// The `backends` map entry of every backend of `desired`: up unless its
/// checks say down (or its VIP panics), resolved once its MAC is known.
fn backend_infos(
    desired: &Desired,
    observed: &Observed,
    effective: &Effective,
) -> BTreeMap<u32, BackendInfo> {
    let tunnels = tunnel_infos(desired, observed);
    desired
        .backends()
        .map(|(vip, b)| {
            let delivery = Delivery::of(vip.forwarding, tunnels.contains_key(&b.id));
            let mut info = plan::backend_info(
                b.address,
                vip.slot.info.index,
                observed.is_up(b.id) || effective.panics(vip.slot.info.index),
                observed.reach(b.id).path(),
                delivery,
            );
            if observed.confirmed(b.id) {
                info.flags |= BACKEND_CONFIRMED;
            }
            (b.id, info)
        })
        .collect()
}

/// The `tunnels` entries of the backends reached in IPIP or GUE that have
/// an outer source (see [`plan::tunnel_info`]).
fn tunnel_infos(desired: &Desired, observed: &Observed) -> BTreeMap<u32, TunnelInfo> {
    desired
        .backends()
        .filter(|(vip, _)| vip.forwarding.tunnelled())
        .filter_map(|(vip, b)| {
            let path = observed.reach(b.id).path();
            let tunnel = plan::tunnel_info(
                b.address,
                vip.forwarding,
                &desired.config.datapath,
                path.as_ref(),
            )?;
            Some((b.id, tunnel))
        })
        .collect()
}

/// Moves the maps from `current` to the state `writes` were decided for:
/// all or nothing. When the writes fail part-way, the reconciler brings
/// the maps back to `current` as `observed` sees it (removing what went in,
/// restoring what changed): [`ApplyError::RolledBack`]. Only when that
/// fails too are the maps left between the two ([`ApplyError::Partial`]),
/// and later reconciles toward `current` finish the way back.
pub(super) fn apply_or_roll_back(
    writes: &Writes,
    current: &Desired,
    observed: &Observed,
    writer: &mut dyn Writer,
    published: &mut Published,
    now: Instant,
) -> Result<(), ApplyError> {
    let (done, total, error) = match apply(writes, writer, published) {
        Err(ApplyError::Partial { done, total, error }) => (done, total, error),
        other => return other,
    };
    let back = reconcile(current, observed, published, now)
        .map_err(|err| err.to_string())
        .and_then(|back| apply(&back, writer, published).map_err(|err| err.to_string()));
    match back {
        Ok(()) => Err(ApplyError::RolledBack { done, total, error }),
        Err(back) => Err(ApplyError::Partial {
            done,
            total,
            error: format!("{error}; bringing the maps back failed too: {back}"),
        }),
    }
}

/// Carries out `writes` in order, recording each in `published` once it
/// succeeded; once all are in, records what they leave in force (rings
/// kept, numbers in use) and forgets backends gone from `desired`.
pub(super) fn apply(
    writes: &Writes,
    writer: &mut dyn Writer,
    published: &mut Published,
) -> Result<(), ApplyError> {
    let total = writes.ops.len();
    for (done, op) in writes.ops.iter().enumerate() {
        if let Err(err) = writer.write(op) {
            let error = crate::logging::error_chain(&err);
            return Err(if done == 0 {
                ApplyError::Refused(format!("{error}; nothing was changed"))
            } else {
                ApplyError::Partial { done, total, error }
            });
        }
        published.commit(op);
    }
    for (index, recipe) in &writes.recipes {
        if let Some(ring) = published.vips.get_mut(index).and_then(|r| r.ring.as_mut()) {
            ring.recipe = Some(recipe.clone());
        }
    }
    for (index, record) in &mut published.vips {
        record.all_down = writes.all_down.contains(index);
        record.unweighted = writes.unweighted.contains(index);
        record.panicking = writes.panicking.contains(index);
    }
    published
        .backends
        .retain(|id, _| writes.numbers.backends.contains(id));
    published.numbers = writes.numbers.clone();
    Ok(())
}

#[cfg(test)]
mod tests;
