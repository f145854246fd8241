//! What `balancer doctor` reads from the system, gathered into the facts
//! its decisions ([`super::checks`]) take. Nothing here changes the host:
//! the probes that create maps or load the program free them at once.

pub mod bpf;
pub mod cgroup;
pub mod ethtool;
pub mod genl;
pub mod mounts;
pub mod netlink;
pub mod sockets;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::Path,
};

use balancer_common::decap::DECAP_PROGRAM;

use self::netlink::{Link, Netlink};
use super::checks::{
    backend_host::{Decap, LocalBackend},
    interfaces::{self, Attached},
    routes::{self, Neighbours},
    veth::{Peer, PeerNamespace},
};
use crate::{config::Config, datapath::XdpMode, neighbour};

/// An IPv4 setting of `interface` (`conf/all` for all) under
/// /proc/sys/net/ipv4/conf: per network namespace.
/// The kernel's ephemeral port range (`net.ipv4.ip_local_port_range`,
/// IPv6's too).
pub fn ephemeral_ports() -> Result<crate::config::PortSpan, String> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .map_err(|err| err.to_string())?;
    let mut numbers = text.split_whitespace().map(str::parse::<u16>);
    match (numbers.next(), numbers.next()) {
        (Some(Ok(first)), Some(Ok(last))) if first <= last => {
            Ok(crate::config::PortSpan { first, last })
        }
        _ => Err(format!("unreadable: {text:?}")),
    }
}

pub fn ipv4_conf(interface: &str, key: &str) -> Option<u32> {
    sysctl(&format!("net/ipv4/conf/{interface}/{key}"))
}

/// The larger of `conf/all` and the interface's own: how the kernel
/// combines rp_filter, arp_ignore and arp_announce.
fn effective(interface: &str, key: &str) -> Option<u32> {
    Some(ipv4_conf("all", key)?.max(ipv4_conf(interface, key)?))
}

