//! `balancer doctor --backend`: this host as a backend of the
//! configuration's VIPs (the same file the balancer hosts use), checked
//! for what docs/operations.md asks of a backend in each forwarding mode:
//!
//! - every mode: the VIP on one of the host's interfaces (`lo`), or its
//!   stack drops the VIP's packets;
//! - `dsr`, IPv4 VIPs: `arp_ignore=1` and `arp_announce=2`, or the backend
//!   answers ARP for the VIP on the balancer's segment and takes the VIP's
//!   traffic away from the balancer (IPv6 needs nothing: neighbour
//!   discovery answers only for addresses of the receiving interface);
//! - `ipip` and `gue`: something that takes the outer header off (the
//!   decapsulator, or the kernel's tunnel devices), and `rp_filter` not
//!   strict where the client's packet enters the stack, since it arrives
//!   from the client's address on an interface the route back to that
//!   client need not use (IPv4 VIPs: IPv6 has no rp_filter).

use std::net::IpAddr;

use super::Finding;
use crate::config::Forwarding;

/// What takes the outer header off tunnelled packets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decap {
    /// `balancer decap` is attached to the backend address's interface.
    Program,
    /// A kernel tunnel device that is up (`tunl0`, `sit0`, an `ip6tnl`).
    Device(String),
    /// Nothing this check can see.
    Nothing,
}

/// One backend of the configuration whose address is on this host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalBackend {
    pub vip: String,
    pub vip_address: IpAddr,
    pub forwarding: Forwarding,
    pub gue_port: u16,
    pub address: IpAddr,
    /// The interface that holds `address`.
    pub interface: String,
    /// The VIP is an address of one of this host's interfaces.
    pub vip_local: bool,
    /// Effective `arp_ignore` and `arp_announce` of `interface` (the
    /// larger of `all` and the interface's own), for IPv4.
    pub arp: Option<(u32, u32)>,
    /// Effective `rp_filter` (the larger of `all` and the interface's) of
    /// the interface where decapsulated packets enter the stack, and its
    /// name.
    pub rp_filter: Option<(String, u32)>,
    pub decap: Decap,
}

/// Every finding for the backends this host holds; a failure when it
/// holds none (`--backend` on a host that is no backend of the file).
pub fn decide(backends: &[LocalBackend], file: &str) -> Vec<Finding> {
    if backends.is_empty() {
        return vec![Finding::fail(
            "backend",
            file,
            "no backend address of the configuration is on this host",
            "run doctor --backend on a backend, in its network namespace, with the balancer hosts' configuration",
        )];
    }
    let mut out = Vec::new();
    for backend in backends {
        out.push(vip_on_host(backend));
        if backend.forwarding == Forwarding::Dsr {
            if let Some(arp) = arp(backend) {
                out.push(arp);
            }
        } else {
            out.push(decapsulator(backend));
            if let Some(rp) = rp_filter(backend) {
                out.push(rp);
            }
        }
    }
    out
}

fn subject(backend: &LocalBackend) -> String {
    format!("{} {}", backend.vip, backend.address)
}

fn vip_on_host(backend: &LocalBackend) -> Finding {
    const CHECK: &str = "backend-vip";
    let vip = backend.vip_address;
    if backend.vip_local {
        Finding::ok(
            CHECK,
            subject(backend),
            format!("the VIP {vip} is on this host"),
        )
    } else {
        let prefix = if vip.is_ipv4() { 32 } else { 128 };
        Finding::fail(
            CHECK,
            subject(backend),
            format!(
                "the VIP {vip} is on none of this host's interfaces: its stack drops the VIP's packets"
            ),
            format!("ip address add {vip}/{prefix} dev lo (and in the network configuration)"),
        )
    }
}

