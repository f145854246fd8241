//! Allow and deny lists (see `balancer_common::access`): whether a client
//! may reach a VIP, from at most two longest-prefix lookups, the global
//! scope's and the VIP's, each made only where its lists have entries.

use aya_ebpf::btf_maps::lpm_trie::Key;
use balancer_common::{
    Addr,
    access::{ACCESS_ALLOW, ACCESS_DENY, ACCESS_NOT_ALLOWED, AccessData, AccessKey, SCOPE_GLOBAL},
    stats::{PacketCount, Stat},
};

use crate::maps::{ACCESS, ACCESS_STATS};

/// Which lists a packet is checked against.
pub struct Scopes {
    /// The global lists have entries.
    pub global: bool,
    /// The VIP's own lists, when it has any: its index.
    pub vip: Option<u32>,
}

/// Admits or refuses client `src`: denied by either scope's deny list, or
/// listed by no allow prefix of a scope that has an allow list (an allow
/// of either scope suffices), it is dropped and counted in `slot` of the
/// lists' counters.
#[inline(always)]
pub fn admit(src: &Addr, scopes: &Scopes, slot: u32, len: u64) -> Result<(), Stat> {
    let global = if scopes.global {
        kind(SCOPE_GLOBAL, src)
    } else {
        0
    };
    let vip = match scopes.vip {
        Some(index) => kind(index, src),
        None => 0,
    };
    if global == ACCESS_DENY {
        count(slot, len, |c| &mut c.global_deny);
        return Err(Stat::DROP_DENIED);
    }
    if vip == ACCESS_DENY {
        count(slot, len, |c| &mut c.vip_deny);
        return Err(Stat::DROP_DENIED);
    }
    if global == ACCESS_ALLOW || vip == ACCESS_ALLOW {
        return Ok(());
    }
    if global == ACCESS_NOT_ALLOWED || vip == ACCESS_NOT_ALLOWED {
        count(slot, len, |c| &mut c.not_allowed);
        return Err(Stat::DROP_NOT_ALLOWED);
    }
    Ok(())
}

/// The kind of the most specific entry of `scope` for `addr`; 0: none.
#[inline(always)]
fn kind(scope: u32, addr: &Addr) -> u32 {
    let lookup = AccessKey::lookup(scope, *addr);
    let key = Key::new(lookup.prefix_len, AccessData { scope, addr: *addr });
    ACCESS.get(&key).copied().unwrap_or(0)
}

/// Adds a packet of `len` bytes to the counter `which` picks in `slot`.
#[inline(always)]
fn count(
    slot: u32,
    len: u64,
    which: impl FnOnce(&mut balancer_common::access::AccessCounters) -> &mut PacketCount,
) {
    if let Some(c) = ACCESS_STATS.get_ptr_mut(slot) {
        // SAFETY: this CPU's slot, valid for the whole run.
        let c = which(unsafe { &mut *c });
        c.packets += 1;
        c.bytes += len;
    }
}
