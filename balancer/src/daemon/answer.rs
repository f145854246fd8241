//! Answers to control requests, built from the daemon's state and the
//! datapath's counters.

use serde::Serialize;

use super::{
    lists::{self, ListRow},
    reconcile::ApplyError,
    state::State,
    view::View,
};
use crate::{
    config::List,
    control::{Request, Response},
};

/// `status`.
#[derive(Serialize)]
struct Status {
    version: &'static str,
    config: Option<String>,
    interfaces: Vec<Attachment>,
    /// `http://ADDRESS/metrics`, "off", or "failed: why".
    metrics: String,
    vips: usize,
    backends: usize,
    backends_up: usize,
    backends_unresolved: usize,
    /// The fingerprint of what decides a new flow's backend (hash seed,
    /// ring size, VIPs, schedulers, ring members and weights): the same on
    /// every host of an ECMP group that agrees. Null until known.
    flow_fingerprint: Option<String>,
    /// Why the maps are behind the configuration in force, since a set of
    /// writes failed (retried after a growing wait); null when in line.
    maps_error: Option<String>,
    /// The announcements; null without `[announce]`.
    announce: Option<AnnounceStatus>,
    /// The flows shared with peer hosts; null without `[sync]`.
    sync: Option<SyncStatus>,
}

/// What `status` says of the flows shared with peers.
#[derive(Serialize)]
struct SyncStatus {
    listen: String,
    /// New flows of this host sent (each to every peer).
    flows_sent: u64,
    /// Flows the queue had no room for.
    queue_dropped: u64,
    /// Peers' flows put in the connection table, and those it held
    /// already.
    flows_inserted: u64,
    /// Peers' flows shared again (still live there) that kept this host's
    /// entry from expiring.
    flows_refreshed: u64,
    flows_existing: u64,
    /// Peers' flows of a VIP, or a backend, this host does not have.
    unknown_vip: u64,
    unknown_backend: u64,
    /// Peers' flows not put in: their share of the insert budget was
    /// spent.
    over_budget: u64,
    /// Datagrams refused: a MAC that does not match, a replay, a stale or
    /// malformed datagram, a sender that is no peer.
    datagrams_refused: u64,
    /// Mean delay from a flow's placing on its host to its entry here, in
    /// milliseconds (null before the first).
    mean_delay_ms: Option<f64>,
    peers: Vec<SyncPeer>,
}

#[derive(Serialize)]
struct SyncPeer {
    address: String,
    datagrams_sent: u64,
    send_errors: u64,
    datagrams_received: u64,
    flows_received: u64,
    /// Seconds since its last datagram (null: none yet).
    last_received_s: Option<f64>,
}

/// What `status`, `host drain` and `host undrain` say of announcements.
#[derive(Serialize)]
struct AnnounceStatus {
    /// The routing table the routes are kept in.
    table: u32,
    drained: bool,
    /// The addresses announced.
    announced: Vec<String>,
    /// VIPs announced, of all.
    vips_announced: usize,
    vips: usize,
    /// Route writes that failed since the start.
    errors: u64,
    /// The last failure, until the table is in line again.
    last_error: Option<String>,
}

#[derive(Serialize)]
struct Attachment {
    interface: String,
    mode: String,
}

/// What `vip list` and `vip show` both say of a VIP, first.
#[derive(Serialize)]
struct VipService {
    name: String,
    address: String,
    port: u16,
    protocol: String,
    scheduler: String,
    /// How packets reach the backends: dsr, ipip, gue or nat.
    forwarding: &'static str,
    /// With nat: whether the backends see a source of the SNAT pool
    /// (null for the other ways).
    snat: Option<bool>,
    /// Session persistence ("5m"), null without.
    persistence_timeout: Option<String>,
}

impl VipService {
    fn of(vip: &crate::plan::VipPlan, config: &crate::config::VipConfig) -> VipService {
        VipService {
            name: vip.name.clone(),
            address: config.address.get_ref().to_string(),
            port: config.port,
            protocol: config.protocol.to_string(),
            scheduler: config.scheduler.name().to_owned(),
            forwarding: config.forwarding.name(),
            snat: (config.forwarding == crate::config::Forwarding::Nat).then(|| config.snat()),
            persistence_timeout: config
                .persistence()
                .map(|p| crate::config::format_duration(p.timeout)),
        }
    }
}

