//! NAT forwarding end to end, through namespaces: a client behind a
//! router, the balancer, and backends that have nothing but their
//! addresses (no VIP, no sysctl, no route to the clients) and listen on
//! another port than the VIP's; and path MTU across a smaller link on the
//! client's side, which needs the router's ICMP errors translated to the
//! backends.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use balancer_tests::{
    Lab, Netns,
    daemon::{cli_json, start_with_config},
    netns_test,
    servers::{download, tcp_ask_peer, upload},
    topology::{self, ConfigText, LB4, LB6, NO_CHECK, Server, Topology},
};

/// The port the backends listen on.
const BACKEND_PORT: u16 = 8080;

/// `[datapath]` with the balancer's own addresses as the SNAT pools.
fn snat_pools() -> String {
    format!("snat_ipv4 = [\"{LB4}\"]\nsnat_ipv6 = [\"{LB6}\"]\n")
}

/// A NAT VIP `name` on `address` port 80 over `t`'s backends of its
/// family, on [`BACKEND_PORT`], weights 1, 1, 2 (`options`: more lines of
/// the VIP).
fn nat_vip(
    config: ConfigText,
    t: &Topology,
    name: &str,
    address: IpAddr,
    options: &str,
) -> ConfigText {
    nat_vip_on(config, t, name, (address, 80, "tcp"), BACKEND_PORT, options)
}

/// [`nat_vip`] on port `vip.1` over protocol `vip.2`, to backends on
/// `backend_port`.
fn nat_vip_on(
    config: ConfigText,
    t: &Topology,
    name: &str,
    vip: (IpAddr, u16, &str),
    backend_port: u16,
    options: &str,
) -> ConfigText {
    let (address, vip_port, protocol) = vip;
    let extras = [
        format!("port = {backend_port}\nweight = 1\n"),
        format!("port = {backend_port}\nweight = 1\n"),
        format!("port = {backend_port}\nweight = 2\n"),
    ];
    let backends: Vec<(IpAddr, &str)> = t
        .backend_addresses(address.is_ipv6())
        .into_iter()
        .zip(&extras)
        .map(|(a, e)| (a, e.as_str()))
        .collect();
    config.vip(
        name,
        address,
        vip_port,
        protocol,
        &format!("forwarding = \"nat\"\n{options}"),
        &backends,
    )
}

/// Who answered `n` connections from the client to `vip` port 80, and
/// the sources the backends saw.
fn ask(t: &Topology, vip: IpAddr, n: usize) -> Result<(BTreeMap<String, usize>, Vec<SocketAddr>)> {
    ask_port(t, vip, 80, n)
}

#[test]
fn backends_that_know_nothing_of_the_vip_serve_it_on_their_own_port() {
    netns_test("nat_basic", Duration::from_secs(120), |lab| {
        let t = Topology::build_nat(lab, 3, 1500)?;
        t.serve(Server::TcpPeer, "::".parse()?, BACKEND_PORT)?;
        let config = ConfigText::default().datapath(&snat_pools());
        let config = nat_vip(config, &t, "web4", topology::VIP4.into(), NO_CHECK);
        let config = nat_vip(config, &t, "web6", topology::VIP6.into(), NO_CHECK);
        let _daemon = start_with_config(lab, &t.lb, &config.build())?;
        for (vip, snat) in [
            (IpAddr::from(topology::VIP4), IpAddr::from(LB4)),
            (IpAddr::from(topology::VIP6), IpAddr::from(LB6)),
        ] {
            const N: usize = 400;
            let (names, peers) = ask(&t, vip, N)?;
            eprintln!("{vip}: {names:?}");
            ensure!(
                peers.iter().all(|p| p.ip() == snat),
                "the backends saw sources other than {snat}: {:?}",
                peers.iter().find(|p| p.ip() != snat)
            );
            let share = |name: &str| *names.get(name).unwrap_or(&0) as f64 / N as f64;
            for (name, want) in [("be0", 0.25), ("be1", 0.25), ("be2", 0.5)] {
                ensure!(
                    (share(name) - want).abs() < 0.08,
                    "{vip}: {name} took {:.2} of new connections, not {want}: {names:?}",
                    share(name)
                );
            }
        }
        Ok(())
    });
}

