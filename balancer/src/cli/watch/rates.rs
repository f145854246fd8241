//! The pure core of `balancer stats --watch`: what one poll of the daemon
//! returned ([`Snapshot`]), and the rows of the view computed from two
//! polls ([`view`]): rates per second and shares of new flows.
//!
//! Every counter the daemon reports is cumulative, so a rate is the
//! difference between two polls over the time between them. Without an
//! earlier poll (the first frame), or when a counter went backwards (the
//! daemon restarted with fresh maps), a rate is unknown and shows as "-".

use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use anyhow::{Context as _, Result};
use serde::Deserialize;

/// One poll of the daemon: the answers to `stats` and `backend-list`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Every global datapath counter by name (verdict reasons and events).
    pub counters: BTreeMap<String, Count>,
    pub vips: Vec<VipSample>,
    pub backends: Vec<BackendSample>,
}

/// One counter of `stats`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Count {
    pub packets: u64,
    pub bytes: u64,
}

/// One VIP as `stats` reports it (fields the view does not use are
/// ignored, so the daemon may add more).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct VipSample {
    pub name: String,
    pub address: IpAddr,
    pub port: u16,
    pub protocol: String,
    pub scheduler: String,
    pub backends: usize,
    pub backends_up: usize,
    pub all_down: bool,
    pub packets: u64,
    pub new_flows: u64,
}

/// One row of `backend-list`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct BackendSample {
    pub vip: String,
    pub address: IpAddr,
    pub weight: u32,
    /// up, down or draining.
    pub state: String,
    pub packets: u64,
    pub new_flows: u64,
}

/// The `stats` answer.
#[derive(Deserialize)]
struct StatsAnswer {
    counters: BTreeMap<String, Count>,
    vips: Vec<VipSample>,
}

impl Snapshot {
    /// Reads the results of a `stats` and a `backend-list` request.
    pub fn from_answers(stats: serde_json::Value, backends: serde_json::Value) -> Result<Snapshot> {
        let stats: StatsAnswer = serde_json::from_value(stats)
            .context("the daemon's stats answer is not as expected")?;
        let backends: Vec<BackendSample> = serde_json::from_value(backends)
            .context("the daemon's backend-list answer is not as expected")?;
        Ok(Snapshot {
            counters: stats.counters,
            vips: stats.vips,
            backends,
        })
    }
}

/// What the view shows: one block per VIP with its backends, then the
/// global counters.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct View {
    pub vips: Vec<VipRow>,
    /// Grouped by kind (forwarded, passed, dropped, events), by name within
    /// a group.
    pub counters: Vec<CounterRow>,
}

/// A VIP in the view.
#[derive(Clone, Debug, PartialEq)]
pub struct VipRow {
    pub name: String,
    /// ADDRESS:PORT/PROTO, as `vip add` takes it.
    pub service: String,
    pub scheduler: String,
    pub backends_up: usize,
    pub backends_total: usize,
    /// Every backend down: the last ring stays in place.
    pub all_down: bool,
    /// Packets forwarded per second.
    pub packet_rate: Option<f64>,
    /// New flows per second.
    pub flow_rate: Option<f64>,
    pub backends: Vec<BackendRow>,
}

/// A backend in the view, under its VIP.
#[derive(Clone, Debug, PartialEq)]
pub struct BackendRow {
    pub address: IpAddr,
    pub state: String,
    pub weight: u32,
    pub packet_rate: Option<f64>,
    pub flow_rate: Option<f64>,
    /// Percentage of the VIP's new flows of the interval placed on this
    /// backend: unknown on the first frame, for a backend that was not in
    /// the previous poll, and when the VIP had no new flow.
    pub share: Option<f64>,
}

/// What a global counter counts, which decides its group in the view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum CounterKind {
    /// Sent on to a backend (`tx`, `redirect`).
    Forwarded,
    /// Passed to the host's stack (`pass_*`).
    Passed,
    /// Dropped (`drop_*`), by reason.
    Dropped,
    /// Counted on top of a verdict (`new_flow`, `failover`, ...).
    Event,
}

