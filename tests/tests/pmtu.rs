//! Path MTU through the balancer (scenario 11 of the end-to-end suite): the
//! client sits behind a router whose link to it has a smaller MTU than the
//! backends' segment. A backend's full-size segments make the router send
//! ICMP fragmentation-needed (IPv4) or packet-too-big (IPv6) to the VIP;
//! the balancer must pass it to the backend that holds the flow, or the
//! transfer stalls in a black hole.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::{Result, ensure};
use balancer_tests::{
    Lab, Netns,
    daemon::{cli_json, start_with_config},
    netns_test,
    servers::download,
    topology::{self, ConfigText, NO_CHECK, Server, Topology, plain},
};

const LINK_MTU: u32 = 1400;
const BYTES: usize = 4 << 20;

fn icmp_pmtu_count(lab: &Lab) -> Result<u64> {
    Ok(
        cli_json(lab, ["stats"])?["counters"]["icmp_pmtu"]["packets"]
            .as_u64()
            .unwrap_or(0),
    )
}

/// The MTU a backend has learnt for the path to `client`, if any.
fn learnt_mtu(backend: &Netns, client: IpAddr, vip: IpAddr) -> Result<Option<u32>> {
    let family = if client.is_ipv4() { "-4" } else { "-6" };
    let out = backend.ip([
        family,
        "route",
        "get",
        &client.to_string(),
        "from",
        &vip.to_string(),
    ])?;
    let mut words = out.split_whitespace();
    Ok(words
        .by_ref()
        .skip_while(|w| *w != "mtu")
        .nth(1)
        .and_then(|v| v.parse().ok()))
}

#[test]
fn path_mtu_errors_for_the_vip_reach_the_backend_of_the_flow() {
    netns_test("pmtu", Duration::from_secs(120), |lab| {
        let t = Topology::build_routed(lab, 3, LINK_MTU)?;
        let server = Server::TcpBulk { bytes: BYTES };
        t.serve(server, topology::VIP4.into(), 80)?;
        t.serve(server, topology::VIP6.into(), 80)?;
        let text = ConfigText::default()
            .vip(
                "bulk",
                topology::VIP4.into(),
                80,
                "tcp",
                NO_CHECK,
                &plain(&t.backend_addresses(false)),
            )
            .vip(
                "bulk6",
                topology::VIP6.into(),
                80,
                "tcp",
                NO_CHECK,
                &plain(&t.backend_addresses(true)),
            )
            .build();
        let _daemon = start_with_config(lab, &t.lb, &text)?;

        let mut figures = Vec::new();
        for (vip, client) in [
            (
                IpAddr::from(topology::VIP4),
                IpAddr::from(topology::REMOTE_CLIENT4),
            ),
            (
                IpAddr::from(topology::VIP6),
                IpAddr::from(topology::REMOTE_CLIENT6),
            ),
        ] {
            let errors_before = icmp_pmtu_count(lab)?;
            let started = Instant::now();
            let name = download(&t.client, SocketAddr::new(vip, 80), BYTES)?;
            let took = started.elapsed();
            let errors = icmp_pmtu_count(lab)? - errors_before;
            ensure!(
                errors >= 1,
                "{vip}: the transfer completed, but no path-MTU error went through the balancer"
            );
            let holder: usize = name.trim_start_matches("be").parse()?;
            for (i, backend) in t.backends.iter().enumerate() {
                let mtu = learnt_mtu(backend, client, vip)?;
                if i == holder {
                    ensure!(
                        mtu == Some(LINK_MTU),
                        "{vip}: {name} served the transfer but learnt MTU {mtu:?} for {client}"
                    );
                } else {
                    ensure!(
                        mtu.is_none(),
                        "{vip}: be{i} learnt MTU {mtu:?}: the error went to the wrong backend"
                    );
                }
            }
            figures.push(format!(
                "{vip}: {BYTES} bytes from {name} in {took:?}, {errors} path-MTU error(s) forwarded, {name} learnt MTU {LINK_MTU}"
            ));
        }
        eprintln!("{}", figures.join("; "));
        Ok(())
    });
}
