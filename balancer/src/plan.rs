//! From a configuration to what the datapath must hold: VIP indexes,
//! backend ids, settings, the VIP addresses' entries, and each VIP's ring
//! members. Pure logic, no I/O.

use std::{collections::BTreeMap, net::IpAddr};

use balancer_common::{
    Addr,
    access::{
        ACCESS_ALLOW, ACCESS_DENY, ACCESS_EXEMPT, ACCESS_NOT_ALLOWED, AccessKey, SCOPE_GLOBAL,
    },
    addr_from_octets, addr_from_v4,
    backend::{BACKEND_GUE, BACKEND_IPIP, BackendInfo},
    budget,
    flow::ACCESS_GENERATION_MASK,
    limit::{LIMIT_OWN_EXEMPT, Rate, SCOPE_EXEMPT_GLOBAL, SourceLimit, exempt_scope},
    nat::{NatBackend, SnatPool, pool_index},
    settings::{
        SETTINGS_GLOBAL_ACCESS, SETTINGS_GLOBAL_EXEMPT, SETTINGS_NAT_CLIENT_SOURCE,
        SETTINGS_SHARE_FLOWS, Settings,
    },
    tunnel::TunnelInfo,
    vip::{
        ADDR_HAS_WILDCARD, ADDR_NAT, ADDR_SNAT, ADDR_VIP_ACCESS, ADDR_VIP_LIMITS, AddrInfo,
        AddrKey, SCHED_LEAST_CONNECTIONS, SCHED_LEAST_LATENCY, SCHED_MAGLEV, SCHED_ROUND_ROBIN,
        SCHED_SOURCE_HASH, VIP_NAT, VIP_PERSIST, VIP_SNAT, VipInfo, VipKey, VipPolicy,
    },
};

use crate::{
    config::{Config, Forwarding, LimitsConfig, List, Persistence, PortSpan, Prefix, Scheduler},
    datapath::VipSlot,
    maglev::{MaglevError, Member},
    neighbour::L2Path,
    schedule,
};

/// The datapath's whole content for a configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub settings: Settings,
    /// The SNAT pools and ports.
    pub nat: NatPlan,
    pub vips: Vec<VipPlan>,
    /// One entry per (address, protocol) that carries VIPs.
    pub addrs: Vec<(AddrKey, AddrInfo)>,
    /// The `access` trie: the global lists and every VIP's own, exempt
    /// lists included.
    pub access: BTreeMap<AccessKey, u32>,
}

impl Plan {
    /// The VIP indexes in use.
    pub fn vip_indexes(&self) -> impl Iterator<Item = u32> + '_ {
        self.vips.iter().map(|v| v.slot.info.index)
    }

    /// The backend ids in use, VIP by VIP.
    pub fn backend_ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.vips
            .iter()
            .flat_map(|v| v.backends.iter().map(|b| b.id))
    }
}

/// One VIP: where it lives in the maps and its backends.
#[derive(Clone, Debug, PartialEq)]
pub struct VipPlan {
    pub name: String,
    pub slot: VipSlot,
    pub scheduler: Scheduler,
    /// What `vip_policy` holds for the VIP (zeros without persistence).
    pub policy: VipPolicy,
    pub backends: Vec<BackendPlan>,
    /// The VIP has allow or deny lists of its own.
    pub access: bool,
    /// What `vip_limits` holds for the VIP (zeros without limits).
    pub limit: SourceLimit,
    /// How its packets reach its backends.
    pub forwarding: Forwarding,
}

/// One backend of one VIP, with its id in the `backends` map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendPlan {
    pub id: u32,
    pub address: IpAddr,
    pub weight: u32,
    /// The port it listens on, when its VIP forwards by NAT and it has
    /// one of its own.
    pub port: Option<u16>,
}

impl BackendPlan {
    /// Its `nat_backends` entry: its own port, or 0 for the VIP's.
    pub fn nat(&self) -> NatBackend {
        NatBackend {
            port: self.port.unwrap_or(0).to_be(),
            _pad: 0,
        }
    }
}

/// What NAT forwarding needs beyond the VIPs: the SNAT pools, by family,
/// and the source ports every CPU shares.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NatPlan {
    /// `snat_pool`'s entries: IPv4 at [`pool_index`]`(false)`, IPv6 at
    /// `(true)`.
    pub pools: [SnatPool; 2],
    /// The source ports, split between CPUs when written.
    pub ports: Option<PortSpan>,
}

/// An address in the maps' form.
pub fn addr(ip: IpAddr) -> Addr {
    match ip {
        IpAddr::V4(v4) => addr_from_v4(v4.octets()),
        IpAddr::V6(v6) => addr_from_octets(v6.octets()),
    }
}

/// An address in the maps' form back as an IPv4 or IPv6 address.
pub fn ip(addr: &Addr) -> IpAddr {
    std::net::Ipv6Addr::from(balancer_common::addr_octets(addr)).to_canonical()
}

/// The numbers handed out so far: a VIP keeps its index and a backend its
/// id across reloads for as long as it stays in the configuration, so its
/// counters and its flows' entries stay valid. A freed number is not handed
/// out again until the counter reaches the maps' size: flows of a removed
/// backend must fail over, not land on a newcomer that took its id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Numbering {
    vips: BTreeMap<String, u32>,
    backends: BTreeMap<(String, IpAddr), u32>,
    next_vip: u32,
    next_backend: u32,
}

impl Numbering {
    /// Keeps only the numbers of what `config` still has.
    fn retain(&mut self, config: &Config) {
        let vips: std::collections::BTreeSet<&String> = config
            .vips
            .iter()
            .map(|v| v.get_ref().name.get_ref())
            .collect();
        let backends: std::collections::BTreeSet<(String, IpAddr)> = config
            .vips
            .iter()
            .flat_map(|v| {
                let v = v.get_ref();
                v.backends
                    .iter()
                    .map(|b| (v.name.get_ref().clone(), *b.get_ref().address.get_ref()))
            })
            .collect();
        self.vips.retain(|name, _| vips.contains(name));
        self.backends.retain(|key, _| backends.contains(key));
    }

