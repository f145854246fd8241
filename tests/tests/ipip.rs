//! A VIP forwarded in IPIP with real traffic: the balancer encapsulates
//! each client packet from its own address (the route's preferred source)
//! to the backend's, the backends run `balancer decap`, and the client's
//! connections are answered by every backend, directly; without the
//! decapsulator they are not.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context as _, Result, ensure};
use balancer_tests::{
    Lab, Netns, balancer_bin,
    daemon::{cli_json, start_with_config},
    netns_test,
    servers::{tally_names, tcp_ask_name, tcp_name_server},
    topology::{self, ConfigText, NO_CHECK, Topology, plain},
};

fn web() -> SocketAddr {
    SocketAddr::new(topology::VIP4.into(), 80)
}

/// Runs `balancer decap ARGS` on backend `ns`, pinned in the lab's bpffs
/// under its own directory.
fn decap(lab: &Lab, ns: &Netns, i: usize, args: &[&str]) -> Result<()> {
    let dir = lab
        .pin_dir()?
        .parent()
        .map(|p| p.join(format!("decap{i}")))
        .context("no lab bpffs")?;
    let out = ns
        .command(balancer_bin()?)
        .arg("decap")
        .args(args)
        .arg("--pin-path")
        .arg(&dir)
        .output()?;
    ensure!(
        out.status.success(),
        "balancer decap {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[test]
fn an_ipip_vip_reaches_backends_that_decapsulate() {
    netns_test("ipip_traffic", Duration::from_secs(120), |lab| {
        let t = Topology::build(lab, 2)?;
        for (i, ns) in t.backends.iter().enumerate() {
            tcp_name_server(ns, "0.0.0.0:80".parse()?, &format!("be{i}"))?;
        }
        let config = ConfigText::default()
            .vip(
                "web",
                topology::VIP4.into(),
                80,
                "tcp",
                &format!("forwarding = \"ipip\"\n{NO_CHECK}"),
                &plain(&t.backend_addresses(false)),
            )
            .build();
        let _daemon = start_with_config(lab, &t.lb, &config)?;
        // Without a decapsulator the backends drop what comes in IPIP.
        ensure!(
            tcp_ask_name(&t.client, web()).is_err(),
            "answered before any backend decapsulates"
        );
        for (i, ns) in t.backends.iter().enumerate() {
            decap(lab, ns, i, &["--interface", "eth0"])?;
        }
        let names = tally_names(&t.client, web(), 30)?;
        ensure!(names.len() == 2, "answered by {names:?}");
        let stats = cli_json(lab, ["stats"])?;
        let encap = stats["counters"]["encap"]["packets"].as_u64();
        ensure!(encap.is_some_and(|n| n >= 90), "encap events: {stats}");
        // Decapsulators off: nothing gets through any more.
        for (i, ns) in t.backends.iter().enumerate() {
            decap(lab, ns, i, &["--detach"])?;
        }
        ensure!(
            tcp_ask_name(&t.client, web()).is_err(),
            "answered after the decapsulators left"
        );
        Ok(())
    });
}
