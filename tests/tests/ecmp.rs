//! Three balancer hosts behind a router that spreads the VIPs over them by
//! ECMP (issue #18): each host runs BIRD with the shipped configuration and
//! the balancer daemon, whose announcement table BIRD carries to the
//! router. Real TCP traffic from a client behind the router, IPv4 and IPv6:
//! how connections spread over the hosts, and what clients see when a host
//! dies, joins, loses a VIP's backends, drains, or has its daemon killed.
//!
//! Every host has the same VIPs, backends and hash seed, so Maglev places a
//! flow on the same backend whichever host the router hashes it to: a
//! connection that moves to another host (its host died, a host joined)
//! keeps its backend, and the new host forwards its packets without ever
//! having seen its SYN.
//!
//! Per family, on the segment's backends `be0..be2` (L2 DSR):
//! - `web` (VIP address 0, port 80): a name server, for short connections;
//! - `chat` (VIP address 0, port 81): an echo server, for held connections;
//! - `api` (VIP address 1, port 80): the name server again, but through
//!   second addresses of the backends, so that one host can lose all of
//!   `api`'s backends and nothing else.
//!
//! Each test fails when the hosts disagree on placement (a different hash
//! seed on one host breaks the held connections that change hosts).

#[path = "ecmp/fixture.rs"]
mod fixture;

use std::{
    collections::BTreeMap,
    net::IpAddr,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Result, ensure};
use balancer_tests::{load::Window, netns_test, servers::tally_names};
use fixture::{
    Counters, FAMILIES, Family, HELD, Held, Loads, Site, both, echo_everywhere, ms, timed_from,
};

const TEST_TIMEOUT: Duration = Duration::from_secs(120);
/// BGP hold time of the shipped configurations.
const HOLD_TIME: Duration = Duration::from_secs(3);

#[test]
fn new_connections_spread_over_the_hosts_and_a_dead_host_leaves_after_the_hold_time() {
    netns_test("ecmp_hold", TEST_TIMEOUT, |lab| {
        let site = Site::build(lab, false)?;
        spread(&site)?;
        let death = silent_death(&site, 1, false)?;
        eprintln!("BGP timers only (hold 3 s, keepalive 1 s): {death}");
        for t in &death.detection {
            // The hold timer restarts at each keepalive, which BIRD sends
            // about every second with some jitter: it fired 1.4 to 2.6 s
            // after the port went down here. Under a second would be
            // something other than the hold timer.
            ensure!(
                *t > Duration::from_secs(1) && *t < HOLD_TIME + Duration::from_secs(2),
                "the router dropped the dead host after {}, hold time 3 s: {death}",
                ms(&death.detection)
            );
        }
        Ok(())
    });
}

/// With flow sharing on, so that connections to the least-connections
/// VIP, whose choice another host could not make again, carry on too.
#[test]
fn a_dead_host_leaves_within_bfd_detection_and_held_connections_carry_on() {
    netns_test("ecmp_bfd", TEST_TIMEOUT, |lab| {
        let site = Site::build_with(lab, true, true)?;
        let death = silent_death(&site, 1, true)?;
        eprintln!("BFD (100 ms x 3): {death}");
        for t in &death.detection {
            ensure!(
                *t < Duration::from_millis(1500),
                "the router dropped the dead host after {}; BFD takes about 300 ms: {death}",
                ms(&death.detection)
            );
        }
        Ok(())
    });
}

