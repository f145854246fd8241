//! What the daemon has seen of each backend: one [`Seen`] per backend
//! (health verdict, check latencies and counts, next hop, connections at
//! the last scan), and what the last scans of the connection table said.
//! Pure bookkeeping: the daemon feeds it reports, neighbour reads and
//! scans; the reconciler reads it.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, Instant},
};

use super::{connections, desired::Desired};
use crate::{
    config::CheckKind,
    health::{Health, Report, Tracker},
    neighbour::L2Path,
    plan::Plan,
};

/// Weight of a new latency sample in the smoothed latency.
const LATENCY_SMOOTHING: f64 = 0.3;

/// Everything observed, per backend id.
#[derive(Default)]
pub(super) struct Observed {
    backends: BTreeMap<u32, Seen>,
    /// The last scans of the connection table.
    pub(super) scan: Scans,
    /// The routes toward clients of NAT replies, as last read from the
    /// kernel's routes and neighbours (empty without NAT VIPs).
    pub(super) client_routes: BTreeMap<balancer_common::nat::RouteKey, balancer_common::nat::Hop>,
}

/// What has been seen of one backend.
#[derive(Clone, Debug)]
pub(super) struct Seen {
    /// Its health checks' verdict.
    pub(super) health: Tracker,
    /// How long its last check took.
    pub(super) latency: Option<Duration>,
    /// Smoothed duration of its successful checks, in microseconds: what
    /// least-latency compares.
    pub(super) smoothed_us: Option<f64>,
    /// Its check results and transitions so far.
    pub(super) checks: HealthCounts,
    /// Checks in a row that could not run on this host.
    pub(super) inconclusive_streak: u32,
    /// How it is reached.
    pub(super) path: Reach,
    /// Its health is known, not assumed: it passed a check since the
    /// daemon started, or the previous daemon left it up, or it has no
    /// checks. Only a confirmed backend counts toward announcing its VIP,
    /// so a host that starts with dead backends never announces them for
    /// the `fall` checks it takes to find out.
    pub(super) confirmed: bool,
    /// When its slow start began: when it came up after being down, or
    /// joined its VIP (added or undrained) while the daemon ran. None for
    /// a backend up since the daemon started. It is in slow start while
    /// its VIP's `slow_start` has not passed since.
    pub(super) ramp_from: Option<Instant>,
    /// Live connection-table entries at the last scan.
    pub(super) live: u64,
    /// Its new-flow counter at the last scan.
    new_flows_total: Option<u64>,
    /// New flows placed on it between the last two scans.
    pub(super) new_flows: Option<u64>,
}

/// How a backend is reached, as the last neighbour read said.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum Reach {
    /// Not read yet.
    #[default]
    Unknown,
    /// No route, or not on a directly connected network.
    Unreachable,
    /// The interface that reaches it (and the MAC, once resolved).
    Path(L2Path),
}

impl Reach {
    /// The path, if any.
    pub(super) fn path(self) -> Option<L2Path> {
        match self {
            Reach::Path(path) => Some(path),
            Reach::Unknown | Reach::Unreachable => None,
        }
    }

    /// The backend's MAC, once resolved.
    pub(super) fn mac(self) -> Option<[u8; 6]> {
        self.path().and_then(|p| p.dst_mac)
    }
}

/// Health-check results and transitions of one backend, for the metrics.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct HealthCounts {
    pub(super) ok: u64,
    pub(super) failed: u64,
    /// Checks that could not run on this host.
    pub(super) inconclusive: u64,
    pub(super) went_up: u64,
    pub(super) went_down: u64,
}

/// What the scans of the connection table said.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Scans {
    /// When the last scan was.
    at: Option<Instant>,
    /// The interval between the last two scans (None before the second).
    pub(super) interval: Option<Duration>,
    /// Connection-table entries at the last scan.
    pub(super) flow_entries: Option<u64>,
    /// Handshake-table entries at the last scan.
    pub(super) handshake_entries: Option<u64>,
    /// Sources still owing tokens at the last scan.
    pub(super) source_entries: Option<u64>,
}

/// What one scan of the connection table found.
pub(super) struct Scan {
    /// Backend id → live entries.
    pub(super) live: BTreeMap<u32, u64>,
    /// Backend id → its new-flow counter now.
    pub(super) new_flow_totals: BTreeMap<u32, u64>,
    /// Entries left in the table.
    pub(super) entries: u64,
    /// Entries left in the handshake table.
    pub(super) handshakes: u64,
    /// Entries left in the table of sources.
    pub(super) sources: u64,
}

/// A health transition one report caused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Transition {
    pub(super) from: Health,
    pub(super) to: Health,
}

impl Observed {
    /// Starts observing every backend of `desired` that is not observed
    /// yet (a backend that stays keeps what was seen of it): up, or down
    /// when a previous daemon `left` it down and it is health-checked (so
    /// it comes back after `rise` successes rather than taking new flows
    /// until `fall` failures). `left` gives per id whether the previous
    /// daemon left it up and [confirmed](Seen::confirmed): a backend it
    /// left both, or one without checks, is confirmed at once; any other
    /// at its first successful check.
    pub(super) fn add(&mut self, desired: &Desired, left: &BTreeMap<u32, (bool, bool)>) {
        for (vip, planned) in desired.config.vips.iter().zip(&desired.plan.vips) {
            let check = vip.get_ref().check();
            for backend in &planned.backends {
                if self.backends.contains_key(&backend.id) {
                    continue;
                }
                let (left_down, left_confirmed) = match left.get(&backend.id) {
                    Some(&(up, confirmed)) => (!up, up && confirmed),
                    None => (false, false),
                };
                let health = if check.kind != CheckKind::None && left_down {
                    tracing::info!(
                        vip = planned.name.as_str(),
                        backend = %backend.address,
                        rise = check.rise,
                        "backend starts down, as the previous daemon left it"
                    );
                    Tracker::down(check.rise, check.fall)
                } else {
                    Tracker::new(check.rise, check.fall)
                };
                let mut seen = Seen::new(health);
                seen.confirmed = check.kind == CheckKind::None || left_confirmed;
                self.backends.insert(backend.id, seen);
            }
        }
    }

