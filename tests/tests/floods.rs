//! Spoofed floods against the balancer, with real connections held through
//! them: the benchmarks' frame generator (BPF_PROG_TEST_RUN in live-frames
//! mode, bounded in frames, paced so that every frame reaches the
//! balancer) sends from the client's link, through the switch, while the
//! client holds echo connections and opens 50 new connections a second.
//! The connection table is small (16,384 entries) so that each flood is
//! many times its size.
//!
//! What breaks a held connection is its entry leaving the table, or being
//! replaced, while something changes where a new flow of its 5-tuple would
//! go: a weight change for Maglev, any placement at all for round robin
//! and least connections. Each test drains a backend that holds
//! connections around its floods.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use balancer_bench::Generator;
use balancer_common::maps::HANDSHAKE_ENTRIES;
use balancer_tests::{
    Lab, Netns, Process,
    backend::ServerProcess,
    daemon::{cli, start_with_config},
    flood,
    load::SteadyLoad,
    netns_test,
    packet::{Packet, with_macs},
    servers::{EchoConnection, tally_names},
    topology::{self, ConfigText, NO_CHECK, Server, Topology, plain},
};

/// Entries of the connection table in these tests.
const TABLE: u32 = 16_384;
/// Distinct 5-tuples of a flood: almost four tables' worth.
const FLOOD_FLOWS: u32 = 60_000;
/// Held connections per VIP with traffic every [`ACTIVE_EVERY`].
const ACTIVE: usize = 20;
/// Held connections per VIP left idle during the flood, all on be0.
const IDLE: usize = 10;
const ACTIVE_EVERY: Duration = Duration::from_millis(200);
/// New connections of the steady client: 50 a second.
const PACE: Duration = Duration::from_millis(20);
/// A spoofed source no backend can route a reply to.
const SPOOFED: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 66);

fn vip(port: u16) -> SocketAddr {
    SocketAddr::new(topology::VIP4.into(), port)
}

/// The name servers the steady client and the checks use.
const WEB: u16 = 80;
/// Echo servers behind a Maglev VIP.
const MAGLEV: u16 = 81;
/// Echo servers behind a least-connections VIP.
const LEAST: u16 = 82;
/// Echo servers behind a round-robin VIP.
const ROUND_ROBIN: u16 = 83;

/// Three backends with a name server on port 80 of every address and echo
/// servers on the VIP's ports 81 to 83; the balancer with `web` (Maglev,
/// port 80), `maglev` (port 81), `least` (least connections, port 82) and
/// `rr` (round robin, port 83), a table of [`TABLE`] entries and
/// `datapath` lines; the client's link taking the generator's frames in.
struct Setup {
    t: Topology,
    _servers: Vec<ServerProcess>,
    _daemon: Process,
    /// The balancer's MAC, the client's.
    lb_mac: [u8; 6],
    client_mac: [u8; 6],
}

fn setup(lab: &Lab, datapath: &str) -> Result<Setup> {
    let t = Topology::build(lab, 3)?;
    let servers = ServerProcess::on_every_backend(
        &t,
        &[
            (Server::TcpName, "0.0.0.0:80".parse()?),
            (Server::TcpEcho, vip(MAGLEV)),
            (Server::TcpEcho, vip(LEAST)),
            (Server::TcpEcho, vip(ROUND_ROBIN)),
        ],
    )?;
    let backends = plain(&t.backend_addresses(false));
    let least = format!("scheduler = \"least-connections\"\n{NO_CHECK}");
    let rr = format!("scheduler = \"round-robin\"\n{NO_CHECK}");
    let config = ConfigText::default()
        .vip(
            "web",
            topology::VIP4.into(),
            WEB,
            "tcp",
            NO_CHECK,
            &backends,
        )
        .vip(
            "maglev",
            topology::VIP4.into(),
            MAGLEV,
            "tcp",
            NO_CHECK,
            &backends,
        )
        .vip(
            "least",
            topology::VIP4.into(),
            LEAST,
            "tcp",
            &least,
            &backends,
        )
        .vip(
            "rr",
            topology::VIP4.into(),
            ROUND_ROBIN,
            "tcp",
            &rr,
            &backends,
        )
        .build()
        .replacen(
            "[datapath]\n",
            &format!("[datapath]\nflow_table_size = {TABLE}\n{datapath}"),
            1,
        );
    let daemon = start_with_config(lab, &t.lb, &config)?;
    let names = tally_names(&t.client, vip(WEB), 30)?;
    ensure!(names.len() == 3, "before the flood: {names:?}");
    // The generator's frames leave the client through `eth0`; the switch's
    // end takes frames sent with XDP_TX in only if it runs XDP.
    lab.xdp_pass(&t.switch, "pc")?;
    let (lb_mac, client_mac) = (t.lb.mac("eth0")?, t.client.mac("eth0")?);
    Ok(Setup {
        t,
        _servers: servers,
        _daemon: daemon,
        lb_mac,
        client_mac,
    })
}

