//! Placing a new flow: persistence first, then the VIP's scheduler. Shared
//! by the datapath's two programs (L2 and tunnels, and NAT).

use balancer_common::{flow::FlowKey, settings::Settings, stats::Stat, vip::VipInfo};

use crate::{
    persist::{self, Client},
    ring::Pick,
    schedule,
};

/// The backend of a new flow: for a VIP with persistence the one its
/// client last used, if it still may take it; else the scheduler's pick,
/// which the client then keeps.
#[inline(always)]
pub fn place(vip: &VipInfo, key: &FlowKey, settings: &Settings, now: u64) -> Result<Pick, Stat> {
    if !vip.persists() {
        return schedule::pick(vip, key, settings);
    }
    match persist::client(vip, key, now) {
        Client::Kept(pick) => Ok(pick),
        Client::New(client) => {
            let pick = schedule::pick(vip, key, settings)?;
            persist::remember(client, &pick, now);
            Ok(pick)
        }
        Client::Off => schedule::pick(vip, key, settings),
    }
}
