//! Flows shared between two balancer hosts (`[sync]`), with real traffic:
//! connections opened through one host keep their backend when the client's
//! route moves them to the other, over a least-connections VIP whose choice
//! the second host could not make again, IPv4 and IPv6. With keys that
//! differ, the datagrams are refused and the moved connections break: what
//! sharing is for.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use balancer_tests::{
    Lab, Netns, VethOptions,
    daemon::Daemon,
    netns_test, poll,
    servers::EchoConnection,
    topology::{self, ConfigText, NO_CHECK, Server, Topology},
};

const LB2_4: Ipv4Addr = Ipv4Addr::new(10, 50, 0, 3);
const LB2_6: Ipv6Addr = Ipv6Addr::new(0xfd50, 0, 0, 0, 0, 0, 0, 3);
const SYNC_PORT: u16 = 7946;
const ECHO_PORT: u16 = 81;
const HELD4: usize = 30;
const HELD6: usize = 10;

/// A balancer host of the test: its namespace and address.
struct Host {
    name: &'static str,
    ns: Netns,
    address: IpAddr,
}

impl Host {
    /// Starts its daemon on `config`, with `args` beyond the files.
    fn start(&self, lab: &Lab, config: &str, args: &[&str]) -> Result<Daemon> {
        Daemon::start_in_with(lab, &self.ns, self.name, config, args)
    }
}

/// `status` of `daemon`.
fn status_of(daemon: &Daemon) -> Result<serde_json::Value> {
    daemon.cli_json(["status"])
}

/// The second balancer on the topology's segment.
fn second_host(lab: &Lab, t: &Topology) -> Result<Netns> {
    let lb2 = lab.netns("lb2")?;
    lab.veth((&lb2, "eth0"), (&t.switch, "plb2"), VethOptions::default())?;
    t.switch.ip(["link", "set", "plb2", "master", "br0"])?;
    lab.xdp_pass(&t.switch, "plb2")?;
    lb2.add_address("eth0", &format!("{LB2_4}/24"))?;
    lb2.add_address("eth0", &format!("{LB2_6}/64"))?;
    Ok(lb2)
}

/// The same least-connections echo VIPs (both families) on every host,
/// sharing with `peer` under the key in `key_file`.
fn config(t: &Topology, own: IpAddr, peer: IpAddr, key_file: &std::path::Path) -> String {
    let options = format!("scheduler = \"least-connections\"\n{NO_CHECK}");
    let backends = |v6| -> Vec<(IpAddr, &str)> {
        t.backend_addresses(v6)
            .into_iter()
            .map(|a| (a, ""))
            .collect()
    };
    let vips = ConfigText::default()
        .vip(
            "echo4",
            topology::VIP4.into(),
            ECHO_PORT,
            "tcp",
            &options,
            &backends(false),
        )
        .vip(
            "echo6",
            topology::VIP6.into(),
            ECHO_PORT,
            "tcp",
            &options,
            &backends(true),
        )
        .build();
    format!(
        "[sync]\nlisten = \"{}\"\npeers = [\"{}\"]\nkey_file = \"{}\"\n\n{vips}",
        SocketAddr::new(own, SYNC_PORT),
        SocketAddr::new(peer, SYNC_PORT),
        key_file.display()
    )
}

fn key_file(lab: &Lab, name: &str, secret: &str) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = lab.write_file(name, secret)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(path)
}

/// Points the client's routes of both VIPs at `via4` / `via6`.
fn route_vips(client: &Netns, via4: IpAddr, via6: IpAddr) -> Result<()> {
    client.ip([
        "route",
        "replace",
        &format!("{}/32", topology::VIP4),
        "via",
        &via4.to_string(),
    ])?;
    client.ip([
        "-6",
        "route",
        "replace",
        &format!("{}/128", topology::VIP6),
        "via",
        &via6.to_string(),
    ])?;
    Ok(())
}

/// Opens the held connections through the current route.
fn open_held(client: &Netns) -> Result<Vec<EchoConnection>> {
    let mut held = Vec::new();
    for (vip, n) in [
        (IpAddr::from(topology::VIP4), HELD4),
        (IpAddr::from(topology::VIP6), HELD6),
    ] {
        for _ in 0..n {
            let mut c = EchoConnection::open(client, SocketAddr::new(vip, ECHO_PORT))?;
            c.echo("hello")?;
            held.push(c);
        }
    }
    Ok(held)
}

struct Pair {
    t: Topology,
    a: Host,
    b: Host,
}

fn pair(lab: &Lab) -> Result<Pair> {
    let t = Topology::build(lab, 3)?;
    t.serve(Server::TcpEcho, topology::VIP4.into(), ECHO_PORT)?;
    t.serve(Server::TcpEcho, topology::VIP6.into(), ECHO_PORT)?;
    let lb2 = second_host(lab, &t)?;
    let a = Host {
        name: "a",
        ns: t.lb.clone(),
        address: topology::LB4.into(),
    };
    let b = Host {
        name: "b",
        ns: lb2,
        address: LB2_4.into(),
    };
    Ok(Pair { t, a, b })
}

