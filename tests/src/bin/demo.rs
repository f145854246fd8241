//! The demo that `cargo xtask demo` runs: the balancer with an embedded
//! configuration (a TCP and a UDP VIP over three backends) on a topology in
//! network namespaces, with real traffic from a client. It shows how the
//! traffic spreads, kills one backend's servers and shows the failover,
//! brings them back, and removes everything it made, also on Ctrl-C.

use std::{
    collections::BTreeMap,
    io::{IsTerminal as _, Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    process::ExitCode,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use balancer_tests::{
    Lab, Netns, Process, VethOptions,
    backend::ServerProcess,
    balancer_bin, daemon, metrics, servers,
    topology::{self, Server, Topology},
};
use nix::{sys::signal::Signal, unistd::Uid};
use serde_json::Value;

/// The configuration the demo runs, embedded in this binary.
const CONFIG: &str = include_str!("demo.toml");

/// Set by Ctrl-C: every wait of the demo stops and it tears down.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Runs the balancer on a demo topology in network namespaces (needs root;
/// `cargo xtask demo` builds everything and runs it).
#[derive(clap::Parser)]
struct DemoArgs {
    /// How long each phase of the demo sends traffic, in seconds.
    #[arg(long, default_value_t = 3)]
    seconds: u64,
}

/// The backend the demo stops and starts again.
const VICTIM: usize = 1;

fn main() -> ExitCode {
    if let Err(err) = ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst)) {
        eprintln!("warning: cannot handle Ctrl-C: {err}");
    }
    let args = <DemoArgs as clap::Parser>::parse();
    let result = run(Duration::from_secs(args.seconds.max(1)));
    // The lab, and with it every namespace and process, is gone by now.
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) if INTERRUPTED.load(Ordering::SeqCst) => {
            println!("\ninterrupted: the demo's namespaces, processes and XDP program are removed");
            ExitCode::from(130)
        }
        Err(err) => {
            eprintln!("\nerror: {err:#}");
            eprintln!("the demo's namespaces, processes and XDP program are removed");
            ExitCode::FAILURE
        }
    }
}