/// `preview`: what a reload of `file` would change.
#[derive(Serialize)]
pub(super) struct PreviewAnswer {
    pub(super) file: String,
    #[serde(flatten)]
    pub(super) preview: crate::preview::Preview,
}

/// One row of `vip list`.
#[derive(Serialize)]
struct VipRow {
    #[serde(flatten)]
    service: VipService,
    backends: usize,
    backends_up: usize,
    /// Every backend down or unreachable: the last ring stays in place.
    all_down: bool,
    /// Less than its `panic_threshold` of its weight is up: every backend
    /// takes new flows.
    panicking: bool,
    /// announced, pending or withdrawn; null without `[announce]`.
    announce: Option<&'static str>,
    /// Why, in words.
    announce_reason: Option<String>,
    packets: u64,
    bytes: u64,
    new_flows: u64,
}

/// `vip show`: one VIP and how its backends share the load.
#[derive(Serialize)]
struct VipDetail {
    #[serde(flatten)]
    service: VipService,
    /// Leading bits that make one IPv6 client for persistence (IPv6 VIPs
    /// with persistence only).
    persistence_ipv6_prefix: Option<u8>,
    /// Length of the interval `new_flows` and `share_percent` cover: the
    /// last one between two scans of the connection table (null until
    /// the second scan).
    interval_s: Option<f64>,
    /// Per-source limits, null without.
    limits: Option<LimitsDetail>,
    /// The share of its weight that is up, in percent.
    weight_up_percent: f64,
    /// Its panic threshold in percent, null without.
    panic_threshold: Option<u8>,
    /// Less than `panic_threshold` of its weight is up: the checks are not
    /// trusted, every backend takes new flows.
    panicking: bool,
    /// How long its backends' slow start lasts, null without.
    slow_start: Option<String>,
    /// announced, pending or withdrawn; null without `[announce]`.
    announce: Option<&'static str>,
    /// Why, in words.
    announce_reason: Option<String>,
    backends: Vec<BackendDetail>,
}

/// A VIP's per-source limits in `vip show`, and what they dropped.
#[derive(Serialize)]
struct LimitsDetail {
    /// New flows a second per source, null: no limit.
    new_flows: Option<u32>,
    new_flows_burst: Option<u32>,
    /// Packets a second per source, null: no limit.
    packets: Option<u32>,
    packets_burst: Option<u32>,
    /// The leading bits of a client's address that make its source.
    source_prefix: u8,
    /// The VIP's own exempt prefixes (`[access]`'s apply too).
    exempt: String,
    /// New flows over their source's rate, dropped.
    dropped_new_flows: u64,
    /// Packets over their source's rate, dropped.
    dropped_packets: u64,
}

/// One backend in `vip show`.
#[derive(Serialize)]
struct BackendDetail {
    address: String,
    /// The port it listens on, for a NAT VIP's backend (null otherwise).
    port: Option<u16>,
    weight: u32,
    /// The weight the datapath holds: lower than `weight` during a slow
    /// start.
    weight_now: u32,
    /// Where its slow start is ("step 2/10, 7.5s to full weight"), null
    /// when not in one.
    slow_start: Option<String>,
    /// up, down or draining (up with weight 0).
    state: &'static str,
    /// Open connections: the datapath's count for the least-* schedulers
    /// (a TCP flow until its FIN or RST), else connection-table entries
    /// not idle at the last scan.
    active_connections: u64,
    /// Smoothed duration of the successful health checks (what
    /// least-latency compares); `backend list` shows the last one.
    smoothed_latency_ms: Option<f64>,
    /// New flows placed on the backend during the interval.
    new_flows: Option<u64>,
    /// Their share of the VIP's new flows during the interval.
    share_percent: Option<f64>,
}

/// One row of `backend list`.
#[derive(Serialize)]
struct BackendRow {
    vip: String,
    address: String,
    weight: u32,
    /// up, down or draining (up with weight 0).
    state: &'static str,
    /// The backend's MAC, when resolved.
    mac: Option<String>,
    /// The last health check's duration.
    latency_ms: Option<f64>,
    packets: u64,
    bytes: u64,
    /// Flows the datapath placed on this backend (connections, for TCP).
    new_flows: u64,
}

