//! `e2e`: the balancer against what users would run instead, in the same
//! namespaces, with the same backends and the same client load: an
//! nftables DNAT balancer (a numgen map over the backends, as kube-proxy's
//! nftables mode builds), HAProxy in TCP mode and nginx's stream module,
//! plus the client talking to one backend directly as the baseline. The
//! balancer's NAT forwarding is measured beside nftables doing DNAT and
//! SNAT to the same address, over backends that know nothing of the VIP.
//!
//! Two loads, each for a fixed time per run:
//! - short TCP connections: client threads connect, read the backend's
//!   name and close, back to back;
//! - UDP datagrams of a fixed size from the XDP live-frames generator in
//!   the client's namespace, counted by an XDP sink on the backends.
//!
//! CPU: both CPUs serve the client, the backends and the balancer, so the
//! machine's busy time is read from /proc/stat over each run, per
//! connection or per million packets, and the balancer's share is what a
//! setup costs above the direct baseline. The XDP program's own time per
//! packet comes from the kernel's BPF statistics, in a run of its own
//! (turning them on slows every XDP program on the path).

use std::{
    fs::File,
    io::Read as _,
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use balancer_bench::{Floor, Generator, Sink};
use balancer_tests::{
    Lab, Netns, Process, balancer_bin,
    daemon::start,
    packet::{Packet, with_macs},
    topology::{self, CLIENT4, ConfigText, LB4, NO_CHECK, Server, Topology, plain},
};
use nix::sched::{CloneFlags, setns};

use crate::{
    PinnedCpu,
    plot::{self, Bar},
    report::{self, Section, Table},
    stats::Summary,
};

/// Backends behind every setup.
const BACKENDS: usize = 3;
/// The TCP service's port, and the UDP one's.
const TCP_PORT: u16 = 80;
const UDP_PORT: u16 = 5000;
/// Client threads of the TCP load.
const CLIENT_THREADS: usize = 8;
/// UDP payload bytes of every datagram (a 106-byte frame).
const UDP_PAYLOAD: usize = 64;
/// Distinct flows (source ports) the generator cycles through.
const UDP_FLOWS: u32 = 1_024;
/// Frames per generator call (flushed to the veth every 64).
const FRAMES_PER_CALL: u32 = 65_536;
/// NAT's source ports: the range the proxies' and nftables' own
/// connections take theirs from (`ip_local_port_range`).
const SNAT_PORTS: &str = "1024-65535";
/// The source address of the NAT setups (ours and nftables'): an address
/// of the host's of its own, so that the backends' TIME_WAIT sockets of
/// their connections (the backends close first) never meet the
/// connections the proxies open from the host's address in later runs.
const SNAT4: Ipv4Addr = Ipv4Addr::new(10, 50, 0, 3);

/// Options of the end-to-end benchmark.
pub struct Options {
    /// Counted runs of each setup and load (one more is run first and
    /// thrown away).
    pub runs: usize,
    /// Length of one run.
    pub seconds: f64,
}

/// What is measured against each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setup {
    Direct,
    Floor,
    Balancer,
    /// The balancer with `forwarding = "ipip"`, the backends running
    /// `balancer decap`.
    BalancerIpip,
    /// The balancer with `forwarding = "nat"`, source NAT to the host's
    /// address, the backends without the VIP.
    BalancerNat,
    Nftables,
    /// nftables with DNAT and SNAT to the host's address, the backends as
    /// for [`Setup::BalancerNat`].
    NftablesSnat,
    Haproxy,
    Nginx,
}

impl Setup {
    const ALL: [Setup; 9] = [
        Setup::Direct,
        Setup::Floor,
        Setup::Balancer,
        Setup::BalancerIpip,
        Setup::BalancerNat,
        Setup::Nftables,
        Setup::NftablesSnat,
        Setup::Haproxy,
        Setup::Nginx,
    ];

    fn name(self) -> &'static str {
        match self {
            Setup::Direct => "direct (no balancer)",
            Setup::Floor => "XDP floor (one backend)",
            Setup::Balancer => "this balancer (XDP)",
            Setup::BalancerIpip => "this balancer, IPIP",
            Setup::BalancerNat => "this balancer, NAT",
            Setup::Nftables => "nftables DNAT",
            Setup::NftablesSnat => "nftables DNAT+SNAT",
            Setup::Haproxy => "HAProxy (TCP mode)",
            Setup::Nginx => "nginx stream",
        }
    }

    /// HAProxy has no UDP proxying.
    fn has_udp(self) -> bool {
        self != Setup::Haproxy
    }

    /// The backends answer the setup's host, not the client: they need no
    /// VIP of their own.
    fn translates_source(self) -> bool {
        matches!(self, Setup::BalancerNat | Setup::NftablesSnat)
    }
}

