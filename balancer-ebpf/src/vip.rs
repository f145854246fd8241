//! VIP match: the datapath's settings, the small map of VIP addresses
//! and the VIPs themselves.

use balancer_common::{
    Addr,
    settings::Settings,
    vip::{AddrInfo, AddrKey, VipInfo, VipKey},
};

use crate::maps::{SETTINGS, VIP_ADDRS, VIPS};

/// The datapath's settings (written by the daemon before any VIP).
#[inline(always)]
pub fn settings() -> Option<&'static Settings> {
    SETTINGS.get(0)
}

/// What the datapath knows of an address carrying VIPs for `l4`.
#[inline(always)]
pub fn addr(addr: &Addr, l4: u8) -> Option<AddrInfo> {
    // SAFETY: map values are plain data, read once.
    unsafe { VIP_ADDRS.get(AddrKey::new(*addr, l4)) }.copied()
}

/// The VIP for `(addr, port, l4)`, or the address's port-0 VIP if it has
/// one (`info`, from [`addr`], says).
#[inline(always)]
pub fn find(addr: &Addr, port: u16, l4: u8, info: &AddrInfo) -> Option<VipInfo> {
    let mut key = VipKey::new(*addr, port, l4);
    // SAFETY: map values are plain data, read once.
    if let Some(vip) = unsafe { VIPS.get(key) } {
        return Some(*vip);
    }
    if !info.has_wildcard() {
        return None;
    }
    key.port = 0;
    // SAFETY: as above.
    unsafe { VIPS.get(key) }.copied()
}
