//! Allow and deny lists in the XDP program, through BPF_PROG_TEST_RUN: the
//! `access` trie written as the daemon's plan lays it out
//! (`plan::scope_entries`), the global lists turned on by the settings and
//! a VIP's own by its address's flag, and every verdict with its counter.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Result, ensure};
use balancer::{config::Prefix, datapath::action::PASS, plan::scope_entries};
use balancer_common::{
    access::{ACCESS_NO_VIP, AccessCounters, SCOPE_GLOBAL},
    settings::{SETTINGS_GLOBAL_ACCESS, Settings},
    stats::Stat,
};
use balancer_tests::{
    case::{Case, Counter, Out, run},
    fixture::{
        Fixture, default_settings,
        standard::{self, CLIENT4, CLIENT6, SEED, VIP4, VIP6},
    },
    packet::Packet,
    privilege,
};

/// A client the lists never name.
const OTHER4: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 9));
const OTHER6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xd, 0, 0, 0, 0, 9));

/// The generation of the fixture's lists.
const GENERATION: u32 = 7;

/// The lists of one scope, as text.
struct Lists<'a> {
    deny: &'a [&'a str],
    allow: &'a [&'a str],
}

const NONE: Lists = Lists {
    deny: &[],
    allow: &[],
};

/// The standard fixture with the global lists `global` and VIP 0's (IPv4
/// TCP port 80) and VIP 2's (IPv6 TCP port 80) own lists.
fn fixture(global: &Lists, vip0: &Lists, vip2: &Lists) -> Result<Fixture> {
    let on = !global.deny.is_empty() || !global.allow.is_empty();
    let mut f = Fixture::with_settings(
        Settings {
            flags: if on { SETTINGS_GLOBAL_ACCESS } else { 0 },
            ..default_settings(SEED)
        }
        .with_access_generation(GENERATION),
    )?;
    for index in 0..4 {
        let mut vip = standard::vip(index);
        let own = match index {
            0 => vip0,
            2 => vip2,
            _ => &NONE,
        };
        vip.access = !own.deny.is_empty() || !own.allow.is_empty();
        f.put_vip(vip)?;
    }
    let prefixes =
        |texts: &[&str]| -> Vec<Prefix> { texts.iter().map(|t| t.parse().unwrap()).collect() };
    let mut entries = Vec::new();
    for (scope, lists) in [(SCOPE_GLOBAL, global), (0, vip0), (2, vip2)] {
        let deny = prefixes(lists.deny);
        let allow = prefixes(lists.allow);
        entries.extend(scope_entries(scope, deny.into_iter(), allow.into_iter()));
    }
    f.datapath.set_access(&entries)?;
    Ok(f)
}

fn syn(src: IpAddr, dst: IpAddr) -> Packet {
    Packet::tcp(src, 40000, dst, 80)
}

/// The lists' counters of VIP `slot`.
fn counters(f: &Fixture, slot: u32) -> Result<AccessCounters> {
    Ok(f.datapath.access_counters()?[slot as usize])
}

#[test]
fn without_lists_every_client_is_admitted_and_nothing_counted() {
    privilege::run("datapath_access_none", || {
        let mut f = fixture(&NONE, &NONE, &NONE)?;
        run(
            &mut f,
            &[
                Case::forwarded("v4", &syn(CLIENT4, VIP4), 0),
                Case::forwarded("v6", &syn(CLIENT6, VIP6), 2),
            ],
        )?;
        ensure!(counters(&f, 0)? == AccessCounters::default());
        Ok(())
    });
}

#[test]
fn the_global_deny_list_drops_new_and_established_flows_to_every_vip() {
    privilege::run("datapath_access_global_deny", || {
        let global = Lists {
            deny: &["192.0.2.0/24", "2001:db8:c::/48"],
            allow: &[],
        };
        let mut f = fixture(&global, &NONE, &NONE)?;
        // An established flow of the client, before the list applies to it.
        let ack = syn(CLIENT4, VIP4).established();
        let udp = Packet::udp(CLIENT4, 5353, VIP4, 53);
        // A port of no VIP on the VIP's address: the global list still
        // applies.
        let other_port = Packet::tcp(CLIENT4, 40000, VIP4, 2222);
        run(
            &mut f,
            &[
                Case::dropped("syn", &syn(CLIENT4, VIP4), Stat::DROP_DENIED),
                Case::dropped("established", &ack, Stat::DROP_DENIED),
                Case::dropped("udp", &udp, Stat::DROP_DENIED),
                Case::dropped("v6", &syn(CLIENT6, VIP6), Stat::DROP_DENIED),
                Case::dropped("no vip's port", &other_port, Stat::DROP_DENIED),
                Case::forwarded("another client", &syn(OTHER4, VIP4), 0),
                Case::forwarded("another v6 client", &syn(OTHER6, VIP6), 2),
            ],
        )?;
        // No VIP has lists of its own: the VIP is not looked up, and every
        // drop counts for the host.
        ensure!(counters(&f, ACCESS_NO_VIP)?.global_deny.packets == 5);
        ensure!(counters(&f, 0)? == AccessCounters::default());
        Ok(())
    });
}

