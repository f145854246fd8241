//! Active health checks through the daemon, with real traffic: a backend
//! whose check fails is taken out of its VIP's ring within interval × fall
//! (plus a second), new connections avoid it, and it comes back after rise
//! successes. An `exec` check leaves no process behind.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Result, ensure};
use balancer_tests::{
    Netns, netns_test, process,
    servers::{HealthEndpoint, tally_names},
    topology::{self, Server, Topology, plain},
};
use nix::sys::signal::Signal;

const CHECK_PORT: u16 = 8080;

fn config(t: &Topology, kind: &str) -> String {
    let check = format!(
        "[vip.health_check]\nkind = \"{kind}\"\nport = {CHECK_PORT}\npath = \"/healthz\"\ninterval = \"200ms\"\ntimeout = \"150ms\"\nrise = 2\nfall = 2\n"
    );
    topology::web_config(&check, &plain(&t.backend_addresses(false)))
}

/// Name servers on the VIP and a health endpoint on every backend's own
/// address.
fn serve(t: &Topology) -> Result<Vec<HealthEndpoint>> {
    t.serve(Server::TcpName, topology::VIP4.into(), 80)?;
    t.backends
        .iter()
        .enumerate()
        .map(|(i, backend)| {
            HealthEndpoint::start(
                backend,
                SocketAddr::new(topology::backend4(i).into(), CHECK_PORT),
            )
        })
        .collect()
}

fn tally(client: &Netns, n: usize) -> Result<BTreeMap<String, usize>> {
    tally_names(client, SocketAddr::new(topology::VIP4.into(), 80), n)
}

/// Runs the scenario with check `kind`; `fail` and `heal` break and mend
/// backend 1's check.
fn scenario(
    lab: &balancer_tests::Lab,
    kind: &str,
    fail: impl Fn(&mut HealthEndpoint),
    heal: impl Fn(&mut HealthEndpoint) -> Result<()>,
) -> Result<()> {
    let t = Topology::build(lab, 3)?;
    let mut endpoints = serve(&t)?;
    let mut daemon = balancer_tests::daemon::start_with_config(lab, &t.lb, &config(&t, kind))?;
    let before = tally(&t.client, 150)?;
    ensure!(before.len() == 3, "before the failure: {before:?}");

    let broken = Instant::now();
    fail(&mut endpoints[1]);
    let down = "backend=10.50.0.11 from=up to=down";
    daemon.wait_for_output(Duration::from_secs(3), |out| out.contains(down))?;
    // Out of the ring once it is republished without it.
    daemon.wait_for_output(Duration::from_secs(3), |out| {
        out.matches("ring published").count() >= 2
    })?;
    let detection = broken.elapsed();
    // interval × fall + 1 s.
    ensure!(
        detection <= Duration::from_millis(200 * 2 + 1000),
        "taken out after {detection:?}"
    );
    let during = tally(&t.client, 150)?;
    ensure!(
        !during.contains_key("be1"),
        "be1 still got new connections while down: {during:?}"
    );
    ensure!(
        during.len() == 2,
        "the others must share the load: {during:?}"
    );

    heal(&mut endpoints[1])?;
    let up = "backend=10.50.0.11 from=down to=up";
    daemon.wait_for_output(Duration::from_secs(3), |out| out.contains(up))?;
    daemon.wait_for_output(Duration::from_secs(3), |out| {
        out.matches("ring published").count() >= 3
    })?;
    let after = tally(&t.client, 150)?;
    ensure!(
        after.get("be1").copied().unwrap_or(0) >= 20,
        "be1 did not take its share back: {after:?}"
    );
    eprintln!(
        "{kind} check: before {before:?}, down after {detection:?}: {during:?}, back: {after:?}"
    );
    Ok(())
}

#[test]
fn a_failing_tcp_check_takes_a_backend_out_and_a_passing_one_brings_it_back() {
    netns_test("health_tcp", Duration::from_secs(120), |lab| {
        scenario(lab, "tcp", |e| e.stop(), |e| e.resume())
    });
}

#[test]
fn an_http_check_follows_the_status_the_backend_answers() {
    netns_test("health_http", Duration::from_secs(120), |lab| {
        scenario(
            lab,
            "http",
            |e| e.set_status(503),
            |e| {
                e.set_status(200);
                Ok(())
            },
        )
    });
}

#[test]
fn when_every_backend_is_down_the_vip_keeps_its_ring() {
    netns_test("health_all_down", Duration::from_secs(120), |lab| {
        let t = Topology::build(lab, 2)?;
        let mut endpoints = serve(&t)?;
        let mut daemon = balancer_tests::daemon::start_with_config(lab, &t.lb, &config(&t, "tcp"))?;
        for e in &mut endpoints {
            e.stop();
        }
        daemon.wait_for_output(Duration::from_secs(5), |out| {
            out.contains("keeping its last ring")
        })?;
        // The services themselves still answer: traffic keeps flowing.
        let counts = tally(&t.client, 20)?;
        ensure!(counts.values().sum::<usize>() == 20, "{counts:?}");
        Ok(())
    });
}

#[test]
fn exec_checks_leave_no_process_behind_while_the_daemon_runs_or_after_it() {
    netns_test("health_exec_group", Duration::from_secs(60), |lab| {
        let t = Topology::build(lab, 1)?;
        let marker = process::sleep_marker(0);
        // Every round times out with a background job and a grandchild
        // running.
        let check = format!(
            "[vip.health_check]\nkind = \"exec\"\ncommand = \"sleep {marker} & sh -c 'sleep {marker}'\"\ninterval = \"100ms\"\ntimeout = \"50ms\"\nfall = 2\n"
        );
        let config = topology::web_config(&check, &plain(&t.backend_addresses(false)));
        let mut daemon = balancer_tests::daemon::start_with_config(lab, &t.lb, &config)?;
        daemon.wait_for_output(Duration::from_secs(5), |out| {
            out.contains("backend=10.50.0.10 from=up to=down")
        })?;
        // Ten rounds more: what a round leaves behind would add up.
        std::thread::sleep(Duration::from_secs(1));
        let running = process::count_marked(&marker);
        ensure!(
            running <= 4,
            "{running} processes of the checks run; at most one round's may"
        );
        daemon.signal(Signal::SIGTERM)?;
        daemon.wait_timeout(Duration::from_secs(10))?;
        let left = process::wait_marked_gone(&marker, Duration::from_secs(2));
        ensure!(
            left == 0,
            "{left} processes of the checks outlived the daemon"
        );
        Ok(())
    });
}