    /// The numbers a previous daemon gave, read back from the maps it
    /// pinned: a VIP of `config` with the same (address, port, protocol)
    /// keeps its index, a backend with the same VIP and address its id, so
    /// established flows keep their backends across a restart.
    pub fn recover(
        config: &Config,
        vips: &[(VipKey, VipInfo)],
        backends: &[(u32, BackendInfo)],
    ) -> Numbering {
        let mut numbering = Numbering::default();
        for vip in &config.vips {
            let vip = vip.get_ref();
            let key = vip_key(*vip.address.get_ref(), vip.port, vip.protocol.number());
            let Some((_, info)) = vips.iter().find(|(k, _)| *k == key) else {
                continue;
            };
            let name = vip.name.get_ref().clone();
            numbering.vips.insert(name.clone(), info.index);
            for b in &vip.backends {
                let address = *b.get_ref().address.get_ref();
                if let Some((id, _)) = backends
                    .iter()
                    .find(|(_, i)| i.vip == info.index && i.addr == addr(address))
                {
                    numbering.backends.insert((name.clone(), address), *id);
                }
            }
        }
        // New numbers start after every number in use, adopted or not.
        numbering.next_vip = vips.iter().map(|(_, i)| i.index + 1).max().unwrap_or(0);
        numbering.next_backend = backends.iter().map(|(id, _)| id + 1).max().unwrap_or(0);
        numbering
    }

    fn vip(&mut self, name: &str) -> u32 {
        if let Some(index) = self.vips.get(name) {
            return *index;
        }
        let index = next_free(
            &mut self.next_vip,
            self.vips.values(),
            balancer_common::maps::MAX_VIPS,
        );
        self.vips.insert(name.to_owned(), index);
        index
    }

    fn backend(&mut self, vip: &str, address: IpAddr) -> u32 {
        let key = (vip.to_owned(), address);
        if let Some(id) = self.backends.get(&key) {
            return *id;
        }
        let id = next_free(
            &mut self.next_backend,
            self.backends.values(),
            balancer_common::maps::MAX_BACKENDS,
        );
        self.backends.insert(key, id);
        id
    }
}

/// The next number from `counter`, or once it reached `limit` the lowest
/// number not in `used` (validation keeps the count below `limit`).
fn next_free<'a>(counter: &mut u32, used: impl Iterator<Item = &'a u32>, limit: u32) -> u32 {
    if *counter < limit {
        *counter += 1;
        return *counter - 1;
    }
    let used: std::collections::BTreeSet<u32> = used.copied().collect();
    (0..limit).find(|n| !used.contains(n)).unwrap_or(0)
}

/// Lays out a (validated) configuration with fresh numbers, for a host of
/// one CPU: VIP `i` in file order gets index `i`; backends get ids in file
/// order across VIPs.
pub fn plan(config: &Config) -> Plan {
    plan_with(config, &mut Numbering::default(), 1)
}

/// Lays out a (validated) configuration for a host of `cpus` CPUs (which
/// share the insert budget), keeping the numbers `numbering` gave before
/// and handing out the lowest free ones to newcomers.
pub fn plan_with(config: &Config, numbering: &mut Numbering, cpus: u32) -> Plan {
    numbering.retain(config);
    let d = &config.datapath;
    let settings = Settings {
        hash_seed: d.hash_seed,
        ring_size: *d.ring_size.get_ref(),
        tcp_idle_ns: d.tcp_idle_timeout.as_nanos().min(u64::MAX as u128) as u64,
        udp_idle_ns: d.udp_idle_timeout.as_nanos().min(u64::MAX as u128) as u64,
        insert_cost_ns: budget::insert_cost_ns(d.insert_budget(), cpus),
        flags: if config.access.admits_all() {
            0
        } else {
            SETTINGS_GLOBAL_ACCESS
        } | if config.access.exempt.is_empty() {
            0
        } else {
            SETTINGS_GLOBAL_EXEMPT
        } | if config.sync.is_some() {
            SETTINGS_SHARE_FLOWS
        } else {
            0
        },
        nat_handshake_ns: d.nat_handshake_timeout.as_nanos().min(u64::MAX as u128) as u64,
        nat_closing_ns: d.nat_closing_timeout.as_nanos().min(u64::MAX as u128) as u64,
        _reserved: [0; 1],
    };
    let client_source = config.vips.iter().any(|v| {
        let v = v.get_ref();
        v.forwarding == Forwarding::Nat && !v.snat()
    });
    let settings = Settings {
        flags: settings.flags
            | if client_source {
                SETTINGS_NAT_CLIENT_SOURCE
            } else {
                0
            },
        ..settings
    };
    let mut access = scope_entries(
        SCOPE_GLOBAL,
        config.access.list(List::Deny),
        config.access.list(List::Allow),
    );
    access.extend(exempt_entries(
        SCOPE_EXEMPT_GLOBAL,
        config.access.list(List::Exempt),
    ));
    let mut vips = Vec::with_capacity(config.vips.len());
    for vip in &config.vips {
        let vip = vip.get_ref();
        let name = vip.name.get_ref();
        let index = numbering.vip(name);
        let address = *vip.address.get_ref();
        let proto = vip.protocol.number();
        let persistence = vip.persistence();
        let flags =
            vip_flags(vip.scheduler, persistence.as_ref()) | nat_flags(vip.forwarding, vip.snat());
        let backends = vip
            .backends
            .iter()
            .map(|b| {
                let b = b.get_ref();
                let address = *b.address.get_ref();
                BackendPlan {
                    id: numbering.backend(name, address),
                    address,
                    weight: b.effective_weight(),
                    port: b.port.as_ref().map(|p| *p.get_ref()),
                }
            })
            .collect();
        vips.push(VipPlan {
            name: vip.name.get_ref().clone(),
            slot: VipSlot {
                key: vip_key(address, vip.port, proto),
                info: VipInfo { index, flags },
            },
            scheduler: vip.scheduler,
            policy: vip_policy(address, persistence.as_ref()),
            backends,
            access: !vip.deny.is_empty() || !vip.allow.is_empty(),
            limit: source_limit(
                address,
                vip.limits.as_ref().map(|l| l.get_ref()),
                !vip.exempt.is_empty(),
            ),
            forwarding: vip.forwarding,
        });
        access.extend(scope_entries(
            index,
            vip.list(List::Deny),
            vip.list(List::Allow),
        ));
        access.extend(exempt_entries(exempt_scope(index), vip.list(List::Exempt)));
    }
    let nat = nat_plan(config);
    let mut addrs = addr_entries(&vips);
    addrs.extend(snat_entries(&nat.pools));
    Plan {
        settings: settings.with_access_generation(access_generation(&access)),
        nat,
        vips,
        addrs,
        access,
    }
}