/// The UDP name servers' port on the backends.
const UDP_BACKEND_PORT: u16 = 5353;

#[test]
fn udp_and_connections_without_source_nat_reach_the_backends_and_come_back() {
    netns_test("nat_udp_plain", Duration::from_secs(120), |lab| {
        let t = Topology::build_nat(lab, 3, 1500)?;
        t.serve(Server::TcpPeer, "::".parse()?, BACKEND_PORT)?;
        t.serve(Server::UdpName, "::".parse()?, UDP_BACKEND_PORT)?;
        // Without source NAT the backends route the clients through the
        // balancer: what IPVS's NAT mode asks of them.
        for backend in &t.backends {
            backend.add_route("10.60.0.0/24", &LB4.to_string())?;
            backend.add_route("fd60::/64", &LB6.to_string())?;
        }
        let udp_backends = |v6: bool| -> Vec<(IpAddr, String)> {
            t.backend_addresses(v6)
                .into_iter()
                .map(|a| (a, format!("port = {UDP_BACKEND_PORT}\n")))
                .collect()
        };
        let mut config = ConfigText::default().datapath(&snat_pools());
        for (name, vip, v6) in [
            ("dns4", IpAddr::from(topology::VIP4), false),
            ("dns6", IpAddr::from(topology::VIP6), true),
        ] {
            let backends = udp_backends(v6);
            let backends: Vec<(IpAddr, &str)> =
                backends.iter().map(|(a, e)| (*a, e.as_str())).collect();
            config = config.vip(
                name,
                vip,
                53,
                "udp",
                &format!("forwarding = \"nat\"\n{NO_CHECK}"),
                &backends,
            );
        }
        let plain = |v6: bool| -> Vec<(IpAddr, String)> {
            t.backend_addresses(v6)
                .into_iter()
                .map(|a| (a, format!("port = {BACKEND_PORT}\n")))
                .collect()
        };
        for (name, vip, v6) in [
            ("plain4", IpAddr::from(topology::VIP4), false),
            ("plain6", IpAddr::from(topology::VIP6), true),
        ] {
            let backends = plain(v6);
            let backends: Vec<(IpAddr, &str)> =
                backends.iter().map(|(a, e)| (*a, e.as_str())).collect();
            config = config.vip(
                name,
                vip,
                81,
                "tcp",
                &format!("forwarding = \"nat\"\nsnat = false\n{NO_CHECK}"),
                &backends,
            );
        }
        let _daemon = start_with_config(lab, &t.lb, &config.build())?;
        for (vip, client) in [
            (
                IpAddr::from(topology::VIP4),
                IpAddr::from(topology::REMOTE_CLIENT4),
            ),
            (
                IpAddr::from(topology::VIP6),
                IpAddr::from(topology::REMOTE_CLIENT6),
            ),
        ] {
            // UDP: 60 flows, three datagrams each, every answer from the
            // flow's one backend, all three backends used.
            let mut names = BTreeMap::<String, usize>::new();
            for flow in 0..60u16 {
                let socket = t
                    .client
                    .run(|| std::net::UdpSocket::bind((client, 30000 + flow)))??;
                socket.set_read_timeout(Some(Duration::from_secs(2)))?;
                let mut first = None;
                for _ in 0..3 {
                    socket.send_to(b"name?", (vip, 53))?;
                    let mut buf = [0u8; 64];
                    let (n, from) = socket.recv_from(&mut buf)?;
                    ensure!(from == SocketAddr::new(vip, 53), "answered from {from}");
                    let name = String::from_utf8_lossy(&buf[..n]).into_owned();
                    ensure!(
                        first.get_or_insert_with(|| name.clone()) == &name,
                        "a UDP flow moved between backends"
                    );
                }
                *names.entry(first.unwrap_or_default()).or_default() += 1;
            }
            ensure!(names.len() == 3, "{vip}: UDP flows reached {names:?}");
            // TCP without source NAT: the backends see the client.
            let (names, peers) = ask_port(&t, vip, 81, 30)?;
            ensure!(names.len() == 3, "{vip}: TCP reached {names:?}");
            ensure!(
                peers.iter().all(|p| p.ip() == client),
                "the backends saw {:?}, not the client {client}",
                peers.iter().find(|p| p.ip() != client)
            );
        }
        Ok(())
    });
}

