//! NAT's keys: what they read as, and every rule they follow, each with
//! the file it refuses and the line it names.

use super::*;

/// A NAT VIP on line 6 (its address on line 8), with source NAT from
/// `snat_ipv4` on line 2, a backend on its own port (line 15) and one on
/// the VIP's (its address on line 18).
const NAT: &str = r#"[datapath]
snat_ipv4 = ["192.0.2.250", "192.0.2.251"]
snat_ports = "2000-2999"
nat_handshake_timeout = "5s"

[[vip]]
name = "api"
address = "192.0.2.20"
port = 443
protocol = "tcp"
forwarding = "nat"

[[vip.backend]]
address = "10.0.1.21"
port = 8443

[[vip.backend]]
address = "10.0.1.22"
"#;

#[test]
fn nat_keys_are_read_with_their_defaults() {
    let config = parse(NAT, "t").unwrap_or_else(|e| panic!("{e}"));
    let d = &config.datapath;
    assert_eq!(d.snat_ipv4.len(), 2);
    assert!(d.snat_ipv6.is_empty());
    assert_eq!(
        *d.snat_ports.get_ref(),
        PortSpan {
            first: 2000,
            last: 2999
        }
    );
    assert_eq!(d.nat_handshake_timeout, Duration::from_secs(5));
    assert_eq!(d.nat_closing_timeout, Duration::from_secs(30));
    assert_eq!(*d.nat_table_size.get_ref(), 65_536);
    let vip = config.vips[0].get_ref();
    assert_eq!(vip.forwarding, Forwarding::Nat);
    assert!(vip.snat());
    let ports: Vec<Option<u16>> = vip
        .backends
        .iter()
        .map(|b| b.get_ref().port.as_ref().map(|p| *p.get_ref()))
        .collect();
    assert_eq!(ports, [Some(8443), None]);
    let plain = parse(
        &NAT.replace("forwarding = \"nat\"", "forwarding = \"nat\"\nsnat = false"),
        "t",
    )
    .unwrap();
    assert!(!plain.vips[0].get_ref().snat());
}

#[test]
fn nat_rules_are_checked_with_their_line() {
    let dsr = NAT.replace("forwarding = \"nat\"\n", "");
    let cases: Vec<(String, usize, &str)> = vec![
        (
            NAT.replace("snat_ipv4 = [\"192.0.2.250\", \"192.0.2.251\"]\n", ""),
            7,
            "VIP \"api\" forwards by NAT with source NAT, but [datapath] snat_ipv4 is empty",
        ),
        (
            NAT.replace("\"192.0.2.251\"", "\"192.0.2.250\""),
            2,
            "snat_ipv4: 192.0.2.250 is listed twice",
        ),
        (
            NAT.replace("\"192.0.2.251\"", "\"192.0.2.20\""),
            2,
            "snat_ipv4: 192.0.2.20 is a VIP's address",
        ),
        (
            NAT.replace("\"192.0.2.251\"", "\"224.0.0.1\""),
            2,
            "snat_ipv4: 224.0.0.1 is a multicast address",
        ),
        (
            NAT.replace("2000-2999", "2999-2000"),
            3,
            "invalid port range \"2999-2000\"",
        ),
        (NAT.replace("2000-2999", "0-10"), 3, "invalid port range"),
        (dsr.clone(), 14, "port applies to forwarding = \"nat\" only"),
        (
            dsr.replace("protocol = \"tcp\"\n", "protocol = \"tcp\"\nsnat = false\n"),
            11,
            "snat applies to forwarding = \"nat\" only",
        ),
        (
            NAT.replace("port = 8443", "port = 0"),
            15,
            "port must be from 1 to 65535",
        ),
        (
            NAT.replace("port = 443", "port = 0").replace(
                "forwarding = \"nat\"",
                "forwarding = \"nat\"\n[vip.health_check]\nkind = \"none\"",
            ),
            17,
            "the VIP takes every port (port 0)",
        ),
        (
            NAT.replace("address = \"10.0.1.22\"", "address = \"2001:db8::22\""),
            18,
            "is not of the VIP's address family",
        ),
        (
            format!(
                "{NAT}\n[[vip]]\nname = \"web\"\naddress = \"192.0.2.20\"\nport = 80\nprotocol = \"tcp\"\nbackend = [{{ address = \"10.0.1.30\" }}]\n"
            ),
            0,
            "VIPs \"api\" and \"web\" share 192.0.2.20 (tcp), and only \"api\" forwards by NAT",
        ),
        (
            NAT.replace(
                "nat_handshake_timeout = \"5s\"",
                "nat_handshake_timeout = \"0s\"",
            ),
            0,
            "[datapath] nat_handshake_timeout must be above 0",
        ),
        (
            NAT.replace("[datapath]\n", "[datapath]\nnat_table_size = 0\n"),
            2,
            "nat_table_size 0 is out of range",
        ),
    ];
    for (text, line, fragment) in cases {
        let errs = errors(&text);
        assert!(
            errs.iter()
                .any(|(l, m)| *l == (line != 0).then_some(line) && m.contains(fragment)),
            "expected an error on line {line} containing {fragment:?}, got {errs:#?} for\n{text}"
        );
    }
    // A pool of 17 addresses.
    let many: Vec<String> = (1..=17).map(|i| format!("\"192.0.2.{i}\"")).collect();
    let text = NAT.replace(
        "[\"192.0.2.250\", \"192.0.2.251\"]",
        &format!("[{}]", many.join(", ")),
    );
    assert_rejected(
        &text,
        2,
        "[datapath] snat_ipv4 has 17 addresses: at most 16",
    );
    // The same address and protocol by NAT twice is fine, and another
    // protocol of the address may forward otherwise.
    let udp = format!(
        "{NAT}\n[[vip]]\nname = \"dns\"\naddress = \"192.0.2.20\"\nport = 53\nprotocol = \"udp\"\nbackend = [{{ address = \"10.0.1.30\" }}]\n"
    );
    assert_eq!(errors(&udp), []);
}