/// The generation of the lists `entries` lay out: a hash of them, so that
/// the same lists (after a restart, a reload that leaves them alone) keep
/// theirs and flows stay admitted, and other lists get another one
/// (barring one chance in a million) and every flow is checked again;
/// never 0, which a flow admitted under no lists holds.
fn access_generation(entries: &BTreeMap<AccessKey, u32>) -> u32 {
    if entries.is_empty() {
        return 0;
    }
    let mut bytes = Vec::with_capacity(entries.len() * 28);
    for (key, kind) in entries {
        bytes.extend(key.prefix_len.to_le_bytes());
        bytes.extend(key.data.scope.to_le_bytes());
        for word in key.data.addr {
            bytes.extend(word.to_le_bytes());
        }
        bytes.extend(kind.to_le_bytes());
    }
    (balancer_common::hash::bytes_hash(&bytes, 0) & ACCESS_GENERATION_MASK).max(1)
}

/// The `access` entries of one scope (a VIP index, or [`SCOPE_GLOBAL`]):
/// every deny prefix; every allow prefix no deny prefix covers (a deny
/// wins, whatever the lengths); and with an allow list, the scope-wide
/// entry that refuses what no allow prefix lists.
pub fn scope_entries(
    scope: u32,
    deny: impl Iterator<Item = Prefix>,
    allow: impl Iterator<Item = Prefix>,
) -> BTreeMap<AccessKey, u32> {
    let deny: Vec<Prefix> = deny.collect();
    let allow: Vec<Prefix> = allow.collect();
    let key = |p: &Prefix| AccessKey::prefix(scope, addr(p.addr()), p.prefix_len(), p.is_ipv4());
    let mut entries: BTreeMap<AccessKey, u32> =
        deny.iter().map(|p| (key(p), ACCESS_DENY)).collect();
    for p in &allow {
        if !deny.iter().any(|d| d.covers(p)) {
            entries.insert(key(p), ACCESS_ALLOW);
        }
    }
    if !allow.is_empty() {
        entries.insert(AccessKey::scope(scope), ACCESS_NOT_ALLOWED);
    }
    entries
}

/// The `access` entries of the exempt list of `scope` (an exempt scope:
/// [`SCOPE_EXEMPT_GLOBAL`], or [`exempt_scope`] of a VIP).
pub fn exempt_entries(
    scope: u32,
    exempt: impl Iterator<Item = Prefix>,
) -> BTreeMap<AccessKey, u32> {
    exempt
        .map(|p| {
            let key = AccessKey::prefix(scope, addr(p.addr()), p.prefix_len(), p.is_ipv4());
            (key, ACCESS_EXEMPT)
        })
        .collect()
}

/// The `vip_limits` entry of a VIP at `address` with `limits` (zeros
/// without), `own_exempt` when it has an exempt list of its own.
pub fn source_limit(
    address: IpAddr,
    limits: Option<&LimitsConfig>,
    own_exempt: bool,
) -> SourceLimit {
    let Some(limits) = limits else {
        return SourceLimit::default();
    };
    let rate = |limit: Option<crate::config::RateLimit>| {
        limit.map_or(Rate::default(), |l| Rate::new(l.per_second, l.burst))
    };
    let v4 = address.is_ipv4();
    let bits = if v4 {
        96 + u32::from(limits.prefix(true).min(32))
    } else {
        u32::from(limits.prefix(false).min(128))
    };
    let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
    SourceLimit {
        new_flows: rate(limits.new_flow_limit()),
        packets: rate(limits.packet_limit()),
        source_mask: balancer_common::addr_from_octets(mask.to_be_bytes()),
        flags: if own_exempt { LIMIT_OWN_EXEMPT } else { 0 },
        _pad: 0,
    }
}

/// The `vips` map key of the VIP at `address:port` over protocol `proto`.
pub fn vip_key(address: IpAddr, port: u16, proto: u8) -> VipKey {
    VipKey::new(addr(address), port.to_be(), proto)
}

/// The `vip_addrs` entries of `vips`, one per address and protocol, in the
/// order of the addresses, with [`ADDR_HAS_WILDCARD`] where the address
/// has a port-0 VIP, [`ADDR_VIP_ACCESS`] where one of its VIPs has lists
/// of its own and [`ADDR_VIP_LIMITS`] where one has per-source limits.
pub fn addr_entries(vips: &[VipPlan]) -> Vec<(AddrKey, AddrInfo)> {
    let mut addrs: BTreeMap<(IpAddr, u8), AddrInfo> = BTreeMap::new();
    for vip in vips {
        let key = vip.slot.key;
        let entry = addrs.entry((ip(&key.addr), key.proto)).or_default();
        if key.port == 0 {
            entry.flags |= ADDR_HAS_WILDCARD;
        }
        if vip.access {
            entry.flags |= ADDR_VIP_ACCESS;
        }
        if vip.limit.on() {
            entry.flags |= ADDR_VIP_LIMITS;
        }
        if vip.forwarding == Forwarding::Nat {
            entry.flags |= ADDR_NAT;
        }
    }
    addrs
        .into_iter()
        .map(|((address, proto), info)| (AddrKey::new(addr(address), proto), info))
        .collect()
}