/// A number of /proc/sys at `key` (`net/ipv4/...`).
fn sysctl(key: &str) -> Option<u32> {
    std::fs::read_to_string(Path::new("/proc/sys").join(key))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The facts of configured interface `name`, or why its link could not be
/// read.
pub async fn interface(
    nl: &Netlink,
    name: &str,
    mode: XdpMode,
    pin_path: &Path,
) -> Result<interfaces::Facts, String> {
    let Some(link) = nl.link_by_name(name).await.map_err(|e| e.to_string())? else {
        return Ok(interfaces::Facts {
            name: name.to_owned(),
            mode,
            link: None,
        });
    };
    let attached = link.xdp.map(|(id, mode)| Attached {
        id,
        name: bpf::program_name(id),
        mode,
        pinned_here: bpf::pinned_link_program(&crate::datapath::pin::link_path(pin_path, name))
            == Some(id),
    });
    let peer = if link.kind.as_deref() == Some("veth") {
        peer(nl, &link).await
    } else {
        None
    };
    Ok(interfaces::Facts {
        name: name.to_owned(),
        mode,
        link: Some(interfaces::Link {
            ifindex: link.ifindex,
            kind: link.kind.clone(),
            driver: ethtool::driver(name).ok(),
            mtu: link.mtu,
            xdp_features: genl::xdp_features(link.ifindex).ok().flatten(),
            attached,
            peer,
        }),
    })
}

/// Whether device `ifindex` of the calling thread's namespace has NAPI
/// instances, when the kernel tells.
fn napi(ifindex: u32) -> Option<bool> {
    genl::napi_instances(ifindex).ok().flatten().map(|n| n > 0)
}

/// The peer of veth `link`: in this namespace, in one `ip netns` names
/// (entered on a thread of its own), or out of reach.
async fn peer(nl: &Netlink, link: &Link) -> Option<Peer> {
    let ifindex = link.peer_ifindex?;
    let Some(nsid) = link.peer_netnsid else {
        let peer = nl.link_by_index(ifindex).await.ok().flatten()?;
        return Some(Peer {
            ifindex,
            tx_checksum: ethtool::tx_checksum(&peer.name).ok(),
            napi: napi(ifindex),
            xdp: Some(peer.xdp.is_some()),
            name: Some(peer.name),
            namespace: PeerNamespace::Same,
        });
    };
    let unreachable = Peer {
        ifindex,
        name: None,
        namespace: PeerNamespace::Unreachable,
        tx_checksum: None,
        napi: None,
        xdp: None,
    };
    let Some((ns, path)) = nl.named_namespace(nsid).await else {
        return Some(unreachable);
    };
    let read = netlink::in_namespace(&path, || {
        let name = nix::net::if_::if_indextoname(ifindex)
            .ok()?
            .to_string_lossy()
            .into_owned();
        let tx = ethtool::tx_checksum(&name).ok();
        Some((name, tx, napi(ifindex)))
    });
    match read {
        Ok(Some((name, tx_checksum, napi))) => Some(Peer {
            ifindex,
            name: Some(name),
            namespace: PeerNamespace::Named(ns),
            tx_checksum,
            napi,
            xdp: None,
        }),
        _ => Some(unreachable),
    }
}

/// Every backend of every VIP with its route, read as the daemon reads it
/// (without provoking neighbour resolution); `attached` are the
/// interfaces the program is attached to, by ifindex.
pub async fn backend_routes(
    config: &Config,
    nl: &Netlink,
    attached: &BTreeSet<u32>,
) -> Result<Vec<routes::Backend>, String> {
    let neighbours = neighbour::Neighbours::connect().map_err(|e| e.to_string())?;
    // ifindex → (name, MTU, XDP features), read once per interface.
    let mut links: BTreeMap<u32, (String, u32, Option<u64>)> = BTreeMap::new();
    let mut out = Vec::new();
    for vip in &config.vips {
        let vip = vip.get_ref();
        for backend in &vip.backends {
            let address = *backend.get_ref().address.get_ref();
            let route = match neighbours.route(address).await {
                Err(e) => Err(e.to_string()),
                Ok(route) => {
                    if let std::collections::btree_map::Entry::Vacant(slot) =
                        links.entry(route.ifindex)
                    {
                        let link = nl.link_by_index(route.ifindex).await.ok().flatten();
                        let (name, mtu) = link
                            .map_or((format!("ifindex {}", route.ifindex), 0), |l| {
                                (l.name, l.mtu)
                            });
                        let features = genl::xdp_features(route.ifindex).ok().flatten();
                        slot.insert((name, mtu, features));
                    }
                    let (name, link_mtu, features) = &links[&route.ifindex];
                    Ok(routes::Route {
                        interface: name.clone(),
                        gateway: route.gateway,
                        // As the daemon: the lower of the route's and the
                        // interface's, where known.
                        mtu: match (route.mtu, *link_mtu) {
                            (Some(r), 0) => r,
                            (Some(r), l) => r.min(l),
                            (None, l) => l,
                        },
                        attached: attached.contains(&route.ifindex),
                        xdp_features: *features,
                    })
                }
            };
            out.push(routes::Backend {
                vip: vip.name.get_ref().clone(),
                vip_address: *vip.address.get_ref(),
                forwarding: vip.forwarding,
                address,
                route,
            });
        }
    }
    Ok(out)
}

/// The backends per family and the neighbour tables' hard limits.
pub async fn neighbours(config: &Config, nl: &Netlink) -> (Neighbours, Neighbours) {
    let addresses: BTreeSet<IpAddr> = config
        .vips
        .iter()
        .flat_map(|v| v.get_ref().backends.iter())
        .map(|b| *b.get_ref().address.get_ref())
        .collect();
    let count = |v4: bool| addresses.iter().filter(|a| a.is_ipv4() == v4).count();
    let (ipv4, ipv6) = nl.gc_thresh3().await.unwrap_or_default();
    (
        Neighbours {
            backends: count(true),
            gc_thresh3: ipv4,
        },
        Neighbours {
            backends: count(false),
            gc_thresh3: ipv6,
        },
    )
}

/// The configuration's backends whose address is on this host, with what
/// a backend needs in its VIP's mode.
pub async fn local_backends(config: &Config, nl: &Netlink) -> Result<Vec<LocalBackend>, String> {
    let addresses = nl.addresses().await.map_err(|e| e.to_string())?;
    let links = nl.links().await.map_err(|e| e.to_string())?;
    let by_index: BTreeMap<u32, &Link> = links.iter().map(|l| (l.ifindex, l)).collect();
    let local: BTreeMap<IpAddr, u32> = addresses.iter().copied().collect();
    let gue_port = *config.datapath.gue_port.get_ref();
    let mut out = Vec::new();
    for vip in &config.vips {
        let vip = vip.get_ref();
        let vip_address = *vip.address.get_ref();
        for backend in &vip.backends {
            let address = *backend.get_ref().address.get_ref();
            let Some(link) = local.get(&address).and_then(|i| by_index.get(i)) else {
                continue;
            };
            let interface = link.name.clone();
            let decap = if link
                .xdp
                .and_then(|(id, _)| bpf::program_name(id))
                .as_deref()
                == Some(DECAP_PROGRAM)
            {
                Decap::Program
            } else {
                let kinds: &[&str] = if address.is_ipv4() {
                    &["ipip", "sit"]
                } else {
                    &["ip6tnl"]
                };
                links
                    .iter()
                    .find(|l| l.up && l.kind.as_deref().is_some_and(|k| kinds.contains(&k)))
                    .map_or(Decap::Nothing, |l| Decap::Device(l.name.clone()))
            };
            let entry = match &decap {
                Decap::Device(device) => device.clone(),
                _ => interface.clone(),
            };
            out.push(LocalBackend {
                vip: vip.name.get_ref().clone(),
                vip_address,
                forwarding: vip.forwarding,
                gue_port,
                address,
                arp: effective(&interface, "arp_ignore").zip(effective(&interface, "arp_announce")),
                rp_filter: effective(&entry, "rp_filter").map(|v| (entry, v)),
                interface,
                vip_local: local.contains_key(&vip_address),
                decap,
            });
        }
    }
    Ok(out)
}
