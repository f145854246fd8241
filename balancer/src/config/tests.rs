//! Parsing and validation of configuration files.

use super::*;

fn errors(text: &str) -> Vec<(Option<usize>, String)> {
    match parse(text, "test.toml") {
        Ok(_) => Vec::new(),
        Err(e) => e.errors.into_iter().map(|e| (e.line, e.message)).collect(),
    }
}

fn assert_rejected(text: &str, line: usize, fragment: &str) {
    let errs = errors(text);
    assert!(
        errs.iter()
            .any(|(l, m)| *l == Some(line) && m.contains(fragment)),
        "expected an error on line {line} containing {fragment:?}, got {errs:#?}"
    );
}

const VALID: &str = r#"
[datapath]
interfaces = ["eth0"]
tcp_idle_timeout = "5m"

[[vip]]
name = "web"
address = "192.0.2.10"
port = 80
protocol = "tcp"

[vip.health_check]
kind = "http"
path = "/health"
interval = "500ms"
timeout = "200ms"

[[vip.backend]]
address = "10.0.0.1"

[[vip.backend]]
address = "10.0.0.2"
weight = 0
"#;

#[test]
fn a_valid_file_parses_with_defaults_filled_in() {
    let config = parse(VALID, "t").unwrap();
    assert_eq!(config.daemon, DaemonConfig::default());
    assert_eq!(config.datapath.tcp_idle_timeout, Duration::from_secs(300));
    assert_eq!(config.datapath.udp_idle_timeout, Duration::from_secs(30));
    assert_eq!(*config.datapath.ring_size.get_ref(), 65_537);
    let vip = config.vips[0].get_ref();
    assert_eq!(vip.scheduler, Scheduler::Maglev);
    let check = vip.check();
    assert_eq!(
        (check.kind, check.interval, check.rise, check.fall),
        (CheckKind::Http, Duration::from_millis(500), 2, 3)
    );
    assert_eq!(*vip.backends[0].get_ref().weight.get_ref(), 100);
    assert_eq!(*vip.backends[1].get_ref().weight.get_ref(), 0);
}

#[test]
fn the_example_in_the_docs_is_valid() {
    let doc = include_str!("../../../docs/configuration.md");
    let start = doc.find("```toml\n").expect("the doc has a toml example") + 8;
    let end = start + doc[start..].find("```").expect("the example ends");
    let config = parse(&doc[start..end], "docs/configuration.md").unwrap_or_else(|e| panic!("{e}"));
    assert!(!config.vips.is_empty());
}

#[test]
fn an_empty_file_is_a_valid_configuration_with_nothing_to_do() {
    assert_eq!(parse("", "t").unwrap(), Config::default());
}

#[test]
fn unknown_keys_are_rejected_with_their_line() {
    assert_rejected(
        "[datapath]\ninterfaces = []\nring = 3\n",
        3,
        "unknown field `ring`",
    );
    assert_rejected(
        &VALID.replace("weight = 0", "wieght = 0"),
        23,
        "unknown field `wieght`",
    );
}

#[test]
fn bad_values_are_rejected_with_their_line() {
    assert_rejected(
        &VALID.replace("\"500ms\"", "\"soon\""),
        15,
        "invalid duration \"soon\"",
    );
    assert_rejected(
        &VALID.replace("\"tcp\"", "\"sctp\""),
        10,
        "unknown variant `sctp`",
    );
    assert_rejected(
        &VALID.replace("192.0.2.10", "192.0.2.300"),
        8,
        "invalid IP address",
    );
    assert_rejected(
        "[datapath]\nring_size = 65536\n",
        2,
        "ring_size 65536 must be a prime",
    );
}

#[test]
fn duplicates_are_rejected() {
    let twice = format!(
        "{VALID}\n[[vip]]\nname = \"web\"\naddress = \"192.0.2.10\"\nport = 80\nprotocol = \"tcp\"\n"
    );
    assert_rejected(&twice, 26, "duplicate VIP name \"web\" (first on line 7)");
    assert_rejected(&twice, 27, "duplicate VIP 192.0.2.10 port 80 tcp");
    let backend = VALID.replace("10.0.0.2", "10.0.0.1");
    assert_rejected(&backend, 22, "duplicate backend 10.0.0.1 in VIP \"web\"");
    assert_rejected(
        "[datapath]\ninterfaces = [\"eth0\", \"eth0\"]\n",
        2,
        "interface \"eth0\" is listed twice",
    );
}