/// One setup under one load.
pub struct Measured {
    pub setup: Setup,
    /// Connections or packets per second, per run.
    pub rate: Vec<f64>,
    /// Busy CPU time of the whole machine per unit (µs per connection, ms
    /// per million packets), per run.
    pub cpu: Vec<f64>,
    /// CPU time of the proxy's processes per unit, per run (proxies only).
    pub process_cpu: Vec<f64>,
    /// Connections that failed, over all runs.
    pub failed: u64,
}

/// Everything the benchmark measured.
pub struct Results {
    pub tcp: Vec<Measured>,
    pub udp: Vec<Measured>,
    /// The balancer's XDP program and the backends' sink, ns per packet
    /// from the kernel's BPF statistics under the UDP load.
    pub xdp_ns: Option<(f64, f64)>,
    /// The same with NAT forwarding.
    pub nat_xdp_ns: Option<(f64, f64)>,
    pub versions: Vec<String>,
    pub runs: usize,
    pub seconds: f64,
}

/// Runs the benchmark.
pub fn run(options: &Options) -> Result<Results> {
    let lab = crate::new_lab("bench-e2e")?;
    let t = Topology::build_bare_lb_port(&lab, BACKENDS)?;
    let bed = Bed::new(&lab, t)?;
    let mut tcp = Vec::new();
    let mut udp = Vec::new();
    let (mut xdp_ns, mut nat_xdp_ns) = (None, None);
    for setup in Setup::ALL {
        eprintln!("e2e: {}", setup.name());
        let running = bed.start(setup)?;
        tcp.push(bed.measure_tcp(setup, options, running.pids())?);
        if setup.has_udp() && setup != Setup::Direct {
            udp.push(bed.measure_udp(setup, options, running.pids())?);
        }
        match setup {
            Setup::Balancer => xdp_ns = Some(bed.xdp_cost(setup, options)?),
            Setup::BalancerNat => nat_xdp_ns = Some(bed.xdp_cost(setup, options)?),
            _ => {}
        }
        bed.stop(setup, running)?;
    }
    Ok(Results {
        tcp,
        udp,
        xdp_ns,
        nat_xdp_ns,
        versions: versions(),
        runs: options.runs,
        seconds: options.seconds,
    })
}

/// The topology with its servers and sinks, and where the setups keep
/// their files.
struct Bed<'a> {
    lab: &'a Lab,
    t: Topology,
    sinks: Vec<Sink>,
    lb_mac: [u8; 6],
    client_mac: [u8; 6],
    backend0_mac: [u8; 6],
}

/// A setup while it runs: its processes or program, if any.
enum Running {
    Nothing,
    Process(Process),
    /// Held only to keep the program attached.
    Floor {
        _attached: Floor,
    },
}

impl Running {
    fn pids(&self) -> Vec<i32> {
        match self {
            Running::Process(p) => descendants(p.pid() as i32),
            _ => Vec::new(),
        }
    }
}

