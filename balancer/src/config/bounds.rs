//! The documented bounds of the numeric keys (docs/configuration.md lists
//! each), with why each one is where it is.

use std::{net::IpAddr, time::Duration};

/// Smallest `ring_size`: the largest prime below 1024. A smaller ring
/// cannot share new flows fairly even between a few backends (13 slots
/// over 3 backends give one of them 5/13 of the flows instead of 1/3), and
/// a few KiB per VIP costs nothing.
pub const MIN_RING_SIZE: u32 = 1021;

/// How many ring slots per backend a Maglev ring needs for the shares of
/// new flows to follow the weights closely (the Maglev paper's rule of
/// thumb: more than 100 slots per backend keeps them within about 1 %).
/// Below it, `check-config` and the daemon warn.
pub const RING_SLOTS_PER_BACKEND: u64 = 100;

/// Largest `flow_table_size`: 64 Mi entries. The kernel refuses a hash map
/// of more than 2^31 buckets (E2BIG) and preallocates every entry of an LRU
/// hash: at 120 bytes an entry (40-byte `FlowKey`, 16-byte `FlowState`,
/// the kernel's element header and bucket), this many take 7.5 GiB, more
/// than a balancer host sensibly gives one table.
pub const MAX_FLOW_TABLE_SIZE: u32 = 64 << 20;

/// Shortest health-check `interval`: below it, checks of many backends
/// would cost more than they tell.
pub const MIN_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// Longest health-check `interval`: a backend would stay up for hours
/// after it died.
pub const MAX_CHECK_INTERVAL: Duration = Duration::from_secs(60 * 60);

/// Shortest health-check `timeout` (the longest is the `interval`): a
/// shorter one fails on the scheduling delay of a busy host alone.
pub const MIN_CHECK_TIMEOUT: Duration = Duration::from_millis(10);

/// Largest health-check `rise` and `fall`: with the longest interval, a
/// change of state already takes days to show.
pub const MAX_RISE_FALL: u32 = 100;

/// Why `address` cannot be a VIP's or a backend's address, or `None` when
/// it can: it must be one host's unicast address on a network, which the
/// unspecified, multicast, broadcast and loopback addresses are not.
/// IPv4-mapped IPv6 addresses are judged as the IPv4 address they carry.
pub fn unusable(address: IpAddr) -> Option<&'static str> {
    let address = address.to_canonical();
    if address.is_unspecified() {
        Some("is the unspecified address")
    } else if address.is_multicast() {
        Some("is a multicast address")
    } else if address.is_loopback() {
        Some("is a loopback address")
    } else if matches!(address, IpAddr::V4(v4) if v4.is_broadcast()) {
        Some("is the broadcast address")
    } else {
        None
    }
}
