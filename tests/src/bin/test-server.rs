//! The servers of one backend in a process of their own, so that a test or
//! the demo can kill them the way a real service dies (SIGKILL: the kernel
//! closes the sockets) and start them again. Started by
//! [`balancer_tests::backend::ServerProcess`] inside the backend's
//! namespace; prints `ready` once every socket is bound.

use std::{net::SocketAddr, process::ExitCode, str::FromStr};

use anyhow::{Context as _, Result, bail};
use balancer_tests::{servers, topology::Server};
use clap::Parser;

/// Test servers that answer with a backend's name.
#[derive(Parser)]
struct Args {
    /// The name the servers answer with.
    #[arg(long)]
    name: String,
    /// A server to run, as KIND@ADDRESS:PORT; KIND is tcp-name, udp-name,
    /// tcp-echo or tcp-bulk=BYTES. Repeatable.
    #[arg(long = "serve", required = true)]
    serve: Vec<Service>,
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
