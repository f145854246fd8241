//! The standard end-to-end topology: a client, the balancer and backends on
//! one L2 segment (a bridge in a switch namespace), IPv4 and IPv6, set up
//! for L2 direct server return.
//!
//! ```text
//!   client ──┐
//!   lb ──────┼── br0 (switch)
//!   backend0 ┤
//!   backend1 ┤ ...
//! ```
//!
//! The client routes the VIPs through the balancer; backends hold the VIPs
//! on loopback and do not answer ARP for them (arp_ignore=1,
//! arp_announce=2), and reply to clients directly.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::{Context as _, Result};

pub use crate::servers::Server;
use crate::{Lab, Netns, VethOptions};

/// The IPv4 VIP of the topology.
pub const VIP4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 80);
/// The IPv6 VIP of the topology.
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x80);
/// The client's IPv4 address.
pub const CLIENT4: Ipv4Addr = Ipv4Addr::new(10, 50, 0, 1);
/// The client's IPv6 address.
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd50, 0, 0, 0, 0, 0, 0, 1);
/// The balancer's IPv4 address.
pub const LB4: Ipv4Addr = Ipv4Addr::new(10, 50, 0, 2);
/// The balancer's IPv6 address.
pub const LB6: Ipv6Addr = Ipv6Addr::new(0xfd50, 0, 0, 0, 0, 0, 0, 2);

/// The IPv4 address of backend `i`.
pub fn backend4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 50, 0, 10 + i as u8)
}

/// The IPv6 address of backend `i`.
pub fn backend6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd50, 0, 0, 0, 0, 0, 0, 0x10 + i as u16)
}

/// The router's address on the shared segment, in the routed variant
/// ([`Topology::build_routed`]).
pub const ROUTER4: Ipv4Addr = Ipv4Addr::new(10, 50, 0, 254);
/// The router's IPv6 address on the shared segment.
pub const ROUTER6: Ipv6Addr = Ipv6Addr::new(0xfd50, 0, 0, 0, 0, 0, 0, 0xfe);
/// The client's IPv4 address in the routed variant, behind the router.
pub const REMOTE_CLIENT4: Ipv4Addr = Ipv4Addr::new(10, 60, 0, 1);
/// The client's IPv6 address in the routed variant.
pub const REMOTE_CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd60, 0, 0, 0, 0, 0, 0, 1);

/// How the backends are set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backends {
    /// For direct server return: the VIPs on loopback, ARP kept quiet
    /// for them, and in the routed variant a route to the clients.
    Dsr,
    /// Their addresses only.
    Plain,
}

/// The hosts of the topology. The balancer's interface is `eth0`.
pub struct Topology {
    /// The switch: the bridge and the other ends of every host's veth
    /// (`pc` the client's, `plb` the balancer's, `pb0`... the backends').
    pub switch: Netns,
    pub client: Netns,
    pub lb: Netns,
    pub backends: Vec<Netns>,
    /// The router between the client and the segment, in the routed
    /// variant.
    pub router: Option<Netns>,
}

impl Topology {
    /// Builds the topology with `backends` backends in `lab`, the client on
    /// the shared segment.
    pub fn build(lab: &Lab, backends: usize) -> Result<Topology> {
        Topology::build_with(lab, backends, None, true, Backends::Dsr)
    }

    /// [`Topology::build`] without the XDP program on the switch's end of
    /// the balancer's veth (`plb`), for a caller that attaches its own
    /// there (the benchmarks count what leaves the balancer at that point);
    /// until it does, the balancer's XDP_TX frames are lost.
    pub fn build_bare_lb_port(lab: &Lab, backends: usize) -> Result<Topology> {
        Topology::build_with(lab, backends, None, false, Backends::Dsr)
    }

    /// Builds the topology with the client behind a router, in a subnet of
    /// its own (10.60.0.0/24, fd60::/64), as clients on the Internet are:
    ///
    /// ```text
    ///   client ── rt ──┐  (rt's link to the client has MTU `client_link_mtu`)
    ///   lb ────────────┼── br0
    ///   backend0..n ───┘
    /// ```
    ///
    /// The router sends traffic for the VIPs to the balancer; backends reach
    /// the client through it. Packets from backends larger than the client
    /// link's MTU make the router send ICMP fragmentation-needed or
    /// packet-too-big to their source, the VIP: that error reaches the
    /// balancer, which must pass it to the right backend.
    pub fn build_routed(lab: &Lab, backends: usize, client_link_mtu: u32) -> Result<Topology> {
        Topology::build_with(lab, backends, Some(client_link_mtu), true, Backends::Dsr)
    }

