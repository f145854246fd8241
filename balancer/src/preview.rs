//! What applying a configuration would change, without applying it: the
//! answer of `balancer check-config --diff FILE` and `balancer reload
//! --dry-run`. Pure: from the configuration in force and the one proposed
//! (their plans and their text), what a reload would do.
//!
//! Three views of one change, none repeating another:
//! - [`Change`]s: VIPs and backends added or removed, services, scheduling,
//!   forwarding, weights (what the daemon logs once it applies them);
//! - the rings rebuilt: VIPs whose ring would be built anew (new members,
//!   weights, scheduler or ring size), whose new flows partly move;
//! - every other key that differs, read from the two files' text: health
//!   checks, limits, lists, timeouts, the sections' settings.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::plan::{self, Plan, VipPlan};

/// What a reload of a configuration would do.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preview {
    /// Whether a reload would apply it (else `refused` says why); set
    /// with `refused` by [`Preview::refuse`] only.
    pub applies: bool,
    /// Why a reload would be refused.
    pub refused: Option<String>,
    /// Keys that only a restart can change: a reload is refused while any
    /// differs.
    pub needs_restart: Vec<String>,
    /// VIPs and backends added or removed, services, scheduling,
    /// forwarding and weights, one line each.
    pub changes: Vec<String>,
    /// VIPs whose ring would be built anew.
    pub rings_rebuilt: Vec<String>,
    /// Every other key that differs, one line each.
    pub settings: Vec<String>,
}

impl Preview {
    /// Says that a reload would be refused, because of `why`, unless it
    /// is refused already (the first reason stays).
    pub fn refuse(&mut self, why: String) {
        if self.applies {
            self.applies = false;
            self.refused = Some(why);
        }
    }

    /// Whether nothing would change.
    pub fn is_empty(&self) -> bool {
        self.needs_restart.is_empty()
            && self.changes.is_empty()
            && self.rings_rebuilt.is_empty()
            && self.settings.is_empty()
    }
}

/// The preview of moving from plan `old` (laid out from `old_text`) to
/// plan `new` (from `new_text`); `needs_restart` names the keys that
/// differ and only a restart can change.
pub fn preview(
    old: &Plan,
    old_text: &str,
    new: &Plan,
    new_text: &str,
    needs_restart: Vec<String>,
) -> Preview {
    let restart = (!needs_restart.is_empty()).then(|| {
        format!(
            "{} cannot change while the daemon runs (restart it)",
            needs_restart.join(", ")
        )
    });
    let mut preview = Preview {
        applies: true,
        refused: None,
        needs_restart,
        changes: plan::changes(old, new)
            .iter()
            .map(ToString::to_string)
            .collect(),
        rings_rebuilt: rings_rebuilt(old, new),
        settings: key_changes(old_text, new_text),
    };
    if let Some(why) = restart {
        preview.refuse(why);
    }
    preview
}

/// The VIPs of `new` whose ring differs from their ring in `old` (VIPs
/// matched by name): new ones, and those with other members or weights
/// (as configured: health comes on top), another scheduler or
/// persistence, or another ring size.
pub fn rings_rebuilt(old: &Plan, new: &Plan) -> Vec<String> {
    let recipe = |plan: &Plan, vip: &VipPlan| {
        (
            vip.scheduler
                .maglev_ring()
                .then_some(plan.settings.ring_size),
            vip.slot.info.flags,
            vip.members(|b| b.weight),
        )
    };
    new.vips
        .iter()
        .filter(|vip| {
            old.vips
                .iter()
                .find(|o| o.name == vip.name)
                .is_none_or(|o| recipe(old, o) != recipe(new, vip))
        })
        .map(|vip| vip.name.clone())
        .collect()
}

/// Keys of a VIP that [`plan::changes`] reports already.
const VIP_KEYS_IN_CHANGES: [&str; 8] = [
    "name",
    "address",
    "port",
    "protocol",
    "scheduler",
    "persistence_timeout",
    "persistence_ipv6_prefix",
    "forwarding",
];

/// Keys of a backend that [`plan::changes`] reports already.
const BACKEND_KEYS_IN_CHANGES: [&str; 3] = ["address", "weight", "drain"];

