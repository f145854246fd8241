//! Sharing flows with peer hosts: a new connection-table entry is told to
//! the daemon through a ring buffer, which sends it on to the other
//! balancer hosts, so that a flow ECMP moves to one of them keeps its
//! backend. Off (one flag test) unless the daemon runs with `[sync]`.

use balancer_common::{
    flow::{FlowEvent, FlowKey},
    settings::Settings,
    stats::Event,
};

use crate::{maps::FLOW_EVENTS, stats};

/// Tells the daemon that flow `key` of VIP `vip` got an entry on backend
/// `backend` at `now`; counted as shared, or as lost when the ring buffer
/// is full.
#[inline(always)]
pub fn tell(key: &FlowKey, vip: u32, backend: u32, now: u64, settings: &Settings, len: u64) {
    if !settings.shares_flows() {
        return;
    }
    let event = FlowEvent {
        key: *key,
        backend,
        vip,
        at_ns: now,
    };
    match FLOW_EVENTS.output(event, 0) {
        Ok(()) => stats::event(Event::FLOW_SHARED, len),
        Err(_) => stats::event(Event::SHARE_LOST, len),
    }
}
