//! Allow and deny lists: prefixes of client addresses, global or per VIP,
//! held in one longest-prefix-match trie (`access`) whose data is a scope
//! (a VIP index, or [`SCOPE_GLOBAL`]) followed by the address. A lookup
//! gives the most specific entry of its scope; the daemon leaves out allow
//! prefixes that a deny prefix of the same scope covers, so a deny always
//! wins, and gives every scope with an allow list a scope-wide
//! [`ACCESS_NOT_ALLOWED`] entry, so an address no allow prefix lists is
//! refused.

use crate::{Addr, stats::PacketCount};

/// What a trie entry matches: a scope, then an address (IPv4 as an
/// IPv4-mapped IPv6 address, as everywhere in the maps).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AccessData {
    pub scope: u32,
    pub addr: Addr,
}

const _: () = assert!(core::mem::size_of::<AccessData>() == 20);

/// An entry's key: its prefix length in bits over [`AccessData`] (the scope
/// always counts whole), and the data. The layout of the kernel's
/// `struct bpf_lpm_trie_key` followed by the data, as aya's `Key` has it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AccessKey {
    pub prefix_len: u32,
    pub data: AccessData,
}

const _: () = assert!(core::mem::size_of::<AccessKey>() == 24);

/// The scope of the global lists (no VIP has this index).
pub const SCOPE_GLOBAL: u32 = u32::MAX;
/// Bits of the scope at the head of every key.
const SCOPE_BITS: u32 = 32;
/// The bits an IPv4-mapped address spends before its IPv4 part.
const V4_MAPPED_BITS: u32 = 96;

/// The entry lists a denied prefix: its packets are dropped.
pub const ACCESS_DENY: u32 = 1;
/// The entry lists an allowed prefix.
pub const ACCESS_ALLOW: u32 = 2;
/// The scope-wide entry of a scope with an allow list: an address no allow
/// prefix lists is refused.
pub const ACCESS_NOT_ALLOWED: u32 = 3;
/// The entry lists a prefix exempt from per-source limits, in an exempt
/// scope ([`crate::limit::SCOPE_EXEMPT_GLOBAL`],
/// [`crate::limit::exempt_scope`]): exempt lists have scopes of their own,
/// so that an exempt prefix never hides a deny.
pub const ACCESS_EXEMPT: u32 = 4;

impl AccessKey {
    /// The key that looks address `addr` up in `scope`.
    #[inline(always)]
    pub const fn lookup(scope: u32, addr: Addr) -> AccessKey {
        AccessKey {
            prefix_len: SCOPE_BITS + 128,
            data: AccessData { scope, addr },
        }
    }

    /// The entry of prefix `addr`/`len` in `scope`; `v4`: `addr` is an
    /// IPv4-mapped address and `len` counts IPv4 bits.
    pub const fn prefix(scope: u32, addr: Addr, len: u8, v4: bool) -> AccessKey {
        let bits = if v4 { V4_MAPPED_BITS } else { 0 };
        AccessKey {
            prefix_len: SCOPE_BITS + bits + len as u32,
            data: AccessData { scope, addr },
        }
    }

    /// The scope-wide entry of `scope`: every address.
    pub const fn scope(scope: u32) -> AccessKey {
        AccessKey {
            prefix_len: SCOPE_BITS,
            data: AccessData {
                scope,
                addr: [0; 4],
            },
        }
    }
}

/// Packets the lists dropped for one VIP (or for no VIP), on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AccessCounters {
    /// Denied by the global deny list.
    pub global_deny: PacketCount,
    /// Denied by the VIP's own deny list.
    pub vip_deny: PacketCount,
    /// Listed by no allow prefix, where an allow list exists.
    pub not_allowed: PacketCount,
}

const _: () = assert!(core::mem::size_of::<AccessCounters>() == 48);

impl AccessCounters {
    /// Sum of two counts, as when adding up the per-CPU slots.
    pub const fn merged(self, other: AccessCounters) -> AccessCounters {
        AccessCounters {
            global_deny: self.global_deny.merged(other.global_deny),
            vip_deny: self.vip_deny.merged(other.vip_deny),
            not_allowed: self.not_allowed.merged(other.not_allowed),
        }
    }
}

/// Most entries of the trie: prefixes over every list, and one scope-wide
/// entry per scope with an allow list.
pub const ACCESS_ENTRIES: u32 = 65_536;

/// The slot of `access_stats` for packets whose VIP was not looked up:
/// to an address none of whose VIPs has lists of its own (the global lists
/// apply), or to no VIP's port. VIP `i`, with lists of its own, counts in
/// slot `i`.
pub const ACCESS_NO_VIP: u32 = crate::maps::MAX_VIPS;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_lengths_count_the_scope_and_the_mapped_bits() {
        assert_eq!(AccessKey::lookup(3, [0; 4]).prefix_len, 160);
        assert_eq!(AccessKey::prefix(3, [0; 4], 24, true).prefix_len, 152);
        assert_eq!(AccessKey::prefix(3, [0; 4], 48, false).prefix_len, 80);
        assert_eq!(AccessKey::scope(SCOPE_GLOBAL).prefix_len, 32);
    }
}
