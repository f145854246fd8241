//! The multi-host lab of issue #18 with routes added by hand (no balancer
//! daemon): BIRD on each balancer host announces the routes of the
//! announce table, and the router installs one multipath route per VIP
//! over the hosts that announce it, IPv4 and IPv6. A route deleted on a
//! host leaves the router's route within a second; a host that dies
//! silently leaves it after the BGP hold time, or within BFD's detection
//! time when BFD is on; a host that joins is added.
//!
//! The BIRD configurations are the shipped ones (dist/bird/), with the
//! lab's site values.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use anyhow::{Result, ensure};
use balancer_tests::{
    ecmp::{ANNOUNCE_TABLE, BALANCER_PROTO, Ecmp, VIPS4, VIPS6},
    netns_test,
};

const TEST_TIMEOUT: Duration = Duration::from_secs(120);
/// How long an announcement may take to reach the router's kernel once the
/// sessions are up.
const PROPAGATION: Duration = Duration::from_secs(5);
/// BGP hold time of the shipped configurations.
const HOLD_TIME: Duration = Duration::from_secs(3);

fn v4() -> IpAddr {
    VIPS4[0].into()
}

fn v6() -> IpAddr {
    VIPS6[0].into()
}

/// Announces the first IPv4 and IPv6 VIP from every host of `hosts` and
/// waits until the router routes both over exactly those hosts.
fn announce_everywhere(ecmp: &Ecmp, hosts: &[usize]) -> Result<()> {
    for &i in hosts {
        ecmp.announce(i, v4())?;
        ecmp.announce(i, v6())?;
    }
    ecmp.wait_routes(&[(v4(), hosts), (v6(), hosts)], PROPAGATION)?;
    Ok(())
}

#[test]
fn every_announcing_host_is_a_next_hop_and_a_withdrawal_removes_it() {
    netns_test("ecmp_withdraw", TEST_TIMEOUT, |lab| {
        let ecmp = Ecmp::build(lab, 3, 2, true)?;
        announce_everywhere(&ecmp, &[0, 1, 2])?;
        // Three next hops for each family: one multipath route.
        for vip in [v4(), v6()] {
            let hops = ecmp.next_hops(vip)?;
            ensure!(hops.len() == 3, "{vip}: {hops:?}");
        }

        for vip in [v4(), v6()] {
            ecmp.withdraw(1, vip)?;
        }
        let took = ecmp.wait_routes(&[(v4(), &[0, 2]), (v6(), &[0, 2])], Duration::from_secs(1))?;
        eprintln!("a withdrawn route left the router's route in {took:?} (IPv4, IPv6)");
        Ok(())
    });
}

#[test]
fn the_router_takes_only_vip_host_routes_the_daemon_made() {
    netns_test("ecmp_filter", TEST_TIMEOUT, |lab| {
        let ecmp = Ecmp::build(lab, 1, 0, false)?;
        let host = &ecmp.host(0)?.ns;
        // Outside the router's VIP ranges: the host announces it, the
        // router ignores it.
        let table = ANNOUNCE_TABLE.to_string();
        host.ip([
            "route",
            "replace",
            "203.0.113.7/32",
            "dev",
            "lo",
            "table",
            &table,
            "proto",
            &BALANCER_PROTO.to_string(),
        ])?;
        // A VIP, but not the daemon's (another protocol number): the host
        // does not announce it.
        host.ip([
            "route",
            "replace",
            &format!("{}/32", VIPS4[1]),
            "dev",
            "lo",
            "table",
            &table,
            "proto",
            "static",
        ])?;
        // Routes from one session arrive in order: once this one is in,
        // the others would have been.
        ecmp.announce(0, VIPS4[2].into())?;
        ecmp.wait_next_hops(VIPS4[2].into(), &[0], PROPAGATION)?;
        for address in ["203.0.113.7".parse()?, IpAddr::from(VIPS4[1])] {
            let hops = ecmp.next_hops(address)?;
            ensure!(hops.is_empty(), "the router routes {address} via {hops:?}");
        }
        let announced = ecmp
            .host(0)?
            .bird
            .birdc(&["show", "route", "table", "vips4"])?;
        ensure!(
            announced.contains("203.0.113.7/32") && !announced.contains(&VIPS4[1].to_string()),
            "the host's BIRD table: {announced}"
        );
        Ok(())
    });
}