#[test]
fn connections_moved_to_a_peer_keep_their_least_connections_backend() {
    netns_test("sharing", Duration::from_secs(120), |lab| -> Result<()> {
        let Pair { t, a, b } = pair(lab)?;
        let key = key_file(lab, "sync.key", "a secret the two hosts share\n")?;
        let da = a.start(lab, &config(&t, a.address, b.address, &key), &[])?;
        let db = b.start(lab, &config(&t, b.address, a.address, &key), &[])?;

        let opened = Instant::now();
        let mut held = open_held(&t.client)?;
        let total = (HELD4 + HELD6) as u64;
        let (status, learned) = {
            let status = poll(Duration::from_secs(5), Duration::from_millis(20), || {
                let status = status_of(&db)?;
                let inserted = status["sync"]["flows_inserted"].as_u64().unwrap_or(0);
                Ok(if inserted >= total {
                    Ok(status)
                } else {
                    Err(format!(
                        "the peer holds {inserted} of {total} flows: {}",
                        status["sync"]
                    ))
                })
            })?;
            (status, opened.elapsed())
        };
        let mean = status["sync"]["mean_delay_ms"].as_f64().unwrap_or(f64::NAN);
        ensure!(
            status["sync"]["datagrams_refused"] == 0 && mean < 50.0,
            "{}",
            status["sync"]
        );
        let sent = status_of(&da)?["sync"]["flows_sent"].as_u64().unwrap_or(0);
        ensure!(sent >= total, "host a sent {sent} flows of {total}");
        let backends: std::collections::BTreeSet<_> =
            held.iter().map(|c| c.backend.clone()).collect();
        ensure!(backends.len() == 3, "the held connections use {backends:?}");

        // The client's route moves every flow to the peer.
        route_vips(&t.client, LB2_4.into(), LB2_6.into())?;
        for (i, c) in held.iter_mut().enumerate() {
            c.echo(&format!("moved {i}"))
                .with_context(|| format!("held connection {i} on {} after the move", c.backend))?;
        }
        eprintln!(
            "{total} connections over 3 backends learned by the peer within {learned:?} of their opening (mean sharing delay {mean:.2} ms); all kept their backend on the peer"
        );
        Ok(())
    });
}

#[test]
fn with_another_key_the_peer_refuses_the_flows_and_moved_connections_break() {
    netns_test(
        "sharing_keys",
        Duration::from_secs(120),
        |lab| -> Result<()> {
            let Pair { t, a, b } = pair(lab)?;
            let ka = key_file(lab, "a.key", "the secret of host a, 32 bytes!!")?;
            let kb = key_file(lab, "b.key", "another secret, of host b alone")?;
            let _da = a.start(lab, &config(&t, a.address, b.address, &ka), &[])?;
            let db = b.start(lab, &config(&t, b.address, a.address, &kb), &[])?;
            let mut held = open_held(&t.client)?;
            let refused = poll(Duration::from_secs(5), Duration::from_millis(20), || {
                let sync = &status_of(&db)?["sync"];
                let refused = sync["datagrams_refused"].as_u64().unwrap_or(0);
                Ok(if refused > 0 {
                    Ok(sync.clone())
                } else {
                    Err(format!("nothing refused yet: {sync}"))
                })
            })?;
            ensure!(refused["flows_inserted"] == 0, "{refused}");
            route_vips(&t.client, LB2_4.into(), LB2_6.into())?;
            let mut broken = 0;
            for (i, c) in held.iter_mut().enumerate() {
                if c.echo(&format!("moved {i}")).is_err() {
                    broken += 1;
                }
            }
            ensure!(
                broken > 0,
                "every moved connection kept working without shared flows: the test shows nothing"
            );
            eprintln!(
                "with keys that differ: {} datagrams refused, {broken} of {} moved connections broke",
                refused["datagrams_refused"],
                held.len()
            );
            Ok(())
        },
    );
}

#[test]
fn connections_older_than_the_idle_timeout_stay_known_to_the_peer() {
    netns_test(
        "sharing_refresh",
        Duration::from_secs(120),
        |lab| -> Result<()> {
            let Pair { t, a, b } = pair(lab)?;
            let key = key_file(lab, "sync.key", "a secret the two hosts share\n")?;
            // Entries idle for 4 s expire, and scans (which remove them, and
            // share live flows again) run every second.
            let short = |config: String| {
                config.replace("[datapath]\n", "[datapath]\ntcp_idle_timeout = \"6s\"\n")
            };
            let fast = ["--reconcile-interval", "1s"];
            let _da = a.start(lab, &short(config(&t, a.address, b.address, &key)), &fast)?;
            let db = b.start(lab, &short(config(&t, b.address, a.address, &key)), &fast)?;
            let mut held = open_held(&t.client)?;
            // Three idle timeouts of traffic through host a only.
            let until = Instant::now() + Duration::from_secs(12);
            let mut round = 0;
            while Instant::now() < until {
                for c in held.iter_mut() {
                    c.echo(&format!("through a, round {round}"))?;
                }
                round += 1;
                std::thread::sleep(Duration::from_secs(1));
            }
            let sync = status_of(&db)?["sync"].clone();
            let refreshed = sync["flows_refreshed"].as_u64().unwrap_or(0);
            ensure!(
                refreshed > 0,
                "the peer's entries were never refreshed: {sync}"
            );
            route_vips(&t.client, LB2_4.into(), LB2_6.into())?;
            for (i, c) in held.iter_mut().enumerate() {
                c.echo(&format!("moved {i}")).with_context(|| {
                    format!(
                        "held connection {i} on {} moved after 13 s (idle timeout 6 s): {sync}",
                        c.backend
                    )
                })?;
            }
            eprintln!(
                "{} connections 13 s old (idle timeout 6 s) kept their backend on the peer: {refreshed} refreshes of its entries",
                held.len()
            );
            Ok(())
        },
    );
}
