//! What the daemon knows of each backend and VIP, and how it keeps the
//! datapath's maps in line with it: one owner of every map write, driven by
//! neighbour changes, health transitions and reloads.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::Duration,
};

use anyhow::{Context as _, Result};
use balancer_common::{
    backend::{BACKEND_RESOLVED, BACKEND_UP, BackendInfo},
    vip::VipPolicy,
};
use tokio::sync::mpsc;

use crate::{
    config::Config,
    datapath::{Datapath, Published},
    health::{self, Health, Report, Tracker},
    maglev,
    neighbour::{L2Path, Neighbours},
    plan::{self, Numbering, Plan},
    schedule,
};

/// What the daemon knows of each backend, and what it has written.
pub(super) struct State {
    pub(super) datapath: Datapath,
    pub(super) plan: Plan,
    neighbours: Neighbours,
    /// The configuration in force, and the file it came from.
    pub(super) config: Config,
    pub(super) config_path: Option<std::path::PathBuf>,
    /// `--socket`, which replaces the file's control_socket.
    pub(super) socket_override: Option<std::path::PathBuf>,
    numbering: Numbering,
    /// The running check tasks, and where they report.
    checks: Vec<tokio::task::JoinHandle<()>>,
    reports: mpsc::Sender<Report>,
    /// Backend id → how to reach it (None: no route or not on link).
    pub(super) paths: BTreeMap<u32, Option<L2Path>>,
    /// Backend id → what the `backends` map holds.
    pub(super) written: BTreeMap<u32, BackendInfo>,
    /// VIP index → the ring in place.
    pub(super) rings: BTreeMap<u32, Vec<u32>>,
    /// VIP index → the ring size and members its ring was built from.
    pub(super) recipes: BTreeMap<u32, Recipe>,
    /// VIP index → the policy written for it.
    policies: BTreeMap<u32, VipPolicy>,
    /// Backend id → its health checks' verdict.
    pub(super) health: BTreeMap<u32, Tracker>,
    /// Backend id → how long its last check took.
    pub(super) latency: BTreeMap<u32, Duration>,
    /// VIP indexes whose backends are all unusable (warned once).
    pub(super) all_down: BTreeSet<u32>,
    /// Backend id → smoothed latency of its successful checks, in
    /// microseconds (what least-latency compares).
    pub(super) smoothed_us: BTreeMap<u32, f64>,
    /// Backend id → live connection-table entries at the last scan.
    pub(super) live: BTreeMap<u32, u64>,
    /// Backend id → its new-flow counter at the last scan, and when that
    /// scan was.
    pub(super) new_flow_totals: BTreeMap<u32, u64>,
    pub(super) scanned_at: Option<std::time::Instant>,
    /// New flows per backend between the last two scans.
    pub(super) activity: Option<super::scan::Activity>,
    /// Connection-table entries at the last scan.
    pub(super) flow_entries: Option<u64>,
    /// Backend id → its health-check results and transitions so far.
    pub(super) health_counts: BTreeMap<u32, HealthCounts>,
    /// Where the metrics are served, "off", or why they are not.
    pub(super) metrics_endpoint: String,
}

/// Health-check results and transitions of one backend, for the metrics.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct HealthCounts {
    pub(super) ok: u64,
    pub(super) failed: u64,
    pub(super) went_up: u64,
    pub(super) went_down: u64,
}

/// What a VIP's table is built from: ring size, VIP flags (scheduler and
/// persistence) and members. The same recipe makes the same table.
pub(super) type Recipe = (u32, u32, Vec<maglev::Member>);

/// Weight of a new latency sample in the smoothed latency.
const LATENCY_SMOOTHING: f64 = 0.3;