fn arp(backend: &LocalBackend) -> Option<Finding> {
    const CHECK: &str = "backend-arp";
    if !backend.vip_address.is_ipv4() {
        return None;
    }
    let interface = &backend.interface;
    let Some((ignore, announce)) = backend.arp else {
        return Some(Finding::warn(
            CHECK,
            subject(backend),
            format!("cannot read arp_ignore and arp_announce of {interface}"),
            format!(
                "sysctl net.ipv4.conf.{interface}.arp_ignore net.ipv4.conf.{interface}.arp_announce"
            ),
        ));
    };
    Some(if ignore >= 1 && announce >= 2 {
        Finding::ok(
            CHECK,
            subject(backend),
            format!(
                "arp_ignore {ignore}, arp_announce {announce} on {interface}: the VIP stays off the segment"
            ),
        )
    } else {
        Finding::warn(
            CHECK,
            subject(backend),
            format!(
                "arp_ignore {ignore}, arp_announce {announce} on {interface}: this backend can answer ARP for the VIP on the segment and take its traffic away from the balancer"
            ),
            format!(
                "sysctl -w net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2 net.ipv4.conf.{interface}.arp_ignore=1 net.ipv4.conf.{interface}.arp_announce=2 (and in /etc/sysctl.d/)"
            ),
        )
    })
}

fn decapsulator(backend: &LocalBackend) -> Finding {
    const CHECK: &str = "backend-decap";
    let interface = &backend.interface;
    match &backend.decap {
        Decap::Program => Finding::ok(
            CHECK,
            subject(backend),
            format!("the decapsulator (balancer decap) is attached to {interface}"),
        ),
        Decap::Device(device) if backend.forwarding == Forwarding::Gue => Finding::ok(
            CHECK,
            subject(backend),
            format!(
                "the kernel's {device} takes the outer IP header off; GUE also needs a fou receiver on port {} (ip fou add port {} gue), which this check cannot see",
                backend.gue_port, backend.gue_port
            ),
        ),
        Decap::Device(device) => Finding::ok(
            CHECK,
            subject(backend),
            format!("the kernel's {device} takes the outer header off"),
        ),
        Decap::Nothing => Finding::fail(
            CHECK,
            subject(backend),
            format!(
                "nothing takes the {} header off: no decapsulator on {interface} and no ipip, sit or ip6tnl device up, so the stack drops the tunnelled packets",
                backend.forwarding.name()
            ),
            format!("balancer decap --interface {interface} (docs/operations.md)"),
        ),
    }
}