impl<'a> Bed<'a> {
    fn new(lab: &'a Lab, t: Topology) -> Result<Bed<'a>> {
        t.serve(Server::TcpName, IpAddr::V4(Ipv4Addr::UNSPECIFIED), TCP_PORT)?;
        // The NAT setups' source address: the host's, beside its own.
        t.lb.add_address("eth0", &format!("{SNAT4}/32"))?;
        // The generator's frames arrive on the switch's end of the client's
        // veth with XDP_TX: that end needs an XDP program to take them in.
        lab.xdp_pass(&t.switch, "pc")?;
        // What leaves the balancer's host is counted (and UDP to the
        // benchmark's port dropped) on the switch's end of its veth, before
        // the bridge: the rest passes on.
        let sinks = vec![t.switch.run(|| Sink::attach("plb", Some(UDP_PORT)))??];
        let lb_mac = t.lb.mac("eth0")?;
        // The floor setup forwards every frame on the balancer's host, ARP
        // included: the client must know the host's MAC without asking.
        t.client.ip([
            "neigh",
            "replace",
            &LB4.to_string(),
            "lladdr",
            &format_mac(lb_mac),
            "dev",
            "eth0",
            "nud",
            "permanent",
        ])?;
        // And the host the client's: NAT's replies go to the client's MAC
        // as the host's neighbour table has it, which nothing else would
        // fill (the client never asks for the host's).
        let client_mac = t.client.mac("eth0")?;
        t.lb.ip([
            "neigh",
            "replace",
            &CLIENT4.to_string(),
            "lladdr",
            &format_mac(client_mac),
            "dev",
            "eth0",
            "nud",
            "permanent",
        ])?;
        for ns in [&t.client, &t.lb] {
            ns.sysctl("net.ipv4.ip_local_port_range", "1024 65535")?;
        }
        Ok(Bed {
            lb_mac,
            client_mac,
            backend0_mac: t.backends[0].mac("eth0")?,
            lab,
            t,
            sinks,
        })
    }

    fn vip(&self) -> IpAddr {
        IpAddr::V4(topology::VIP4)
    }

    /// Puts `setup` in place on the balancer's host.
    fn start(&self, setup: Setup) -> Result<Running> {
        let lb = &self.t.lb;
        let backends = self.t.backend_addresses(false);
        if setup.translates_source() {
            self.backends_hold_vip(false)?;
        }
        match setup {
            Setup::Direct => Ok(Running::Nothing),
            Setup::Floor => {
                let mut floor = Floor::load(self.backend0_mac, self.lb_mac)?;
                lb.run(|| floor.attach("eth0"))??;
                Ok(Running::Floor { _attached: floor })
            }
            Setup::Balancer | Setup::BalancerIpip | Setup::BalancerNat => {
                let mut config = ConfigText::default();
                let options = match setup {
                    Setup::BalancerIpip => {
                        for (i, backend) in self.t.backends.iter().enumerate() {
                            self.lab.decap(
                                backend,
                                &format!("decap{i}"),
                                &["--interface", "eth0"],
                            )?;
                        }
                        format!("forwarding = \"ipip\"\n{NO_CHECK}")
                    }
                    Setup::BalancerNat => {
                        config = config.datapath(&format!(
                            "snat_ipv4 = [\"{SNAT4}\"]\nsnat_ports = \"{SNAT_PORTS}\"\n"
                        ));
                        format!("forwarding = \"nat\"\n{NO_CHECK}")
                    }
                    _ => NO_CHECK.to_owned(),
                };
                let config = config
                    .vip(
                        "tcp",
                        self.vip(),
                        TCP_PORT,
                        "tcp",
                        &options,
                        &plain(&backends),
                    )
                    .vip(
                        "udp",
                        self.vip(),
                        UDP_PORT,
                        "udp",
                        &options,
                        &plain(&backends),
                    )
                    .build();
                let path = self.lab.write_file("balancer.toml", &config)?;
                Ok(Running::Process(start(
                    self.lab,
                    lb,
                    ["--config".as_ref(), path.as_os_str()],
                )?))
            }
            Setup::Nftables | Setup::NftablesSnat => {
                lb.sysctl("net.ipv4.ip_forward", "1")?;
                for key in ["all", "eth0"] {
                    lb.sysctl(&format!("net.ipv4.conf.{key}.send_redirects"), "0")?;
                }
                // DNAT alone: the backends answer through the balancer,
                // which undoes the DNAT (with masquerade, reused source
                // ports met the backends' TIME_WAIT and the rate
                // collapsed). With SNAT the replies come back to the host
                // by their destination.
                let snat = setup == Setup::NftablesSnat;
                if !snat {
                    for backend in &self.t.backends {
                        backend.add_route(&format!("{CLIENT4}/32"), &LB4.to_string())?;
                    }
                }
                let path = self
                    .lab
                    .write_file("nft.conf", &nft_ruleset(&backends, snat))?;
                lb.exec("nft", ["-f".as_ref(), path.as_os_str()])?;
                Ok(Running::Nothing)
            }
            Setup::Haproxy => {
                lb.add_address("lo", &format!("{}/32", topology::VIP4))?;
                let path = self
                    .lab
                    .write_file("haproxy.cfg", &haproxy_config(&backends))?;
                let mut command = lb.command("haproxy");
                command.arg("-db").arg("-f").arg(&path);
                let process = Process::start(command)?;
                self.wait_listening()?;
                Ok(Running::Process(process))
            }
            Setup::Nginx => {
                lb.add_address("lo", &format!("{}/32", topology::VIP4))?;
                let dir = self.lab.scratch("nginx")?;
                std::fs::create_dir_all(&dir)?;
                let path = self
                    .lab
                    .write_file("nginx.conf", &nginx_config(&backends, &dir))?;
                let mut command = lb.command("nginx");
                command
                    .arg("-c")
                    .arg(&path)
                    .arg("-p")
                    .arg(&dir)
                    .arg("-e")
                    .arg(dir.join("error.log"))
                    .arg("-g")
                    .arg("daemon off;");
                let process = Process::start(command)?;
                self.wait_listening()?;
                Ok(Running::Process(process))
            }
        }
    }

    /// Takes `setup` away again, leaving the hosts as they were.
    fn stop(&self, setup: Setup, running: Running) -> Result<()> {
        let lb = &self.t.lb;
        drop(running);
        match setup {
            Setup::Direct | Setup::Floor => {}
            Setup::Balancer | Setup::BalancerIpip | Setup::BalancerNat => {
                if setup == Setup::BalancerIpip {
                    for (i, backend) in self.t.backends.iter().enumerate() {
                        self.lab
                            .decap(backend, &format!("decap{i}"), &["--detach"])?;
                    }
                }
                let out = lb
                    .command(balancer_bin()?)
                    .arg("teardown")
                    .arg("--pin-path")
                    .arg(self.lab.pin_dir()?)
                    .output()?;
                ensure!(
                    out.status.success(),
                    "teardown failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Setup::Nftables | Setup::NftablesSnat => {
                lb.exec("nft", ["delete", "table", "ip", "bench"])?;
                if setup == Setup::Nftables {
                    for backend in &self.t.backends {
                        backend.ip(["route", "del", &format!("{CLIENT4}/32")])?;
                    }
                }
                lb.sysctl("net.ipv4.ip_forward", "0")?;
            }
            Setup::Haproxy | Setup::Nginx => {
                lb.ip([
                    "address",
                    "del",
                    &format!("{}/32", topology::VIP4),
                    "dev",
                    "lo",
                ])?;
            }
        }
        if setup.translates_source() {
            self.backends_hold_vip(true)?;
        }
        Ok(())
    }

    /// Puts the VIPs on every backend's loopback (for DSR, as the topology
    /// made them), or takes them off: backends behind NAT have only their
    /// own addresses.
    fn backends_hold_vip(&self, hold: bool) -> Result<()> {
        let vips = [
            format!("{}/32", topology::VIP4),
            format!("{}/128", topology::VIP6),
        ];
        for backend in &self.t.backends {
            for vip in &vips {
                if hold {
                    backend.add_address("lo", vip)?;
                } else {
                    backend.ip(["address", "del", vip.as_str(), "dev", "lo"])?;
                }
            }
        }
        Ok(())
    }

    /// Waits until the VIP's TCP port answers (a proxy has started).
    fn wait_listening(&self) -> Result<()> {
        let addr = SocketAddr::new(self.vip(), TCP_PORT);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ok = self
                .t
                .client
                .run(|| TcpStream::connect_timeout(&addr, Duration::from_millis(200)))?
                .is_ok();
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("nothing listens on {addr} 10 s after the proxy started");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Where the client sends: the VIP, or backend 0 for the baseline.
    fn target(&self, setup: Setup) -> IpAddr {
        match setup {
            Setup::Direct => IpAddr::V4(topology::backend4(0)),
            _ => self.vip(),
        }
    }

    fn measure_tcp(&self, setup: Setup, options: &Options, pids: Vec<i32>) -> Result<Measured> {
        let addr = SocketAddr::new(self.target(setup), TCP_PORT);
        let mut m = Measured::new(setup);
        for run in 0..=options.runs {
            let before = Cpu::read(&pids)?;
            let (done, failed) = tcp_load(&self.t.client, addr, options.seconds)?;
            let after = Cpu::read(&pids)?;
            ensure!(done > 0, "{}: no connection completed", setup.name());
            if run > 0 {
                let elapsed = after.wall - before.wall;
                m.rate.push(done as f64 / elapsed);
                m.cpu.push((after.busy - before.busy) * 1e6 / done as f64);
                m.process_cpu
                    .push((after.process - before.process) * 1e6 / done as f64);
                m.failed += failed;
            }
        }
        eprintln!(
            "e2e: {} TCP: {:.0} connections/s",
            setup.name(),
            Summary::of(&m.rate).median
        );
        Ok(m)
    }

    /// The UDP frame the generator sends for `setup`.
    fn frame(&self, setup: Setup) -> Vec<u8> {
        let mut packet = Packet::udp(IpAddr::V4(CLIENT4), 20_000, self.target(setup), UDP_PORT);
        packet.payload = vec![0x5a; UDP_PAYLOAD];
        let dst = match setup {
            Setup::Direct => self.backend0_mac,
            _ => self.lb_mac,
        };
        with_macs(&packet.build(), dst, self.client_mac)
    }

    fn delivered(&self) -> Result<u64> {
        let mut total = 0;
        for sink in &self.sinks {
            total += sink.count()?.packets;
        }
        Ok(total)
    }

    fn measure_udp(&self, setup: Setup, options: &Options, pids: Vec<i32>) -> Result<Measured> {
        let frame = self.frame(setup);
        let mut m = Measured::new(setup);
        for run in 0..=options.runs {
            let (before, got_before) = (Cpu::read(&pids)?, self.delivered()?);
            udp_load(&self.t.client, &frame, options.seconds)?;
            // Let queues drain into the sinks.
            std::thread::sleep(Duration::from_millis(100));
            let (after, got_after) = (Cpu::read(&pids)?, self.delivered()?);
            let got = got_after - got_before;
            ensure!(got > 0, "{}: no datagram reached a backend", setup.name());
            if run > 0 {
                let elapsed = after.wall - before.wall - 0.1;
                m.rate.push(got as f64 / elapsed);
                m.cpu
                    .push((after.busy - before.busy) * 1e3 * 1e6 / got as f64);
                m.process_cpu
                    .push((after.process - before.process) * 1e3 * 1e6 / got as f64);
            }
        }
        eprintln!(
            "e2e: {} UDP: {:.0} packets/s",
            setup.name(),
            Summary::of(&m.rate).median
        );
        Ok(m)
    }

    /// Mean ns per packet of the balancer's XDP program (with the NAT
    /// program it tail-calls, if any) and of the sink counting its output,
    /// under the UDP load of `setup`, from the kernel's BPF statistics, on
    /// for one run only.
    fn xdp_cost(&self, setup: Setup, options: &Options) -> Result<(f64, f64)> {
        let frame = self.frame(setup);
        let _stats = BpfStats::on()?;
        let lb_before = xdp_run_stats(&self.t.lb, "eth0")?;
        let sink_before = xdp_run_stats(&self.t.switch, "plb")?;
        udp_load(&self.t.client, &frame, options.seconds)?;
        let lb_after = xdp_run_stats(&self.t.lb, "eth0")?;
        let sink_after = xdp_run_stats(&self.t.switch, "plb")?;
        let per = |a: (u64, u64), b: (u64, u64)| (b.0 - a.0) as f64 / (b.1 - a.1).max(1) as f64;
        Ok((per(lb_before, lb_after), per(sink_before, sink_after)))
    }
}

impl Measured {
    fn new(setup: Setup) -> Measured {
        Measured {
            setup,
            rate: Vec::new(),
            cpu: Vec::new(),
            process_cpu: Vec::new(),
            failed: 0,
        }
    }
}

/// Opens short connections to `addr` from `CLIENT_THREADS` threads in the
/// client's namespace for `seconds`; returns those completed (the server's
/// name read to the end) and those that failed.
fn tcp_load(client: &Netns, addr: SocketAddr, seconds: f64) -> Result<(u64, u64)> {
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let path = client.path();
    let workers: Vec<_> = (0..CLIENT_THREADS)
        .map(|_| {
            let (done, failed, stop, path) =
                (done.clone(), failed.clone(), stop.clone(), path.clone());
            std::thread::spawn(move || -> Result<()> {
                setns(File::open(&path)?, CloneFlags::CLONE_NEWNET)?;
                let mut buf = [0u8; 64];
                while !stop.load(Ordering::Relaxed) {
                    let ok = TcpStream::connect_timeout(&addr, Duration::from_secs(1))
                        .and_then(|mut s| {
                            s.set_read_timeout(Some(Duration::from_secs(1)))?;
                            let mut n = 0;
                            loop {
                                match s.read(&mut buf[n..])? {
                                    0 => break,
                                    k => n += k,
                                }
                            }
                            Ok(n > 0)
                        })
                        .unwrap_or(false);
                    if ok {
                        done.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker
            .join()
            .map_err(|_| anyhow!("a client thread panicked"))??;
    }
    Ok((done.load(Ordering::Relaxed), failed.load(Ordering::Relaxed)))
}

/// Sends `frame` (with its source port cycling over UDP_FLOWS flows) out
/// of the client's eth0 for `seconds`, from CPU 0; returns frames sent.
fn udp_load(client: &Netns, frame: &[u8], seconds: f64) -> Result<u64> {
    client.run(|| -> Result<u64> {
        let _cpu = PinnedCpu::to(0);
        let ifindex = nix::net::if_::if_nametoindex("eth0")?;
        let mut generator = Generator::load(frame, UDP_FLOWS)?;
        let deadline = Instant::now() + Duration::from_secs_f64(seconds);
        let mut sent = 0u64;
        while Instant::now() < deadline {
            sent += u64::from(generator.send(ifindex, FRAMES_PER_CALL, 64)?.frames);
        }
        Ok(sent)
    })?
}

/// CPU time counters at one moment.
struct Cpu {
    /// Seconds since an arbitrary start.
    wall: f64,
    /// CPU-seconds every CPU spent busy (everything but idle and iowait).
    busy: f64,
    /// CPU-seconds of the measured processes.
    process: f64,
}

impl Cpu {
    fn read(pids: &[i32]) -> Result<Cpu> {
        static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        let start = *START.get_or_init(Instant::now);
        let tick = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)?.unwrap_or(100) as f64;
        let stat = std::fs::read_to_string("/proc/stat")?;
        let fields: Vec<f64> = stat
            .lines()
            .next()
            .context("empty /proc/stat")?
            .split_whitespace()
            .skip(1)
            .map(|f| f.parse().unwrap_or(0.0))
            .collect();
        ensure!(fields.len() >= 8, "unexpected /proc/stat: {stat}");
        // user nice system idle iowait irq softirq steal
        let busy = fields[0] + fields[1] + fields[2] + fields[5] + fields[6] + fields[7];
        let mut process = 0.0;
        for pid in pids {
            // Fields after the command's closing parenthesis: utime and
            // stime are the 12th and 13th.
            if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                && let Some((_, rest)) = text.rsplit_once(')')
            {
                let f: Vec<&str> = rest.split_whitespace().collect();
                let ticks: f64 =
                    f[11].parse::<f64>().unwrap_or(0.0) + f[12].parse::<f64>().unwrap_or(0.0);
                process += ticks;
            }
        }
        Ok(Cpu {
            wall: start.elapsed().as_secs_f64(),
            busy: busy / tick,
            process: process / tick,
        })
    }
}

/// `pid` and its children (proxy workers), by /proc.
fn descendants(pid: i32) -> Vec<i32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let parent = all[i];
        if let Ok(text) = std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
        {
            all.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok()),
            );
        }
        i += 1;
    }
    all
}

/// Turns the kernel's BPF run-time statistics on until dropped.
struct BpfStats;

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    fn on() -> Result<BpfStats> {
        std::fs::write(BPF_STATS, "1").context("cannot turn on BPF statistics")?;
        Ok(BpfStats)
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        stats_off();
    }
}

/// Turns the kernel's BPF run-time statistics off (they cost every XDP
/// program about 70 ns per packet).
pub fn stats_off() {
    let _ = std::fs::write(BPF_STATS, "0");
}

/// run_time_ns and run_cnt of the XDP program on `interface` in `ns`.
fn xdp_run_stats(ns: &Netns, interface: &str) -> Result<(u64, u64)> {
    let link = ns.ip(["-j", "link", "show", interface])?;
    let json: serde_json::Value = serde_json::from_str(&link)?;
    let id = json[0]["xdp"]["prog"]["id"]
        .as_u64()
        .with_context(|| format!("no XDP program on {interface} in {}", ns.name()))?
        as u32;
    let info = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == id)
        .with_context(|| format!("program {id} is not loaded"))?;
    let fd = info.fd()?;
    let [time, count] = crate::fdinfo(std::os::fd::AsFd::as_fd(&fd), ["run_time_ns", "run_cnt"])?;
    Ok((time, count))
}

fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A DNAT balancer as kube-proxy's nftables mode makes one: a numgen map
/// from a counter to the backends, per service; with `snat`, the DNATed
/// connections also get the host's address as their source.
fn nft_ruleset(backends: &[IpAddr], snat: bool) -> String {
    let map: Vec<String> = backends
        .iter()
        .enumerate()
        .map(|(i, b)| format!("{i} : {b}"))
        .collect();
    let map = map.join(", ");
    let n = backends.len();
    let vip = topology::VIP4;
    let postrouting = if snat {
        format!(
            "    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        ct status dnat snat to {SNAT4}
    }}
"
        )
    } else {
        String::new()
    };
    format!(
        "table ip bench {{
    chain prerouting {{
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr {vip} tcp dport {TCP_PORT} dnat to numgen inc mod {n} map {{ {map} }}
        ip daddr {vip} udp dport {UDP_PORT} dnat to numgen inc mod {n} map {{ {map} }}
    }}
{postrouting}}}
"
    )
}

