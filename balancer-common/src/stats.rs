//! Global per-CPU packet counters of the datapath.
//!
//! The map is a `BPF_MAP_TYPE_PERCPU_ARRAY` of [`PacketCount`] indexed by a
//! [`Stat`] index: each CPU bumps its own slot without atomics, and
//! userspace sums the slots when it reads them.

/// Name of the per-CPU counter map.
pub const STATS_MAP: &str = "stats";

/// Index of a counter in [`STATS_MAP`].
///
/// A plain `u32` newtype rather than an enum: the value crosses into the
/// kernel as an array index, and every index below [`Stat::COUNT`] is valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Stat(pub u32);

impl Stat {
    /// Every frame the program saw, whatever it carried.
    pub const RX_TOTAL: Stat = Stat(0);
    /// Frames carrying IPv4 (after at most one 802.1Q tag).
    pub const RX_IPV4: Stat = Stat(1);
    /// Frames carrying IPv6 (after at most one 802.1Q tag).
    pub const RX_IPV6: Stat = Stat(2);
    /// Frames with any other EtherType (ARP, LLDP, ...).
    pub const RX_OTHER_L3: Stat = Stat(3);
    /// Frames too short to hold the Ethernet header (and tag) they claim.
    pub const RX_MALFORMED: Stat = Stat(4);

    /// Number of counters: the map's `max_entries`.
    pub const COUNT: u32 = 5;

    /// Every counter, in index order.
    pub const ALL: [Stat; Self::COUNT as usize] = [
        Self::RX_TOTAL,
        Self::RX_IPV4,
        Self::RX_IPV6,
        Self::RX_OTHER_L3,
        Self::RX_MALFORMED,
    ];

    /// Stable name of the counter, as userspace reports it.
    pub const fn name(self) -> &'static str {
        match self.0 {
            0 => "rx_total",
            1 => "rx_ipv4",
            2 => "rx_ipv6",
            3 => "rx_other_l3",
            4 => "rx_malformed",
            _ => "unknown",
        }
    }
}

/// Value of one counter slot: packets and bytes seen on one CPU.
///
/// Bytes are the frame length as XDP sees it (from the Ethernet header to
/// the end of the payload, without FCS).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketCount {
    /// Frames counted.
    pub packets: u64,
    /// Sum of the frames' lengths in bytes.
    pub bytes: u64,
}

const _: () = assert!(core::mem::size_of::<PacketCount>() == 16);

impl PacketCount {
    /// Sum of two counts, as when adding up the per-CPU slots of one counter.
    pub const fn merged(self, other: PacketCount) -> PacketCount {
        PacketCount {
            packets: self.packets.wrapping_add(other.packets),
            bytes: self.bytes.wrapping_add(other.bytes),
        }
    }
}

// SAFETY: `PacketCount` is `repr(C)`, made of plain integers with no padding,
// and valid for every bit pattern.
#[cfg(feature = "user")]
unsafe impl aya::Pod for PacketCount {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stat_has_a_distinct_name_and_index() {
        for (i, stat) in Stat::ALL.iter().enumerate() {
            assert_eq!(stat.0 as usize, i);
            assert_ne!(stat.name(), "unknown");
            for other in &Stat::ALL[..i] {
                assert_ne!(stat.name(), other.name());
            }
        }
    }

    #[test]
    fn merged_adds_packets_and_bytes() {
        let a = PacketCount {
            packets: 2,
            bytes: 100,
        };
        let b = PacketCount {
            packets: 3,
            bytes: 50,
        };
        assert_eq!(
            a.merged(b),
            PacketCount {
                packets: 5,
                bytes: 150
            }
        );
    }
}