/// The SNAT pools and source ports of `config`.
pub fn nat_plan(config: &Config) -> NatPlan {
    let d = &config.datapath;
    let mut pools = [SnatPool::default(); 2];
    let families: [Vec<IpAddr>; 2] = [
        d.snat_ipv4
            .iter()
            .map(|a| IpAddr::V4(*a.get_ref()))
            .collect(),
        d.snat_ipv6
            .iter()
            .map(|a| IpAddr::V6(*a.get_ref()))
            .collect(),
    ];
    for (v6, addresses) in [false, true].into_iter().zip(families) {
        let pool = &mut pools[pool_index(v6) as usize];
        for (slot, address) in pool.addrs.iter_mut().zip(&addresses) {
            *slot = addr(*address);
        }
        pool.count = addresses.len().min(pool.addrs.len()) as u32;
    }
    let ports = *d.snat_ports.get_ref();
    for pool in &mut pools {
        pool.first = ports.first;
        pool.last = ports.last;
    }
    let nat = config
        .vips
        .iter()
        .any(|v| v.get_ref().forwarding == Forwarding::Nat);
    NatPlan {
        pools,
        ports: nat.then_some(ports),
    }
}

/// The `vip_addrs` entries of the SNAT pools' addresses, for TCP and UDP,
/// with [`ADDR_SNAT`].
pub fn snat_entries(pools: &[SnatPool; 2]) -> Vec<(AddrKey, AddrInfo)> {
    let info = AddrInfo {
        _reserved: 0,
        flags: ADDR_SNAT,
    };
    pools
        .iter()
        .flat_map(|pool| &pool.addrs[..pool.count as usize])
        .flat_map(|a| {
            [balancer_common::proto::TCP, balancer_common::proto::UDP]
                .map(|proto| (AddrKey::new(*a, proto), info))
        })
        .collect()
}

/// How packets reach a backend, as its `backends` entry says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// L2 direct server return.
    Dsr,
    /// In IPIP; `tunnel`: its `tunnels` entry has a source (without one it
    /// counts as unresolved).
    Ipip { tunnel: bool },
    /// In GUE; `tunnel` likewise.
    Gue { tunnel: bool },
    /// By NAT: on the segment or through a gateway, the packet rewritten.
    Nat,
}

impl Delivery {
    /// How a backend of a VIP forwarded by `forwarding` is reached;
    /// `tunnel`: its `tunnels` entry has a source (tunnels only).
    pub fn of(forwarding: Forwarding, tunnel: bool) -> Delivery {
        match forwarding {
            Forwarding::Dsr => Delivery::Dsr,
            Forwarding::Ipip => Delivery::Ipip { tunnel },
            Forwarding::Gue => Delivery::Gue { tunnel },
            Forwarding::Nat => Delivery::Nat,
        }
    }
}

/// The `backends` map entry of a backend at `address` serving VIP `vip`,
/// reached by `delivery`: up when `up`, and resolved with its MACs and
/// interface once `path` knows its MAC (zeros before) and, in a tunnel,
/// the tunnel has a source.
pub fn backend_info(
    address: IpAddr,
    vip: u32,
    up: bool,
    path: Option<L2Path>,
    delivery: Delivery,
) -> BackendInfo {
    let (macs, ifindex, resolved, via_gateway) = match path {
        Some(L2Path {
            ifindex,
            src_mac,
            dst_mac: Some(dst),
            via_gateway,
            ..
        }) => (
            BackendInfo::mac_words(dst, src_mac),
            ifindex,
            true,
            via_gateway,
        ),
        _ => ([0; 6], 0, false, false),
    };
    let (resolved, encap) = match delivery {
        // A path through a gateway (read for a tunnel before a reload made
        // the VIP L2 DSR) never takes a DSR frame.
        Delivery::Dsr => (resolved && !via_gateway, 0),
        Delivery::Ipip { tunnel } => (resolved && tunnel, BACKEND_IPIP),
        Delivery::Gue { tunnel } => (resolved && tunnel, BACKEND_GUE),
        Delivery::Nat => (resolved, 0),
    };
    BackendInfo {
        addr: addr(address),
        macs,
        ifindex,
        flags: BackendInfo::flags_for(up, resolved) | encap,
        vip,
    }
}

/// The `tunnels` entry of a backend at `address` reached by `forwarding`
/// (IPIP or GUE): the outer source `[datapath]` gives for its family,
/// else its route's preferred source, for GUE the UDP port, and the
/// route's MTU; None without a source (it cannot be sent to).
pub fn tunnel_info(
    address: IpAddr,
    forwarding: Forwarding,
    datapath: &crate::config::DatapathConfig,
    path: Option<&L2Path>,
) -> Option<TunnelInfo> {
    let configured = match address {
        IpAddr::V4(_) => datapath.tunnel_source_ipv4.map(IpAddr::V4),
        IpAddr::V6(_) => datapath.tunnel_source_ipv6.map(IpAddr::V6),
    };
    let source = configured
        .or_else(|| path.and_then(|p| p.source))
        .filter(|s| s.is_ipv4() == address.is_ipv4())?;
    let port = if forwarding == Forwarding::Gue {
        *datapath.gue_port.get_ref()
    } else {
        0
    };
    // An MTU beyond 16 bits (jumbo frames are 9,000) is never exceeded by
    // an IP packet.
    let mtu = path.map_or(0, |p| p.mtu.min(u32::from(u16::MAX)) as u16);
    Some(TunnelInfo {
        src: addr(source),
        port: port.to_be(),
        mtu,
        ..TunnelInfo::default()
    })
}