fn haproxy_config(backends: &[IpAddr]) -> String {
    let servers: String = backends
        .iter()
        .enumerate()
        .map(|(i, b)| format!("    server be{i} {b}:{TCP_PORT}\n"))
        .collect();
    format!(
        "global
    maxconn 8000
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend vip
    bind {}:{TCP_PORT}
    default_backend pool
backend pool
    balance roundrobin
{servers}",
        topology::VIP4
    )
}

fn nginx_config(backends: &[IpAddr], dir: &Path) -> String {
    let upstream = |port: u16| -> String {
        backends
            .iter()
            .map(|b| format!("        server {b}:{port};\n"))
            .collect()
    };
    format!(
        "load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes auto;
pid {pid};
events {{ worker_connections 8192; }}
stream {{
    upstream tcp_pool {{
{tcp}    }}
    upstream udp_pool {{
{udp}    }}
    server {{ listen {vip}:{TCP_PORT}; proxy_pass tcp_pool; }}
    server {{ listen {vip}:{UDP_PORT} udp; proxy_pass udp_pool; proxy_responses 0; }}
}}
",
        pid = dir.join("nginx.pid").display(),
        tcp = upstream(TCP_PORT),
        udp = upstream(UDP_PORT),
        vip = topology::VIP4,
    )
}