/// How long the router took to drop a host that died silently, from its
/// switch port going down to its address leaving each VIP's route, and to
/// take it back once the port came up again.
struct Death {
    /// IPv4 VIP, IPv6 VIP.
    dropped: Vec<Duration>,
    back: Duration,
}

/// Three hosts announce both VIPs, host 1 dies silently, then its port
/// comes back.
fn silent_death(ecmp: &Ecmp) -> Result<Death> {
    announce_everywhere(ecmp, &[0, 1, 2])?;
    ecmp.fail_host(1)?;
    let dropped = ecmp.wait_routes(&[(v4(), &[0, 2]), (v6(), &[0, 2])], Duration::from_secs(10))?;
    ecmp.heal_host(1)?;
    let back = ecmp.wait_routes(
        &[(v4(), &[0, 1, 2]), (v6(), &[0, 1, 2])],
        Duration::from_secs(15),
    )?;
    Ok(Death {
        dropped,
        back: back.into_iter().max().unwrap_or_default(),
    })
}

#[test]
fn a_silent_host_is_dropped_after_the_hold_time_without_bfd() {
    netns_test("ecmp_hold", TEST_TIMEOUT, |lab| {
        let ecmp = Ecmp::build(lab, 3, 1, false)?;
        let Death { dropped, back } = silent_death(&ecmp)?;
        eprintln!(
            "BGP timers only (hold {HOLD_TIME:?}, keepalive 1 s): the dead host left the route in \
             {dropped:?} (IPv4, IPv6), and was back {back:?} after its port came up"
        );
        for t in &dropped {
            // The hold timer restarts at each keepalive (every second), so
            // it fires 2 to 3 s after the last one that got through:
            // within the hold time plus a margin, and not much sooner than
            // 2 s, or something other than the hold timer noticed.
            ensure!(
                *t < HOLD_TIME + Duration::from_secs(2),
                "detection took {dropped:?}, hold time {HOLD_TIME:?}"
            );
            ensure!(
                *t > Duration::from_millis(1500),
                "detection took only {dropped:?}: something other than the hold timer noticed"
            );
        }
        Ok(())
    });
}

#[test]
fn a_silent_host_is_dropped_within_bfd_detection_time() {
    netns_test("ecmp_bfd", TEST_TIMEOUT, |lab| {
        let ecmp = Ecmp::build(lab, 3, 1, true)?;
        // One BFD session per BGP session, on the router.
        ecmp.router_bird.wait_bfd_up(6, Duration::from_secs(10))?;
        let Death { dropped, back } = silent_death(&ecmp)?;
        eprintln!(
            "BFD (100 ms x 3): the dead host left the route in {dropped:?} (IPv4, IPv6), and was \
             back {back:?} after its port came up"
        );
        for t in &dropped {
            ensure!(
                *t < Duration::from_millis(1500),
                "detection took {dropped:?}, BFD should take about 300 ms"
            );
        }
        Ok(())
    });
}

#[test]
fn a_host_that_joins_is_added_and_one_that_leaves_is_removed() {
    netns_test("ecmp_join", TEST_TIMEOUT, |lab| {
        let mut ecmp = Ecmp::build(lab, 2, 1, true)?;
        announce_everywhere(&ecmp, &[0, 1])?;

        let start = Instant::now();
        let joined = ecmp.add_host()?;
        let established = start.elapsed();
        ecmp.announce(joined, v4())?;
        ecmp.announce(joined, v6())?;
        ecmp.wait_routes(&[(v4(), &[0, 1, 2]), (v6(), &[0, 1, 2])], PROPAGATION)?;
        eprintln!(
            "a joining host: sessions Established {established:?} after it was created, in the route {:?} after",
            start.elapsed()
        );

        // Taken out by an operator: BIRD closes its sessions, so the router
        // withdraws at once rather than after the hold time.
        let start = Instant::now();
        ecmp.remove_host(0)?;
        ecmp.wait_routes(&[(v4(), &[1, 2]), (v6(), &[1, 2])], Duration::from_secs(1))?;
        eprintln!(
            "a host removed: out of the route {:?} after its BIRD was told to stop",
            start.elapsed()
        );
        Ok(())
    });
}
