//! Links and addresses from the kernel (rtnetlink), as `ip -d link` and
//! `ip address` show them, and the network namespaces `ip netns` names.

use std::{
    net::IpAddr,
    os::fd::{AsRawFd as _, OwnedFd},
    path::PathBuf,
};

use futures::{StreamExt as _, TryStreamExt as _};
use netlink_packet_route::{
    AddressFamily, RouteNetlinkMessage,
    address::AddressAttribute,
    link::{LinkAttribute, LinkFlags, LinkInfo, LinkMessage, LinkXdp, XdpAttached},
    neighbour_table::{NeighbourTableAttribute, NeighbourTableMessage},
    nsid::{NsidAttribute, NsidMessage},
};
use rtnetlink::{
    Handle,
    packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload},
};

/// Where `ip netns` keeps the namespaces it names.
pub const NETNS_DIR: &str = "/run/netns";

/// A link as doctor needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub ifindex: u32,
    pub name: String,
    /// `veth`, `bridge`, `ipip`...; `None` for a physical device.
    pub kind: Option<String>,
    pub mtu: u32,
    pub up: bool,
    /// The XDP program attached: its id and mode (`native`, `generic`,
    /// `offload`, `multiple`).
    pub xdp: Option<(u32, &'static str)>,
    /// IFLA_LINK: a veth's peer's ifindex.
    pub peer_ifindex: Option<u32>,
    /// IFLA_LINK_NETNSID: the peer's namespace, when not this one.
    pub peer_netnsid: Option<i32>,
}

fn link(message: &LinkMessage) -> Link {
    let mut out = Link {
        ifindex: message.header.index,
        name: String::new(),
        kind: None,
        mtu: 0,
        up: message.header.flags.contains(LinkFlags::Up),
        xdp: None,
        peer_ifindex: None,
        peer_netnsid: None,
    };
    for attr in &message.attributes {
        match attr {
            LinkAttribute::IfName(name) => out.name.clone_from(name),
            LinkAttribute::Mtu(mtu) => out.mtu = *mtu,
            LinkAttribute::Link(index) => out.peer_ifindex = Some(*index),
            LinkAttribute::LinkNetNsId(id) => out.peer_netnsid = Some(*id),
            LinkAttribute::LinkInfo(infos) => {
                out.kind = infos.iter().find_map(|info| match info {
                    LinkInfo::Kind(kind) => Some(kind.to_string()),
                    _ => None,
                })
            }
            LinkAttribute::Xdp(xdp) => {
                let mode = xdp.iter().find_map(|x| match x {
                    LinkXdp::Attached(XdpAttached::Driver) => Some("native"),
                    LinkXdp::Attached(XdpAttached::SocketBuffer) => Some("generic"),
                    LinkXdp::Attached(XdpAttached::Hardware) => Some("offload"),
                    LinkXdp::Attached(XdpAttached::Multiple) => Some("multiple"),
                    _ => None,
                });
                let id = xdp.iter().find_map(|x| match x {
                    LinkXdp::ProgId(id) if *id > 0 => Some(*id),
                    _ => None,
                });
                out.xdp = id.zip(mode);
            }
            _ => {}
        }
    }
    out
}

