//! Per-source limits: how many new flows and how many packets a second a
//! source prefix (a client address masked to `/32` for IPv4, `/64` for
//! IPv6 by default) may send to one VIP before its excess is dropped.
//!
//! Each VIP's limits are a [`SourceLimit`] in `vip_limits`, by VIP index;
//! an address whose VIPs have any is marked with
//! [`crate::vip::ADDR_VIP_LIMITS`], so packets to other addresses pay one
//! flag test. Each source's buckets are a [`SourceSlot`] of the `sources`
//! table, shared between CPUs so that a source's rate is one whatever CPU
//! its flows land on. The table is an array of [`SOURCE_SLOTS`] slots in
//! sets of [`SOURCE_WAYS`], as a CPU cache is: a source lives in one of
//! the two slots of the set its hash names ([`source_set`]), so finding it
//! costs a hash and two array reads, no hash-map lookup. A source new to a
//! full set takes the slot of the source that owes less (an idle one
//! first).
//!
//! A bucket is a token bucket kept in its virtual-time form (the generic
//! cell rate algorithm): instead of tokens and a refill time it holds the
//! time at which it would be full again. A packet spends one token by
//! moving that time one interval (a second divided by the rate) ahead; it
//! is refused when that would put it more than the burst ahead of now.
//! One `u64` per bucket, an addition and a comparison per packet, no
//! division.
//!
//! Evicting a source (its set is full of other sources) forgets what it
//! owed: its buckets start full again. A flood of spoofed sources can make
//! the limits more lenient for a while, never stricter, and never touches
//! a connection.

use crate::{Addr, stats::PacketCount};

/// A rate and its burst, as the datapath spends them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rate {
    /// Nanoseconds between two tokens at the rate (a second divided by
    /// the rate); 0: no limit.
    pub interval_ns: u64,
    /// How far ahead of now a bucket may run: the burst times the
    /// interval, at least [`MIN_BURST_NS`].
    pub burst_ns: u64,
}

const _: () = assert!(core::mem::size_of::<Rate>() == 16);

/// The smallest burst window: the datapath's clock
/// (`bpf_ktime_get_coarse_ns`) advances in steps of one kernel tick, up to
/// 10 ms, and a bucket must be able to run a whole step ahead or its rate
/// falls short of the limit.
pub const MIN_BURST_NS: u64 = 10_000_000;

const SECOND_NS: u64 = 1_000_000_000;

impl Rate {
    /// `per_second` tokens a second with a burst of `burst` tokens (at
    /// least one); 0 tokens a second is no limit.
    pub const fn new(per_second: u32, burst: u32) -> Rate {
        if per_second == 0 {
            return Rate {
                interval_ns: 0,
                burst_ns: 0,
            };
        }
        let interval_ns = SECOND_NS / per_second as u64;
        let interval_ns = if interval_ns == 0 { 1 } else { interval_ns };
        let burst = if burst == 0 { 1 } else { burst as u64 };
        let burst_ns = interval_ns.saturating_mul(burst);
        Rate {
            interval_ns,
            burst_ns: if burst_ns < MIN_BURST_NS {
                MIN_BURST_NS
            } else {
                burst_ns
            },
        }
    }

    /// Whether the rate limits anything.
    #[inline(always)]
    pub const fn on(&self) -> bool {
        self.interval_ns != 0
    }

    /// Spends one token at `now` from a bucket full again at `full_ns`:
    /// whether the token was there, and the bucket's time to keep. A
    /// bucket never owes more than the burst and a clock step
    /// ([`MIN_BURST_NS`], for CPUs whose clocks read a tick apart): one that
    /// does (its rate or burst was lowered, or it came from another
    /// source) owes that much. No limit spends nothing.
    #[inline(always)]
    pub const fn spend(&self, full_ns: u64, now: u64) -> (bool, u64) {
        if self.interval_ns == 0 {
            return (true, full_ns);
        }
        let most = now
            .saturating_add(self.burst_ns)
            .saturating_add(MIN_BURST_NS);
        let from = if full_ns > now { full_ns } else { now };
        let from = if from > most { most } else { from };
        let next = from.saturating_add(self.interval_ns);
        if next - now > self.burst_ns {
            (false, from)
        } else {
            (true, next)
        }
    }
}

