//! Several balancer hosts behind a router that spreads the VIPs' traffic
//! over them (ECMP), the VIPs announced over BGP by BIRD running the
//! shipped configurations (`dist/bird/`, issue #18). IPv4 and IPv6.
//!
//! ```text
//!   client ── rt ──┐   client link 10.81.0.0/24, fd81::/64
//!   lb0 ───────────┼── br0 (switch)   segment 10.80.0.0/24, fd80::/64
//!   lb1 ───────────┤
//!   ...            │
//!   be0..beM ──────┘
//! ```
//!
//! The router (`rt`) runs BIRD with `router.conf`: it accepts BGP sessions
//! from any host of the segment and installs one multipath route per VIP
//! in its main table, one next hop per host that announces the VIP. Each
//! balancer host (`lbN`) runs BIRD with `balancer-host.conf`, which
//! announces the routes of kernel table [`ANNOUNCE_TABLE`] with protocol
//! [`BALANCER_PROTO`]: the balancer daemon writes them, or a test does by
//! hand ([`Ecmp::announce`]). The backends hold every VIP on loopback and
//! do not answer ARP for them (arp_ignore=1, arp_announce=2), and reply to
//! clients through the router, for L2 direct server return. The switch's
//! end of each host's veth runs an XDP program, so that what a balancer on
//! the host's `eth0` sends with XDP_TX is taken in.
//!
//! Hosts keep their index for life: a host that leaves leaves a gap, and a
//! host that joins takes the next index never used.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    Lab, Netns, VethOptions,
    bird::{self, Bird},
    sweep,
};

/// Kernel routing table the hosts announce from (`[announce] table`).
pub const ANNOUNCE_TABLE: u32 = 4242;
/// The `proto` of the balancer daemon's routes in that table.
pub const BALANCER_PROTO: u32 = 252;
/// AS of the router.
pub const ROUTER_AS: u32 = 65000;
/// AS of every balancer host.
pub const HOST_AS: u32 = 65001;

/// IPv4 VIPs, inside the range the router accepts (198.51.100.0/24).
pub const VIPS4: [Ipv4Addr; 3] = [
    Ipv4Addr::new(198, 51, 100, 10),
    Ipv4Addr::new(198, 51, 100, 11),
    Ipv4Addr::new(198, 51, 100, 12),
];
/// IPv6 VIPs, inside the range the router accepts (2001:db8:100::/48).
pub const VIPS6: [Ipv6Addr; 3] = [
    Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0x10),
    Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0x11),
    Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0x12),
];
/// The VIP ranges the router accepts, as its SITE block gives them.
const VIP_RANGE4: &str = "[ 198.51.100.0/24{32,32} ]";
const VIP_RANGE6: &str = "[ 2001:db8:100::/48{128,128} ]";

/// The router's address on the segment.
pub const ROUTER4: Ipv4Addr = Ipv4Addr::new(10, 80, 0, 254);
/// The router's IPv6 address on the segment.
pub const ROUTER6: Ipv6Addr = Ipv6Addr::new(0xfd80, 0, 0, 0, 0, 0, 0, 0xfe);
/// The client's address, behind the router.
pub const CLIENT4: Ipv4Addr = Ipv4Addr::new(10, 81, 0, 1);
/// The client's IPv6 address.
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd81, 0, 0, 0, 0, 0, 0, 1);

/// Address of balancer host `i` on the segment (10.80.0.10 + i).
pub fn host4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 80, 0, 10 + i as u8)
}

/// IPv6 address of balancer host `i` (fd80::10 + i, hexadecimal).
pub fn host6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd80, 0, 0, 0, 0, 0, 0, 0x10 + i as u16)
}

/// Address of backend `i` on the segment (10.80.0.100 + i).
pub fn backend4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 80, 0, 100 + i as u8)
}

/// IPv6 address of backend `i` (fd80::100 + i, hexadecimal).
pub fn backend6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd80, 0, 0, 0, 0, 0, 0, 0x100 + i as u16)
}

