//! The bounds of the numeric keys, the addresses a VIP or backend cannot
//! have, the ring warning and the memory of the maps: each rule with the
//! files it refuses and its bound itself accepted.

use super::*;

/// `V6`'s VIP without persistence, its address on line 3, with one backend
/// on line 6.
const V6_BACKEND: &str = r#"[[vip]]
name = "v6"
address = "2001:db8::1"
port = 443
protocol = "tcp"
backend = [{ address = "2001:db8::20" }]
"#;

/// `VALID` with `settings` in place of its health check's interval and
/// timeout (the check starts on line 12).
fn with_check(settings: &str) -> String {
    VALID.replace("interval = \"500ms\"\ntimeout = \"200ms\"", settings)
}

#[test]
fn health_check_timing_out_of_bounds_is_rejected_at_the_check() {
    let cases = [
        (
            "interval = \"1ns\"",
            "VIP \"web\": health check interval 1ns is out of range: 100ms to 1h",
        ),
        (
            "interval = \"99ms\"\ntimeout = \"10ms\"",
            "health check interval 99ms is out of range",
        ),
        (
            "interval = \"61m\"",
            "health check interval 1h 1m is out of range: 100ms to 1h",
        ),
        (
            "timeout = \"9ms\"",
            "VIP \"web\": health check timeout 9ms is below 10ms",
        ),
        (
            "rise = 4294967295",
            "VIP \"web\": health check rise 4294967295 is out of range: 1 to 100",
        ),
        ("rise = 0", "health check rise 0 is out of range: 1 to 100"),
        (
            "fall = 101",
            "health check fall 101 is out of range: 1 to 100",
        ),
        ("fall = 0", "health check fall 0 is out of range: 1 to 100"),
    ];
    for (settings, error) in cases {
        assert_rejected(&with_check(settings), 12, error);
    }
}

#[test]
fn datapath_sizes_out_of_bounds_are_rejected_at_their_key() {
    let cases = [
        (
            "ring_size = 2",
            "ring_size 2 must be a prime number from 1021 to 4194301",
        ),
        (
            "ring_size = 1019",
            "ring_size 1019 must be a prime number from 1021",
        ),
        (
            "flow_table_size = 4294967295",
            "flow_table_size 4294967295 is out of range: 1 to 67108864",
        ),
        (
            "flow_table_size = 67108865",
            "flow_table_size 67108865 is out of range",
        ),
        ("flow_table_size = 0", "flow_table_size 0 is out of range"),
        (
            "gue_port = 0",
            "gue_port must be a UDP port from 1 to 65535 (6080 is the default)",
        ),
    ];
    for (key, error) in cases {
        assert_rejected(&format!("[datapath]\n{key}\n"), 2, error);
    }
}

/// Addresses no VIP or backend can have, and why.
const UNUSABLE: [(&str, &str); 10] = [
    ("0.0.0.0", "is the unspecified address"),
    ("224.0.0.1", "is a multicast address"),
    ("239.255.255.250", "is a multicast address"),
    ("255.255.255.255", "is the broadcast address"),
    ("127.0.0.1", "is a loopback address"),
    ("127.1.2.3", "is a loopback address"),
    ("::", "is the unspecified address"),
    ("ff02::1", "is a multicast address"),
    ("::1", "is a loopback address"),
    ("::ffff:127.0.0.1", "is a loopback address"),
];

/// `VALID` (for an IPv4 `address`) or `V6_BACKEND` (IPv6) with `address`
/// in place of its VIP's address, or of its first backend's; with the line
/// of the address and the VIP's name.
fn with_address(address: &str, backend: bool) -> (String, usize, &'static str) {
    let (text, old, line, vip) = match (address.contains(':'), backend) {
        (false, false) => (VALID, "192.0.2.10", 8, "web"),
        (false, true) => (VALID, "10.0.0.1", 19, "web"),
        (true, false) => (V6_BACKEND, "2001:db8::1", 3, "v6"),
        (true, true) => (V6_BACKEND, "2001:db8::20", 6, "v6"),
    };
    (text.replace(old, address), line, vip)
}

#[test]
fn an_address_that_is_not_unicast_or_is_the_vips_is_rejected_at_the_address() {
    for (address, why) in UNUSABLE {
        let (text, line, vip) = with_address(address, false);
        assert_rejected(
            &text,
            line,
            &format!("VIP {vip:?}: address {address} {why}"),
        );
        let (text, line, vip) = with_address(address, true);
        let error = format!("backend address {address} of VIP {vip:?} {why}");
        assert_rejected(&text, line, &error);
    }
    for vip in ["192.0.2.10", "2001:db8::1"] {
        let (text, line, _) = with_address(vip, true);
        assert_rejected(
            &text,
            line,
            "is the VIP's own address: packets would come back",
        );
    }
}