/// Versions of what was compared.
fn versions() -> Vec<String> {
    let version = |cmd: &str, args: &[&str]| -> String {
        std::process::Command::new(cmd)
            .args(args)
            .output()
            .ok()
            .map(|o| {
                let text = format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                );
                text.lines().next().unwrap_or_default().trim().to_owned()
            })
            .unwrap_or_else(|| format!("{cmd}: not found"))
    };
    vec![
        version("nft", &["--version"]),
        version("haproxy", &["-v"]),
        version("nginx", &["-v"]),
    ]
}

/// The two tables, for the terminal and the document.
pub fn tables(r: &Results) -> (Table, Table) {
    let ours = |list: &[Measured]| {
        list.iter()
            .find(|m| m.setup == Setup::Balancer)
            .map(|m| Summary::of(&m.rate).median)
            .unwrap_or(f64::NAN)
    };
    let floor_cpu = |list: &[Measured]| {
        list.iter()
            .find(|m| m.setup == Setup::Floor)
            .map(|m| Summary::of(&m.cpu).median)
            .unwrap_or(f64::NAN)
    };
    let build = |list: &[Measured], unit: &str, cpu_unit: &str, tcp: bool| {
        let (ours, base) = (ours(list), floor_cpu(list));
        let mut header = vec![
            "setup",
            unit,
            "min",
            "max",
            "ours ÷ this",
            cpu_unit,
            "above floor",
            "proxy process",
        ];
        if tcp {
            header.push("failed");
        }
        let mut table = Table::new(&header);
        for m in list {
            let rate = Summary::of(&m.rate);
            let cpu = Summary::of(&m.cpu).median;
            let [median, min, max] = report::spread(&rate, 0);
            let process = Summary::of(&m.process_cpu).median;
            let mut row = vec![
                m.setup.name().to_owned(),
                median,
                min,
                max,
                if m.setup == Setup::Direct {
                    "-".into()
                } else {
                    format!("{:.2}", ours / rate.median)
                },
                report::number(cpu, 1),
                if matches!(m.setup, Setup::Direct | Setup::Floor) {
                    "-".into()
                } else {
                    report::number(cpu - base, 1)
                },
                if matches!(m.setup, Setup::Haproxy | Setup::Nginx) {
                    report::number(process, 1)
                } else {
                    "-".into()
                },
            ];
            if tcp {
                row.push(report::number(m.failed as f64, 0));
            }
            table.row(row);
        }
        table
    };
    (
        build(&r.tcp, "connections/s", "CPU µs per connection", true),
        build(&r.udp, "packets/s", "CPU ms per Mpkt", false),
    )
}