/// Scenario 2 without flow sharing: connections to the least-connections
/// VIP that the death moves to another host break there (it places them
/// anew, on another backend, which resets them), while the Maglev VIP's
/// all carry on: what `[sync]` is for.
#[test]
fn without_sharing_least_connections_connections_that_change_hosts_break() {
    netns_test("ecmp_lc", TEST_TIMEOUT, |lab| {
        let site = Site::build(lab, true)?;
        let mut least = Held::open_least_connections(&site)?;
        let mut maglev = Held::open_both(&site)?;
        let victim = 1;
        let failed_at = Instant::now();
        site.ecmp.fail_host(victim)?;
        let survivors: Vec<usize> = (0..3).filter(|h| *h != victim).collect();
        let detection = timed_from(failed_at, || {
            site.wait_announced(&survivors, Duration::from_secs(10))
        })?;
        let mut figures = Vec::new();
        let mut broken = 0;
        for h in &mut least {
            let lost = h.echo_all("after the death")?.len();
            broken += lost;
            figures.push(format!(
                "{lost} of {} broke ({}, {} had gone through lb{victim})",
                h.conns.len(),
                h.describe(),
                h.via.get(&victim).copied().unwrap_or(0)
            ));
        }
        echo_everywhere(&mut maglev, "after the death, the Maglev VIP")?;
        let figures = format!(
            "without [sync], the dead host left the routes after {}: least connections: {}; \
             every Maglev connection carried on",
            ms(&detection),
            figures.join("; ")
        );
        eprintln!("{figures}");
        ensure!(
            broken > 0,
            "{figures}: no least-connections connection broke, so the sharing test shows nothing"
        );
        Ok(())
    });
}

/// Scenario 1: new connections to `web` spread over the hosts, as each
/// host's counters say.
fn spread(site: &Site) -> Result<()> {
    const N: usize = 300;
    both(|family| {
        let vip = family.vip("web");
        let before = site.counters(&vip)?;
        let names = tally_names(&site.ecmp.client, family.web(), N)?;
        let per_host = Counters::delta(&before, &site.counters(&vip)?);
        let total: u64 = per_host.values().map(|c| c.new_flows).sum();
        let shares: BTreeMap<usize, f64> = per_host
            .iter()
            .map(|(host, c)| (*host, c.new_flows as f64 * 100.0 / N as f64))
            .collect();
        let figures = format!(
            "{}: {N} new connections to {vip}: {}; backends {names:?}",
            family.label(),
            per_host
                .iter()
                .map(|(h, c)| format!("lb{h} {} ({:.1} %)", c.new_flows, shares[h]))
                .collect::<Vec<_>>()
                .join(", ")
        );
        eprintln!("{figures}");
        ensure!(
            total as usize >= N && total as usize <= N + 3,
            "{figures}: {total} new flows counted over the hosts for {N} connections"
        );
        // 300 flows, a third each: the standard deviation is 2.7 points,
        // so 13 points off is beyond chance.
        ensure!(
            shares.len() == 3 && shares.values().all(|s| (s - 100.0 / 3.0).abs() < 13.0),
            "{figures}: not a fair share each"
        );
        ensure!(names.len() == 3, "{figures}: not every backend answered");
        Ok(())
    })
}

/// What a host's silent death did.
struct Death {
    /// From the port going down to the router's route dropping the host:
    /// IPv4 `web`, IPv4 `api`, IPv6 `web`, IPv6 `api`.
    detection: Vec<Duration>,
    /// Per family: the held connections, and how many the dead host had
    /// carried.
    held: Vec<String>,
    /// Per family: the steady load's attempts around the death.
    load: Vec<String>,
}

impl std::fmt::Display for Death {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the dead host left the routes after {} (IPv4 web, api; IPv6 web, api); {}; new \
             connections: {}",
            ms(&self.detection),
            self.held.join("; "),
            self.load.join("; ")
        )
    }
}

