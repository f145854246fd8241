//! The daemon with a configuration file, balancing real TCP connections
//! from a client namespace over backend namespaces by direct server return.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use anyhow::ensure;
use balancer_tests::{
    Process, balancer_bin, netns_test,
    servers::tcp_ask_name,
    topology::{self, ConfigText, NO_CHECK, Server, Topology, plain},
};

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
