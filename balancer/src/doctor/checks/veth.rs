//! The two traps of XDP on a veth (docs/operations.md, "veth and
//! XDP_TX"): frames the program sends back out of a veth (XDP_TX) are
//! lost unless its peer takes them (an XDP program or NAPI on the peer),
//! and packets a local socket sends through the peer reach the program
//! with partial checksums, which the backends then drop.

use super::{Finding, XDP_ACT_NDO_XMIT, in_namespace};

/// Where a veth's peer lives, seen from here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerNamespace {
    /// This network namespace.
    Same,
    /// Another one, which `ip netns` names.
    Named(String),
    /// Another one that doctor cannot enter (not under /run/netns).
    Unreachable,
}

/// The other end of a veth.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub ifindex: u32,
    /// Its name, when its namespace could be entered.
    pub name: Option<String>,
    pub namespace: PeerNamespace,
    /// Transmit checksum offload on (`ethtool -k`: tx-checksumming).
    pub tx_checksum: Option<bool>,
    /// It has NAPI instances (Linux 6.9 and later tell): an XDP program
    /// of its own, or GRO turned on while up, gives it them.
    pub napi: Option<bool>,
    /// An XDP program is attached to it (known in this namespace only).
    pub xdp: Option<bool>,
}

impl Peer {
    /// How a message names it: `veth1` (in namespace `ns`), or by index.
    fn describe(&self) -> String {
        match (&self.name, &self.namespace) {
            (Some(name), PeerNamespace::Named(ns)) => format!("{name} (in namespace {ns})"),
            (Some(name), _) => name.clone(),
            (None, _) => format!("ifindex {} in another namespace", self.ifindex),
        }
    }

    /// `commands` on the peer (named, or by a placeholder), each run in
    /// its namespace, joined with `; `.
    fn commands(&self, commands: &[&dyn Fn(&str) -> String]) -> String {
        let name = self.name.as_deref().unwrap_or("PEER");
        let namespace = match &self.namespace {
            PeerNamespace::Named(ns) => Some(ns.as_str()),
            _ => None,
        };
        let line = commands
            .iter()
            .map(|command| in_namespace(namespace, &command(name)))
            .collect::<Vec<_>>()
            .join("; ");
        match self.namespace {
            PeerNamespace::Unreachable => format!("in the peer's namespace: {line}"),
            _ => line,
        }
    }
}

/// Whether the veth `name`'s peer takes the frames the program sends back out
/// of this end (XDP_TX): the kernel hands them to the peer's NAPI, which
/// the peer has while it runs an XDP program or has GRO turned on. Asked
/// of the peer directly where its namespace can be entered (Linux 6.9
/// and later list NAPI instances); else the veth's `ndo-xmit` XDP
/// feature tells, which the kernel sets from the same conditions; before
/// Linux 6.3, only a peer's XDP program seen in this namespace tells.
pub fn peer(name: &str, peer: Option<&Peer>, xdp_features: Option<u64>) -> Finding {
    const CHECK: &str = "veth-peer";
    let Some(peer) = peer else {
        return Finding::warn(
            CHECK,
            name,
            "the veth's peer could not be found: whether it takes XDP_TX frames could not be checked",
            "attach an XDP program to the peer, or enable its NAPI: ethtool -K PEER gro off; ethtool -K PEER gro on",
        );
    };
    let fix = format!(
        "attach an XDP program (one that passes is enough) to the peer, or enable its NAPI: {}",
        peer.commands(&[&|p| format!("ethtool -K {p} gro off"), &|p| format!(
            "ethtool -K {p} gro on"
        ),])
    );
    let (takes, how) = match (peer.napi, peer.xdp, xdp_features) {
        (Some(napi), _, _) => (napi, "it has NAPI"),
        (None, Some(true), _) => (true, "it has an XDP program"),
        (None, _, Some(features)) => (
            features & XDP_ACT_NDO_XMIT != 0,
            "as the veth's XDP features say",
        ),
        (None, _, None) => {
            return Finding::warn(
                CHECK,
                name,
                format!(
                    "cannot tell whether the peer {} has NAPI (the kernel tells from Linux 6.3): without it or an XDP program there, frames sent back with XDP_TX are lost",
                    peer.describe()
                ),
                fix,
            );
        }
    };
    if takes {
        Finding::ok(
            CHECK,
            name,
            format!(
                "the peer {} takes frames sent back with XDP_TX ({how})",
                peer.describe()
            ),
        )
    } else {
        Finding::warn(
            CHECK,
            name,
            format!(
                "the peer {} has neither an XDP program nor NAPI: frames the program sends back out of {name} (XDP_TX) are lost",
                peer.describe()
            ),
            fix,
        )
    }
}