#[test]
fn a_backend_of_the_wrong_family_is_rejected() {
    assert_rejected(
        &VALID.replace("10.0.0.2", "fd00::2"),
        22,
        "not of the VIP's address family",
    );
}

#[test]
fn a_weight_out_of_range_is_rejected() {
    assert_rejected(
        &VALID.replace("weight = 0", "weight = 10001"),
        23,
        "weight 10001 of backend 10.0.0.2 is out of range",
    );
}

#[test]
fn every_scheduler_is_read_by_its_name() {
    for scheduler in [
        Scheduler::Maglev,
        Scheduler::SourceHash,
        Scheduler::RoundRobin,
        Scheduler::LeastConnections,
        Scheduler::LeastLatency,
    ] {
        let text = VALID.replace(
            "protocol = \"tcp\"",
            &format!("protocol = \"tcp\"\nscheduler = \"{}\"", scheduler.name()),
        );
        let config = parse(&text, "t").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.vips[0].get_ref().scheduler, scheduler);
    }
    assert_rejected(
        &VALID.replace(
            "protocol = \"tcp\"",
            "protocol = \"tcp\"\nscheduler = \"random\"",
        ),
        11,
        "unknown variant `random`",
    );
}

/// An IPv6 VIP with persistence; its timeout is on line 6, its prefix on
/// line 7.
const V6: &str = r#"[[vip]]
name = "v6"
address = "2001:db8::1"
port = 443
protocol = "tcp"
persistence_timeout = "5m"
persistence_ipv6_prefix = 48
"#;

#[test]
fn persistence_is_read_with_its_defaults() {
    let config = parse(V6, "t").unwrap();
    assert_eq!(
        config.vips[0].get_ref().persistence(),
        Some(Persistence {
            timeout: Duration::from_secs(300),
            ipv6_prefix: 48
        })
    );
    let default_prefix = V6.replace("persistence_ipv6_prefix = 48\n", "");
    let config = parse(&default_prefix, "t").unwrap();
    assert_eq!(
        config.vips[0].get_ref().persistence(),
        Some(Persistence {
            timeout: Duration::from_secs(300),
            ipv6_prefix: DEFAULT_PERSISTENCE_IPV6_PREFIX
        })
    );
    let v4 = VALID.replace(
        "protocol = \"tcp\"",
        "protocol = \"tcp\"\npersistence_timeout = \"30s\"",
    );
    let config = parse(&v4, "t").unwrap();
    assert_eq!(
        config.vips[0].get_ref().persistence().map(|p| p.timeout),
        Some(Duration::from_secs(30))
    );
    assert_eq!(
        parse(VALID, "t").unwrap().vips[0].get_ref().persistence(),
        None
    );
}

#[test]
fn a_persistence_timeout_out_of_range_is_rejected() {
    assert_rejected(
        &V6.replace("\"5m\"", "\"500ms\""),
        6,
        "VIP \"v6\": persistence_timeout 500ms is below 1s: a client's next connection seldom comes sooner",
    );
    assert_rejected(
        &V6.replace("\"5m\"", "\"25h\""),
        6,
        "persistence_timeout 1day 1h is above 24h: clients would stay on their backends for days",
    );
    assert_rejected(
        &V6.replace("\"5m\"", "\"soon\""),
        6,
        "invalid duration \"soon\"",
    );
    assert!(errors(&V6.replace("\"5m\"", "\"1s\"")).is_empty());
    assert!(errors(&V6.replace("\"5m\"", "\"24h\"")).is_empty());
}

#[test]
fn a_persistence_ipv6_prefix_out_of_range_is_rejected() {
    for bits in ["0", "129", "255"] {
        assert_rejected(
            &V6.replace("= 48", &format!("= {bits}")),
            7,
            &format!("persistence_ipv6_prefix {bits} must be between 1 and 128"),
        );
    }
    assert!(errors(&V6.replace("= 48", "= 128")).is_empty());
    assert!(errors(&V6.replace("= 48", "= 1")).is_empty());
}

