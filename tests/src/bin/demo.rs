//! The demo that `cargo xtask demo` runs: the balancer on a small topology
//! in namespaces.
//!
//! Two hosts, a client and the balancer, joined by a veth pair. The daemon
//! attaches the XDP program to the balancer's interface and reports its
//! counters every second, while the client sends UDP datagrams and opens
//! TCP connections over IPv4 and IPv6. Everything is removed at the end.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context as _, Result, bail};
use balancer_tests::{Lab, Netns, VethOptions, balancer_bin};
use clap::Parser;
use nix::{
    sys::signal::{Signal, kill},
    unistd::{Pid, Uid},
};

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

const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
const LB_V4: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 2);
const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 1);
const LB_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x200, 0, 0, 0, 0, 0, 2);

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
    let client = lab.netns("client")?;
    let lb = lab.netns("lb")?;
    lab.veth((&client, "eth0"), (&lb, "eth0"), VethOptions::default())?;
    for (ns, v4, v6) in [(&client, CLIENT_V4, CLIENT_V6), (&lb, LB_V4, LB_V6)] {
        ns.add_address("eth0", &format!("{v4}/24"))?;
        ns.add_address("eth0", &format!("{v6}/64"))?;
    }
    println!(
        "demo topology: {} ({CLIENT_V4}, {CLIENT_V6}) <-veth-> {} ({LB_V4}, {LB_V6})",
        client.name(),
        lb.name()
    );

    let mut daemon = lb
        .command(&balancer)
        .args(["run", "--interface", "eth0", "--stats-interval", "1s"])
        .stdin(Stdio::null())
        .spawn()
        .context("cannot start the balancer daemon")?;
    let result = drive_traffic(&client, &lb, Duration::from_secs(args.seconds));
    // SIGTERM lets the daemon log its final counters and detach.
    let _ = kill(Pid::from_raw(daemon.id() as i32), Signal::SIGTERM);
    let status = daemon.wait().context("cannot wait for the daemon")?;
    let (udp, tcp) = result?;
    if !status.success() {
        bail!("the daemon exited with {status}");
    }
    println!(
        "demo done: the client sent {udp} UDP datagrams and opened {tcp} TCP connections through the XDP program; the daemon detached and the namespaces are being removed"
    );
    Ok(())
}

/// Waits for the daemon to attach, then sends UDP datagrams and opens TCP
/// connections to servers on the balancer host until `duration` passes.
/// Returns how many of each went through.
fn drive_traffic(client: &Netns, lb: &Netns, duration: Duration) -> Result<(u64, u64)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while lb.xdp_attachment("eth0")?.is_none() {
        if Instant::now() > deadline {
            bail!("the daemon did not attach its XDP program within 30 s");
        }
        thread::sleep(Duration::from_millis(100));
    }
    let servers: Vec<SocketAddr> = vec![(LB_V4, 9000).into(), (LB_V6, 9000).into()];
    let mut udp_servers = Vec::new();
    for addr in &servers {
        udp_servers.push(lb.run(|| UdpSocket::bind(addr))??);
        let listener = lb.run(|| TcpListener::bind(addr))??;
        thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                let mut buf = [0u8; 64];
                if let Ok(n) = stream.read(&mut buf) {
                    let _ = stream.write_all(&buf[..n]);
                }
            }
        });
    }
    let sources = [CLIENT_V4.into(), CLIENT_V6.into()];
    let senders: Vec<UdpSocket> = sources
        .iter()
        .map(|ip: &std::net::IpAddr| {
            client
                .run(|| UdpSocket::bind((*ip, 0)))?
                .map_err(Into::into)
        })
        .collect::<Result<_>>()?;
    let (mut udp, mut tcp) = (0u64, 0u64);
    let end = Instant::now() + duration;
    while Instant::now() < end {
        for (sender, server) in senders.iter().zip(&servers) {
            for _ in 0..50 {
                sender.send_to(b"hello from the demo client", server)?;
                udp += 1;
            }
            let mut stream =
                client.run(|| TcpStream::connect_timeout(server, Duration::from_secs(2)))??;
            stream.write_all(b"ping")?;
            let mut echo = [0u8; 4];
            stream.read_exact(&mut echo)?;
            tcp += 1;
        }
        thread::sleep(Duration::from_millis(100));
    }
    drop(udp_servers);
    Ok((udp, tcp))
}
