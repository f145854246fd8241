//! A backend's servers in a process of their own ([`ServerProcess`]), for
//! tests and the demo that kill a service and bring it back.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{Context as _, Result, bail};
use nix::sys::signal::Signal;

use crate::{Netns, Process, servers::Server};

/// The `test-server` binary of this package: `$BALANCER_TEST_SERVER` when
/// set, otherwise next to the running executable (a binary of this
/// package) or one directory up (an integration test in `deps/`).
pub fn test_server_bin() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("BALANCER_TEST_SERVER") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join("test-server"))
        .find(|path| path.is_file())
        .context(
            "cannot find the test-server binary: run `cargo build -p balancer-tests --bins` \
             (cargo test and cargo xtask build it) or set BALANCER_TEST_SERVER",
        )
}

/// The servers of one backend, running as a process in its namespace.
/// Dropping it kills them.
pub struct ServerProcess {
    ns: Netns,
    name: String,
    services: Vec<(Server, SocketAddr)>,
    process: Option<Process>,
}

impl ServerProcess {
    /// Starts `services` on every backend of `t`, backend `i` answering as
    /// `be{i}`.
    pub fn on_every_backend(
        t: &crate::topology::Topology,
        services: &[(Server, SocketAddr)],
    ) -> Result<Vec<ServerProcess>> {
        t.backends
            .iter()
            .enumerate()
            .map(|(i, ns)| ServerProcess::start(ns, &format!("be{i}"), services))
            .collect()
    }

    /// Starts `services` in `ns`, answering as `name`, and waits until every
    /// socket is bound.
    pub fn start(ns: &Netns, name: &str, services: &[(Server, SocketAddr)]) -> Result<Self> {
        let mut servers = ServerProcess {
            ns: ns.clone(),
            name: name.to_owned(),
            services: services.to_vec(),
            process: None,
        };
        servers.restart()?;
        Ok(servers)
    }

    /// Kills the servers with SIGKILL, as a crash would, and waits until
    /// they are gone.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut process) = self.process.take() {
            process.signal(Signal::SIGKILL)?;
            process.wait_timeout(Duration::from_secs(5))?;
        }
        Ok(())
    }

    /// Starts the servers again (after [`ServerProcess::kill`]).
    pub fn restart(&mut self) -> Result<()> {
        if self.process.is_some() {
            bail!("the servers of {} are already running", self.name);
        }
        let mut command = self.ns.command(test_server_bin()?);
        command.arg("--name").arg(&self.name);
        for (server, addr) in &self.services {
            let kind = match server {
                Server::TcpName => "tcp-name".to_owned(),
                Server::UdpName => "udp-name".to_owned(),
                Server::TcpEcho => "tcp-echo".to_owned(),
                Server::TcpBulk { bytes } => format!("tcp-bulk={bytes}"),
                Server::TcpSink => "tcp-sink".to_owned(),
                Server::TcpPeer => "tcp-peer".to_owned(),
                Server::TcpHold => "tcp-hold".to_owned(),
            };
            command.arg("--serve").arg(format!("{kind}@{addr}"));
        }
        let mut process = Process::start(command)?;
        process.wait_for_output(Duration::from_secs(10), |out| out.contains("ready"))?;
        self.process = Some(process);
        Ok(())
    }

    /// Whether the servers are running.
    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }
}