/// Connections held on a VIP: active ones, and idle ones on be0.
struct Held {
    active: Vec<EchoConnection>,
    idle: Vec<EchoConnection>,
}

fn hold(client: &Netns, port: u16) -> Result<Held> {
    let mut held = Held {
        active: Vec::new(),
        idle: Vec::new(),
    };
    for _ in 0..400 {
        let mut c = EchoConnection::open(client, vip(port))?;
        c.echo("hello")?;
        if c.backend == "be0" && held.idle.len() < IDLE {
            held.idle.push(c);
        } else if held.active.len() < ACTIVE {
            held.active.push(c);
        }
        if held.idle.len() == IDLE && held.active.len() == ACTIVE {
            return Ok(held);
        }
    }
    bail!(
        "could not hold {IDLE} connections on be0 and {ACTIVE} others on port {port}: {} and {}",
        held.idle.len(),
        held.active.len()
    )
}

/// Echoes on every active connection every [`ACTIVE_EVERY`] until stopped;
/// the first failure ends it.
struct Active {
    stop: Arc<AtomicBool>,
    worker: thread::JoinHandle<(Vec<EchoConnection>, Result<()>)>,
}

impl Active {
    fn start(mut connections: Vec<EchoConnection>) -> Active {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let worker = thread::spawn(move || {
            let mut round = 0;
            while !flag.load(Ordering::SeqCst) {
                for (i, c) in connections.iter_mut().enumerate() {
                    if let Err(err) = c.echo(&format!("round {round}")) {
                        let err = err.context(format!("active connection {i} on {}", c.backend));
                        return (connections, Err(err));
                    }
                }
                round += 1;
                thread::sleep(ACTIVE_EVERY);
            }
            (connections, Ok(()))
        });
        Active { stop, worker }
    }

    fn stop(self) -> Result<Vec<EchoConnection>> {
        self.stop.store(true, Ordering::SeqCst);
        let (connections, outcome) = self
            .worker
            .join()
            .map_err(|_| anyhow!("the active connections' thread panicked"))?;
        outcome?;
        Ok(connections)
    }
}

/// A flood of `flows` 5-tuples from `src` to `port`, `frames` frames in
/// all, as TCP segments with `syn` or as ACKs, from the client's link.
fn flood(s: &Setup, src: IpAddr, first_port: u16, port: u16, syn: bool, frames: u32) -> Result<()> {
    let packet = Packet::tcp(src, first_port, topology::VIP4.into(), port);
    let packet = if syn { packet } else { packet.established() };
    let frame = with_macs(&packet.build(), s.lb_mac, s.client_mac);
    let mut generator = Generator::load(&frame, FLOOD_FLOWS)?;
    flood::send(
        &s.t.client,
        &mut generator,
        frames,
        &format!("flood to port {port}"),
    )
}

/// Every idle connection still echoes.
fn idle_still_work(held: &mut Held) -> Result<()> {
    all_echo(held.idle.iter_mut())
}

/// Every one of `connections` still echoes; otherwise how many broke, and
/// the first error.
fn all_echo<'a>(connections: impl Iterator<Item = &'a mut EchoConnection>) -> Result<()> {
    let (mut broke, mut total, mut first) = (0, 0, None);
    for c in connections {
        total += 1;
        if let Err(err) = c.echo("after the flood") {
            broke += 1;
            first.get_or_insert(format!("on {}: {err:#}", c.backend));
        }
    }
    match first {
        None => Ok(()),
        Some(first) => bail!("{broke} of {total} connections broke, first {first}"),
    }
}

/// Both outcomes: the errors of both together.
fn both(a: Result<()>, b: Result<()>) -> Result<()> {
    match (a, b) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(e), Ok(())) | (Ok(()), Err(e)) => Err(e),
        (Err(a), Err(b)) => bail!("{a:#}; {b:#}"),
    }
}