impl CounterKind {
    /// The kind of the counter named `name`.
    pub fn of(name: &str) -> CounterKind {
        if name.starts_with("drop_") {
            CounterKind::Dropped
        } else if name.starts_with("pass_") {
            CounterKind::Passed
        } else if matches!(name, "tx" | "redirect") {
            CounterKind::Forwarded
        } else {
            CounterKind::Event
        }
    }
}

/// A global counter in the view.
#[derive(Clone, Debug, PartialEq)]
pub struct CounterRow {
    pub name: String,
    pub kind: CounterKind,
    pub packet_rate: Option<f64>,
    /// Packets since the datapath was loaded.
    pub packets: u64,
}

/// The view of `current`, with rates over `elapsed` since `previous`
/// (none on the first frame).
pub fn view(previous: Option<&Snapshot>, current: &Snapshot, elapsed: Duration) -> View {
    let rate = |before: Option<u64>, now: u64| -> Option<f64> {
        let secs = elapsed.as_secs_f64();
        let delta = now.checked_sub(before?)?;
        (secs > 0.0).then(|| delta as f64 / secs)
    };
    let vips = current
        .vips
        .iter()
        .map(|vip| {
            let before = previous.and_then(|p| p.vips.iter().find(|v| v.name == vip.name));
            let backends: Vec<&BackendSample> = current
                .backends
                .iter()
                .filter(|b| b.vip == vip.name)
                .collect();
            let earlier = |b: &BackendSample| {
                previous.and_then(|p| {
                    p.backends
                        .iter()
                        .find(|e| e.vip == b.vip && e.address == b.address)
                })
            };
            let flow_deltas: Vec<Option<u64>> = backends
                .iter()
                .map(|b| earlier(b).and_then(|e| b.new_flows.checked_sub(e.new_flows)))
                .collect();
            let shares = crate::stats::shares(&flow_deltas);
            VipRow {
                name: vip.name.clone(),
                service: service(vip),
                scheduler: vip.scheduler.clone(),
                backends_up: vip.backends_up,
                backends_total: vip.backends,
                all_down: vip.all_down,
                packet_rate: rate(before.map(|v| v.packets), vip.packets),
                flow_rate: rate(before.map(|v| v.new_flows), vip.new_flows),
                backends: backends
                    .iter()
                    .zip(shares)
                    .map(|(b, share)| {
                        let before = earlier(b);
                        BackendRow {
                            address: b.address,
                            state: b.state.clone(),
                            weight: b.weight,
                            packet_rate: rate(before.map(|e| e.packets), b.packets),
                            flow_rate: rate(before.map(|e| e.new_flows), b.new_flows),
                            share,
                        }
                    })
                    .collect(),
            }
        })
        .collect();
    let mut counters: Vec<CounterRow> = current
        .counters
        .iter()
        .map(|(name, count)| CounterRow {
            name: name.clone(),
            kind: CounterKind::of(name),
            packet_rate: rate(
                previous
                    .and_then(|p| p.counters.get(name))
                    .map(|c| c.packets),
                count.packets,
            ),
            packets: count.packets,
        })
        .collect();
    counters.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
    View { vips, counters }
}

