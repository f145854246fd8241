//! Allow and deny lists (see `balancer_common::access`): whether a client
//! may reach a VIP, from at most two longest-prefix lookups, the global
//! scope's and the VIP's, each made only where its lists have entries; and
//! the exempt lists of the per-source limits, in scopes of their own.

use aya_ebpf::btf_maps::lpm_trie::Key;
use balancer_common::{
    Addr,
    access::{
        ACCESS_ALLOW, ACCESS_DENY, ACCESS_EXEMPT, ACCESS_NO_VIP, ACCESS_NOT_ALLOWED,
        AccessCounters, AccessKey, SCOPE_GLOBAL,
    },
    limit::{SCOPE_EXEMPT_GLOBAL, exempt_scope},
    settings::Settings,
    stats::{PacketCount, Stat},
    vip::AddrInfo,
};

use crate::maps::{ACCESS, ACCESS_STATS};

/// The allow and deny lists as they apply to packets to one VIP address:
/// the global scope when the settings say the global lists have entries,
/// a VIP's own when the address says one of its VIPs has lists, and the
/// lists' generation. Off, a packet pays nothing more than the two flag
/// tests.
pub struct Lists {
    global: bool,
    /// A VIP of the address has lists of its own.
    pub vips: bool,
    /// The generation of the lists in force (0: no lists).
    pub generation: u32,
}

impl Lists {
    #[inline(always)]
    pub fn of(settings: &Settings, addr: &AddrInfo) -> Lists {
        Lists {
            global: settings.global_access(),
            vips: addr.has_vip_access(),
            generation: settings.access_generation(),
        }
    }

    /// Whether any list applies.
    #[inline(always)]
    pub fn on(&self) -> bool {
        self.global || self.vips
    }

    /// Admits or refuses client `src` of the VIP of index `vip`
    /// ([`ACCESS_NO_VIP`]: no VIP of the address has lists of its own, or
    /// none has this port; a number, not an `Option`, whose unset payload
    /// the verifier refuses to see copied). Denied by either scope's deny
    /// list, or listed by no allow prefix of a scope that has an allow list
    /// (an allow of either scope suffices), it is dropped and counted for
    /// its VIP (or for none).
    #[inline(always)]
    pub fn admit(&self, src: &Addr, vip: u32, len: u64) -> Result<(), Stat> {
        let global = if self.global {
            kind(SCOPE_GLOBAL, src)
        } else {
            0
        };
        let slot = vip;
        let own = if vip == ACCESS_NO_VIP {
            0
        } else {
            kind(vip, src)
        };
        if global == ACCESS_DENY {
            count(slot, len, |c| &mut c.global_deny);
            return Err(Stat::DROP_DENIED);
        }
        if own == ACCESS_DENY {
            count(slot, len, |c| &mut c.vip_deny);
            return Err(Stat::DROP_DENIED);
        }
        if global == ACCESS_ALLOW || own == ACCESS_ALLOW {
            return Ok(());
        }
        if global == ACCESS_NOT_ALLOWED || own == ACCESS_NOT_ALLOWED {
            count(slot, len, |c| &mut c.not_allowed);
            return Err(Stat::DROP_NOT_ALLOWED);
        }
        Ok(())
    }
}

/// Whether an exempt list names client `src` of the VIP of index `vip`:
/// the global one when `global`, the VIP's own when `own`.
#[inline(always)]
pub fn exempt(src: &Addr, vip: u32, global: bool, own: bool) -> bool {
    (global && kind(SCOPE_EXEMPT_GLOBAL, src) == ACCESS_EXEMPT)
        || (own && kind(exempt_scope(vip), src) == ACCESS_EXEMPT)
}

/// The kind of the most specific entry of `scope` for `addr`; 0: none.
#[inline(always)]
fn kind(scope: u32, addr: &Addr) -> u32 {
    let lookup = AccessKey::lookup(scope, *addr);
    let key = Key::new(lookup.prefix_len, lookup.data);
    ACCESS.get(&key).copied().unwrap_or(0)
}

/// Adds a packet of `len` bytes to the counter `which` picks in `slot`.
#[inline(always)]
fn count(slot: u32, len: u64, which: impl FnOnce(&mut AccessCounters) -> &mut PacketCount) {
    if let Some(c) = ACCESS_STATS.get_ptr_mut(slot) {
        // SAFETY: this CPU's slot, valid for the whole run.
        let c = which(unsafe { &mut *c });
        c.packets += 1;
        c.bytes += len;
    }
}