fn run(phase: Duration) -> Result<()> {
    if !Uid::effective().is_root() {
        bail!(
            "the demo creates network namespaces and attaches XDP: run it as root (`sudo -E cargo xtask demo`)"
        );
    }
    let started = Instant::now();
    intro();
    let lab = Lab::new("demo")?;

    step("building the topology and starting the backends' servers");
    let t = Topology::build(&lab, 3)?;
    let mut servers = t
        .backends
        .iter()
        .enumerate()
        .map(|(i, ns)| {
            let own = IpAddr::from(topology::backend4(i));
            ServerProcess::start(
                ns,
                &format!("backend{i}"),
                &[
                    // The VIP's traffic and the TCP health check.
                    (Server::TcpName, "0.0.0.0:80".parse()?),
                    // UDP answers must come from the VIP (the client's
                    // flow), checks go to the backend's own address.
                    (Server::UdpName, SocketAddr::new(topology::VIP4.into(), 53)),
                    (Server::UdpName, SocketAddr::new(own, 53)),
                ],
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let _routed = routed_backend(&lab, &t)?;

    step("starting the balancer daemon with the embedded configuration");
    let config = lab.write_file("balancer.toml", CONFIG)?;
    let mut daemon = daemon::start(
        &lab,
        &t.lb,
        [
            "--log-format".as_ref(),
            "json".as_ref(),
            "--config".as_ref(),
            config.as_os_str(),
            // The table is small: scan it every second, so the metrics
            // show its entries early.
            "--reconcile-interval".as_ref(),
            "1s".as_ref(),
        ],
    )?;
    for line in log_events(&daemon.output(), 0) {
        if line["message"] == "attached XDP program" {
            detail(&format!(
                "XDP program attached to the balancer's {} ({} mode)",
                text(&line["interface"]),
                text(&line["mode"])
            ));
        }
    }
    wait(
        "waiting for the first answers through the VIPs",
        Duration::from_secs(20),
        || Ok(answer_tcp(&t.client).is_ok() && answer_udp(&t.client).is_ok()),
    )?;

    let traffic = Traffic::start(&t.client);
    let result = phases(&lab, &mut daemon, &mut servers, &traffic, phase);
    let totals = traffic.stop()?;
    result?;
    show_routed(&t.client)?;
    show_metrics(&t)?;

    step("stopping the daemon (SIGTERM)");
    daemon.signal(Signal::SIGTERM)?;
    daemon.wait_timeout(Duration::from_secs(10))?;
    detail("a stopped daemon leaves the XDP program attached and its maps pinned:");
    detail("traffic keeps flowing, and the next daemon adopts them (hitless restarts)");
    let out =
        t.lb.command(balancer_bin()?)
            .arg("teardown")
            .arg("--pin-path")
            .arg(lab.pin_dir()?)
            .output()
            .context("cannot run balancer teardown")?;
    if !out.status.success() {
        bail!(
            "balancer teardown failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    detail(&format!(
        "`balancer teardown`: {}",
        String::from_utf8_lossy(&out.stdout).trim()
    ));
    step("removing the namespaces");
    drop(servers);
    drop(t);
    drop(lab);
    println!(
        "\ndone in {}: {} TCP connections and {} UDP requests answered through the balancer, {} failed",
        secs(started.elapsed()),
        totals.tcp_answered(),
        totals.udp_answered(),
        totals.tcp_failed + totals.udp_failed
    );
    Ok(())
}

/// Scrapes the daemon's metrics, checks that every metric of
/// docs/observability.md is there, and shows a few.
fn show_metrics(t: &Topology) -> Result<()> {
    step("scraping the Prometheus metrics");
    let scrape = metrics::scrape(&t.lb, "127.0.0.1:9100".parse()?)?;
    // One balancer has no peers to share flows with.
    let documented = metrics::documented_without(metrics::OBSERVABILITY_DOC, "sync");
    let missing: Vec<&String> = documented
        .iter()
        .filter(|name| !scrape.names().any(|n| n == name.as_str()))
        .collect();
    if !missing.is_empty() {
        bail!("the metrics lack {missing:?}:\n{}", scrape.text);
    }
    detail(&format!(
        "http://127.0.0.1:9100/metrics in the balancer's namespace: every one of the {} metrics of docs/observability.md present (but the [sync] ones)",
        documented.len()
    ));
    for vip in ["web", "dns"] {
        detail(&format!(
            "{vip}: {} packets, {} new flows; backend1 went down {} time(s) and up {} time(s)",
            scrape.sum("balancer_vip_packets_total", &[("vip", vip)]),
            scrape.sum("balancer_vip_new_flows_total", &[("vip", vip)]),
            scrape.sum(
                "balancer_health_transitions_total",
                &[("vip", vip), ("backend", "10.50.0.11"), ("to", "down")]
            ),
            scrape.sum(
                "balancer_health_transitions_total",
                &[("vip", vip), ("backend", "10.50.0.11"), ("to", "up")]
            ),
        ));
    }
    Ok(())
}

fn intro() {
    println!("balancer demo: an XDP load balancer in front of three backends, in network");
    println!("namespaces on this machine, with real TCP and UDP traffic.\n");
    println!("  client   {:<12} ─┐", topology::CLIENT4.to_string());
    println!(
        "  balancer {:<12} ─┼─ switch   the XDP program on the balancer's eth0 picks a",
        topology::LB4.to_string()
    );
    for i in 0..3 {
        let right = match i {
            0 => "backend per flow (Maglev) and forwards the frame to it;",
            1 => "backends hold the VIP on loopback and answer the client",
            _ => "directly (direct server return)",
        };
        let corner = if i == 2 { "┘" } else { "┤" };
        println!(
            "  backend{i} {:<12} ─{corner}          {right}",
            topology::backend4(i).to_string()
        );
    }
    println!(
        "\n  VIP web  {}:80/tcp  weights 1:1:2, TCP health check every 250 ms (fall 2, rise 2)",
        topology::VIP4
    );
    println!(
        "  VIP dns  {}:53/udp  equal weights, UDP request/reply check every 250 ms",
        topology::VIP4
    );
    println!(
        "  VIP edge {}:8080/tcp to routed0 {ROUTED}, behind router {GATEWAY}: the packets",
        topology::VIP4
    );
    println!("           travel inside an outer IP header (IPIP), routed0 takes it off");
}

/// The backend behind a router, and the router's address on the segment.
const ROUTED: &str = "10.70.0.10";
const GATEWAY: &str = "10.50.0.253";

/// A router on the switch and, behind it in 10.70.0.0/24, a backend
/// holding the VIP on loopback, serving names on port 8080 and taking
/// IPIP off with `balancer decap`; the balancer routes to the subnet
/// through the router. Returns the backend's namespace.
fn routed_backend(lab: &Lab, t: &Topology) -> Result<Netns> {
    let gw = lab.netns("gw")?;
    let be = lab.netns("routed0")?;
    lab.veth((&gw, "eth0"), (&t.switch, "pgw"), VethOptions::default())?;
    t.switch.ip(["link", "set", "pgw", "master", "br0"])?;
    t.switch.ip(["link", "set", "pgw", "up"])?;
    gw.add_address("eth0", &format!("{GATEWAY}/24"))?;
    gw.sysctl("net.ipv4.ip_forward", "1")?;
    lab.veth((&gw, "b0"), (&be, "eth0"), VethOptions::default())?;
    gw.add_address("b0", "10.70.0.1/24")?;
    be.add_address("eth0", &format!("{ROUTED}/24"))?;
    be.add_route("default", "10.70.0.1")?;
    be.add_address("lo", &format!("{}/32", topology::VIP4))?;
    t.lb.add_route("10.70.0.0/24", GATEWAY)?;
    servers::tcp_name_server(&be, "0.0.0.0:8080".parse()?, "routed0")?;
    lab.decap(&be, "decap", &["--interface", "eth0"])?;
    Ok(be)
}

/// Connections to the routed VIP, and who answered them.
fn show_routed(client: &Netns) -> Result<()> {
    step("the routed VIP edge: IPIP to a backend behind a router");
    let addr = SocketAddr::new(topology::VIP4.into(), 8080);
    let names = servers::tally_names(client, addr, 20)?;
    let answered: usize = names.values().sum();
    let by: Vec<String> = names.iter().map(|(n, c)| format!("{n} {c}")).collect();
    detail(&format!(
        "edge: {answered} of 20 connections answered ({}), through the router",
        by.join(", ")
    ));
    Ok(())
}

/// Traffic with every backend up, then with one killed, then with it back.
fn phases(
    lab: &Lab,
    daemon: &mut Process,
    servers: &mut [ServerProcess],
    traffic: &Traffic,
    phase: Duration,
) -> Result<()> {
    let victim = topology::backend4(VICTIM).to_string();

    step("sending traffic: a new TCP connection and a new UDP flow every 5 ms");
    measure(lab, traffic, "every backend up", phase)?;

    step(&format!(
        "killing backend{VICTIM}'s servers (SIGKILL) while the traffic goes on"
    ));
    let mark = daemon.output().len();
    let killed = Instant::now();
    servers[VICTIM].kill()?;
    wait(
        "waiting for the health checks to notice",
        Duration::from_secs(10),
        || Ok(ring_without(&daemon.output(), mark, &victim, 2)),
    )?;
    let down = killed.elapsed();
    for event in health_changes(&daemon.output(), mark, &victim) {
        detail(&event);
    }
    detail(&format!(
        "{victim} out of both VIPs' rings {} after the kill (bound: interval × fall + 1 s = 1.5 s)",
        secs(down)
    ));
    let failed = traffic.snapshot();
    detail(&format!(
        "requests that failed meanwhile (sent to {victim} before it was taken out): {} TCP, {} UDP",
        failed.tcp_failed, failed.udp_failed
    ));
    measure(lab, traffic, &format!("backend{VICTIM} down"), phase)?;

    step(&format!("starting backend{VICTIM}'s servers again"));
    let mark = daemon.output().len();
    let restarted = Instant::now();
    servers[VICTIM].restart()?;
    wait(
        "waiting for rise successful checks",
        Duration::from_secs(10),
        || Ok(ring_without(&daemon.output(), mark, &victim, 3)),
    )?;
    let up = restarted.elapsed();
    for event in health_changes(&daemon.output(), mark, &victim) {
        detail(&event);
    }
    detail(&format!("{victim} back in both rings after {}", secs(up)));
    measure(lab, traffic, &format!("backend{VICTIM} back"), phase)?;
    Ok(())
}

/// Sends traffic for `phase` with a progress line, then prints what the
/// balancer counted per backend during that time.
fn measure(lab: &Lab, traffic: &Traffic, title: &str, phase: Duration) -> Result<()> {
    let before = backend_rows(lab)?;
    traffic.reset();
    let begun = Instant::now();
    while begun.elapsed() < phase {
        interrupted()?;
        let t = traffic.snapshot();
        progress(&format!(
            "{} / {}: {} TCP connections, {} UDP requests answered, {} failed",
            secs(begun.elapsed()),
            secs(phase),
            t.tcp_answered(),
            t.udp_answered(),
            t.tcp_failed + t.udp_failed
        ));
        thread::sleep(Duration::from_millis(100));
    }
    let seen = traffic.snapshot();
    let after = backend_rows(lab)?;
    clear_progress();
    print_table(title, phase, &before, &after, &seen);
    Ok(())
}

/// What `balancer backend list` says about one backend of one VIP.
#[derive(Clone, Debug, Default)]
struct Row {
    state: String,
    new_flows: u64,
    packets: u64,
}

/// (VIP, backend address) → row, from the daemon.
fn backend_rows(lab: &Lab) -> Result<BTreeMap<(String, String), Row>> {
    let rows = daemon::cli_json(lab, ["backend", "list"])?;
    let rows = rows
        .as_array()
        .ok_or_else(|| anyhow!("`backend list` did not answer a list: {rows}"))?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                (text(&r["vip"]), text(&r["address"])),
                Row {
                    state: text(&r["state"]),
                    new_flows: r["new_flows"].as_u64().unwrap_or(0),
                    packets: r["packets"].as_u64().unwrap_or(0),
                },
            )
        })
        .collect())
}

