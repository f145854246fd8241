//! A loaded datapath with VIPs and backends in place, for BPF_PROG_TEST_RUN
//! tests and benchmarks, and the oracle that says which backend a flow
//! must get.
//!
//! Map entries come from the daemon's own plan helpers (`balancer::plan`:
//! VIP keys, flags and policies, address entries, backend entries) and
//! rings from its own builder (`VipPlan::ring`), written through its
//! typed map layer; the oracle computes picks independently of the
//! program, from the shared hash functions.

pub mod nat;
pub mod standard;

use std::{collections::BTreeMap, net::IpAddr};

use anyhow::{Context as _, Result};
use balancer::{
    config::{Forwarding, Persistence, Scheduler},
    datapath::{Datapath, LoadOptions, VipSlot},
    neighbour::L2Path,
    plan::{self, BackendPlan, VipPlan},
};
use balancer_common::{
    backend::BackendInfo,
    flow::FlowKey,
    hash::{flow_hash, ring_slot, source_hash},
    limit::SourceLimit,
    settings::Settings,
    tunnel::TunnelInfo,
    vip::VipInfo,
};

use crate::packet::LB_MAC;

/// Ring size of fixtures: prime, and small enough to fill quickly.
pub const RING_SIZE: u32 = 4093;
/// Interface index the kernel gives BPF_PROG_TEST_RUN packets (loopback):
/// backends reached through it are sent with XDP_TX.
pub const TEST_IFINDEX: u32 = 1;

/// The MAC a fixture gives backend `id`.
pub fn backend_mac(id: u32) -> [u8; 6] {
    let b = id.to_be_bytes();
    [0x02, 0xbe, b[0], b[1], b[2], b[3]]
}

/// A backend of a fixture VIP.
#[derive(Clone, Debug)]
pub struct Backend {
    pub id: u32,
    pub addr: IpAddr,
    pub weight: u32,
    pub up: bool,
    /// Whether its MAC is known ([`backend_mac`]).
    pub resolved: bool,
    pub ifindex: u32,
    /// Reached in a tunnel from this outer source, rather than on the L2
    /// segment.
    pub tunnel: Option<IpAddr>,
    /// How: L2 DSR without a tunnel, IPIP or GUE (to
    /// `[datapath] gue_port`, 6080) with one.
    pub forwarding: Forwarding,
    /// The MTU of its route, for a tunnel ([`BACKEND_MTU`] unless set).
    pub mtu: u16,
    /// Reached by NAT on this port (its VIP's when None).
    pub port: Option<u16>,
}

/// The MTU of a backend's route in a fixture: Ethernet's.
pub const BACKEND_MTU: u16 = 1500;

impl Backend {
    /// A healthy, resolved backend of weight 100 reached through the test
    /// interface.
    pub fn new(id: u32, addr: IpAddr) -> Backend {
        Backend {
            id,
            addr,
            weight: 100,
            up: true,
            resolved: true,
            ifindex: TEST_IFINDEX,
            tunnel: None,
            forwarding: Forwarding::Dsr,
            mtu: BACKEND_MTU,
            port: None,
        }
    }

    /// The backend reached by NAT, listening on `port` (its VIP's when
    /// None).
    pub fn nat(mut self, port: Option<u16>) -> Backend {
        self.forwarding = Forwarding::Nat;
        self.port = port;
        self
    }

    /// The backend reached in IPIP from outer source `src`.
    pub fn ipip(self, src: IpAddr) -> Backend {
        self.tunnelled(Forwarding::Ipip, src)
    }

    /// The backend reached in GUE from outer source `src`.
    pub fn gue(self, src: IpAddr) -> Backend {
        self.tunnelled(Forwarding::Gue, src)
    }

    /// The backend reached by `forwarding` (IPIP or GUE) from outer source
    /// `src`.
    pub fn tunnelled(mut self, forwarding: Forwarding, src: IpAddr) -> Backend {
        self.tunnel = Some(src);
        self.forwarding = forwarding;
        self
    }

    /// Its path as the daemon would read it: through the test interface,
    /// from the tunnel's source as the route's preferred one.
    fn path(&self) -> L2Path {
        L2Path {
            ifindex: self.ifindex,
            src_mac: LB_MAC,
            dst_mac: self.resolved.then(|| backend_mac(self.id)),
            source: self.tunnel,
            via_gateway: false,
            mtu: u32::from(self.mtu),
        }
    }

