//! The availability policies with real traffic through the daemon: below
//! its `panic_threshold` a VIP spreads new connections over every backend,
//! down ones included, while a VIP without one piles them onto the
//! survivors; with `slow_start` a backend that comes back takes a small
//! share of new connections first and its full share at the end, under
//! Maglev, round robin and least connections alike.
//!
//! The health checks run against an HTTP endpoint on each backend's own
//! address, apart from the service: a failing check leaves the service
//! answering, as a broken check or a partition of the checks would.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use balancer_tests::{
    Lab, Netns,
    daemon::{cli_json, start_scanning, wait_resolved},
    metrics, netns_test, poll,
    servers::{EchoConnection, HealthEndpoint, tally_names},
    topology::{self, ConfigText, Server, Topology, plain},
};

const CHECK_PORT: u16 = 8080;

/// An HTTP check on [`CHECK_PORT`] that takes a backend down at its first
/// failure and up at its first success.
fn check() -> String {
    format!(
        "[vip.health_check]\nkind = \"http\"\nport = {CHECK_PORT}\npath = \"/healthz\"\ninterval = \"200ms\"\ntimeout = \"150ms\"\nrise = 1\nfall = 1\n"
    )
}

/// A health endpoint on every backend's own address.
fn endpoints(t: &Topology) -> Result<Vec<HealthEndpoint>> {
    t.backends
        .iter()
        .enumerate()
        .map(|(i, ns)| {
            HealthEndpoint::start(
                ns,
                SocketAddr::new(topology::backend4(i).into(), CHECK_PORT),
            )
        })
        .collect()
}

fn vip(port: u16) -> SocketAddr {
    SocketAddr::new(topology::VIP4.into(), port)
}

/// Connections per backend name for `n` new connections to `port`.
fn tally(client: &Netns, port: u16, n: usize) -> Result<BTreeMap<String, usize>> {
    tally_names(client, vip(port), n)
}

/// Waits until the daemon's log shows `needle` `count` times.
fn wait_log(daemon: &mut balancer_tests::Process, needle: &str, count: usize) -> Result<()> {
    daemon.wait_for_output(Duration::from_secs(5), |out| {
        out.matches(needle).count() >= count
    })
}

/// `vip show NAME`'s row of the backend at 10.50.0.1I.
fn backend_row(lab: &Lab, vip: &str, i: usize) -> Result<serde_json::Value> {
    let answer = cli_json(lab, ["vip", "show", vip])?;
    let address = topology::backend4(i).to_string();
    answer["backends"]
        .as_array()
        .context("vip show has no backends")?
        .iter()
        .find(|b| b["address"] == address.as_str())
        .cloned()
        .with_context(|| format!("{vip} has no backend {address}: {answer}"))
}

