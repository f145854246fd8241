//! Virtual IPs: what the datapath matches packets against.

use crate::Addr;

/// A VIP: address, port and protocol. Port 0 takes every port of the
/// address and protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipKey {
    pub addr: Addr,
    /// Network byte order.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

const _: () = assert!(core::mem::size_of::<VipKey>() == 20);

impl VipKey {
    /// The key of the VIP at `addr`, `port` (network byte order; 0 for
    /// every port) and protocol `proto`.
    #[inline(always)]
    pub const fn new(addr: Addr, port: u16, proto: u8) -> VipKey {
        VipKey {
            addr,
            port,
            proto,
            _pad: 0,
        }
    }
}

/// What the datapath knows of a VIP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipInfo {
    /// Index of the VIP's ring in `rings_mm`, of its policy and of its
    /// counters.
    pub index: u32,
    /// The scheduler (`SCHED_*`, under [`VIP_SCHEDULER`]) and
    /// [`VIP_PERSIST`].
    pub flags: u32,
}

const _: () = assert!(core::mem::size_of::<VipInfo>() == 8);

impl VipInfo {
    /// The VIP's scheduler (`SCHED_*`).
    #[inline(always)]
    pub const fn scheduler(&self) -> u32 {
        scheduler(self.flags)
    }

    /// Whether the VIP's ring has the list layout rather than Maglev's.
    #[inline(always)]
    pub const fn has_list(&self) -> bool {
        has_list(self.flags)
    }

    /// Whether the datapath counts the active connections of the VIP's
    /// backends.
    #[inline(always)]
    pub const fn counts_connections(&self) -> bool {
        counts_connections(self.flags)
    }

    /// Whether new flows of a client keep the backend it last used.
    #[inline(always)]
    pub const fn persists(&self) -> bool {
        self.flags & VIP_PERSIST != 0
    }

    /// Whether the VIP's packets reach their backend by NAT ([`VIP_NAT`]).
    #[inline(always)]
    pub const fn is_nat(&self) -> bool {
        self.flags & VIP_NAT != 0
    }

    /// Whether a NAT VIP's packets take a source of the SNAT pool
    /// ([`VIP_SNAT`]).
    #[inline(always)]
    pub const fn snat(&self) -> bool {
        self.flags & VIP_SNAT != 0
    }

    /// Whether a flow's backend can be computed again from any of its
    /// packets (a hashing scheduler without persistence), so that its
    /// first packet needs no state; otherwise the choice is kept from the
    /// first packet in the handshake table.
    #[inline(always)]
    pub const fn recomputes(&self) -> bool {
        !has_list(self.flags) && !self.persists()
    }
}

/// The bits of [`VipInfo::flags`] that hold the VIP's scheduler: how a new
/// flow picks its backend.
pub const VIP_SCHEDULER: u32 = 0xff;
/// Maglev consistent hashing of the 5-tuple; the VIP's ring is a Maglev
/// ring of the settings' ring size.
pub const SCHED_MAGLEV: u32 = 0;
/// Maglev consistent hashing of the client address alone (source
/// affinity). The value is that of the flag that meant it before other
/// schedulers existed, so pinned VIPs keep their meaning.
pub const SCHED_SOURCE_HASH: u32 = 1;
/// Smooth weighted round robin: the VIP's ring is a list ring (see
/// [`LIST_LEN_SLOT`]) holding one cycle of the weighted order, walked by a
/// per-CPU cursor.
pub const SCHED_ROUND_ROBIN: u32 = 2;
/// The better of two random backends of the VIP's list ring by active
/// connections divided by weight (power of two choices).
pub const SCHED_LEAST_CONNECTIONS: u32 = 3;
/// The better of two random backends of the VIP's list ring by smoothed
/// health-check latency times (active connections + 1), divided by weight.
pub const SCHED_LEAST_LATENCY: u32 = 4;
/// New flows from a client address go to the backend that address last
/// used, while the VIP's [`VipPolicy`] timeout has not run out.
pub const VIP_PERSIST: u32 = 1 << 8;
/// Packets reach the backend by NAT: destination rewritten to the
/// backend's address and port, the replies coming back through the
/// balancer (see [`crate::nat`]).
pub const VIP_NAT: u32 = 1 << 9;
/// With [`VIP_NAT`]: the source rewritten to an address and port of the
/// SNAT pool. Without it, the backend sees the client's address, and its
/// replies come back because its route to the clients is the balancer.
pub const VIP_SNAT: u32 = 1 << 10;