/// Every key whose value differs between the two texts (both valid
/// configurations), outside what [`plan::changes`] reports: "[datapath]
/// hash_seed: 1 → 2", "VIP web: health_check.interval: "2s" → "1s"",
/// "[access] deny: set to [...]". A text that does not parse counts as
/// empty.
pub fn key_changes(old_text: &str, new_text: &str) -> Vec<String> {
    let (old, new) = (flatten(old_text), flatten(new_text));
    let mut out = Vec::new();
    for (key, before) in &old {
        match new.get(key) {
            None => out.push(format!("{key}: removed (was {before})")),
            Some(after) if after != before => out.push(format!("{key}: {before} → {after}")),
            Some(_) => {}
        }
    }
    for (key, after) in &new {
        if !old.contains_key(key) {
            out.push(format!("{key}: set to {after}"));
        }
    }
    out
}

/// A configuration's keys and values as text, keyed by where they are:
/// "[SECTION] KEY.SUBKEY" outside VIPs, "VIP NAME: KEY" within one
/// (without the keys [`plan::changes`] covers), "VIP NAME: backend
/// ADDRESS: KEY" within a backend.
fn flatten(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Ok(table) = text.parse::<toml::Table>() else {
        return out;
    };
    for (section, value) in &table {
        if section == "vip" {
            continue;
        }
        walk(&format!("[{section}]"), " ", value, &mut out);
    }
    let vips = table.get("vip").and_then(toml::Value::as_array);
    for vip in vips.into_iter().flatten().filter_map(toml::Value::as_table) {
        let name = vip.get("name").and_then(toml::Value::as_str).unwrap_or("?");
        for (key, value) in vip {
            if VIP_KEYS_IN_CHANGES.contains(&key.as_str()) {
                continue;
            }
            if key == "backend" {
                for backend in value.as_array().into_iter().flatten() {
                    let Some(backend) = backend.as_table() else {
                        continue;
                    };
                    let address = backend
                        .get("address")
                        .and_then(toml::Value::as_str)
                        .unwrap_or("?");
                    for (key, value) in backend {
                        if !BACKEND_KEYS_IN_CHANGES.contains(&key.as_str()) {
                            let at = format!("VIP {name}: backend {address}: {key}");
                            walk(&at, ".", value, &mut out);
                        }
                    }
                }
                continue;
            }
            walk(&format!("VIP {name}: {key}"), ".", value, &mut out);
        }
    }
    out
}

