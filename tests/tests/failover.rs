//! Failover and recovery under load (scenarios 4 and 5 of the end-to-end
//! suite): a backend's servers are killed while a client opens connections
//! at a steady pace. The health check takes the backend out within
//! interval × fall + 1 s, after which no new connection fails, and
//! connections held on the other backends carry on. Started again, the
//! backend comes back after rise checks and takes its share.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Result, ensure};
use balancer_tests::{
    Lab, Process,
    backend::ServerProcess,
    daemon::{start, start_with_config, wait_for_log},
    load::{SteadyLoad, failures_between},
    netns_test,
    servers::{EchoConnection, tally_names},
    topology::{self, ConfigText, Server, Topology, plain},
};

const INTERVAL_MS: u64 = 200;
const FALL: u64 = 2;
const RISE: u64 = 3;
/// New connections per second of the steady load.
const PACE: Duration = Duration::from_millis(20);

fn web() -> SocketAddr {
    SocketAddr::new(topology::VIP4.into(), 80)
}

fn chat() -> SocketAddr {
    SocketAddr::new(topology::VIP4.into(), 81)
}

/// Three backends, each running its servers in a process of its own: a
/// name server on port 80 of every address (the VIP's traffic and the
/// health check both reach it) and an echo server on the VIP's port 81.
/// Both VIPs are checked on port 80.
struct Setup {
    t: Topology,
    servers: Vec<ServerProcess>,
    daemon: Process,
}

fn setup(lab: &Lab) -> Result<Setup> {
    let t = Topology::build(lab, 3)?;
    let servers = ServerProcess::on_every_backend(
        &t,
        &[
            (Server::TcpName, "0.0.0.0:80".parse()?),
            (Server::TcpEcho, chat()),
        ],
    )?;
    let check = format!(
        "[vip.health_check]\nkind = \"tcp\"\nport = 80\ninterval = \"{INTERVAL_MS}ms\"\ntimeout = \"150ms\"\nrise = {RISE}\nfall = {FALL}\n"
    );
    let backends = plain(&t.backend_addresses(false));
    let config = ConfigText::default()
        .vip("web", topology::VIP4.into(), 80, "tcp", &check, &backends)
        .vip("chat", topology::VIP4.into(), 81, "tcp", &check, &backends)
        .build();
    let daemon = start_with_config(lab, &t.lb, &config)?;
    let first = tally_names(&t.client, web(), 60)?;
    ensure!(first.len() == 3, "before the failure: {first:?}");
    Ok(Setup { t, servers, daemon })
}

/// Waits for a daemon log line, written after byte `from` of its output,
/// that holds every one of `parts`; returns when it was seen.
fn wait_for_line(daemon: &mut Process, from: usize, parts: &[&str]) -> Result<Instant> {
    wait_for_log(daemon, from, parts, Duration::from_secs(10))?;
    Ok(Instant::now())
}

/// Waits, after byte `from` of the daemon's output, for be1's health to
/// change `to` ("down" or "up") on the web VIP and for that VIP's ring to be
/// published with `backends` backends; returns when the ring was seen.
fn wait_for_be1(daemon: &mut Process, from: usize, to: &str, backends: u32) -> Result<Instant> {
    let change = format!("to={to}");
    wait_for_line(
        daemon,
        from,
        &["backend health changed", "web", "10.50.0.11", &change],
    )?;
    let ring = format!("backends={backends}");
    wait_for_line(daemon, from, &["ring published", "web", &ring])
}

/// Kills be1's servers and waits until the web VIP's ring is published
/// without it; returns when the kill happened and when the ring was seen.
fn kill_be1(s: &mut Setup) -> Result<(Instant, Instant)> {
    let mark = s.daemon.output().len();
    let killed = Instant::now();
    s.servers[1].kill()?;
    let out = wait_for_be1(&mut s.daemon, mark, "down", 2)?;
    Ok((killed, out))
}

/// Connections to the chat VIP held on be0 and be2 (at least one each).
fn hold_on_survivors(t: &Topology) -> Result<Vec<EchoConnection>> {
    let mut held = Vec::new();
    for _ in 0..200 {
        let c = EchoConnection::open(&t.client, chat())?;
        if c.backend != "be1" {
            held.push(c);
        }
        let on = |name: &str| held.iter().filter(|c| c.backend == name).count();
        if on("be0") >= 3 && on("be2") >= 3 {
            return Ok(held);
        }
    }
    anyhow::bail!("200 connections did not reach be0 and be2 three times each")
}