/// The scheduler of a VIP with `flags`.
#[inline(always)]
pub const fn scheduler(flags: u32) -> u32 {
    flags & VIP_SCHEDULER
}

/// Whether the ring of a VIP with `flags` has the list layout (slot
/// [`LIST_LEN_SLOT`] holds the number of entries, slots 1 to n the
/// backend ids) rather than Maglev's.
#[inline(always)]
pub const fn has_list(flags: u32) -> bool {
    scheduler(flags) > SCHED_SOURCE_HASH
}

/// Whether the datapath counts the active connections of a VIP's
/// backends (the least-* schedulers compare them).
#[inline(always)]
pub const fn counts_connections(flags: u32) -> bool {
    let s = scheduler(flags);
    s == SCHED_LEAST_CONNECTIONS || s == SCHED_LEAST_LATENCY
}

/// The slot of a list ring that holds its number of entries n; the
/// entries follow it, in slots 1 to n (see [`list_slot`]).
pub const LIST_LEN_SLOT: u32 = 0;
/// Most entries of a list ring (a round-robin cycle or a member list):
/// one less than the default ring size (held to it in [`crate::maps`]), so
/// that the length and the entries fill a ring of the default size
/// exactly.
pub const MAX_LIST_LEN: u32 = 65_536;

/// The slot of a list ring that holds entry `i` (from 0).
#[inline(always)]
pub const fn list_slot(i: u32) -> u32 {
    LIST_LEN_SLOT + 1 + i
}

/// The number of entries of list ring `ring` when it is well formed: a
/// length between 1 and [`MAX_LIST_LEN`] in its length slot, followed by
/// exactly that many entries.
pub fn list_len(ring: &[u32]) -> Option<u32> {
    let len = *ring.get(LIST_LEN_SLOT as usize)?;
    if len == 0 || len > MAX_LIST_LEN {
        return None;
    }
    (ring.len() == list_slot(len) as usize).then_some(len)
}

/// Writes the list ring of `entries` into `ring` (its length slot, then
/// the entries), which must hold exactly `entries.len() + 1` slots.
pub fn fill_list(ring: &mut [u32], entries: &[u32]) {
    let (len, rest) = ring.split_at_mut(list_slot(0) as usize);
    len[LIST_LEN_SLOT as usize] = entries.len() as u32;
    rest.copy_from_slice(entries);
}

/// What the datapath needs of a VIP beyond [`VipInfo`], read only for VIPs
/// whose flags ask for it (persistence) and, at most once a second per
/// flow, to keep a client's persistence alive.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipPolicy {
    /// How long after its last packet a client keeps its backend; 0: no
    /// persistence.
    pub persist_ns: u64,
    /// Mask applied to a client address to key its persistence: all ones
    /// for IPv4, the prefix (64 bits by default) for IPv6.
    pub client_mask: Addr,
}

const _: () = assert!(core::mem::size_of::<VipPolicy>() == 24);

/// An address and protocol that carry at least one VIP.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AddrKey {
    pub addr: Addr,
    pub proto: u8,
    pub _pad1: u8,
    pub _pad2: u16,
}

const _: () = assert!(core::mem::size_of::<AddrKey>() == 20);

impl AddrKey {
    /// The key of address `addr` for protocol `proto`.
    #[inline(always)]
    pub const fn new(addr: Addr, proto: u8) -> AddrKey {
        AddrKey {
            addr,
            proto,
            _pad1: 0,
            _pad2: 0,
        }
    }
}

/// What the datapath knows of a VIP address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddrInfo {
    /// Unused, zero: it named the VIP that placed fragments by address
    /// before fragments followed their first one. Kept so that the pinned
    /// map keeps its layout.
    pub _reserved: u32,
    /// [`ADDR_HAS_WILDCARD`], [`ADDR_VIP_ACCESS`], [`ADDR_VIP_LIMITS`],
    /// [`ADDR_NAT`], [`ADDR_SNAT`].
    pub flags: u32,
}