impl State {
    /// Lays `config` out, writes the settings and starts the checks.
    /// `published` is what the pinned maps of a previous daemon hold:
    /// backends it left down start down when they are checked, and come
    /// back after `rise` successes, rather than taking new flows until
    /// `fall` failures; numbers it did not use start with zeroed counters.
    pub(super) fn new(
        config: Config,
        config_path: Option<std::path::PathBuf>,
        mut datapath: Datapath,
        neighbours: Neighbours,
        reports: mpsc::Sender<Report>,
        mut numbering: Numbering,
        published: &Published,
    ) -> Result<State> {
        let plan = plan::plan_with(&config, &mut numbering);
        let left_down: BTreeSet<u32> = published
            .backends
            .iter()
            .filter(|(_, info)| info.flags & BACKEND_UP == 0)
            .map(|(id, _)| *id)
            .collect();
        datapath
            .set_settings(&plan.settings)
            .context("cannot write the datapath settings")?;
        let vips = published.vips.iter().map(|(_, info)| info.index).collect();
        let ids = published.backends.iter().map(|(id, _)| *id).collect();
        reset_new_numbers(&mut datapath, &plan, &vips, &ids)
            .context("cannot zero the counters of new VIPs and backends")?;
        let mut state = State {
            datapath,
            plan,
            neighbours,
            config,
            config_path,
            socket_override: None,
            numbering,
            checks: Vec::new(),
            reports,
            paths: BTreeMap::new(),
            written: BTreeMap::new(),
            rings: BTreeMap::new(),
            recipes: BTreeMap::new(),
            policies: BTreeMap::new(),
            health: BTreeMap::new(),
            latency: BTreeMap::new(),
            all_down: BTreeSet::new(),
            smoothed_us: BTreeMap::new(),
            live: BTreeMap::new(),
            new_flow_totals: BTreeMap::new(),
            scanned_at: None,
            activity: None,
            flow_entries: None,
            health_counts: BTreeMap::new(),
            metrics_endpoint: "off".to_owned(),
        };
        for (vip, planned) in state.config.vips.iter().zip(&state.plan.vips) {
            let check = vip.get_ref().check();
            if check.kind == crate::config::CheckKind::None {
                continue;
            }
            for backend in planned
                .backends
                .iter()
                .filter(|b| left_down.contains(&b.id))
            {
                tracing::info!(
                    vip = planned.name.as_str(),
                    backend = %backend.address,
                    rise = check.rise,
                    "backend starts down, as the previous daemon left it"
                );
                state
                    .health
                    .insert(backend.id, Tracker::down(check.rise, check.fall));
            }
        }
        state.spawn_checks();
        Ok(state)
    }

    /// (Re)starts one check task per backend per VIP. A backend that was
    /// already checked keeps its verdict.
    fn spawn_checks(&mut self) {
        for check in self.checks.drain(..) {
            check.abort();
        }
        let mut trackers = std::mem::take(&mut self.health);
        for (vip, planned) in self.config.vips.iter().zip(&self.plan.vips) {
            let vip = vip.get_ref();
            let check = vip.check();
            for backend in &planned.backends {
                let tracker = trackers
                    .remove(&backend.id)
                    .unwrap_or_else(|| Tracker::new(check.rise, check.fall));
                self.health.insert(backend.id, tracker);
                self.checks.extend(health::spawn(
                    backend.id,
                    backend.address,
                    vip.port,
                    &check,
                    self.reports.clone(),
                ));
            }
        }
    }

    /// Stops the check tasks.
    pub(super) fn stop_checks(&mut self) {
        for check in self.checks.drain(..) {
            check.abort();
        }
    }

    /// Reads the configuration file again and applies it. An invalid file,
    /// or one that changes what only a restart can change, is refused with
    /// the reason and changes nothing.
    pub(super) async fn reload(&mut self) -> Result<String, String> {
        let path = self.config_file()?;
        let config = crate::config::load(&path).map_err(|errors| errors.to_string())?;
        self.take(config, &path).await
    }