    /// The routed topology ([`Topology::build_routed`]) for NAT: backends
    /// as they come, with their addresses and nothing else (no VIP, no
    /// sysctl, no route to the clients), and the balancer routing the
    /// clients' subnets through the router, as it would its default
    /// route.
    pub fn build_nat(lab: &Lab, backends: usize, client_link_mtu: u32) -> Result<Topology> {
        let t = Topology::build_with(lab, backends, Some(client_link_mtu), true, Backends::Plain)?;
        t.lb.add_route("10.60.0.0/24", &ROUTER4.to_string())?;
        t.lb.add_route("fd60::/64", &ROUTER6.to_string())?;
        Ok(t)
    }

    fn build_with(
        lab: &Lab,
        backends: usize,
        routed: Option<u32>,
        lb_port_pass: bool,
        setup: Backends,
    ) -> Result<Topology> {
        let switch = lab.netns("sw")?;
        let client = lab.netns("client")?;
        let lb = lab.netns("lb")?;
        let router = match routed {
            Some(_) => Some(lab.netns("rt")?),
            None => None,
        };
        let mut ports = Vec::new();
        let mut attach = |ns: &Netns, port: String| -> Result<()> {
            lab.veth((ns, "eth0"), (&switch, &port), VethOptions::default())?;
            ports.push(port);
            Ok(())
        };
        match &router {
            Some(rt) => attach(rt, "prt".into())?,
            None => attach(&client, "pc".into())?,
        }
        attach(&lb, "plb".into())?;
        let mut hosts = Vec::new();
        for i in 0..backends {
            let ns = lab.netns(&format!("be{i}"))?;
            attach(&ns, format!("pb{i}"))?;
            hosts.push(ns);
        }
        let ports: Vec<&str> = ports.iter().map(String::as_str).collect();
        lab.bridge(&switch, "br0", &ports)?;
        // The balancer sends with XDP_TX into its veth: the switch's end of
        // that pair must run an XDP program to take the frames in (a GRO
        // toggle was not enough on a bridge port here).
        if lb_port_pass {
            lab.xdp_pass(&switch, "plb")?;
        }

        lb.add_address("eth0", &format!("{LB4}/24"))?;
        lb.add_address("eth0", &format!("{LB6}/64"))?;
        match (&router, routed) {
            (Some(rt), Some(mtu)) => {
                lab.veth((rt, "eth1"), (&client, "eth0"), VethOptions::default())?;
                // Only the router's end is small: the client still offers
                // a 1500-byte MSS, so the backends' full-size segments meet
                // the small link at the router.
                rt.ip(["link", "set", "eth1", "mtu", &mtu.to_string()])?;
                rt.sysctl("net.ipv4.ip_forward", "1")?;
                rt.sysctl("net.ipv6.conf.all.forwarding", "1")?;
                rt.add_address("eth0", &format!("{ROUTER4}/24"))?;
                rt.add_address("eth0", &format!("{ROUTER6}/64"))?;
                rt.add_address("eth1", "10.60.0.254/24")?;
                rt.add_address("eth1", "fd60::fe/64")?;
                rt.add_route(&format!("{VIP4}/32"), &LB4.to_string())?;
                rt.add_route(&format!("{VIP6}/128"), &LB6.to_string())?;
                client.add_address("eth0", &format!("{REMOTE_CLIENT4}/24"))?;
                client.add_address("eth0", &format!("{REMOTE_CLIENT6}/64"))?;
                client.add_route("default", "10.60.0.254")?;
                client.add_route("default", "fd60::fe")?;
            }
            _ => {
                client.add_address("eth0", &format!("{CLIENT4}/24"))?;
                client.add_address("eth0", &format!("{CLIENT6}/64"))?;
                client.add_route(&format!("{VIP4}/32"), &LB4.to_string())?;
                client.add_route(&format!("{VIP6}/128"), &LB6.to_string())?;
            }
        }
        for (i, ns) in hosts.iter().enumerate() {
            ns.add_address("eth0", &format!("{}/24", backend4(i)))?;
            ns.add_address("eth0", &format!("{}/64", backend6(i)))?;
            if setup == Backends::Plain {
                continue;
            }
            for key in ["all", "eth0"] {
                ns.sysctl(&format!("net.ipv4.conf.{key}.arp_ignore"), "1")?;
                ns.sysctl(&format!("net.ipv4.conf.{key}.arp_announce"), "2")?;
            }
            ns.add_address("lo", &format!("{VIP4}/32"))?;
            ns.add_address("lo", &format!("{VIP6}/128"))?;
            if router.is_some() {
                ns.add_route("10.60.0.0/24", &ROUTER4.to_string())?;
                ns.add_route("fd60::/64", &ROUTER6.to_string())?;
            }
        }
        Ok(Topology {
            switch,
            client,
            lb,
            backends: hosts,
            router,
        })
    }

