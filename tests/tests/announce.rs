//! The announcement table of one host, with the daemon and real health
//! checks: which VIP routes the daemon keeps in `[announce] table` (what
//! BIRD announces; ecmp.rs runs BIRD on top), when, and what survives a
//! restart, a kill -9, a drain and a teardown.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use balancer_tests::{
    Lab, Netns, daemon, netns_test, poll,
    servers::HealthEndpoint,
    topology::{self, ConfigText, Topology},
};
use nix::sys::signal::Signal;

const TABLE: u32 = 4242;
const DELAY: Duration = Duration::from_secs(1);
const CHECK_PORT: u16 = 8080;
/// An address no backend holds: its VIP is never servable.
const NOBODY: &str = "10.50.0.99";
const DEAD_VIP: &str = "198.51.100.99";

/// The addresses whose routes the table holds (both families).
fn routes(ns: &Netns) -> Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    for family in ["-4", "-6"] {
        let mut command = ns.command("ip");
        command.args([family, "route", "show", "table", &TABLE.to_string()]);
        let output = command.output().context("cannot run ip route")?;
        // A table without any route yet does not exist: nothing to read.
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            ensure!(
                line.contains("dev lo") && line.contains("proto 252"),
                "a route the daemon would not write: {line}"
            );
            if let Some(address) = line.split_whitespace().next() {
                out.insert(address.to_owned());
            }
        }
    }
    Ok(out)
}

fn both() -> BTreeSet<String> {
    BTreeSet::from([topology::VIP4.to_string(), topology::VIP6.to_string()])
}

/// `web` (IPv4) and `web6` over the two backends, both needing both up;
/// `dead` over an address nobody holds.
fn config(lab: &Lab) -> Result<String> {
    let check = format!(
        "min_healthy = 2\n[vip.health_check]\nkind = \"http\"\nport = {CHECK_PORT}\npath = \"/healthz\"\ninterval = \"200ms\"\ntimeout = \"150ms\"\nrise = 2\nfall = 2\n"
    );
    let v4: Vec<_> = (0..2).map(|i| (topology::backend4(i).into(), "")).collect();
    let v6: Vec<_> = (0..2).map(|i| (topology::backend6(i).into(), "")).collect();
    let vips = ConfigText::default()
        .vip("web", topology::VIP4.into(), 80, "tcp", &check, &v4)
        .vip("web6", topology::VIP6.into(), 80, "tcp", &check, &v6)
        .vip(
            "dead",
            DEAD_VIP.parse()?,
            80,
            "tcp",
            topology::NO_CHECK,
            &[(NOBODY.parse()?, "")],
        )
        .build();
    Ok(format!(
        "[announce]\ntable = {TABLE}\nannounce_delay = \"{}ms\"\nwithdraw_grace = \"1s\"\ndrain_file = \"{}\"\n\n{vips}",
        DELAY.as_millis(),
        lab.scratch("drained")?.display()
    ))
}

fn endpoints(t: &Topology) -> Result<Vec<HealthEndpoint>> {
    let mut out = Vec::new();
    for (i, backend) in t.backends.iter().enumerate() {
        for address in [topology::backend4(i).into(), topology::backend6(i).into()] {
            out.push(HealthEndpoint::start(
                backend,
                SocketAddr::new(address, CHECK_PORT),
            )?);
        }
    }
    Ok(out)
}

/// Waits until the table holds exactly `want`, and returns how long that
/// took.
fn wait_for(ns: &Netns, want: &BTreeSet<String>, timeout: Duration) -> Result<Duration> {
    let start = Instant::now();
    poll(timeout, Duration::from_millis(20), || {
        let have = routes(ns)?;
        Ok(if &have == want {
            Ok(start.elapsed())
        } else {
            Err(format!("the table holds {have:?}, not {want:?}"))
        })
    })
}

/// `vip list`'s announce state and reason of `vip`.
fn state(lab: &Lab, vip: &str) -> Result<(String, String)> {
    let rows = daemon::cli_json(lab, ["vip", "list"])?;
    let row = rows
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["name"] == vip))
        .with_context(|| format!("no row for {vip} in {rows}"))?;
    Ok((
        row["announce"].as_str().unwrap_or_default().to_owned(),
        row["announce_reason"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    ))
}

