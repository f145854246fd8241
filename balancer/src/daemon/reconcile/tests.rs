//! The reconciler and its apply outcomes without a kernel: desired states
//! from configuration text, observations made by hand, and an in-memory
//! writer that records every write and can fail at a chosen one.

use std::{
    collections::BTreeSet,
    path::Path,
    time::{Duration, Instant},
};

use balancer_common::backend::{BACKEND_CONFIRMED, BACKEND_RESOLVED, BACKEND_UP};

use super::*;
use crate::daemon::observed::Reach;
use crate::{
    config::parse, datapath::DatapathError, health::Report, neighbour::L2Path, plan::Numbering,
};

/// Two VIPs on one address: web (TCP 80, three backends, checked with
/// rise 1 and fall 1) and dns (UDP 53, one backend).
const CONFIG: &str = r#"
[datapath]
ring_size = 1021

[[vip]]
name = "web"
address = "192.0.2.10"
port = 80
protocol = "tcp"
health_check = { rise = 1, fall = 1 }
backend = [{ address = "10.0.0.1" }, { address = "10.0.0.2" }, { address = "10.0.0.3" }]

[[vip]]
name = "dns"
address = "192.0.2.10"
port = 53
protocol = "udp"
health_check = { kind = "none" }
backend = [{ address = "10.0.0.9" }]
"#;

/// Records writes; fails the write of index `fail_at`.
#[derive(Default)]
struct Fake {
    writes: Vec<Write>,
    fail_at: Option<usize>,
}

impl Writer for Fake {
    fn write(&mut self, write: &Write) -> Result<(), DatapathError> {
        if self.fail_at == Some(self.writes.len()) {
            return Err(DatapathError::MissingMap { name: "rings" });
        }
        self.writes.push(write.clone());
        Ok(())
    }
}

/// The daemon's three parts, in memory.
struct World {
    desired: Desired,
    observed: Observed,
    published: Published,
    /// The time the world is at: tests move it on.
    now: Instant,
}

impl World {
    /// `CONFIG`, every backend resolved, nothing published.
    fn new() -> World {
        let desired = Desired::new(
            parse(CONFIG, "t").unwrap(),
            None,
            None,
            Numbering::default(),
            1,
        );
        let mut world = World {
            desired,
            observed: Observed::default(),
            published: Published::default(),
            now: Instant::now(),
        };
        world
            .observed
            .add(&world.desired, &std::collections::BTreeMap::new());
        for id in world.ids() {
            world.resolve(id, mac(id));
        }
        world
    }

    /// `CONFIG`, published.
    fn published() -> World {
        let mut world = World::new();
        world.apply();
        world
    }

    fn ids(&self) -> Vec<u32> {
        self.desired.plan.backend_ids().collect()
    }

    fn resolve(&mut self, id: u32, dst: [u8; 6]) {
        let path = L2Path {
            ifindex: 2,
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: Some(dst),
            source: Some("192.0.2.2".parse().unwrap()),
            via_gateway: false,
            mtu: 1500,
        };
        self.observed.set_reach(id, Reach::Path(path));
    }

    fn reconcile(&self) -> Writes {
        reconcile(&self.desired, &self.observed, &self.published, self.now).unwrap()
    }

    /// Reconciles and applies; returns the writes made.
    fn apply(&mut self) -> Vec<Write> {
        let writes = self.reconcile();
        let mut fake = Fake::default();
        apply(&writes, &mut fake, &mut self.published).unwrap();
        fake.writes
    }

    /// Moves to the configuration `text`, as a reload does.
    fn reload(&mut self, text: &str) {
        let next = self
            .desired
            .next(parse(text, "t").unwrap(), Path::new("t"), text.to_owned())
            .unwrap();
        self.observed.add(&next, &std::collections::BTreeMap::new());
        self.observed
            .start_ramps(&self.desired.plan, &next.plan, self.now);
        self.observed.retain(&next);
        self.desired = next;
        for id in self.ids() {
            if self.observed.reach(id) == Reach::Unknown {
                self.resolve(id, mac(id));
            }
        }
    }

    fn check(&mut self, id: u32, success: bool) {
        self.observed.record(
            &Report {
                backend: id,
                success,
                inconclusive: false,
                detail: String::new(),
                latency: Duration::from_micros(250),
            },
            self.now,
        );
    }
}