/// Scenario 2: host `victim`'s switch port goes down while connections
/// are held open over every host (to `chat`, a Maglev VIP; with
/// `least_connections`, to `lc` too) and new ones are opened at a steady
/// pace. Every held connection must echo afterwards, and new connections
/// may fail or be slow only between the death and the router dropping the
/// host.
fn silent_death(site: &Site, victim: usize, least_connections: bool) -> Result<Death> {
    let mut held = Held::open_both(site)?;
    if least_connections {
        held.extend(Held::open_least_connections(site)?);
    }
    for h in &held {
        ensure!(
            h.via.get(&victim).copied().unwrap_or(0) > 0,
            "no held connection goes through lb{victim}, nothing would be tested: {}",
            h.describe()
        );
    }
    let loads = Loads::start(site, Family::web);
    thread::sleep(Duration::from_secs(1));
    let failed_at = Instant::now();
    site.ecmp.fail_host(victim)?;
    let survivors: Vec<usize> = (0..3).filter(|h| *h != victim).collect();
    let detection = timed_from(failed_at, || {
        site.wait_announced(&survivors, Duration::from_secs(10))
    })?;
    // Sample a while after the window; stopping waits for the attempts in
    // flight.
    thread::sleep(Duration::from_secs(2));
    let mut load = Vec::new();
    let mut problems = Vec::new();
    for (i, (family, attempts)) in loads.stop()?.into_iter().enumerate() {
        // The family's `web` route: 0 for IPv4, 2 for IPv6.
        let window = Window::judge(&attempts, failed_at, failed_at + detection[2 * i]);
        load.push(format!("{}: {window}", family.label()));
        if let Some(problem) = window.hits_outside() {
            problems.push(format!("{}: {problem}", family.label()));
        }
    }
    let mut held_figures = Vec::new();
    for h in &mut held {
        let broken = h.echo_all("after the death")?;
        held_figures.push(format!(
            "{}: {} of {} held connections echo afterwards, {} had gone through lb{victim} ({})",
            h.family.label(),
            h.conns.len() - broken.len(),
            h.conns.len(),
            h.via.get(&victim).copied().unwrap_or(0),
            h.describe()
        ));
        if !broken.is_empty() {
            problems.push(format!(
                "{}: held connections broken: {broken:?}",
                h.family.label()
            ));
        }
    }
    let death = Death {
        detection,
        held: held_figures,
        load,
    };
    ensure!(problems.is_empty(), "{death}\n{}", problems.join("\n"));
    Ok(death)
}

/// Scenario 3.
#[test]
fn a_host_that_joins_takes_a_share_and_nothing_breaks() {
    netns_test("ecmp_join", TEST_TIMEOUT, |lab| {
        let mut site = Site::build(lab, true)?;
        let mut held = Held::open_both(&site)?;
        let loads = Loads::start(&site, Family::web);
        thread::sleep(Duration::from_millis(500));
        let started = Instant::now();
        let joined = site.ecmp.add_host()?;
        site.start_daemon(joined)?;
        let serving = started.elapsed();
        let announced = site.wait_announced(&[0, 1, 2, joined], Duration::from_secs(15))?;
        thread::sleep(Duration::from_secs(1));
        let load = loads.stop_all_answered()?;
        let mut figures = format!(
            "lb{joined} joined: BIRD up and its daemon serving after {} ms, in every route {} \
             later (IPv4 web, api; IPv6 web, api); {load} across the join",
            serving.as_millis(),
            ms(&announced)
        );
        // The held connections the router now hashes onto the new host
        // reach it, and it forwards them, never having seen their SYN.
        let chat_before = site.counters_on(joined, "chat")?;
        echo_everywhere(&mut held, "after the join")?;
        let moved = Counters::delta(&chat_before, &site.counters_on(joined, "chat")?);
        let moved: u64 = moved.values().map(|c| c.packets).sum();
        figures.push_str(&format!(
            "; all {} held connections echo, lb{joined} forwarding {moved} packets of theirs",
            2 * HELD
        ));
        ensure!(
            moved > 0,
            "{figures}: no held connection moved to lb{joined}"
        );
        both(|family| {
            const N: usize = 200;
            let vip = family.vip("web");
            let before = site.counters(&vip)?;
            tally_names(&site.ecmp.client, family.web(), N)?;
            let per_host = Counters::delta(&before, &site.counters(&vip)?);
            let share = per_host.get(&joined).map_or(0, |c| c.new_flows) as f64 * 100.0 / N as f64;
            let per_host: Vec<_> = per_host.iter().map(|(h, c)| (*h, c.new_flows)).collect();
            eprintln!(
                "{}: lb{joined} took {share:.1} % of {N} new connections (per host {per_host:?})",
                family.label()
            );
            // A quarter expected; 3 points of standard deviation.
            ensure!(
                share >= 12.0,
                "{}: lb{joined} took {share:.1} % of {N} new connections (per host \
                 {per_host:?}), not a share of four",
                family.label()
            );
            Ok(())
        })?;
        eprintln!("{figures}");
        Ok(())
    });
}

