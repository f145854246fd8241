//! The servers of one backend in a process of their own, so that a test or
//! the demo can kill them the way a real service dies (SIGKILL: the kernel
//! closes the sockets) and start them again. Started by
//! [`balancer_tests::backend::ServerProcess`] inside the backend's
//! namespace; prints `ready` once every socket is bound.
//!
//! With `--hold`, the other end instead: a client that opens `--count`
//! connections and holds them, in a process of its own so that its
//! sockets count against its own open-file limit, not the test's.

use std::{net::SocketAddr, process::ExitCode, str::FromStr};

use anyhow::{Context as _, Result, bail};
use balancer_tests::{servers, topology::Server};
use clap::Parser;

/// Test servers that answer with a backend's name.
#[derive(Parser)]
struct Args {
    /// The name the servers answer with.
    #[arg(long, default_value = "")]
    name: String,
    /// A server to run, as KIND@ADDRESS:PORT; KIND is tcp-name, udp-name,
    /// tcp-echo, tcp-sink, tcp-peer, tcp-hold or tcp-bulk=BYTES.
    /// Repeatable.
    #[arg(long = "serve", required_unless_present = "hold")]
    serve: Vec<Service>,
    /// Instead of serving: open `--count` TCP connections to this
    /// ADDRESS:PORT, print the first line each one gets, then `held N`,
    /// and hold them until killed.
    #[arg(long, conflicts_with = "serve")]
    hold: Option<SocketAddr>,
    /// Connections `--hold` opens.
    #[arg(long, default_value_t = 1)]
    count: usize,
}

/// One `--serve` argument.
#[derive(Clone, Debug)]
struct Service {
    server: Server,
    addr: SocketAddr,
}

impl FromStr for Service {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> Result<Service> {
        let (kind, addr) = text.split_once('@').context("expected KIND@ADDRESS:PORT")?;
        let server = match kind.split_once('=') {
            None if kind == "tcp-name" => Server::TcpName,
            None if kind == "udp-name" => Server::UdpName,
            None if kind == "tcp-echo" => Server::TcpEcho,
            None if kind == "tcp-sink" => Server::TcpSink,
            None if kind == "tcp-peer" => Server::TcpPeer,
            None if kind == "tcp-hold" => Server::TcpHold,
            Some(("tcp-bulk", bytes)) => Server::TcpBulk {
                bytes: bytes.parse().context("tcp-bulk=BYTES")?,
            },
            _ => bail!("unknown server kind {kind:?}"),
        };
        let addr = addr
            .parse()
            .with_context(|| format!("{addr:?} is not ADDRESS:PORT"))?;
        Ok(Service { server, addr })
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(addr) = args.hold {
        return match hold(addr, args.count) {
            Ok(held) => {
                println!("held {}", held.len());
                loop {
                    std::thread::park();
                }
            }
            Err(err) => {
                eprintln!("error: {err:#}");
                ExitCode::FAILURE
            }
        };
    }
    let mut sockets = Vec::new();
    for service in &args.serve {
        match servers::bind(service.server, service.addr) {
            Ok(socket) => sockets.push((service.server, socket)),
            Err(err) => {
                eprintln!("error: cannot bind {}: {err}", service.addr);
                return ExitCode::FAILURE;
            }
        }
    }
    for (server, socket) in sockets {
        servers::serve(server, socket, &args.name);
    }
    println!("ready");
    loop {
        std::thread::park();
    }
}

/// Opens `count` connections to `addr`, printing the first line each one
/// gets; the connections, open.
fn hold(addr: SocketAddr, count: usize) -> Result<Vec<std::net::TcpStream>> {
    use std::io::{BufRead as _, Write as _};
    let timeout = std::time::Duration::from_secs(3);
    let mut held = Vec::with_capacity(count);
    for i in 0..count {
        let stream = std::net::TcpStream::connect_timeout(&addr, timeout)
            .with_context(|| format!("connection {} of {count} to {addr}", i + 1))?;
        held.push(stream);
    }
    let mut out = std::io::stdout().lock();
    for (i, stream) in held.iter().enumerate() {
        stream.set_read_timeout(Some(timeout))?;
        let mut line = String::new();
        std::io::BufReader::new(stream)
            .read_line(&mut line)
            .with_context(|| format!("no line on connection {} of {count}", i + 1))?;
        write!(out, "{line}")?;
    }
    Ok(held)
}
