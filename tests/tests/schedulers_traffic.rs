//! Schedulers with real traffic through the daemon: least-connections
//! steers new connections away from a backend holding long ones, counts
//! every connection until its FIN, and `vip show` reports it; persistence
//! keeps a client on its backend across ring changes and moves it when
//! that backend is drained.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use anyhow::{Context as _, Result, ensure};
use balancer_tests::{
    Lab, Netns,
    daemon::{cli, cli_json, start_scanning, wait_resolved},
    netns_test, poll,
    servers::{EchoConnection, tally_names},
    topology::{self, ConfigText, NO_CHECK, Server, Topology, plain},
};

/// Runs `balancer ARGS` and fails if it fails.
fn ok(lab: &Lab, args: &[&str]) -> Result<()> {
    cli_json(lab, args).map(drop)
}

/// `vip show NAME`'s backends by name (`be0`, ...), with the whole answer.
fn show(lab: &Lab, vip: &str) -> Result<(BTreeMap<String, serde_json::Value>, serde_json::Value)> {
    let answer = cli_json(lab, ["vip", "show", vip])?;
    let mut backends = BTreeMap::new();
    for row in answer["backends"]
        .as_array()
        .context("vip show has no backends array")?
    {
        let address: IpAddr = row["address"]
            .as_str()
            .context("backend without address")?
            .parse()?;
        let index = (0..8)
            .find(|i| {
                address == IpAddr::V4(topology::backend4(*i))
                    || address == IpAddr::V6(topology::backend6(*i))
            })
            .with_context(|| format!("{address} is no backend of the topology"))?;
        backends.insert(format!("be{index}"), row.clone());
    }
    Ok((backends, answer))
}

/// Active connections per backend as `vip show` reports them.
fn active(lab: &Lab, vip: &str) -> Result<BTreeMap<String, u64>> {
    let (backends, _) = show(lab, vip)?;
    Ok(backends
        .into_iter()
        .map(|(name, row)| (name, row["active_connections"].as_u64().unwrap_or(u64::MAX)))
        .collect())
}

/// Waits until `vip show` reports `want` active connections per backend.
fn wait_active(lab: &Lab, vip: &str, want: &BTreeMap<String, u64>) -> Result<()> {
    poll(Duration::from_secs(5), Duration::from_millis(50), || {
        let now = active(lab, vip)?;
        Ok(if &now == want {
            Ok(())
        } else {
            Err(format!("active connections {now:?}, expected {want:?}"))
        })
    })
}

fn counts(connections: &[EchoConnection]) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for c in connections {
        *counts.entry(c.backend.clone()).or_default() += 1;
    }
    counts
}

#[test]
fn least_connections_steers_new_connections_away_from_held_ones() {
    netns_test(
        "least_connections_traffic",
        Duration::from_secs(120),
        |lab| {
            let t = Topology::build(lab, 3)?;
            t.serve(Server::TcpEcho, topology::VIP4.into(), 80)?;
            let all = t.backend_addresses(false);
            let options = format!("scheduler = \"least-connections\"\n{NO_CHECK}");
            let config = ConfigText::default()
                .vip(
                    "app",
                    topology::VIP4.into(),
                    80,
                    "tcp",
                    &options,
                    &plain(&all[..1]),
                )
                .build();
            let _daemon = start_scanning(lab, &t.lb, &config)?;
            let vip = SocketAddr::new(topology::VIP4.into(), 80);
            let open = |client: &Netns| EchoConnection::open(client, vip);

            // Thirty long connections on the only backend, be0.
            let mut held: Vec<EchoConnection> =
                (0..30).map(|_| open(&t.client)).collect::<Result<_>>()?;
            ensure!(counts(&held) == BTreeMap::from([("be0".into(), 30)]));
            wait_active(lab, "app", &BTreeMap::from([("be0".into(), 30)]))?;

            // Two more backends join; new connections, held open too, must all
            // go to them while be0 carries more: with hashing be0 would take
            // a third.
            for address in &all[1..] {
                ok(lab, &["backend", "add", "app", &address.to_string()])?;
            }
            wait_resolved(lab, "app")?;
            let mut newer = Vec::new();
            for _ in 0..30 {
                newer.push(open(&t.client)?);
                // Spread over a few scans, so the last full interval has new
                // flows to share out.
                std::thread::sleep(Duration::from_millis(80));
            }
            let placed = counts(&newer);
            ensure!(
                !placed.contains_key("be0") && placed.len() == 2,
                "new connections while be0 held 30: {placed:?}"
            );
            let (backends, answer) = show(lab, "app")?;
            println!("vip show app: {answer:#}");
            let text = String::from_utf8(cli(lab, ["vip", "show", "app"])?.stdout)?;
            println!("{text}");
            ensure!(
                text.contains("scheduler: least-connections")
                    && text.contains("ACTIVE_CONNECTIONS")
                    && text
                        .lines()
                        .any(|l| l.starts_with("10.50.0.10 ") && l.contains(" 30 ")),
                "vip show's table: {text}"
            );
            ensure!(answer["scheduler"] == "least-connections", "{answer}");
            let interval = answer["interval_s"].as_f64().context("no interval yet")?;
            ensure!((0.5..3.0).contains(&interval), "interval {interval} s");
            ensure!(
                backends["be0"]["active_connections"] == 30
                    && backends["be0"]["share_percent"] == 0.0
                    && backends["be0"]["new_flows"] == 0,
                "be0: {}",
                backends["be0"]
            );
            let mut share = 0.0;
            let mut new_flows = 0;
            for name in ["be1", "be2"] {
                let row = &backends[name];
                ensure!(
                    row["active_connections"] == placed[name] && row["state"] == "up",
                    "{name}: {row}"
                );
                share += row["share_percent"].as_f64().context("no share")?;
                new_flows += row["new_flows"].as_u64().context("no new flows")?;
            }
            ensure!(
                new_flows > 0 && (share - 100.0).abs() < 1e-6,
                "shares of the last interval: {backends:?}"
            );

            // Every held connection still works, and each FIN takes its
            // connection off the count.
            for c in held.iter_mut().chain(newer.iter_mut()) {
                c.echo("still here")?;
            }
            held.clear();
            let mut want = counts(&newer);
            want.insert("be0".into(), 0);
            wait_active(lab, "app", &want)?;
            newer.clear();
            wait_active(
                lab,
                "app",
                &BTreeMap::from([("be0".into(), 0), ("be1".into(), 0), ("be2".into(), 0)]),
            )?;
            Ok(())
        },
    );
}