/// The document's section, with its plots written to `img`.
pub fn section(r: &Results, img: &Path) -> Result<Section> {
    let bars = |list: &[Measured], scale: f64| -> Vec<Bar> {
        list.iter()
            .map(|m| Bar {
                label: m.setup.name().to_owned(),
                value: Summary::of(&m.rate.iter().map(|v| v * scale).collect::<Vec<_>>()),
            })
            .collect()
    };
    plot::bars(
        &img.join("e2e-tcp.png"),
        "Short TCP connections per second (higher is better)",
        "connections per second (median; whiskers: lowest and highest run)",
        &bars(&r.tcp, 1.0),
    )?;
    plot::bars(
        &img.join("e2e-udp.png"),
        "UDP datagrams delivered per second (higher is better)",
        "million packets per second (median; whiskers: lowest and highest run)",
        &bars(&r.udp, 1e-6),
    )?;
    let (tcp, udp) = tables(r);
    let xdp = match r.xdp_ns {
        Some((ours, sink)) => format!(
            "Under the UDP load, with the kernel's BPF statistics on for one extra
run, the balancer's XDP program took **{ours:.0} ns per packet** (run_time_ns /
run_cnt); the sink counting the balancer's output, which only counts and drops, took {sink:.0} ns: most
of that is the statistics' own cost, which the balancer's figure includes too."
        ),
        None => String::new(),
    };
    let nat_xdp = match r.nat_xdp_ns {
        Some((nat, sink)) => format!(
            "\n\nWith NAT, measured the same way, the XDP program took **{nat:.0} ns per
packet**, the NAT program it tail-calls included (the time of a tail call
counts to the program attached); the sink took {sink:.0} ns. The generator's
flows stay in NAT's open tables: the sink drops the datagrams, so no
backend answers and promotes them."
        ),
        None => String::new(),
    };
    let body = format!(
        "## End to end: against nftables, HAProxy and nginx

Measured on {machine}. Compared: {versions}.

Topology: a client, the balancer's host and {BACKENDS} backends in network
namespaces on one Linux bridge (veth pairs), IPv4. Every setup runs on the
balancer's host in turn, with the same backends and the same load:

- this balancer: the daemon and its XDP program on the host's interface,
  Maglev, health checks off, backends answering the client directly (L2
  DSR; each backend holds the VIP on its loopback);
- this balancer, NAT: the same with `forwarding = \"nat\"`, source NAT to
  an address of the host's own (`snat_ipv4`, beside the address the
  proxies connect from) with source ports {SNAT_PORTS}, so that a client's
  own port is kept where free, as nftables' SNAT keeps it, and
  backends that hold nothing but their own address (the VIP is taken off
  their loopback for the NAT setups): the XDP program rewrites the
  client's packets to the backend, and the backends' replies, which come
  back to the host, to the client;