#[test]
fn below_its_panic_threshold_a_vip_spreads_new_connections_over_every_backend() {
    netns_test("panic_threshold", Duration::from_secs(120), |lab| {
        let t = Topology::build(lab, 4)?;
        for port in [80, 81] {
            t.serve(Server::TcpName, topology::VIP4.into(), port)?;
        }
        let endpoints = endpoints(&t)?;
        let backends = plain(&t.backend_addresses(false));
        let config = ConfigText::default()
            .vip(
                "guarded",
                topology::VIP4.into(),
                80,
                "tcp",
                &format!("panic_threshold = 50\n{}", check()),
                &backends,
            )
            .vip(
                "trusting",
                topology::VIP4.into(),
                81,
                "tcp",
                &check(),
                &backends,
            )
            .build();
        let mut daemon = start_scanning(lab, &t.lb, &config)?;
        wait_resolved(lab, "guarded")?;
        wait_resolved(lab, "trusting")?;
        let all = tally(&t.client, 80, 160)?;
        ensure!(all.len() == 4, "every backend up: {all:?}");

        // Three of four up, then two: 75 % and 50 % of the weight, not
        // below the threshold, so the checks are trusted.
        endpoints[1].set_status(503);
        wait_log(&mut daemon, "backend=10.50.0.11 from=up to=down", 2)?;
        endpoints[2].set_status(503);
        wait_log(&mut daemon, "backend=10.50.0.12 from=up to=down", 2)?;
        // Once both VIPs' rings are published without them.
        poll(Duration::from_secs(3), Duration::from_millis(50), || {
            let t80 = tally(&t.client, 80, 40)?;
            Ok(if t80.keys().all(|k| k == "be0" || k == "be3") {
                Ok(())
            } else {
                Err(format!("be1 and be2 down, port 80: {t80:?}"))
            })
        })?;
        ensure!(
            !daemon.output().contains("VIP panics"),
            "50 % up is not below a threshold of 50"
        );

        // One of four: 25 %. The guarded VIP panics and spreads new
        // connections over all four; the trusting one piles them on be0.
        endpoints[3].set_status(503);
        wait_log(&mut daemon, "backend=10.50.0.13 from=up to=down", 2)?;
        wait_log(&mut daemon, "VIP panics", 1)?;
        let out = daemon.output();
        let line = out
            .lines()
            .find(|l| l.contains("VIP panics"))
            .context("no panic line")?;
        ensure!(
            line.contains("vip=\"guarded\"")
                && line.contains("percent_up=25.0")
                && line.contains("threshold=50"),
            "{line}"
        );
        let guarded = tally(&t.client, 80, 200)?;
        let trusting = tally(&t.client, 81, 100)?;
        println!("25 % up: guarded {guarded:?}, trusting {trusting:?}");
        ensure!(
            guarded.len() == 4 && guarded.values().all(|n| *n >= 20),
            "panicking, new connections must spread over all four: {guarded:?}"
        );
        ensure!(
            trusting == BTreeMap::from([("be0".to_owned(), 100)]),
            "without a threshold the survivor takes them all: {trusting:?}"
        );
        let show = cli_json(lab, ["vip", "show", "guarded"])?;
        ensure!(
            show["panicking"] == true
                && show["panic_threshold"] == 50
                && show["weight_up_percent"] == 25.0,
            "vip show guarded: {show}"
        );
        let down = backend_row(lab, "guarded", 1)?;
        ensure!(down["state"] == "down", "the checks still say down: {down}");
        let list = cli_json(lab, ["vip", "list"])?;
        let panicking: BTreeMap<String, bool> = list
            .as_array()
            .context("vip list is not an array")?
            .iter()
            .map(|v| {
                (
                    v["name"].as_str().unwrap_or_default().to_owned(),
                    v["panicking"] == true,
                )
            })
            .collect();
        ensure!(
            panicking
                == BTreeMap::from([("guarded".to_owned(), true), ("trusting".to_owned(), false)]),
            "vip list: {list}"
        );
        let scrape = metrics::scrape(&t.lb, "127.0.0.1:9100".parse()?)?;
        ensure!(
            scrape.value("balancer_vip_panicking", &[("vip", "guarded")]) == Some(1.0)
                && scrape.value("balancer_vip_panicking", &[("vip", "trusting")]) == Some(0.0),
            "balancer_vip_panicking"
        );

        // Two back: 75 %. The checks are trusted again: be3 gets nothing.
        endpoints[1].set_status(200);
        endpoints[2].set_status(200);
        wait_log(&mut daemon, "VIP panics no more", 1)?;
        let healed = tally(&t.client, 80, 150)?;
        println!("75 % up again: {healed:?}");
        ensure!(
            healed.len() == 3 && !healed.contains_key("be3"),
            "trusted again, be3 is down: {healed:?}"
        );
        // Scrapes are cached for a second.
        poll(Duration::from_secs(3), Duration::from_millis(200), || {
            let scrape = metrics::scrape(&t.lb, "127.0.0.1:9100".parse()?)?;
            let panicking = scrape.value("balancer_vip_panicking", &[("vip", "guarded")]);
            Ok(if panicking == Some(0.0) {
                Ok(())
            } else {
                Err(format!(
                    "balancer_vip_panicking after the panic: {panicking:?}"
                ))
            })
        })?;
        Ok(())
    });
}

/// One sample of a slow start: the weights `vip show` gave, then the
/// connections each backend took.
struct Sample {
    at: Duration,
    /// be1's share of the weight, as the datapath holds it.
    expected: f64,
    /// be1's share of the connections.
    got: f64,
    step: Option<String>,
}

/// be1's share of `n` new connections to `port` and of the weight of VIP
/// `name` just before.
fn sample(lab: &Lab, client: &Netns, name: &str, port: u16, since: Instant) -> Result<Sample> {
    let be0 = backend_row(lab, name, 0)?;
    let be1 = backend_row(lab, name, 1)?;
    let weight = |row: &serde_json::Value| row["weight_now"].as_f64().unwrap_or(f64::NAN);
    let expected = weight(&be1) / (weight(&be0) + weight(&be1));
    let placed = tally(client, port, 60)?;
    let got = placed.get("be1").copied().unwrap_or(0) as f64 / 60.0;
    Ok(Sample {
        at: since.elapsed(),
        expected,
        got,
        step: be1["slow_start"].as_str().map(str::to_owned),
    })
}

/// Checks a slow start's samples: be1 began with a small share, its weight
/// rose in steps, and the connections followed the weights.
fn check_ramp(name: &str, samples: &[Sample]) -> Result<()> {
    for s in samples {
        println!(
            "{name} at {:>5.2}s: weight share {:.2}, connections {:.2}, {}",
            s.at.as_secs_f64(),
            s.expected,
            s.got,
            s.step.as_deref().unwrap_or("full weight")
        );
    }
    let first = samples.first().context("no sample")?;
    ensure!(
        first.expected < 0.2 && first.got < 0.3,
        "{name}: be1 must start with a small share (a full one is 0.5)"
    );
    ensure!(
        samples.windows(2).all(|w| w[1].expected >= w[0].expected),
        "{name}: the weight only rises"
    );
    let steps: std::collections::BTreeSet<String> =
        samples.iter().filter_map(|s| s.step.clone()).collect();
    ensure!(steps.len() >= 4, "{name}: steps seen: {steps:?}");
    let expected: f64 = samples.iter().map(|s| s.expected).sum();
    let got: f64 = samples.iter().map(|s| s.got).sum();
    ensure!(
        (got - expected).abs() <= 0.1 * samples.len() as f64,
        "{name}: be1 took {got:.2} connections' worth where the weights gave {expected:.2}"
    );
    Ok(())
}

