//! Each interface of `[datapath] interfaces`: that it exists, that its
//! driver runs XDP natively, that no other XDP program holds it, and on a
//! veth the two traps of XDP there ([`super::veth`]), which generic mode
//! does not have, so they are only checked where the program runs
//! natively.

use balancer_common::{XDP_PROGRAM, decap::DECAP_PROGRAM};

use super::{Finding, XDP_ACT_BASIC, veth};
use crate::datapath::XdpMode;

/// A program attached to an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attached {
    pub id: u32,
    /// Its name in the kernel, when it could be read.
    pub name: Option<String>,
    /// `native`, `generic`, `offload` or `multiple`.
    pub mode: &'static str,
    /// It is attached through the link pinned for this interface in the
    /// configured pin directory: the daemon's own, which it adopts.
    pub pinned_here: bool,
}

/// An interface that exists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub ifindex: u32,
    /// The kind of a virtual device (`veth`, `bridge`...), `None` for a
    /// physical one.
    pub kind: Option<String>,
    /// The driver, from ETHTOOL_GDRVINFO.
    pub driver: Option<String>,
    pub mtu: u32,
    /// `NETDEV_XDP_ACT_*` bits the kernel reports (Linux 6.3 and later).
    pub xdp_features: Option<u64>,
    pub attached: Option<Attached>,
    /// For a veth, its peer.
    pub peer: Option<veth::Peer>,
}

impl Link {
    fn is_veth(&self) -> bool {
        self.kind.as_deref() == Some("veth")
    }

    fn driver(&self) -> &str {
        self.driver.as_deref().unwrap_or("unknown")
    }
}

/// What doctor found about one configured interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    pub name: String,
    /// The configured `xdp_mode`.
    pub mode: XdpMode,
    /// `None`: no interface of that name in this network namespace.
    pub link: Option<Link>,
}

/// Every finding for one interface: whether it exists, and if it does, the
/// rest.
pub fn decide(facts: &Facts) -> Vec<Finding> {
    let Some(link) = &facts.link else {
        return vec![Finding::fail(
            "interface",
            &facts.name,
            "no such interface in this network namespace: the daemon refuses to start",
            "fix [datapath] interfaces, or run doctor in the namespace the daemon runs in (nsenter --net=/run/netns/NAME)",
        )];
    };
    let mut out = vec![Finding::ok(
        "interface",
        &facts.name,
        format!(
            "ifindex {}, {} (driver {}), MTU {}",
            link.ifindex,
            link.kind.as_deref().unwrap_or("physical"),
            link.driver(),
            link.mtu
        ),
    )];
    out.push(native_xdp(&facts.name, facts.mode, link));
    out.push(attached(&facts.name, link));
    if facts.mode != XdpMode::Generic && link.is_veth() {
        let peer = link.peer.as_ref();
        out.push(veth::peer(&facts.name, peer, link.xdp_features));
        out.push(veth::tx_checksum(&facts.name, peer));
    }
    out
}

/// Whether the driver runs XDP natively, from the XDP features the kernel
/// reports for the device, rather than by attaching a test program: on
/// many drivers (mlx5, i40e, ice...) attaching or detaching an XDP program
/// reconfigures the rings and interrupts traffic, which a check must not
/// do to a live interface.
fn native_xdp(name: &str, mode: XdpMode, link: &Link) -> Finding {
    const CHECK: &str = "native-xdp";
    let driver = link.driver();
    if mode == XdpMode::Generic {
        return Finding::ok(
            CHECK,
            name,
            "xdp_mode = \"generic\": every driver takes it (slower than native)",
        );
    }
    let Some(features) = link.xdp_features else {
        let consequence = match mode {
            XdpMode::Native => "if it has none, the start fails",
            _ => "if it has none, the program runs in generic mode, slower",
        };
        return Finding::warn(
            CHECK,
            name,
            format!(
                "cannot tell whether driver {driver} runs XDP natively (the kernel reports it from Linux 6.3): {consequence}"
            ),
            "xdp_mode = \"auto\" falls back to generic mode where the driver refuses",
        );
    };
    match (features & XDP_ACT_BASIC != 0, mode) {
        (true, _) => Finding::ok(CHECK, name, format!("driver {driver} runs XDP natively")),
        (false, XdpMode::Native) => Finding::fail(
            CHECK,
            name,
            format!(
                "xdp_mode = \"native\", but driver {driver} has no native XDP: the start fails"
            ),
            "set xdp_mode = \"auto\" (or \"generic\"), or use an interface whose driver has native XDP",
        ),
        (false, _) => Finding::warn(
            CHECK,
            name,
            format!(
                "driver {driver} has no native XDP: the program runs in generic mode, at a fraction of native speed"
            ),
            "for line rate use an interface whose driver has native XDP; xdp_mode = \"generic\" accepts this",
        ),
    }
}