fn rp_filter(backend: &LocalBackend) -> Option<Finding> {
    const CHECK: &str = "backend-rp-filter";
    if !backend.vip_address.is_ipv4() {
        return None;
    }
    let Some((interface, value)) = &backend.rp_filter else {
        return Some(Finding::warn(
            CHECK,
            subject(backend),
            "cannot read rp_filter where the decapsulated packets enter the stack",
            "sysctl net.ipv4.conf.all.rp_filter",
        ));
    };
    Some(if *value == 1 {
        Finding::warn(
            CHECK,
            subject(backend),
            format!(
                "rp_filter is strict on {interface}: decapsulated packets from clients whose route leaves through another interface are dropped"
            ),
            format!(
                "sysctl -w net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.{interface}.rp_filter=2 (loose; 0 turns it off)"
            ),
        )
    } else {
        Finding::ok(
            CHECK,
            subject(backend),
            format!("rp_filter {value} on {interface}: not strict"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::checks::{Level, table::expect};

    fn backend(forwarding: Forwarding, vip: &str) -> LocalBackend {
        LocalBackend {
            vip: "web".to_owned(),
            vip_address: vip.parse().unwrap(),
            forwarding,
            gue_port: 6080,
            address: "10.0.0.11".parse().unwrap(),
            interface: "eth0".to_owned(),
            vip_local: true,
            arp: Some((1, 2)),
            rp_filter: Some(("eth0".to_owned(), 0)),
            decap: Decap::Program,
        }
    }

    fn find<'a>(findings: &'a [Finding], check: &str) -> Option<&'a Finding> {
        findings.iter().find(|f| f.check == check)
    }

    #[test]
    fn no_local_backend_fails() {
        let findings = decide(&[], "lb.toml");
        assert_eq!(findings.len(), 1);
        expect(
            "none",
            &findings[0],
            Level::Fail,
            "no backend address",
            Some("--backend on a backend"),
        );
    }

    #[test]
    fn each_mode_asks_its_own_of_a_backend() {
        type Row = (
            &'static str,
            LocalBackend,
            &'static str,
            Option<(Level, &'static str, Option<&'static str>)>,
        );
        let dsr = || backend(Forwarding::Dsr, "192.0.2.10");
        let ipip = || backend(Forwarding::Ipip, "192.0.2.10");
        let rows: Vec<Row> = vec![
            (
                "vip here",
                dsr(),
                "backend-vip",
                Some((Level::Ok, "the VIP 192.0.2.10 is on this host", None)),
            ),
            (
                "vip missing",
                LocalBackend {
                    vip_local: false,
                    ..backend(Forwarding::Dsr, "2001:db8::10")
                },
                "backend-vip",
                Some((
                    Level::Fail,
                    "on none of this host's interfaces",
                    Some("ip address add 2001:db8::10/128 dev lo"),
                )),
            ),
            (
                "arp set",
                dsr(),
                "backend-arp",
                Some((Level::Ok, "arp_ignore 1, arp_announce 2 on eth0", None)),
            ),
            (
                "arp default",
                LocalBackend {
                    arp: Some((0, 0)),
                    ..dsr()
                },
                "backend-arp",
                Some((
                    Level::Warn,
                    "take its traffic away from the balancer",
                    Some("net.ipv4.conf.eth0.arp_ignore=1"),
                )),
            ),
            (
                "arp half",
                LocalBackend {
                    arp: Some((1, 1)),
                    ..dsr()
                },
                "backend-arp",
                Some((Level::Warn, "arp_announce 1", Some("arp_announce=2"))),
            ),
            (
                "arp ipv6",
                backend(Forwarding::Dsr, "2001:db8::10"),
                "backend-arp",
                None,
            ),
            ("arp tunnelled", ipip(), "backend-arp", None),
            (
                "decap program",
                ipip(),
                "backend-decap",
                Some((
                    Level::Ok,
                    "the decapsulator (balancer decap) is attached to eth0",
                    None,
                )),
            ),
            (
                "kernel device",
                LocalBackend {
                    decap: Decap::Device("tunl0".to_owned()),
                    ..ipip()
                },
                "backend-decap",
                Some((
                    Level::Ok,
                    "the kernel's tunl0 takes the outer header off",
                    None,
                )),
            ),
            (
                "kernel device, gue",
                LocalBackend {
                    decap: Decap::Device("tunl0".to_owned()),
                    ..backend(Forwarding::Gue, "192.0.2.10")
                },
                "backend-decap",
                Some((Level::Ok, "ip fou add port 6080 gue", None)),
            ),
            (
                "no decapsulator",
                LocalBackend {
                    decap: Decap::Nothing,
                    ..ipip()
                },
                "backend-decap",
                Some((
                    Level::Fail,
                    "nothing takes the ipip header off",
                    Some("balancer decap --interface eth0"),
                )),
            ),
            ("decap for dsr", dsr(), "backend-decap", None),
            (
                "rp_filter off",
                ipip(),
                "backend-rp-filter",
                Some((Level::Ok, "rp_filter 0 on eth0", None)),
            ),
            (
                "rp_filter strict",
                LocalBackend {
                    rp_filter: Some(("eth0".to_owned(), 1)),
                    ..ipip()
                },
                "backend-rp-filter",
                Some((
                    Level::Warn,
                    "rp_filter is strict on eth0",
                    Some("net.ipv4.conf.eth0.rp_filter=2"),
                )),
            ),
            (
                "rp_filter loose",
                LocalBackend {
                    rp_filter: Some(("tunl0".to_owned(), 2)),
                    ..ipip()
                },
                "backend-rp-filter",
                Some((Level::Ok, "rp_filter 2 on tunl0", None)),
            ),
            (
                "rp_filter ipv6",
                backend(Forwarding::Gue, "2001:db8::10"),
                "backend-rp-filter",
                None,
            ),
            ("rp_filter dsr", dsr(), "backend-rp-filter", None),
        ];
        for (case, backend, check, expected) in rows {
            let findings = decide(&[backend], "lb.toml");
            match (expected, find(&findings, check)) {
                (None, None) => {}
                (None, Some(found)) => panic!("{case}: unexpected {found:?}"),
                (Some(_), None) => panic!("{case}: no {check} in {findings:?}"),
                (Some((level, message, fix)), Some(found)) => {
                    expect(case, found, level, message, fix)
                }
            }
        }
    }
}
