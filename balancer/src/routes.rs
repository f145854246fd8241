//! The announcement table: one kernel route per VIP address this host
//! asks the routers to send it, in a routing table of its own that the BGP
//! daemon (BIRD's kernel protocol with `learn`) reads and announces.
//!
//! The routes are `ADDRESS/32` (or `/128`) `dev lo`, tagged with
//! [`PROTOCOL`]. No rule points lookups at the table, so they change
//! nothing of the host's own forwarding. Kept in the kernel, they outlive
//! the daemon: a daemon killed and restarted leaves the announcements as
//! they were while its datapath goes on forwarding, and a BGP daemon
//! restarted learns them again.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use futures::TryStreamExt as _;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
};
use rtnetlink::{Handle, RouteMessageBuilder};

/// The routing protocol number the routes carry (`ip route ... proto
/// 252`): how the daemon and the BGP daemon's import filter
/// (`krt_source = 252`) tell them from any other route of the table.
pub const PROTOCOL: u8 = 252;

/// A route operation that failed, with what was asked.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RouteError(String);

/// The announcement table of one routing table id.
#[derive(Clone)]
pub struct Table {
    handle: Handle,
    table: u32,
    loopback: u32,
}

impl Table {
    /// Opens a netlink connection for `table`; must be called within a
    /// tokio runtime (the connection runs as a task of it).
    pub fn connect(table: u32) -> Result<Table, RouteError> {
        let loopback = nix::net::if_::if_nametoindex("lo")
            .map_err(|err| RouteError(format!("cannot find the loopback interface: {err}")))?;
        // Strict checking makes the kernel filter a dump by table and
        // protocol, so a read costs our routes, not a full BGP table.
        let (connection, handle, _) = rtnetlink::new_connection_with_strict_check()
            .map_err(|err| RouteError(format!("cannot open a netlink connection: {err}")))?;
        tokio::spawn(connection);
        Ok(Table {
            handle,
            table,
            loopback,
        })
    }

    /// The table's id.
    pub fn id(&self) -> u32 {
        self.table
    }

    /// The addresses whose routes the table holds, both families.
    pub async fn read(&self) -> Result<BTreeSet<IpAddr>, RouteError> {
        let mut held = BTreeSet::new();
        let dumps = [
            self.in_table(RouteMessageBuilder::<Ipv4Addr>::new())
                .build(),
            self.in_table(RouteMessageBuilder::<Ipv6Addr>::new())
                .build(),
        ];
        for dump in dumps {
            let mut routes = self.handle.route().get(dump).execute();
            loop {
                let route = match routes.try_next().await {
                    Ok(Some(route)) => route,
                    Ok(None) => break,
                    // The kernel makes an IPv4 table when its first route
                    // goes in: until then there is nothing to read.
                    Err(err) if is_missing(&err) => break,
                    Err(err) => {
                        return Err(RouteError(format!(
                            "cannot read routing table {}: {err}",
                            self.table
                        )));
                    }
                };
                // Cheap, and the table id of a route is the truth.
                if table_of(&route) == self.table
                    && let Some(address) = ours(&route)
                {
                    held.insert(address);
                }
            }
        }
        Ok(held)
    }

    /// Puts in the route of `address` (replacing one that differs).
    pub async fn add(&self, address: IpAddr) -> Result<(), RouteError> {
        self.handle
            .route()
            .add(self.route(address, true))
            .replace()
            .execute()
            .await
            .map_err(|err| {
                RouteError(format!(
                    "cannot add the route of {address} to table {}: {err}",
                    self.table
                ))
            })
    }

    /// Takes out the route of `address` (whatever its next hop: matched
    /// by prefix, table and protocol); one already gone is no error.
    pub async fn remove(&self, address: IpAddr) -> Result<(), RouteError> {
        match self
            .handle
            .route()
            .del(self.route(address, false))
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            Err(err) if is_missing(&err) => Ok(()),
            Err(err) => Err(RouteError(format!(
                "cannot remove the route of {address} from table {}: {err}",
                self.table
            ))),
        }
    }

    /// `builder` in our table, of our protocol.
    fn in_table<T>(&self, builder: RouteMessageBuilder<T>) -> RouteMessageBuilder<T> {
        builder
            .table_id(self.table)
            .protocol(RouteProtocol::from(PROTOCOL))
    }

    /// The route of `address`: to add (through the loopback device), or
    /// to delete, matched by prefix, table and protocol whatever its next
    /// hop (an IPv4 delete asks for scope "nowhere", as `ip route del`
    /// does; any other matches only routes of that scope).
    fn route(&self, address: IpAddr, add: bool) -> RouteMessage {
        match address {
            IpAddr::V4(v4) => {
                let route = self
                    .in_table(RouteMessageBuilder::<Ipv4Addr>::new())
                    .destination_prefix(v4, 32);
                match add {
                    true => route
                        .output_interface(self.loopback)
                        .scope(RouteScope::Link),
                    false => route.scope(RouteScope::NoWhere),
                }
                .build()
            }
            IpAddr::V6(v6) => {
                let route = self
                    .in_table(RouteMessageBuilder::<Ipv6Addr>::new())
                    .destination_prefix(v6, 128);
                match add {
                    true => route.output_interface(self.loopback),
                    false => route,
                }
                .build()
            }
        }
    }
}

/// Whether the kernel said there is no such route or table.
fn is_missing(err: &rtnetlink::Error) -> bool {
    matches!(err, rtnetlink::Error::NetlinkError(e)
        if e.raw_code() == -libc::ESRCH || e.raw_code() == -libc::ENOENT)
}

/// The table a route is in: its attribute when there is one (ids above
/// 255 are only there), else its header's.
pub(crate) fn table_of(route: &RouteMessage) -> u32 {
    route
        .attributes
        .iter()
        .find_map(|attr| match attr {
            RouteAttribute::Table(table) => Some(*table),
            _ => None,
        })
        .unwrap_or(u32::from(route.header.table))
}

/// The address of one of our routes: a host route of [`PROTOCOL`].
fn ours(route: &RouteMessage) -> Option<IpAddr> {
    let RouteHeader {
        protocol,
        destination_prefix_length,
        ..
    } = route.header;
    if u8::from(protocol) != PROTOCOL {
        return None;
    }
    route.attributes.iter().find_map(|attr| match attr {
        RouteAttribute::Destination(RouteAddress::Inet(v4)) if destination_prefix_length == 32 => {
            Some(IpAddr::V4(*v4))
        }
        RouteAttribute::Destination(RouteAddress::Inet6(v6))
            if destination_prefix_length == 128 =>
        {
            Some(IpAddr::V6(*v6))
        }
        _ => None,
    })
}