#[test]
fn a_killed_backend_is_taken_out_under_load_and_nothing_else_breaks() {
    netns_test("failover", Duration::from_secs(120), |lab| {
        let mut s = setup(lab)?;
        let mut held = hold_on_survivors(&s.t)?;
        let load = SteadyLoad::start(&s.t.client, web(), PACE);
        std::thread::sleep(Duration::from_secs(1));
        let (killed, out) = kill_be1(&mut s)?;
        std::thread::sleep(Duration::from_secs(2));
        let attempts = load.stop()?;
        let end = Instant::now();

        let detection = out - killed;
        let bound = Duration::from_millis(INTERVAL_MS * FALL + 1000);
        ensure!(
            detection <= bound,
            "be1 was taken out {detection:?} after its servers were killed (bound {bound:?})"
        );
        let start = attempts.first().map(|a| a.started).unwrap_or(killed);
        // The attempt in flight when be1's servers were killed (the load
        // opens one connection at a time) belongs to the failover: its
        // connection may have been accepted by the server just killed.
        let split = attempts
            .iter()
            .find(|a| a.ended >= killed)
            .map_or(killed, |a| a.started.min(killed));
        let (before, failed_before) = failures_between(&attempts, start, split);
        let (during, failed_during) = failures_between(&attempts, split, out);
        let (after, failed_after) = failures_between(&attempts, out, end);
        let figures = format!(
            "taken out after {detection:?} (bound {bound:?}); connections before the kill: {} of {before} failed; \
             until taken out: {} of {during} failed; after: {} of {after} failed",
            failed_before.len(),
            failed_during.len(),
            failed_after.len()
        );
        ensure!(failed_before.is_empty(), "{figures}: {failed_before:?}");
        ensure!(
            failed_after.is_empty(),
            "{figures}; first failure after: {:?}",
            failed_after.first()
        );
        ensure!(after >= 50, "{figures}: too few connections after to judge");
        let reached_be1_after = attempts
            .iter()
            .filter(|a| a.started >= out && a.outcome.as_deref() == Ok("be1"))
            .count();
        ensure!(
            reached_be1_after == 0,
            "{figures}; {reached_be1_after} reached be1 after"
        );
        for c in &mut held {
            c.echo("still here after the failover")?;
        }
        eprintln!(
            "{figures}; {} connections held on be0 and be2 all answer",
            held.len()
        );
        Ok(())
    });
}

#[test]
fn a_backend_that_comes_back_takes_its_share_after_rise_checks() {
    netns_test("recovery", Duration::from_secs(120), |lab| {
        let mut s = setup(lab)?;
        kill_be1(&mut s)?;
        let load = SteadyLoad::start(&s.t.client, web(), PACE);
        let mark = s.daemon.output().len();
        let restarted = Instant::now();
        s.servers[1].restart()?;
        let back = wait_for_be1(&mut s.daemon, mark, "up", 3)?;
        let recovery = back - restarted;
        std::thread::sleep(Duration::from_millis(500));
        let attempts = load.stop()?;
        let failed: Vec<_> = attempts.iter().filter(|a| a.outcome.is_err()).collect();
        ensure!(
            failed.is_empty(),
            "{} of {} connections failed while be1 came back: {:?}",
            failed.len(),
            attempts.len(),
            failed.first()
        );
        // rise checks, the first up to one interval after the restart.
        let bound = Duration::from_millis(INTERVAL_MS * (RISE + 1) + 1000);
        ensure!(
            recovery <= bound,
            "be1 came back {recovery:?} after its restart (bound {bound:?})"
        );
        let counts = tally_names(&s.t.client, web(), 600)?;
        let share = counts.get("be1").copied().unwrap_or(0) as f64 * 100.0 / 600.0;
        ensure!(
            (share - 100.0 / 3.0).abs() <= 6.0,
            "be1 took {share:.1} % of 600 new connections after coming back (expected 33.3 ± 6): {counts:?}"
        );
        eprintln!(
            "be1 back in the ring {recovery:?} after its restart (bound {bound:?}); 0 of {} connections failed meanwhile; \
             then {share:.1} % of 600 new connections: {counts:?}",
            attempts.len()
        );
        Ok(())
    });
}

#[test]
fn a_backend_down_when_the_daemon_dies_stays_down_after_the_restart() {
    netns_test("down_restart", Duration::from_secs(120), |lab| {
        let mut s = setup(lab)?;
        kill_be1(&mut s)?;
        s.daemon.signal(nix::sys::signal::Signal::SIGKILL)?;
        s.daemon.wait_timeout(Duration::from_secs(5))?;
        let path = lab.scratch("balancer.toml")?;
        let mut daemon = start(lab, &s.t.lb, ["--config".as_ref(), path.as_os_str()])?;
        // Right after the restart, before any check of the new daemon
        // could have taken be1 out again: no new connection may reach it.
        let counts = tally_names(&s.t.client, web(), 100)?;
        ensure!(
            !counts.contains_key("be1") && counts.len() == 2,
            "right after the restart: {counts:?}"
        );
        ensure!(
            daemon
                .output()
                .contains("backend starts down, as the previous daemon left it"),
            "{}",
            daemon.output()
        );
        // It still comes back after rise successes.
        s.servers[1].restart()?;
        wait_for_be1(&mut daemon, 0, "up", 3)?;
        eprintln!(
            "after the restart, with be1 still down: {counts:?}; be1 came back after rise checks"
        );
        Ok(())
    });
}
