//! `balancer run`: the long-running daemon.
//!
//! It loads the configuration, lays it out ([`crate::plan`]), resolves every
//! backend's MACs from the kernel's neighbour table, writes the datapath's
//! maps through [`Datapath`], attaches the program, and then keeps the maps
//! in line: backends whose neighbour changes or resolves are rewritten, and
//! a VIP's ring is rebuilt whenever its set of usable backends changes.

use std::{collections::BTreeMap, path::Path, time::Duration};

use anyhow::{Context as _, Result, bail};
use balancer_common::backend::{BACKEND_RESOLVED, BACKEND_UP, BackendInfo};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};

use crate::{
    cli::RunArgs,
    config::{self, Config},
    datapath::{Datapath, DecisionLog, LoadOptions, XdpMode},
    health::{self, Health, Report, Tracker},
    neighbour::{L2Path, Neighbours},
    plan::{self, Plan},
};

/// How often backends' neighbours are read again.
const RESOLVE_INTERVAL: Duration = Duration::from_secs(1);

/// Loads everything, serves until SIGINT or SIGTERM, then detaches.
pub fn run(args: &RunArgs) -> Result<()> {
    let config = load_config(args)?;
    let mut interfaces: Vec<String> = config
        .datapath
        .interfaces
        .iter()
        .map(|i| i.get_ref().clone())
        .collect();
    if !args.interfaces.is_empty() {
        interfaces.clone_from(&args.interfaces);
    }
    if interfaces.is_empty() {
        bail!(
            "no interface to attach to: set [datapath] interfaces in the configuration or pass --interface"
        );
    }
    let mode = args
        .xdp_mode
        .unwrap_or_else(|| config.datapath.xdp_mode.into());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    runtime.block_on(serve(args, &config, &interfaces, mode))
}

/// The configuration named by `--config`, or the default file if it
/// exists, or an empty configuration.
fn load_config(args: &RunArgs) -> Result<Config> {
    let path = match &args.config {
        Some(path) => path.clone(),
        None if Path::new(config::DEFAULT_PATH).exists() => config::DEFAULT_PATH.into(),
        None => {
            tracing::warn!(
                path = config::DEFAULT_PATH,
                "no configuration file: running with no VIPs"
            );
            return Ok(Config::default());
        }
    };
    let config = config::load(&path).map_err(|errors| {
        for line in errors.to_string().lines() {
            tracing::error!("{line}");
        }
        anyhow::anyhow!(
            "{} is not a valid configuration; nothing was changed",
            path.display()
        )
    })?;
    tracing::info!(path = %path.display(), vips = config.vips.len(), "configuration loaded");
    Ok(config)
}