/// Whether packets sent through the veth's peer arrive with complete
/// checksums: with transmit checksum offload on, a local socket's packet
/// leaves the peer with a partial checksum for a device to complete, XDP
/// turns it into a frame that no device completes, and the backend drops
/// it. Packets from a physical network are not affected, so this is a
/// warning: it matters where local sockets (containers, namespaces) send
/// through the peer.
pub fn tx_checksum(name: &str, peer: Option<&Peer>) -> Finding {
    const CHECK: &str = "tx-checksum";
    let fix = |peer: &Peer| peer.commands(&[&|p| format!("ethtool -K {p} tx off")]);
    let Some(peer) = peer else {
        return Finding::warn(
            CHECK,
            name,
            "the veth's peer could not be found: its transmit checksum offload could not be checked",
            "ethtool -K PEER tx off, in the peer's namespace",
        );
    };
    match peer.tx_checksum {
        Some(false) => Finding::ok(
            CHECK,
            name,
            format!(
                "the peer {} completes checksums itself (tx checksum offload off)",
                peer.describe()
            ),
        ),
        Some(true) => Finding::warn(
            CHECK,
            name,
            format!(
                "the peer {} offloads transmit checksums: packets local sockets send through it reach the program with partial checksums, which forwarding by XDP does not complete, and backends drop them",
                peer.describe()
            ),
            fix(peer),
        ),
        None => Finding::warn(
            CHECK,
            name,
            format!(
                "the peer {} is in a namespace doctor cannot enter (not one of ip netns): its transmit checksum offload could not be checked",
                peer.describe()
            ),
            fix(peer),
        ),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::doctor::checks::{Level, table::expect};

    /// A peer in `namespace` with `tx_checksum`, without XDP and NAPI:
    /// the tables' starting point (the interface checks' too).
    pub(in crate::doctor::checks) fn peer(
        namespace: PeerNamespace,
        tx_checksum: Option<bool>,
    ) -> Peer {
        let reachable = namespace != PeerNamespace::Unreachable;
        Peer {
            ifindex: 8,
            name: reachable.then(|| "vpeer".to_owned()),
            namespace,
            tx_checksum,
            napi: reachable.then_some(false),
            xdp: Some(false),
        }
    }

    #[test]
    fn a_veth_peer_must_take_xdp_tx_frames() {
        let named = |napi| Peer {
            napi,
            ..peer(PeerNamespace::Named("lab-sw".to_owned()), Some(false))
        };
        let unreachable = || peer(PeerNamespace::Unreachable, None);
        let rows = [
            // The peer itself tells, whatever the veth's flag says (it
            // lags when GRO was turned on while the veth was down).
            (
                "napi",
                Some(0x23),
                Some(named(Some(true))),
                Level::Ok,
                "the peer vpeer (in namespace lab-sw) takes frames sent back with XDP_TX (it has NAPI)",
                None,
            ),
            (
                "no napi",
                Some(0x67),
                Some(named(Some(false))),
                Level::Warn,
                "has neither an XDP program nor NAPI: frames the program sends back out of eth0 (XDP_TX) are lost",
                Some(
                    "ip netns exec lab-sw ethtool -K vpeer gro off; ip netns exec lab-sw ethtool -K vpeer gro on",
                ),
            ),
            // Out of reach: the veth's flag tells.
            (
                "unreachable, ndo-xmit",
                Some(0x67),
                Some(unreachable()),
                Level::Ok,
                "as the veth's XDP features say",
                None,
            ),
            (
                "unreachable, no ndo-xmit",
                Some(0x23),
                Some(unreachable()),
                Level::Warn,
                "the peer ifindex 8 in another namespace has neither",
                Some("in the peer's namespace: ethtool -K PEER gro off; ethtool -K PEER gro on"),
            ),
            (
                "old kernel, peer with XDP",
                None,
                Some(Peer {
                    napi: None,
                    xdp: Some(true),
                    ..peer(PeerNamespace::Same, Some(false))
                }),
                Level::Ok,
                "(it has an XDP program)",
                None,
            ),
            (
                "old kernel, peer without XDP",
                None,
                Some(Peer {
                    napi: None,
                    ..peer(PeerNamespace::Same, Some(false))
                }),
                Level::Warn,
                "cannot tell whether the peer vpeer has NAPI",
                Some("ethtool -K vpeer gro off"),
            ),
            (
                "no peer",
                Some(0x67),
                None,
                Level::Warn,
                "could not be found",
                Some("ethtool -K PEER gro off"),
            ),
        ];
        for (case, features, found, level, message, fix) in rows {
            let finding = super::peer("eth0", found.as_ref(), features);
            expect(case, &finding, level, message, fix);
        }
    }

    #[test]
    fn a_veth_peer_must_not_offload_transmit_checksums() {
        let rows = [
            (
                "off",
                Some(peer(PeerNamespace::Same, Some(false))),
                Level::Ok,
                "completes checksums itself",
                None,
            ),
            (
                "on, same namespace",
                Some(peer(PeerNamespace::Same, Some(true))),
                Level::Warn,
                "the peer vpeer offloads transmit checksums",
                Some("ethtool -K vpeer tx off"),
            ),
            (
                "on, named namespace",
                Some(peer(PeerNamespace::Named("lab-c".to_owned()), Some(true))),
                Level::Warn,
                "offloads transmit checksums",
                Some("ip netns exec lab-c ethtool -K vpeer tx off"),
            ),
            (
                "unreachable",
                Some(peer(PeerNamespace::Unreachable, None)),
                Level::Warn,
                "could not be checked",
                Some("in the peer's namespace: ethtool -K PEER tx off"),
            ),
            (
                "no peer",
                None,
                Level::Warn,
                "could not be found",
                Some("tx off"),
            ),
        ];
        for (case, found, level, message, fix) in rows {
            expect(
                case,
                &tx_checksum("eth0", found.as_ref()),
                level,
                message,
                fix,
            );
        }
    }
}
