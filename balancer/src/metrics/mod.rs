//! Prometheus metrics: what the daemon knows at one moment ([`Snapshot`],
//! filled by the daemon from its state and one batched read of each
//! counter map) and its exposition in the OpenMetrics text format, which
//! Prometheus scrapes natively ([`encode`]), through prometheus-client.
//! Names and labels follow Prometheus conventions: base units (seconds,
//! bytes), `_total` on counters, labels of low cardinality (`vip`,
//! `backend`, `reason`, ...). Pure logic: the HTTP side is [`serve`].

pub mod serve;

use std::fmt::Write as _;

use prometheus_client::{
    encoding::{EncodeLabelSet, text},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::{Registry, Unit},
};

/// Everything one scrape reports.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// The daemon's version.
    pub version: String,
    /// The XDP program's tag (the kernel's hash of its instructions), in
    /// hex.
    pub program_tag: String,
    /// Interfaces the program is attached to, with the mode.
    pub attachments: Vec<(String, String)>,
    /// The fingerprint of what decides a new flow's backend (see `balancer
    /// status`); None until it is known.
    pub flow_fingerprint: Option<String>,
    /// Every VIP.
    pub vips: Vec<VipMetrics>,
    /// Every backend of every VIP.
    pub backends: Vec<BackendMetrics>,
    /// Packets and bytes per verdict reason (`pass_not_vip`, `tx`,
    /// `drop_malformed`, ...).
    pub reasons: Vec<(&'static str, Traffic)>,
    /// Packets and bytes per datapath event (`new_flow`, `failover`, ...).
    pub events: Vec<(&'static str, Traffic)>,
    /// Packets each allow or deny list dropped: scope ("global" or a VIP's
    /// name), list ("deny" or "allow"), packets.
    pub lists: Vec<(String, &'static str, u64)>,
    /// Connection-table entries left by the last scan (None before it).
    pub flow_entries: Option<u64>,
    /// Entries the connection table holds (`flow_table_size`).
    pub flow_capacity: u64,
    /// Handshake-table entries left by the last scan (None before it).
    pub handshake_entries: Option<u64>,
    /// Entries the handshake table holds.
    pub handshake_capacity: u64,
    /// Sources of limited VIPs left by the last scan (None before it).
    pub source_entries: Option<u64>,
    /// Entries the table of sources holds.
    pub source_capacity: u64,
    /// Whether the maps hold the configuration in force (false while a
    /// failed write left them behind: `status` says why).
    pub maps_in_line: bool,
    /// Sets of map writes that failed since the daemon started.
    pub map_write_failures: u64,
    /// The announcements; None without `[announce]`.
    pub announce: Option<AnnounceMetrics>,
    /// The flows shared with peers; None without `[sync]`.
    pub sync: Option<SyncMetrics>,
}

/// What the metrics say of the flows shared with peer hosts.
#[derive(Clone, Debug)]
pub struct SyncMetrics {
    /// New flows of this host sent (each to every peer).
    pub flows_sent: u64,
    /// Flows the queue had no room for.
    pub queue_dropped: u64,
    /// Per peer: address, datagrams sent, send errors, datagrams taken.
    pub peers: Vec<(String, u64, u64, u64)>,
    /// The peers' flows by outcome: inserted, existing, unknown_vip,
    /// unknown_backend.
    pub received: Vec<(&'static str, u64)>,
    /// Datagrams refused, by reason (every reason, 0 or not).
    pub refused: Vec<(&'static str, u64)>,
    /// The delay from a flow's placing on its host to its entry here.
    pub delay: prometheus_client::metrics::histogram::Histogram,
}

/// What the metrics say of announcements.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AnnounceMetrics {
    /// The drain mark is there.
    pub drained: bool,
    /// Route writes that failed.
    pub errors: u64,
    /// Per VIP: its name, whether it is announced, and why (a short name:
    /// servable, too_few_up, drained, ...).
    pub vips: Vec<(String, bool, &'static str)>,
}

/// Packets and their bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Frames.
    pub packets: u64,
    /// Their length, Ethernet header included.
    pub bytes: u64,
}

/// One VIP's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VipMetrics {
    /// The VIP's name (label `vip`).
    pub name: String,
    /// Forwarded to its backends.
    pub traffic: Traffic,
    /// Flows that got a connection-table entry.
    pub new_flows: u64,
    /// Packets its per-source limits dropped: new flows over their
    /// source's rate, packets over theirs.
    pub limited_new_flows: u64,
    pub limited_packets: u64,
    /// Less than its panic threshold of its weight is up: every backend
    /// takes new flows.
    pub panicking: bool,
}

/// One backend of a VIP: counters and what the daemon knows of it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BackendMetrics {
    /// Its VIP's name (label `vip`).
    pub vip: String,
    /// Its address (label `backend`).
    pub backend: String,
    /// Forwarded to it.
    pub traffic: Traffic,
    /// Flows placed on it.
    pub new_flows: u64,
    /// Passing its health checks (or not checked).
    pub up: bool,
    /// Its next hop's MAC is known: the datapath can send to it.
    pub resolved: bool,
    /// Its configured weight (0 while draining).
    pub weight: u32,
    /// Open connections (see `vip show`).
    pub active_connections: u64,
    /// Duration of the last health check.
    pub check_latency: Option<std::time::Duration>,
    /// Health checks that succeeded so far.
    pub checks_ok: u64,
    /// Health checks that failed so far.
    pub checks_failed: u64,
    /// Its checks that could not run on this host.
    pub checks_inconclusive: u64,
    /// Health transitions to up so far.
    pub went_up: u64,
    /// Health transitions to down so far.
    pub went_down: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VipLabel {
    vip: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    vip: String,
    backend: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    vip: String,
    backend: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransitionLabels {
    vip: String,
    backend: String,
    to: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabel {
    event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListLabels {
    scope: String,
    list: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    vip: String,
    limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WhyLabels {
    vip: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    peer: String,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabel {
    peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabels {
    version: String,
    program_tag: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FingerprintLabel {
    fingerprint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttachLabels {
    interface: String,
    mode: String,
}

/// A family of counters set to the values given.
fn counters<L>(values: impl IntoIterator<Item = (L, u64)>) -> Family<L, Counter>
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
{
    let family = Family::<L, Counter>::default();
    for (labels, value) in values {
        family.get_or_create(&labels).inc_by(value);
    }
    family
}

/// A family of integer gauges set to the values given.
fn gauges<L>(values: impl IntoIterator<Item = (L, i64)>) -> Family<L, Gauge>
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
{
    let family = Family::<L, Gauge>::default();
    for (labels, value) in values {
        family.get_or_create(&labels).set(value);
    }
    family
}

/// A gauge without labels set to `value`.
fn gauge(value: u64) -> Gauge {
    let gauge = Gauge::default();
    gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
    gauge
}

/// The registry of one snapshot. Every metric is created afresh from the
/// snapshot, so a removed VIP or backend disappears from the next scrape.
fn registry(s: &Snapshot) -> Registry {
    let mut r = Registry::with_prefix("balancer");
    let vip = |v: &VipMetrics| VipLabel {
        vip: v.name.clone(),
    };
    let backend = |b: &BackendMetrics| BackendLabels {
        vip: b.vip.clone(),
        backend: b.backend.clone(),
    };

    r.register(
        "info",
        "The daemon's version and the XDP program's tag (always 1)",
        gauges([(
            InfoLabels {
                version: s.version.clone(),
                program_tag: s.program_tag.clone(),
            },
            1,
        )]),
    );
    r.register(
        "flow_fingerprint",
        "The fingerprint of what decides a new flow's backend: hash seed, ring size, VIPs, schedulers, ring members and weights (always 1; hosts behind ECMP must show the same)",
        gauges(s.flow_fingerprint.iter().map(|f| {
            (
                FingerprintLabel {
                    fingerprint: f.clone(),
                },
                1,
            )
        })),
    );
    r.register(
        "attached",
        "Interfaces the XDP program is attached to, with the mode (always 1)",
        gauges(s.attachments.iter().map(|(interface, mode)| {
            (
                AttachLabels {
                    interface: interface.clone(),
                    mode: mode.clone(),
                },
                1,
            )
        })),
    );

    r.register(
        "vip_packets",
        "Packets forwarded to a backend of the VIP",
        counters(s.vips.iter().map(|v| (vip(v), v.traffic.packets))),
    );
    r.register_with_unit(
        "vip",
        "Bytes (frame length) forwarded to a backend of the VIP",
        Unit::Bytes,
        counters(s.vips.iter().map(|v| (vip(v), v.traffic.bytes))),
    );
    r.register(
        "vip_new_flows",
        "Flows of the VIP that got a connection-table entry",
        counters(s.vips.iter().map(|v| (vip(v), v.new_flows))),
    );
    r.register(
        "source_limited_packets",
        "Packets the VIP's per-source limits dropped, by limit (new_flows: a new flow over its source's rate; packets: a packet over its source's rate)",
        counters(s.vips.iter().flat_map(|v| {
            [
                ("new_flows", v.limited_new_flows),
                ("packets", v.limited_packets),
            ]
            .map(|(limit, n)| {
                (
                    LimitLabels {
                        vip: v.name.clone(),
                        limit,
                    },
                    n,
                )
            })
        })),
    );

    r.register(
        "vip_panicking",
        "1 while less of the VIP's weight is up than its panic_threshold: its health checks are not trusted and new flows spread over every backend",
        gauges(s.vips.iter().map(|v| (vip(v), i64::from(v.panicking)))),
    );

    r.register(
        "backend_packets",
        "Packets forwarded to the backend",
        counters(s.backends.iter().map(|b| (backend(b), b.traffic.packets))),
    );
    r.register_with_unit(
        "backend",
        "Bytes (frame length) forwarded to the backend",
        Unit::Bytes,
        counters(s.backends.iter().map(|b| (backend(b), b.traffic.bytes))),
    );
    r.register(
        "backend_new_flows",
        "Flows placed on the backend",
        counters(s.backends.iter().map(|b| (backend(b), b.new_flows))),
    );
    r.register(
        "backend_up",
        "1 while the backend passes its health checks (or has none), else 0",
        gauges(s.backends.iter().map(|b| (backend(b), i64::from(b.up)))),
    );
    r.register(
        "backend_next_hop_resolved",
        "1 while the MAC of the backend's next hop (itself, or its route's gateway) is known; 0: its packets are dropped as drop_no_neighbour",
        gauges(s.backends.iter().map(|b| (backend(b), i64::from(b.resolved)))),
    );
    r.register(
        "backend_weight",
        "The weight the datapath gives the backend: the configured one, 0 while draining, less during a slow start",
        gauges(s.backends.iter().map(|b| (backend(b), i64::from(b.weight)))),
    );
    r.register(
        "backend_active_connections",
        "Open connections on the backend (the datapath's count for least-* schedulers, else live connection-table entries at the last scan)",
        gauges(s.backends.iter().map(|b| {
            (
                backend(b),
                i64::try_from(b.active_connections).unwrap_or(i64::MAX),
            )
        })),
    );
    let latency = Family::<BackendLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    for b in &s.backends {
        if let Some(d) = b.check_latency {
            latency.get_or_create(&backend(b)).set(d.as_secs_f64());
        }
    }
    r.register_with_unit(
        "backend_check_latency",
        "Duration of the backend's last health check",
        Unit::Seconds,
        latency,
    );
    r.register(
        "health_checks",
        "Health-check results by outcome (success, failure, inconclusive: the check could not run on this host)",
        counters(s.backends.iter().flat_map(|b| {
            [
                ("success", b.checks_ok),
                ("failure", b.checks_failed),
                ("inconclusive", b.checks_inconclusive),
            ]
            .map(|(outcome, n)| {
                (
                    OutcomeLabels {
                        vip: b.vip.clone(),
                        backend: b.backend.clone(),
                        outcome,
                    },
                    n,
                )
            })
        })),
    );
    r.register(
        "health_transitions",
        "Health transitions of the backend, by the state it went to (up, down)",
        counters(s.backends.iter().flat_map(|b| {
            [("up", b.went_up), ("down", b.went_down)].map(|(to, n)| {
                (
                    TransitionLabels {
                        vip: b.vip.clone(),
                        backend: b.backend.clone(),
                        to,
                    },
                    n,
                )
            })
        })),
    );

    r.register(
        "datapath_packets",
        "Packets by the XDP program's verdict reason (pass_*, tx, redirect, drop_*)",
        counters(
            s.reasons
                .iter()
                .map(|(reason, t)| (ReasonLabel { reason }, t.packets)),
        ),
    );
    r.register_with_unit(
        "datapath",
        "Bytes (frame length) by the XDP program's verdict reason",
        Unit::Bytes,
        counters(
            s.reasons
                .iter()
                .map(|(reason, t)| (ReasonLabel { reason }, t.bytes)),
        ),
    );
    r.register(
        "datapath_events",
        "Datapath events (new_flow, failover, fragment, icmp_pmtu), counted on top of the verdicts",
        counters(
            s.events
                .iter()
                .map(|(event, t)| (EventLabel { event }, t.packets)),
        ),
    );

    r.register(
        "access_dropped_packets",
        "Packets dropped by an allow or deny list, by scope (global, or the VIP's name) and list (deny, allow: not listed where an allow list applies)",
        counters(s.lists.iter().map(|(scope, list, packets)| {
            (
                ListLabels {
                    scope: scope.clone(),
                    list,
                },
                *packets,
            )
        })),
    );

    if let Some(entries) = s.flow_entries {
        r.register(
            "flow_table_entries",
            "Connection-table entries at the last scan (idle ones included until that scan removed them)",
            gauge(entries),
        );
    }
    r.register(
        "flow_table_capacity",
        "Entries the connection table holds (flow_table_size)",
        gauge(s.flow_capacity),
    );
    if let Some(entries) = s.handshake_entries {
        r.register(
            "handshake_table_entries",
            "Handshake-table entries at the last scan: new flows of round-robin, least-* and persistent VIPs not yet promoted (idle ones included until that scan removed them)",
            gauge(entries),
        );
    }
    r.register(
        "handshake_table_capacity",
        "Entries the handshake table holds",
        gauge(s.handshake_capacity),
    );
    if let Some(entries) = s.source_entries {
        r.register(
            "source_table_entries",
            "Sources of VIPs with per-source limits that owed tokens at the last scan (a source with full buckets counts as none)",
            gauge(entries),
        );
    }
    r.register(
        "source_table_capacity",
        "Slots of the table of sources, in sets of two: a source new to a full set takes the slot of the one that owes less, which then starts again with full buckets",
        gauge(s.source_capacity),
    );
    r.register(
        "maps_in_line",
        "1 when the maps hold the configuration in force, 0 while a failed write left them behind (balancer status says why)",
        gauge(u64::from(s.maps_in_line)),
    );
    let failures = Counter::<u64>::default();
    failures.inc_by(s.map_write_failures);
    r.register(
        "map_write_failures",
        "Sets of map writes that failed (each logged at ERROR and retried)",
        failures,
    );
    if let Some(announce) = &s.announce {
        register_announce(&mut r, announce);
    }
    if let Some(sync) = &s.sync {
        register_sync(&mut r, sync);
    }
    r
}

/// The metrics of shared flows, with `[sync]` only.
fn register_sync(r: &mut Registry, s: &SyncMetrics) {
    let sent = Counter::<u64>::default();
    sent.inc_by(s.flows_sent);
    r.register(
        "sync_sent_flows",
        "New flows of this host sent to the peer hosts (each to every peer)",
        sent,
    );
    let dropped = Counter::<u64>::default();
    dropped.inc_by(s.queue_dropped);
    r.register(
        "sync_queue_dropped_flows",
        "New flows not sent: the queue to the peers was full",
        dropped,
    );
    r.register(
        "sync_datagrams",
        "Datagrams of shared flows, by peer and direction (sent, received: taken, MAC and sequence checked)",
        counters(s.peers.iter().flat_map(|(peer, sent, _, received)| {
            [("sent", *sent), ("received", *received)].map(|(direction, n)| {
                (
                    PeerLabels {
                        peer: peer.clone(),
                        direction,
                    },
                    n,
                )
            })
        })),
    );
    r.register(
        "sync_send_errors",
        "Datagrams that could not be sent to the peer (unreachable, or the socket's buffer full)",
        counters(
            s.peers
                .iter()
                .map(|(peer, _, errors, _)| (PeerLabel { peer: peer.clone() }, *errors)),
        ),
    );
    r.register(
        "sync_received_flows",
        "The peers' flows, by outcome: inserted in the connection table, existing (the table held the flow: its entry stays), unknown_vip, unknown_backend (not in this host's configuration)",
        counters(
            s.received
                .iter()
                .map(|(outcome, n)| (OutcomeLabel { outcome }, *n)),
        ),
    );
    r.register(
        "sync_refused_datagrams",
        "Datagrams of shared flows refused, by reason: mac (another key, or altered), replay, stale (sent over 30 s away from now), malformed, unknown_peer",
        counters(
            s.refused
                .iter()
                .map(|(reason, n)| (ReasonLabel { reason }, *n)),
        ),
    );
    r.register_with_unit(
        "sync_delay",
        "Delay from a peer's flow placing (the packet that made its entry there) to its entry here",
        Unit::Seconds,
        s.delay.clone(),
    );
}

/// The announcement metrics, with `[announce]` only.
fn register_announce(r: &mut Registry, a: &AnnounceMetrics) {
    r.register(
        "vip_announced",
        "1 while this host announces the VIP's address (its route is in the announcement table), else 0",
        gauges(a.vips.iter().map(|(vip, announced, _)| {
            (VipLabel { vip: vip.clone() }, i64::from(*announced))
        })),
    );
    r.register(
        "vip_announce_reason",
        "Why the VIP is or is not announced (always 1, label reason: servable, not_attached, drained, not_in_maps, too_few_up, announce_delay, shared_address)",
        gauges(a.vips.iter().map(|(vip, _, reason)| {
            (
                WhyLabels {
                    vip: vip.clone(),
                    reason,
                },
                1,
            )
        })),
    );
    r.register(
        "host_drained",
        "1 while the host is drained (balancer host drain): no VIP is announced",
        gauge(u64::from(a.drained)),
    );
    let errors = Counter::<u64>::default();
    errors.inc_by(a.errors);
    r.register(
        "announce_errors",
        "Route writes to the announcement table that failed (each logged at ERROR and retried)",
        errors,
    );
}

/// The content type of [`encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The exposition of `snapshot` in the OpenMetrics text format.
pub fn encode(snapshot: &Snapshot) -> String {
    let mut text = String::new();
    if let Err(err) = text::encode(&mut text, &registry(snapshot)) {
        // Writing to a String cannot fail; keep the scrape well-formed
        // anyway.
        text.clear();
        let _ = writeln!(text, "# encoding failed: {err}\n# EOF");
    }
    text
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, time::Duration};

    use super::*;

    fn snapshot() -> Snapshot {
        Snapshot {
            version: "0.1.0".into(),
            program_tag: "a1b2c3d4e5f60718".into(),
            flow_fingerprint: Some("0123456789abcdef".into()),
            attachments: vec![("eth0".into(), "native".into())],
            vips: vec![VipMetrics {
                name: "web".into(),
                traffic: Traffic {
                    packets: 30,
                    bytes: 3000,
                },
                new_flows: 3,
                limited_new_flows: 6,
                limited_packets: 7,
                panicking: true,
            }],
            backends: vec![
                BackendMetrics {
                    vip: "web".into(),
                    backend: "10.0.0.1".into(),
                    traffic: Traffic {
                        packets: 20,
                        bytes: 2000,
                    },
                    new_flows: 2,
                    up: true,
                    resolved: true,
                    weight: 100,
                    active_connections: 2,
                    check_latency: Some(Duration::from_micros(1500)),
                    checks_ok: 9,
                    checks_failed: 1,
                    checks_inconclusive: 0,
                    went_up: 1,
                    went_down: 1,
                },
                BackendMetrics {
                    vip: "web".into(),
                    backend: "2001:db8::1".into(),
                    traffic: Traffic {
                        packets: 10,
                        bytes: 1000,
                    },
                    new_flows: 1,
                    up: false,
                    weight: 0,
                    ..BackendMetrics::default()
                },
            ],
            reasons: vec![
                (
                    "tx",
                    Traffic {
                        packets: 30,
                        bytes: 3000,
                    },
                ),
                (
                    "drop_malformed",
                    Traffic {
                        packets: 2,
                        bytes: 120,
                    },
                ),
            ],
            events: vec![(
                "new_flow",
                Traffic {
                    packets: 3,
                    bytes: 180,
                },
            )],
            lists: vec![("global".into(), "deny", 4)],
            flow_entries: Some(3),
            flow_capacity: 262_144,
            handshake_entries: Some(5),
            handshake_capacity: 65_536,
            source_entries: Some(8),
            source_capacity: 65_536,
            maps_in_line: true,
            map_write_failures: 2,
            announce: Some(AnnounceMetrics {
                drained: false,
                errors: 1,
                vips: vec![("web".into(), true, "servable")],
            }),
            sync: Some(SyncMetrics {
                flows_sent: 5,
                queue_dropped: 0,
                peers: vec![("10.0.0.3:7946".into(), 2, 1, 3)],
                received: vec![("inserted", 4), ("existing", 1)],
                refused: vec![("mac", 1)],
                delay: {
                    let h = prometheus_client::metrics::histogram::Histogram::new([0.001, 0.01]);
                    h.observe(0.0005);
                    h
                },
            }),
        }
    }

    /// Parses `text` with a Prometheus text-format parser and returns
    /// every sample as "name{label=value,...}" → value, with the types
    /// the parser read.
    fn parse(text: &str) -> (BTreeMap<String, f64>, BTreeMap<String, String>) {
        let lines = text.lines().map(|l| Ok(l.to_owned()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("the exposition parses");
        let mut samples = BTreeMap::new();
        for s in &scrape.samples {
            let mut labels: Vec<String> =
                s.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            labels.sort();
            let value = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                // Its count: the +Inf bucket's.
                prometheus_parse::Value::Histogram(ref buckets) => {
                    buckets.last().map_or(0.0, |b| b.count)
                }
                ref other => panic!("unexpected sample type {other:?}"),
            };
            let key = format!("{}{{{}}}", s.metric, labels.join(","));
            assert!(samples.insert(key.clone(), value).is_none(), "{key} twice");
        }
        let types = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_once(' '))
            .map(|(name, kind)| (name.to_owned(), kind.to_owned()))
            .collect();
        (samples, types)
    }

    #[test]
    fn the_exposition_parses_with_every_sample_typed_named_and_labelled() {
        let text = encode(&snapshot());
        let (samples, types) = parse(&text);
        let expect = [
            ("balancer_vip_packets_total{vip=web}", 30.0),
            ("balancer_vip_bytes_total{vip=web}", 3000.0),
            ("balancer_vip_new_flows_total{vip=web}", 3.0),
            ("balancer_vip_panicking{vip=web}", 1.0),
            (
                "balancer_backend_packets_total{backend=10.0.0.1,vip=web}",
                20.0,
            ),
            (
                "balancer_backend_bytes_total{backend=2001:db8::1,vip=web}",
                1000.0,
            ),
            (
                "balancer_backend_new_flows_total{backend=10.0.0.1,vip=web}",
                2.0,
            ),
            ("balancer_backend_up{backend=10.0.0.1,vip=web}", 1.0),
            ("balancer_backend_up{backend=2001:db8::1,vip=web}", 0.0),
            (
                "balancer_backend_next_hop_resolved{backend=10.0.0.1,vip=web}",
                1.0,
            ),
            (
                "balancer_backend_next_hop_resolved{backend=2001:db8::1,vip=web}",
                0.0,
            ),
            ("balancer_backend_weight{backend=10.0.0.1,vip=web}", 100.0),
            (
                "balancer_backend_active_connections{backend=10.0.0.1,vip=web}",
                2.0,
            ),
            (
                "balancer_backend_check_latency_seconds{backend=10.0.0.1,vip=web}",
                0.0015,
            ),
            (
                "balancer_health_checks_total{backend=10.0.0.1,outcome=failure,vip=web}",
                1.0,
            ),
            (
                "balancer_health_checks_total{backend=10.0.0.1,outcome=success,vip=web}",
                9.0,
            ),
            (
                "balancer_health_transitions_total{backend=10.0.0.1,to=down,vip=web}",
                1.0,
            ),
            (
                "balancer_datapath_packets_total{reason=drop_malformed}",
                2.0,
            ),
            ("balancer_datapath_bytes_total{reason=tx}", 3000.0),
            ("balancer_datapath_events_total{event=new_flow}", 3.0),
            (
                "balancer_access_dropped_packets_total{list=deny,scope=global}",
                4.0,
            ),
            ("balancer_flow_table_entries{}", 3.0),
            ("balancer_flow_table_capacity{}", 262_144.0),
            ("balancer_handshake_table_entries{}", 5.0),
            ("balancer_handshake_table_capacity{}", 65_536.0),
            ("balancer_source_table_entries{}", 8.0),
            ("balancer_source_table_capacity{}", 65_536.0),
            (
                "balancer_source_limited_packets_total{limit=new_flows,vip=web}",
                6.0,
            ),
            (
                "balancer_source_limited_packets_total{limit=packets,vip=web}",
                7.0,
            ),
            ("balancer_maps_in_line{}", 1.0),
            ("balancer_map_write_failures_total{}", 2.0),
            (
                "balancer_info{program_tag=a1b2c3d4e5f60718,version=0.1.0}",
                1.0,
            ),
            (
                "balancer_flow_fingerprint{fingerprint=0123456789abcdef}",
                1.0,
            ),
            ("balancer_attached{interface=eth0,mode=native}", 1.0),
            ("balancer_vip_announced{vip=web}", 1.0),
            ("balancer_vip_announce_reason{reason=servable,vip=web}", 1.0),
            ("balancer_host_drained{}", 0.0),
            ("balancer_announce_errors_total{}", 1.0),
            ("balancer_sync_sent_flows_total{}", 5.0),
            (
                "balancer_sync_datagrams_total{direction=sent,peer=10.0.0.3:7946}",
                2.0,
            ),
            ("balancer_sync_send_errors_total{peer=10.0.0.3:7946}", 1.0),
            ("balancer_sync_received_flows_total{outcome=inserted}", 4.0),
            ("balancer_sync_refused_datagrams_total{reason=mac}", 1.0),
            ("balancer_sync_delay_seconds_count{}", 1.0),
        ];
        for (key, value) in expect {
            assert_eq!(samples.get(key), Some(&value), "{key} in\n{text}");
        }
        // No latency for a backend never checked.
        assert!(
            !samples.contains_key(
                "balancer_backend_check_latency_seconds{backend=2001:db8::1,vip=web}"
            ),
            "{text}"
        );
        for (name, kind) in [
            ("balancer_vip_packets", "counter"),
            ("balancer_backend_bytes", "counter"),
            ("balancer_backend_up", "gauge"),
            ("balancer_backend_next_hop_resolved", "gauge"),
            ("balancer_backend_check_latency_seconds", "gauge"),
            ("balancer_health_transitions", "counter"),
            ("balancer_datapath_packets", "counter"),
        ] {
            assert_eq!(types.get(name).map(String::as_str), Some(kind), "{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
        // Every sample name is a valid metric name; every counter sample
        // ends in _total.
        for key in samples.keys() {
            let name = &key[..key.find('{').unwrap_or(key.len())];
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                "{name}"
            );
        }
        for (name, kind) in &types {
            if kind == "counter" {
                assert!(
                    samples.keys().all(|k| !k.starts_with(&format!("{name}{{"))),
                    "counter {name} has a sample without _total"
                );
            }
        }
    }

    #[test]
    fn every_metric_exported_is_documented_and_every_documented_one_exported() {
        let text = encode(&snapshot());
        let (samples, types) = parse(&text);
        // A histogram's _sum and _count come with it.
        let exported: std::collections::BTreeSet<String> = samples
            .keys()
            .map(|k| k[..k.find('{').unwrap_or(k.len())].to_owned())
            .filter(|name| {
                !["_sum", "_count"].iter().any(|suffix| {
                    name.strip_suffix(suffix)
                        .is_some_and(|base| types.get(base).is_some_and(|t| t == "histogram"))
                })
            })
            .collect();
        let documented: std::collections::BTreeSet<String> =
            balancer_tests::metrics::documented(balancer_tests::metrics::OBSERVABILITY_DOC)
                .into_iter()
                .collect();
        assert_eq!(
            exported, documented,
            "docs/observability.md must list exactly the metrics the daemon exports"
        );
    }

    #[test]
    fn without_a_scan_there_is_no_entry_count_and_label_values_are_escaped() {
        let mut s = snapshot();
        s.flow_entries = None;
        s.vips[0].name = "we\"b\\".into();
        let text = encode(&s);
        let (samples, _) = parse(&text);
        assert!(
            !samples
                .keys()
                .any(|k| k.starts_with("balancer_flow_table_entries")),
            "{text}"
        );
        assert!(
            text.contains(r#"balancer_vip_packets_total{vip="we\"b\\"} 30"#),
            "{text}"
        );
    }
}
