use netlink_packet_route::route::RouteNextHop;

use super::*;

const OWN2: [u8; 6] = [2, 0, 0, 0, 2, 0];
const OWN3: [u8; 6] = [2, 0, 0, 0, 3, 0];
const GW: [u8; 6] = [2, 0, 0, 0, 0, 1];
const GW6: [u8; 6] = [2, 0, 0, 0, 0, 0x61];
const HOST: [u8; 6] = [2, 0, 0, 0, 0, 5];
const HOST6: [u8; 6] = [2, 0, 0, 0, 0, 0x65];

fn links() -> BTreeMap<u32, [u8; 6]> {
    BTreeMap::from([(2, OWN2), (3, OWN3)])
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn prefix(text: &str) -> (IpAddr, u8) {
    let (address, len) = text.split_once('/').unwrap();
    (ip(address), len.parse().unwrap())
}

/// A unicast route of the main table, metric 0.
fn route(to: &str, gateway: Option<&str>, ifindex: u32) -> KernelRoute {
    let (destination, prefix_len) = prefix(to);
    KernelRoute {
        table: MAIN_TABLE,
        kind: RouteType::Unicast,
        destination,
        prefix_len,
        ifindex,
        gateway: gateway.map(ip),
        metric: 0,
    }
}

fn via(to: &str, gateway: &str, ifindex: u32) -> KernelRoute {
    route(to, Some(gateway), ifindex)
}

fn on_link(to: &str, ifindex: u32) -> KernelRoute {
    route(to, None, ifindex)
}

fn neighbour(ifindex: u32, address: &str, mac: [u8; 6]) -> (u32, IpAddr, [u8; 6]) {
    (ifindex, ip(address), mac)
}

/// An entry: prefix, next hop's MAC, interface.
fn entry(to: &str, mac: [u8; 6], ifindex: u32) -> (RouteKey, Hop) {
    let (address, len) = prefix(to);
    (key(address, len), hop(mac, links()[&ifindex], ifindex))
}

/// A route dump's message of `family` to `to` (None: a default route,
/// which the kernel dumps without RTA_DST) with `attributes`.
fn message(
    family: AddressFamily,
    to: Option<&str>,
    attributes: Vec<RouteAttribute>,
) -> RouteMessage {
    let mut message = RouteMessage::default();
    message.header.address_family = family;
    message.header.table = MAIN_TABLE as u8;
    message.header.kind = RouteType::Unicast;
    if let Some((address, len)) = to.map(prefix) {
        message.header.destination_prefix_length = len;
        message
            .attributes
            .push(RouteAttribute::Destination(address.into()));
    }
    message.attributes.extend(attributes);
    message
}

fn next_hop(ifindex: u32, gateway: &str, dead: bool) -> RouteNextHop {
    let mut hop = RouteNextHop::default();
    hop.interface_index = ifindex;
    hop.attributes = vec![RouteAttribute::Gateway(ip(gateway).into())];
    if dead {
        hop.flags = RouteNextHopFlags::Dead;
    }
    hop
}

/// 10.9.0.0/16 over two next hops, the first one `first_dead`.
fn multipath(first_dead: bool) -> KernelRoute {
    let hops = vec![
        next_hop(3, "10.3.0.1", first_dead),
        next_hop(2, "10.0.0.1", false),
    ];
    let message = message(
        AddressFamily::Inet,
        Some("10.9.0.0/16"),
        vec![RouteAttribute::MultiPath(hops)],
    );
    KernelRoute::from_message(&message).unwrap()
}

struct Case {
    name: &'static str,
    routes: Vec<KernelRoute>,
    neighbours: Vec<(u32, IpAddr, [u8; 6])>,
    served: &'static [u32],
    entries: Vec<(RouteKey, Hop)>,
    unresolved: Vec<(u32, &'static str)>,
}

#[test]
fn routes_and_neighbours_make_the_entries() {
    let with = |kind, table| KernelRoute {
        kind,
        table,
        ..via("10.8.0.0/16", "10.0.0.1", 2)
    };
    let cases = [
        Case {
            name: "a gateway route: its prefix toward the gateway's MAC",
            routes: vec![via("10.1.0.0/16", "10.0.0.1", 2)],
            neighbours: vec![neighbour(2, "10.0.0.1", GW)],
            served: &[2],
            entries: vec![entry("10.1.0.0/16", GW, 2)],
            unresolved: vec![],
        },
        Case {
            name: "default routes of both families, IPv6 through a link-local gateway",
            routes: vec![via("0.0.0.0/0", "10.0.0.1", 2), via("::/0", "fe80::1", 2)],
            neighbours: vec![neighbour(2, "10.0.0.1", GW), neighbour(2, "fe80::1", GW6)],
            served: &[2],
            entries: vec![entry("0.0.0.0/0", GW, 2), entry("::/0", GW6, 2)],
            unresolved: vec![],
        },
        Case {
            name: "connected routes: a host entry per neighbour, none for the prefix",
            routes: vec![on_link("10.0.0.0/24", 2), on_link("fd00::/64", 2)],
            neighbours: vec![
                neighbour(2, "10.0.0.5", HOST),
                neighbour(2, "fd00::5", HOST6),
            ],
            served: &[2],
            entries: vec![
                entry("10.0.0.5/32", HOST, 2),
                entry("fd00::5/128", HOST6, 2),
            ],
            unresolved: vec![],
        },
        Case {
            name: "neighbours outside the prefix, or on another interface",
            routes: vec![on_link("10.0.0.0/24", 2)],
            neighbours: vec![
                neighbour(2, "10.9.9.9", HOST),
                neighbour(3, "10.0.0.6", HOST),
                neighbour(2, "fd00::5", HOST6),
            ],
            served: &[2, 3],
            entries: vec![],
            unresolved: vec![],
        },
        Case {
            name: "a more specific gateway route inside a connected prefix owns its hosts",
            routes: vec![
                on_link("10.0.0.0/24", 2),
                via("10.0.0.128/25", "10.0.0.1", 2),
            ],
            neighbours: vec![
                neighbour(2, "10.0.0.1", GW),
                neighbour(2, "10.0.0.200", HOST),
            ],
            served: &[2],
            entries: vec![entry("10.0.0.128/25", GW, 2), entry("10.0.0.1/32", GW, 2)],
            unresolved: vec![],
        },
        Case {
            name: "routes on an unserved interface",
            routes: vec![via("10.2.0.0/16", "10.3.0.1", 3), on_link("10.3.0.0/24", 3)],
            neighbours: vec![neighbour(3, "10.3.0.1", GW), neighbour(3, "10.3.0.7", HOST)],
            served: &[2],
            entries: vec![],
            unresolved: vec![],
        },
        Case {
            name: "a served interface without a MAC",
            routes: vec![via("10.2.0.0/16", "10.4.0.1", 4)],
            neighbours: vec![neighbour(4, "10.4.0.1", GW)],
            served: &[2, 4],
            entries: vec![],
            unresolved: vec![],
        },
        Case {
            name: "unknown gateway MACs: no entry, each gateway reported once",
            routes: vec![
                via("10.1.0.0/16", "10.0.0.1", 2),
                via("10.4.0.0/16", "10.0.0.1", 2),
                via("fd01::/64", "fd00::1", 2),
                via("10.5.0.0/16", "10.0.0.3", 2),
            ],
            neighbours: vec![neighbour(2, "10.0.0.3", GW), neighbour(3, "10.0.0.1", GW)],
            served: &[2],
            entries: vec![entry("10.5.0.0/16", GW, 2)],
            unresolved: vec![(2, "10.0.0.1"), (2, "fd00::1")],
        },
        Case {
            name: "routes not unicast, or not in the main table",
            routes: vec![
                with(RouteType::Unreachable, MAIN_TABLE),
                with(RouteType::BlackHole, MAIN_TABLE),
                with(RouteType::Prohibit, MAIN_TABLE),
                with(RouteType::Local, MAIN_TABLE),
                with(RouteType::Broadcast, MAIN_TABLE),
                with(RouteType::Multicast, MAIN_TABLE),
                with(RouteType::Unicast, 255),
                with(RouteType::Unicast, 100),
            ],
            neighbours: vec![neighbour(2, "10.0.0.1", GW)],
            served: &[2],
            entries: vec![],
            unresolved: vec![],
        },
        Case {
            name: "IPv6 link-local, multicast and IPv4-mapped prefixes",
            routes: vec![
                on_link("fe80::/64", 2),
                on_link("ff00::/8", 2),
                via("::ffff:10.0.0.0/104", "fe80::1", 2),
            ],
            neighbours: vec![
                neighbour(2, "fe80::9", HOST6),
                neighbour(2, "ff02::1", HOST6),
                neighbour(2, "fe80::1", GW6),
            ],
            served: &[2],
            entries: vec![],
            unresolved: vec![],
        },
        Case {
            name: "multipath: the first next hop",
            routes: vec![multipath(false)],
            neighbours: vec![neighbour(3, "10.3.0.1", GW), neighbour(2, "10.0.0.1", HOST)],
            served: &[2, 3],
            entries: vec![entry("10.9.0.0/16", GW, 3)],
            unresolved: vec![],
        },
        Case {
            name: "multipath: the first live next hop",
            routes: vec![multipath(true)],
            neighbours: vec![neighbour(3, "10.3.0.1", GW), neighbour(2, "10.0.0.1", HOST)],
            served: &[2, 3],
            entries: vec![entry("10.9.0.0/16", HOST, 2)],
            unresolved: vec![],
        },
        Case {
            name: "of one prefix's routes the lowest metric wins",
            routes: vec![
                KernelRoute {
                    metric: 100,
                    ..via("0.0.0.0/0", "10.0.0.1", 2)
                },
                KernelRoute {
                    metric: 50,
                    ..via("0.0.0.0/0", "10.3.0.1", 3)
                },
                KernelRoute {
                    metric: 50,
                    ..via("0.0.0.0/0", "10.0.0.1", 2)
                },
            ],
            neighbours: vec![neighbour(2, "10.0.0.1", GW), neighbour(3, "10.3.0.1", GW)],
            served: &[2, 3],
            entries: vec![entry("0.0.0.0/0", GW, 3)],
            unresolved: vec![],
        },
    ];
    for case in cases {
        let served = case.served.iter().copied().collect();
        let got = routes(&case.routes, &case.neighbours, &links(), &served);
        let want = ClientRoutes {
            entries: case.entries.into_iter().collect(),
            unresolved: case
                .unresolved
                .iter()
                .map(|&(ifindex, gateway)| (ifindex, ip(gateway)))
                .collect(),
            left_out: 0,
        };
        assert_eq!(got, want, "{}", case.name);
    }
}

/// The datapath's lookup: the longest entry covering `client`.
fn lookup(entries: &BTreeMap<RouteKey, Hop>, client: &str) -> Option<Hop> {
    let bits = u128::from_be_bytes(balancer_common::addr_octets(&crate::plan::addr(ip(client))));
    (0..=128)
        .rev()
        .find_map(|len| entries.get(&wide_key(bits, len)).copied())
}

#[test]
fn a_default_route_takes_only_clients_of_its_family() {
    let v4 = via("0.0.0.0/0", "10.0.0.1", 2);
    let v6 = via("::/0", "fd00::1", 2);
    let neighbours = [neighbour(2, "10.0.0.1", GW), neighbour(2, "fd00::1", GW6)];
    let served = BTreeSet::from([2]);
    let of = |routes: &[KernelRoute]| routes_within(routes, &neighbours, &links(), &served, 200);
    let to_gw = Some(hop(GW, OWN2, 2));
    let to_gw6 = Some(hop(GW6, OWN2, 2));

    // The IPv4 default is ::ffff:0.0.0.0/96, the IPv6 one ::/0.
    let both = of(&[v4, v6]).entries;
    assert_eq!(
        both.keys().copied().collect::<Vec<_>>(),
        [
            RouteKey::prefix([0; 4], 0, false),
            RouteKey::prefix(crate::plan::addr(ip("::ffff:0.0.0.0")), 0, true),
        ]
    );
    for (client, want) in [
        ("192.0.2.1", to_gw),
        ("0.0.0.0", to_gw),
        ("255.255.255.255", to_gw),
        ("2001:db8::1", to_gw6),
        ("::", to_gw6),
        ("::fffe:ffff:ffff", to_gw6),
        ("::1:0:0:0", to_gw6),
    ] {
        assert_eq!(lookup(&both, client), want, "{client} with both defaults");
    }

    let only_v4 = of(&[v4]).entries;
    assert_eq!(lookup(&only_v4, "192.0.2.1"), to_gw);
    assert_eq!(lookup(&only_v4, "2001:db8::1"), None);
    assert_eq!(lookup(&only_v4, "::"), None);

    // Without an IPv4 default, ::/0 becomes the 96 prefixes beside
    // ::ffff:0:0/96: IPv4 clients no IPv4 route covers match nothing.
    let v4_net = via("10.0.0.0/8", "10.0.0.1", 2);
    let only_v6 = of(&[v6, v4_net]).entries;
    assert_eq!(only_v6.len(), 96 + 1);
    assert!(!only_v6.contains_key(&wide_key(0, 0)));
    for (client, want) in [
        ("192.0.2.1", None),
        ("0.0.0.0", None),
        ("10.1.2.3", to_gw),
        ("2001:db8::1", to_gw6),
        ("::", to_gw6),
        ("ffff:ffff::", to_gw6),
        ("::fffe:ffff:ffff", to_gw6),
        ("::1:0:0:0", to_gw6),
        ("::1:ffff:0:0", to_gw6),
    ] {
        assert_eq!(
            lookup(&only_v6, client),
            want,
            "{client} with an IPv6 default only"
        );
    }
}

#[test]
fn nested_ipv6_prefixes_over_the_mapped_range_keep_their_own_clients() {
    let routes = [
        via("::/0", "fd00::1", 2),
        via("::/64", "fd00::2", 2),
        via("::1:0:0:0/80", "fd00::3", 2),
    ];
    let neighbours = [
        neighbour(2, "fd00::1", GW),
        neighbour(2, "fd00::2", GW6),
        neighbour(2, "fd00::3", HOST),
    ];
    let got = routes_within(&routes, &neighbours, &links(), &BTreeSet::from([2]), 500);
    for (client, want) in [
        ("2001:db8::1", GW),
        ("::1:0:0:0:0", GW),
        ("::1", GW6),
        ("::fffe:0:0", GW6),
        ("::1:0:0:5", HOST),
    ] {
        assert_eq!(
            lookup(&got.entries, client),
            Some(hop(want, OWN2, 2)),
            "{client}"
        );
    }
    assert_eq!(lookup(&got.entries, "::ffff:10.0.0.1"), None);
    // Pieces of ::/0 at lengths 1-64, of ::/64 at 65-96; ::1:0:0:0/80
    // is the latter's piece at 80, and keeps its own hop.
    assert_eq!(got.entries.len(), 96);
    assert_eq!(
        got.entries.get(&key(ip("::1:0:0:0"), 80)),
        Some(&hop(HOST, OWN2, 2))
    );
}

#[test]
fn past_the_cap_the_most_specific_entries_are_left_out() {
    let routes = [
        via("0.0.0.0/0", "10.0.0.1", 2),
        via("10.1.0.0/16", "10.0.0.1", 2),
        on_link("10.0.0.0/24", 2),
    ];
    let neighbours = [neighbour(2, "10.0.0.1", GW), neighbour(2, "10.0.0.5", HOST)];
    let served = BTreeSet::from([2]);
    let got = routes_within(&routes, &neighbours, &links(), &served, 2);
    assert_eq!(
        got.entries,
        BTreeMap::from([entry("0.0.0.0/0", GW, 2), entry("10.1.0.0/16", GW, 2)])
    );
    assert_eq!(got.left_out, 2);
    let all = routes_within(&routes, &neighbours, &links(), &served, 4);
    assert_eq!((all.entries.len(), all.left_out), (4, 0));
}

#[test]
fn a_dumped_route_reads_as_the_kernel_means_it() {
    use AddressFamily::{Inet, Inet6};
    let gateway4 = RouteAttribute::Gateway(ip("10.0.0.1").into());
    // A default route has no RTA_DST; IPv6 ones carry a metric.
    let default4 = message(Inet, None, vec![gateway4.clone(), RouteAttribute::Oif(2)]);
    assert_eq!(
        KernelRoute::from_message(&default4),
        Some(via("0.0.0.0/0", "10.0.0.1", 2))
    );
    let default6 = message(
        Inet6,
        None,
        vec![
            RouteAttribute::Gateway(ip("fe80::1").into()),
            RouteAttribute::Oif(2),
            RouteAttribute::Priority(1024),
        ],
    );
    assert_eq!(
        KernelRoute::from_message(&default6),
        Some(KernelRoute {
            metric: 1024,
            ..via("::/0", "fe80::1", 2)
        })
    );
    // A connected route: no gateway.
    let connected = message(Inet, Some("10.0.0.0/24"), vec![RouteAttribute::Oif(2)]);
    assert_eq!(
        KernelRoute::from_message(&connected),
        Some(on_link("10.0.0.0/24", 2))
    );
    // IPv4 through an IPv6 gateway (RTA_VIA).
    let through_v6 = message(
        Inet,
        Some("10.1.0.0/16"),
        vec![
            RouteAttribute::Via(RouteVia::Inet6("fe80::1".parse().unwrap())),
            RouteAttribute::Oif(2),
        ],
    );
    assert_eq!(
        KernelRoute::from_message(&through_v6),
        Some(via("10.1.0.0/16", "fe80::1", 2))
    );
    // A table above 255 is only in RTA_TABLE.
    let mut high = message(Inet, None, vec![gateway4.clone(), RouteAttribute::Oif(2)]);
    high.header.table = 252;
    high.attributes.push(RouteAttribute::Table(1000));
    assert_eq!(KernelRoute::from_message(&high).unwrap().table, 1000);
    // A dead route, one with no live next hop, and one with no output
    // interface (a nexthop object) are no routes.
    let mut dead = default4.clone();
    dead.header.flags = RouteFlags::Dead;
    assert_eq!(KernelRoute::from_message(&dead), None);
    let all_dead = message(
        Inet,
        Some("10.9.0.0/16"),
        vec![RouteAttribute::MultiPath(vec![next_hop(
            2, "10.0.0.1", true,
        )])],
    );
    assert_eq!(KernelRoute::from_message(&all_dead), None);
    let no_oif = message(Inet, None, vec![RouteAttribute::NhId(7)]);
    assert_eq!(KernelRoute::from_message(&no_oif), None);
    // Multipath: the first live next hop's interface and gateway.
    assert_eq!(multipath(false), via("10.9.0.0/16", "10.3.0.1", 3));
    assert_eq!(multipath(true), via("10.9.0.0/16", "10.0.0.1", 2));
}

#[test]
fn a_key_names_its_prefix() {
    let key_address = |key: &RouteKey| -> IpAddr {
        Ipv6Addr::from(balancer_common::addr_octets(&key.addr)).to_canonical()
    };
    let key = key(ip("10.1.255.7"), 16);
    assert_eq!(key.prefix_len, 112);
    assert_eq!(key_address(&key), ip("10.1.0.0"));
    let key = super::key(ip("fd00::1:2:3"), 64);
    assert_eq!((key.prefix_len, key_address(&key)), (64, ip("fd00::")));
}
