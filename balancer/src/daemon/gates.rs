//! Whether this host should attract each VIP's traffic, and why: the
//! decision behind the announcement table ([`crate::routes`]). Pure: the
//! daemon gives what it knows, [`Gates::decide`] says which addresses to
//! announce.
//!
//! A VIP is servable once the program is attached, the VIP's entries are
//! in the maps and at least its `min_healthy` backends can take new flows
//! (up, reachable, weight above 0, as the maps hold them). It is announced
//! once it has stayed servable for `announce_delay`, so a flapping backend
//! does not flap the route, and withdrawn as soon as it stops being
//! servable, or while the host is drained. Routes are per address: an
//! address is announced only while every VIP on it is, since the routers
//! send all of its ports to the same host.
//!
//! After a restart the routes a previous daemon left are kept without the
//! delay for the VIPs that are servable at once: the datapath kept
//! forwarding meanwhile, and a fresh delay would withdraw them for nothing.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
    time::{Duration, Instant},
};

/// What the daemon knows of one VIP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Input {
    pub(super) name: String,
    pub(super) address: IpAddr,
    /// Its key, policy and ring are in the maps.
    pub(super) in_maps: bool,
    /// Backends that can take new flows, as the maps hold them.
    pub(super) up: usize,
    pub(super) min_healthy: u32,
}

/// What the daemon knows of the host.
#[derive(Clone, Copy, Debug)]
pub(super) struct Host {
    /// The program is attached to every configured interface.
    pub(super) attached: bool,
    /// The drain mark is there.
    pub(super) drained: bool,
    pub(super) delay: Duration,
    pub(super) now: Instant,
}

/// Why a VIP is or is not announced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Why {
    Announced,
    /// The program is not attached yet.
    NotAttached,
    /// The host is drained (`balancer host drain`).
    Drained,
    /// Its entries are not in the maps (a write failed, or not made yet).
    NotInMaps,
    /// Too few backends can take new flows.
    TooFewUp {
        up: usize,
        min: u32,
    },
    /// Servable, waiting for `announce_delay` to pass.
    Waiting {
        left: Duration,
    },
    /// Servable, but a VIP on the same address is not.
    SharedAddress {
        vip: String,
    },
}

impl Why {
    /// announced, pending (servable, held back) or withdrawn.
    pub(super) fn state(&self) -> &'static str {
        match self {
            Why::Announced => "announced",
            Why::Waiting { .. } => "pending",
            _ => "withdrawn",
        }
    }

    /// A short name for the metrics' `reason` label.
    pub(super) fn label(&self) -> &'static str {
        match self {
            Why::Announced => "servable",
            Why::NotAttached => "not_attached",
            Why::Drained => "drained",
            Why::NotInMaps => "not_in_maps",
            Why::TooFewUp { .. } => "too_few_up",
            Why::Waiting { .. } => "announce_delay",
            Why::SharedAddress { .. } => "shared_address",
        }
    }
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Why::Announced => write!(f, "servable"),
            Why::NotAttached => write!(f, "the program is not attached"),
            Why::Drained => write!(f, "the host is drained"),
            Why::NotInMaps => write!(f, "its entries are not in the maps"),
            Why::TooFewUp { up, min } => {
                write!(f, "{up} backends can take new flows, min_healthy is {min}")
            }
            Why::Waiting { left } => write!(
                f,
                "servable; announced in {:.1}s (announce_delay)",
                left.as_secs_f64()
            ),
            Why::SharedAddress { vip } => {
                write!(f, "servable, but VIP {vip} on the same address is not")
            }
        }
    }
}

/// One decision: per VIP why, and the addresses to announce.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Verdict {
    pub(super) vips: BTreeMap<String, Why>,
    pub(super) addresses: BTreeSet<IpAddr>,
    /// When a VIP waiting for its delay is due: decide again then.
    pub(super) next: Option<Instant>,
}

/// Since when each VIP has been servable.
#[derive(Debug, Default)]
pub(super) struct Gates {
    /// By VIP name and address: a VIP moved to another address starts
    /// afresh there.
    since: BTreeMap<(String, IpAddr), Instant>,
    /// VIPs announced at least once since they appeared (by name and
    /// address).
    proven: BTreeSet<(String, IpAddr)>,
    /// The addresses the last decision announced.
    last: BTreeSet<IpAddr>,
    /// Addresses announced when the daemon started, kept without the
    /// delay by the first decision if their VIPs are servable then.
    adopted: Option<BTreeSet<IpAddr>>,
}

impl Gates {
    /// Gates for a daemon that found `adopted` announced at its start.
    pub(super) fn new(adopted: BTreeSet<IpAddr>) -> Gates {
        Gates {
            last: adopted.clone(),
            adopted: Some(adopted),
            ..Gates::default()
        }
    }

