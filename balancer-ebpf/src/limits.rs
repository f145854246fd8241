//! Per-source limits (see `balancer_common::limit`): each packet to a VIP
//! with limits spends a token of its source's packet bucket, each new flow
//! one of its new-flow bucket; an empty bucket drops the packet, counted
//! for the VIP.

use balancer_common::{
    Addr,
    limit::{LimitCounters, SourceLimit, SourceSlot, source_set},
    settings::Settings,
    stats::{PacketCount, Stat},
};

use crate::{
    access,
    maps::{LIMIT_STATS, SOURCES, VIP_LIMITS},
};

/// A source within its packet rate, as a new flow of it spends: its VIP,
/// its address under the VIP's mask and the index of its slot, or
/// [`NO_SLOT`]. Numbers, not pointers or an `Option`: the verifier tracks
/// neither a map pointer kept on the stack across the handlers nor the
/// copy of an `Option`'s unset payload.
pub struct Source {
    vip: u32,
    source: Addr,
    slot: u32,
}

/// The slot of a [`Source`] without a new-flow limit.
const NO_SLOT: u32 = u32::MAX;

impl Source {
    /// No new-flow limit.
    #[inline(always)]
    pub const fn unlimited() -> Source {
        Source {
            vip: 0,
            source: [0; 4],
            slot: NO_SLOT,
        }
    }

    /// Spends one token of the source's new-flow bucket at `now`; Err when
    /// the new flow is over its source's rate (counted). A source another
    /// CPU evicted meanwhile spends nothing.
    #[inline(always)]
    pub fn new_flow(&self, now: u64, len: u64) -> Result<(), Stat> {
        if self.slot == NO_SLOT {
            return Ok(());
        }
        let (Some(l), Some(s)) = (VIP_LIMITS.get(self.vip), SOURCES.get_ptr_mut(self.slot)) else {
            return Ok(());
        };
        // SAFETY: an array slot, valid for the whole run.
        let s = unsafe { &mut *s };
        if !s.holds(&self.source, self.vip) {
            return Ok(());
        }
        let (admitted, full) = l.new_flows.spend(s.new_flows_ns, now);
        s.new_flows_ns = full;
        if admitted {
            Ok(())
        } else {
            count(self.vip, len, |c| &mut c.new_flows);
            Err(Stat::DROP_SOURCE_FLOWS)
        }
    }
}

/// Spends one token of the packet bucket of client `src` of VIP `vip`, at
/// `now`. Ok: the source, for a new flow to spend ([`Source::unlimited`]
/// when the VIP limits nothing, the source is exempt, or the VIP has no
/// new-flow limit); Err: the packet is over its source's rate (counted).
#[inline(always)]
pub fn packet(
    vip: u32,
    src: &Addr,
    settings: &Settings,
    now: u64,
    len: u64,
) -> Result<Source, Stat> {
    let Some(l) = VIP_LIMITS.get(vip) else {
        return Ok(Source::unlimited());
    };
    if !l.on() {
        return Ok(Source::unlimited());
    }
    let source = l.source(src);
    let generation = settings.access_generation();
    let Some((index, slot)) = slot(&source, vip, settings.hash_seed) else {
        return Ok(Source::unlimited());
    };
    // SAFETY: an array slot, valid for the whole run. Another CPU writing
    // the same slot at once can lose one token's worth of an update, or,
    // as it gives the slot to another source, leave that source what this
    // one owed: at most a burst (see `Rate::spend`).
    let s = unsafe { &mut *slot };
    // The exempt lists name whole sources (the configuration refuses an
    // exempt prefix longer than a source), so the source decides.
    if !s.holds(&source, vip) {
        // The set's other source owed more, or the slot was idle or empty:
        // this source takes it, with full buckets.
        let exempt = exempt(vip, &source, l, settings);
        // A volatile store: a plain one of the zeroed half becomes a call
        // to memset, a byte loop the verifier refuses over map memory.
        // SAFETY: `s` is the slot, valid for the whole run.
        unsafe {
            core::ptr::write_volatile(s, SourceSlot::new(source, vip, generation, exempt != 0))
        };
    } else if s.generation != generation {
        s.exempt = exempt(vip, &source, l, settings);
        s.generation = generation;
    }
    if s.exempt != 0 {
        return Ok(Source::unlimited());
    }
    if l.packets.on() {
        let (admitted, full) = l.packets.spend(s.packets_ns, now);
        s.packets_ns = full;
        if !admitted {
            count(vip, len, |c| &mut c.packets);
            return Err(Stat::DROP_SOURCE_PACKETS);
        }
    }
    if !l.new_flows.on() {
        return Ok(Source::unlimited());
    }
    Ok(Source {
        vip,
        source,
        slot: index,
    })
}

/// The slot of `source` of VIP `vip` in its set, with its index: the one
/// that holds it, else the one to give it (an empty or idle one first,
/// else the one whose source owes less). None only if the set's slots are
/// missing, which cannot happen for a set [`source_set`] names.
#[inline(always)]
fn slot(source: &Addr, vip: u32, seed: u32) -> Option<(u32, *mut SourceSlot)> {
    let first = source_set(source, vip, seed);
    let a = SOURCES.get_ptr_mut(first)?;
    let b = SOURCES.get_ptr_mut(first + 1)?;
    // SAFETY: array slots, valid for the whole run, read whole.
    let (sa, sb) = unsafe { (&*a, &*b) };
    if sa.holds(source, vip) {
        return Some((first, a));
    }
    if sb.holds(source, vip) {
        return Some((first + 1, b));
    }
    Some(if sa.owed_until() <= sb.owed_until() {
        (first, a)
    } else {
        (first + 1, b)
    })
}

/// 1 when an exempt list names `source` of VIP `vip`, else 0.
#[inline(always)]
fn exempt(vip: u32, source: &Addr, limit: &SourceLimit, settings: &Settings) -> u32 {
    access::exempt(source, vip, settings.global_exempt(), limit.own_exempt()) as u32
}

/// Adds a packet of `len` bytes to the counter `which` picks for VIP `vip`.
#[inline(always)]
fn count(vip: u32, len: u64, which: impl FnOnce(&mut LimitCounters) -> &mut PacketCount) {
    if let Some(c) = LIMIT_STATS.get_ptr_mut(vip) {
        // SAFETY: this CPU's slot, valid for the whole run.
        let c = which(unsafe { &mut *c });
        c.packets += 1;
        c.bytes += len;
    }
}