    /// Applies a CLI change: edits the file's text (comments and layout
    /// kept), checks the result like any configuration, writes it back
    /// atomically and applies it. Refused changes touch neither the file
    /// nor the datapath.
    pub(super) async fn change(
        &mut self,
        edit: &crate::config::edit::Edit,
    ) -> Result<String, String> {
        let path = self.config_file()?;
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let edited = crate::config::edit::apply(&text, edit)?;
        let config = crate::config::parse(&edited, &path.display().to_string())
            .map_err(|e| e.to_string())?;
        self.check_restart_keys(&config, &path)?;
        crate::config::write_atomically(&path, &edited)
            .map_err(|e| format!("cannot write {}: {e}; nothing was changed", path.display()))?;
        self.take(config, &path).await
    }

    fn config_file(&self) -> Result<std::path::PathBuf, String> {
        self.config_path.clone().ok_or_else(|| {
            "the daemon runs without a configuration file (start it with --config)".to_owned()
        })
    }

    /// Refuses a configuration that changes what only a restart can.
    fn check_restart_keys(&self, config: &Config, path: &std::path::Path) -> Result<(), String> {
        let (old, new) = (&self.config.datapath, &config.datapath);
        let mut fixed = Vec::new();
        if old.interfaces != new.interfaces {
            fixed.push("[datapath] interfaces");
        }
        if old.xdp_mode != new.xdp_mode {
            fixed.push("[datapath] xdp_mode");
        }
        if old.ring_size.get_ref() != new.ring_size.get_ref() {
            fixed.push("[datapath] ring_size");
        }
        if old.flow_table_size.get_ref() != new.flow_table_size.get_ref() {
            fixed.push("[datapath] flow_table_size");
        }
        let mut daemon = config.daemon.clone();
        if let Some(socket) = &self.socket_override {
            daemon.control_socket.clone_from(socket);
        }
        if self.config.daemon != daemon {
            fixed.push("[daemon]");
        }
        if fixed.is_empty() {
            return Ok(());
        }
        Err(format!(
            "{}: {} cannot change while the daemon runs (restart it); nothing was changed",
            path.display(),
            fixed.join(", ")
        ))
    }

    /// Applies a checked configuration read from `path`.
    async fn take(&mut self, mut config: Config, path: &std::path::Path) -> Result<String, String> {
        self.check_restart_keys(&config, path)?;
        if let Some(socket) = &self.socket_override {
            config.daemon.control_socket.clone_from(socket);
        }
        self.apply(config).await.map_err(|e| format!("{e:#}"))?;
        Ok(format!(
            "{} applied ({} VIPs, {} backends)",
            path.display(),
            self.plan.vips.len(),
            self.plan
                .vips
                .iter()
                .map(|v| v.backends.len())
                .sum::<usize>()
        ))
    }

    /// Moves the datapath from the plan in force to the plan of `config`:
    /// removed VIPs and addresses go, removed backends are marked down (so
    /// their flows fail over), settings are rewritten, then everything new
    /// or changed is published as at start. Flows of what stays are
    /// untouched.
    async fn apply(&mut self, config: Config) -> Result<()> {
        let plan = plan::plan_with(&config, &mut self.numbering);
        let changes = plan::changes(&self.plan, &plan);
        let (vips, ids) = numbers(&self.plan);
        reset_new_numbers(&mut self.datapath, &plan, &vips, &ids)?;
        let mut removed = Vec::new();
        for old in &self.plan.vips {
            let kept = plan.vips.iter().any(|v| v.slot == old.slot);
            if !kept {
                // Only a VIP with a ring was ever published.
                if self.rings.remove(&old.slot.info.index).is_some() {
                    removed.push(old.slot);
                }
                self.recipes.remove(&old.slot.info.index);
                self.policies.remove(&old.slot.info.index);
                self.all_down.remove(&old.slot.info.index);
            }
        }
        self.datapath.remove_vips(&removed)?;
        for (key, _) in &self.plan.addrs {
            if !plan.addrs.iter().any(|(k, _)| k == key) {
                self.datapath.remove_vip_addr(key)?;
            }
        }
        let ids: BTreeSet<u32> = plan.backend_ids().collect();
        for old in self.plan.vips.iter().flat_map(|v| v.backends.iter()) {
            if !ids.contains(&old.id) {
                let mut info = self.written.remove(&old.id).unwrap_or_default();
                info.flags = 0;
                self.datapath.set_backend(old.id, &info)?;
                self.datapath.set_backend_weight(old.id, 0)?;
                self.smoothed_us.remove(&old.id);
                self.paths.remove(&old.id);
                self.health.remove(&old.id);
                self.latency.remove(&old.id);
                self.health_counts.remove(&old.id);
            }
        }
        if plan.settings != self.plan.settings {
            self.datapath.set_settings(&plan.settings)?;
        }
        self.plan = plan;
        self.config = config;
        self.spawn_checks();
        self.resolve().await?;
        self.publish_all()?;
        // Logged once in force: a failed apply leaves no history behind.
        for change in &changes {
            log_change(change);
        }
        Ok(())
    }

