//! Per-source limits in the configuration: `[vip.limits]`, how many new
//! flows and packets a second each source prefix may send to the VIP.

use serde::Deserialize;
use toml::Spanned;

/// `[vip.limits]`. Absent rates limit nothing.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// New flows a second each source may start (TCP SYNs, and UDP
    /// datagrams of flows the connection table does not hold).
    pub new_flows: Option<Spanned<u32>>,
    /// New flows a source may start at once after a quiet spell; absent:
    /// one second's worth.
    pub new_flows_burst: Option<Spanned<u32>>,
    /// Packets a second each source may send, of any flow.
    pub packets: Option<Spanned<u32>>,
    /// Packets a source may send at once after a quiet spell; absent: one
    /// second's worth.
    pub packets_burst: Option<Spanned<u32>>,
    /// The leading bits of an IPv4 client's address that make its source
    /// (default [`DEFAULT_SOURCE_IPV4_PREFIX`]).
    pub ipv4_prefix: Option<Spanned<u8>>,
    /// The leading bits of an IPv6 client's address that make its source
    /// (default [`DEFAULT_SOURCE_IPV6_PREFIX`]): one host often holds a
    /// whole /64.
    pub ipv6_prefix: Option<Spanned<u8>>,
}

/// Prefix length of an IPv4 source when `ipv4_prefix` is absent: one
/// address.
pub const DEFAULT_SOURCE_IPV4_PREFIX: u8 = 32;
/// Prefix length of an IPv6 source when `ipv6_prefix` is absent: one
/// subnet, what one host or site is given.
pub const DEFAULT_SOURCE_IPV6_PREFIX: u8 = 64;
/// Largest rate accepted: one a nanosecond, what the datapath's clock can
/// tell apart.
pub const MAX_RATE: u32 = 1_000_000_000;

/// One limited quantity, defaults filled in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Tokens a second.
    pub per_second: u32,
    /// Tokens at once after a quiet spell.
    pub burst: u32,
}

impl LimitsConfig {
    /// The new-flow limit, if set.
    pub fn new_flow_limit(&self) -> Option<RateLimit> {
        rate(&self.new_flows, &self.new_flows_burst)
    }

    /// The packet limit, if set.
    pub fn packet_limit(&self) -> Option<RateLimit> {
        rate(&self.packets, &self.packets_burst)
    }

    /// The prefix length that makes a source of a VIP of the family `v4`
    /// says.
    pub fn prefix(&self, v4: bool) -> u8 {
        let (set, default) = if v4 {
            (&self.ipv4_prefix, DEFAULT_SOURCE_IPV4_PREFIX)
        } else {
            (&self.ipv6_prefix, DEFAULT_SOURCE_IPV6_PREFIX)
        };
        set.as_ref().map_or(default, |p| *p.get_ref())
    }
}

fn rate(per_second: &Option<Spanned<u32>>, burst: &Option<Spanned<u32>>) -> Option<RateLimit> {
    let per_second = *per_second.as_ref()?.get_ref();
    let burst = burst.as_ref().map_or(per_second, |b| *b.get_ref());
    Some(RateLimit { per_second, burst })
}