    /// Forgets every backend `desired` does not have.
    pub(super) fn retain(&mut self, desired: &Desired) {
        let ids: BTreeSet<u32> = desired.plan.backend_ids().collect();
        self.backends.retain(|id, _| ids.contains(id));
    }

    /// What has been seen of backend `id`.
    pub(super) fn get(&self, id: u32) -> Option<&Seen> {
        self.backends.get(&id)
    }

    /// Whether backend `id`'s health is known ([`Seen::confirmed`]).
    pub(super) fn confirmed(&self, id: u32) -> bool {
        self.get(id).is_some_and(|seen| seen.confirmed)
    }

    /// Whether backend `id` is up (a backend not checked yet is).
    pub(super) fn is_up(&self, id: u32) -> bool {
        self.get(id)
            .is_none_or(|seen| seen.health.state() == Health::Up)
    }

    /// How backend `id` is reached.
    pub(super) fn reach(&self, id: u32) -> Reach {
        self.get(id).map_or(Reach::Unknown, |seen| seen.path)
    }

    /// Records how backend `id` is reached; returns what was known before.
    pub(super) fn set_reach(&mut self, id: u32, reach: Reach) -> Option<Reach> {
        let seen = self.backends.get_mut(&id)?;
        Some(std::mem::replace(&mut seen.path, reach))
    }

    /// Whether every backend read so far has its MAC resolved.
    pub(super) fn all_resolved(&self) -> bool {
        self.backends
            .values()
            .filter(|seen| seen.path != Reach::Unknown)
            .all(|seen| seen.path.mac().is_some())
    }

    /// Starts the slow start, at `now`, of every backend that joins its
    /// VIP from `old` to `new`: one `old` did not have, or had at weight 0
    /// (drained) and `new` gives a weight.
    pub(super) fn start_ramps(&mut self, old: &Plan, new: &Plan, now: Instant) {
        let weights: BTreeMap<u32, u32> = old
            .vips
            .iter()
            .flat_map(|v| v.backends.iter().map(|b| (b.id, b.weight)))
            .collect();
        for backend in new.vips.iter().flat_map(|v| &v.backends) {
            let joins = backend.weight > 0 && weights.get(&backend.id).is_none_or(|w| *w == 0);
            if let Some(seen) = self.backends.get_mut(&backend.id).filter(|_| joins) {
                seen.ramp_from = Some(now);
            }
        }
    }

    /// Takes one check result, received at `now`; returns the transition
    /// it caused, if any (a backend that comes up starts its slow start).
    /// A report of a backend no longer observed (still in flight from the
    /// check task of a backend just removed) is ignored, and so is, but
    /// for its count, a check that could not run on this host.
    pub(super) fn record(&mut self, report: &Report, now: Instant) -> Option<Transition> {
        let seen = self.backends.get_mut(&report.backend)?;
        if report.inconclusive {
            seen.checks.inconclusive += 1;
            seen.inconclusive_streak += 1;
            return None;
        }
        seen.inconclusive_streak = 0;
        seen.latency = Some(report.latency);
        if report.success {
            seen.checks.ok += 1;
            seen.confirmed = true;
            let sample = report.latency.as_secs_f64() * 1e6;
            seen.smoothed_us = Some(match seen.smoothed_us {
                Some(old) => old + LATENCY_SMOOTHING * (sample - old),
                None => sample,
            });
        } else {
            seen.checks.failed += 1;
        }
        let from = seen.health.state();
        let to = seen.health.record(report.success)?;
        if to == Health::Up {
            seen.checks.went_up += 1;
            seen.ramp_from = Some(now);
        } else {
            seen.checks.went_down += 1;
        }
        Some(Transition { from, to })
    }

    /// Takes one scan of the connection table, made at `now`: each
    /// backend's live entries, and its new flows since the previous scan.
    pub(super) fn record_scan(&mut self, scan: Scan, now: Instant) {
        let before: BTreeMap<u32, u64> = self
            .backends
            .iter()
            .filter_map(|(id, seen)| Some((*id, seen.new_flows_total?)))
            .collect();
        let grown = connections::growth(&before, &scan.new_flow_totals);
        for (id, seen) in &mut self.backends {
            seen.live = scan.live.get(id).copied().unwrap_or(0);
            seen.new_flows = grown.get(id).copied();
            seen.new_flows_total = scan.new_flow_totals.get(id).copied();
        }
        self.scan.interval = self.scan.at.map(|before| now - before);
        self.scan.at = Some(now);
        self.scan.flow_entries = Some(scan.entries);
        self.scan.handshake_entries = Some(scan.handshakes);
        self.scan.source_entries = Some(scan.sources);
    }
}

impl Seen {
    fn new(health: Tracker) -> Seen {
        Seen {
            health,
            latency: None,
            smoothed_us: None,
            checks: HealthCounts::default(),
            inconclusive_streak: 0,
            path: Reach::Unknown,
            confirmed: false,
            ramp_from: None,
            live: 0,
            new_flows_total: None,
            new_flows: None,
        }
    }

    /// The smoothed latency as the datapath holds it: whole microseconds.
    pub(super) fn latency_us(&self) -> Option<u32> {
        self.smoothed_us
            .map(|us| us.round().min(f64::from(u32::MAX)) as u32)
    }
}