    /// Its `backends` map entry as the daemon makes it, serving VIP `vip`.
    fn info(&self, vip: u32) -> BackendInfo {
        let delivery = plan::Delivery::of(self.forwarding, self.tunnel.is_some());
        plan::backend_info(self.addr, vip, self.up, Some(self.path()), delivery)
    }

    /// The backend as the daemon's plan holds it.
    fn plan(&self) -> BackendPlan {
        BackendPlan {
            id: self.id,
            address: self.addr,
            weight: self.weight,
            port: self.port,
        }
    }

    /// Its `tunnels` entry as the daemon makes it (default `[datapath]`),
    /// for a backend reached in a tunnel.
    fn tunnel_info(&self) -> Option<TunnelInfo> {
        self.tunnel?;
        let datapath = balancer::config::DatapathConfig::default();
        plan::tunnel_info(self.addr, self.forwarding, &datapath, Some(&self.path()))
    }
}

/// A VIP of a fixture.
#[derive(Clone, Debug)]
pub struct Vip {
    pub index: u32,
    pub addr: IpAddr,
    pub port: u16,
    pub proto: u8,
    pub scheduler: Scheduler,
    pub persistence: Option<Persistence>,
    pub backends: Vec<Backend>,
    /// The VIP has allow or deny lists of its own (its address is marked
    /// so; the entries are the test's to write).
    pub access: bool,
    /// Its per-source limits (zeros: none; exempt entries are the test's
    /// to write).
    pub limit: SourceLimit,
    /// For a NAT VIP: its backends see a source of the SNAT pool.
    pub snat: bool,
}

impl Vip {
    /// A Maglev VIP without persistence.
    pub fn new(index: u32, addr: IpAddr, port: u16, proto: u8, backends: Vec<Backend>) -> Vip {
        Vip {
            index,
            addr,
            port,
            proto,
            scheduler: Scheduler::Maglev,
            persistence: None,
            backends,
            access: false,
            limit: SourceLimit::default(),
            snat: true,
        }
    }

    /// The VIP as the daemon's plan holds it.
    pub fn plan(&self) -> VipPlan {
        let persistence = self.persistence.as_ref();
        let forwarding = self
            .backends
            .first()
            .map_or(Forwarding::Dsr, |b| b.forwarding);
        VipPlan {
            name: format!("vip{}", self.index),
            slot: VipSlot {
                key: plan::vip_key(self.addr, self.port, self.proto),
                info: VipInfo {
                    index: self.index,
                    flags: plan::vip_flags(self.scheduler, persistence)
                        | plan::nat_flags(forwarding, self.snat),
                },
            },
            scheduler: self.scheduler,
            policy: plan::vip_policy(self.addr, persistence),
            backends: self.backends.iter().map(|b| b.plan()).collect(),
            access: self.access,
            limit: self.limit,
            forwarding,
        }
    }

    /// The VIP's ring, built by the daemon's code over its backends that
    /// are up with a weight above 0. Unlike the daemon, it keeps backends
    /// whose MAC is unknown: the program must see them to drop their
    /// packets.
    pub fn ring(&self, ring_size: u32) -> Result<Vec<u32>> {
        let up = |b: &BackendPlan| self.backends.iter().any(|x| x.id == b.id && x.up);
        self.plan()
            .ring(ring_size, up)
            .context("building the ring")?
            .with_context(|| format!("VIP {} has no backend up with a weight", self.index))
    }
}

/// The backend id `ring`, the ring of `vip`, gives a new flow `key`: the
/// slot of the flow's hash, or of the client address's alone for source
/// hash. Only for VIPs whose ring is a Maglev ring.
pub fn ring_pick(vip: &Vip, ring: &[u32], settings: &Settings, key: &FlowKey) -> u32 {
    let hash = if vip.scheduler == Scheduler::SourceHash {
        source_hash(&key.src, settings.hash_seed)
    } else {
        flow_hash(key, settings.hash_seed)
    };
    ring[ring_slot(hash, settings.ring_size) as usize]
}

/// A loaded datapath and what was put in it.
pub struct Fixture {
    pub datapath: Datapath,
    pub settings: Settings,
    vips: BTreeMap<u32, (Vip, Vec<u32>)>,
}

impl Fixture {
    /// Loads the program and writes [`default_settings`] with `seed`.
    pub fn new(seed: u32) -> Result<Fixture> {
        Self::with_settings(default_settings(seed))
    }