#[test]
fn servable_vips_are_announced_after_the_delay_and_withdrawn_when_not() {
    netns_test(
        "announce_gates",
        Duration::from_secs(90),
        |lab| -> Result<()> {
            let t = Topology::build(lab, 2)?;
            let endpoints = endpoints(&t)?;
            let started = Instant::now();
            let _daemon = daemon::start_with_config(lab, &t.lb, &config(lab)?)?;
            let first = wait_for(&t.lb, &both(), Duration::from_secs(5))?;
            let since_start = started.elapsed();
            ensure!(
                since_start >= DELAY,
                "announced {since_start:?} after the start, before announce_delay {DELAY:?}"
            );
            eprintln!(
                "announced {first:?} after the control socket, {since_start:?} after the start"
            );
            let (dead, why) = state(lab, "dead")?;
            ensure!(
                dead == "withdrawn"
                    && why.contains("0 backends can take new flows, min_healthy is 1"),
                "dead: {dead}: {why}"
            );
            ensure!(state(lab, "web")?.0 == "announced");

            // One backend of two fails: min_healthy 2 withdraws both VIPs.
            let failed = Instant::now();
            endpoints[2].set_status(503);
            endpoints[3].set_status(503);
            let withdrawn = wait_for(&t.lb, &BTreeSet::new(), Duration::from_secs(3))?;
            ensure!(
                withdrawn <= Duration::from_millis(200 * 2 + 1000),
                "withdrawn {withdrawn:?} after the check failed (interval 200 ms, fall 2)"
            );
            let (web, why) = state(lab, "web")?;
            ensure!(
                web == "withdrawn"
                    && why.contains("1 backends can take new flows, min_healthy is 2"),
                "web: {web}: {why}"
            );
            eprintln!("withdrawn {withdrawn:?} after the check failed");

            // Back: announced again only once servable for the delay.
            std::thread::sleep(Duration::from_millis(500));
            let healed = Instant::now();
            endpoints[2].set_status(200);
            endpoints[3].set_status(200);
            poll(Duration::from_secs(3), Duration::from_millis(20), || {
                let (state, why) = state(lab, "web")?;
                Ok(if state == "pending" {
                    Ok(())
                } else {
                    Err(format!("{state}: {why}"))
                })
            })?;
            let back = wait_for(&t.lb, &both(), Duration::from_secs(5))?;
            let since_healed = healed.elapsed();
            ensure!(
                since_healed >= DELAY + Duration::from_millis(200),
                "announced again {since_healed:?} after the checks passed: before rise × interval + announce_delay"
            );
            eprintln!(
                "announced again {back:?} after pending, {since_healed:?} after the checks passed; down for {:?}",
                failed.elapsed()
            );
            Ok(())
        },
    );
}

#[test]
fn drain_kill_restart_and_teardown_keep_or_withdraw_as_they_should() {
    netns_test(
        "announce_lifecycle",
        Duration::from_secs(120),
        |lab| -> Result<()> {
            let t = Topology::build(lab, 2)?;
            let _endpoints = endpoints(&t)?;
            let config = config(lab)?;
            let mut running = daemon::start_with_config(lab, &t.lb, &config)?;
            wait_for(&t.lb, &both(), Duration::from_secs(5))?;

            // Drain: everything out at once, the mark in; undrain: back at
            // once (the VIPs stayed servable).
            let drained = Instant::now();
            daemon::cli_ok(lab, &["host", "drain"])?;
            ensure!(
                routes(&t.lb)?.is_empty(),
                "still announced right after host drain: {:?}",
                routes(&t.lb)?
            );
            ensure!(lab.scratch("drained")?.exists(), "no drain mark");
            let status = daemon::cli_json(lab, ["status"])?;
            ensure!(
                status["announce"]["drained"] == true
                    && status["announce"]["announced"]
                        .as_array()
                        .is_some_and(Vec::is_empty),
                "{status}"
            );
            ensure!(
                state(lab, "web")? == ("withdrawn".to_owned(), "the host is drained".to_owned())
            );

            // A restart keeps the host drained.
            running.signal(Signal::SIGKILL)?;
            running.wait_timeout(Duration::from_secs(5))?;
            let mut running = daemon::start_with_config(lab, &t.lb, &config)?;
            std::thread::sleep(DELAY * 2);
            ensure!(routes(&t.lb)?.is_empty(), "a restart undrained the host");
            daemon::cli_ok(lab, &["host", "undrain"])?;
            ensure!(
                routes(&t.lb)? == both(),
                "not announced at once after undrain: {:?}",
                routes(&t.lb)?
            );
            eprintln!("drained and back in {:?}", drained.elapsed());

            // kill -9 and restart: the routes never leave the table.
            running.signal(Signal::SIGKILL)?;
            running.wait_timeout(Duration::from_secs(5))?;
            let watcher = {
                let lb = t.lb.clone();
                std::thread::spawn(move || -> Result<usize> {
                    let mut reads = 0;
                    let end = Instant::now() + Duration::from_secs(4);
                    while Instant::now() < end {
                        let have = routes(&lb)?;
                        ensure!(
                            have == both(),
                            "the table lost routes across a restart: {have:?}"
                        );
                        reads += 1;
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Ok(reads)
                })
            };
            let mut running = daemon::start_with_config(lab, &t.lb, &config)?;
            let reads = watcher
                .join()
                .map_err(|_| anyhow::anyhow!("watcher panicked"))??;
            eprintln!("{reads} reads of the table across kill -9 and restart, every one complete");

            // A route taken out behind the daemon's back comes back.
            t.lb.ip([
                "route",
                "del",
                &format!("{}/32", topology::VIP4),
                "table",
                &TABLE.to_string(),
            ])?;
            let repaired = wait_for(&t.lb, &both(), Duration::from_secs(12))?;
            eprintln!("a route deleted by hand was put back after {repaired:?}");

            // SIGTERM leaves them; teardown withdraws, waits, detaches.
            running.signal(Signal::SIGTERM)?;
            running.wait_timeout(Duration::from_secs(10))?;
            ensure!(routes(&t.lb)? == both(), "SIGTERM withdrew the routes");
            let path = lab.write_file("balancer.toml", &config)?;
            let mut teardown = t.lb.command(balancer_tests::balancer_bin()?);
            teardown
                .arg("teardown")
                .arg("--config")
                .arg(&path)
                .arg("--pin-path")
                .arg(lab.pin_dir()?);
            let started = Instant::now();
            let output = teardown.output()?;
            let took = started.elapsed();
            let text = String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr);
            ensure!(output.status.success(), "teardown failed: {text}");
            ensure!(
                text.contains("withdrew 2 routes from table 4242")
                    && took >= Duration::from_secs(1),
                "teardown took {took:?} (grace 1 s): {text}"
            );
            ensure!(routes(&t.lb)?.is_empty(), "teardown left routes");
            ensure!(
                t.lb.xdp_attachment("eth0")?.is_none(),
                "teardown left the program attached"
            );
            Ok(())
        },
    );
}