/// Scenario 4: host 1's kernel refuses its TCP connections to port 80 of
/// `api`'s backend addresses ([`Site::cut_api_backends`]), so its checks
/// of `api` fail and nobody else's do.
#[test]
fn a_host_without_a_vips_backends_withdraws_that_vip_only() {
    netns_test("ecmp_vip", TEST_TIMEOUT, |lab| {
        let site = Site::build(lab, true)?;
        let host = 1;
        let (all, others): (&[usize], &[usize]) = (&[0, 1, 2], &[0, 2]);
        let api = |hosts| FAMILIES.map(|f| (f.api_address(), hosts));
        let loads = Loads::start(&site, Family::api);
        thread::sleep(Duration::from_millis(500));
        let fronts: Vec<IpAddr> = FAMILIES.iter().map(|f| f.front()).collect();
        let watch = site.ecmp.watch_routes(&fronts, all);
        let cut = Instant::now();
        site.cut_api_backends(host, true)?;
        let withdrawn = timed_from(cut, || {
            site.ecmp.wait_routes(&api(others), Duration::from_secs(5))
        })?;
        thread::sleep(Duration::from_secs(1));
        let mut states = Vec::new();
        for family in FAMILIES {
            for service in ["web", "chat", "api"] {
                let vip = family.vip(service);
                let (state, why) = site.announce_state(host, &vip)?;
                let want = if service == "api" {
                    "withdrawn"
                } else {
                    "announced"
                };
                ensure!(state == want, "lb1 says {vip}: {state}, not {want}: {why}");
                states.push(format!("{vip} {state} ({why})"));
            }
        }
        let healed = Instant::now();
        site.cut_api_backends(host, false)?;
        let back = timed_from(healed, || {
            site.ecmp.wait_routes(&api(all), Duration::from_secs(10))
        })?;
        let reads = watch.stop()?;
        thread::sleep(Duration::from_millis(500));
        let load = loads.stop_all_answered()?;
        let figures = format!(
            "lb1 lost api's backends: api's route lost lb1 after {} (IPv4, IPv6), regained it \
             {} after they came back; web's and chat's routes kept all three hosts in {reads} \
             reads; lb1 said: {}; to api: {load}",
            ms(&withdrawn),
            ms(&back),
            states.join(", ")
        );
        // Out after `fall` failed checks (2 x 300 ms), not sooner: the
        // backends stayed reachable. Back after `rise` passed checks and
        // then `announce_delay` (1 s), not sooner.
        ensure!(
            withdrawn
                .iter()
                .all(|t| *t >= Duration::from_millis(300) && *t <= Duration::from_millis(1600)),
            "{figures}: withdrawn outside 300 ms to 1.6 s"
        );
        ensure!(
            back.iter()
                .all(|t| *t >= Duration::from_secs(1) && *t <= Duration::from_secs(3)),
            "{figures}: announced again outside 1 to 3 s"
        );
        eprintln!("{figures}");
        Ok(())
    });
}