/// Whether an XDP program other than the daemon's own holds the
/// interface: an interface takes one program per mode, so the daemon's
/// attach would fail (the daemon adopts only the link pinned in its own
/// pin directory).
fn attached(name: &str, link: &Link) -> Finding {
    const CHECK: &str = "xdp-attached";
    let Some(program) = &link.attached else {
        return Finding::ok(CHECK, name, "no XDP program attached");
    };
    let what = format!(
        "{} (id {}, {})",
        program
            .name
            .as_deref()
            .unwrap_or("a program of unknown name"),
        program.id,
        program.mode
    );
    match program.name.as_deref() {
        Some(XDP_PROGRAM) if program.pinned_here => Finding::ok(
            CHECK,
            name,
            format!(
                "the balancer's program {what} runs through the link pinned here: the daemon adopts it"
            ),
        ),
        Some(XDP_PROGRAM) => Finding::fail(
            CHECK,
            name,
            format!(
                "a balancer program {what} is attached, but not through a link pinned in this pin directory: another daemon's, with another pin_path; this one cannot attach"
            ),
            "stop that daemon and run `balancer teardown --pin-path DIR` with its pin directory, or give this daemon the same pin_path",
        ),
        Some(DECAP_PROGRAM) => Finding::fail(
            CHECK,
            name,
            format!(
                "the decapsulator {what} is attached (balancer decap): the balancer cannot attach beside it"
            ),
            format!(
                "balancer decap --detach --interface {name} (with its --pin-path), or attach the balancer elsewhere"
            ),
        ),
        _ => Finding::fail(
            CHECK,
            name,
            format!(
                "another XDP program, {what}, is attached: the balancer cannot attach beside it"
            ),
            format!(
                "detach it (ip link set dev {name} {} off; a program held by a BPF link goes when its pin is removed or its owner exits: bpftool link), or attach the balancer elsewhere",
                if program.mode == "generic" {
                    "xdpgeneric"
                } else {
                    "xdp"
                }
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::checks::veth::tests::peer;
    use crate::doctor::checks::{Level, table::expect};

    fn veth(features: Option<u64>, peer: Option<veth::Peer>) -> Link {
        Link {
            ifindex: 7,
            kind: Some("veth".to_owned()),
            driver: Some("veth".to_owned()),
            mtu: 1500,
            xdp_features: features,
            attached: None,
            peer,
        }
    }

    fn facts(mode: XdpMode, link: Link) -> Facts {
        Facts {
            name: "eth0".to_owned(),
            mode,
            link: Some(link),
        }
    }

    /// The finding of `check` among `findings`.
    fn find<'a>(findings: &'a [Finding], check: &str) -> &'a Finding {
        findings
            .iter()
            .find(|f| f.check == check)
            .unwrap_or_else(|| panic!("no {check} finding in {findings:?}"))
    }

    #[test]
    fn a_missing_interface_fails_alone() {
        let findings = decide(&Facts {
            name: "eth9".to_owned(),
            mode: XdpMode::Auto,
            link: None,
        });
        assert_eq!(findings.len(), 1);
        expect(
            "missing",
            &findings[0],
            Level::Fail,
            "no such interface",
            Some("fix [datapath] interfaces"),
        );
    }

    #[test]
    fn native_xdp_comes_from_the_reported_features() {
        let physical = |features| Link {
            kind: None,
            driver: Some("e1000".to_owned()),
            ..veth(features, None)
        };
        let rows = [
            (
                "native driver",
                XdpMode::Auto,
                Some(0x23),
                Level::Ok,
                "driver e1000 runs XDP natively",
                None,
            ),
            (
                "none, auto",
                XdpMode::Auto,
                Some(0),
                Level::Warn,
                "runs in generic mode",
                Some("native XDP"),
            ),
            (
                "none, native",
                XdpMode::Native,
                Some(0),
                Level::Fail,
                "the start fails",
                Some("xdp_mode = \"auto\""),
            ),
            (
                "none, generic",
                XdpMode::Generic,
                Some(0),
                Level::Ok,
                "every driver takes it",
                None,
            ),
            (
                "unknown, auto",
                XdpMode::Auto,
                None,
                Level::Warn,
                "cannot tell whether driver e1000",
                Some("falls back"),
            ),
            (
                "unknown, native",
                XdpMode::Native,
                None,
                Level::Warn,
                "the start fails",
                Some("falls back"),
            ),
        ];
        for (case, mode, features, level, message, fix) in rows {
            let findings = decide(&facts(mode, physical(features)));
            expect(case, find(&findings, "native-xdp"), level, message, fix);
            assert!(
                findings
                    .iter()
                    .all(|f| f.check != "veth-peer" && f.check != "tx-checksum"),
                "{case}: veth checks on a physical interface"
            );
        }
    }

    #[test]
    fn only_the_daemons_own_pinned_program_may_be_attached() {
        let program = |name: Option<&str>, pinned_here| Attached {
            id: 42,
            name: name.map(str::to_owned),
            mode: "native",
            pinned_here,
        };
        let rows = [
            ("nothing", None, Level::Ok, "no XDP program attached", None),
            (
                "ours, pinned here",
                Some(program(Some(XDP_PROGRAM), true)),
                Level::Ok,
                "the daemon adopts it",
                None,
            ),
            (
                "ours, another pin directory",
                Some(program(Some(XDP_PROGRAM), false)),
                Level::Fail,
                "not through a link pinned in this pin directory",
                Some("balancer teardown --pin-path"),
            ),
            (
                "the decapsulator",
                Some(program(Some(DECAP_PROGRAM), false)),
                Level::Fail,
                "the decapsulator balancer_decap (id 42, native) is attached",
                Some("balancer decap --detach --interface eth0"),
            ),
            (
                "another program",
                Some(program(Some("xdp_dummy"), false)),
                Level::Fail,
                "another XDP program, xdp_dummy (id 42, native), is attached",
                Some("ip link set dev eth0 xdp off"),
            ),
            (
                "another, generic",
                Some(Attached {
                    mode: "generic",
                    ..program(None, false)
                }),
                Level::Fail,
                "a program of unknown name (id 42, generic)",
                Some("ip link set dev eth0 xdpgeneric off"),
            ),
        ];
        for (case, attached, level, message, fix) in rows {
            let link = Link {
                attached,
                ..veth(Some(0x67), None)
            };
            expect(
                case,
                find(&decide(&facts(XdpMode::Auto, link)), "xdp-attached"),
                level,
                message,
                fix,
            );
        }
    }

    #[test]
    fn generic_mode_has_neither_veth_trap() {
        let bad = veth(
            Some(0x23),
            Some(peer(veth::PeerNamespace::Same, Some(true))),
        );
        let findings = decide(&facts(XdpMode::Generic, bad));
        assert!(
            findings
                .iter()
                .all(|f| f.check != "veth-peer" && f.check != "tx-checksum"),
            "{findings:?}"
        );
    }
}