#[test]
fn drain_without_announce_is_refused_and_changes_nothing() {
    netns_test(
        "announce_off",
        Duration::from_secs(60),
        |lab| -> Result<()> {
            let t = Topology::build(lab, 1)?;
            let config = topology::web_config(
                topology::NO_CHECK,
                &topology::plain(&t.backend_addresses(false)),
            );
            let _daemon = daemon::start_with_config(lab, &t.lb, &config)?;
            let out = daemon::cli(lab, ["host", "drain"])?;
            let text = String::from_utf8_lossy(&out.stderr);
            ensure!(
                !out.status.success() && text.contains("announcements are off"),
                "{}: {text}",
                out.status
            );
            let status = daemon::cli_json(lab, ["status"])?;
            ensure!(status["announce"].is_null(), "{status}");
            let rows = daemon::cli_json(lab, ["vip", "list"])?;
            ensure!(rows[0]["announce"].is_null(), "{rows}");
            Ok(())
        },
    );
}

#[test]
fn a_fresh_host_announces_no_vip_before_its_backends_pass_a_check() {
    netns_test(
        "announce_fresh",
        Duration::from_secs(60),
        |lab| -> Result<()> {
            let t = Topology::build(lab, 2)?;
            let _endpoints = endpoints(&t)?;
            let backends: Vec<_> = (0..2).map(|i| (topology::backend4(i).into(), "")).collect();
            // The delay is shorter than the checks take to find a dead
            // backend (3 failures 200 ms apart): only checks passed count.
            let check = |port: u16| {
                format!(
                    "[vip.health_check]\nkind = \"tcp\"\nport = {port}\ninterval = \"200ms\"\ntimeout = \"150ms\"\nrise = 2\nfall = 3\n"
                )
            };
            let vips = ConfigText::default()
                .vip(
                    "web",
                    topology::VIP4.into(),
                    80,
                    "tcp",
                    &check(CHECK_PORT),
                    &backends,
                )
                .vip("sick", DEAD_VIP.parse()?, 80, "tcp", &check(9), &backends)
                .build();
            let config = format!(
                "[announce]\ntable = {TABLE}\nannounce_delay = \"100ms\"\ndrain_file = \"{}\"\n\n{vips}",
                lab.scratch("drained")?.display()
            );
            // A daemon killed at once, its dead backends still assumed up
            // in the pins, and another started on them: the pins must not
            // vouch for backends no check confirmed.
            let mut first = daemon::start_with_config(lab, &t.lb, &config)?;
            first.signal(Signal::SIGKILL)?;
            first.wait_timeout(Duration::from_secs(5))?;
            let started = Instant::now();
            let _daemon = daemon::start_with_config(lab, &t.lb, &config)?;
            let mut web_at = None;
            while started.elapsed() < Duration::from_secs(3) {
                let have = routes(&t.lb)?;
                ensure!(
                    !have.contains(DEAD_VIP),
                    "{DEAD_VIP} announced {:?} after the start, though its checks never passed",
                    started.elapsed()
                );
                if web_at.is_none() && have.contains(&topology::VIP4.to_string()) {
                    web_at = Some(started.elapsed());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let web_at = web_at.context("web was never announced")?;
            let (sick, why) = state(lab, "sick")?;
            ensure!(
                sick == "withdrawn" && why.contains("0 backends can take new flows"),
                "sick: {sick}: {why}"
            );
            eprintln!("web announced {web_at:?} after the start; sick never");
            Ok(())
        },
    );
}