    /// Decides for `vips` on `host`, noting since when each is servable.
    pub(super) fn decide(&mut self, vips: &[Input], host: &Host) -> Verdict {
        let adopted = self.adopted.take().unwrap_or_default();
        let held_since = host.now.checked_sub(host.delay).unwrap_or(host.now);
        let present = |(name, address): &(String, IpAddr)| {
            vips.iter()
                .any(|v| &v.name == name && v.address == *address)
        };
        self.since.retain(|key, _| present(key));
        self.proven.retain(present);
        let mut own = BTreeMap::new();
        let mut next: Option<Instant> = None;
        for vip in vips {
            let blocked = if !host.attached {
                Some(Why::NotAttached)
            } else if !vip.in_maps {
                Some(Why::NotInMaps)
            } else if vip.up < vip.min_healthy as usize {
                Some(Why::TooFewUp {
                    up: vip.up,
                    min: vip.min_healthy,
                })
            } else {
                None
            };
            let key = (vip.name.clone(), vip.address);
            let why = match blocked {
                Some(why) => {
                    self.since.remove(&key);
                    why
                }
                None => {
                    let start = if adopted.contains(&vip.address) {
                        held_since
                    } else {
                        host.now
                    };
                    let since = *self.since.entry(key).or_insert(start);
                    let due = since + host.delay;
                    if host.drained {
                        Why::Drained
                    } else if due > host.now {
                        next = Some(next.map_or(due, |n| n.min(due)));
                        Why::Waiting {
                            left: due - host.now,
                        }
                    } else {
                        Why::Announced
                    }
                }
            };
            own.insert(vip.name.clone(), (vip.address, why));
        }
        // An address goes out only if every VIP on it may; but a VIP
        // never announced yet (one just added, say) does not take out an
        // address its neighbours hold: they went on serving meanwhile.
        let mut blocking: BTreeMap<IpAddr, &str> = BTreeMap::new();
        for (name, (address, why)) in &own {
            let proven = self.proven.contains(&(name.clone(), *address));
            let newcomer = !proven && self.last.contains(address) && !host.drained;
            if *why != Why::Announced && !newcomer {
                blocking.entry(*address).or_insert(name);
            }
        }
        let mut verdict = Verdict {
            next,
            ..Verdict::default()
        };
        for (name, (address, why)) in &own {
            let why = match (why, blocking.get(address)) {
                (Why::Announced, Some(other)) => Why::SharedAddress {
                    vip: (*other).to_owned(),
                },
                (Why::Announced, None) => {
                    verdict.addresses.insert(*address);
                    self.proven.insert((name.clone(), *address));
                    Why::Announced
                }
                (why, _) => why.clone(),
            };
            verdict.vips.insert(name.clone(), why);
        }
        self.last.clone_from(&verdict.addresses);
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DELAY: Duration = Duration::from_secs(5);

    fn vip(name: &str, address: &str, up: usize, min: u32) -> Input {
        Input {
            name: name.to_owned(),
            address: address.parse().unwrap(),
            in_maps: true,
            up,
            min_healthy: min,
        }
    }

    fn host(now: Instant) -> Host {
        Host {
            attached: true,
            drained: false,
            delay: DELAY,
            now,
        }
    }

    fn whys(verdict: &Verdict) -> Vec<(&str, &'static str)> {
        verdict
            .vips
            .iter()
            .map(|(name, why)| (name.as_str(), why.label()))
            .collect()
    }

    #[test]
    fn a_servable_vip_is_announced_after_the_delay_and_withdrawn_at_once() {
        let t0 = Instant::now();
        let mut gates = Gates::new(BTreeSet::new());
        let vips = [vip("web", "192.0.2.1", 2, 1)];
        let first = gates.decide(&vips, &host(t0));
        assert_eq!(whys(&first), [("web", "announce_delay")]);
        assert_eq!(first.next, Some(t0 + DELAY));
        assert!(first.addresses.is_empty());
        let later = gates.decide(&vips, &host(t0 + DELAY));
        assert_eq!(whys(&later), [("web", "servable")]);
        assert_eq!(later.addresses.len(), 1);
        assert_eq!(later.next, None);
        let down = [vip("web", "192.0.2.1", 0, 1)];
        let gone = gates.decide(&down, &host(t0 + DELAY * 2));
        assert_eq!(gone.vips["web"], Why::TooFewUp { up: 0, min: 1 });
        assert!(gone.addresses.is_empty());
        // Back up: the delay starts again.
        let back = gates.decide(&vips, &host(t0 + DELAY * 3));
        assert_eq!(whys(&back), [("web", "announce_delay")]);
    }

    #[test]
    fn a_flapping_backend_does_not_flap_the_route() {
        let t0 = Instant::now();
        let mut gates = Gates::new(BTreeSet::new());
        let up = [vip("web", "192.0.2.1", 2, 2)];
        let half = [vip("web", "192.0.2.1", 1, 2)];
        let mut announced = 0;
        for step in 0..20u32 {
            let vips = if step % 2 == 0 { &up } else { &half };
            let verdict = gates.decide(vips, &host(t0 + Duration::from_secs(2) * step));
            announced += verdict.addresses.len();
        }
        assert_eq!(announced, 0, "up 2 s, down 2 s: never 5 s servable");
    }

    /// Each row: what blocks, and the reason it gives.
    #[test]
    fn reasons_in_order() {
        let t0 = Instant::now();
        let rows: [(Input, Host, &str); 5] = [
            (
                vip("a", "192.0.2.1", 3, 1),
                Host {
                    attached: false,
                    drained: true,
                    ..host(t0)
                },
                "not_attached",
            ),
            (
                Input {
                    in_maps: false,
                    ..vip("a", "192.0.2.1", 0, 1)
                },
                host(t0),
                "not_in_maps",
            ),
            (vip("a", "192.0.2.1", 1, 2), host(t0), "too_few_up"),
            (vip("a", "192.0.2.1", 2, 2), host(t0), "announce_delay"),
            (
                vip("a", "192.0.2.1", 2, 2),
                Host {
                    drained: true,
                    now: t0 + DELAY,
                    ..host(t0)
                },
                "drained",
            ),
        ];
        let mut gates = Gates::new(BTreeSet::new());
        for (input, host, label) in rows {
            let verdict = gates.decide(std::slice::from_ref(&input), &host);
            assert_eq!(verdict.vips["a"].label(), label, "{input:?}");
            assert!(verdict.addresses.is_empty());
        }
    }

    #[test]
    fn undrain_announces_at_once_what_stayed_servable() {
        let t0 = Instant::now();
        let mut gates = Gates::new(BTreeSet::new());
        let vips = [vip("web", "192.0.2.1", 1, 1)];
        let drained = Host {
            drained: true,
            ..host(t0)
        };
        gates.decide(&vips, &drained);
        let still = gates.decide(
            &vips,
            &Host {
                now: t0 + DELAY * 4,
                ..drained
            },
        );
        assert_eq!(whys(&still), [("web", "drained")]);
        let undrained = gates.decide(&vips, &host(t0 + DELAY * 4));
        assert_eq!(whys(&undrained), [("web", "servable")]);
    }

    #[test]
    fn an_address_is_announced_only_while_every_vip_on_it_is() {
        let t0 = Instant::now();
        let mut gates = Gates::new(BTreeSet::new());
        let vips = [
            vip("web", "192.0.2.1", 2, 1),
            vip("tls", "192.0.2.1", 0, 1),
            vip("dns", "2001:db8::53", 1, 1),
        ];
        gates.decide(&vips, &host(t0));
        let verdict = gates.decide(&vips, &host(t0 + DELAY));
        assert_eq!(
            verdict.vips["web"],
            Why::SharedAddress {
                vip: "tls".to_owned()
            }
        );
        assert_eq!(
            verdict.addresses,
            BTreeSet::from(["2001:db8::53".parse().unwrap()])
        );
    }

    #[test]
    fn a_vip_added_to_an_announced_address_does_not_withdraw_it_until_proven() {
        let t0 = Instant::now();
        let mut gates = Gates::new(BTreeSet::new());
        let web = vip("web", "192.0.2.1", 2, 1);
        gates.decide(std::slice::from_ref(&web), &host(t0));
        let on = gates.decide(std::slice::from_ref(&web), &host(t0 + DELAY));
        assert_eq!(on.addresses.len(), 1);
        // A new VIP on the address, no backend up yet: web stays out.
        let added = [web.clone(), vip("tls", "192.0.2.1", 0, 1)];
        let verdict = gates.decide(&added, &host(t0 + DELAY * 2));
        assert_eq!(whys(&verdict), [("tls", "too_few_up"), ("web", "servable")]);
        assert_eq!(verdict.addresses.len(), 1);
        // Once tls has been announced, losing its backends takes the
        // address out again.
        let up = [web.clone(), vip("tls", "192.0.2.1", 1, 1)];
        gates.decide(&up, &host(t0 + DELAY * 3));
        let proven = gates.decide(&up, &host(t0 + DELAY * 4));
        assert_eq!(whys(&proven), [("tls", "servable"), ("web", "servable")]);
        let lost = gates.decide(&added, &host(t0 + DELAY * 5));
        assert!(lost.addresses.is_empty());
        assert_eq!(
            lost.vips["web"],
            Why::SharedAddress {
                vip: "tls".to_owned()
            }
        );
    }

    #[test]
    fn a_restart_keeps_the_routes_of_servable_vips_without_the_delay() {
        let t0 = Instant::now();
        let adopted = BTreeSet::from(["192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap()]);
        let mut gates = Gates::new(adopted);
        let vips = [
            vip("web", "192.0.2.1", 1, 1),
            vip("dead", "192.0.2.2", 0, 1),
            vip("new", "192.0.2.3", 1, 1),
        ];
        let first = gates.decide(&vips, &host(t0));
        assert_eq!(
            whys(&first),
            [
                ("dead", "too_few_up"),
                ("new", "announce_delay"),
                ("web", "servable")
            ]
        );
        assert_eq!(
            first.addresses,
            BTreeSet::from(["192.0.2.1".parse().unwrap()])
        );
        // Only the first decision adopts: `dead` coming back waits.
        let back = [vip("dead", "192.0.2.2", 1, 1)];
        let second = gates.decide(&back, &host(t0 + Duration::from_secs(1)));
        assert_eq!(whys(&second), [("dead", "announce_delay")]);
    }
}