#[test]
fn a_vips_own_deny_list_drops_only_its_traffic() {
    privilege::run("datapath_access_vip_deny", || {
        let vip0 = Lists {
            deny: &["192.0.2.7/32"],
            allow: &[],
        };
        let mut f = fixture(&NONE, &vip0, &NONE)?;
        run(
            &mut f,
            &[
                Case::dropped("its client", &syn(CLIENT4, VIP4), Stat::DROP_DENIED),
                // The same client to the UDP VIP of the same address.
                Case::forwarded("another vip", &Packet::udp(CLIENT4, 5353, VIP4, 53), 1),
                Case::forwarded("another client", &syn(OTHER4, VIP4), 0),
            ],
        )?;
        ensure!(counters(&f, 0)?.vip_deny.packets == 1);
        ensure!(counters(&f, 0)?.global_deny.packets == 0);
        Ok(())
    });
}

#[test]
fn an_allow_list_admits_only_what_it_lists_and_allow_lists_add_up() {
    privilege::run("datapath_access_allow", || {
        let global = Lists {
            deny: &[],
            allow: &["10.9.0.0/16"],
        };
        let vip0 = Lists {
            deny: &[],
            allow: &["192.0.2.0/24"],
        };
        let mut f = fixture(&global, &vip0, &NONE)?;
        let listed_globally = IpAddr::V4(Ipv4Addr::new(10, 9, 1, 1));
        run(
            &mut f,
            &[
                Case::forwarded("its own allow", &syn(CLIENT4, VIP4), 0),
                Case::forwarded("the global allow", &syn(listed_globally, VIP4), 0),
                Case::dropped("neither", &syn(OTHER4, VIP4), Stat::DROP_NOT_ALLOWED),
                // VIP 2 has only the global list: IPv6 clients are not on
                // it.
                Case::dropped("v6", &syn(CLIENT6, VIP6), Stat::DROP_NOT_ALLOWED),
            ],
        )?;
        // VIP 0 has lists of its own, VIP 2 only the global ones.
        ensure!(counters(&f, 0)?.not_allowed.packets == 1);
        ensure!(counters(&f, ACCESS_NO_VIP)?.not_allowed.packets == 1);
        Ok(())
    });
}

#[test]
fn a_deny_wins_over_any_allow() {
    privilege::run("datapath_access_deny_wins", || {
        // Across scopes: the global deny over the VIP's more specific
        // allow. Within a scope: the plan leaves the covered allow out.
        let global = Lists {
            deny: &["192.0.2.0/24"],
            allow: &[],
        };
        let vip0 = Lists {
            deny: &[],
            allow: &["192.0.2.7/32", "198.51.100.0/24"],
        };
        let vip2 = Lists {
            deny: &["2001:db8:c::/48"],
            allow: &["2001:db8:c::7/128", "2001:db8:d::/48"],
        };
        let mut f = fixture(&global, &vip0, &vip2)?;
        run(
            &mut f,
            &[
                Case::dropped("global deny", &syn(CLIENT4, VIP4), Stat::DROP_DENIED),
                Case::forwarded("allowed", &syn(OTHER4, VIP4), 0),
                Case::dropped("own deny", &syn(CLIENT6, VIP6), Stat::DROP_DENIED),
                Case::forwarded("allowed v6", &syn(OTHER6, VIP6), 2),
            ],
        )?;
        ensure!(counters(&f, 2)?.vip_deny.packets == 1);
        Ok(())
    });
}

#[test]
fn traffic_to_no_vip_address_never_meets_the_lists() {
    privilege::run("datapath_access_other_address", || {
        let global = Lists {
            deny: &["0.0.0.0/0", "::/0"],
            allow: &[],
        };
        let mut f = fixture(&global, &NONE, &NONE)?;
        let elsewhere = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1));
        let pass = Case::new(
            "not a vip",
            syn(CLIENT4, elsewhere).build(),
            PASS,
            Out::Same,
            &[(Counter::Stat(Stat::PASS_NOT_VIP), 1)],
        );
        run(&mut f, &[pass])?;
        Ok(())
    });
}

#[test]
fn a_flow_admitted_under_the_lists_in_force_skips_them_until_they_change() {
    privilege::run("datapath_access_generation", || {
        let global = Lists {
            deny: &["203.0.113.0/24"],
            allow: &[],
        };
        let mut f = fixture(&global, &NONE, &NONE)?;
        let first = syn(CLIENT4, VIP4);
        let ack = first.clone().established();
        run(
            &mut f,
            &[
                Case::forwarded("syn", &first, 0),
                Case::forwarded("ack: the entry, admitted", &ack, 0),
            ],
        )?;
        // The client is denied, but the lists keep their generation: its
        // established flow is not checked again, a new flow is.
        let deny = scope_entries(
            SCOPE_GLOBAL,
            std::iter::once("192.0.2.0/24".parse::<Prefix>().unwrap()),
            std::iter::empty(),
        );
        f.datapath
            .set_access(&deny.into_iter().collect::<Vec<_>>())?;
        let other_port = Packet::tcp(CLIENT4, 40001, VIP4, 80);
        run(
            &mut f,
            &[
                Case::forwarded("established, same generation", &ack, 0),
                Case::dropped("new flow", &other_port, Stat::DROP_DENIED),
            ],
        )?;
        // The lists' new generation checks every flow again.
        let settings = f.settings.with_access_generation(GENERATION + 1);
        f.datapath.set_settings(&settings)?;
        run(
            &mut f,
            &[Case::dropped(
                "established, new generation",
                &ack,
                Stat::DROP_DENIED,
            )],
        )?;
        Ok(())
    });
}