async fn serve(
    args: &RunArgs,
    config: &Config,
    interfaces: &[String],
    mode: XdpMode,
) -> Result<()> {
    let options = LoadOptions {
        flow_table_size: *config.datapath.flow_table_size.get_ref(),
        decision_log: args.datapath_log,
    };
    let mut datapath = Datapath::load_with(options).context("failed to load the XDP program")?;
    if let Some(log) = datapath.take_logger() {
        tracing::warn!(
            "datapath decision logging is on: every packet is logged, which costs speed"
        );
        tokio::spawn(forward_decision_log(log)?);
    }
    let neighbours = Neighbours::connect().context("cannot open a netlink connection")?;
    let mut state = State::new(plan::plan(config), datapath, neighbours)?;
    let (reports_tx, mut reports) = tokio::sync::mpsc::channel::<Report>(1024);
    let mut checks = Vec::new();
    for (vip, planned) in config.vips.iter().zip(&state.plan.vips) {
        let vip = vip.get_ref();
        let check = vip.check();
        for backend in &planned.backends {
            state
                .health
                .insert(backend.id, Tracker::new(check.rise, check.fall));
            checks.extend(health::spawn(
                backend.id,
                backend.address,
                vip.port,
                &check,
                reports_tx.clone(),
            ));
        }
    }
    drop(reports_tx);
    // Give the neighbours a moment to resolve (the first round provokes
    // it), so the first packets are not dropped as unresolved.
    for _ in 0..20 {
        state.resolve().await?;
        if state.all_resolved() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    state.publish_all()?;
    for interface in interfaces {
        let mode = state
            .datapath
            .attach(interface, mode)
            .with_context(|| format!("failed to start on {interface}"))?;
        tracing::info!(interface = interface.as_str(), %mode, "attached XDP program");
    }

    let mut sigterm = signal(SignalKind::terminate()).context("failed to watch SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("failed to watch SIGINT")?;
    let mut stats = tokio::time::interval(args.stats_interval);
    let mut resolve = tokio::time::interval(RESOLVE_INTERVAL);
    stats.tick().await;
    resolve.tick().await;
    loop {
        tokio::select! {
            _ = stats.tick() => log_stats(&state.datapath)?,
            _ = resolve.tick() => {
                state.resolve().await?;
                state.publish_changes()?;
            }
            Some(report) = reports.recv() => {
                if state.health_report(report) {
                    state.publish_changes()?;
                }
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    for check in checks {
        check.abort();
    }
    log_stats(&state.datapath)?;
    let attached: Vec<String> = state
        .datapath
        .attachments()
        .map(|(i, _)| i.to_owned())
        .collect();
    for interface in attached {
        state
            .datapath
            .detach(&interface)
            .with_context(|| format!("failed to detach from {interface}"))?;
        tracing::info!(interface = interface.as_str(), "detached XDP program");
    }
    Ok(())
}

/// What the daemon knows of each backend, and what it has written.
struct State {
    datapath: Datapath,
    plan: Plan,
    neighbours: Neighbours,
    /// Backend id → how to reach it (None: no route or not on link).
    paths: BTreeMap<u32, Option<L2Path>>,
    /// Backend id → what the `backends` map holds.
    written: BTreeMap<u32, BackendInfo>,
    /// VIP index → the ring in place.
    rings: BTreeMap<u32, Vec<u32>>,
    /// Backend id → its health checks' verdict.
    health: BTreeMap<u32, Tracker>,
    /// Backend id → how long its last check took.
    latency: BTreeMap<u32, Duration>,
    /// VIP indexes whose backends are all unusable (warned once).
    all_down: std::collections::BTreeSet<u32>,
}

impl State {
    fn new(plan: Plan, mut datapath: Datapath, neighbours: Neighbours) -> Result<State> {
        datapath
            .set_settings(&plan.settings)
            .context("cannot write the datapath settings")?;
        Ok(State {
            datapath,
            plan,
            neighbours,
            paths: BTreeMap::new(),
            written: BTreeMap::new(),
            rings: BTreeMap::new(),
            health: BTreeMap::new(),
            latency: BTreeMap::new(),
            all_down: std::collections::BTreeSet::new(),
        })
    }

    /// Reads every backend's path from the kernel.
    async fn resolve(&mut self) -> Result<()> {
        let backends: Vec<(u32, std::net::IpAddr)> = self
            .plan
            .vips
            .iter()
            .flat_map(|v| v.backends.iter().map(|b| (b.id, b.address)))
            .collect();
        let addresses: Vec<_> = backends.iter().map(|(_, a)| *a).collect();
        let results = self.neighbours.resolve_all(&addresses).await;
        let mut reported = std::collections::BTreeSet::new();
        for ((id, address), (_, result)) in backends.iter().zip(results) {
            let path = match result {
                Ok(path) => Some(path),
                Err(err) => {
                    if self.paths.get(id).is_none_or(Option::is_some) {
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
    fn health_report(&mut self, report: Report) -> bool {
        self.latency.insert(report.backend, report.latency);
        let Some(tracker) = self.health.get_mut(&report.backend) else {
            return false;
        };
        let before = tracker.state();
        let Some(after) = tracker.record(report.success) else {
            return false;
        };
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
    fn describe(&self, id: u32) -> (&str, std::net::IpAddr) {
        self.plan
            .vips
            .iter()
            .find_map(|v| {
                v.backends
                    .iter()
                    .find(|b| b.id == id)
                    .map(|b| (v.name.as_str(), b.address))
            })
            .unwrap_or(("?", std::net::IpAddr::from([0, 0, 0, 0])))
    }

    /// Whether every backend's MAC is known.
    fn all_resolved(&self) -> bool {
        self.paths
            .values()
            .all(|p| p.is_some_and(|p| p.dst_mac.is_some()))
    }

    /// The `backends` map entry for backend `id`.
    fn backend_info(&self, id: u32, address: std::net::IpAddr) -> BackendInfo {
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
        }
    }

    /// Writes settings, backends, rings, VIPs and addresses, in that order:
    /// a VIP is published only once everything it points to is in place.
    fn publish_all(&mut self) -> Result<()> {
        self.publish_changes()?;
        for (key, info) in &self.plan.addrs {
            self.datapath.set_vip_addr(key, info)?;
        }
        Ok(())
    }

    /// Writes backends whose entry changed, lets the program redirect to
    /// their interfaces, and rebuilds the rings whose usable backends
    /// changed (a VIP with none keeps the ring it has).
    fn publish_changes(&mut self) -> Result<()> {
        let backends: Vec<(u32, std::net::IpAddr)> = self
            .plan
            .vips
            .iter()
            .flat_map(|v| v.backends.iter().map(|b| (b.id, b.address)))
            .collect();
        for (id, address) in backends {
            let info = self.backend_info(id, address);
            if self.written.get(&id) == Some(&info) {
                continue;
            }
            if info.ifindex != 0 {
                self.datapath.add_egress(info.ifindex)?;
            }
            self.datapath.set_backend(id, &info)?;
            self.written.insert(id, info);
        }
        let ring_size = self.plan.settings.ring_size;
        for vip in &self.plan.vips {
            let usable = |b: &plan::BackendPlan| {
                self.written.get(&b.id).is_some_and(|i| {
                    i.flags & (BACKEND_UP | BACKEND_RESOLVED) == BACKEND_UP | BACKEND_RESOLVED
                })
            };
            let ring = match vip.ring(ring_size, usable)? {
                Some(ring) => ring,
                None if self.rings.contains_key(&vip.slot.info.index) => {
                    if self.all_down.insert(vip.slot.info.index) {
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
                None => match vip.ring(ring_size, |_| true)? {
                    Some(ring) => ring,
                    None => {
                        tracing::warn!(
                            vip = vip.name.as_str(),
                            "VIP has no backend with a weight above 0: its traffic passes"
                        );
                        continue;
                    }
                },
            };
            self.all_down.remove(&vip.slot.info.index);
            if self.rings.get(&vip.slot.info.index) == Some(&ring) {
                continue;
            }
            self.datapath.publish_vip(&vip.slot, &ring)?;
            tracing::info!(
                vip = vip.name.as_str(),
                backends = vip.backends.iter().filter(|b| ring.contains(&b.id)).count(),
                "ring published"
            );
            self.rings.insert(vip.slot.info.index, ring);
        }
        Ok(())
    }
}

fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn log_stats(datapath: &Datapath) -> Result<()> {
    let reasons = datapath.reasons().context("failed to read the counters")?;
    let summary: Vec<String> = reasons
        .named()
        .filter(|(_, count)| count.packets > 0)
        .map(|(name, count)| format!("{name}={}/{}B", count.packets, count.bytes))
        .collect();
    tracing::info!(counters = summary.join(" "), "packet counters");
    Ok(())
}

/// Copies the debug variant's log records into the daemon's log whenever
/// the kernel has some.
fn forward_decision_log(log: DecisionLog) -> Result<impl std::future::Future<Output = ()>> {
    // SAFETY: the descriptor is the logger's ring buffer map, which it owns
    // and keeps open, unchanged, until the AsyncFd (which owns the logger)
    // is dropped.
    let mut log = unsafe { AsyncFd::register_with_interest(log, Interest::READABLE) }
        .map_err(|err| anyhow::anyhow!("cannot watch the datapath's decision log: {err}"))?;
    Ok(async move {
        loop {
            let Ok(mut ready) = log.readable_mut().await else {
                tracing::error!("the datapath's decision log stopped");
                return;
            };
            ready.get_inner_mut().flush();
            ready.clear_ready();
        }
    })
}