/// ADDRESS:PORT/PROTO.
fn service(vip: &VipSample) -> String {
    format!(
        "{}/{}",
        std::net::SocketAddr::new(vip.address, vip.port),
        vip.protocol
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vip(name: &str, packets: u64, new_flows: u64) -> VipSample {
        VipSample {
            name: name.into(),
            address: "198.51.100.80".parse().unwrap(),
            port: 80,
            protocol: "tcp".into(),
            scheduler: "maglev".into(),
            backends: 2,
            backends_up: 2,
            all_down: false,
            packets,
            new_flows,
        }
    }

    fn backend(vip: &str, address: &str, packets: u64, new_flows: u64) -> BackendSample {
        BackendSample {
            vip: vip.into(),
            address: address.parse().unwrap(),
            weight: 100,
            state: "up".into(),
            packets,
            new_flows,
        }
    }

    fn snapshot(tx: u64, web: (u64, u64), b1: (u64, u64), b2: (u64, u64)) -> Snapshot {
        Snapshot {
            counters: [
                ("tx", tx),
                ("drop_no_backend", 3),
                ("pass_not_vip", 7),
                ("new_flow", web.1),
                ("redirect", 0),
            ]
            .into_iter()
            .map(|(n, p)| {
                (
                    n.to_owned(),
                    Count {
                        packets: p,
                        bytes: p * 60,
                    },
                )
            })
            .collect(),
            vips: vec![vip("web", web.0, web.1)],
            backends: vec![
                backend("web", "10.0.0.1", b1.0, b1.1),
                backend("web", "10.0.0.2", b2.0, b2.1),
            ],
        }
    }

    #[test]
    fn the_first_frame_has_no_rates_or_shares() {
        let now = snapshot(100, (100, 10), (60, 6), (40, 4));
        let view = view(None, &now, Duration::ZERO);
        let web = &view.vips[0];
        assert_eq!((web.packet_rate, web.flow_rate), (None, None));
        assert_eq!(web.service, "198.51.100.80:80/tcp");
        assert_eq!((web.backends_up, web.backends_total), (2, 2));
        for b in &web.backends {
            assert_eq!((b.packet_rate, b.flow_rate, b.share), (None, None, None));
        }
        assert!(view.counters.iter().all(|c| c.packet_rate.is_none()));
        let tx = view.counters.iter().find(|c| c.name == "tx").unwrap();
        assert_eq!(tx.packets, 100, "totals show at once");
    }

    #[test]
    fn rates_are_differences_over_the_elapsed_time() {
        let before = snapshot(100, (100, 10), (60, 6), (40, 4));
        let now = snapshot(300, (300, 50), (160, 36), (140, 14));
        let view = view(Some(&before), &now, Duration::from_millis(500));
        let web = &view.vips[0];
        assert_eq!((web.packet_rate, web.flow_rate), (Some(400.0), Some(80.0)));
        let [b1, b2] = &web.backends[..] else {
            panic!("two backends: {:?}", web.backends);
        };
        assert_eq!((b1.packet_rate, b1.flow_rate), (Some(200.0), Some(60.0)));
        assert_eq!((b2.packet_rate, b2.flow_rate), (Some(200.0), Some(20.0)));
        assert_eq!((b1.share, b2.share), (Some(75.0), Some(25.0)));
        let tx = view.counters.iter().find(|c| c.name == "tx").unwrap();
        assert_eq!((tx.packet_rate, tx.packets), (Some(400.0), 300));
        let drops = view.counters.iter().find(|c| c.name == "drop_no_backend");
        assert_eq!(drops.unwrap().packet_rate, Some(0.0));
    }

    #[test]
    fn counters_are_grouped_forwarded_passed_dropped_events() {
        let now = snapshot(1, (0, 0), (0, 0), (0, 0));
        let view = view(None, &now, Duration::ZERO);
        let names: Vec<(CounterKind, &str)> = view
            .counters
            .iter()
            .map(|c| (c.kind, c.name.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                (CounterKind::Forwarded, "redirect"),
                (CounterKind::Forwarded, "tx"),
                (CounterKind::Passed, "pass_not_vip"),
                (CounterKind::Dropped, "drop_no_backend"),
                (CounterKind::Event, "new_flow"),
            ]
        );
    }

    #[test]
    fn shares_are_unknown_without_new_flows_and_for_new_backends() {
        let before = snapshot(100, (100, 10), (60, 6), (40, 4));
        // Traffic on established flows only: no share to speak of.
        let idle = snapshot(200, (200, 10), (110, 6), (90, 4));
        let web = &view(Some(&before), &idle, Duration::from_secs(1)).vips[0];
        assert!(web.backends.iter().all(|b| b.share.is_none()), "{web:?}");
        assert_eq!(web.backends[0].flow_rate, Some(0.0));

        // A backend added since the last poll: no rate, no share; the
        // others share the VIP's new flows among themselves.
        let mut grown = snapshot(300, (300, 20), (160, 16), (40, 4));
        grown.backends.push(backend("web", "10.0.0.3", 5, 5));
        let web = &view(Some(&before), &grown, Duration::from_secs(1)).vips[0];
        let shares: Vec<Option<f64>> = web.backends.iter().map(|b| b.share).collect();
        assert_eq!(shares, [Some(100.0), Some(0.0), None]);
        assert_eq!(web.backends[2].packet_rate, None);
    }

    #[test]
    fn counters_that_went_backwards_have_no_rate() {
        let before = snapshot(500, (500, 50), (300, 30), (200, 20));
        let restarted = snapshot(10, (10, 2), (6, 1), (4, 1));
        let view = view(Some(&before), &restarted, Duration::from_secs(1));
        let web = &view.vips[0];
        assert_eq!((web.packet_rate, web.flow_rate), (None, None));
        assert!(web.backends.iter().all(|b| b.share.is_none()));
        let tx = view.counters.iter().find(|c| c.name == "tx").unwrap();
        assert_eq!(tx.packet_rate, None);
    }

    #[test]
    fn backends_are_matched_by_vip_and_address() {
        // The same address behind two VIPs is two backends.
        let mut before = snapshot(0, (0, 0), (0, 0), (0, 0));
        before.vips.push(vip("api", 0, 0));
        before.backends.push(backend("api", "10.0.0.1", 0, 0));
        let mut now = snapshot(0, (10, 10), (10, 10), (0, 0));
        now.vips.push(vip("api", 4, 4));
        now.backends.push(backend("api", "10.0.0.1", 4, 4));
        let view = view(Some(&before), &now, Duration::from_secs(2));
        let api = &view.vips[1];
        assert_eq!(api.name, "api");
        assert_eq!(api.backends.len(), 1);
        assert_eq!(api.backends[0].flow_rate, Some(2.0));
        assert_eq!(api.backends[0].share, Some(100.0));
        assert_eq!(view.vips[0].backends[0].flow_rate, Some(5.0));
    }

    #[test]
    fn answers_parse_and_ignore_fields_the_view_does_not_use() {
        let stats = serde_json::json!({
            "counters": {"tx": {"packets": 5, "bytes": 300}, "drop_truncated": {"packets": 0, "bytes": 0}},
            "vips": [{"name": "dns", "address": "2001:db8::53", "port": 53, "protocol": "udp",
                      "scheduler": "source-hash", "persistence_timeout": null, "backends": 1,
                      "backends_up": 0, "all_down": true, "packets": 9, "bytes": 900, "new_flows": 2}]
        });
        let backends = serde_json::json!([{"vip": "dns", "address": "2001:db8::1", "weight": 0,
            "state": "down", "mac": null, "latency_ms": null, "packets": 9, "bytes": 900, "new_flows": 2}]);
        let snapshot = Snapshot::from_answers(stats, backends).unwrap();
        let view = view(None, &snapshot, Duration::ZERO);
        assert_eq!(view.vips[0].service, "[2001:db8::53]:53/udp");
        assert!(view.vips[0].all_down);
        assert_eq!(view.vips[0].backends[0].state, "down");
        assert_eq!(view.counters.len(), 2);
        let broken = Snapshot::from_answers(serde_json::json!({"vips": []}), serde_json::json!([]));
        assert!(format!("{:#}", broken.unwrap_err()).contains("stats answer is not as expected"));
    }
}