    /// Reads every backend's path from the kernel.
    pub(super) async fn resolve(&mut self) -> Result<()> {
        let backends: Vec<(u32, IpAddr)> = self
            .plan
            .vips
            .iter()
            .flat_map(|v| v.backends.iter().map(|b| (b.id, b.address)))
            .collect();
        // A backend of many VIPs is resolved once.
        let addresses: Vec<IpAddr> = backends
            .iter()
            .map(|(_, a)| *a)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let results: BTreeMap<IpAddr, _> = self
            .neighbours
            .resolve_all(&addresses)
            .await
            .into_iter()
            .collect();
        let mut reported = BTreeSet::new();
        for (id, address) in &backends {
            let path: Option<L2Path> = match &results[address] {
                Ok(path) => Some(*path),
                Err(err) => {
                    if self.paths.get(id).is_none_or(Option::is_some) && reported.insert(*address) {
                        tracing::warn!(backend = %address, error = %err, "backend unreachable");
                    }
                    None
                }
            };
            let before = self.paths.insert(*id, path);
            if before.flatten().and_then(|p| p.dst_mac) != path.and_then(|p| p.dst_mac)
                && let Some(mac) = path.and_then(|p| p.dst_mac)
                && reported.insert(*address)
            {
                tracing::info!(backend = %address, mac = %format_mac(mac), "backend neighbour resolved");
            }
        }
        Ok(())
    }

    /// Takes one check result; true when the backend changed state (the
    /// maps must follow).
    pub(super) fn health_report(&mut self, report: Report) -> bool {
        // A report still in flight from the check task of a backend just
        // removed: its entries are gone and must stay gone.
        if !self.health.contains_key(&report.backend) {
            return false;
        }
        self.latency.insert(report.backend, report.latency);
        let counts = self.health_counts.entry(report.backend).or_default();
        if report.success {
            counts.ok += 1;
        } else {
            counts.failed += 1;
        }
        if report.success {
            let sample = report.latency.as_secs_f64() * 1e6;
            let smoothed = match self.smoothed_us.get(&report.backend) {
                Some(old) => old + LATENCY_SMOOTHING * (sample - old),
                None => sample,
            };
            self.smoothed_us.insert(report.backend, smoothed);
            if let Err(err) = self
                .datapath
                .set_backend_latency(report.backend, smoothed.round().min(u32::MAX as f64) as u32)
            {
                tracing::warn!(error = %err, "cannot write a backend's latency");
            }
        }
        let Some(tracker) = self.health.get_mut(&report.backend) else {
            return false;
        };
        let before = tracker.state();
        let Some(after) = tracker.record(report.success) else {
            return false;
        };
        let counts = self.health_counts.entry(report.backend).or_default();
        if after == Health::Up {
            counts.went_up += 1;
        } else {
            counts.went_down += 1;
        }
        let (vip, address) = self.describe(report.backend);
        tracing::info!(
            vip,
            backend = %address,
            from = %before,
            to = %after,
            reason = report.detail.as_str(),
            latency_ms = report.latency.as_secs_f64() * 1e3,
            "backend health changed"
        );
        true
    }

