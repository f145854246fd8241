//! The metrics snapshot: what the daemon knows of every VIP and backend,
//! with every counter read in one batched pass over each counter map.

use anyhow::{Context as _, Result};

use super::{lists, view::View};
use crate::metrics::{BackendMetrics, Snapshot, Traffic, VipMetrics};

impl View<'_> {
    /// Everything a scrape reports, read now.
    pub(super) fn metrics_snapshot(&self) -> Result<Snapshot> {
        let vip_slots = self.plan().vip_indexes().map(|i| i + 1).max().unwrap_or(0);
        let backend_slots = self
            .plan()
            .backend_ids()
            .map(|id| id + 1)
            .max()
            .unwrap_or(0);
        let counters = self
            .datapath
            .all_counters(vip_slots, backend_slots)
            .context("cannot read the counters")?;
        let traffic = |c: &balancer_common::stats::FlowCounters| Traffic {
            packets: c.packets,
            bytes: c.bytes,
        };
        let mut vips = Vec::with_capacity(self.plan().vips.len());
        let mut backends = Vec::new();
        let effective = self.effective();
        for vip in &self.plan().vips {
            let c = counters
                .vips
                .get(vip.slot.info.index as usize)
                .copied()
                .unwrap_or_default();
            let limited = counters
                .limits
                .get(vip.slot.info.index as usize)
                .copied()
                .unwrap_or_default();
            vips.push(VipMetrics {
                name: vip.name.clone(),
                traffic: traffic(&c),
                new_flows: c.new_flows,
                limited_new_flows: limited.new_flows.packets,
                limited_packets: limited.packets.packets,
                panicking: effective.panics(vip.slot.info.index),
            });
            for b in &vip.backends {
                let c = counters
                    .backends
                    .get(b.id as usize)
                    .copied()
                    .unwrap_or_default();
                let seen = self.observed.get(b.id);
                let health = seen.map(|s| s.checks).unwrap_or_default();
                backends.push(BackendMetrics {
                    vip: vip.name.clone(),
                    backend: b.address.to_string(),
                    traffic: traffic(&c),
                    new_flows: c.new_flows,
                    up: self.is_up(b.id),
                    resolved: self.observed.reach(b.id).mac().is_some(),
                    weight: effective.weight(b.id, b.weight),
                    active_connections: self.active_connections(vip.slot.info.flags, b.id)?,
                    check_latency: seen.and_then(|s| s.latency),
                    checks_ok: health.ok,
                    checks_failed: health.failed,
                    checks_inconclusive: health.inconclusive,
                    went_up: health.went_up,
                    went_down: health.went_down,
                });
            }
        }
        let traffic_of = |(name, c): (&'static str, balancer_common::stats::PacketCount)| {
            (
                name,
                Traffic {
                    packets: c.packets,
                    bytes: c.bytes,
                },
            )
        };
        Ok(Snapshot {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            program_tag: format!("{:016x}", self.datapath.program_tag()?),
            flow_fingerprint: super::fingerprint::of(self.published),
            attachments: self
                .datapath
                .attachments()
                .map(|(interface, mode)| (interface.to_owned(), mode.to_string()))
                .collect(),
            vips,
            backends,
            reasons: counters.reasons.verdicts().map(traffic_of).collect(),
            events: counters.reasons.events().map(traffic_of).collect(),
            lists: lists::rows(&self.desired.config, self.plan(), &counters.access)
                .into_iter()
                .filter(|r| r.list != crate::config::List::Exempt)
                .map(|r| (r.scope, r.list.name(), r.dropped_packets))
                .collect(),
            flow_entries: self.observed.scan.flow_entries,
            flow_capacity: u64::from(*self.desired.config.datapath.flow_table_size.get_ref()),
            handshake_entries: self.observed.scan.handshake_entries,
            handshake_capacity: u64::from(balancer_common::maps::HANDSHAKE_ENTRIES),
            source_entries: self.observed.scan.source_entries,
            source_capacity: u64::from(balancer_common::limit::SOURCE_SLOTS),
            maps_in_line: self.maps_error.is_none(),
            map_write_failures: self.write_failures,
            announce: self.announcer.map(|a| crate::metrics::AnnounceMetrics {
                drained: a.drained,
                errors: a.errors,
                vips: self
                    .plan()
                    .vips
                    .iter()
                    .map(|vip| {
                        let why = a.why(&vip.name);
                        (
                            vip.name.clone(),
                            why == Some(&super::gates::Why::Announced),
                            why.map_or("not_attached", super::gates::Why::label),
                        )
                    })
                    .collect(),
            }),
            sync: self.sharing.map(|sharing| {
                let c = &sharing.counts;
                crate::metrics::SyncMetrics {
                    flows_sent: c.flows_sent,
                    queue_dropped: c.queue_dropped,
                    peers: c
                        .peers
                        .iter()
                        .map(|(peer, p)| {
                            (
                                peer.to_string(),
                                p.datagrams_sent,
                                p.send_errors,
                                p.datagrams_received,
                            )
                        })
                        .collect(),
                    received: vec![
                        ("inserted", c.received.inserted),
                        ("refreshed", c.received.refreshed),
                        ("existing", c.received.existing),
                        ("unknown_vip", c.received.unknown_vip),
                        ("unknown_backend", c.received.unknown_backend),
                        ("over_budget", c.received.over_budget),
                    ],
                    refused: super::sharing::refusal_labels()
                        .map(|label| (label, c.refused.get(label).copied().unwrap_or(0)))
                        .collect(),
                    delay: c.delay.clone(),
                }
            }),
        })
    }
}