/// A VIP's per-source limits (`vip_limits`, by VIP index; zeros: none).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceLimit {
    /// New flows a source may start: TCP SYNs, and UDP datagrams, of flows
    /// the connection table does not hold.
    pub new_flows: Rate,
    /// Packets a source may send, of any flow.
    pub packets: Rate,
    /// Mask applied to a client address to make its source: all ones
    /// over the IPv4-mapped prefix and the IPv4 prefix length for an IPv4
    /// VIP, the IPv6 prefix for an IPv6 one.
    pub source_mask: Addr,
    /// [`LIMIT_OWN_EXEMPT`].
    pub flags: u32,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<SourceLimit>() == 56);

/// The VIP has an exempt list of its own (scope [`exempt_scope`] of the
/// `access` trie).
pub const LIMIT_OWN_EXEMPT: u32 = 1;

impl SourceLimit {
    /// Whether the VIP limits anything.
    #[inline(always)]
    pub const fn on(&self) -> bool {
        self.new_flows.on() || self.packets.on()
    }

    /// Whether the VIP has an exempt list of its own.
    #[inline(always)]
    pub const fn own_exempt(&self) -> bool {
        self.flags & LIMIT_OWN_EXEMPT != 0
    }

    /// The source of client `addr`: the address under the mask.
    #[inline(always)]
    pub const fn source(&self, addr: &Addr) -> Addr {
        let m = &self.source_mask;
        [
            addr[0] & m[0],
            addr[1] & m[1],
            addr[2] & m[2],
            addr[3] & m[3],
        ]
    }
}

/// One slot of the `sources` table: a source of one VIP, its buckets, and
/// whether it is exempt. All zeros: empty.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceSlot {
    /// The client address under the VIP's [`SourceLimit::source_mask`].
    pub source: Addr,
    /// The VIP's index plus one (0: an empty slot).
    pub owner: u32,
    /// The generation of the lists (see
    /// [`crate::settings::Settings::access_generation`]) under which
    /// `exempt` was decided: other lists decide again.
    pub generation: u32,
    /// 1: an exempt list names the source, no limit applies.
    pub exempt: u32,
    pub _pad: u32,
    /// When the new-flow bucket is full again (see [`Rate::spend`]).
    pub new_flows_ns: u64,
    /// When the packet bucket is full again.
    pub packets_ns: u64,
}

const _: () = assert!(core::mem::size_of::<SourceSlot>() == 48);

impl SourceSlot {
    /// A slot for `source` of VIP `vip` with full buckets, exempt or not
    /// as decided under lists of `generation`.
    #[inline(always)]
    pub const fn new(source: Addr, vip: u32, generation: u32, exempt: bool) -> SourceSlot {
        SourceSlot {
            source,
            owner: vip + 1,
            generation,
            exempt: exempt as u32,
            _pad: 0,
            new_flows_ns: 0,
            packets_ns: 0,
        }
    }

    /// Whether the slot holds `source` of VIP `vip`.
    #[inline(always)]
    pub const fn holds(&self, source: &Addr, vip: u32) -> bool {
        self.owner == vip + 1
            && self.source[0] == source[0]
            && self.source[1] == source[1]
            && self.source[2] == source[2]
            && self.source[3] == source[3]
    }

    /// When both of its buckets are full again: what the source owes, as
    /// a time. Empty, or at or before now: it owes nothing.
    #[inline(always)]
    pub const fn owed_until(&self) -> u64 {
        if self.new_flows_ns > self.packets_ns {
            self.new_flows_ns
        } else {
            self.packets_ns
        }
    }

    /// Whether the slot holds a source that owes tokens at `now` (one a
    /// fresh slot would not stand for).
    pub const fn active(&self, now: u64) -> bool {
        self.owner != 0 && self.owed_until() > now
    }
}