    /// Loads the program and writes `settings`.
    pub fn with_settings(settings: Settings) -> Result<Fixture> {
        Self::with_options(settings, LoadOptions::default())
    }

    /// Loads the program with `options` and writes `settings`.
    pub fn with_options(settings: Settings, options: LoadOptions) -> Result<Fixture> {
        let mut datapath = Datapath::load_with(options)?;
        datapath.set_settings(&settings)?;
        Ok(Fixture {
            datapath,
            settings,
            vips: BTreeMap::new(),
        })
    }

    /// Puts `vip` with its backends in place (or replaces it), as the
    /// daemon does: backends and their weights first, then the policy, the
    /// limits, the ring, the VIP, and the entry of its address, computed
    /// over every VIP of the fixture in the order of their indexes.
    pub fn put_vip(&mut self, vip: Vip) -> Result<()> {
        for backend in &vip.backends {
            self.set_backend(vip.index, backend)?;
        }
        let planned = vip.plan();
        let ring = vip.ring(self.settings.ring_size)?;
        self.datapath.set_vip_policy(vip.index, &planned.policy)?;
        self.datapath.set_vip_limit(vip.index, &planned.limit)?;
        self.datapath.publish_vip(&planned.slot, &ring)?;
        self.vips.insert(vip.index, (vip, ring));
        let plans: Vec<VipPlan> = self.vips.values().map(|(v, _)| v.plan()).collect();
        let key = planned.slot.key;
        for (addr_key, info) in plan::addr_entries(&plans) {
            if addr_key.addr == key.addr && addr_key.proto == key.proto {
                self.datapath.set_vip_addr(&addr_key, &info)?;
            }
        }
        Ok(())
    }

    /// Rewrites one backend of VIP `vip` (to take it down, say) without
    /// touching rings.
    pub fn set_backend(&mut self, vip: u32, backend: &Backend) -> Result<()> {
        self.datapath
            .set_backend_weight(backend.id, backend.weight)?;
        if let Some(tunnel) = backend.tunnel_info() {
            self.datapath.set_tunnel(backend.id, &tunnel)?;
        }
        self.datapath
            .set_nat_backend(backend.id, &backend.plan().nat())?;
        self.datapath.set_backend(backend.id, &backend.info(vip))?;
        Ok(())
    }

    /// Writes the SNAT pools, the source ports and the pools' address
    /// entries, as the daemon does before it publishes NAT VIPs.
    pub fn put_nat(
        &mut self,
        pools: &[balancer_common::nat::SnatPool; 2],
        ports: balancer::config::PortSpan,
    ) -> Result<()> {
        self.datapath.set_snat_pools(pools)?;
        self.datapath.set_snat_ports(ports)?;
        for (key, info) in plan::snat_entries(pools) {
            self.datapath.set_vip_addr(&key, &info)?;
        }
        Ok(())
    }

    /// The ring of VIP `index` as it was written.
    pub fn ring(&self, index: u32) -> &[u32] {
        &self.vips[&index].1
    }

    /// The backend id the ring of VIP `index` gives a new flow `key`.
    pub fn expected_backend(&self, index: u32, key: &FlowKey) -> u32 {
        let (vip, ring) = &self.vips[&index];
        ring_pick(vip, ring, &self.settings, key)
    }
}

/// Settings with `seed`, the fixtures' ring size, idle timeouts (NAT's
/// too) of an hour (tests that need expiry shorten them) and no insert
/// budget (tests of the budget set one).
pub fn default_settings(seed: u32) -> Settings {
    Settings {
        hash_seed: seed,
        ring_size: RING_SIZE,
        tcp_idle_ns: 3_600_000_000_000,
        udp_idle_ns: 3_600_000_000_000,
        nat_handshake_ns: 3_600_000_000_000,
        nat_closing_ns: 3_600_000_000_000,
        ..Settings::default()
    }
}

/// The flow key of a packet from `src:src_port` to `dst:dst_port`.
pub fn flow_key(src: IpAddr, src_port: u16, dst: IpAddr, dst_port: u16, proto: u8) -> FlowKey {
    FlowKey::new(
        plan::addr(src),
        plan::addr(dst),
        src_port.to_be(),
        dst_port.to_be(),
        proto,
    )
}

/// BPF_PROG_TEST_RUN runs on the calling thread's CPU, and some state is
/// per CPU (the round-robin cursor, the insert budget): pins the thread to
/// CPU 0 for the rest of its life.
pub fn stay_on_one_cpu() -> anyhow::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(0)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)?;
    Ok(())
}