    /// The VIP name and address of backend `id`, for logs.
    fn describe(&self, id: u32) -> (&str, IpAddr) {
        self.plan
            .vips
            .iter()
            .find_map(|v| {
                v.backends
                    .iter()
                    .find(|b| b.id == id)
                    .map(|b| (v.name.as_str(), b.address))
            })
            .unwrap_or(("?", IpAddr::from([0, 0, 0, 0])))
    }

    /// Whether every backend's MAC is known.
    pub(super) fn all_resolved(&self) -> bool {
        self.paths
            .values()
            .all(|p| p.is_some_and(|p| p.dst_mac.is_some()))
    }

    /// The `backends` map entry for backend `id`.
    fn backend_info(&self, id: u32, address: IpAddr, vip: u32) -> BackendInfo {
        let path = self.paths.get(&id).copied().flatten();
        let up = self.health.get(&id).is_none_or(|t| t.state() == Health::Up);
        let mut flags = if up { BACKEND_UP } else { 0 };
        let (macs, ifindex) = match path {
            Some(L2Path {
                ifindex,
                src_mac,
                dst_mac: Some(dst),
            }) => {
                flags |= BACKEND_RESOLVED;
                (BackendInfo::mac_words(dst, src_mac), ifindex)
            }
            _ => ([0; 6], 0),
        };
        BackendInfo {
            addr: plan::addr(address),
            macs,
            ifindex,
            flags,
            vip,
        }
    }

    /// Writes settings, backends, rings, VIPs and addresses, in that order:
    /// a VIP is published only once everything it points to is in place.
    pub(super) fn publish_all(&mut self) -> Result<()> {
        self.publish_changes()?;
        for (key, info) in &self.plan.addrs {
            self.datapath.set_vip_addr(key, info)?;
        }
        Ok(())
    }

    /// Writes backends whose entry changed, lets the program redirect to
    /// their interfaces, and rebuilds the rings whose usable backends
    /// changed (a VIP with none keeps the ring it has).
    pub(super) fn publish_changes(&mut self) -> Result<()> {
        let backends: Vec<(u32, IpAddr, u32, u32)> = self
            .plan
            .vips
            .iter()
            .flat_map(|v| {
                v.backends
                    .iter()
                    .map(|b| (b.id, b.address, v.slot.info.index, b.weight))
            })
            .collect();
        for (id, address, vip, weight) in backends {
            // Before the backend's entry: a backend put in place is never
            // seen with the weight of its id's previous owner.
            self.datapath.set_backend_weight(id, weight)?;
            let info = self.backend_info(id, address, vip);
            if self.written.get(&id) == Some(&info) {
                continue;
            }
            if info.ifindex != 0 {
                self.datapath.add_egress(info.ifindex)?;
            }
            self.datapath.set_backend(id, &info)?;
            self.written.insert(id, info);
        }
        // Policies before tables and keys: a VIP is never seen with
        // another's policy.
        for vip in &self.plan.vips {
            let index = vip.slot.info.index;
            if self.policies.get(&index) != Some(&vip.policy) {
                self.datapath.set_vip_policy(index, &vip.policy)?;
                self.policies.insert(index, vip.policy);
            }
        }
        let ring_size = self.plan.settings.ring_size;
        let mut changed = Vec::new();
        for vip in &self.plan.vips {
            let usable = |b: &plan::BackendPlan| {
                self.written.get(&b.id).is_some_and(|i| {
                    i.flags & (BACKEND_UP | BACKEND_RESOLVED) == BACKEND_UP | BACKEND_RESOLVED
                })
            };
            let index = vip.slot.info.index;
            let mut members = vip.members(usable);
            if members.is_empty() {
                if self.rings.contains_key(&index) {
                    if self.all_down.insert(index) {
                        tracing::warn!(
                            vip = vip.name.as_str(),
                            "every backend of the VIP is down or unreachable: keeping its last ring rather than dropping its traffic"
                        );
                    }
                    continue;
                }
                // No usable backend yet: place flows on every weighted
                // backend, so packets are counted as unresolved, not lost
                // without a trace, until neighbours resolve.
                members = vip.members(|_| true);
                if members.is_empty() {
                    tracing::warn!(
                        vip = vip.name.as_str(),
                        "VIP has no backend with a weight above 0: its traffic passes"
                    );
                    continue;
                }
            }
            self.all_down.remove(&index);
            // The same members make the same ring: with many VIPs, one
            // backend's change rebuilds one ring, not all of them.
            let recipe = (ring_size, vip.slot.info.flags, members);
            if self.rings.contains_key(&index) && self.recipes.get(&index) == Some(&recipe) {
                continue;
            }
            let ring = schedule::table(vip.scheduler, &recipe.2, ring_size)?;
            if self.rings.get(&index) == Some(&ring) {
                self.recipes.insert(index, recipe);
                continue;
            }
            changed.push((vip, ring, recipe));
        }
        // All changed rings at once: the datapath swaps them in batches.
        let rings: Vec<(crate::datapath::VipSlot, &[u32])> = changed
            .iter()
            .map(|(vip, ring, _)| (vip.slot, ring.as_slice()))
            .collect();
        self.datapath.publish_vips(&rings)?;
        for (vip, ring, recipe) in changed {
            tracing::info!(
                vip = vip.name.as_str(),
                backends = recipe.2.len(),
                "ring published"
            );
            self.rings.insert(vip.slot.info.index, ring);
            self.recipes.insert(vip.slot.info.index, recipe);
        }
        Ok(())
    }
}