/// [`ask`] on port `port`.
fn ask_port(
    t: &Topology,
    vip: IpAddr,
    port: u16,
    n: usize,
) -> Result<(BTreeMap<String, usize>, Vec<SocketAddr>)> {
    let mut names = BTreeMap::new();
    let mut peers = Vec::new();
    for _ in 0..n {
        let (name, peer) = tcp_ask_peer(&t.client, SocketAddr::new(vip, port))?;
        *names.entry(name).or_default() += 1;
        peers.push(peer);
    }
    Ok((names, peers))
}

/// Health checks every 200 ms, two to go down or up: on the backend's own
/// port, as NAT backends are checked.
const FAST_CHECK: &str = "[vip.health_check]\nkind = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"150ms\"\nrise = 2\nfall = 2\n";

/// Who answers `n` new connections to VIP4 port 80, polling until
/// `done` says the answers are as wanted and none failed (up to 10 s:
/// while a change takes effect, connections to a backend that died are
/// refused).
fn until(
    t: &Topology,
    n: usize,
    what: &str,
    done: impl Fn(&BTreeMap<String, usize>) -> bool,
) -> Result<BTreeMap<String, usize>> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let last = ask(t, topology::VIP4.into(), n);
        if let Ok((names, _)) = &last
            && done(names)
        {
            return Ok(names.clone());
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "{what}: still {:?} after 10 s",
            last.map(|(names, _)| names)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_failed_drained_or_added_backend_changes_where_new_connections_go() {
    netns_test("nat_runtime", Duration::from_secs(120), |lab| {
        let t = Topology::build_nat(lab, 4, 1500)?;
        let mut servers = balancer_tests::backend::ServerProcess::on_every_backend(
            &t,
            &[(
                Server::TcpPeer,
                SocketAddr::new("::".parse()?, BACKEND_PORT),
            )],
        )?;
        // be3 is not in the file yet.
        let backends: Vec<(IpAddr, String)> = t.backend_addresses(false)[..3]
            .iter()
            .map(|a| (*a, format!("port = {BACKEND_PORT}\n")))
            .collect();
        let backends: Vec<(IpAddr, &str)> =
            backends.iter().map(|(a, e)| (*a, e.as_str())).collect();
        let config = ConfigText::default()
            .datapath(&snat_pools())
            .vip(
                "web",
                topology::VIP4.into(),
                80,
                "tcp",
                &format!("forwarding = \"nat\"\n{FAST_CHECK}"),
                &backends,
            )
            .build();
        let _daemon = start_with_config(lab, &t.lb, &config)?;
        let all = until(&t, 60, "start", |n| n.len() == 3)?;
        eprintln!("three up: {all:?}");
        // be0 fails: its checks take it out, and no new connection fails.
        servers[0].kill()?;
        let failed = until(&t, 30, "failover", |n| !n.contains_key("be0"))?;
        let (after, _) = ask(&t, topology::VIP4.into(), 60)?;
        ensure!(!after.contains_key("be0") && after.len() == 2, "{after:?}");
        eprintln!("be0 down: {failed:?}, then {after:?}");
        // be1 drained: no new connection.
        let be1 = t.backend_addresses(false)[1].to_string();
        balancer_tests::daemon::cli_ok(lab, &["backend", "drain", "web", &be1])?;
        let drained = until(&t, 30, "drain", |n| n.keys().all(|k| k == "be2"))?;
        eprintln!("be1 drained: {drained:?}");
        // be3 added at runtime, on its port.
        let be3 = t.backend_addresses(false)[3].to_string();
        balancer_tests::daemon::cli_ok(
            lab,
            &[
                "backend",
                "add",
                "web",
                &be3,
                "--port",
                &BACKEND_PORT.to_string(),
            ],
        )?;
        let added = until(&t, 60, "add", |n| n.contains_key("be3"))?;
        ensure!(!added.contains_key("be0") && !added.contains_key("be1"));
        eprintln!("be3 added: {added:?}");
        // be0 back: it takes new connections again.
        servers[0].restart()?;
        let back = until(&t, 60, "recovery", |n| n.contains_key("be0"))?;
        eprintln!("be0 back: {back:?}");
        Ok(())
    });
}

#[test]
fn a_daemon_killed_and_restarted_keeps_every_nat_connection() {
    netns_test("nat_kill", Duration::from_secs(120), |lab| {
        let t = Topology::build_nat(lab, 3, 1500)?;
        t.serve(Server::TcpEcho, "::".parse()?, BACKEND_PORT)?;
        let config = nat_vip(
            ConfigText::default().datapath(&snat_pools()),
            &t,
            "echo",
            topology::VIP4.into(),
            NO_CHECK,
        );
        let config = nat_vip(config, &t, "echo6", topology::VIP6.into(), NO_CHECK).build();
        let mut daemon = balancer_tests::daemon::Daemon::start_in(lab, &t.lb, "nat", &config)?;
        let mut held = Vec::new();
        for i in 0..50 {
            let vip: IpAddr = if i % 2 == 0 {
                topology::VIP4.into()
            } else {
                topology::VIP6.into()
            };
            held.push(balancer_tests::servers::EchoConnection::open(
                &t.client,
                SocketAddr::new(vip, 80),
            )?);
        }
        for (i, c) in held.iter_mut().enumerate() {
            c.echo(&format!("before {i}"))?;
        }
        daemon.kill()?;
        // Dead daemon: the pinned datapath still carries them.
        for (i, c) in held.iter_mut().enumerate() {
            c.echo(&format!("orphaned {i}"))?;
        }
        daemon.start()?;
        for (i, c) in held.iter_mut().enumerate() {
            c.echo(&format!("after {i}"))?;
        }
        // And new ones open, both families.
        for vip in [IpAddr::from(topology::VIP4), topology::VIP6.into()] {
            balancer_tests::servers::EchoConnection::open(&t.client, SocketAddr::new(vip, 80))?
                .echo("new")?;
        }
        let mut backends: BTreeMap<&str, usize> = BTreeMap::new();
        for c in &held {
            *backends.entry(c.backend.as_str()).or_default() += 1;
        }
        eprintln!("50 connections, on {backends:?}, echoed before, during and after the kill");
        Ok(())
    });
}

#[test]
fn twenty_thousand_connections_share_one_snat_address() {
    netns_test("nat_many", Duration::from_secs(300), |lab| {
        // Two client processes hold 10,000 connections each, and each
        // backend's server process a third of them: the open-file limit
        // is per process (20,000 here).
        const N: usize = 20_000;
        const CLIENTS: usize = 2;
        let t = Topology::build_nat(lab, 3, 1500)?;
        let _servers = balancer_tests::backend::ServerProcess::on_every_backend(
            &t,
            &[(
                Server::TcpHold,
                SocketAddr::new("::".parse()?, BACKEND_PORT),
            )],
        )?;
        let config = ConfigText::default().datapath(&format!("snat_ipv4 = [\"{LB4}\"]\n"));
        let config = nat_vip(config, &t, "web", topology::VIP4.into(), NO_CHECK).build();
        let _daemon = start_with_config(lab, &t.lb, &config)?;
        let vip = SocketAddr::new(topology::VIP4.into(), 80);
        let started = std::time::Instant::now();
        let mut clients = Vec::new();
        for _ in 0..CLIENTS {
            let mut command = t
                .client
                .command(balancer_tests::backend::test_server_bin()?);
            command
                .arg("--hold")
                .arg(vip.to_string())
                .arg("--count")
                .arg((N / CLIENTS).to_string());
            clients.push(balancer_tests::Process::start(command)?);
        }
        let mut lines = Vec::new();
        for client in &mut clients {
            let want = format!("held {}", N / CLIENTS);
            client.wait_for_output(Duration::from_secs(200), |out| out.contains(&want))?;
            lines.extend(
                client
                    .output()
                    .lines()
                    .filter(|l| !l.starts_with("held"))
                    .map(str::to_owned),
            );
        }
        let opened = started.elapsed();
        ensure!(lines.len() == N, "{} lines of {N}", lines.len());
        // Every connection was answered, each from a source of its own on
        // the one SNAT address.
        let mut sources = std::collections::BTreeSet::new();
        let mut names = BTreeMap::<String, usize>::new();
        for line in &lines {
            let (name, peer) = line.split_once(' ').with_context(|| format!("{line:?}"))?;
            let peer: SocketAddr = peer.parse()?;
            ensure!(peer.ip() == IpAddr::from(LB4), "source {peer}");
            *names.entry(name.to_owned()).or_default() += 1;
            ensure!(
                sources.insert((name.to_owned(), peer.port())),
                "{name} saw source port {} twice",
                peer.port()
            );
        }
        let stats = balancer_tests::daemon::cli_json(lab, ["stats"])?;
        let counter = |name: &str| stats["counters"][name]["packets"].as_u64().unwrap_or(0);
        ensure!(counter("drop_nat_ports") == 0, "sources ran out: {stats}");
        ensure!(counter("nat_opened") >= N as u64);
        eprintln!(
            "{N} connections opened and answered in {opened:.1?}, all held: {names:?}, {} distinct sources, nat_promoted {}",
            sources.len(),
            counter("nat_promoted")
        );
        Ok(())
    });
}

#[test]
fn a_nat_vip_works_beside_dsr_and_ipip_vips_on_one_balancer() {
    netns_test("nat_beside", Duration::from_secs(120), |lab| {
        let t = Topology::build_nat(lab, 3, 1500)?;
        let dsr: IpAddr = "198.51.100.81".parse()?;
        let ipip: IpAddr = "198.51.100.82".parse()?;
        let rt = t.router.as_ref().context("the NAT topology has a router")?;
        for vip in [dsr, ipip] {
            rt.add_route(&format!("{vip}/32"), &LB4.to_string())?;
        }
        // be0 takes DSR and be1 IPIP: the VIP on loopback, ARP kept quiet
        // for it, the clients routed through the router, and for IPIP a
        // decapsulator. be2 takes NAT, as it comes.
        for (i, vip) in [(0, dsr), (1, ipip)] {
            let ns = &t.backends[i];
            for key in ["all", "eth0"] {
                ns.sysctl(&format!("net.ipv4.conf.{key}.arp_ignore"), "1")?;
                ns.sysctl(&format!("net.ipv4.conf.{key}.arp_announce"), "2")?;
            }
            ns.add_address("lo", &format!("{vip}/32"))?;
            ns.add_route("10.60.0.0/24", &topology::ROUTER4.to_string())?;
        }
        lab.decap(&t.backends[1], "decap1", &["--interface", "eth0"])?;
        t.serve(Server::TcpPeer, "0.0.0.0".parse()?, 80)?;
        t.serve(Server::TcpPeer, "0.0.0.0".parse()?, BACKEND_PORT)?;
        let [be0, be1, be2] = [0, 1, 2].map(|i| t.backend_addresses(false)[i]);
        let nat_backend = format!("port = {BACKEND_PORT}\n");
        let config = ConfigText::default()
            .datapath(&snat_pools())
            .vip(
                "nat",
                topology::VIP4.into(),
                80,
                "tcp",
                &format!("forwarding = \"nat\"\n{NO_CHECK}"),
                &[(be2, nat_backend.as_str())],
            )
            .vip("dsr", dsr, 80, "tcp", NO_CHECK, &[(be0, "")])
            .vip(
                "ipip",
                ipip,
                80,
                "tcp",
                &format!("forwarding = \"ipip\"\n{NO_CHECK}"),
                &[(be1, "")],
            )
            .build();
        let _daemon = start_with_config(lab, &t.lb, &config)?;
        let client = IpAddr::from(topology::REMOTE_CLIENT4);
        // Interleaved, so all three are in use at once.
        for round in 0..20 {
            for (vip, backend, source) in [
                (IpAddr::from(topology::VIP4), "be2", IpAddr::from(LB4)),
                (dsr, "be0", client),
                (ipip, "be1", client),
            ] {
                let (name, peer) = tcp_ask_peer(&t.client, SocketAddr::new(vip, 80))?;
                ensure!(
                    name == backend && peer.ip() == source,
                    "round {round}: {vip} answered by {name} from {peer}, not {backend} from {source}"
                );
            }
        }
        let stats = balancer_tests::daemon::cli_json(lab, ["stats"])?;
        let counter = |name: &str| stats["counters"][name]["packets"].as_u64().unwrap_or(0);
        ensure!(
            counter("nat_opened") >= 20 && counter("encap") >= 20 && counter("tx_reply") >= 20,
            "counters: {stats}"
        );
        Ok(())
    });
}

/// The MTU of the router's link to the client.
const LINK_MTU: u32 = 1280;
/// The size of each transfer.
const BYTES: usize = 4 << 20;
/// The port the backends take uploads on, behind VIP port 81.
const SINK_PORT: u16 = 8081;
/// A port nothing listens on, behind UDP VIP port 53.
const CLOSED_PORT: u16 = 5353;

/// A datapath counter's packets, as `balancer stats` reports it.
fn counter(lab: &Lab, name: &str) -> Result<u64> {
    Ok(cli_json(lab, ["stats"])?["counters"][name]["packets"]
        .as_u64()
        .unwrap_or(0))
}

/// The MTU `backend` has learnt for the path to `peer`, if any.
fn learnt_mtu(backend: &Netns, peer: IpAddr) -> Result<Option<u32>> {
    let family = if peer.is_ipv4() { "-4" } else { "-6" };
    let out = backend.ip([family, "route", "get", &peer.to_string()])?;
    let mut words = out.split_whitespace();
    Ok(words
        .by_ref()
        .skip_while(|w| *w != "mtu")
        .nth(1)
        .and_then(|v| v.parse().ok()))
}

/// Whether a datagram from `client` to `vip` is refused: the client's
/// connected socket reports the ICMP port unreachable its destination
/// sent back (Linux reports errors on connected UDP sockets).
fn refused(client: &Netns, vip: SocketAddr) -> Result<bool> {
    let any: SocketAddr = if vip.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let answer = client.run(|| -> std::io::Result<std::io::Result<usize>> {
        let socket = UdpSocket::bind(any)?;
        socket.connect(vip)?;
        socket.set_read_timeout(Some(Duration::from_secs(3)))?;
        socket.send(b"anyone there?")?;
        Ok(socket.recv(&mut [0u8; 64]))
    })??;
    Ok(matches!(answer, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused))
}

/// 4 MiB downloads through NAT VIPs across a router whose link to the
/// client has a smaller MTU: they complete with every byte right only if
/// the router's path-MTU errors reach the backend translated. A backend's
/// port unreachable reaches the client's socket translated. 4 MiB
/// uploads complete too.
#[test]
fn transfers_cross_a_smaller_link_and_errors_reach_either_end_translated() {
    netns_test("nat_icmp", Duration::from_secs(180), |lab| {
        let t = Topology::build_nat(lab, 3, LINK_MTU)?;
        let any: IpAddr = "::".parse()?;
        t.serve(Server::TcpBulk { bytes: BYTES }, any, BACKEND_PORT)?;
        t.serve(Server::TcpSink, any, SINK_PORT)?;
        let mut config = ConfigText::default().datapath(&snat_pools());
        for (name, address) in [
            ("bulk4", IpAddr::from(topology::VIP4)),
            ("bulk6", IpAddr::from(topology::VIP6)),
        ] {
            config = nat_vip(config, &t, name, address, NO_CHECK);
            let vip = (address, 81, "tcp");
            config = nat_vip_on(config, &t, &format!("{name}-up"), vip, SINK_PORT, NO_CHECK);
            // Nothing listens on the backends' port.
            let vip = (address, 53, "udp");
            config = nat_vip_on(
                config,
                &t,
                &format!("{name}-udp"),
                vip,
                CLOSED_PORT,
                NO_CHECK,
            );
        }
        let _daemon = start_with_config(lab, &t.lb, &config.build())?;
        let vips = [
            (IpAddr::from(topology::VIP4), IpAddr::from(LB4)),
            (IpAddr::from(topology::VIP6), IpAddr::from(LB6)),
        ];
        let mut figures = Vec::new();
        for (vip, snat) in vips {
            // The backends' full-size segments do not fit the router's
            // link to the client: its errors must reach the backend.
            let errors_before = counter(lab, "nat_icmp_to_backend")?;
            let started = Instant::now();
            let name = download(&t.client, SocketAddr::new(vip, 80), BYTES)?;
            let took = started.elapsed();
            let errors = counter(lab, "nat_icmp_to_backend")? - errors_before;
            ensure!(
                errors >= 1,
                "{vip}: the download completed, but no path-MTU error went to a backend"
            );
            // The backend learnt the MTU for its peer: the SNAT address.
            let holder: usize = name.trim_start_matches("be").parse()?;
            let mtu = learnt_mtu(&t.backends[holder], snat)?;
            ensure!(
                mtu == Some(LINK_MTU),
                "{vip}: {name} served the download but learnt MTU {mtu:?} for {snat}"
            );
            figures.push(format!(
                "{vip}: {BYTES} bytes from {name} in {took:?}, {errors} error(s) to the backend"
            ));
            // A backend's port unreachable must reach the client.
            let errors_before = counter(lab, "nat_icmp_to_client")?;
            ensure!(
                refused(&t.client, SocketAddr::new(vip, 53))?,
                "{vip}: no port unreachable reached the client's socket"
            );
            let errors = counter(lab, "nat_icmp_to_client")? - errors_before;
            ensure!(
                errors >= 1,
                "{vip}: the client was refused, not by the balancer"
            );
        }
        // Uploads: only the router's end of the client's link is small,
        // and a veth drops a frame above its MTU on receipt, without an
        // ICMP error (a mismatched link, not a path MTU). A client on the
        // small link has its MTU, and sends segments that fit it.
        t.client
            .ip(["link", "set", "eth0", "mtu", &LINK_MTU.to_string()])?;
        for (vip, _) in vips {
            let started = Instant::now();
            let sink = upload(&t.client, SocketAddr::new(vip, 81), BYTES)?;
            figures.push(format!(
                "{vip}: {BYTES} bytes to {sink} in {:?}",
                started.elapsed()
            ));
        }
        eprintln!("{}", figures.join("; "));
        Ok(())
    });
}