impl VipPlan {
    /// The members of the VIP's ring: the backends to which `weight` gives
    /// a weight above 0 (0 for those not usable: down, unreachable), with
    /// that weight, which may differ from the configured one while a
    /// backend is in slow start. Empty when none qualifies: the caller
    /// keeps the ring it has rather than black-holing the VIP.
    pub fn members(&self, weight: impl Fn(&BackendPlan) -> u32) -> Vec<Member> {
        self.backends
            .iter()
            .filter_map(|b| {
                let weight = weight(b);
                (weight > 0).then(|| Member {
                    id: b.id,
                    key: b.address.to_string().into_bytes(),
                    weight,
                })
            })
            .collect()
    }

    /// The VIP's ring over the backends `usable` accepts, at their
    /// configured weights (see [`VipPlan::members`] and
    /// [`schedule::ring`]); `None` without members.
    pub fn ring(
        &self,
        ring_size: u32,
        usable: impl Fn(&BackendPlan) -> bool,
    ) -> Result<Option<Vec<u32>>, MaglevError> {
        let members = self.members(|b| if usable(b) { b.weight } else { 0 });
        if members.is_empty() {
            return Ok(None);
        }
        schedule::ring(self.scheduler, &members, ring_size).map(Some)
    }
}

/// One difference between two plans, as the daemon logs it once it has
/// applied a configuration (`vip`, `backend`, `from`, `to` fields).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A VIP appeared.
    VipAdded { vip: String },
    /// A VIP went.
    VipRemoved { vip: String },
    /// A VIP kept its name but moved to another address, port or
    /// protocol: `from` and `to` are `ADDRESS:PORT/PROTO`.
    VipService {
        vip: String,
        from: String,
        to: String,
    },
    /// Scheduler or persistence changed: `from` and `to` name them.
    VipPolicy {
        vip: String,
        from: String,
        to: String,
    },
    /// How its packets reach its backends changed.
    VipForwarding {
        vip: String,
        from: &'static str,
        to: &'static str,
    },
    /// A backend joined a VIP.
    BackendAdded {
        vip: String,
        backend: IpAddr,
        weight: u32,
    },
    /// A backend left a VIP.
    BackendRemoved { vip: String, backend: IpAddr },
    /// Effective weight changed (0 while draining).
    Weight {
        vip: String,
        backend: IpAddr,
        from: u32,
        to: u32,
    },
}

impl std::fmt::Display for Change {
    /// One line, as `check-config --diff` and `reload --dry-run` print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::VipAdded { vip } => write!(f, "VIP {vip}: added"),
            Change::VipRemoved { vip } => write!(f, "VIP {vip}: removed"),
            Change::VipService { vip, from, to } => write!(f, "VIP {vip}: service {from} → {to}"),
            Change::VipPolicy { vip, from, to } => {
                write!(f, "VIP {vip}: scheduling {from} → {to}")
            }
            Change::VipForwarding { vip, from, to } => {
                write!(f, "VIP {vip}: forwarding {from} → {to}")
            }
            Change::BackendAdded {
                vip,
                backend,
                weight,
            } => write!(f, "VIP {vip}: backend {backend} added (weight {weight})"),
            Change::BackendRemoved { vip, backend } => {
                write!(
                    f,
                    "VIP {vip}: backend {backend} removed (its flows fail over)"
                )
            }
            Change::Weight {
                vip,
                backend,
                from,
                to,
            } => write!(f, "VIP {vip}: backend {backend} weight {from} → {to}"),
        }
    }
}

/// A VIP's service as `ADDRESS:PORT/PROTO`.
fn service(v: &VipPlan) -> String {
    service_of(&v.slot.key)
}

/// The service of a `vips` map key as `ADDRESS:PORT/PROTO`.
pub fn service_of(key: &VipKey) -> String {
    let proto = match key.proto {
        balancer_common::proto::TCP => "tcp",
        balancer_common::proto::UDP => "udp",
        _ => "?",
    };
    format!(
        "{}/{proto}",
        std::net::SocketAddr::new(ip(&key.addr), u16::from_be(key.port))
    )
}

/// A VIP's scheduler, persistence and limits in words: "maglev",
/// "round-robin with persistence 30s per /56", "maglev, limits 10 new
/// flows/s (burst 10) per /32".
fn policy(v: &VipPlan) -> String {
    let mut text = v.scheduler.name().to_owned();
    if v.slot.info.persists() {
        let mask = u128::from_be_bytes(balancer_common::addr_octets(&v.policy.client_mask));
        text += &format!(
            " with persistence {} per /{}",
            crate::config::format_duration(std::time::Duration::from_nanos(v.policy.persist_ns)),
            mask.leading_ones()
        );
    }
    if v.limit.on() {
        text += &format!(
            ", {}",
            limits_text(&v.limit, ip(&v.slot.key.addr).is_ipv4())
        );
    }
    text
}

/// Per-source limits in words, as the datapath holds them: "limits 10 new
/// flows/s (burst 10), 1000 packets/s (burst 2000) per /24" (a burst
/// raised to the clock's step shows raised).
fn limits_text(limit: &SourceLimit, v4: bool) -> String {
    let rate = |r: &Rate, what: &str| {
        r.on().then(|| {
            let per_second = (1e9 / r.interval_ns as f64).round();
            let burst = r.burst_ns / r.interval_ns;
            format!("{per_second} {what}/s (burst {burst})")
        })
    };
    let rates: Vec<String> = [
        rate(&limit.new_flows, "new flows"),
        rate(&limit.packets, "packets"),
    ]
    .into_iter()
    .flatten()
    .collect();
    let mask = u128::from_be_bytes(balancer_common::addr_octets(&limit.source_mask));
    let bits = mask.leading_ones() - if v4 { 96 } else { 0 };
    format!("limits {} per /{bits}", rates.join(", "))
}

