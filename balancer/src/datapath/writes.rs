//! The daemon's writes as data: one [`Write`] per change to the maps, and
//! the narrow [`Writer`] trait that carries them out. The daemon's
//! reconciler decides the writes without touching a map; [`Datapath`]
//! performs them here, and unit tests use an in-memory writer instead.

use balancer_common::{
    access::AccessKey,
    backend::BackendInfo,
    limit::SourceLimit,
    nat::{Hop, NatBackend, RouteKey, SnatPool},
    settings::Settings,
    tunnel::TunnelInfo,
    vip::{AddrInfo, AddrKey, VipPolicy},
};

use super::{Datapath, DatapathError, VipSlot};
use crate::config::PortSpan;

/// One change to the datapath's maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    /// The settings (hash seed, ring size, idle timeouts).
    Settings(Settings),
    /// Zero the counters and connection counts of VIP indexes and backend
    /// ids new to the maps: a pinned map keeps what a number counted for
    /// its previous owner.
    ResetNumbers { vips: Vec<u32>, backends: Vec<u32> },
    /// Remove VIPs: their keys, then their rings.
    RemoveVips(Vec<VipSlot>),
    /// Forget an address that no longer carries VIPs.
    RemoveAddr(AddrKey),
    /// Backend `id`'s weight as the schedulers see it (0: draining).
    Weight { id: u32, weight: u32 },
    /// Backend `id`'s smoothed check latency, in microseconds.
    Latency { id: u32, us: u32 },
    /// Let the program redirect frames to interface `ifindex`.
    Egress(u32),
    /// Backend `id`'s entry; its flags take it down or bring it back.
    Backend { id: u32, info: BackendInfo },
    /// Backend `id`'s tunnel (the outer source of IPIP and GUE, GUE's port).
    Tunnel { id: u32, tunnel: TunnelInfo },
    /// Backend `id`'s NAT details (its port).
    NatBackend { id: u32, nat: NatBackend },
    /// The SNAT pools, IPv4 then IPv6.
    SnatPools(Box<[SnatPool; 2]>),
    /// The source ports NAT picks from, split between CPUs.
    SnatPorts(PortSpan),
    /// Put routes toward clients in place (or update them).
    NatRoutes(Vec<(RouteKey, Hop)>),
    /// Take routes toward clients out.
    RemoveNatRoutes(Vec<RouteKey>),
    /// The policy (persistence) of the VIP at `slot`'s index.
    Policy { slot: VipSlot, policy: VipPolicy },
    /// The per-source limits of the VIP at `slot`'s index.
    Limit { slot: VipSlot, limit: SourceLimit },
    /// VIPs put in place with their rings (new VIPs) or their rings
    /// swapped atomically (VIPs in place), in batches.
    Rings(Vec<(VipSlot, Vec<u32>)>),
    /// Record that an address carries VIPs.
    Addr { key: AddrKey, info: AddrInfo },
    /// Put entries of the allow and deny lists in place (or update them).
    Access(Vec<(AccessKey, u32)>),
    /// Take entries of the allow and deny lists out.
    RemoveAccess(Vec<AccessKey>),
}

/// Carries out [`Write`]s, one at a time, in the order given.
pub trait Writer {
    fn write(&mut self, write: &Write) -> Result<(), DatapathError>;
}

impl Writer for Datapath {
    fn write(&mut self, write: &Write) -> Result<(), DatapathError> {
        match write {
            Write::Settings(settings) => self.set_settings(settings),
            Write::ResetNumbers { vips, backends } => {
                self.reset_counters(vips, backends)?;
                for id in backends {
                    let conns = self.backend_load(*id)?.conns as i64;
                    if conns != 0 {
                        self.correct_backend_conns(*id, -conns)?;
                    }
                }
                Ok(())
            }
            Write::RemoveVips(slots) => self.remove_vips(slots),
            Write::RemoveAddr(key) => self.remove_vip_addr(key),
            Write::Weight { id, weight } => self.set_backend_weight(*id, *weight),
            Write::Latency { id, us } => self.set_backend_latency(*id, *us),
            Write::Egress(ifindex) => self.add_egress(*ifindex),
            Write::Backend { id, info } => self.set_backend(*id, info),
            Write::Tunnel { id, tunnel } => self.set_tunnel(*id, tunnel),
            Write::NatBackend { id, nat } => self.set_nat_backend(*id, nat),
            Write::SnatPools(pools) => self.set_snat_pools(pools),
            Write::SnatPorts(ports) => self.set_snat_ports(*ports),
            Write::NatRoutes(routes) => self.set_nat_routes(routes),
            Write::RemoveNatRoutes(keys) => self.remove_nat_routes(keys),
            Write::Policy { slot, policy } => self.set_vip_policy(slot.info.index, policy),
            Write::Limit { slot, limit } => self.set_vip_limit(slot.info.index, limit),
            Write::Rings(rings) => {
                let rings: Vec<(VipSlot, &[u32])> = rings
                    .iter()
                    .map(|(slot, ring)| (*slot, ring.as_slice()))
                    .collect();
                self.publish_vips(&rings)
            }
            Write::Addr { key, info } => self.set_vip_addr(key, info),
            Write::Access(entries) => self.set_access(entries),
            Write::RemoveAccess(keys) => self.remove_access(keys),
        }
    }
}
