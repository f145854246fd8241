//! Where a backend is on the wire: the interface that reaches it, that
//! interface's MAC, and the next hop's MAC from the kernel's neighbour
//! table: the backend's own, or for a backend reached through a route (in
//! IPIP) its gateway's.
//!
//! Direct server return only reaches backends on a directly connected
//! network, so for it a backend behind a gateway is an error, not a guess.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr, UdpSocket},
};

use futures::{StreamExt as _, TryStreamExt as _};
use netlink_packet_route::{
    link::LinkAttribute,
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState},
    route::{RouteAddress, RouteAttribute, RouteMessage, RouteMetric},
};
use rtnetlink::{Handle, RouteMessageBuilder};
use thiserror::Error;

/// How to reach one backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L2Path {
    /// The interface the backend is reached through.
    pub ifindex: u32,
    /// That interface's MAC: the frames' new source.
    pub src_mac: [u8; 6],
    /// The backend's MAC, when the neighbour table has it.
    pub dst_mac: Option<[u8; 6]>,
    /// The route's preferred source address: this host's address toward
    /// the backend (the outer source of a tunnel by default).
    pub source: Option<IpAddr>,
    /// The route goes through a gateway: `dst_mac` is the gateway's, which
    /// only a backend reached through a tunnel (IPIP, GUE) may use.
    pub via_gateway: bool,
    /// The most bytes an IP packet may have on the route: the route's MTU
    /// where it sets one, else the egress interface's (0: unknown).
    pub mtu: u32,
}

/// The kernel's route to an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// The egress interface.
    pub ifindex: u32,
    /// The next hop, when it is not the address itself.
    pub gateway: Option<IpAddr>,
    /// The route's preferred source address.
    pub source: Option<IpAddr>,
    /// The route's own MTU, where it sets one.
    pub mtu: Option<u32>,
}

/// Why a backend cannot be reached at L2.
#[derive(Debug, Error)]
pub enum NeighbourError {
    #[error("netlink request failed: {0}")]
    Netlink(String),
    #[error("no route to backend {backend}")]
    NoRoute { backend: IpAddr },
    #[error(
        "backend {backend} is reached through gateway {gateway}: direct server return needs backends on a directly connected network"
    )]
    NotOnLink { backend: IpAddr, gateway: IpAddr },
    #[error("interface {ifindex} of backend {backend} has no MAC address")]
    NoMac { backend: IpAddr, ifindex: u32 },
}

/// The kernel's announcements of changed links, neighbours and routes
/// (netlink's multicast groups), so that a backend's path is read again at
/// once, not at the next periodic round: a next hop whose MAC changes, a
/// route that moves, an interface whose MTU or state changes.
pub struct Changes {
    messages: futures::channel::mpsc::UnboundedReceiver<(
        rtnetlink::packet_core::NetlinkMessage<rtnetlink::packet_route::RouteNetlinkMessage>,
        rtnetlink::sys::SocketAddr,
    )>,
    /// Kept so that the connection task runs as long as this does.
    _handle: Handle,
}

impl Changes {
    /// Subscribes to the changes; must be called within a tokio runtime.
    pub fn watch() -> std::io::Result<Changes> {
        use rtnetlink::constants::{
            RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_ROUTE, RTMGRP_LINK, RTMGRP_NEIGH,
        };
        use rtnetlink::sys::AsyncSocket as _;
        let (mut connection, handle, messages) = rtnetlink::new_connection()?;
        let groups = RTMGRP_LINK | RTMGRP_NEIGH | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE;
        connection
            .socket_mut()
            .socket_mut()
            .bind(&rtnetlink::sys::SocketAddr::new(0, groups))?;
        tokio::spawn(connection);
        Ok(Changes {
            messages,
            _handle: handle,
        })
    }

    /// Waits for the next announcement; None once the connection is gone.
    pub async fn next(&mut self) -> Option<()> {
        self.messages.next().await.map(|_| ())
    }
}