#[test]
fn the_bounds_themselves_are_accepted() {
    let cases = [
        VALID
            .replace("\"500ms\"", "\"100ms\"")
            .replace("\"200ms\"", "\"10ms\""),
        VALID
            .replace("\"500ms\"", "\"1h\"")
            .replace("\"200ms\"", "\"1h\""),
        with_check("rise = 100\nfall = 1"),
        with_check("rise = 1\nfall = 100"),
        "[datapath]\nring_size = 1021\n".to_owned(),
        "[datapath]\nring_size = 4194301\n".to_owned(),
        "[datapath]\nflow_table_size = 67108864\n".to_owned(),
        "[datapath]\nflow_table_size = 1\n".to_owned(),
        V6_BACKEND.to_owned(),
    ];
    for text in &cases {
        assert_eq!(errors(text), [], "{text}");
    }
}

/// A file whose `ring_size` (line 2) is `ring` and whose one VIP (name on
/// line 5) has `backends` backends and `scheduler`.
fn ring_and_backends(ring: Option<u32>, backends: u32, scheduler: &str) -> String {
    let ring = ring.map_or_else(String::new, |r| format!("ring_size = {r}"));
    let list: Vec<String> = (0..backends)
        .map(|i| format!("{{ address = \"10.1.{}.{}\" }}", i / 250, i % 250 + 1))
        .collect();
    format!(
        "[datapath]\n{ring}\n\n[[vip]]\nname = \"big\"\naddress = \"192.0.2.1\"\nport = 80\nprotocol = \"tcp\"\nscheduler = \"{scheduler}\"\nbackend = [{}]\n",
        list.join(", ")
    )
}

#[test]
fn a_maglev_ring_smaller_than_its_vips_backends_is_rejected() {
    assert_rejected(
        &ring_and_backends(Some(1021), 1022, "source-hash"),
        5,
        "VIP \"big\" has 1022 backends, more than ring_size 1021",
    );
    assert_eq!(
        errors(&ring_and_backends(Some(1021), 1022, "least-connections")),
        []
    );
}

#[test]
fn a_ring_below_100_slots_per_backend_is_a_warning_at_ring_size_or_the_vip() {
    let warned = |text: &str| {
        let config = parse(text, "t").unwrap_or_else(|e| panic!("{e}"));
        warnings(&config, text)
            .into_iter()
            .map(|w| (w.line, w.message))
            .collect::<Vec<_>>()
    };
    let small = warned(&ring_and_backends(Some(1021), 11, "maglev"));
    assert_eq!(small.len(), 1, "{small:?}");
    assert_eq!(small[0].0, Some(2));
    assert!(
        small[0].1.starts_with(
            "ring_size 1021 is below 100 slots for each of the 11 backends of VIP \"big\" (1100)"
        ) && small[0]
            .1
            .ends_with("a ring_size of 1103 (a prime) would keep them"),
        "{small:?}"
    );
    let default_ring = warned(&ring_and_backends(None, 656, "maglev"));
    assert_eq!(default_ring.len(), 1, "{default_ring:?}");
    assert_eq!(default_ring[0].0, Some(5), "{default_ring:?}");
    assert!(
        default_ring[0].1.starts_with("ring_size 65537 is below"),
        "{default_ring:?}"
    );
    assert_eq!(warned(&ring_and_backends(None, 655, "maglev")), []);
    assert_eq!(
        warned(&ring_and_backends(Some(1021), 11, "round-robin")),
        []
    );
    assert_eq!(warned(VALID), []);
}

#[test]
fn the_memory_of_the_maps_follows_the_configuration() {
    let config = parse(VALID, "t").unwrap();
    let memory = MapMemory::of(&config);
    // The kernel's own figures for these sizes, in docs/benchmarks.md.
    assert_eq!(memory.flows, 30 << 20, "the default connection table");
    assert_eq!(memory.rings, 512 << 10, "one ring of 65,537 slots");
    assert_eq!(memory.persistence, 13 << 20);
    // 65,536 NAT connections: 9.5 MiB forward, 10 MiB reverse.
    assert_eq!(memory.nat, (39 << 20) / 2);
    // 7.5 MiB of handshakes, 3 of sources, 1.875 of fragments, and NAT's
    // open tables 4.75 and 5.
    assert_eq!(memory.fixed, (177 << 20) / 8);
    assert_eq!(
        memory.to_string(),
        "85.1 MiB (connection table 30.0 MiB, rings 0.5 MiB, persistence table 13.0 MiB, NAT tables 19.5 MiB, handshake, source, fragment and NAT open tables 22.1 MiB)"
    );
    let largest = parse("[datapath]\nflow_table_size = 67108864\n", "t").unwrap();
    assert_eq!(MapMemory::of(&largest).flows, 7_680 << 20, "7.5 GiB");
    let two = format!(
        "{VALID}\n[[vip]]\nname = \"rr\"\naddress = \"192.0.2.11\"\nport = 80\nprotocol = \"tcp\"\nscheduler = \"least-connections\"\nbackend = [{{ address = \"10.0.0.9\" }}]\n"
    );
    let config = parse(&two, "t").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        MapMemory::of(&config).rings,
        (512 << 10) + 8,
        "a list ring of one backend: its length and one id"
    );
}