#[test]
fn a_persistence_ipv6_prefix_on_an_ipv4_vip_is_rejected() {
    assert_rejected(
        &V6.replace("2001:db8::1", "192.0.2.1"),
        7,
        "persistence_ipv6_prefix applies to IPv6 VIPs only, and 192.0.2.1 is IPv4",
    );
}

#[test]
fn a_persistence_ipv6_prefix_without_a_timeout_is_rejected() {
    assert_rejected(
        &V6.replace("persistence_timeout = \"5m\"\n", ""),
        6,
        "persistence_ipv6_prefix needs persistence_timeout",
    );
}

#[test]
fn a_port_zero_vip_needs_a_health_check_port() {
    let any = VALID.replace("port = 80", "port = 0");
    assert_rejected(&any, 12, "needs a port: set health_check.port");
    let with_port = any.replace("kind = \"http\"", "kind = \"http\"\nport = 8080");
    assert!(errors(&with_port).is_empty(), "{:?}", errors(&with_port));
    let without_check =
        "[[vip]]\nname = \"any\"\naddress = \"192.0.2.1\"\nport = 0\nprotocol = \"udp\"\n";
    assert_rejected(without_check, 1, "needs a port");
}

#[test]
fn health_check_settings_are_checked() {
    assert_rejected(
        &VALID.replace("\"200ms\"", "\"2s\""),
        12,
        "timeout (2s) is longer than its interval",
    );
    assert_rejected(
        &VALID.replace("\"/health\"", "\"health\""),
        12,
        "must start with '/'",
    );
    assert_rejected(
        &VALID.replace("kind = \"http\"", "kind = \"udp\""),
        12,
        "needs both send and expect",
    );
    assert_rejected(
        &VALID.replace("kind = \"http\"", "kind = \"exec\""),
        12,
        "needs a command",
    );
}

#[test]
fn every_error_is_reported_not_only_the_first() {
    let bad = VALID
        .replace("weight = 0", "weight = 20000")
        .replace("10.0.0.1", "fd00::1");
    assert_eq!(errors(&bad).len(), 2, "{:#?}", errors(&bad));
}

#[test]
fn errors_print_as_file_line_message() {
    let err = parse("[datapath]\nring_size = 4\n", "/etc/balancer/balancer.toml").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("/etc/balancer/balancer.toml:2: ring_size 4"),
        "{err}"
    );
}

#[test]
fn write_atomically_replaces_the_file_and_keeps_its_mode() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = std::env::temp_dir().join(format!("balancer-atomic-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("balancer.toml");
    std::fs::write(&path, "old").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    write_atomically(&path, "new").unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o640
    );
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        leftovers.len(),
        1,
        "a temporary file was left: {leftovers:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn lines_of_offsets_match_a_count_of_newlines() {
    let text = "a\n\nbc\nd\n";
    let lines = super::Lines::new(text);
    for offset in 0..=text.len() + 2 {
        let naive = text[..offset.min(text.len())].matches('\n').count() + 1;
        assert_eq!(lines.line(offset), naive, "offset {offset}");
    }
}

#[test]
fn metrics_listen_defaults_to_loopback_and_can_be_moved_or_turned_off() {
    let listen =
        |line: &str| parse(&format!("[daemon]\n{line}\n"), "t").map(|c| c.daemon.metrics_listen);
    assert_eq!(
        parse("", "t").unwrap().daemon.metrics_listen,
        Some("127.0.0.1:9100".parse().unwrap())
    );
    assert_eq!(
        listen("metrics_listen = \"[::]:9200\"").unwrap(),
        Some("[::]:9200".parse().unwrap())
    );
    assert_eq!(listen("metrics_listen = \"\"").unwrap(), None);
    assert_rejected(
        "[daemon]\nmetrics_listen = \"localhost\"\n",
        2,
        "invalid listen address \"localhost\"",
    );
}

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
    assert_eq!(
        memory.to_string(),
        "43.5 MiB (connection table 30.0 MiB, rings 0.5 MiB, persistence table 13.0 MiB)"
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