    /// The backends' addresses of one family, in order.
    pub fn backend_addresses(&self, v6: bool) -> Vec<IpAddr> {
        (0..self.backends.len())
            .map(|i| {
                if v6 {
                    IpAddr::V6(backend6(i))
                } else {
                    IpAddr::V4(backend4(i))
                }
            })
            .collect()
    }
}

impl Topology {
    /// Starts `server` on `address:port` on every backend.
    pub fn serve(&self, server: Server, address: IpAddr, port: u16) -> Result<()> {
        let addr = std::net::SocketAddr::new(address, port);
        for (i, backend) in self.backends.iter().enumerate() {
            let socket = backend
                .run(|| crate::servers::bind(server, addr))?
                .with_context(|| format!("cannot bind {addr} in {}", backend.name()))?;
            crate::servers::serve(server, socket, &format!("be{i}"));
        }
        Ok(())
    }
}

/// A `[vip.health_check]` table that turns checks off.
pub const NO_CHECK: &str = "[vip.health_check]\nkind = \"none\"\n";

/// Configuration text for the balancer of this topology: `[datapath]` on
/// `eth0`, then the VIPs added.
#[derive(Clone, Debug)]
pub struct ConfigText(String);

impl Default for ConfigText {
    fn default() -> Self {
        ConfigText("[datapath]\ninterfaces = [\"eth0\"]\n".to_owned())
    }
}

impl ConfigText {
    /// Adds `lines` to `[datapath]`; before any VIP.
    pub fn datapath(mut self, lines: &str) -> ConfigText {
        self.0.push_str(lines);
        if !lines.ends_with('\n') {
            self.0.push('\n');
        }
        self
    }

    /// Adds a VIP. `options` are further lines of its table (a scheduler,
    /// a `[vip.health_check]` table); each backend comes with the extra
    /// lines of its own table (a weight), often none.
    pub fn vip(
        mut self,
        name: &str,
        address: IpAddr,
        port: u16,
        protocol: &str,
        options: &str,
        backends: &[(IpAddr, &str)],
    ) -> ConfigText {
        self.0.push_str(&format!(
            "\n[[vip]]\nname = \"{name}\"\naddress = \"{address}\"\nport = {port}\nprotocol = \"{protocol}\"\n{options}"
        ));
        for (backend, extra) in backends {
            self.0.push_str(&format!(
                "[[vip.backend]]\naddress = \"{backend}\"\n{extra}"
            ));
        }
        self
    }

    /// The text.
    pub fn build(self) -> String {
        self.0
    }
}

/// The configuration most namespace tests start from: one TCP VIP named
/// `web` on [`VIP4`] port 80 with `options` (a scheduler, a
/// `[vip.health_check]` table) and `backends`.
pub fn web_config(options: &str, backends: &[(IpAddr, &str)]) -> String {
    ConfigText::default()
        .vip("web", VIP4.into(), 80, "tcp", options, backends)
        .build()
}

/// Two TCP VIPs on [`VIP4`] over the same `backends`, without checks:
/// `web` on port 80 and `chat` on port 81.
pub fn web_and_chat(backends: &[(IpAddr, &str)]) -> String {
    ConfigText::default()
        .vip("web", VIP4.into(), 80, "tcp", NO_CHECK, backends)
        .vip("chat", VIP4.into(), 81, "tcp", NO_CHECK, backends)
        .build()
}

/// `addresses` as backends without extra lines.
pub fn plain(addresses: &[IpAddr]) -> Vec<(IpAddr, &'static str)> {
    addresses.iter().map(|a| (*a, "")).collect()
}