/// `stats`.
#[derive(Serialize)]
struct Stats {
    counters: std::collections::BTreeMap<&'static str, Count>,
    vips: Vec<VipRow>,
}

#[derive(Serialize)]
struct Count {
    packets: u64,
    bytes: u64,
}

impl State {
    /// Answers one control request.
    pub(super) async fn answer(&mut self, request: Request) -> Response {
        let view = self.view();
        let result = match request {
            Request::Status {} => Ok(Response::ok(view.status())),
            Request::VipList {} => view.vip_rows().map(Response::ok),
            Request::VipShow { name } => view.vip_detail(&name).map(Response::ok),
            Request::BackendList { vip } => view.backend_rows(vip.as_deref()).map(Response::ok),
            Request::Stats {} => view.stats().map(Response::ok),
            Request::AccessList { list, vip } => {
                view.access_rows(list, vip.as_deref()).map(Response::ok)
            }
            Request::Reload { allow_empty } => Ok(match self.reload(allow_empty).await {
                Ok(done) => {
                    tracing::info!("reload: {done}");
                    Response::ok(done)
                }
                Err(error) => {
                    if let ApplyError::Refused(_) = error {
                        tracing::error!("reload refused: {error}");
                    } else {
                        tracing::error!("reload {error}");
                    }
                    Response::error(error.to_string())
                }
            }),
            Request::Preview {
                path,
                text,
                allow_empty,
            } => Ok(match self.preview(path.zip(text), allow_empty) {
                Ok(preview) => Response::ok(preview),
                Err(error) => Response::error(error),
            }),
            Request::HostDrain {} => self.drain(true).await,
            Request::HostUndrain {} => self.drain(false).await,
            Request::Change(edit) => Ok(match self.change(&edit).await {
                Ok(done) => {
                    tracing::info!(change = ?edit, "configuration changed: {done}");
                    Response::ok(done)
                }
                Err(error @ ApplyError::Refused(_)) => {
                    tracing::warn!(change = ?edit, "change refused: {error}");
                    Response::error(error.to_string())
                }
                Err(error) => {
                    tracing::error!(change = ?edit, "change {error}");
                    Response::error(error.to_string())
                }
            }),
        };
        result.unwrap_or_else(|e| Response::error(format!("{e:#}")))
    }

    /// `host drain` (`drained`) and `host undrain`: the mark, then the
    /// table at once.
    async fn drain(&mut self, drained: bool) -> anyhow::Result<Response> {
        let Some(announcer) = &mut self.announcer else {
            anyhow::bail!(
                "announcements are off (the configuration has no [announce]): there is nothing to {}",
                if drained { "drain" } else { "undrain" }
            );
        };
        announcer.set_drained(drained)?;
        self.announce().await;
        Ok(Response::ok(self.view().announce_status()))
    }
}