/// Scenario 5.
#[test]
fn drain_and_undrain_under_load_lose_no_connection() {
    netns_test("ecmp_drain", TEST_TIMEOUT, |lab| {
        let site = Site::build(lab, true)?;
        let host = 1;
        let mut held = Held::open_both(&site)?;
        let loads = Loads::start(&site, Family::web);
        thread::sleep(Duration::from_millis(500));
        let drained = Instant::now();
        site.daemon(host)?.cli_ok(&["host", "drain"])?;
        let out = timed_from(drained, || {
            site.wait_announced(&[0, 2], Duration::from_secs(2))
        })?;
        // Once the router no longer sends it anything, the drained host
        // gets no new flow, and the held connections it carried go through
        // the other hosts.
        let web_drained = site.counters_on(host, "web")?;
        let chat_drained = site.counters_on(host, "chat")?;
        echo_everywhere(&mut held, "while lb1 is drained")?;
        thread::sleep(Duration::from_secs(1));
        let web_leaked = Counters::delta(&web_drained, &site.counters_on(host, "web")?);
        let chat_leaked = Counters::delta(&chat_drained, &site.counters_on(host, "chat")?);
        let undrained = Instant::now();
        site.daemon(host)?.cli_ok(&["host", "undrain"])?;
        let back = timed_from(undrained, || {
            site.wait_announced(&[0, 1, 2], Duration::from_secs(2))
        })?;
        // 30 new connections per family: lb1 gets none of them with a
        // chance of (2/3)^30.
        thread::sleep(Duration::from_millis(1500));
        let web_back = Counters::delta(&web_drained, &site.counters_on(host, "web")?);
        echo_everywhere(&mut held, "after undrain")?;
        let load = loads.stop_all_answered()?;
        let new_flows = |c: &BTreeMap<String, Counters>| -> Vec<u64> {
            c.values().map(|c| c.new_flows).collect()
        };
        let figures = format!(
            "lb1 drained: out of the routes after {}, back {} after undrain (IPv4 web, api; \
             IPv6 web, api); its web new flows while drained {:?} (IPv4, IPv6), after undrain \
             {:?}; {load}; all {} held connections echo while drained ({} and {} of them had \
             gone through lb1) and after",
            ms(&out),
            ms(&back),
            new_flows(&web_leaked),
            new_flows(&web_back),
            2 * HELD,
            held[0].via.get(&host).copied().unwrap_or(0),
            held[1].via.get(&host).copied().unwrap_or(0)
        );
        ensure!(
            web_leaked.values().all(|c| c.new_flows == 0)
                && chat_leaked.values().all(|c| c.packets == 0),
            "{figures}: lb1 still got traffic while drained: web {web_leaked:?}, chat \
             {chat_leaked:?}"
        );
        ensure!(
            web_back.values().all(|c| c.new_flows > 0),
            "{figures}: lb1 got no new flows after undrain"
        );
        eprintln!("{figures}");
        Ok(())
    });
}

/// Scenario 6.
#[test]
fn a_daemon_killed_and_restarted_keeps_its_announcements() {
    netns_test("ecmp_kill", TEST_TIMEOUT, |lab| {
        let mut site = Site::build(lab, true)?;
        let host = 2;
        let mut held = Held::open_both(&site)?;
        let loads = Loads::start(&site, Family::web);
        let addresses: Vec<IpAddr> = FAMILIES
            .iter()
            .flat_map(|f| [f.front(), f.api_address()])
            .collect();
        let watch = site.ecmp.watch_routes(&addresses, &[0, 1, 2]);
        thread::sleep(Duration::from_millis(500));
        site.daemon_mut(host)?.kill()?;
        ensure!(
            site.ecmp.host(host)?.ns.xdp_attachment("eth0")?.is_some(),
            "the datapath went with the daemon"
        );
        thread::sleep(Duration::from_secs(1));
        echo_everywhere(&mut held, "while lb2's daemon is dead")?;
        let restarted = Instant::now();
        site.daemon_mut(host)?.start()?;
        let serving = restarted.elapsed();
        // Past the announce delay: a restarted daemon that withdrew and
        // announced again would show in the watch.
        thread::sleep(Duration::from_secs(3));
        let reads = watch.stop()?;
        for family in FAMILIES {
            let (state, why) = site.announce_state(host, &family.vip("web"))?;
            ensure!(
                state == "announced",
                "after the restart, lb2 says {}: {state} ({why})",
                family.vip("web")
            );
        }
        echo_everywhere(&mut held, "after the restart")?;
        let load = loads.stop_all_answered()?;
        eprintln!(
            "lb2's daemon killed, dead 1 s, restarted (serving after {} ms) and watched 3 s more: \
             the router's routes kept all three hosts in {reads} reads; {load}; all {} held \
             connections echo while it was dead and after",
            serving.as_millis(),
            2 * HELD
        );
        Ok(())
    });
}

