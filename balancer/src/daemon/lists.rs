//! The allow, deny and exempt lists as `access-list` and the metrics
//! report them: one row per scope (global, or a VIP) and list, with its
//! prefixes and the packets it dropped (an exempt list drops none). Pure: the configuration, the plan and the
//! counters in, rows out.

use balancer_common::access::{ACCESS_NO_VIP, AccessCounters};
use serde::Serialize;

use crate::{
    config::{Config, List, Prefix},
    plan::Plan,
};

/// One list of one scope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(super) struct ListRow {
    /// "global", or the VIP's name.
    pub(super) scope: String,
    pub(super) list: List,
    /// Its prefixes, space-separated.
    pub(super) prefixes: String,
    /// Packets it dropped: for the global deny list what it denied to any
    /// VIP; for a VIP's deny list what it denied; for an allow list the
    /// packets no allow prefix listed, counted on the VIP's own allow list
    /// where it has one and on the global one otherwise; for an exempt
    /// list, 0.
    pub(super) dropped_packets: u64,
}

impl ListRow {
    fn new(
        scope: &str,
        list: List,
        prefixes: impl Iterator<Item = Prefix>,
        dropped: u64,
    ) -> ListRow {
        ListRow {
            scope: scope.to_owned(),
            list,
            prefixes: prefixes
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(" "),
            dropped_packets: dropped,
        }
    }
}

/// Every list: the global three first, then each VIP's three in plan
/// order.
/// `counters` are `access_stats` by slot (VIP index, then the no-VIP
/// slot).
pub(super) fn rows(config: &Config, plan: &Plan, counters: &[AccessCounters]) -> Vec<ListRow> {
    let slot = |index: u32| counters.get(index as usize).copied().unwrap_or_default();
    let mut global_denied = slot(ACCESS_NO_VIP).global_deny.packets;
    let mut global_not_allowed = slot(ACCESS_NO_VIP).not_allowed.packets;
    let mut vips = Vec::new();
    for (vip, vip_config) in plan.vips.iter().zip(&config.vips) {
        let vip_config = vip_config.get_ref();
        let c = slot(vip.slot.info.index);
        global_denied += c.global_deny.packets;
        let own_allow = !vip_config.allow.is_empty();
        let (own_not_allowed, global_share) = if own_allow {
            (c.not_allowed.packets, 0)
        } else {
            (0, c.not_allowed.packets)
        };
        global_not_allowed += global_share;
        vips.push(ListRow::new(
            &vip.name,
            List::Deny,
            vip_config.list(List::Deny),
            c.vip_deny.packets,
        ));
        vips.push(ListRow::new(
            &vip.name,
            List::Allow,
            vip_config.list(List::Allow),
            own_not_allowed,
        ));
        vips.push(ListRow::new(
            &vip.name,
            List::Exempt,
            vip_config.list(List::Exempt),
            0,
        ));
    }
    let global = [
        ListRow::new(
            "global",
            List::Deny,
            config.access.list(List::Deny),
            global_denied,
        ),
        ListRow::new(
            "global",
            List::Allow,
            config.access.list(List::Allow),
            global_not_allowed,
        ),
        ListRow::new("global", List::Exempt, config.access.list(List::Exempt), 0),
    ];
    global.into_iter().chain(vips).collect()
}

#[cfg(test)]
mod tests {
    use balancer_common::stats::PacketCount;

    use super::*;
    use crate::{config::parse, plan::plan};

    const CONFIG: &str = r#"
[access]
deny = ["203.0.113.0/24"]

[[vip]]
name = "web"
address = "192.0.2.10"
port = 80
protocol = "tcp"
allow = ["198.51.100.0/24", "192.0.2.0/24"]
exempt = ["192.0.2.0/24"]
limits = { new_flows = 5 }

[[vip]]
name = "dns"
address = "192.0.2.10"
port = 53
protocol = "udp"
"#;

    fn packets(n: u64) -> PacketCount {
        PacketCount {
            packets: n,
            bytes: 64 * n,
        }
    }

    #[test]
    fn each_list_counts_what_it_dropped() {
        let config = parse(CONFIG, "t").unwrap();
        let plan = plan(&config);
        let mut counters = vec![AccessCounters::default(); ACCESS_NO_VIP as usize + 1];
        counters[0] = AccessCounters {
            global_deny: packets(2),
            vip_deny: packets(0),
            not_allowed: packets(5),
        };
        counters[1] = AccessCounters {
            global_deny: packets(3),
            vip_deny: packets(0),
            not_allowed: packets(7),
        };
        counters[ACCESS_NO_VIP as usize].global_deny = packets(1);
        let got: Vec<(String, List, String, u64)> = rows(&config, &plan, &counters)
            .into_iter()
            .map(|r| (r.scope, r.list, r.prefixes, r.dropped_packets))
            .collect();
        let row =
            |scope: &str, list, prefixes: &str, n| (scope.to_owned(), list, prefixes.to_owned(), n);
        assert_eq!(
            got,
            [
                row("global", List::Deny, "203.0.113.0/24", 6),
                // dns has no allow list of its own: its refusals are the
                // global list's (none here, so a stray count shows).
                row("global", List::Allow, "", 7),
                row("global", List::Exempt, "", 0),
                row("web", List::Deny, "", 0),
                row("web", List::Allow, "198.51.100.0/24 192.0.2.0/24", 5),
                row("web", List::Exempt, "192.0.2.0/24", 0),
                row("dns", List::Deny, "", 0),
                row("dns", List::Allow, "", 0),
                row("dns", List::Exempt, "", 0),
            ]
        );
    }
}