impl View<'_> {
    /// The lists that have prefixes or dropped packets: only `only`
    /// with it, only the global lists and `vip`'s with `vip`.
    fn access_rows(&self, only: Option<List>, vip: Option<&str>) -> anyhow::Result<Vec<ListRow>> {
        let config = &self.desired.config;
        if let Some(name) = vip
            && !config
                .vips
                .iter()
                .any(|v| v.get_ref().name.get_ref() == name)
        {
            anyhow::bail!("no VIP named {name:?} (`balancer vip list` shows them)");
        }
        let counters = self.datapath.access_counters()?;
        Ok(lists::rows(config, self.plan(), &counters)
            .into_iter()
            .filter(|r| only.is_none_or(|list| r.list == list))
            .filter(|r| vip.is_none_or(|name| r.scope == "global" || r.scope == name))
            .filter(|r| !r.prefixes.is_empty() || r.dropped_packets > 0)
            .collect())
    }

    fn status(&self) -> Status {
        Status {
            version: env!("CARGO_PKG_VERSION"),
            config: self.desired.path.as_ref().map(|p| p.display().to_string()),
            interfaces: self
                .datapath
                .attachments()
                .map(|(interface, mode)| Attachment {
                    interface: interface.to_owned(),
                    mode: mode.to_string(),
                })
                .collect(),
            metrics: self.metrics_endpoint.to_owned(),
            vips: self.plan().vips.len(),
            backends: self.plan().backend_ids().count(),
            backends_up: self
                .plan()
                .backend_ids()
                .filter(|id| self.is_up(*id))
                .count(),
            backends_unresolved: self
                .plan()
                .backend_ids()
                .filter(|id| self.observed.reach(*id).mac().is_none())
                .count(),
            flow_fingerprint: super::fingerprint::of(self.published),
            maps_error: self.maps_error.map(str::to_owned),
            announce: self.announce_status(),
            sync: self.sync_status(),
        }
    }

    fn sync_status(&self) -> Option<SyncStatus> {
        let sharing = self.sharing?;
        let c = &sharing.counts;
        Some(SyncStatus {
            listen: sharing.listen.to_string(),
            flows_sent: c.flows_sent,
            queue_dropped: c.queue_dropped,
            flows_inserted: c.received.inserted,
            flows_refreshed: c.received.refreshed,
            flows_existing: c.received.existing,
            unknown_vip: c.received.unknown_vip,
            unknown_backend: c.received.unknown_backend,
            over_budget: c.received.over_budget,
            datagrams_refused: c.refused.values().sum(),
            mean_delay_ms: (c.delay_count > 0).then(|| c.delay_sum * 1e3 / c.delay_count as f64),
            peers: c
                .peers
                .iter()
                .map(|(address, p)| SyncPeer {
                    address: address.to_string(),
                    datagrams_sent: p.datagrams_sent,
                    send_errors: p.send_errors,
                    datagrams_received: p.datagrams_received,
                    flows_received: p.flows_received,
                    last_received_s: p.last_received.map(|t| t.elapsed().as_secs_f64()),
                })
                .collect(),
        })
    }

    fn announce_status(&self) -> Option<AnnounceStatus> {
        let announcer = self.announcer?;
        Some(AnnounceStatus {
            table: announcer.table(),
            drained: announcer.drained,
            announced: announcer
                .announced()
                .iter()
                .map(ToString::to_string)
                .collect(),
            vips_announced: announcer
                .verdict
                .vips
                .values()
                .filter(|why| **why == super::gates::Why::Announced)
                .count(),
            vips: self.plan().vips.len(),
            errors: announcer.errors,
            last_error: announcer.last_error.clone(),
        })
    }

    /// A VIP's announcement state and why; nulls without `[announce]`.
    fn announcement(&self, vip: &str) -> (Option<&'static str>, Option<String>) {
        match self.announcer.map(|a| a.why(vip)) {
            None => (None, None),
            Some(None) => (Some("withdrawn"), Some("not decided yet".to_owned())),
            Some(Some(why)) => (Some(why.state()), Some(why.to_string())),
        }
    }

    fn vip_rows(&self) -> anyhow::Result<Vec<VipRow>> {
        let effective = self.effective();
        self.vips()
            .map(|(vip, config)| {
                let counters = self.datapath.vip_counters(vip.slot.info.index)?;
                let (announce, announce_reason) = self.announcement(&vip.name);
                Ok(VipRow {
                    service: VipService::of(vip, config),
                    backends: vip.backends.len(),
                    backends_up: vip.backends.iter().filter(|b| self.is_up(b.id)).count(),
                    all_down: self.all_down(vip.slot.info.index),
                    panicking: effective.panics(vip.slot.info.index),
                    announce,
                    announce_reason,
                    packets: counters.packets,
                    bytes: counters.bytes,
                    new_flows: counters.new_flows,
                })
            })
            .collect()
    }

    fn vip_detail(&self, name: &str) -> anyhow::Result<VipDetail> {
        let Some((vip, config)) = self.vips().find(|(v, _)| v.name == name) else {
            anyhow::bail!("no VIP named {name:?} (`balancer vip list` shows them)");
        };
        let new_flows: Vec<Option<u64>> = vip
            .backends
            .iter()
            .map(|b| self.observed.get(b.id).and_then(|seen| seen.new_flows))
            .collect();
        let shares = crate::stats::shares(&new_flows);
        let effective = self.effective();
        let index = vip.slot.info.index;
        let mut backends = Vec::with_capacity(vip.backends.len());
        for ((b, new_flows), share_percent) in vip.backends.iter().zip(new_flows).zip(shares) {
            let active_connections = self.active_connections(vip.slot.info.flags, b.id)?;
            let ramp = effective.ramps.get(&b.id);
            backends.push(BackendDetail {
                address: b.address.to_string(),
                port: (vip.forwarding == crate::config::Forwarding::Nat)
                    .then(|| b.port.unwrap_or(config.port)),
                weight: b.weight,
                weight_now: effective.weight(b.id, b.weight),
                slow_start: ramp.map(|r| {
                    format!(
                        "step {}/{}, {:.1}s to full weight",
                        r.step,
                        r.steps,
                        r.left.as_secs_f64()
                    )
                }),
                state: self.backend_state(b.id, b.weight),
                active_connections,
                smoothed_latency_ms: self
                    .observed
                    .get(b.id)
                    .and_then(|seen| seen.smoothed_us)
                    .map(|us| us / 1e3),
                new_flows,
                share_percent,
            });
        }
        let (announce, announce_reason) = self.announcement(&vip.name);
        Ok(VipDetail {
            service: VipService::of(vip, config),
            persistence_ipv6_prefix: config
                .persistence()
                .filter(|_| config.address.get_ref().is_ipv6())
                .map(|p| p.ipv6_prefix),
            interval_s: self.observed.scan.interval.map(|i| i.as_secs_f64()),
            limits: self.limits_detail(index, config)?,
            weight_up_percent: super::effective::health(vip, self.observed).percent_up(),
            panic_threshold: config.panic_threshold(),
            panicking: effective.panics(index),
            slow_start: config.slow_start().map(crate::config::format_duration),
            announce,
            announce_reason,
            backends,
        })
    }

    /// `vip show`'s limits of the VIP of index `index` configured by
    /// `config`.
    fn limits_detail(
        &self,
        index: u32,
        config: &crate::config::VipConfig,
    ) -> anyhow::Result<Option<LimitsDetail>> {
        let Some(limits) = &config.limits else {
            return Ok(None);
        };
        let limits = limits.get_ref();
        let dropped = self
            .datapath
            .limit_counters(index + 1)?
            .get(index as usize)
            .copied()
            .unwrap_or_default();
        let (new_flows, packets) = (limits.new_flow_limit(), limits.packet_limit());
        Ok(Some(LimitsDetail {
            new_flows: new_flows.map(|l| l.per_second),
            new_flows_burst: new_flows.map(|l| l.burst),
            packets: packets.map(|l| l.per_second),
            packets_burst: packets.map(|l| l.burst),
            source_prefix: limits.prefix(config.address.get_ref().is_ipv4()),
            exempt: config
                .list(List::Exempt)
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(" "),
            dropped_new_flows: dropped.new_flows.packets,
            dropped_packets: dropped.packets.packets,
        }))
    }

    fn backend_rows(&self, only: Option<&str>) -> anyhow::Result<Vec<BackendRow>> {
        if let Some(name) = only
            && !self.plan().vips.iter().any(|v| v.name == name)
        {
            anyhow::bail!("no VIP named {name:?} (`balancer vip list` shows them)");
        }
        let mut rows = Vec::new();
        for vip in self
            .plan()
            .vips
            .iter()
            .filter(|v| only.is_none_or(|n| v.name == n))
        {
            for b in &vip.backends {
                let counters = self.datapath.backend_counters(b.id)?;
                let state = self.backend_state(b.id, b.weight);
                rows.push(BackendRow {
                    vip: vip.name.clone(),
                    address: b.address.to_string(),
                    weight: b.weight,
                    state,
                    mac: self
                        .observed
                        .reach(b.id)
                        .mac()
                        .map(super::events::format_mac),
                    latency_ms: self
                        .observed
                        .get(b.id)
                        .and_then(|seen| seen.latency)
                        .map(|d| d.as_secs_f64() * 1e3),
                    packets: counters.packets,
                    bytes: counters.bytes,
                    new_flows: counters.new_flows,
                });
            }
        }
        Ok(rows)
    }

    fn stats(&self) -> anyhow::Result<Stats> {
        let reasons = self.datapath.reasons()?;
        Ok(Stats {
            counters: reasons
                .named()
                .map(|(name, c)| {
                    (
                        name,
                        Count {
                            packets: c.packets,
                            bytes: c.bytes,
                        },
                    )
                })
                .collect(),
            vips: self.vip_rows()?,
        })
    }
}