/// The VIP indexes and backend ids `plan` uses.
fn numbers(plan: &Plan) -> (BTreeSet<u32>, BTreeSet<u32>) {
    (plan.vip_indexes().collect(), plan.backend_ids().collect())
}

/// Zeroes the counters (and connection count) of the VIP indexes and
/// backend ids `plan` uses outside `vips` and `ids` (those in use so far):
/// numbers are reused once every one has been handed out, and a pinned map
/// keeps what a number counted before a restart, so a new VIP or backend
/// must not start with its predecessor's totals.
fn reset_new_numbers(
    datapath: &mut Datapath,
    plan: &Plan,
    vips: &BTreeSet<u32>,
    ids: &BTreeSet<u32>,
) -> Result<()> {
    let (planned_vips, planned_ids) = numbers(plan);
    let new_vips: Vec<u32> = planned_vips.difference(vips).copied().collect();
    let new_ids: Vec<u32> = planned_ids.difference(ids).copied().collect();
    datapath.reset_counters(&new_vips, &new_ids)?;
    for id in new_ids {
        let conns = datapath.backend_load(id)?.conns as i64;
        if conns != 0 {
            datapath.correct_backend_conns(id, -conns)?;
        }
    }
    Ok(())
}

/// Logs one configuration change as a structured event: `vip`,
/// `backend`, `from`, `to` as fields, so JSON logs carry them as keys.
fn log_change(change: &plan::Change) {
    use plan::Change;
    match change {
        Change::VipAdded { vip } => tracing::info!(vip, "VIP added"),
        Change::VipRemoved { vip } => tracing::info!(vip, "VIP removed"),
        Change::VipService { vip, from, to } => {
            tracing::info!(vip, from, to, "VIP service changed");
        }
        Change::VipPolicy { vip, from, to } => {
            tracing::info!(vip, from, to, "VIP scheduling changed");
        }
        Change::BackendAdded {
            vip,
            backend,
            weight,
        } => tracing::info!(vip, %backend, weight, "backend added"),
        Change::BackendRemoved { vip, backend } => {
            tracing::info!(vip, %backend, "backend removed");
        }
        Change::Weight {
            vip,
            backend,
            from,
            to,
        } => tracing::info!(vip, %backend, from, to, "backend weight changed"),
    }
}

pub(super) fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