#[test]
fn persistence_keeps_a_client_on_its_backend_across_ring_changes() {
    netns_test("persistence_traffic", Duration::from_secs(120), |lab| {
        let t = Topology::build(lab, 3)?;
        let options = format!("persistence_timeout = \"30s\"\n{NO_CHECK}");
        let mut config = ConfigText::default();
        for (name, v6) in [("v4", false), ("v6", true)] {
            let vip: IpAddr = if v6 {
                topology::VIP6.into()
            } else {
                topology::VIP4.into()
            };
            t.serve(Server::TcpName, vip, 80)?;
            config = config.vip(
                name,
                vip,
                80,
                "tcp",
                &options,
                &plain(&t.backend_addresses(v6)),
            );
        }
        let _daemon = start_scanning(lab, &t.lb, &config.build())?;
        for (name, v6) in [("v4", false), ("v6", true)] {
            let addresses = t.backend_addresses(v6);
            let vip = SocketAddr::new(
                if v6 {
                    topology::VIP6.into()
                } else {
                    topology::VIP4.into()
                },
                80,
            );
            let only = |when: &str| -> Result<String> {
                let names = tally_names(&t.client, vip, 20)?;
                ensure!(
                    names.len() == 1,
                    "{name}: {when}, the client's connections spread: {names:?}"
                );
                Ok(names.into_keys().next().unwrap_or_default())
            };
            // Every connection of the client (a new source port each time)
            // goes where its first went; hashing alone would spread them.
            let first = only("at first")?;
            let index: usize = first.trim_start_matches("be").parse()?;
            let (other, another) = ((index + 1) % 3, (index + 2) % 3);

            // Ring changes: a weight, then a backend removed.
            ok(
                lab,
                &[
                    "backend",
                    "weight",
                    name,
                    &addresses[other].to_string(),
                    "7",
                ],
            )?;
            ensure!(only("after a weight change")? == first, "{name}: moved");
            ok(
                lab,
                &["backend", "remove", name, &addresses[another].to_string()],
            )?;
            ensure!(only("after a removal")? == first, "{name}: moved");

            // Drained: the client moves, and sticks to its new backend.
            ok(
                lab,
                &["backend", "drain", name, &addresses[index].to_string()],
            )?;
            let moved = only("after a drain")?;
            ensure!(
                moved == format!("be{other}"),
                "{name}: drained {first}, then {moved}"
            );
            let (_, answer) = show(lab, name)?;
            ensure!(answer["persistence_timeout"] == "30s", "{answer}");
            ensure!(
                answer["persistence_ipv6_prefix"]
                    == if v6 {
                        64.into()
                    } else {
                        serde_json::Value::Null
                    },
                "{answer}"
            );
        }
        Ok(())
    });
}
