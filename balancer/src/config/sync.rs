//! `[sync]`: sharing new flows with the other balancer hosts of an ECMP
//! group, so that a flow the routers move to another host keeps its
//! backend there too. Absent: nothing is shared.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::Deserialize;
use toml::Spanned;

use super::duration;

/// `[sync]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    /// Where this host receives its peers' flows (UDP): an address of
    /// this host on the network the peers share.
    pub listen: Spanned<SocketAddr>,
    /// The other hosts' `listen` addresses.
    pub peers: Vec<Spanned<SocketAddr>>,
    /// A file holding the secret every host of the group shares: each
    /// datagram carries a MAC made with it, and one without a valid MAC
    /// is dropped.
    pub key_file: PathBuf,
    /// Longest time a new flow waits to be sent with others in one
    /// datagram.
    #[serde(default = "default_batch_delay", deserialize_with = "duration")]
    pub batch_delay: Duration,
}

fn default_batch_delay() -> Duration {
    Duration::from_millis(2)
}

/// Longest `batch_delay` accepted: a flow must reach the peers before
/// the routers move it.
pub const MAX_BATCH_DELAY: Duration = Duration::from_millis(100);

/// Most peers: each new flow is sent to every one.
pub const MAX_PEERS: usize = 64;

impl SyncConfig {
    /// What is wrong with the section, as (span, message) pairs.
    pub fn problems(&self) -> Vec<(std::ops::Range<usize>, String)> {
        let mut out = Vec::new();
        let listen = *self.listen.get_ref();
        if listen.ip().is_unspecified() || listen.port() == 0 {
            out.push((
                self.listen.span(),
                format!(
                    "[sync] listen {listen} must be an address of this host and a port: the peers send to it"
                ),
            ));
        }
        if let std::net::IpAddr::V6(v6) = listen.ip()
            && v6.to_ipv4_mapped().is_some()
        {
            out.push((
                self.listen.span(),
                format!("[sync] listen {listen} is IPv4-mapped: write the IPv4 address"),
            ));
        }
        if self.peers.len() > MAX_PEERS {
            out.push((
                0..0,
                format!("[sync] has {} peers: at most {MAX_PEERS}", self.peers.len()),
            ));
        }
        for (i, peer) in self.peers.iter().enumerate() {
            let addr = *peer.get_ref();
            if addr == listen {
                out.push((
                    peer.span(),
                    format!("[sync] peer {addr} is this host's own listen address"),
                ));
            } else if self.peers[..i].iter().any(|p| *p.get_ref() == addr) {
                out.push((peer.span(), format!("[sync] peer {addr} is listed twice")));
            } else if addr.is_ipv4() != listen.is_ipv4() {
                out.push((
                    peer.span(),
                    format!(
                        "[sync] peer {addr} is not of the family of listen {listen}: the datagrams go from that socket"
                    ),
                ));
            } else if addr.ip().is_unspecified() || addr.port() == 0 {
                out.push((
                    peer.span(),
                    format!("[sync] peer {addr} must be an address and a port"),
                ));
            }
        }
        if self.key_file.as_os_str().is_empty() || self.key_file.is_relative() {
            out.push((
                0..0,
                format!(
                    "[sync] key_file {:?} must be an absolute path",
                    self.key_file.display().to_string()
                ),
            ));
        }
        if self.batch_delay > MAX_BATCH_DELAY {
            out.push((
                0..0,
                format!(
                    "[sync] batch_delay {} is longer than {}",
                    super::format_duration(self.batch_delay),
                    super::format_duration(MAX_BATCH_DELAY)
                ),
            ));
        }
        out
    }
}