/// Slots of the `sources` table, over every VIP with limits: 65,536 (3
/// MiB), in sets of [`SOURCE_WAYS`].
pub const SOURCE_SLOTS: u32 = 65_536;
/// Slots of one set: a source may live in either.
pub const SOURCE_WAYS: u32 = 2;

/// The first slot of the set of `source` of VIP `vip` under hash seed
/// `seed`: a multiplicative hash of the address words and the VIP, cheap
/// enough for every packet (the datapath computes it for each packet of
/// a VIP with limits).
#[inline(always)]
pub const fn source_set(source: &Addr, vip: u32, seed: u32) -> u32 {
    const K: u32 = 0x9e37_79b1;
    let mut h = seed ^ vip.wrapping_mul(K);
    h = (h ^ source[0]).wrapping_mul(K).rotate_left(13);
    h = (h ^ source[1]).wrapping_mul(K).rotate_left(13);
    h = (h ^ source[2]).wrapping_mul(K).rotate_left(13);
    h = (h ^ source[3]).wrapping_mul(K);
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    // The high bits, which every bit of the words reached.
    (h >> (32 - SET_BITS)) * SOURCE_WAYS
}

/// Bits of a set's number: the table holds 2^SET_BITS sets.
const SET_BITS: u32 = (SOURCE_SLOTS / SOURCE_WAYS).trailing_zeros();
const _: () = assert!(1 << SET_BITS == SOURCE_SLOTS / SOURCE_WAYS);

/// Packets the limits dropped for one VIP, on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LimitCounters {
    /// New flows over their source's new-flow rate.
    pub new_flows: PacketCount,
    /// Packets over their source's packet rate.
    pub packets: PacketCount,
}

const _: () = assert!(core::mem::size_of::<LimitCounters>() == 32);

impl LimitCounters {
    /// Sum of two counts, as when adding up the per-CPU slots.
    pub const fn merged(self, other: LimitCounters) -> LimitCounters {
        LimitCounters {
            new_flows: self.new_flows.merged(other.new_flows),
            packets: self.packets.merged(other.packets),
        }
    }
}

/// The `access` scope of the global exempt list.
pub const SCOPE_EXEMPT_GLOBAL: u32 = crate::access::SCOPE_GLOBAL - 1;
/// The first `access` scope of the VIPs' own exempt lists.
const EXEMPT_SCOPES: u32 = 1 << 31;

// VIP scopes, exempt scopes and the global ones never meet.
const _: () = assert!(crate::maps::MAX_VIPS <= EXEMPT_SCOPES);
const _: () = assert!(EXEMPT_SCOPES + crate::maps::MAX_VIPS < SCOPE_EXEMPT_GLOBAL);

/// The `access` scope of the exempt list of VIP `vip`.
#[inline(always)]
pub const fn exempt_scope(vip: u32) -> u32 {
    EXEMPT_SCOPES + vip
}