/// Host `i`'s address of `vip`'s family: its next hop on the router.
pub fn host_addr(i: usize, vip: IpAddr) -> IpAddr {
    match vip {
        IpAddr::V4(_) => host4(i).into(),
        IpAddr::V6(_) => host6(i).into(),
    }
}

/// The switch's end of host `i`'s veth (the host's end is `eth0`).
pub fn port(i: usize) -> String {
    format!("plb{i}")
}

/// How long a host's or the router's BGP sessions may take to come up.
const SESSION_TIMEOUT: Duration = Duration::from_secs(15);

/// One balancer host: its namespace (interface `eth0`) and its BIRD.
#[derive(Debug)]
pub struct Host {
    /// The host's index, which its addresses and port name derive from.
    pub index: usize,
    pub ns: Netns,
    pub bird: Bird,
}

/// The topology; see the module's documentation.
pub struct Ecmp<'lab> {
    lab: &'lab Lab,
    /// The bridge `br0` and the switch's ends of every veth: `prt` the
    /// router's, `plbN` the hosts', `pbeN` the backends'.
    pub switch: Netns,
    pub client: Netns,
    /// The router; `eth0` on the segment, `eth1` towards the client.
    pub router: Netns,
    pub router_bird: Bird,
    /// The live hosts, by index (with gaps once hosts are removed).
    pub hosts: Vec<Host>,
    pub backends: Vec<Netns>,
    bfd: bool,
    next_index: usize,
}