/// Puts `value` at `at`, a table's keys each at `at` + `join` + key (the
/// first level after a section with a space, deeper ones with dots).
fn walk(at: &str, join: &str, value: &toml::Value, out: &mut BTreeMap<String, String>) {
    match value {
        toml::Value::Table(table) => {
            for (key, value) in table {
                walk(&format!("{at}{join}{key}"), ".", value, out);
            }
        }
        other => {
            out.insert(at.to_owned(), other.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    const OLD: &str = r#"
[datapath]
interfaces = ["eth0"]
hash_seed = 1

[[vip]]
name = "web"
address = "192.0.2.10"
port = 80
protocol = "tcp"
health_check = { interval = "2s" }
backend = [{ address = "10.0.0.1" }, { address = "10.0.0.2" }]

[[vip]]
name = "dns"
address = "192.0.2.10"
port = 53
protocol = "udp"
backend = [{ address = "10.0.0.9" }]
"#;

    /// The plans of OLD and `new`, numbered as a daemon numbers a reload.
    fn plans(new: &str) -> (Plan, Plan) {
        let mut numbering = plan::Numbering::default();
        let mut plan_of =
            |text: &str| plan::plan_with(&parse(text, "t").unwrap(), &mut numbering, 1);
        (plan_of(OLD), plan_of(new))
    }

    fn preview_of(new: &str) -> Preview {
        let (old_plan, new_plan) = plans(new);
        preview(&old_plan, OLD, &new_plan, new, Vec::new())
    }

    #[test]
    fn the_same_file_changes_nothing() {
        let p = preview_of(OLD);
        assert!(p.is_empty() && p.applies, "{p:?}");
    }

    /// Edits of OLD (from, to), then the changes, rings rebuilt and other
    /// keys they show.
    type Case<'a> = (
        &'a [(&'a str, &'a str)],
        &'a [&'a str],
        &'a [&'a str],
        &'a [&'a str],
    );

    #[test]
    fn each_kind_of_edit_shows_where_it_belongs() {
        let cases: &[Case] = &[
            (
                &[(
                    r#"{ address = "10.0.0.2" }]"#,
                    r#"{ address = "10.0.0.2" }, { address = "10.0.0.3", weight = 50 }]"#,
                )],
                &["VIP web: backend 10.0.0.3 added (weight 50)"],
                &["web"],
                &[],
            ),
            (
                &[(r#"{ address = "10.0.0.1" }, "#, "")],
                &["VIP web: backend 10.0.0.1 removed (its flows fail over)"],
                &["web"],
                &[],
            ),
            (
                &[(
                    r#"{ address = "10.0.0.1" }"#,
                    r#"{ address = "10.0.0.1", weight = 200 }"#,
                )],
                &["VIP web: backend 10.0.0.1 weight 100 → 200"],
                &["web"],
                &[],
            ),
            (
                &[(
                    r#"{ address = "10.0.0.1" }"#,
                    r#"{ address = "10.0.0.1", drain = true }"#,
                )],
                &["VIP web: backend 10.0.0.1 weight 100 → 0"],
                &["web"],
                &[],
            ),
            (
                &[(
                    "port = 80\nprotocol = \"tcp\"",
                    "port = 80\nprotocol = \"tcp\"\nscheduler = \"round-robin\"",
                )],
                &["VIP web: scheduling maglev → round-robin"],
                &["web"],
                &[],
            ),
            (
                &[(
                    "port = 80\nprotocol = \"tcp\"",
                    "port = 80\nprotocol = \"tcp\"\nforwarding = \"ipip\"",
                )],
                &["VIP web: forwarding dsr → ipip"],
                &[],
                &[],
            ),
            (
                &[("port = 53", "port = 5353")],
                &["VIP dns: service 192.0.2.10:53/udp → 192.0.2.10:5353/udp"],
                &[],
                &[],
            ),
            (
                &[(r#"interval = "2s""#, r#"interval = "1s""#)],
                &[],
                &[],
                &[r#"VIP web: health_check.interval: "2s" → "1s""#],
            ),
            (
                &[("hash_seed = 1", "hash_seed = 2\nring_size = 1021")],
                &[],
                &["web", "dns"],
                &[
                    "[datapath] hash_seed: 1 → 2",
                    "[datapath] ring_size: set to 1021",
                ],
            ),
            (
                &[(
                    "port = 80\nprotocol = \"tcp\"",
                    "port = 80\nprotocol = \"tcp\"\nslow_start = \"30s\"\npanic_threshold = 50",
                )],
                &[],
                &[],
                &[
                    "VIP web: panic_threshold: set to 50",
                    r#"VIP web: slow_start: set to "30s""#,
                ],
            ),
            (
                &[(
                    "[[vip]]\nname = \"dns\"",
                    "[access]\ndeny = [\"203.0.113.0/24\"]\n\n[[vip]]\nname = \"dns\"",
                )],
                &[],
                &[],
                &[r#"[access] deny: set to ["203.0.113.0/24"]"#],
            ),
        ];
        for (edits, changes, rings, settings) in cases {
            let new = edits.iter().fold(OLD.to_owned(), |text, (from, to)| {
                assert!(text.contains(from), "{from}");
                text.replacen(from, to, 1)
            });
            let p = preview_of(&new);
            assert_eq!(p.changes, *changes, "{edits:?}");
            assert_eq!(p.rings_rebuilt, *rings, "{edits:?}");
            assert_eq!(p.settings, *settings, "{edits:?}");
            assert!(p.applies && p.needs_restart.is_empty());
        }
    }

    #[test]
    fn removed_and_added_vips_and_restart_keys() {
        let new = OLD.replace("name = \"dns\"", "name = \"resolver\"");
        let (old_plan, new_plan) = plans(&new);
        let p = preview(
            &old_plan,
            OLD,
            &new_plan,
            &new,
            vec!["[datapath] interfaces".into()],
        );
        assert_eq!(
            p.changes,
            [
                "VIP dns: removed",
                "VIP resolver: added",
                "VIP resolver: backend 10.0.0.9 added (weight 100)"
            ]
        );
        assert_eq!(p.rings_rebuilt, ["resolver"]);
        assert!(!p.applies);
        assert_eq!(
            p.refused.as_deref(),
            Some("[datapath] interfaces cannot change while the daemon runs (restart it)")
        );
    }
}