fn print_table(
    title: &str,
    phase: Duration,
    before: &BTreeMap<(String, String), Row>,
    after: &BTreeMap<(String, String), Row>,
    seen: &Tally,
) {
    let delta = |vip: &str, addr: &str| -> (String, u64, u64) {
        let key = (vip.to_owned(), addr.to_owned());
        let a = after.get(&key).cloned().unwrap_or_default();
        let b = before.get(&key).cloned().unwrap_or_default();
        (
            a.state,
            a.new_flows.saturating_sub(b.new_flows),
            a.packets.saturating_sub(b.packets),
        )
    };
    let total = |vip: &str| -> u64 {
        (0..3)
            .map(|i| delta(vip, &topology::backend4(i).to_string()).1)
            .sum::<u64>()
            .max(1)
    };
    let (web_total, dns_total) = (total("web"), total("dns"));
    println!(
        "\n  {title}, over {} (counted by the balancer's XDP program):",
        secs(phase)
    );
    println!(
        "  {:<10} {:<10} │ {:^34} │ {:^34}",
        "", "", "web  tcp :80", "dns  udp :53"
    );
    println!(
        "  {:<10} {:<10} │ {:<8} {:>15} {:>9} │ {:<8} {:>15} {:>9}",
        "backend", "address", "health", "connections", "packets", "health", "flows", "packets"
    );
    for i in 0..3 {
        let addr = topology::backend4(i).to_string();
        let (web_state, web_flows, web_packets) = delta("web", &addr);
        let (dns_state, dns_flows, dns_packets) = delta("dns", &addr);
        println!(
            "  {:<10} {:<10} │ {:<8} {:>8} ({:>3.0} %) {:>9} │ {:<8} {:>8} ({:>3.0} %) {:>9}",
            format!("backend{i}"),
            addr,
            web_state,
            web_flows,
            web_flows as f64 * 100.0 / web_total as f64,
            web_packets,
            dns_state,
            dns_flows,
            dns_flows as f64 * 100.0 / dns_total as f64,
            dns_packets
        );
    }
    println!(
        "  the client: {} TCP connections answered ({}), {} failed",
        seen.tcp_answered(),
        by_backend(&seen.tcp),
        seen.tcp_failed
    );
    println!(
        "              {} UDP requests answered ({}), {} failed",
        seen.udp_answered(),
        by_backend(&seen.udp),
        seen.udp_failed
    );
}