const _: () = assert!(core::mem::size_of::<AddrInfo>() == 8);

impl AddrInfo {
    /// Whether the address has a port-0 VIP for its protocol.
    #[inline(always)]
    pub const fn has_wildcard(&self) -> bool {
        self.flags & ADDR_HAS_WILDCARD != 0
    }

    /// Whether a VIP of the address has allow or deny lists of its own.
    #[inline(always)]
    pub const fn has_vip_access(&self) -> bool {
        self.flags & ADDR_VIP_ACCESS != 0
    }

    /// Whether a VIP of the address has per-source limits.
    #[inline(always)]
    pub const fn has_vip_limits(&self) -> bool {
        self.flags & ADDR_VIP_LIMITS != 0
    }

    /// Whether a VIP of the address forwards by NAT ([`ADDR_NAT`]).
    #[inline(always)]
    pub const fn has_nat(&self) -> bool {
        self.flags & ADDR_NAT != 0
    }

    /// Whether the address is in the SNAT pool ([`ADDR_SNAT`]).
    #[inline(always)]
    pub const fn is_snat(&self) -> bool {
        self.flags & ADDR_SNAT != 0
    }
}

/// A port-0 VIP exists for this address and protocol: a packet to a port
/// without a VIP of its own goes to it. (Bit 1 named a list ring for
/// fragments once; it is ignored.)
pub const ADDR_HAS_WILDCARD: u32 = 1;
/// A VIP of this address and protocol has allow or deny lists of its own:
/// its packets are looked up in the VIP's scope of the `access` trie.
pub const ADDR_VIP_ACCESS: u32 = 1 << 2;
/// A VIP of this address and protocol has per-source limits: its packets
/// are looked up in `vip_limits` (see [`crate::limit`]).
pub const ADDR_VIP_LIMITS: u32 = 1 << 3;
/// A VIP of this address and protocol forwards by NAT: its packets are
/// looked up among NAT connections first.
pub const ADDR_NAT: u32 = 1 << 4;
/// The address is in the SNAT pool: a packet to it is looked up among the
/// NAT connections' replies (and passes when none matches: the address may
/// be the host's own).
pub const ADDR_SNAT: u32 = 1 << 5;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_ring_is_its_length_then_its_entries() {
        let mut ring = [9; 4];
        fill_list(&mut ring, &[7, 8, 7]);
        assert_eq!(ring, [3, 7, 8, 7]);
        assert_eq!(list_len(&ring), Some(3));
        assert_eq!(ring[list_slot(1) as usize], 8);
    }

    #[test]
    fn malformed_lists_have_no_length() {
        assert_eq!(list_len(&[]), None);
        assert_eq!(list_len(&[0]), None);
        assert_eq!(list_len(&[2, 1]), None);
        assert_eq!(list_len(&[1, 1, 1]), None);
        assert_eq!(list_len(&[u32::MAX, 1]), None);
        let longest = vec![MAX_LIST_LEN; MAX_LIST_LEN as usize + 1];
        assert_eq!(list_len(&longest), Some(MAX_LIST_LEN));
        let too_long = vec![MAX_LIST_LEN + 1; MAX_LIST_LEN as usize + 2];
        assert_eq!(list_len(&too_long), None);
    }

    #[test]
    fn flag_predicates_read_their_bits() {
        let vip = |flags| VipInfo { index: 0, flags };
        assert!(vip(SCHED_ROUND_ROBIN | VIP_PERSIST).persists());
        assert!(vip(SCHED_ROUND_ROBIN).has_list());
        assert!(!vip(SCHED_SOURCE_HASH | VIP_PERSIST).has_list());
        assert!(vip(SCHED_LEAST_LATENCY).counts_connections());
        assert!(!vip(SCHED_ROUND_ROBIN).counts_connections());
        assert_eq!(
            vip(SCHED_LEAST_CONNECTIONS | VIP_PERSIST).scheduler(),
            SCHED_LEAST_CONNECTIONS
        );
        let addr = AddrInfo {
            _reserved: 0,
            flags: ADDR_HAS_WILDCARD,
        };
        assert!(addr.has_wildcard());
    }
}