/// What changes from plan `old` to plan `new`, VIPs matched by name and
/// backends by address within their VIP; removed VIPs first, then the new
/// plan's VIPs in order.
pub fn changes(old: &Plan, new: &Plan) -> Vec<Change> {
    let mut out = Vec::new();
    for vip in &old.vips {
        if !new.vips.iter().any(|v| v.name == vip.name) {
            out.push(Change::VipRemoved {
                vip: vip.name.clone(),
            });
        }
    }
    for vip in &new.vips {
        let name = || vip.name.clone();
        let before = old.vips.iter().find(|v| v.name == vip.name);
        match before {
            None => out.push(Change::VipAdded { vip: name() }),
            Some(before) => {
                let (from, to) = (service(before), service(vip));
                if from != to {
                    out.push(Change::VipService {
                        vip: name(),
                        from,
                        to,
                    });
                }
                let (from, to) = (policy(before), policy(vip));
                if from != to {
                    out.push(Change::VipPolicy {
                        vip: name(),
                        from,
                        to,
                    });
                }
                if before.forwarding != vip.forwarding {
                    out.push(Change::VipForwarding {
                        vip: name(),
                        from: before.forwarding.name(),
                        to: vip.forwarding.name(),
                    });
                }
            }
        }
        // A new VIP's backends are all added.
        let before_backends = before.map_or(&[][..], |b| &b.backends[..]);
        for b in before_backends {
            if !vip.backends.iter().any(|n| n.address == b.address) {
                out.push(Change::BackendRemoved {
                    vip: name(),
                    backend: b.address,
                });
            }
        }
        for b in &vip.backends {
            match before_backends.iter().find(|o| o.address == b.address) {
                None => out.push(Change::BackendAdded {
                    vip: name(),
                    backend: b.address,
                    weight: b.weight,
                }),
                Some(o) if o.weight != b.weight => out.push(Change::Weight {
                    vip: name(),
                    backend: b.address,
                    from: o.weight,
                    to: b.weight,
                }),
                Some(_) => {}
            }
        }
    }
    out
}

/// The [`VipInfo`] flags of a VIP forwarded by `forwarding`, with source
/// NAT (`snat`) or not.
pub fn nat_flags(forwarding: Forwarding, snat: bool) -> u32 {
    match (forwarding, snat) {
        (Forwarding::Nat, true) => VIP_NAT | VIP_SNAT,
        (Forwarding::Nat, false) => VIP_NAT,
        _ => 0,
    }
}

/// The [`VipInfo`] flags of a VIP scheduled by `scheduler`, with
/// `persistence` or not.
pub fn vip_flags(scheduler: Scheduler, persistence: Option<&Persistence>) -> u32 {
    let kind = match scheduler {
        Scheduler::Maglev => SCHED_MAGLEV,
        Scheduler::SourceHash => SCHED_SOURCE_HASH,
        Scheduler::RoundRobin => SCHED_ROUND_ROBIN,
        Scheduler::LeastConnections => SCHED_LEAST_CONNECTIONS,
        Scheduler::LeastLatency => SCHED_LEAST_LATENCY,
    };
    if persistence.is_some() {
        kind | VIP_PERSIST
    } else {
        kind
    }
}

