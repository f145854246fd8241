//! A loaded datapath with VIPs and backends in place, for BPF_PROG_TEST_RUN
//! tests and benchmarks. It writes the maps through the balancer's own
//! typed layer and rings from its own Maglev builder, and it computes which
//! backend a flow must get, independently of the program, from the shared
//! hash functions.

use std::{collections::BTreeMap, net::IpAddr};

use anyhow::{Context as _, Result};
use balancer::{
    config::{Persistence, Scheduler},
    datapath::{Datapath, LoadOptions, VipSlot},
    maglev::Member,
    plan, schedule,
};
use balancer_common::{
    Addr,
    backend::{BACKEND_RESOLVED, BACKEND_UP, BackendInfo},
    flow::FlowKey,
    hash::{addr_pair_hash, flow_hash, ring_slot, source_hash},
    settings::Settings,
    vip::{ADDR_FRAGMENT_LIST, ADDR_HAS_WILDCARD, AddrInfo, AddrKey, VipInfo, VipKey, has_list},
};

use crate::packet::LB_MAC;

/// Ring size of fixtures: prime, and small enough to fill quickly.
pub const RING_SIZE: u32 = 4093;
/// Interface index the kernel gives BPF_PROG_TEST_RUN packets (loopback):
/// backends reached through it are sent with XDP_TX.
pub const TEST_IFINDEX: u32 = 1;

/// IPv4 or IPv6 address in the maps' form.
pub fn addr(ip: IpAddr) -> Addr {
    match ip {
        IpAddr::V4(v4) => balancer_common::addr_from_v4(v4.octets()),
        IpAddr::V6(v6) => balancer_common::addr_from_octets(v6.octets()),
    }
}

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
    pub resolved: bool,
    pub ifindex: u32,
}

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
        }
    }

    fn info(&self, vip: u32) -> BackendInfo {
        let mut flags = 0;
        if self.up {
            flags |= BACKEND_UP;
        }
        if self.resolved {
            flags |= BACKEND_RESOLVED;
        }
        BackendInfo {
            addr: addr(self.addr),
            macs: BackendInfo::mac_words(backend_mac(self.id), LB_MAC),
            ifindex: self.ifindex,
            flags,
            vip,
        }
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
        }
    }
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
    /// table (built from the backends that are up, by the daemon's own
    /// code), then the VIP and its address.
    pub fn put_vip(&mut self, vip: Vip) -> Result<()> {
        for backend in &vip.backends {
            self.datapath
                .set_backend_weight(backend.id, backend.weight)?;
            self.datapath
                .set_backend(backend.id, &backend.info(vip.index))?;
        }
        let members: Vec<Member> = vip
            .backends
            .iter()
            .map(|b| Member {
                id: b.id,
                key: b.addr.to_string().into_bytes(),
                weight: if b.up { b.weight } else { 0 },
            })
            .collect();
        let ring = schedule::table(vip.scheduler, &members, self.settings.ring_size)
            .context("building the table")?;
        let flags = plan::vip_flags(vip.scheduler, vip.persistence.as_ref());
        self.datapath.set_vip_policy(
            vip.index,
            &plan::vip_policy(vip.addr, vip.persistence.as_ref()),
        )?;
        let slot = VipSlot {
            key: VipKey {
                addr: addr(vip.addr),
                port: vip.port.to_be(),
                proto: vip.proto,
                _pad: 0,
            },
            info: VipInfo {
                index: vip.index,
                flags,
            },
        };
        self.datapath.publish_vip(&slot, &ring)?;
        let addr_key = AddrKey {
            addr: addr(vip.addr),
            proto: vip.proto,
            _pad1: 0,
            _pad2: 0,
        };
        let mut addr_flags = if vip.port == 0 { ADDR_HAS_WILDCARD } else { 0 };
        if has_list(flags) {
            addr_flags |= ADDR_FRAGMENT_LIST;
        }
        self.datapath.set_vip_addr(
            &addr_key,
            &AddrInfo {
                fragment_vip: vip.index,
                flags: addr_flags,
            },
        )?;
        self.vips.insert(vip.index, (vip, ring));
        Ok(())
    }

    /// Rewrites one backend of VIP `vip` (to take it down, say) without
    /// touching tables.
    pub fn set_backend(&mut self, vip: u32, backend: &Backend) -> Result<()> {
        self.datapath
            .set_backend_weight(backend.id, backend.weight)?;
        self.datapath.set_backend(backend.id, &backend.info(vip))?;
        Ok(())
    }

    /// The table of VIP `index` as it was written.
    pub fn table(&self, index: u32) -> &[u32] {
        &self.vips[&index].1
    }

    /// The backend id the ring of VIP `index` gives a new flow `key`.
    pub fn expected_backend(&self, index: u32, key: &FlowKey) -> u32 {
        let (vip, ring) = &self.vips[&index];
        let hash = if vip.scheduler == Scheduler::SourceHash {
            source_hash(&key.src, self.settings.hash_seed)
        } else {
            flow_hash(key, self.settings.hash_seed)
        };
        ring[ring_slot(hash, self.settings.ring_size) as usize]
    }

    /// The backend id the ring of VIP `index` gives a fragment.
    pub fn expected_fragment_backend(&self, index: u32, src: IpAddr, dst: IpAddr) -> u32 {
        let (_, ring) = &self.vips[&index];
        let hash = addr_pair_hash(&addr(src), &addr(dst), self.settings.hash_seed);
        ring[ring_slot(hash, self.settings.ring_size) as usize]
    }
}

/// Settings with `seed`, the fixtures' ring size and idle timeouts of an
/// hour (tests that need expiry shorten them).
pub fn default_settings(seed: u32) -> Settings {
    Settings {
        hash_seed: seed,
        ring_size: RING_SIZE,
        tcp_idle_ns: 3_600_000_000_000,
        udp_idle_ns: 3_600_000_000_000,
    }
}

/// The flow key of a packet from `src:src_port` to `dst:dst_port`.
pub fn flow_key(src: IpAddr, src_port: u16, dst: IpAddr, dst_port: u16, proto: u8) -> FlowKey {
    FlowKey {
        src: addr(src),
        dst: addr(dst),
        src_port: src_port.to_be(),
        dst_port: dst_port.to_be(),
        proto,
        _pad1: 0,
        _pad2: 0,
    }
}