/// `CONFIG` published, then reloaded with each (from, to) replaced, and
/// the writes of that reload.
fn reloaded(edits: &[(&str, &str)]) -> (World, Vec<Write>) {
    let mut world = World::published();
    let text = edits.iter().fold(CONFIG.to_owned(), |text, (from, to)| {
        assert!(text.contains(from), "{from}");
        text.replace(from, to)
    });
    world.reload(&text);
    let writes = world.apply();
    (world, writes)
}

fn mac(id: u32) -> [u8; 6] {
    [2, 0xbe, 0, 0, 0, id as u8]
}

/// The kind of each write, for order checks.
fn kinds(writes: &[Write]) -> Vec<&'static str> {
    writes
        .iter()
        .map(|w| match w {
            Write::Settings(_) => "settings",
            Write::ResetNumbers { .. } => "reset",
            Write::RemoveVips(_) => "remove-vips",
            Write::RemoveAddr(_) => "remove-addr",
            Write::Weight { .. } => "weight",
            Write::Latency { .. } => "latency",
            Write::Egress(_) => "egress",
            Write::Backend { .. } => "backend",
            Write::Policy { .. } => "policy",
            Write::Limit { .. } => "limit",
            Write::Tunnel { .. } => "tunnel",
            Write::Rings(_) => "rings",
            Write::Addr { .. } => "addr",
            Write::Access(_) => "access",
            Write::RemoveAccess(_) => "remove-access",
            Write::NatBackend { .. } => "nat-backend",
            Write::SnatPools(_) => "snat-pools",
            Write::SnatPorts(_) => "snat-ports",
            Write::NatRoutes(_) => "nat-routes",
            Write::RemoveNatRoutes(_) => "remove-nat-routes",
        })
        .collect()
}

/// The VIP indexes whose rings `writes` publish.
fn rings(writes: &[Write]) -> Vec<u32> {
    writes
        .iter()
        .filter_map(|w| match w {
            Write::Rings(r) => Some(r.iter().map(|(slot, _)| slot.info.index)),
            _ => None,
        })
        .flatten()
        .collect()
}

