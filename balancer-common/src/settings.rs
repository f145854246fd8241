//! Run-time settings of the datapath, in a one-entry array map.

/// What the daemon tells the datapath beyond VIPs and backends.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// Seed of every flow hash. Balancer hosts behind one ECMP group share
    /// it, so they pick the same backend for a new flow.
    pub hash_seed: u32,
    /// Number of slots of every Maglev ring.
    pub ring_size: u32,
    /// A TCP flow idle longer than this picks its backend anew.
    pub tcp_idle_ns: u64,
    /// A UDP flow idle longer than this picks its backend anew.
    pub udp_idle_ns: u64,
    /// What one new entry of the connection table costs a CPU's insert
    /// budget (see [`crate::budget`]); 0: no budget.
    pub insert_cost_ns: u64,
    /// [`SETTINGS_GLOBAL_ACCESS`], [`SETTINGS_GLOBAL_EXEMPT`], and in bits
    /// 32 to 51 the generation of the allow, deny and exempt lists
    /// ([`Settings::access_generation`]).
    pub flags: u64,
    /// How long a NAT connection between its first packet and its
    /// backend's answer may stay idle (see [`crate::nat`]).
    pub nat_handshake_ns: u64,
    /// How long a NAT connection either side ended may stay idle.
    pub nat_closing_ns: u64,
    /// Room for settings to come, so that the pinned map keeps its layout.
    pub _reserved: [u64; 1],
}

/// The global allow or deny list has entries: every packet to a VIP address
/// is looked up in it.
pub const SETTINGS_GLOBAL_ACCESS: u64 = 1;
/// The global exempt list has entries: a new source of a VIP with
/// per-source limits is looked up in it.
pub const SETTINGS_GLOBAL_EXEMPT: u64 = 1 << 1;
/// [`Settings::flags`]: tell the daemon of every new connection-table
/// entry ([`crate::flow::FlowEvent`]), to share with peer hosts.
pub const SETTINGS_SHARE_FLOWS: u64 = 1 << 2;
/// [`Settings::flags`]: a NAT VIP without source NAT exists, so the
/// backends' replies go to the clients' own addresses: a TCP or UDP packet
/// to no VIP or SNAT address is looked up among NAT connections before it
/// passes.
pub const SETTINGS_NAT_CLIENT_SOURCE: u64 = 1 << 3;
/// Where [`Settings::flags`] keeps the lists' generation.
const ACCESS_GENERATION_SHIFT: u64 = 32;

const _: () = assert!(core::mem::size_of::<Settings>() == 64);

impl Settings {
    /// Whether the global lists have entries ([`SETTINGS_GLOBAL_ACCESS`]).
    #[inline(always)]
    pub const fn global_access(&self) -> bool {
        self.flags & SETTINGS_GLOBAL_ACCESS != 0
    }

    /// Whether the global exempt list has entries
    /// ([`SETTINGS_GLOBAL_EXEMPT`]).
    #[inline(always)]
    pub const fn global_exempt(&self) -> bool {
        self.flags & SETTINGS_GLOBAL_EXEMPT != 0
    }

    /// Whether new entries are told to the daemon
    /// ([`SETTINGS_SHARE_FLOWS`]).
    #[inline(always)]
    pub const fn shares_flows(&self) -> bool {
        self.flags & SETTINGS_SHARE_FLOWS != 0
    }

    /// Whether a NAT VIP without source NAT exists
    /// ([`SETTINGS_NAT_CLIENT_SOURCE`]).
    #[inline(always)]
    pub const fn nat_client_source(&self) -> bool {
        self.flags & SETTINGS_NAT_CLIENT_SOURCE != 0
    }

    /// The generation of the allow, deny and exempt lists in force: never
    /// 0 while lists have entries, and another one whenever they change, so
    /// that a flow admitted under other lists (or a source found exempt
    /// under them) is checked again.
    #[inline(always)]
    pub const fn access_generation(&self) -> u32 {
        ((self.flags >> ACCESS_GENERATION_SHIFT) as u32) & crate::flow::ACCESS_GENERATION_MASK
    }

    /// These settings with lists of `generation`.
    pub const fn with_access_generation(mut self, generation: u32) -> Settings {
        let mask = (crate::flow::ACCESS_GENERATION_MASK as u64) << ACCESS_GENERATION_SHIFT;
        let bits =
            ((generation & crate::flow::ACCESS_GENERATION_MASK) as u64) << ACCESS_GENERATION_SHIFT;
        self.flags = (self.flags & !mask) | bits;
        self
    }

    /// How long a flow of IP protocol `proto` may stay idle before it picks
    /// its backend anew: the TCP timeout for TCP, the UDP one otherwise.
    #[inline(always)]
    pub const fn idle_ns(&self, proto: u8) -> u64 {
        if proto == crate::proto::TCP {
            self.tcp_idle_ns
        } else {
            self.udp_idle_ns
        }
    }

    /// Whether a flow of IP protocol `proto` last seen at `last_seen_ns`
    /// has been idle past its timeout at `now`.
    #[inline(always)]
    pub const fn expired(&self, proto: u8, last_seen_ns: u64, now: u64) -> bool {
        now.saturating_sub(last_seen_ns) > self.idle_ns(proto)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto;

    #[test]
    fn tcp_has_its_own_idle_timeout_every_other_protocol_the_udp_one() {
        let s = Settings {
            tcp_idle_ns: 60,
            udp_idle_ns: 10,
            ..Settings::default()
        };
        assert_eq!(s.idle_ns(proto::TCP), 60);
        assert_eq!(s.idle_ns(proto::UDP), 10);
        assert_eq!(s.idle_ns(proto::ICMP), 10);
        assert!(!s.expired(proto::TCP, 100, 160));
        assert!(s.expired(proto::TCP, 100, 161));
        assert!(s.expired(proto::UDP, 100, 111));
        assert!(
            !s.expired(proto::UDP, 200, 100),
            "a clock behind the entry is not idle"
        );
    }
}