/// The daemon's JSON log events written after byte `from` of its output.
fn log_events(output: &str, from: usize) -> Vec<Value> {
    output
        .get(from..)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

/// Whether, after byte `from`, both VIPs' rings were published with
/// `backends` backends following a health change of `address`.
fn ring_without(output: &str, from: usize, address: &str, backends: u64) -> bool {
    let events = log_events(output, from);
    let Some(changed) = events.iter().position(|e| {
        e["message"] == "backend health changed" && e["backend"].as_str() == Some(address)
    }) else {
        return false;
    };
    ["web", "dns"].iter().all(|vip| {
        events[changed..].iter().any(|e| {
            e["message"] == "ring published"
                && e["vip"].as_str() == Some(vip)
                && e["backends"].as_u64() == Some(backends)
        })
    })
}

/// The health changes of `address` after byte `from`, as sentences.
fn health_changes(output: &str, from: usize, address: &str) -> Vec<String> {
    log_events(output, from)
        .iter()
        .filter(|e| {
            e["message"] == "backend health changed" && e["backend"].as_str() == Some(address)
        })
        .map(|e| {
            format!(
                "daemon: {} of VIP {}: {} -> {} ({})",
                address,
                text(&e["vip"]),
                text(&e["from"]),
                text(&e["to"]),
                text(&e["reason"])
            )
        })
        .collect()
}

/// Answers seen by the client, per backend name, and failures.
#[derive(Clone, Debug, Default)]
struct Tally {
    tcp: BTreeMap<String, u64>,
    udp: BTreeMap<String, u64>,
    tcp_failed: u64,
    udp_failed: u64,
}

impl Tally {
    fn tcp_answered(&self) -> u64 {
        self.tcp.values().sum()
    }

    fn udp_answered(&self) -> u64 {
        self.udp.values().sum()
    }

    fn record(&mut self, tcp: &Result<String>, udp: &Result<String>) {
        match tcp {
            Ok(name) => *self.tcp.entry(name.clone()).or_default() += 1,
            Err(_) => self.tcp_failed += 1,
        }
        match udp {
            Ok(name) => *self.udp.entry(name.clone()).or_default() += 1,
            Err(_) => self.udp_failed += 1,
        }
    }
}

/// "backend0 12, backend2 30": answers per backend name.
fn by_backend(answers: &BTreeMap<String, u64>) -> String {
    answers
        .iter()
        .map(|(name, n)| format!("{name} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The client's traffic: a new TCP connection to the web VIP and a UDP
/// request from a new source port to the dns VIP every 5 ms, from a thread
/// in the client's namespace.
struct Traffic {
    stop: Arc<AtomicBool>,
    /// Bumped by [`Traffic::reset`] under the phase's lock: a request sent
    /// before a reset and done after it counts in the total only.
    epoch: Arc<AtomicU64>,
    tally: Arc<Mutex<Tally>>,
    total: Arc<Mutex<Tally>>,
    worker: JoinHandle<Result<()>>,
}

impl Traffic {
    fn start(client: &Netns) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Mutex::new(Tally::default()));
        let total = Arc::new(Mutex::new(Tally::default()));
        let epoch = Arc::new(AtomicU64::new(0));
        let (flag, now, phase, all, client) = (
            stop.clone(),
            epoch.clone(),
            tally.clone(),
            total.clone(),
            client.clone(),
        );
        let worker = thread::spawn(move || {
            client.run(move || {
                while !flag.load(Ordering::SeqCst) {
                    let sent = now.load(Ordering::SeqCst);
                    let tcp = ask_tcp();
                    let udp = ask_udp();
                    {
                        let mut t = phase.lock().unwrap_or_else(|p| p.into_inner());
                        if now.load(Ordering::SeqCst) == sent {
                            t.record(&tcp, &udp);
                        }
                    }
                    all.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .record(&tcp, &udp);
                    thread::sleep(Duration::from_millis(5));
                }
            })
        });
        Traffic {
            stop,
            epoch,
            tally,
            total,
            worker,
        }
    }

    /// What the client saw since the last reset.
    fn snapshot(&self) -> Tally {
        self.tally.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Starts counting afresh.
    fn reset(&self) {
        let mut tally = self.tally.lock().unwrap_or_else(|p| p.into_inner());
        self.epoch.fetch_add(1, Ordering::SeqCst);
        *tally = Tally::default();
    }

    /// Stops the traffic; returns what the client saw over the whole run.
    fn stop(self) -> Result<Tally> {
        self.stop.store(true, Ordering::SeqCst);
        self.worker
            .join()
            .map_err(|_| anyhow!("the traffic thread panicked"))??;
        Ok(self.total.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

/// One TCP connection to the web VIP; the backend's name. Runs in the
/// client's namespace.
fn ask_tcp() -> Result<String> {
    let vip = SocketAddr::new(topology::VIP4.into(), 80);
    let mut stream = TcpStream::connect_timeout(&vip, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_millis(500)))?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    Ok(reply.trim().to_owned())
}

/// One UDP request to the dns VIP from a new source port; the backend's
/// name. Runs in the client's namespace.
fn ask_udp() -> Result<String> {
    let socket = UdpSocket::bind((IpAddr::from(topology::CLIENT4), 0))?;
    socket.connect(SocketAddr::new(topology::VIP4.into(), 53))?;
    socket.set_read_timeout(Some(Duration::from_millis(300)))?;
    socket.send(b"who?")?;
    let mut buf = [0u8; 64];
    let n = socket.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn answer_tcp(client: &Netns) -> Result<String> {
    client.run(ask_tcp)?
}

fn answer_udp(client: &Netns) -> Result<String> {
    client.run(ask_udp)?
}

/// Polls `done` every 50 ms with a progress line until it holds; returns
/// how long that took.
fn wait(what: &str, limit: Duration, mut done: impl FnMut() -> Result<bool>) -> Result<Duration> {
    let begun = Instant::now();
    loop {
        interrupted()?;
        if done()? {
            clear_progress();
            return Ok(begun.elapsed());
        }
        if begun.elapsed() > limit {
            clear_progress();
            bail!("{what}: nothing after {}", secs(limit));
        }
        progress(&format!("{what}: {}", secs(begun.elapsed())));
        thread::sleep(Duration::from_millis(50));
    }
}

fn interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        clear_progress();
        bail!("interrupted");
    }
    Ok(())
}

fn step(text: &str) {
    println!("\n== {text}");
}

fn detail(text: &str) {
    println!("   {text}");
}

/// Rewrites the progress line in place on a terminal; elsewhere prints
/// nothing (logs get the results, not the ticking).
fn progress(text: &str) {
    let mut out = std::io::stdout();
    if out.is_terminal() {
        let _ = write!(out, "\r\x1b[2K   ... {text}");
        let _ = out.flush();
    }
}

fn clear_progress() {
    let mut out = std::io::stdout();
    if out.is_terminal() {
        let _ = write!(out, "\r\x1b[2K");
        let _ = out.flush();
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}