/// One flood at a time: each takes a CPU.
static FLOODS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Drains be0 (10.50.0.10) on VIP `name`: the ring changes, and where a
/// flow the table lost would go.
fn drain_be0(lab: &Lab, name: &str) -> Result<()> {
    let out = cli(lab, ["backend", "weight", name, "10.50.0.10", "0"])?;
    ensure!(
        out.status.success(),
        "cannot drain be0 on {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The steady client saw no failure.
fn steady_saw_no_failure(steady: SteadyLoad) -> Result<()> {
    let attempts = steady.stop()?;
    let failed: Vec<_> = attempts.iter().filter(|a| a.outcome.is_err()).collect();
    ensure!(
        failed.is_empty(),
        "{} of {} new connections failed, first: {:?}",
        failed.len(),
        attempts.len(),
        failed[0].outcome
    );
    println!("steady client: {} connections, none failed", attempts.len());
    Ok(())
}

#[test]
fn a_syn_flood_and_a_drain_break_no_held_connection() {
    netns_test("flood_syn", Duration::from_secs(150), |lab| {
        let _one = FLOODS.lock();
        let s = setup(lab, "")?;
        let mut maglev = hold(&s.t.client, MAGLEV)?;
        let mut least = hold(&s.t.client, LEAST)?;
        let active = Active::start(
            std::mem::take(&mut maglev.active)
                .into_iter()
                .chain(std::mem::take(&mut least.active))
                .collect(),
        );
        let steady = SteadyLoad::start(&s.t.client, vip(WEB), PACE);
        for port in [MAGLEV, LEAST] {
            flood(&s, SPOOFED.into(), 1024, port, true, FLOOD_FLOWS)?;
        }
        // The rings change while the table holds what survived.
        drain_be0(lab, "maglev")?;
        drain_be0(lab, "least")?;
        for port in [MAGLEV, LEAST] {
            flood(&s, SPOOFED.into(), 1024, port, true, FLOOD_FLOWS)?;
        }
        thread::sleep(ACTIVE_EVERY * 2);
        active.stop()?;
        both(
            idle_still_work(&mut maglev).context("maglev"),
            idle_still_work(&mut least).context("least connections"),
        )?;
        steady_saw_no_failure(steady)?;
        // The spoofed SYNs to the least-connections VIP wait in the
        // handshake table, which the metrics show once a scan counted it.
        // Its LRU lists are per CPU: a flood that arrives on one CPU fills
        // that CPU's share (32,768 of 65,536 on 2 CPUs) and turns it over.
        let entries = handshake_entries_after_a_scan(&s)?;
        ensure!(
            (20_000..=u64::from(HANDSHAKE_ENTRIES)).contains(&entries),
            "the handshake table holds {entries} entries after {FLOOD_FLOWS} spoofed handshakes"
        );
        Ok(())
    });
}

/// `balancer_handshake_table_entries` once the daemon's scan (every 5 s)
/// has counted the table, waiting up to 8 s.
fn handshake_entries_after_a_scan(s: &Setup) -> Result<u64> {
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    loop {
        let scrape = balancer_tests::metrics::scrape(&s.t.lb, "127.0.0.1:9100".parse()?)?;
        if let Some(n) = scrape.value("balancer_handshake_table_entries", &[])
            && (n > 0.0 || std::time::Instant::now() > deadline)
        {
            return Ok(n as u64);
        }
        if std::time::Instant::now() > deadline {
            bail!("no balancer_handshake_table_entries within 8 s");
        }
        thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn spoofed_syns_over_a_clients_port_range_move_none_of_its_connections() {
    netns_test("flood_client_ports", Duration::from_secs(150), |lab| {
        let _one = FLOODS.lock();
        let s = setup(lab, "")?;
        let mut held: Vec<(u16, EchoConnection)> = Vec::new();
        for port in [ROUND_ROBIN, LEAST, MAGLEV] {
            for _ in 0..ACTIVE {
                let mut c = EchoConnection::open(&s.t.client, vip(port))?;
                c.echo("hello")?;
                held.push((port, c));
            }
        }
        // The client's whole ephemeral port range, from its own address.
        let range =
            s.t.client
                .exec("sysctl", ["-n", "net.ipv4.ip_local_port_range"])?;
        let mut bounds = range.split_whitespace().map(str::parse::<u16>);
        let (Some(Ok(low)), Some(Ok(high))) = (bounds.next(), bounds.next()) else {
            bail!("unreadable port range {range:?}");
        };
        let ports = u32::from(high - low) + 1;
        // A SYN the balancer placed afresh would now move a Maglev flow
        // too.
        drain_be0(lab, "maglev")?;
        for port in [ROUND_ROBIN, LEAST, MAGLEV] {
            let packet = Packet::tcp(topology::CLIENT4.into(), low, topology::VIP4.into(), port);
            let frame = with_macs(&packet.build(), s.lb_mac, s.client_mac);
            let mut generator = Generator::load(&frame, ports)?;
            flood::send(
                &s.t.client,
                &mut generator,
                ports,
                &format!("flood to port {port}"),
            )?;
        }
        // And exactly the 5-tuples of the held connections, from a packet
        // socket: the spoofer's aim, whatever the cycle above covered.
        inject(&s.t.client, &held_syns(&s)?)?;
        let mut outcome = Ok(());
        for port in [ROUND_ROBIN, LEAST, MAGLEV] {
            let on_port = held.iter_mut().filter(|(p, _)| *p == port);
            let checked = all_echo(on_port.map(|(_, c)| c)).with_context(|| format!("port {port}"));
            outcome = both(outcome, checked);
        }
        outcome
    });
}

#[test]
fn a_flood_of_repeated_spoofed_five_tuples_churns_no_held_connection_out() {
    netns_test("flood_repeated", Duration::from_secs(150), |lab| {
        let _one = FLOODS.lock();
        let s = setup(lab, "")?;
        let mut maglev = hold(&s.t.client, MAGLEV)?;
        let active = Active::start(std::mem::take(&mut maglev.active));
        let steady = SteadyLoad::start(&s.t.client, vip(WEB), PACE);
        // Every 5-tuple twice, as ACKs: each would make an entry.
        flood(&s, SPOOFED.into(), 1024, MAGLEV, false, 2 * FLOOD_FLOWS)?;
        drain_be0(lab, "maglev")?;
        thread::sleep(ACTIVE_EVERY * 2);
        let mut active = active.stop()?;
        both(
            all_echo(active.iter_mut()).context("active"),
            idle_still_work(&mut maglev).context("idle"),
        )?;
        steady_saw_no_failure(steady)
    });
}

/// Sends `frames` out of `ns`'s `eth0` through a packet socket, as they
/// are.
fn inject(ns: &Netns, frames: &[Vec<u8>]) -> Result<()> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    ns.run(|| -> Result<()> {
        let ifindex = nix::net::if_::if_nametoindex("eth0")?;
        // SAFETY: a plain socket call; the descriptor is owned from here.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        ensure!(
            fd >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: `fd` is a new descriptor nothing else owns.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        addr.sll_halen = 6;
        for frame in frames {
            // SAFETY: the buffer and the address outlive the call.
            let sent = unsafe {
                libc::sendto(
                    socket.as_raw_fd(),
                    frame.as_ptr().cast(),
                    frame.len(),
                    0,
                    (&raw const addr).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            ensure!(
                sent == frame.len() as isize,
                "send: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    })?
}

/// A SYN, as a spoofer would send it, for the 5-tuple of every TCP
/// connection the client holds to a VIP.
fn held_syns(s: &Setup) -> Result<Vec<Vec<u8>>> {
    let sockets = s.t.client.exec("ss", ["-tnH", "state", "established"])?;
    let mut frames = Vec::new();
    for line in sockets.lines() {
        let mut fields = line.split_whitespace().skip(2);
        let (Some(local), Some(peer)) = (fields.next(), fields.next()) else {
            continue;
        };
        let (Ok(local), Ok(peer)) = (local.parse::<SocketAddr>(), peer.parse::<SocketAddr>())
        else {
            continue;
        };
        if peer.ip() == IpAddr::from(topology::VIP4) {
            let p = Packet::tcp(local.ip(), local.port(), peer.ip(), peer.port());
            frames.push(with_macs(&p.build(), s.lb_mac, s.client_mac));
        }
    }
    ensure!(
        !frames.is_empty(),
        "no established connection to the VIP in `ss`"
    );
    Ok(frames)
}
