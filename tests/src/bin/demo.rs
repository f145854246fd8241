//! The demo that `cargo xtask demo` runs: the balancer with an embedded
//! configuration on a topology in network namespaces (a client, the
//! balancer, three backends on one L2 segment), with real TCP and UDP
//! traffic, showing which backend answered each request.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr, UdpSocket},
    path::PathBuf,
    process::{ExitCode, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use balancer_tests::{
    Lab, balancer_bin,
    servers::{tcp_ask_name, tcp_name_server, udp_name_server},
    topology::{self, Topology},
};
use clap::Parser;
use nix::{
    sys::signal::{Signal, kill},
    unistd::{Pid, Uid},
};

/// The configuration the demo runs, embedded in this binary.
const CONFIG: &str = include_str!("demo.toml");

/// Runs the balancer on a demo topology in network namespaces (needs root).
#[derive(Parser)]
struct DemoArgs {
    /// How long the client sends traffic, in seconds.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// The balancer binary (default: $BALANCER_BIN, or the one cargo built).
    #[arg(long)]
    balancer: Option<PathBuf>,
}

fn main() -> ExitCode {
    match run(&DemoArgs::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &DemoArgs) -> Result<()> {
    if !Uid::effective().is_root() {
        bail!(
            "the demo creates network namespaces and attaches XDP: run it as root (`sudo -E cargo xtask demo`)"
        );
    }
    let balancer = match &args.balancer {
        Some(path) => path.clone(),
        None => balancer_bin()?,
    };
    let lab = Lab::new("demo")?;
    let t = Topology::build(&lab, 3)?;
    for (i, backend) in t.backends.iter().enumerate() {
        let name = format!("backend{i}");
        tcp_name_server(backend, SocketAddr::new(topology::VIP4.into(), 80), &name)?;
        tcp_name_server(backend, SocketAddr::new(topology::VIP6.into(), 80), &name)?;
        udp_name_server(backend, SocketAddr::new(topology::VIP4.into(), 53), &name)?;
    }
    println!(
        "demo topology: client {} | balancer {} (XDP on eth0) | backends {}, {}, {}",
        topology::CLIENT4,
        topology::LB4,
        topology::backend4(0),
        topology::backend4(1),
        topology::backend4(2)
    );
    println!(
        "VIPs: {}:80/tcp (weights 1:1:2), [{}]:80/tcp, {}:53/udp; backends answer clients directly (DSR)\n",
        topology::VIP4,
        topology::VIP6,
        topology::VIP4
    );

    let config = lab.write_file("balancer.toml", CONFIG)?;
    let mut daemon =
        t.lb.command(&balancer)
            .arg("run")
            .arg("--config")
            .arg(&config)
            .args(["--stats-interval", "2s"])
            .stdin(Stdio::null())
            .spawn()
            .context("cannot start the balancer daemon")?;
    let result = drive(&t, Duration::from_secs(args.seconds));
    // SIGTERM: the daemon logs its final counters and detaches.
    let _ = kill(Pid::from_raw(daemon.id() as i32), Signal::SIGTERM);
    let status = daemon.wait().context("cannot wait for the daemon")?;
    result?;
    if !status.success() {
        bail!("the daemon exited with {status}");
    }
    println!("\ndemo done; the namespaces are being removed");
    Ok(())
}

/// Waits for the balancer, then opens TCP connections and sends UDP
/// requests to the VIPs for `duration`, and prints who answered.
fn drive(t: &Topology, duration: Duration) -> Result<()> {
    let ready = Instant::now() + Duration::from_secs(30);
    // Ready once a connection through the balancer succeeds.
    let web4 = SocketAddr::new(topology::VIP4.into(), 80);
    while tcp_ask_name(&t.client, web4).is_err() {
        if Instant::now() > ready {
            bail!("the balancer did not start forwarding within 30 s");
        }
    }
    let web6 = SocketAddr::new(topology::VIP6.into(), 80);
    let dns = SocketAddr::new(topology::VIP4.into(), 53);
    let mut tallies: BTreeMap<&str, BTreeMap<String, usize>> = BTreeMap::new();
    let end = Instant::now() + duration;
    let mut port = 20000u16;
    while Instant::now() < end {
        for (label, vip) in [
            ("tcp 198.51.100.80:80", web4),
            ("tcp [2001:db8::80]:80", web6),
        ] {
            let name = tcp_ask_name(&t.client, vip)?;
            *tallies.entry(label).or_default().entry(name).or_default() += 1;
        }
        // A new UDP flow each time: a fresh source port.
        port = port.wrapping_add(1).max(20000);
        let socket = t
            .client
            .run(|| UdpSocket::bind((IpAddr::from(topology::CLIENT4), port)))??;
        socket.set_read_timeout(Some(Duration::from_secs(2)))?;
        socket.send_to(b"who?", dns)?;
        let mut buf = [0u8; 64];
        let (n, _) = socket.recv_from(&mut buf).context("no UDP answer")?;
        let name = String::from_utf8_lossy(&buf[..n]).into_owned();
        *tallies
            .entry("udp 198.51.100.80:53")
            .or_default()
            .entry(name)
            .or_default() += 1;
    }
    println!("\nwho answered (requests per backend):");
    for (label, counts) in &tallies {
        let total: usize = counts.values().sum();
        let shares: Vec<String> = counts
            .iter()
            .map(|(name, n)| format!("{name} {n} ({:.0} %)", *n as f64 * 100.0 / total as f64))
            .collect();
        println!("  {label:<24} {}", shares.join(", "));
    }
    Ok(())
}