/// Whether `scope` is an exempt list's (the global one or a VIP's).
pub const fn is_exempt_scope(scope: u32) -> bool {
    scope == SCOPE_EXEMPT_GLOBAL
        || (scope >= EXEMPT_SCOPES && scope < EXEMPT_SCOPES + crate::maps::MAX_VIPS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A case: its name, the rate (per second, burst), then (time,
    /// admitted) for each token tried.
    type Case = (&'static str, (u32, u32), &'static [(u64, bool)]);

    const MS: u64 = 1_000_000;

    const CASES: &[Case] = &[
        (
            "no limit admits everything",
            (0, 0),
            &[(0, true), (0, true), (0, true)],
        ),
        (
            "a burst of three, then one every interval",
            (10, 3),
            &[
                (1_000 * MS, true),
                (1_000 * MS, true),
                (1_000 * MS, true),
                (1_000 * MS, false),
                (1_099 * MS, false),
                (1_100 * MS, true),
                (1_100 * MS, false),
            ],
        ),
        (
            "a quiet spell refills no more than the burst",
            (10, 2),
            &[
                (5_000 * MS, true),
                (5_000 * MS, true),
                (5_000 * MS, false),
                (60_000 * MS, true),
                (60_000 * MS, true),
                (60_000 * MS, false),
            ],
        ),
        (
            "a burst under a clock step is raised to one step",
            (1_000, 1),
            &[
                (7_000 * MS, true),
                (7_000 * MS, true),
                (7_000 * MS, true),
                (7_000 * MS, true),
                (7_000 * MS, true),
                (7_000 * MS, true),
                (7_000 * MS, true),
                (7_000 * MS, true),
                (7_000 * MS, true),
                (7_000 * MS, true),
                (7_000 * MS, false),
            ],
        ),
        (
            "a clock a tick behind earns nothing",
            (10, 1),
            &[
                (3_000 * MS, true),
                (2_995 * MS, false),
                (3_000 * MS, false),
                (3_100 * MS, true),
            ],
        ),
    ];

    #[test]
    fn a_bucket_admits_its_rate_and_burst_and_no_more() {
        for (name, (rate, burst), tries) in CASES {
            let rate = Rate::new(*rate, *burst);
            let mut full = 0;
            for (i, (now, admitted)) in tries.iter().enumerate() {
                let (got, kept) = rate.spend(full, *now);
                assert_eq!(got, *admitted, "{name}: try {i}");
                full = kept;
            }
        }
    }

    #[test]
    fn a_bucket_owes_no_more_than_its_burst() {
        // Owed a minute under a burst of 60 s, then the burst is lowered
        // to one token: it owes one token's time, not the minute.
        let lowered = Rate::new(1, 1);
        let now = 100 * SECOND_NS;
        let most = now + SECOND_NS + MIN_BURST_NS;
        assert_eq!(lowered.spend(now + 60 * SECOND_NS, now), (false, most));
        let later = now + SECOND_NS + MIN_BURST_NS;
        assert_eq!(lowered.spend(most, later), (true, later + SECOND_NS));
    }

    #[test]
    fn rates_become_intervals_without_rounding_to_free() {
        assert_eq!(Rate::new(1, 1).interval_ns, 1_000_000_000);
        assert_eq!(Rate::new(1, 1).burst_ns, 1_000_000_000);
        assert_eq!(Rate::new(3, 0).burst_ns, 333_333_333, "a burst of 1");
        assert_eq!(Rate::new(u32::MAX, 1).interval_ns, 1);
        assert!(!Rate::new(0, 5).on());
    }

    #[test]
    fn sets_start_at_even_slots_and_spread_sources() {
        let mut used = std::collections::BTreeSet::new();
        for n in 0..1_000u32 {
            let source = [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), n.to_be()];
            let set = source_set(&source, 3, 7);
            assert_eq!(set % SOURCE_WAYS, 0);
            assert!(set < SOURCE_SLOTS);
            used.insert(set);
        }
        assert!(used.len() > 980, "1,000 sources in {} sets", used.len());
        let one = [1, 2, 3, 4];
        assert_ne!(
            source_set(&one, 0, 0),
            source_set(&one, 1, 0),
            "the VIP counts"
        );
    }

    #[test]
    fn a_slot_holds_one_source_of_one_vip() {
        let slot = SourceSlot::new([1, 2, 3, 4], 0, 9, false);
        assert!(slot.holds(&[1, 2, 3, 4], 0));
        assert!(!slot.holds(&[1, 2, 3, 4], 1));
        assert!(!slot.holds(&[1, 2, 3, 5], 0));
        assert!(!SourceSlot::default().holds(&[0; 4], 0), "empty");
        let owing = SourceSlot {
            packets_ns: 50,
            ..slot
        };
        assert!(owing.active(49) && !owing.active(50));
        assert!(!slot.active(0), "full buckets owe nothing");
    }

    #[test]
    fn the_mask_makes_the_source() {
        let limit = SourceLimit {
            source_mask: [u32::MAX, u32::MAX, 0, 0],
            ..SourceLimit::default()
        };
        assert_eq!(limit.source(&[1, 2, 3, 4]), [1, 2, 0, 0]);
    }
}