#[test]
fn the_small_maps_grow_with_the_cpus() {
    // docs/benchmarks.md, 2 CPUs: backend_stats 0.88 MiB, backends 0.63,
    // tunnels 0.38, backend_load 0.25, the flows' ring buffer 1 MiB, and
    // a few small ones: about 3.5 MiB in all.
    let two = MapMemory::small_maps(2);
    assert!((3 << 20..4 << 20).contains(&two), "{two}");
    // Every per-CPU map adds its values once more per CPU: 16,384
    // backends' counters of 24 bytes alone.
    let sixty_four = MapMemory::small_maps(64);
    assert!(sixty_four - two > 62 * 16_384 * 24, "{two} → {sixty_four}");
}

#[test]
fn list_prefixes_twice_or_of_the_other_family_are_rejected_at_the_prefix() {
    // VALID's VIP "web" is IPv4.
    let with = |lines: &str| {
        VALID.replace(
            "[[vip]]\nname = \"web\"",
            &format!("[[vip]]\nname = \"web\"\n{lines}"),
        )
    };
    assert_rejected(
        &with("deny = [\"2001:db8::/32\"]"),
        8,
        "VIP \"web\": deny prefix 2001:db8::/32 is IPv6, and the VIP is IPv4: its clients never match it",
    );
    assert_rejected(
        &with("allow = [\"10.0.0.0/8\", \"10.0.0.0/8\"]"),
        8,
        "VIP \"web\": allow lists 10.0.0.0/8 twice",
    );
    let global = format!("[access]\ndeny = [\"10.0.0.1/8\"]\n{VALID}");
    let errs = errors(&global);
    assert!(
        errs.iter()
            .any(|(_, m)| m.contains("has bits set past its length: write 10.0.0.0/8")),
        "{errs:#?}"
    );
    assert!(errors(&with("deny = [\"10.0.0.0/8\"]\nallow = [\"192.0.2.0/24\"]")).is_empty());
}

#[test]
fn per_source_limits_out_of_bounds_are_rejected_at_their_key() {
    // VALID's VIP "web" is IPv4; `[vip.limits]` goes on line 12, its keys
    // from line 13.
    let with = |keys: &str| {
        VALID.replace(
            "[vip.health_check]",
            &format!("[vip.limits]\n{keys}\n\n[vip.health_check]"),
        )
    };
    let cases = [
        (
            "new_flows = 0",
            13,
            "limits.new_flows 0 must be between 1 and 1000000000 (leave it out for no limit)",
        ),
        (
            "packets = 1000000001",
            13,
            "limits.packets 1000000001 must be between 1",
        ),
        (
            "packets = 10\npackets_burst = 0",
            14,
            "limits.packets_burst 0 must be between 1",
        ),
        (
            "new_flows_burst = 5\npackets = 1",
            13,
            "limits.new_flows_burst needs limits.new_flows",
        ),
        (
            "ipv4_prefix = 33\nnew_flows = 1",
            13,
            "limits.ipv4_prefix 33 must be between 1 and 32",
        ),
        (
            "ipv4_prefix = 0\nnew_flows = 1",
            13,
            "limits.ipv4_prefix 0 must be between 1 and 32",
        ),
        (
            "ipv6_prefix = 64\nnew_flows = 1",
            13,
            "limits.ipv6_prefix applies to IPv6 VIPs only, and 192.0.2.10 is IPv4",
        ),
        (
            "ipv4_prefix = 24",
            12,
            "[vip.limits] sets no rate: give new_flows or packets",
        ),
        ("rate = 5", 13, "unknown field `rate`"),
    ];
    for (keys, line, error) in cases {
        assert_rejected(&with(keys), line, error);
    }
    let bounds =
        with("new_flows = 1\nnew_flows_burst = 1000000000\npackets = 1000000000\nipv4_prefix = 1");
    assert!(errors(&bounds).is_empty(), "{:#?}", errors(&bounds));
    let v6 = V6_BACKEND.replace(
        "backend = [",
        "limits = { packets = 5, ipv6_prefix = 128 }\nbackend = [",
    );
    assert!(errors(&v6).is_empty(), "{:#?}", errors(&v6));
    let exempt_of_the_other_family = VALID.replace(
        "[[vip]]\nname = \"web\"",
        "[[vip]]\nname = \"web\"\nexempt = [\"2001:db8::/32\"]",
    );
    assert_rejected(
        &exempt_of_the_other_family,
        8,
        "VIP \"web\": exempt prefix 2001:db8::/32 is IPv6, and the VIP is IPv4",
    );
}