/// The backend entries `writes` make.
fn entries(writes: &[Write]) -> Vec<(u32, BackendInfo)> {
    writes
        .iter()
        .filter_map(|w| match w {
            Write::Backend { id, info } => Some((*id, *info)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_first_publish_writes_everything_a_vip_needs_before_its_key() {
    let mut world = World::new();
    let writes = world.apply();
    assert_eq!(
        kinds(&writes),
        [
            "reset", "limit", "limit", "settings", "weight", "egress", "backend", "weight",
            "backend", "weight", "backend", "weight", "backend", "policy", "policy", "rings",
            "addr", "addr"
        ]
    );
    assert_eq!(rings(&writes), [0, 1]);
    // Up and resolved; the unchecked VIP's backends (dns) confirmed at
    // once, the checked ones (web) not before a check passes.
    for (id, info) in entries(&writes) {
        let confirmed = if id >= 3 { BACKEND_CONFIRMED } else { 0 };
        assert_eq!(
            info.flags,
            BACKEND_UP | BACKEND_RESOLVED | confirmed,
            "{id}"
        );
    }
    assert!(world.reconcile().ops.is_empty(), "in line after one pass");
}

#[test]
fn a_reload_that_changes_nothing_writes_nothing() {
    let mut world = World::published();
    world.reload(CONFIG);
    assert_eq!(
        world.reconcile(),
        Writes {
            numbers: world.published.numbers.clone(),
            ..Writes::default()
        }
    );
}

#[test]
fn an_added_backend_gets_fresh_counters_its_entry_and_one_new_ring() {
    let (_, writes) = reloaded(&[(
        r#"{ address = "10.0.0.3" }"#,
        r#"{ address = "10.0.0.3" }, { address = "10.0.0.4" }"#,
    )]);
    assert_eq!(kinds(&writes), ["reset", "weight", "backend", "rings"]);
    assert_eq!(
        writes[0],
        Write::ResetNumbers {
            vips: vec![],
            backends: vec![4]
        }
    );
    assert_eq!(rings(&writes), [0], "the other VIP's ring stays");
}

#[test]
fn a_removed_backend_is_marked_down_with_weight_0_and_forgotten() {
    let (world, writes) = reloaded(&[(r#"{ address = "10.0.0.2" }, "#, "")]);
    assert_eq!(kinds(&writes), ["backend", "weight", "rings"]);
    assert_eq!(entries(&writes)[0].0, 1);
    assert_eq!(entries(&writes)[0].1.flags, 0);
    assert_eq!(writes[1], Write::Weight { id: 1, weight: 0 });
    assert!(!world.published.backends.contains_key(&1));
    assert!(world.reconcile().ops.is_empty());
}

#[test]
fn a_weight_change_rewrites_the_weight_and_the_ring() {
    let (_, writes) = reloaded(&[(
        r#"{ address = "10.0.0.1" }"#,
        r#"{ address = "10.0.0.1", weight = 300 }"#,
    )]);
    assert_eq!(writes[0], Write::Weight { id: 0, weight: 300 });
    assert_eq!(kinds(&writes), ["weight", "rings"]);
}

#[test]
fn a_drained_backend_keeps_its_entry_and_leaves_the_ring() {
    let (_, writes) = reloaded(&[(
        r#"{ address = "10.0.0.1" }"#,
        r#"{ address = "10.0.0.1", drain = true }"#,
    )]);
    assert_eq!(kinds(&writes), ["weight", "rings"]);
    assert_eq!(writes[0], Write::Weight { id: 0, weight: 0 });
    let Write::Rings(r) = &writes[1] else {
        unreachable!()
    };
    assert!(!r[0].1.contains(&0), "{:?}", r[0].1);
}

#[test]
fn a_backend_going_down_and_up_rewrites_its_flags_and_its_vip_ring() {
    let mut world = World::published();
    world.check(1, false);
    let writes = world.apply();
    assert_eq!(kinds(&writes), ["backend", "rings"]);
    assert_eq!(entries(&writes)[0].1.flags, BACKEND_RESOLVED);
    world.check(1, true);
    let writes = world.apply();
    assert_eq!(kinds(&writes), ["backend", "latency", "rings"]);
    // A check passed: its health is known now.
    assert_eq!(
        entries(&writes)[0].1.flags,
        BACKEND_UP | BACKEND_RESOLVED | BACKEND_CONFIRMED
    );
}

#[test]
fn a_vip_with_every_backend_down_keeps_its_last_ring_and_says_so_once() {
    let mut world = World::published();
    for id in 0..3 {
        world.check(id, false);
    }
    let writes = world.reconcile();
    assert!(rings(&writes.ops).is_empty());
    assert_eq!(writes.all_down, BTreeSet::from([0]));
    assert!(writes.notes.contains(&Note::AllDown { vip: "web".into() }));
    world.apply();
    assert!(world.published.vips[&0].all_down);
    assert!(world.reconcile().notes.is_empty(), "said once");
    world.check(2, true);
    let writes = world.apply();
    assert_eq!(rings(&writes), [0]);
    assert!(!world.published.vips[&0].all_down);
}

#[test]
fn a_neighbour_change_rewrites_that_backend_only() {
    let mut world = World::published();
    world.resolve(2, [2, 0xbe, 0, 0, 0, 0x77]);
    let writes = world.apply();
    assert_eq!(kinds(&writes), ["backend"]);
    assert_eq!(
        entries(&writes)[0].1.macs,
        BackendInfo::mac_words([2, 0xbe, 0, 0, 0, 0x77], [2, 0, 0, 0, 0, 1])
    );
}

#[test]
fn a_removed_vip_loses_its_key_and_ring_and_its_backend() {
    let dns = CONFIG.find("[[vip]]\nname = \"dns\"").unwrap();
    let (world, writes) = reloaded(&[(&CONFIG[dns..], "")]);
    assert_eq!(
        kinds(&writes),
        ["remove-vips", "remove-addr", "backend", "weight"]
    );
    assert!(!world.published.vips.contains_key(&1));
    assert!(world.reconcile().ops.is_empty());
}

#[test]
fn a_first_write_that_fails_is_refused_and_records_nothing() {
    let mut world = World::published();
    world.check(1, false);
    let before = world.published.clone();
    let writes = world.reconcile();
    let mut fake = Fake {
        fail_at: Some(0),
        ..Fake::default()
    };
    let outcome = apply(&writes, &mut fake, &mut world.published);
    assert!(
        matches!(outcome, Err(ApplyError::Refused(_))),
        "{outcome:?}"
    );
    assert_eq!(world.published, before);
}

#[test]
fn a_write_failing_part_way_records_what_went_in_and_the_rest_is_retried() {
    let mut world = World::new();
    let writes = world.reconcile();
    let mut fake = Fake {
        fail_at: Some(7),
        ..Fake::default()
    };
    let outcome = apply(&writes, &mut fake, &mut world.published);
    let total = writes.ops.len();
    assert!(
        matches!(&outcome, Err(ApplyError::Partial { done: 7, total: t, .. }) if *t == total),
        "{outcome:?}"
    );
    let rest = world.apply();
    assert_eq!(rest.len(), total - 7, "what went in is not made again");
    assert_eq!(kinds(&rest)[0], "weight");
    assert!(world.reconcile().ops.is_empty());
}

/// What the maps of `world` hold, as a restarted daemon reads them back.
fn pinned(world: &World) -> crate::datapath::Pinned {
    let published = &world.published;
    crate::datapath::Pinned {
        vips: published
            .vips
            .values()
            .map(|r| (r.slot.key, r.slot.info))
            .collect(),
        addrs: published.addrs.clone(),
        backends: published
            .backends
            .iter()
            .filter_map(|(id, r)| Some((*id, r.info?)))
            .collect(),
        access: published
            .access
            .iter()
            .map(|(key, kind)| (*key, *kind))
            .collect(),
        nat_routes: published
            .nat_routes
            .iter()
            .map(|(key, hop)| (*key, *hop))
            .collect(),
    }
}

#[test]
fn a_start_removes_what_the_pins_hold_beyond_the_configuration() {
    let before = World::published();
    let dns = CONFIG.find("[[vip]]\nname = \"dns\"").unwrap();
    let mut world = World::new();
    world.reload(&CONFIG[..dns]);
    world.published = Published::adopting(&pinned(&before));
    let writes = world.apply();
    let dns_slot = before.published.vips[&1].slot;
    assert!(
        writes.contains(&Write::RemoveVips(vec![dns_slot])),
        "{writes:?}"
    );
    assert_eq!(
        writes
            .iter()
            .filter(|w| matches!(w, Write::RemoveAddr(_)))
            .count(),
        1,
        "the UDP address goes: {writes:?}"
    );
    let dns_backend = entries(&writes)
        .into_iter()
        .find(|(id, _)| *id == 3)
        .expect("the VIP's backend is marked down");
    assert_eq!(dns_backend.1.flags, 0);
    assert_eq!(
        rings(&writes),
        [0],
        "the ring kept is rebuilt: its content is unknown"
    );
    assert!(
        !entries(&writes).iter().any(|(id, _)| *id < 3),
        "backends whose pinned entries are right are not rewritten"
    );
    assert!(world.reconcile().ops.is_empty());
    assert!(!world.published.vips.contains_key(&1));
}

#[test]
fn a_vip_without_weight_is_said_once() {
    let mut world = World::new();
    world.reload(&CONFIG.replace(
        r#"backend = [{ address = "10.0.0.9" }]"#,
        r#"backend = [{ address = "10.0.0.9", weight = 0 }]"#,
    ));
    let first = world.reconcile();
    assert!(first.notes.contains(&Note::NoWeight { vip: "dns".into() }));
    world.apply();
    assert!(
        !world
            .reconcile()
            .notes
            .contains(&Note::NoWeight { vip: "dns".into() })
    );
}

/// Fails the write of index `fail_at` once, then succeeds.
struct FailOnce(Fake);

impl Writer for FailOnce {
    fn write(&mut self, write: &Write) -> Result<(), DatapathError> {
        let outcome = self.0.write(write);
        if outcome.is_err() {
            self.0.fail_at = None;
        }
        outcome
    }
}

impl World {
    /// Applies what reconciling toward the current desired state decides
    /// through `writer`, rolling back to `CONFIG` on a failure.
    fn apply_from_config(&mut self, writer: &mut dyn Writer) -> Result<(), ApplyError> {
        let current = Desired::new(
            parse(CONFIG, "t").unwrap(),
            None,
            None,
            Numbering::default(),
            1,
        );
        let writes = self.reconcile();
        apply_or_roll_back(
            &writes,
            &current,
            &self.observed,
            writer,
            &mut self.published,
            self.now,
        )
    }
}

#[test]
fn a_change_failing_part_way_is_rolled_back_to_the_state_in_force() {
    let mut world = World::published();
    let before = world.published.clone();
    // A new VIP with a new backend, and a weight change.
    world.reload(
        &CONFIG
            .replace(
                r#"{ address = "10.0.0.1" }"#,
                r#"{ address = "10.0.0.1", weight = 300 }"#,
            )
            .replace("[[vip]]\nname = \"dns\"", "[[vip]]\nname = \"ntp\"\naddress = \"192.0.2.11\"\nport = 123\nprotocol = \"udp\"\nhealth_check = { kind = \"none\" }\nbackend = [{ address = \"10.0.0.7\" }]\n\n[[vip]]\nname = \"dns\""),
    );
    let fail_at = world.reconcile().ops.len() - 1;
    let mut writer = FailOnce(Fake {
        fail_at: Some(fail_at),
        ..Fake::default()
    });
    let outcome = world.apply_from_config(&mut writer);
    assert!(
        matches!(&outcome, Err(ApplyError::RolledBack { done, .. }) if *done == fail_at),
        "{outcome:?}"
    );
    assert!(outcome.unwrap_err().changed_nothing());
    assert_eq!(world.published.numbers, before.numbers);
    assert_eq!(world.published.backends, before.backends);
    assert_eq!(world.published.vips, before.vips);
    let mut addrs = world.published.addrs.clone();
    addrs.sort_by_key(|(k, _)| k.proto);
    let mut want = before.addrs.clone();
    want.sort_by_key(|(k, _)| k.proto);
    assert_eq!(addrs, want);
}

#[test]
fn a_rollback_that_fails_too_leaves_the_maps_behind_and_says_so() {
    let mut world = World::published();
    world.reload(&CONFIG.replace(
        r#"{ address = "10.0.0.1" }"#,
        r#"{ address = "10.0.0.1", weight = 300 }"#,
    ));
    let mut writer = Fake {
        fail_at: Some(1),
        ..Fake::default()
    };
    let outcome = world.apply_from_config(&mut writer);
    let Err(err @ ApplyError::Partial { .. }) = outcome else {
        panic!("{outcome:?}")
    };
    assert!(!err.changed_nothing());
    assert!(
        err.to_string()
            .contains("bringing the maps back failed too"),
        "{err}"
    );
}

#[test]
fn checks_that_could_not_run_on_this_host_never_take_a_backend_down() {
    let mut world = World::published();
    for _ in 0..5 {
        world.observed.record(
            &Report {
                backend: 1,
                success: false,
                inconclusive: true,
                detail: "tcp connect: Too many open files".into(),
                latency: Duration::from_micros(10),
            },
            world.now,
        );
    }
    assert!(world.reconcile().ops.is_empty());
    let seen = world.observed.get(1).unwrap();
    assert_eq!((seen.checks.inconclusive, seen.checks.failed), (5, 0));
    assert_eq!(seen.inconclusive_streak, 5);
    // A real failure still counts, and ends the streak.
    world.check(1, false);
    assert_eq!(entries(&world.apply())[0].1.flags, BACKEND_RESOLVED);
    assert_eq!(world.observed.get(1).unwrap().inconclusive_streak, 0);
}

#[test]
fn list_entries_go_in_before_the_flags_that_look_them_up_and_out_after() {
    use balancer_common::{
        access::{ACCESS_ALLOW, ACCESS_DENY, ACCESS_NOT_ALLOWED, AccessKey, SCOPE_GLOBAL},
        settings::SETTINGS_GLOBAL_ACCESS,
        vip::ADDR_VIP_ACCESS,
    };
    let (mut world, writes) = reloaded(&[
        (
            "[datapath]",
            "[access]\ndeny = [\"203.0.113.0/24\"]\n\n[datapath]",
        ),
        (
            "protocol = \"tcp\"\n",
            "protocol = \"tcp\"\nallow = [\"198.51.100.0/24\", \"203.0.113.128/25\"]\n",
        ),
    ]);
    assert_eq!(kinds(&writes), ["access", "settings", "addr"]);
    let v4 = |a, b, c, d| balancer_common::addr_from_v4([a, b, c, d]);
    let Write::Access(entries) = &writes[0] else {
        unreachable!()
    };
    // The web VIP's allow prefix inside the global deny prefix is kept
    // (scopes are checked apart: the datapath lets the global deny win);
    // within a scope, an allow a deny covers would be left out.
    let mut want = vec![
        (
            AccessKey::prefix(0, v4(198, 51, 100, 0), 24, true),
            ACCESS_ALLOW,
        ),
        (
            AccessKey::prefix(0, v4(203, 0, 113, 128), 25, true),
            ACCESS_ALLOW,
        ),
        (AccessKey::scope(0), ACCESS_NOT_ALLOWED),
        (
            AccessKey::prefix(SCOPE_GLOBAL, v4(203, 0, 113, 0), 24, true),
            ACCESS_DENY,
        ),
    ];
    want.sort();
    assert_eq!(entries, &want);
    let Write::Settings(settings) = &writes[1] else {
        unreachable!()
    };
    assert!(settings.global_access());
    assert_eq!(settings.flags & 0xffff_ffff, SETTINGS_GLOBAL_ACCESS);
    assert_ne!(settings.access_generation(), 0, "lists need a generation");
    let generation = settings.access_generation();
    let Write::Addr { info, .. } = &writes[2] else {
        unreachable!()
    };
    assert_ne!(info.flags & ADDR_VIP_ACCESS, 0);
    // The same lists again (a reload that leaves them alone) keep their
    // generation: flows admitted under them stay admitted.
    assert_eq!(world.desired.plan.settings.access_generation(), generation);
    // Lists removed: the flags go first, the entries last.
    world.reload(CONFIG);
    let writes = world.apply();
    assert_eq!(kinds(&writes), ["settings", "addr", "remove-access"]);
    assert!(world.published.access.is_empty());
}

#[test]
fn exempt_entries_and_limits_change_before_the_generation_that_decides_again() {
    use balancer_common::limit::LIMIT_OWN_EXEMPT;
    let limited = "protocol = \"tcp\"\nlimits = { new_flows = 5 }\n";
    let (mut world, writes) = reloaded(&[("protocol = \"tcp\"\n", limited)]);
    assert_eq!(kinds(&writes), ["limit", "addr"], "no lists: no generation");
    // An exempt list of the VIP: its entry and the VIP's flag go in
    // before the settings with the new generation.
    let exempt = format!("{limited}exempt = [\"198.51.100.0/24\"]\n");
    world.reload(&CONFIG.replace("protocol = \"tcp\"\n", &exempt));
    let writes = world.apply();
    assert_eq!(kinds(&writes), ["access", "limit", "settings"]);
    let Write::Limit { limit, .. } = &writes[1] else {
        unreachable!()
    };
    assert_eq!(limit.flags, LIMIT_OWN_EXEMPT);
    // Taken out again: the entry and the flag go before the settings too,
    // so no source stays exempt under the lists' next generation.
    world.reload(&CONFIG.replace("protocol = \"tcp\"\n", limited));
    let writes = world.apply();
    assert_eq!(kinds(&writes), ["remove-access", "limit", "settings"]);
    assert!(world.published.access.is_empty());
    // Limits removed: zeros written, and the address no longer marked.
    world.reload(CONFIG);
    let writes = world.apply();
    assert_eq!(kinds(&writes), ["limit", "addr"]);
    let Write::Limit { limit, .. } = &writes[0] else {
        unreachable!()
    };
    assert!(!limit.on());
}

#[test]
fn within_a_scope_a_deny_wins_over_an_allow_it_covers() {
    use balancer_common::access::{ACCESS_ALLOW, ACCESS_DENY, AccessKey};
    let (_, writes) = reloaded(&[(
        "protocol = \"tcp\"\n",
        "protocol = \"tcp\"\ndeny = [\"10.0.0.0/8\"]\nallow = [\"10.1.0.0/16\", \"10.0.0.0/8\", \"192.0.2.0/24\"]\n",
    )]);
    let Some(Write::Access(entries)) = writes.first() else {
        panic!("{writes:?}")
    };
    let v4 = |a, b, c, d| balancer_common::addr_from_v4([a, b, c, d]);
    let kinds: Vec<_> = entries
        .iter()
        .map(|(k, kind)| (k.prefix_len, *kind))
        .collect();
    assert!(entries.contains(&(AccessKey::prefix(0, v4(10, 0, 0, 0), 8, true), ACCESS_DENY)));
    assert!(entries.contains(&(
        AccessKey::prefix(0, v4(192, 0, 2, 0), 24, true),
        ACCESS_ALLOW
    )));
    assert!(
        !entries
            .iter()
            .any(|(k, kind)| *kind == ACCESS_ALLOW && k.data.addr[3] & 0xff == 10),
        "an allow inside the deny stayed: {kinds:?}"
    );
}

#[test]
fn an_ipip_backend_gets_its_tunnel_before_the_entry_that_flags_it() {
    use balancer_common::backend::{BACKEND_IPIP, BACKEND_RESOLVED};
    let (world, writes) = reloaded(&[(
        "protocol = \"tcp\"\n",
        "protocol = \"tcp\"\nforwarding = \"ipip\"\n",
    )]);
    let kinds = kinds(&writes);
    let web: Vec<u32> = world.desired.plan.vips[0]
        .backends
        .iter()
        .map(|b| b.id)
        .collect();
    for id in &web {
        let tunnel = writes
            .iter()
            .position(|w| matches!(w, Write::Tunnel { id: t, .. } if t == id));
        let entry = writes
            .iter()
            .position(|w| matches!(w, Write::Backend { id: b, .. } if b == id));
        let (Some(tunnel), Some(entry)) = (tunnel, entry) else {
            panic!("backend {id}: {kinds:?}");
        };
        assert!(tunnel < entry, "{kinds:?}");
        let Write::Backend { info, .. } = &writes[entry] else {
            unreachable!()
        };
        assert_eq!(
            info.flags & (BACKEND_IPIP | BACKEND_RESOLVED),
            BACKEND_IPIP | BACKEND_RESOLVED
        );
        let Write::Tunnel { tunnel, .. } = &writes[tunnel] else {
            unreachable!()
        };
        assert_eq!(tunnel.src, crate::plan::addr("192.0.2.2".parse().unwrap()));
    }
    // The dns VIP stays L2 DSR: no tunnel.
    let dns = world.desired.plan.vips[1].backends[0].id;
    assert!(
        !writes
            .iter()
            .any(|w| matches!(w, Write::Tunnel { id, .. } if *id == dns))
    );
}

/// `CONFIG` with `lines` added to the web VIP, published.
fn web_with(lines: &str) -> World {
    let mut world = World::published();
    world.reload(&CONFIG.replace(
        "health_check = { rise = 1, fall = 1 }",
        &format!("health_check = {{ rise = 1, fall = 1 }}\n{lines}"),
    ));
    world.apply();
    world
}

/// The members of VIP 0's ring in `writes`, with their weights.
fn members(writes: &Writes) -> Vec<(u32, u32)> {
    writes.recipes[&0]
        .2
        .iter()
        .map(|m| (m.id, m.weight))
        .collect()
}

/// The weights `writes` set, by backend id.
fn weights(writes: &[Write]) -> Vec<(u32, u32)> {
    writes
        .iter()
        .filter_map(|w| match w {
            Write::Weight { id, weight } => Some((*id, *weight)),
            _ => None,
        })
        .collect()
}

#[test]
fn below_its_panic_threshold_a_vip_takes_every_backend_as_up() {
    let mut world = web_with("panic_threshold = 50");
    // Two of three up: 67 %, the checks are trusted.
    world.check(0, false);
    let writes = world.reconcile();
    assert!(writes.panicking.is_empty());
    assert_eq!(members(&writes), [(1, 100), (2, 100)]);
    world.apply();
    // One of three: 33 %, below 50: every backend up, in the ring, said once.
    world.check(1, false);
    let writes = world.reconcile();
    assert_eq!(writes.panicking, BTreeSet::from([0]));
    assert_eq!(members(&writes), [(0, 100), (1, 100), (2, 100)]);
    assert!(
        writes.notes.iter().any(|n| matches!(
            n,
            Note::Panic { vip, threshold: 50, .. } if vip == "web"
        )),
        "{:?}",
        writes.notes
    );
    // Backend 0, written down before, is written up again; 1 stays up.
    let ops = world.apply();
    let written: Vec<(u32, bool)> = entries(&ops)
        .iter()
        .map(|(id, info)| (*id, info.flags & BACKEND_UP != 0))
        .collect();
    assert_eq!(written, [(0, true)]);
    // Every backend down: still panicking, still every backend in the ring.
    world.check(2, false);
    let writes = world.reconcile();
    assert_eq!(writes.panicking, BTreeSet::from([0]));
    assert!(writes.notes.is_empty(), "{:?}", writes.notes);
    assert!(writes.all_down.is_empty());
    world.apply();
    // Two back: 67 %, the checks are trusted again, the one down leaves.
    world.check(0, true);
    world.check(1, true);
    let writes = world.reconcile();
    assert!(writes.panicking.is_empty());
    assert!(
        writes
            .notes
            .iter()
            .any(|n| matches!(n, Note::PanicOver { vip, .. } if vip == "web"))
    );
    assert_eq!(members(&writes), [(0, 100), (1, 100)]);
}

#[test]
fn without_a_panic_threshold_the_checks_are_always_trusted() {
    let mut world = World::published();
    world.check(0, false);
    world.check(1, false);
    let writes = world.reconcile();
    assert!(writes.panicking.is_empty());
    assert_eq!(members(&writes), [(2, 100)]);
}

#[test]
fn a_backend_that_comes_back_ramps_up_its_weight_in_steps() {
    let mut world = web_with("slow_start = \"10s\"");
    world.check(1, false);
    world.apply();
    world.check(1, true);
    let writes = world.reconcile();
    assert_eq!(weights(&writes.ops), [(1, 10)]);
    assert_eq!(writes.next_step, Some(world.now + Duration::from_secs(1)));
    assert_eq!(members(&writes), [(0, 100), (1, 10), (2, 100)]);
    world.apply();
    // Within the step: nothing to write.
    world.now += Duration::from_millis(900);
    assert!(world.reconcile().ops.is_empty());
    world.now += Duration::from_millis(100);
    let writes = world.reconcile();
    assert_eq!(weights(&writes.ops), [(1, 20)]);
    assert_eq!(members(&writes), [(0, 100), (1, 20), (2, 100)]);
    world.apply();
    world.now += Duration::from_secs(7);
    assert_eq!(weights(&world.apply()), [(1, 90)]);
    // The last step is the full weight.
    world.now += Duration::from_secs(1);
    assert_eq!(weights(&world.apply()), [(1, 100)]);
    world.now += Duration::from_secs(60);
    let writes = world.reconcile();
    assert!(writes.ops.is_empty());
    assert_eq!(writes.next_step, None);
}

#[test]
fn added_and_undrained_backends_ramp_up_and_those_there_from_the_start_do_not() {
    let config = CONFIG.replace(
        "health_check = { rise = 1, fall = 1 }",
        "health_check = { rise = 1, fall = 1 }\nslow_start = \"4s\"",
    );
    let mut world = World::published();
    world.reload(&config);
    let writes = world.reconcile();
    assert!(
        weights(&writes.ops).is_empty(),
        "no ramp for backends already there"
    );
    world.apply();
    let drained = config.replace(
        r#"{ address = "10.0.0.1" }"#,
        r#"{ address = "10.0.0.1", drain = true }"#,
    );
    world.reload(&drained);
    world.apply();
    world.reload(&config.replace(
        r#"{ address = "10.0.0.3" }]"#,
        r#"{ address = "10.0.0.3" }, { address = "10.0.0.4", weight = 200 }]"#,
    ));
    let writes = world.reconcile();
    // Undrained and added: a quarter of their weights.
    assert_eq!(weights(&writes.ops), [(0, 25), (4, 50)]);
    world.apply();
    world.now += Duration::from_secs(2);
    assert_eq!(weights(&world.apply()), [(0, 75), (4, 150)]);
    world.now += Duration::from_secs(1);
    assert_eq!(weights(&world.apply()), [(0, 100), (4, 200)]);
}
