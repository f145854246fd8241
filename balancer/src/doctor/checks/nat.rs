//! NAT's sources: a SNAT address that is the host's own shares its ports
//! with the kernel's own connections (health checks among them), so the
//! ports NAT takes (`snat_ports`) must stay clear of the kernel's
//! ephemeral range (`net.ipv4.ip_local_port_range`, which IPv6 uses too):
//! a port in both is a reply that may go to the wrong one.

use std::net::IpAddr;

use super::Finding;
use crate::config::PortSpan;

const CHECK: &str = "nat-ports";

/// What doctor found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    /// The SNAT addresses that are addresses of this host.
    pub local: Vec<IpAddr>,
    /// The configured source ports.
    pub ports: PortSpan,
    /// The kernel's ephemeral range, when it could be read.
    pub ephemeral: Result<PortSpan, String>,
}

/// The finding, for a configuration with NAT VIPs.
pub fn decide(facts: &Facts) -> Finding {
    let ports = facts.ports;
    let subject = format!("snat_ports {ports}");
    let ephemeral = match &facts.ephemeral {
        Ok(span) => *span,
        Err(why) => {
            return Finding::warn(
                CHECK,
                subject,
                format!("could not read net.ipv4.ip_local_port_range: {why}"),
                "check that snat_ports stays clear of `sysctl net.ipv4.ip_local_port_range`",
            );
        }
    };
    if facts.local.is_empty() {
        return Finding::ok(
            CHECK,
            subject,
            "no SNAT address is this host's own: its connections never share them",
        );
    }
    let overlap = ports.first.max(ephemeral.first)..=ports.last.min(ephemeral.last);
    if overlap.is_empty() {
        return Finding::ok(
            CHECK,
            subject,
            format!("clear of the kernel's ephemeral ports ({ephemeral})"),
        );
    }
    let addresses: Vec<String> = facts.local.iter().map(ToString::to_string).collect();
    Finding::warn(
        CHECK,
        subject,
        format!(
            "ports {}-{} are also the kernel's ephemeral ports ({ephemeral}), and SNAT address {} is this host's: a reply to one of the host's own connections (a health check) can be taken for a NAT connection's",
            overlap.start(),
            overlap.end(),
            addresses.join(", ")
        ),
        format!(
            "set [datapath] snat_ports clear of {ephemeral} (the default, 1024-32767, is clear of Linux's default), or narrow net.ipv4.ip_local_port_range"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::checks::Level;

    fn span(first: u16, last: u16) -> PortSpan {
        PortSpan { first, last }
    }

    #[test]
    fn local_snat_addresses_need_ports_clear_of_the_ephemeral_range() {
        let local: IpAddr = "10.0.0.2".parse().unwrap();
        let facts = |local: Vec<IpAddr>, ports, ephemeral| Facts {
            local,
            ports,
            ephemeral,
        };
        let table = [
            (
                facts(vec![local], span(1024, 32767), Ok(span(32768, 60999))),
                Level::Ok,
            ),
            (
                facts(vec![local], span(1024, 40000), Ok(span(32768, 60999))),
                Level::Warn,
            ),
            (
                facts(vec![], span(1024, 40000), Ok(span(32768, 60999))),
                Level::Ok,
            ),
            (
                facts(vec![local], span(61000, 65535), Ok(span(32768, 60999))),
                Level::Ok,
            ),
            (
                facts(vec![local], span(60999, 65535), Ok(span(32768, 60999))),
                Level::Warn,
            ),
            (
                facts(vec![local], span(1024, 32767), Err("gone".into())),
                Level::Warn,
            ),
        ];
        for (facts, level) in table {
            let finding = decide(&facts);
            assert_eq!(finding.level, level, "{facts:?}: {finding:?}");
        }
        let warned = decide(&facts(
            vec![local],
            span(1024, 40000),
            Ok(span(32768, 60999)),
        ));
        assert!(
            warned
                .message
                .contains("ports 32768-40000 are also the kernel's ephemeral ports"),
            "{}",
            warned.message
        );
    }
}