#[test]
fn an_exempt_list_without_limits_is_a_warning_at_its_first_prefix() {
    let exempt = VALID.replace(
        "[[vip]]\nname = \"web\"",
        "[access]\nexempt = [\"10.9.0.0/16\"]\n\n[[vip]]\nname = \"web\"\nexempt = [\"10.0.0.0/8\"]",
    );
    let config = parse(&exempt, "t").unwrap_or_else(|e| panic!("{e}"));
    let got: Vec<(Option<usize>, String)> = warnings(&config, &exempt)
        .into_iter()
        .map(|w| (w.line, w.message))
        .collect();
    assert_eq!(
        got,
        [
            (
                Some(7),
                "[access] has an exempt list but no VIP has [vip.limits]: it exempts from nothing"
                    .to_owned()
            ),
            (
                Some(11),
                "VIP \"web\" has an exempt list but no [vip.limits]: it exempts from nothing"
                    .to_owned()
            ),
        ]
    );
    let limited = exempt.replace(
        "[vip.health_check]",
        "[vip.limits]\nnew_flows = 5\n\n[vip.health_check]",
    );
    let config = parse(&limited, "t").unwrap();
    assert!(warnings(&config, &limited).is_empty());
}

#[test]
fn an_exempt_prefix_longer_than_a_source_is_rejected_at_the_prefix() {
    // VALID's VIP "web" is IPv4, its [[vip]] on line 6.
    let with = |access: &str, vip_keys: &str, limits: &str| {
        let text = VALID
            .replace(
                "[[vip]]\nname = \"web\"",
                &format!("{access}[[vip]]\nname = \"web\"\n{vip_keys}"),
            )
            .replace(
                "[vip.health_check]",
                &format!("[vip.limits]\n{limits}\n\n[vip.health_check]"),
            );
        errors(&text)
    };
    let own = with(
        "",
        "exempt = [\"192.0.2.200/32\"]",
        "new_flows = 5\nipv4_prefix = 24",
    );
    assert!(
        own.iter().any(|(line, m)| *line == Some(8) && m.contains(
            "VIP \"web\": exempt prefix 192.0.2.200/32 is longer than the /24 that makes one source of VIP \"web\"'s limits, and a source is exempt whole or not at all: exempt its /24, or lengthen limits.ipv4_prefix"
        )),
        "{own:#?}"
    );
    let global = with(
        "[access]\nexempt = [\"192.0.2.0/25\"]\n\n",
        "",
        "new_flows = 5\nipv4_prefix = 24",
    );
    assert!(
        global.iter().any(|(line, m)| *line == Some(7)
            && m.contains("[access]: exempt prefix 192.0.2.0/25 is longer than the /24")),
        "{global:#?}"
    );
    // Whole sources, or a family without limits, are fine.
    assert!(
        with(
            "",
            "exempt = [\"192.0.2.0/24\"]",
            "new_flows = 5\nipv4_prefix = 24"
        )
        .is_empty()
    );
    assert!(
        with(
            "[access]\nexempt = [\"2001:db8::1\"]\n\n",
            "",
            "new_flows = 5"
        )
        .is_empty()
    );
    assert!(with("", "exempt = [\"192.0.2.200\"]", "new_flows = 5").is_empty());
}

#[test]
fn only_a_tunnel_carries_backends_of_the_other_family() {
    // VALID's VIP "web" is IPv4.
    let v6_backends = VALID
        .replace("address = \"10.0.0.1\"", "address = \"fd00::1\"")
        .replace("address = \"10.0.0.2\"", "address = \"fd00::2\"");
    assert_rejected(
        &v6_backends,
        19,
        "backend fd00::1 of VIP \"web\" is not of the VIP's address family (192.0.2.10): only forwarding = \"ipip\" or \"gue\" carries one family in the other",
    );
    let ipip = v6_backends.replace(
        "protocol = \"tcp\"\n",
        "protocol = \"tcp\"\nforwarding = \"ipip\"\n",
    );
    assert!(errors(&ipip).is_empty(), "{:#?}", errors(&ipip));
    let gue = ipip.replace("forwarding = \"ipip\"", "forwarding = \"gue\"");
    assert!(errors(&gue).is_empty(), "{:#?}", errors(&gue));
}