/// Reads links and addresses of the calling thread's network namespace
/// (the one it was in when the connection was made).
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens a connection; must be called within a tokio runtime.
    pub fn connect() -> std::io::Result<Netlink> {
        let (connection, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        Ok(Netlink { handle })
    }

    /// The link named `name`, `None` when there is none.
    pub async fn link_by_name(&self, name: &str) -> Result<Option<Link>, rtnetlink::Error> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        match links.try_next().await {
            Ok(found) => Ok(found.as_ref().map(link)),
            Err(rtnetlink::Error::NetlinkError(e))
                if e.raw_code() == -libc::ENODEV || e.raw_code() == -libc::EINVAL =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The link of index `ifindex`, `None` when there is none.
    pub async fn link_by_index(&self, ifindex: u32) -> Result<Option<Link>, rtnetlink::Error> {
        let mut links = self.handle.link().get().match_index(ifindex).execute();
        match links.try_next().await {
            Ok(found) => Ok(found.as_ref().map(link)),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every link.
    pub async fn links(&self) -> Result<Vec<Link>, rtnetlink::Error> {
        self.handle
            .link()
            .get()
            .execute()
            .map_ok(|m| link(&m))
            .try_collect()
            .await
    }

    /// Every address of every interface, with the interface's index.
    pub async fn addresses(&self) -> Result<Vec<(IpAddr, u32)>, rtnetlink::Error> {
        let messages: Vec<_> = self.handle.address().get().execute().try_collect().await?;
        Ok(messages
            .iter()
            .filter_map(|m| {
                let local = m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Local(ip) => Some(*ip),
                    _ => None,
                });
                let address = m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                });
                Some((local.or(address)?, m.header.index))
            })
            .collect())
    }

    /// The id this namespace gives the namespace of `fd` (RTM_GETNSID),
    /// `None` when it gave it none.
    async fn nsid_of(&self, fd: &OwnedFd) -> Result<Option<i32>, rtnetlink::Error> {
        let mut request = NsidMessage::default();
        request.header.family = AddressFamily::Unspec;
        request
            .attributes
            .push(NsidAttribute::Fd(fd.as_raw_fd() as u32));
        let mut message = NetlinkMessage::from(RouteNetlinkMessage::GetNsId(request));
        message.header.flags = NLM_F_REQUEST;
        let mut answers = self.handle.clone().request(message)?;
        while let Some(answer) = answers.next().await {
            match answer.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNsId(nsid)) => {
                    return Ok(nsid.attributes.iter().find_map(|a| match a {
                        NsidAttribute::Id(id) if *id >= 0 => Some(*id),
                        _ => None,
                    }));
                }
                NetlinkPayload::Error(e) => return Err(rtnetlink::Error::NetlinkError(e)),
                _ => {}
            }
        }
        Ok(None)
    }

    /// The neighbour tables' hard limits (`gc_thresh3`) for IPv4 (ARP)
    /// and IPv6 (neighbour discovery). The tables are the kernel's, shared
    /// by every network namespace, and their sysctls exist in the initial
    /// namespace only; RTM_GETNEIGHTBL tells them from any.
    pub async fn gc_thresh3(&self) -> Result<(Option<u64>, Option<u64>), rtnetlink::Error> {
        let mut message = NetlinkMessage::from(RouteNetlinkMessage::GetNeighbourTable(
            NeighbourTableMessage::default(),
        ));
        message.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        let mut answers = self.handle.clone().request(message)?;
        let (mut ipv4, mut ipv6) = (None, None);
        while let Some(answer) = answers.next().await {
            match answer.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbourTable(table)) => {
                    let name = table.attributes.iter().find_map(|a| match a {
                        NeighbourTableAttribute::Name(name) => Some(name.as_str()),
                        _ => None,
                    });
                    let limit = table.attributes.iter().find_map(|a| match a {
                        NeighbourTableAttribute::Threshold3(n) => Some(u64::from(*n)),
                        _ => None,
                    });
                    // A table's first message has its thresholds; the
                    // next ones, one per device's parameters, do not.
                    match (name, limit) {
                        (Some("arp_cache"), Some(limit)) => ipv4 = Some(limit),
                        (Some("ndisc_cache"), Some(limit)) => ipv6 = Some(limit),
                        _ => {}
                    }
                }
                NetlinkPayload::Error(e) => return Err(rtnetlink::Error::NetlinkError(e)),
                _ => {}
            }
        }
        Ok((ipv4, ipv6))
    }

    /// The namespace under [`NETNS_DIR`] that this one knows as `nsid`
    /// (a veth peer's IFLA_LINK_NETNSID): its name and path.
    pub async fn named_namespace(&self, nsid: i32) -> Option<(String, PathBuf)> {
        let entries = std::fs::read_dir(NETNS_DIR).ok()?;
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(file) = std::fs::File::open(&path) else {
                continue;
            };
            let fd = OwnedFd::from(file);
            if self.nsid_of(&fd).await.ok().flatten() == Some(nsid) {
                return Some((entry.file_name().to_string_lossy().into_owned(), path));
            }
        }
        None
    }
}

/// Runs `f` on a thread that entered the network namespace at `path`, and
/// returns what it returns.
pub fn in_namespace<R: Send>(
    path: &std::path::Path,
    f: impl FnOnce() -> R + Send,
) -> std::io::Result<R> {
    let file = std::fs::File::open(path)?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the namespace's thread panicked")))
    })
}