impl<'lab> Ecmp<'lab> {
    /// Builds the topology with `hosts` balancer hosts (`lb0`...) and
    /// `backends` backends (`be0`...), BFD on the BGP sessions or not, and
    /// waits until every BGP session is Established on both ends (and, with
    /// BFD, every host's BFD sessions are Up). Nothing is announced yet.
    pub fn build(lab: &'lab Lab, hosts: usize, backends: usize, bfd: bool) -> Result<Ecmp<'lab>> {
        let switch = lab.netns("sw")?;
        let client = lab.netns("client")?;
        let router = lab.netns("rt")?;
        lab.veth((&router, "eth0"), (&switch, "prt"), VethOptions::default())?;
        lab.bridge(&switch, "br0", &["prt"])?;

        lab.veth((&router, "eth1"), (&client, "eth0"), VethOptions::default())?;
        router.sysctl("net.ipv4.ip_forward", "1")?;
        router.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        // Hash flows on addresses and ports, not addresses only, so that
        // one client's connections spread over the hosts.
        router.sysctl("net.ipv4.fib_multipath_hash_policy", "1")?;
        router.sysctl("net.ipv6.fib_multipath_hash_policy", "1")?;
        router.add_address("eth0", &format!("{ROUTER4}/24"))?;
        router.add_address("eth0", &format!("{ROUTER6}/64"))?;
        router.add_address("eth1", "10.81.0.254/24")?;
        router.add_address("eth1", "fd81::fe/64")?;
        client.add_address("eth0", &format!("{CLIENT4}/24"))?;
        client.add_address("eth0", &format!("{CLIENT6}/64"))?;
        client.add_route("default", "10.81.0.254")?;
        client.add_route("default", "fd81::fe")?;

        let mut backend_namespaces = Vec::new();
        for i in 0..backends {
            let ns = lab.netns(&format!("be{i}"))?;
            plug(lab, &switch, &ns, &format!("pbe{i}"))?;
            for key in ["all", "eth0"] {
                ns.sysctl(&format!("net.ipv4.conf.{key}.arp_ignore"), "1")?;
                ns.sysctl(&format!("net.ipv4.conf.{key}.arp_announce"), "2")?;
            }
            ns.add_address("eth0", &format!("{}/24", backend4(i)))?;
            ns.add_address("eth0", &format!("{}/64", backend6(i)))?;
            for vip in VIPS4 {
                ns.add_address("lo", &format!("{vip}/32"))?;
            }
            for vip in VIPS6 {
                ns.add_address("lo", &format!("{vip}/128"))?;
            }
            ns.add_route("default", &ROUTER4.to_string())?;
            ns.add_route("default", &ROUTER6.to_string())?;
            backend_namespaces.push(ns);
        }

        let router_bird = Bird::start(lab, &router, "rt", &router_config(bfd)?)?;
        let mut ecmp = Ecmp {
            lab,
            switch,
            client,
            router,
            router_bird,
            hosts: Vec::new(),
            backends: backend_namespaces,
            bfd,
            next_index: 0,
        };
        for _ in 0..hosts {
            ecmp.start_host()?;
        }
        for host in &ecmp.hosts {
            ecmp.wait_sessions(host)?;
        }
        ecmp.router_bird
            .wait_established(2 * hosts, SESSION_TIMEOUT)?;
        Ok(ecmp)
    }

    /// Whether the BGP sessions run BFD.
    pub fn bfd(&self) -> bool {
        self.bfd
    }

    /// The live host with index `index`.
    pub fn host(&self, index: usize) -> Result<&Host> {
        self.hosts
            .iter()
            .find(|h| h.index == index)
            .with_context(|| format!("no live host lb{index}"))
    }

    /// The indices of the live hosts, in order.
    pub fn host_indices(&self) -> Vec<usize> {
        self.hosts.iter().map(|h| h.index).collect()
    }

    /// A new host joins: namespace, veth to the switch (with its XDP
    /// program on the switch's end), addresses, BIRD. Waits until both its
    /// sessions are Established on the host (and their BFD sessions Up,
    /// with BFD on) and returns its index. It announces nothing until its
    /// table holds routes.
    pub fn add_host(&mut self) -> Result<usize> {
        let index = self.start_host()?;
        self.wait_sessions(self.host(index)?)?;
        Ok(index)
    }

    /// Waits until `host`'s two BGP sessions are Established and, with BFD
    /// on, their BFD sessions Up: BFD comes up a second or so after BGP
    /// (BIRD sends one BFD packet a second while a session is down), and
    /// until then only the hold time detects a failure.
    fn wait_sessions(&self, host: &Host) -> Result<()> {
        host.bird.wait_established(2, SESSION_TIMEOUT)?;
        if self.bfd {
            host.bird.wait_bfd_up(2, SESSION_TIMEOUT)?;
        }
        Ok(())
    }

    /// Host `index` leaves as an operator takes it out: its BIRD stops
    /// (closing its sessions, so the router withdraws its routes at once),
    /// then its namespace, with anything else running there, is removed.
    pub fn remove_host(&mut self, index: usize) -> Result<()> {
        let position = self
            .hosts
            .iter()
            .position(|h| h.index == index)
            .with_context(|| format!("no live host lb{index}"))?;
        let mut host = self.hosts.remove(position);
        host.bird.stop()?;
        sweep::remove_namespace(host.ns.name())
    }

    /// Host `index` dies silently: its port on the switch goes down, so
    /// nothing it sends arrives and the router's own link stays up; only
    /// BFD or the BGP hold time tell the router.
    pub fn fail_host(&self, index: usize) -> Result<()> {
        self.host(index)?;
        self.switch
            .ip(["link", "set", &port(index), "down"])
            .map(drop)
    }

    /// Brings host `index`'s port on the switch up again after
    /// [`Ecmp::fail_host`]. Its sessions come back once BIRD retries.
    pub fn heal_host(&self, index: usize) -> Result<()> {
        self.host(index)?;
        self.switch
            .ip(["link", "set", &port(index), "up"])
            .map(drop)
    }

    /// Announces `vip` from host `index` as the balancer daemon does: a
    /// route `VIP/32 dev lo` (`/128`) in the announce table with the
    /// daemon's protocol number.
    pub fn announce(&self, index: usize, vip: IpAddr) -> Result<()> {
        let host = self.host(index)?;
        host.ns.ip(announce_args("replace", vip)).map(drop)
    }

    /// Withdraws `vip` from host `index`: deletes its announce route.
    pub fn withdraw(&self, index: usize, vip: IpAddr) -> Result<()> {
        let host = self.host(index)?;
        host.ns.ip(announce_args("del", vip)).map(drop)
    }

    /// The next hops of the router's route to `vip` in its main table,
    /// sorted: one per host it reaches `vip` through, none without a
    /// route. For IPv6 they are the hosts' global addresses (BIRD takes
    /// the global next hop of the two a host announces, not the
    /// link-local one).
    pub fn next_hops(&self, vip: IpAddr) -> Result<Vec<IpAddr>> {
        router_next_hops(&self.router, vip)
    }

    /// Waits until the router's route to `vip` goes through exactly the
    /// hosts `hosts` (none: no route), polling every 10 ms, and returns how
    /// long that took. Fails after `timeout` with what the route was.
    pub fn wait_next_hops(
        &self,
        vip: IpAddr,
        hosts: &[usize],
        timeout: Duration,
    ) -> Result<Duration> {
        Ok(self.wait_routes(&[(vip, hosts)], timeout)?[0])
    }

    /// [`Ecmp::wait_next_hops`] for several VIPs at once: returns, for each,
    /// how long until its route first matched (each is watched until it
    /// matches, so one that matches late does not delay the others'
    /// figures).
    pub fn wait_routes(
        &self,
        wanted: &[(IpAddr, &[usize])],
        timeout: Duration,
    ) -> Result<Vec<Duration>> {
        let expected: Vec<Vec<IpAddr>> = wanted
            .iter()
            .map(|(vip, hosts)| {
                let mut hops: Vec<IpAddr> = hosts.iter().map(|&i| host_addr(i, *vip)).collect();
                hops.sort();
                hops
            })
            .collect();
        let start = Instant::now();
        let mut matched: Vec<Option<Duration>> = vec![None; wanted.len()];
        loop {
            for (i, (vip, _)) in wanted.iter().enumerate() {
                if matched[i].is_none() && self.next_hops(*vip)? == expected[i] {
                    matched[i] = Some(start.elapsed());
                }
            }
            if let Some(all) = matched.iter().copied().collect::<Option<Vec<_>>>() {
                return Ok(all);
            }
            if start.elapsed() > timeout {
                let mut why = String::new();
                for (i, (vip, _)) in wanted.iter().enumerate() {
                    if matched[i].is_none() {
                        why.push_str(&format!(
                            "\n{vip}: next hops {:?}, expected {:?}",
                            self.next_hops(*vip)?,
                            expected[i]
                        ));
                    }
                }
                bail!(
                    "the router's routes are not as expected after {timeout:?}:{why}\nrouter's BIRD:\n{}",
                    self.router_bird.birdc(&["show", "protocols"])?
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts watching the router's routes to `vips` from a thread, every
    /// 20 ms, while the test changes something that must leave them alone:
    /// each must go through exactly `hosts` at every read.
    pub fn watch_routes(&self, vips: &[IpAddr], hosts: &[usize]) -> RouteWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let router = self.router.clone();
        let wanted: Vec<(IpAddr, Vec<IpAddr>)> = vips
            .iter()
            .map(|vip| {
                let mut hops: Vec<IpAddr> = hosts.iter().map(|&i| host_addr(i, *vip)).collect();
                hops.sort();
                (*vip, hops)
            })
            .collect();
        let worker = std::thread::spawn(move || -> Result<usize> {
            let mut reads = 0;
            while !flag.load(Ordering::SeqCst) {
                for (vip, want) in &wanted {
                    let have = router_next_hops(&router, *vip)?;
                    if &have != want {
                        bail!(
                            "after {reads} reads as expected, the router's route to {vip} went \
                             through {have:?}, not {want:?}"
                        );
                    }
                }
                reads += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(reads)
        });
        RouteWatch { stop, worker }
    }

    /// The router's configuration: the shipped `router.conf` with this
    /// topology's site values.
    pub fn router_config(&self) -> Result<String> {
        router_config(self.bfd)
    }

    /// Host `index`'s configuration: the shipped `balancer-host.conf` with
    /// its site values.
    pub fn host_config(&self, index: usize) -> Result<String> {
        host_config(index, self.bfd)
    }

    /// Creates host `next_index` and starts its BIRD, without waiting for
    /// its sessions.
    fn start_host(&mut self) -> Result<usize> {
        let index = self.next_index;
        self.next_index += 1;
        let ns = self.lab.netns(&format!("lb{index}"))?;
        plug(self.lab, &self.switch, &ns, &port(index))?;
        // A NIC takes in only frames for its own MAC (and broadcasts); a
        // veth takes in every frame, and XDP sees it before any MAC check
        // (the balancer's program makes none). When a host's port goes
        // down the bridge forgets the host's MAC and floods what the router
        // still sends to it: the other hosts would take in and serve a dead
        // host's traffic, which real NICs drop. So the switch floods no
        // unknown unicast to the hosts' ports.
        self.switch.ip([
            "link",
            "set",
            "dev",
            &port(index),
            "type",
            "bridge_slave",
            "flood",
            "off",
        ])?;
        // A balancer on the host's eth0 sends with XDP_TX: the switch's end
        // takes such frames in only when it runs an XDP program itself.
        self.lab.xdp_pass(&self.switch, &port(index))?;
        ns.add_address("eth0", &format!("{}/24", host4(index)))?;
        ns.add_address("eth0", &format!("{}/64", host6(index)))?;
        ns.add_route("default", &ROUTER4.to_string())?;
        ns.add_route("default", &ROUTER6.to_string())?;
        let bird = Bird::start(
            self.lab,
            &ns,
            &format!("lb{index}"),
            &host_config(index, self.bfd)?,
        )?;
        self.hosts.push(Host { index, ns, bird });
        Ok(index)
    }
}

/// A thread watching the router's routes ([`Ecmp::watch_routes`]).
pub struct RouteWatch {
    stop: Arc<AtomicBool>,
    worker: JoinHandle<Result<usize>>,
}

impl RouteWatch {
    /// Stops watching: how many reads found every route as expected, or
    /// the first that did not (the watch ends there).
    pub fn stop(self) -> Result<usize> {
        self.stop.store(true, Ordering::SeqCst);
        self.worker
            .join()
            .map_err(|_| anyhow::anyhow!("the route watch panicked"))?
    }
}

/// Joins `ns` to the switch: a veth from its `eth0` to `port` on the
/// switch, enslaved to `br0`.
fn plug(lab: &Lab, switch: &Netns, ns: &Netns, port: &str) -> Result<()> {
    lab.veth((ns, "eth0"), (switch, port), VethOptions::default())?;
    switch.ip(["link", "set", port, "master", "br0"]).map(drop)
}

fn router_config(bfd: bool) -> Result<String> {
    bird::render(
        bird::ROUTER_CONF,
        &[
            ("ROUTER_ID", ROUTER4.to_string()),
            ("ROUTER_V4", ROUTER4.to_string()),
            ("ROUTER_V6", ROUTER6.to_string()),
            ("ROUTER_AS", ROUTER_AS.to_string()),
            ("HOSTS_V4", "10.80.0.0/24".into()),
            ("HOSTS_V6", "fd80::/64".into()),
            ("HOST_AS", HOST_AS.to_string()),
            ("VIPS_V4", VIP_RANGE4.into()),
            ("VIPS_V6", VIP_RANGE6.into()),
            ("BFD_ENABLED", u8::from(bfd).to_string()),
        ],
    )
}

fn host_config(index: usize, bfd: bool) -> Result<String> {
    bird::render(
        bird::HOST_CONF,
        &[
            ("HOST_ROUTER_ID", host4(index).to_string()),
            ("HOST_V4", host4(index).to_string()),
            ("HOST_V6", host6(index).to_string()),
            ("HOST_AS", HOST_AS.to_string()),
            ("ROUTER_V4", ROUTER4.to_string()),
            ("ROUTER_V6", ROUTER6.to_string()),
            ("ROUTER_AS", ROUTER_AS.to_string()),
            ("ANNOUNCE_TABLE", ANNOUNCE_TABLE.to_string()),
            ("BFD_ENABLED", u8::from(bfd).to_string()),
        ],
    )
}

/// [`Ecmp::next_hops`] on the router's namespace alone, for a thread that
/// watches the routes while the test changes the topology.
pub fn router_next_hops(router: &Netns, vip: IpAddr) -> Result<Vec<IpAddr>> {
    let out = router.ip([
        "-j",
        family(vip),
        "route",
        "show",
        "exact",
        &host_prefix(vip),
    ])?;
    parse_next_hops(&out)
}

fn family(address: IpAddr) -> &'static str {
    if address.is_ipv4() { "-4" } else { "-6" }
}

/// `vip/32` or `vip/128`.
fn host_prefix(vip: IpAddr) -> String {
    let len = if vip.is_ipv4() { 32 } else { 128 };
    format!("{vip}/{len}")
}

/// `ip` arguments that add (`replace`) or delete (`del`) the announce
/// route of `vip`, as the daemon writes it.
fn announce_args(verb: &str, vip: IpAddr) -> Vec<String> {
    [
        family(vip),
        "route",
        verb,
        &host_prefix(vip),
        "dev",
        "lo",
        "table",
        &ANNOUNCE_TABLE.to_string(),
        "proto",
        &BALANCER_PROTO.to_string(),
    ]
    .map(str::to_owned)
    .to_vec()
}

/// The gateways of `ip -j route show` output, sorted: a route's own
/// `gateway`, or the `gateway` of each of its `nexthops`.
fn parse_next_hops(json: &str) -> Result<Vec<IpAddr>> {
    if json.trim().is_empty() {
        return Ok(Vec::new());
    }
    let routes: serde_json::Value =
        serde_json::from_str(json).with_context(|| format!("ip -j route: {json}"))?;
    let mut hops = Vec::new();
    for route in routes.as_array().into_iter().flatten() {
        let nested = route.get("nexthops").and_then(|n| n.as_array());
        for hop in std::iter::once(route).chain(nested.into_iter().flatten()) {
            if let Some(gateway) = hop.get("gateway").and_then(|g| g.as_str()) {
                hops.push(
                    gateway
                        .parse()
                        .with_context(|| format!("gateway {gateway}"))?,
                );
            }
        }
    }
    hops.sort();
    Ok(hops)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_hops_are_read_from_single_and_multipath_routes() {
        let multi = r#"[{"dst":"198.51.100.10","protocol":"bird","metric":32,"flags":[],"nexthops":[{"gateway":"10.80.0.11","dev":"eth0","weight":1,"flags":[]},{"gateway":"10.80.0.10","dev":"eth0","weight":1,"flags":[]}]}]"#;
        assert_eq!(
            parse_next_hops(multi).unwrap(),
            [host4(0), host4(1)].map(IpAddr::from)
        );
        let single = r#"[{"dst":"198.51.100.10","gateway":"10.80.0.12","dev":"eth0","protocol":"bird","metric":32,"flags":[]}]"#;
        assert_eq!(parse_next_hops(single).unwrap(), [IpAddr::from(host4(2))]);
        assert!(parse_next_hops("[]").unwrap().is_empty());
        assert!(parse_next_hops("\n").unwrap().is_empty());
    }

    #[test]
    fn the_rendered_configurations_name_every_site_value() {
        router_config(true).unwrap();
        host_config(0, false).unwrap();
    }
}