/// Scenario 7: host 2's port goes down while every daemon (the dead
/// host's too) is told to remove backend 0 from `web` and `chat`. The held
/// connections on backends 1 and 2 must carry on, those that the router
/// moves off the dead host included: the hosts' rings agree whether a
/// host applied the removal yet or not, except for the few slots a
/// Maglev removal moves beyond the removed backend's (0.03 % of the ring
/// for these backends).
#[test]
fn a_host_failing_while_a_backend_is_removed_keeps_the_other_backends_connections() {
    netns_test("ecmp_both", TEST_TIMEOUT, |lab| {
        let site = Site::build(lab, true)?;
        let (victim, removed) = (2, 0);
        let mut held = Held::open_both(&site)?;
        for h in &held {
            ensure!(
                h.via.get(&victim).copied().unwrap_or(0) > 0,
                "no held connection goes through lb{victim}: {}",
                h.describe()
            );
        }
        let failed_at = Instant::now();
        let removals = thread::scope(|scope| -> Result<Vec<Duration>> {
            let workers: Vec<_> = site
                .daemons
                .values()
                .map(|daemon| {
                    scope.spawn(move || -> Result<Duration> {
                        for family in FAMILIES {
                            let backend = family.backend(removed).to_string();
                            for service in ["web", "chat"] {
                                let vip = family.vip(service);
                                daemon.cli_ok(&["backend", "remove", &vip, &backend])?;
                            }
                        }
                        Ok(failed_at.elapsed())
                    })
                })
                .collect();
            site.ecmp.fail_host(victim)?;
            workers
                .into_iter()
                .map(|w| {
                    w.join()
                        .map_err(|_| anyhow::anyhow!("a removal panicked"))?
                })
                .collect()
        })?;
        let detection = timed_from(failed_at, || {
            site.wait_announced(&[0, 1], Duration::from_secs(5))
        })?;
        let mut figures = format!(
            "lb{victim} died while be{removed} was removed (every daemon done after {}); \
             lb{victim} out of the routes after {}",
            ms(&removals),
            ms(&detection)
        );
        let mut survivors_broken = Vec::new();
        for h in &mut held {
            let on_removed = |i: &usize| h.conns[*i].backend == format!("be{removed}");
            let removed_count = (0..h.conns.len()).filter(on_removed).count();
            let broken = h.echo_all("after the failure and the removal")?;
            let (lost, kept): (Vec<_>, Vec<_>) = broken
                .into_iter()
                .partition(|(i, _)| h.conns[*i].backend == format!("be{removed}"));
            figures.push_str(&format!(
                "; {}: {} held, {} through lb{victim}; {} on be{removed}, {} of them broke; {} of \
                 the {} on the other backends broke",
                h.family.label(),
                h.conns.len(),
                h.via.get(&victim).copied().unwrap_or(0),
                removed_count,
                lost.len(),
                kept.len(),
                h.conns.len() - removed_count
            ));
            survivors_broken.extend(kept);
        }
        ensure!(
            survivors_broken.is_empty(),
            "{figures}: {survivors_broken:?}"
        );
        both(|family| {
            let names = tally_names(&site.ecmp.client, family.web(), 60)?;
            ensure!(
                !names.contains_key(&format!("be{removed}")) && names.len() == 2,
                "{}: new connections after the removal reached {names:?}",
                family.label()
            );
            Ok(())
        })?;
        eprintln!("{figures}; new connections reach be1 and be2 only");
        Ok(())
    });
}
