//! The daemon with a configuration file, balancing real TCP connections
//! from a client namespace over backend namespaces by direct server return;
//! its start: a refused configuration, its open-file limit.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, ensure};
use balancer_tests::{
    Process, balancer_bin, netns_test,
    servers::tcp_ask_name,
    topology::{self, ConfigText, NO_CHECK, Server, Topology, plain},
};
use nix::sys::signal::Signal;

/// A configuration with one TCP VIP per family over the backends.
fn config(t: &Topology) -> String {
    ConfigText::default()
        .vip(
            "web4",
            topology::VIP4.into(),
            80,
            "tcp",
            NO_CHECK,
            &plain(&t.backend_addresses(false)),
        )
        .vip(
            "web6",
            topology::VIP6.into(),
            80,
            "tcp",
            NO_CHECK,
            &plain(&t.backend_addresses(true)),
        )
        .build()
}

#[test]
fn the_daemon_balances_tcp_connections_over_its_backends() {
    netns_test("daemon_balances", Duration::from_secs(120), |lab| {
        let t = Topology::build(lab, 3)?;
        t.serve(Server::TcpName, topology::VIP4.into(), 80)?;
        t.serve(Server::TcpName, topology::VIP6.into(), 80)?;
        let path = lab.write_file("balancer.toml", &config(&t))?;
        let mut daemon = balancer_tests::daemon::start(
            lab,
            &t.lb,
            [
                "--config".as_ref(),
                path.as_os_str(),
                "--stats-interval".as_ref(),
                "1s".as_ref(),
            ],
        )?;
        // Neighbours resolve within a second or two of the start.
        daemon.wait_for_output(Duration::from_secs(15), |out| {
            out.matches("backend neighbour resolved").count() >= 6
        })?;

        for vip in [IpAddr::V4(topology::VIP4), IpAddr::V6(topology::VIP6)] {
            const N: usize = 300;
            let mut counts: BTreeMap<String, usize> = BTreeMap::new();
            for _ in 0..N {
                let name = tcp_ask_name(&t.client, SocketAddr::new(vip, 80))?;
                *counts.entry(name).or_default() += 1;
            }
            ensure!(counts.len() == 3, "{vip}: connections reached {counts:?}");
            for (name, count) in &counts {
                ensure!(
                    *count >= N / 6,
                    "{vip}: backend {name} got {count} of {N} connections: {counts:?}"
                );
            }
            eprintln!("{vip}: {N} connections, all answered: {counts:?}");
        }
        daemon.wait_for_output(Duration::from_secs(5), |out| out.contains("tx="))?;
        Ok(())
    });
}

#[test]
fn an_invalid_configuration_is_refused_before_anything_is_touched() {
    netns_test("daemon_bad_config", Duration::from_secs(30), |lab| {
        let host = lab.netns("host")?;
        let path = lab.write_file(
            "bad.toml",
            "[datapath]\ninterfaces = [\"lo\"]\nring_size = 1000\n\n[[vip]]\nname = \"x\"\naddress = \"192.0.2.1\"\nport = 80\nprotocol = \"tcp\"\n[[vip.backend]]\naddress = \"fd00::1\"\n",
        )?;
        let mut command = host.command(balancer_bin()?);
        command.arg("run").arg("--config").arg(&path);
        let mut daemon = Process::start(command)?;
        let status = daemon.wait_timeout(Duration::from_secs(20))?;
        let out = daemon.output();
        ensure!(status.code() == Some(1), "exit status {status}:\n{out}");
        ensure!(
            out.contains("bad.toml:3: ring_size 1000 must be a prime"),
            "{out}"
        );
        ensure!(
            out.contains(
                "bad.toml:11: backend fd00::1 of VIP \"x\" is not of the VIP's address family"
            ),
            "{out}"
        );
        ensure!(
            host.xdp_attachment("lo")?.is_none(),
            "a refused configuration attached XDP"
        );
        Ok(())
    });
}

/// `command` run by a shell that first sets its open-file limits with
/// `ulimit LIMITS` (`-Sn 256`: the soft limit only).
fn under_ulimit(limits: &str, command: &Command) -> Command {
    let mut shell = Command::new("sh");
    shell
        .arg("-c")
        .arg(format!("ulimit {limits} && exec \"$@\""))
        .arg("sh")
        .arg(command.get_program())
        .args(command.get_args());
    shell
}

/// The soft and hard open-file limits of process `pid`.
fn open_files(pid: u32) -> anyhow::Result<(String, String)> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))?;
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .context("no open-file limit in /proc/PID/limits")?;
    let mut values = line["Max open files".len()..].split_whitespace();
    let soft = values.next().context("no soft limit")?.to_owned();
    let hard = values.next().context("no hard limit")?.to_owned();
    Ok((soft, hard))
}

#[test]
fn the_daemon_raises_its_open_file_limit_and_warns_when_the_hard_one_is_low() {
    netns_test("daemon_open_files", Duration::from_secs(90), |lab| {
        let t = Topology::build(lab, 1)?;
        let check = "[vip.health_check]\nkind = \"tcp\"\ninterval = \"1s\"\n";
        let path = lab.write_file(
            "balancer.toml",
            &topology::web_config(check, &plain(&t.backend_addresses(false))),
        )?;
        let args = ["--config".as_ref(), path.as_os_str()];

        // A soft limit of 256 is raised to the hard one.
        let (_, hard) = open_files(std::process::id())?;
        let command = balancer_tests::daemon::command(lab, &t.lb, args)?;
        let mut daemon = Process::start(under_ulimit("-Sn 256", &command))?;
        daemon.wait_for_output(Duration::from_secs(30), |out| {
            out.contains("control socket ready")
        })?;
        let (soft, _) = open_files(daemon.pid())?;
        ensure!(
            soft == hard,
            "the daemon runs with {soft} open files, not {hard}"
        );
        let line = format!("running with an open-file limit of {hard} hard={hard} was=256");
        let out = daemon.output();
        ensure!(
            out.matches(&line).count() == 1,
            "no `{line}` once in:\n{out}"
        );
        ensure!(!out.contains("open-file limit is low"), "{out}");
        daemon.signal(Signal::SIGTERM)?;
        daemon.wait_timeout(Duration::from_secs(10))?;

        // A hard limit of 300 is below what a checked VIP and a batch of
        // rings may take.
        let mut daemon = Process::start(under_ulimit("-n 300", &command))?;
        daemon.wait_for_output(Duration::from_secs(30), |out| {
            out.contains("control socket ready")
        })?;
        let out = daemon.output();
        ensure!(
            out.contains("running with an open-file limit of 300")
                && out.contains("the open-file limit is low for 1 checked backends"),
            "no warning of the low limit:\n{out}"
        );
        Ok(())
    });
}
