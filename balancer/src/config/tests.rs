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

/// The default configuration the Debian package installs as
/// /etc/balancer/balancer.toml.
const SHIPPED: &str = include_str!("../../../dist/balancer.toml");

/// `text` with every commented-out key and table header (`# key = ...`,
/// `# [table]`) made live; prose comments stay comments.
fn uncommented(text: &str) -> String {
    text.lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest) if rest.starts_with('[') || is_assignment(rest) => rest,
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether `text` starts as a TOML assignment of a bare key.
fn is_assignment(text: &str) -> bool {
    text.split_once(" = ").is_some_and(|(key, _)| {
        !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
    })
}

#[test]
fn the_shipped_configuration_sets_nothing_and_its_comments_are_the_defaults() {
    let config = parse(SHIPPED, "dist/balancer.toml").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config, Config::default());
    let live = uncommented(SHIPPED);
    assert!(
        live.lines().filter(|l| l.contains(" = ")).count() >= 30,
        "the keys were not uncommented:\n{live}"
    );
    let all = parse(&live, "uncommented").unwrap_or_else(|e| panic!("{e}\n{live}"));
    assert_eq!(all.daemon, DaemonConfig::default());
    let datapath = DatapathConfig {
        insert_budget_setting: None,
        ..all.datapath.clone()
    };
    assert_eq!(datapath, DatapathConfig::default());
    assert_eq!(
        all.datapath.insert_budget(),
        DatapathConfig::default().insert_budget(),
        "the commented insert_budget is the default's value"
    );
    assert_eq!(all.access, AccessConfig::default());
    let announce = all.announce.expect("the [announce] example");
    let defaults: AnnounceConfig = toml::from_str("table = 4242").unwrap();
    assert_eq!(announce, defaults);
    let [vip] = &all.vips[..] else {
        panic!("one example VIP: {:?}", all.vips)
    };
    let vip = vip.get_ref();
    assert_eq!(
        (vip.name.get_ref().as_str(), vip.backends.len()),
        ("web", 2)
    );
    assert_eq!(
        (vip.scheduler, vip.forwarding),
        (Scheduler::default(), Forwarding::default())
    );
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

mod bounds;
mod nat;

#[test]
fn announce_is_read_with_its_defaults_and_checked() {
    let config = parse("[announce]\ntable = 4242\n", "t").unwrap();
    let announce = config.announce.expect("the section");
    assert_eq!(*announce.table.get_ref(), 4242);
    assert_eq!(announce.announce_delay, Duration::from_secs(5));
    assert_eq!(announce.withdraw_grace, Duration::from_secs(5));
    assert_eq!(
        announce.drain_file,
        std::path::Path::new("/var/lib/balancer/drained")
    );
    assert!(parse("", "t").unwrap().announce.is_none());
    // Each row: a section, and a fragment of its error.
    let rows = [
        ("[announce]\n", "missing field `table`"),
        (
            "[announce]\ntable = 254\n",
            "table 254 is one the kernel uses",
        ),
        ("[announce]\ntable = 0\n", "table 0 is one the kernel uses"),
        (
            "[announce]\ntable = 7\nannounce_delay = \"2h\"\n",
            "announce_delay 2h is longer than 1h",
        ),
        (
            "[announce]\ntable = 7\ndrain_file = \"drained\"\n",
            "must be an absolute path",
        ),
        ("[announce]\ntable = 7\nfoo = 1\n", "unknown field `foo`"),
    ];
    for (text, fragment) in rows {
        let errs = errors(text);
        assert!(
            errs.iter().any(|(_, m)| m.contains(fragment)),
            "{text:?}: expected {fragment:?}, got {errs:#?}"
        );
    }
}

#[test]
fn min_healthy_defaults_to_one_refuses_zero_and_warns_when_it_cannot_hold() {
    let config = parse(VALID, "t").unwrap();
    assert_eq!(config.vips[0].get_ref().min_healthy(), 1);
    let zero = VALID.replace("protocol = \"tcp\"", "protocol = \"tcp\"\nmin_healthy = 0");
    assert_rejected(&zero, 11, "min_healthy must be at least 1");
    let three = format!(
        "[announce]\ntable = 7\n{}",
        VALID.replace("protocol = \"tcp\"", "protocol = \"tcp\"\nmin_healthy = 3")
    );
    let config = parse(&three, "t").unwrap();
    let said: Vec<String> = warnings(&config, &three)
        .into_iter()
        .map(|w| w.message)
        .collect();
    assert!(
        said.iter()
            .any(|w| w.contains("min_healthy 3 but 2 backends: it is never announced")),
        "{said:?}"
    );
    let alone = VALID.replace("protocol = \"tcp\"", "protocol = \"tcp\"\nmin_healthy = 1");
    let config = parse(&alone, "t").unwrap();
    assert!(
        warnings(&config, &alone)
            .iter()
            .any(|w| w.message.contains("there is no [announce]")),
    );
}

#[test]
fn panic_threshold_is_a_percentage_and_slow_start_a_bounded_duration() {
    let with = |lines: &str| {
        VALID.replace(
            "protocol = \"tcp\"",
            &format!("protocol = \"tcp\"\n{lines}"),
        )
    };
    let config = parse(&with("panic_threshold = 50\nslow_start = \"30s\""), "t").unwrap();
    let vip = config.vips[0].get_ref();
    assert_eq!(vip.panic_threshold(), Some(50));
    assert_eq!(vip.slow_start(), Some(Duration::from_secs(30)));
    let plain = parse(VALID, "t").unwrap();
    assert_eq!(plain.vips[0].get_ref().panic_threshold(), None);
    assert_eq!(plain.vips[0].get_ref().slow_start(), None);
    for (lines, fragment) in [
        (
            "panic_threshold = 0",
            "panic_threshold 0 must be a percentage from 1 to 100",
        ),
        (
            "panic_threshold = 101",
            "panic_threshold 101 must be a percentage from 1 to 100",
        ),
        (
            "slow_start = \"500ms\"",
            "slow_start 500ms is out of range: 1s to 1h",
        ),
        (
            "slow_start = \"2h\"",
            "slow_start 2h is out of range: 1s to 1h",
        ),
    ] {
        assert_rejected(&with(lines), 11, fragment);
    }
}