- XDP floor: the least an XDP forwarder does (rewrite both MACs, XDP_TX),
  every frame to one backend: the reference for the balancer's own cost;
- nftables: `dnat to numgen inc mod {BACKENDS} map {{ ... }}` in a prerouting
  nat chain per service, as kube-proxy's nftables mode does, conntrack on,
  the backends' replies routed back through the host (no SNAT);
- nftables DNAT+SNAT: the same DNAT, and `ct status dnat snat to` the
  same address as NAT's in a postrouting nat chain: the topology of NAT above
  (backends without the VIP and without a route to the client);
- HAProxy: `mode tcp`, `balance roundrobin`, default threads (TCP only:
  HAProxy does not proxy UDP);
- nginx: the stream module, `worker_processes auto`, round robin, UDP with
  `proxy_responses 0`;
- direct (TCP only): the client talks to one backend, no balancer.

Loads, each run {seconds} s, {runs} counted runs after one thrown away:

- TCP: {CLIENT_THREADS} client threads open connections back to back; the
  backend writes its name and closes; a connection counts once its reply
  is read to the end. Port 80.
- UDP: {payload}-byte datagrams (106-byte frames) from the XDP live-frames
  generator in the client's namespace (BPF_PROG_TEST_RUN with
  BPF_F_TEST_XDP_LIVE_FRAMES, pinned to CPU 0, as fast as it can), cycling
  over {flows} source ports. The rate is what the balancer's host sent on
  towards the backends (with NAT, rewritten to their addresses, still to
  port {UDP_PORT}), counted (and dropped) by an XDP program on the
  switch's end of the host's veth, so the figure is the balancer's output
  rate rather than the bridge's. The input still crosses the bridge (socket
  buffers, bridge forwarding), which costs more per packet than an XDP
  balancer: read the UDP rates as the whole path's, and the CPU columns and
  the BPF statistics below for the balancer's own share.

CPU: the machine has two CPUs, shared by the client, the generator, the
backends and the balancer. The CPU columns are the busy time of the whole
machine (/proc/stat: everything but idle) per connection or per million
packets; `above floor` is that minus the XDP floor's, which is the
balancer's own share of the cost; `proxy process` is the proxy's own
processes' CPU time per unit (/proc/PID/stat). Under the UDP load the
generator keeps CPU 0 busy, so there the CPU per packet mostly follows the
rate. `ours ÷ this` is this balancer's rate over the row's.

### Short TCP connections

{tcp}
![TCP connections](img/e2e-tcp.png)

### UDP packets

{udp}
![UDP packets](img/e2e-udp.png)

{xdp}{nat_xdp}

`failed`: connections that did not complete (refused, reset or timed out
after 1 s) over all counted runs of a setup.
",
        machine = report::machine(),
        versions = r.versions.join("; "),
        seconds = r.seconds,
        runs = r.runs,
        payload = UDP_PAYLOAD,
        flows = UDP_FLOWS,
        tcp = tcp.markdown(),
        udp = udp.markdown(),
    );
    Ok(Section { name: "e2e", body })
}