/// Reads routes, links and neighbours from the kernel.
#[derive(Clone)]
pub struct Neighbours {
    handle: Handle,
}

impl Neighbours {
    /// Opens a netlink connection; must be called within a tokio runtime
    /// (the connection runs as a task of it).
    pub fn connect() -> std::io::Result<Neighbours> {
        let (connection, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        Ok(Neighbours { handle })
    }

    /// Resolves every backend in `backends` (each with whether it may be
    /// reached through a gateway: `routed`) with one dump of the neighbour
    /// table. A backend whose next hop's MAC is unknown gets `dst_mac:
    /// None`, and the kernel is asked to resolve it (a datagram to the
    /// backend's discard port, which resolves the next hop), so the next
    /// call finds it.
    pub async fn resolve_all(
        &self,
        backends: &[(IpAddr, bool)],
    ) -> Vec<((IpAddr, bool), Result<L2Path, NeighbourError>)> {
        let table = match self.neighbour_table().await {
            Ok(table) => table,
            Err(err) => {
                let message = err.to_string();
                return backends
                    .iter()
                    .map(|b| (*b, Err(NeighbourError::Netlink(message.clone()))))
                    .collect();
            }
        };
        let mut out = Vec::with_capacity(backends.len());
        for &(backend, routed) in backends {
            let result = self.path(backend, routed, &table).await;
            if let Ok(L2Path { dst_mac: None, .. }) = result {
                provoke_resolution(backend);
            }
            out.push(((backend, routed), result));
        }
        out
    }

    async fn path(
        &self,
        backend: IpAddr,
        routed: bool,
        table: &BTreeMap<(u32, IpAddr), [u8; 6]>,
    ) -> Result<L2Path, NeighbourError> {
        let route = self.route(backend).await?;
        if let Some(gateway) = route.gateway
            && !routed
        {
            return Err(NeighbourError::NotOnLink { backend, gateway });
        }
        let ifindex = route.ifindex;
        let (mac, link_mtu) = self.link(ifindex).await?;
        let src_mac = mac.ok_or(NeighbourError::NoMac { backend, ifindex })?;
        Ok(L2Path {
            ifindex,
            src_mac,
            dst_mac: table
                .get(&(ifindex, route.gateway.unwrap_or(backend)))
                .copied(),
            source: route.source,
            via_gateway: route.gateway.is_some(),
            // The lower of the two that are known (0: neither).
            mtu: match (route.mtu, link_mtu) {
                (Some(route), 0) => route,
                (Some(route), link) => route.min(link),
                (None, link) => link,
            },
        })
    }

    /// The kernel's route to `address`, as `ip route get` shows it; reads
    /// only.
    pub async fn route(&self, address: IpAddr) -> Result<Route, NeighbourError> {
        let request = match address {
            IpAddr::V4(v4) => RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                .destination_prefix(v4, 32)
                .build(),
            IpAddr::V6(v6) => RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                .destination_prefix(v6, 128)
                .build(),
        };
        let mut routes = self.handle.route().get(request).execute();
        let found = routes
            .try_next()
            .await
            .map_err(netlink)?
            .ok_or(NeighbourError::NoRoute { backend: address })?;
        let mut ifindex = None;
        let mut route = Route {
            ifindex: 0,
            gateway: None,
            source: None,
            mtu: None,
        };
        for attr in &found.attributes {
            match attr {
                RouteAttribute::Metrics(metrics) => {
                    route.mtu = metrics.iter().find_map(|m| match m {
                        RouteMetric::Mtu(mtu) if *mtu > 0 => Some(*mtu),
                        _ => None,
                    })
                }
                RouteAttribute::Oif(index) => ifindex = Some(*index),
                RouteAttribute::PrefSource(RouteAddress::Inet(v4)) => {
                    route.source = Some(IpAddr::V4(*v4))
                }
                RouteAttribute::PrefSource(RouteAddress::Inet6(v6)) => {
                    route.source = Some(IpAddr::V6(*v6))
                }
                RouteAttribute::Gateway(RouteAddress::Inet(gw)) => {
                    route.gateway = Some(IpAddr::V4(*gw))
                }
                RouteAttribute::Gateway(RouteAddress::Inet6(gw)) => {
                    route.gateway = Some(IpAddr::V6(*gw))
                }
                _ => {}
            }
        }
        route.ifindex = ifindex.ok_or(NeighbourError::NoRoute { backend: address })?;
        Ok(route)
    }

    /// Interface `ifindex`'s MAC (None: it has none, or is gone) and MTU
    /// (0 when unknown).
    pub async fn link(&self, ifindex: u32) -> Result<(Option<[u8; 6]>, u32), NeighbourError> {
        let mut links = self.handle.link().get().match_index(ifindex).execute();
        let Some(link) = links.try_next().await.map_err(netlink)? else {
            return Ok((None, 0));
        };
        let mut mac = None;
        let mut mtu = 0;
        for attr in &link.attributes {
            match attr {
                LinkAttribute::Address(bytes) => mac = bytes.as_slice().try_into().ok(),
                LinkAttribute::Mtu(value) => mtu = *value,
                _ => {}
            }
        }
        Ok((mac, mtu))
    }

    /// Every route of every routing table, both families, as the kernel
    /// dumps them (this connection does not ask for strict checking, so
    /// the kernel filters by nothing but the family); reads only.
    pub async fn all_routes(&self) -> Result<Vec<RouteMessage>, NeighbourError> {
        let mut all = Vec::new();
        let dumps = [
            RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
            RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
        ];
        for dump in dumps {
            let mut routes = self.handle.route().get(dump).execute();
            while let Some(route) = routes.try_next().await.map_err(netlink)? {
                all.push(route);
            }
        }
        Ok(all)
    }

    /// Usable entries of the neighbour table (reachable, stale, delay,
    /// probe, permanent), both families: (ifindex, address) → MAC.
    pub async fn neighbour_table(
        &self,
    ) -> Result<BTreeMap<(u32, IpAddr), [u8; 6]>, NeighbourError> {
        let mut table = BTreeMap::new();
        let mut entries = self.handle.neighbours().get().execute();
        while let Some(entry) = entries.try_next().await.map_err(netlink)? {
            let usable = matches!(
                entry.header.state,
                NeighbourState::Reachable
                    | NeighbourState::Stale
                    | NeighbourState::Delay
                    | NeighbourState::Probe
                    | NeighbourState::Permanent
            );
            if !usable {
                continue;
            }
            let mut address = None;
            let mut mac = None;
            for attr in &entry.attributes {
                match attr {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                        address = Some(IpAddr::V4(*v4))
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                        address = Some(IpAddr::V6(*v6))
                    }
                    NeighbourAttribute::LinkLayerAddress(bytes) => {
                        mac = <[u8; 6]>::try_from(bytes.as_slice()).ok()
                    }
                    _ => {}
                }
            }
            if let (Some(address), Some(mac)) = (address, mac) {
                table.insert((entry.header.ifindex, address), mac);
            }
        }
        Ok(table)
    }
}

/// Makes the kernel resolve `backend`'s MAC (or any on-link address's, such
/// as a gateway's) by sending it one datagram on the discard port; the
/// neighbour table has it a moment later.
pub fn provoke_resolution(backend: IpAddr) {
    let bind: SocketAddr = match backend {
        IpAddr::V4(_) => "0.0.0.0:0".parse().expect("valid address"),
        IpAddr::V6(_) => "[::]:0".parse().expect("valid address"),
    };
    if let Ok(socket) = UdpSocket::bind(bind) {
        let _ = socket.send_to(&[], (backend, 9));
    }
}

fn netlink(err: rtnetlink::Error) -> NeighbourError {
    NeighbourError::Netlink(err.to_string())
}