/// The policy of a VIP at `address`: the persistence timeout, and the mask
/// that groups its clients (IPv4 clients by their whole address, IPv6
/// clients by the configured prefix).
pub fn vip_policy(address: IpAddr, persistence: Option<&Persistence>) -> VipPolicy {
    let Some(persistence) = persistence else {
        return VipPolicy::default();
    };
    let prefix = match address {
        IpAddr::V4(_) => 128,
        IpAddr::V6(_) => u32::from(persistence.ipv6_prefix.min(128)),
    };
    let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
    VipPolicy {
        persist_ns: persistence.timeout.as_nanos().min(u64::MAX as u128) as u64,
        client_mask: balancer_common::addr_from_octets(mask.to_be_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    const TWO_VIPS: &str = r#"
[datapath]
hash_seed = 7
ring_size = 1021
udp_idle_timeout = "10s"

[[vip]]
name = "web"
address = "192.0.2.10"
port = 80
protocol = "tcp"
scheduler = "source-hash"
[[vip.backend]]
address = "10.0.0.1"
[[vip.backend]]
address = "10.0.0.2"
weight = 0

[[vip]]
name = "any"
address = "192.0.2.10"
port = 0
protocol = "tcp"
[vip.health_check]
kind = "none"
[[vip.backend]]
address = "10.0.0.3"
"#;

    #[test]
    fn vips_and_backends_are_numbered_in_file_order() {
        let plan = plan(&parse(TWO_VIPS, "t").unwrap());
        assert_eq!(plan.settings.hash_seed, 7);
        assert_eq!(plan.settings.udp_idle_ns, 10_000_000_000);
        assert_eq!(
            plan.vips[0].slot.info,
            VipInfo {
                index: 0,
                flags: SCHED_SOURCE_HASH
            }
        );
        assert_eq!(plan.vips[0].slot.key.port, 80u16.to_be());
        assert_eq!(plan.vips[1].slot.info.index, 1);
        let ids: Vec<u32> = plan
            .vips
            .iter()
            .flat_map(|v| v.backends.iter().map(|b| b.id))
            .collect();
        assert_eq!(ids, [0, 1, 2]);
    }

    #[test]
    fn an_address_with_a_wildcard_vip_is_marked() {
        let plan = plan(&parse(TWO_VIPS, "t").unwrap());
        assert_eq!(plan.addrs.len(), 1);
        assert_eq!(
            plan.addrs[0].1,
            AddrInfo {
                _reserved: 0,
                flags: ADDR_HAS_WILDCARD
            }
        );
    }

    #[test]
    fn a_backend_entry_is_resolved_only_with_a_known_mac() {
        let address: IpAddr = "10.0.0.1".parse().unwrap();
        let path = |dst_mac| L2Path {
            ifindex: 4,
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac,
            source: None,
            via_gateway: false,
            mtu: 1500,
        };
        let known = backend_info(
            address,
            3,
            true,
            Some(path(Some([2, 0, 0, 0, 0, 2]))),
            Delivery::Dsr,
        );
        assert_eq!(
            known.flags,
            balancer_common::backend::BACKEND_UP | balancer_common::backend::BACKEND_RESOLVED
        );
        assert_eq!(
            (known.macs, known.ifindex, known.vip),
            (
                BackendInfo::mac_words([2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 1]),
                4,
                3
            )
        );
        let unknown = backend_info(address, 3, false, Some(path(None)), Delivery::Dsr);
        assert_eq!(
            (unknown.flags, unknown.macs, unknown.ifindex),
            (0, [0; 6], 0)
        );
        // In IPIP: flagged so, and resolved only with a tunnel source too.
        let resolved = Some(path(Some([2, 0, 0, 0, 0, 2])));
        let ipip = backend_info(address, 3, true, resolved, Delivery::Ipip { tunnel: true });
        assert_eq!(
            ipip.flags,
            balancer_common::backend::BACKEND_UP
                | balancer_common::backend::BACKEND_RESOLVED
                | BACKEND_IPIP
        );
        let sourceless = backend_info(address, 3, true, resolved, Delivery::Ipip { tunnel: false });
        assert!(!sourceless.is_resolved());
        // Through a gateway: fine in IPIP, never for L2 DSR.
        let routed = resolved.map(|p| L2Path {
            via_gateway: true,
            ..p
        });
        assert!(
            backend_info(address, 3, true, routed, Delivery::Ipip { tunnel: true }).is_resolved()
        );
        assert!(!backend_info(address, 3, true, routed, Delivery::Dsr).is_resolved());
        let gue = backend_info(address, 3, true, routed, Delivery::Gue { tunnel: true });
        assert!(gue.is_resolved() && gue.is_gue() && !gue.is_ipip());
    }

    #[test]
    fn a_tunnel_comes_from_the_configured_source_or_the_routes() {
        let route = L2Path {
            ifindex: 4,
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: None,
            source: Some("10.0.0.254".parse().unwrap()),
            via_gateway: false,
            mtu: 9000,
        };
        let backend: IpAddr = "10.0.0.1".parse().unwrap();
        let mut datapath = crate::config::DatapathConfig::default();
        let got = |d: &crate::config::DatapathConfig, p: Option<&L2Path>| {
            tunnel_info(backend, Forwarding::Ipip, d, p).map(|t| ip(&t.src))
        };
        assert_eq!(got(&datapath, Some(&route)), route.source);
        assert_eq!(got(&datapath, None), None, "no source at all");
        datapath.tunnel_source_ipv4 = Some("192.0.2.1".parse().unwrap());
        assert_eq!(
            got(&datapath, Some(&route)),
            Some("192.0.2.1".parse().unwrap())
        );
        // An IPv6 backend takes neither an IPv4 setting nor route.
        let v6: IpAddr = "fd00::1".parse().unwrap();
        assert_eq!(
            tunnel_info(v6, Forwarding::Ipip, &datapath, Some(&route)),
            None
        );
        // GUE's port, in network byte order; none for IPIP.
        let port = |forwarding, d: &crate::config::DatapathConfig| {
            tunnel_info(backend, forwarding, d, Some(&route)).map(|t| u16::from_be(t.port))
        };
        assert_eq!(port(Forwarding::Gue, &datapath), Some(6080));
        assert_eq!(port(Forwarding::Ipip, &datapath), Some(0));
        datapath.gue_port = toml::Spanned::new(0..0, 5555);
        assert_eq!(port(Forwarding::Gue, &datapath), Some(5555));
        // The route's MTU, for the datapath's check; 0 without a route.
        let mtu = |p| tunnel_info(backend, Forwarding::Ipip, &datapath, p).map(|t| t.mtu);
        assert_eq!(mtu(Some(&route)), Some(9000));
        // (The configured source stands in for the route's.)
        assert_eq!(mtu(None), Some(0));
    }

    #[test]
    fn numbers_survive_a_reload_and_newcomers_take_free_ones() {
        let mut numbering = Numbering::default();
        let first = plan_with(&parse(TWO_VIPS, "t").unwrap(), &mut numbering, 1);
        assert_eq!(first.vips[1].backends[0].id, 2);
        // "web" loses a backend and a new VIP arrives before "any".
        let edited = TWO_VIPS
            .replace("[[vip.backend]]\naddress = \"10.0.0.2\"\nweight = 0\n", "")
            .replace(
                "[[vip]]\nname = \"any\"",
                "[[vip]]\nname = \"new\"\naddress = \"192.0.2.11\"\nport = 1\nprotocol = \"udp\"\n[vip.health_check]\nkind = \"none\"\n[[vip.backend]]\naddress = \"10.0.0.9\"\n\n[[vip]]\nname = \"any\"",
            );
        let second = plan_with(&parse(&edited, "t").unwrap(), &mut numbering, 1);
        let index = |p: &Plan, name: &str| {
            p.vips
                .iter()
                .find(|v| v.name == name)
                .unwrap()
                .slot
                .info
                .index
        };
        assert_eq!(index(&second, "web"), 0);
        assert_eq!(index(&second, "any"), 1);
        assert_eq!(index(&second, "new"), 2);
        let any = second.vips.iter().find(|v| v.name == "any").unwrap();
        assert_eq!(any.backends[0].id, 2, "a kept backend keeps its id");
        let new = second.vips.iter().find(|v| v.name == "new").unwrap();
        assert_eq!(
            new.backends[0].id, 3,
            "a freed id is not handed out again at once"
        );
    }

    #[test]
    fn rings_leave_out_draining_and_unusable_backends() {
        let plan = plan(&parse(TWO_VIPS, "t").unwrap());
        let ring = plan.vips[0].ring(13, |_| true).unwrap().unwrap();
        assert!(ring.iter().all(|&id| id == 0), "{ring:?}");
        assert_eq!(plan.vips[0].ring(13, |b| b.id != 0).unwrap(), None);
    }

    #[test]
    fn changes_name_every_vip_and_backend_difference() {
        let old = plan(&parse(TWO_VIPS, "t").unwrap());
        let text = TWO_VIPS
            .replace(
                "scheduler = \"source-hash\"",
                "scheduler = \"round-robin\"\npersistence_timeout = \"30s\"",
            )
            .replace(
                "[[vip.backend]]\naddress = \"10.0.0.2\"\nweight = 0\n",
                "[[vip.backend]]\naddress = \"10.0.0.2\"\nweight = 5\n[[vip.backend]]\naddress = \"10.0.0.3\"\n",
            )
            .replace("[[vip.backend]]\naddress = \"10.0.0.1\"\n", "")
            .replace("port = 80\n", "port = 8080\n")
            .replace("name = \"any\"", "name = \"every\"");
        let new = plan(&parse(&text, "t").unwrap());
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let changes = changes(&old, &new);
        assert_eq!(
            changes,
            vec![
                Change::VipRemoved { vip: "any".into() },
                Change::VipService {
                    vip: "web".into(),
                    from: "192.0.2.10:80/tcp".into(),
                    to: "192.0.2.10:8080/tcp".into()
                },
                Change::VipPolicy {
                    vip: "web".into(),
                    from: "source-hash".into(),
                    to: "round-robin with persistence 30s per /128".into()
                },
                Change::BackendRemoved {
                    vip: "web".into(),
                    backend: ip("10.0.0.1"),
                },
                Change::Weight {
                    vip: "web".into(),
                    backend: ip("10.0.0.2"),
                    from: 0,
                    to: 5
                },
                Change::BackendAdded {
                    vip: "web".into(),
                    backend: ip("10.0.0.3"),
                    weight: 100
                },
                Change::VipAdded {
                    vip: "every".into()
                },
                Change::BackendAdded {
                    vip: "every".into(),
                    backend: new.vips[1].backends[0].address,
                    weight: new.vips[1].backends[0].weight
                },
            ],
            "{changes:#?}"
        );
        assert_eq!(super::changes(&new, &new), vec![]);
    }

    #[test]
    fn limits_lay_out_their_rates_masks_flags_and_exempt_entries() {
        let config = parse(
            r#"
[access]
exempt = ["10.9.0.0/16"]

[[vip]]
name = "v4"
address = "192.0.2.10"
port = 80
protocol = "tcp"
exempt = ["192.0.2.0/24"]
limits = { new_flows = 10, packets = 1000, packets_burst = 2000, ipv4_prefix = 24 }

[[vip]]
name = "v6"
address = "2001:db8::1"
port = 80
protocol = "tcp"
limits = { new_flows = 1000, new_flows_burst = 1 }

[[vip]]
name = "free"
address = "192.0.2.11"
port = 80
protocol = "tcp"
"#,
            "t",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let p = plan(&config);
        let v4 = &p.vips[0].limit;
        assert_eq!(v4.new_flows, Rate::new(10, 10));
        assert_eq!(v4.packets.interval_ns, 1_000_000);
        assert_eq!(v4.packets.burst_ns, 2_000_000_000);
        assert_eq!(
            v4.source(&addr("192.0.2.77".parse().unwrap())),
            addr("192.0.2.0".parse().unwrap())
        );
        assert!(v4.own_exempt());
        let v6 = &p.vips[1].limit;
        assert_eq!(
            v6.source(&addr("2001:db8:0:7:1:2:3:4".parse().unwrap())),
            addr("2001:db8:0:7::".parse().unwrap()),
            "/64 by default"
        );
        assert!(!v6.own_exempt());
        assert!(!p.vips[2].limit.on());
        let flags: Vec<bool> = p
            .addrs
            .iter()
            .map(|(_, info)| info.has_vip_limits())
            .collect();
        assert_eq!(flags, [true, false, true], "192.0.2.10, .11, 2001:db8::1");
        assert!(p.settings.global_exempt());
        assert!(!p.settings.global_access(), "an exempt list drops nothing");
        assert_ne!(p.settings.access_generation(), 0);
        assert_eq!(
            p.access.get(&AccessKey::prefix(
                exempt_scope(0),
                addr("192.0.2.0".parse().unwrap()),
                24,
                true
            )),
            Some(&ACCESS_EXEMPT)
        );
        assert_eq!(p.access.len(), 2);
        assert_eq!(
            policy(&p.vips[0]),
            "maglev, limits 10 new flows/s (burst 10), 1000 packets/s (burst 2000) per /24"
        );
        assert_eq!(
            policy(&p.vips[1]),
            "maglev, limits 1000 new flows/s (burst 10) per /64",
            "a burst under the clock's step is raised to it"
        );
    }

    #[test]
    fn a_new_ipv6_persistence_prefix_is_a_policy_change() {
        let vip = |prefix: u8| {
            format!(
                "[[vip]]\nname = \"v6\"\naddress = \"2001:db8::1\"\nport = 443\nprotocol = \"tcp\"\npersistence_timeout = \"5m\"\npersistence_ipv6_prefix = {prefix}\n[[vip.backend]]\naddress = \"2001:db8::10\"\n"
            )
        };
        let old = plan(&parse(&vip(64), "t").unwrap());
        let new = plan(&parse(&vip(56), "t").unwrap());
        assert_eq!(
            changes(&old, &new),
            vec![Change::VipPolicy {
                vip: "v6".into(),
                from: "maglev with persistence 5m per /64".into(),
                to: "maglev with persistence 5m per /56".into()
            }]
        );
    }
}