#[test]
fn a_backend_that_comes_back_takes_a_growing_share_under_every_scheduler() {
    netns_test("slow_start", Duration::from_secs(150), |lab| {
        let t = Topology::build(lab, 2)?;
        t.serve(Server::TcpName, topology::VIP4.into(), 80)?;
        t.serve(Server::TcpName, topology::VIP4.into(), 81)?;
        t.serve(Server::TcpEcho, topology::VIP4.into(), 82)?;
        let endpoints = endpoints(&t)?;
        let backends = plain(&t.backend_addresses(false));
        let options = |scheduler: &str| {
            format!(
                "scheduler = \"{scheduler}\"\nslow_start = \"10s\"\n{}",
                check()
            )
        };
        let config = ConfigText::default()
            .vip(
                "hash",
                topology::VIP4.into(),
                80,
                "tcp",
                &options("maglev"),
                &backends,
            )
            .vip(
                "turns",
                topology::VIP4.into(),
                81,
                "tcp",
                &options("round-robin"),
                &backends,
            )
            .vip(
                "least",
                topology::VIP4.into(),
                82,
                "tcp",
                &options("least-connections"),
                &backends,
            )
            .build();
        let mut daemon = start_scanning(lab, &t.lb, &config)?;
        for name in ["hash", "turns", "least"] {
            wait_resolved(lab, name)?;
        }
        // Backends up from the start have their full weight.
        let row = backend_row(lab, "hash", 1)?;
        ensure!(
            row["weight_now"] == 100 && row["slow_start"].is_null(),
            "{row}"
        );

        endpoints[1].set_status(503);
        wait_log(&mut daemon, "backend=10.50.0.11 from=up to=down", 3)?;
        endpoints[1].set_status(200);
        wait_log(&mut daemon, "backend=10.50.0.11 from=down to=up", 3)?;
        let back = Instant::now();

        // Least connections, in the first steps: held connections go to
        // be1 only while its connections per weight are the lower, so at
        // a tenth or a fifth of be0's weight it takes a few.
        let held: Vec<EchoConnection> = (0..40)
            .map(|_| EchoConnection::open(&t.client, vip(82)))
            .collect::<Result<_>>()?;
        let on_be1 = held.iter().filter(|c| c.backend == "be1").count();
        let weight = backend_row(lab, "least", 1)?["weight_now"].clone();
        println!(
            "least-connections, {:.2}s after be1 came back (weight now {weight}): be1 holds {on_be1} of 40",
            back.elapsed().as_secs_f64()
        );
        ensure!(
            (1..=10).contains(&on_be1),
            "be1 holds {on_be1} of 40 held connections (20 without slow start)"
        );
        drop(held);

        let mut hash = Vec::new();
        let mut turns = Vec::new();
        while back.elapsed() < Duration::from_secs(11) {
            hash.push(sample(lab, &t.client, "hash", 80, back)?);
            turns.push(sample(lab, &t.client, "turns", 81, back)?);
            std::thread::sleep(Duration::from_millis(200));
        }
        check_ramp("maglev", &hash)?;
        check_ramp("round-robin", &turns)?;

        // At its full weight, be1 takes its full share again, and so
        // under least connections.
        let row = backend_row(lab, "hash", 1)?;
        ensure!(
            row["weight_now"] == 100 && row["slow_start"].is_null(),
            "after the slow start: {row}"
        );
        let after = tally(&t.client, 80, 200)?;
        let share = after.get("be1").copied().unwrap_or(0) as f64 / 200.0;
        ensure!((0.35..=0.65).contains(&share), "maglev after: {after:?}");
        poll(Duration::from_secs(5), Duration::from_millis(100), || {
            let active = [0, 1]
                .map(|i| backend_row(lab, "least", i).map(|r| r["active_connections"].clone()));
            let [be0, be1] = active;
            let (be0, be1) = (be0?, be1?);
            Ok(if be0 == 0 && be1 == 0 {
                Ok(())
            } else {
                Err(format!("still held: be0 {be0}, be1 {be1}"))
            })
        })?;
        let held: Vec<EchoConnection> = (0..40)
            .map(|_| EchoConnection::open(&t.client, vip(82)))
            .collect::<Result<_>>()?;
        let on_be1 = held.iter().filter(|c| c.backend == "be1").count();
        ensure!(
            (15..=25).contains(&on_be1),
            "least-connections after: be1 holds {on_be1} of 40"
        );
        Ok(())
    });
}
