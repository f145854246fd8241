//! The daemon under pressure on its host's resources, end to end: a
//! process out of file descriptors when a backend goes down, and
//! thousands of backends that never resolve. It keeps running, keeps its
//! CPU and the kernel's neighbour table in bounds, and catches up when the
//! resource comes back.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use balancer_tests::{
    Lab, Netns, Process, balancer_bin,
    daemon::{cli_json, wait_for_log},
    netns_test,
    servers::{HealthEndpoint, tally_names},
    topology::{self, ConfigText, NO_CHECK, Server, Topology, plain},
};

const CHECK_PORT: u16 = 8080;

/// Sets the soft open-file limit of process `pid` to `soft`, leaving the
/// hard one, and returns the soft limit it had.
fn set_open_files(pid: u32, soft: u64) -> Result<u64> {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit only reads and writes the two structures.
    unsafe {
        ensure!(
            libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) == 0,
            "cannot read the open-file limit of {pid}: {}",
            std::io::Error::last_os_error()
        );
        let new = libc::rlimit {
            rlim_cur: soft,
            rlim_max: old.rlim_max,
        };
        ensure!(
            libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, &new, std::ptr::null_mut()) == 0,
            "cannot set the open-file limit of {pid}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(old.rlim_cur)
}

/// Waits until `ns` has a TCP connection to `to` in SYN-SENT: a check
/// waiting on a backend that does not answer.
fn wait_syn_sent(ns: &Netns, to: SocketAddr, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let out = ns.exec("ss", ["-Htn", "state", "syn-sent", "dst", &to.to_string()])?;
        if !out.trim().is_empty() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!("no connection to {to} in SYN-SENT within {timeout:?}")
}

fn tally(client: &Netns, n: usize) -> Result<BTreeMap<String, usize>> {
    tally_names(client, SocketAddr::new(topology::VIP4.into(), 80), n)
}

/// The scenario the issue found: a check fails while the process has no
/// descriptor left, so the backend goes down and the ring rebuild that
/// follows cannot open a map. The daemon used to exit there, leaving its
/// socket behind. Now the failed write is logged and retried, the control
/// socket waits without spinning, and once descriptors come back the ring
/// without the backend is published.
#[test]
fn out_of_descriptors_a_backend_down_is_published_once_they_come_back() {
    netns_test("nofile", Duration::from_secs(120), |lab| {
        let t = Topology::build(lab, 2)?;
        t.serve(Server::TcpName, topology::VIP4.into(), 80)?;
        let _endpoints = (0..2)
            .map(|i| {
                HealthEndpoint::start(
                    &t.backends[i],
                    SocketAddr::new(topology::backend4(i).into(), CHECK_PORT),
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let check = format!(
            "[vip.health_check]\nkind = \"tcp\"\nport = {CHECK_PORT}\ninterval = \"2s\"\ntimeout = \"1500ms\"\nrise = 1\nfall = 1\n"
        );
        let config = topology::web_config(&check, &plain(&t.backend_addresses(false)));
        let mut daemon = balancer_tests::daemon::start_with_config(lab, &t.lb, &config)?;
        let both = tally(&t.client, 40)?;
        ensure!(both.len() == 2, "both backends serve at first: {both:?}");

        // Backend 0 stops answering the balancer: its SYN-ACKs go nowhere,
        // so the next check holds its socket until the timeout.
        t.backends[0].ip(["route", "add", "blackhole", &topology::LB4.to_string()])?;
        let check_of_0 = SocketAddr::new(topology::backend4(0).into(), CHECK_PORT);
        wait_syn_sent(&t.lb, check_of_0, Duration::from_secs(5))?;
        // Now every descriptor is gone: nothing above 0, 1 and 2.
        let from = daemon.output().len();
        let limit = set_open_files(daemon.pid(), 3)?;
        let restore = Restore(daemon.pid(), limit);
        wait_for_log(
            &mut daemon,
            from,
            &[
                "backend health changed",
                "backend=10.50.0.10 from=up to=down",
            ],
            Duration::from_secs(5),
        )?;
        wait_for_log(
            &mut daemon,
            from,
            &["cannot bring the datapath's maps in line"],
            Duration::from_secs(5),
        )?;

        // A CLI call meanwhile waits in the socket's backlog; the daemon
        // keeps trying to accept it, slowly.
        let mut status = Process::start({
            let mut command = std::process::Command::new(balancer_bin()?);
            command
                .arg("--socket")
                .arg(lab.scratch("control.sock")?)
                .args(["--json", "status"]);
            command
        })?;
        let cpu = daemon.cpu_time()?;
        std::thread::sleep(Duration::from_secs(2));
        let spent = daemon.cpu_time()? - cpu;
        ensure!(daemon.running(), "the daemon exited:\n{}", daemon.output());
        ensure!(
            spent < Duration::from_millis(500),
            "the daemon spent {spent:?} of CPU in 2 s without descriptors"
        );
        eprintln!("CPU without descriptors: {spent:?} in 2 s");

        drop(restore);
        let answered = status.wait_timeout(Duration::from_secs(5))?;
        ensure!(answered.success(), "status: {}", status.output());
        // The write is retried after a growing wait (1 s, then 2, 4...).
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let status = cli_json(lab, ["status"])?;
            if status["maps_error"].is_null() {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "the maps are still behind: {status}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let after = tally(&t.client, 40)?;
        ensure!(
            after.len() == 1 && after.contains_key("be1"),
            "backend 0 still takes new connections: {after:?}"
        );
        ensure!(daemon.running(), "the daemon exited:\n{}", daemon.output());
        Ok(())
    });
}

/// Puts the soft open-file limit of `pid` back to `limit` when dropped, so
/// a failing test does not leave its daemon without descriptors.
struct Restore(u32, u64);

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = set_open_files(self.0, self.1);
    }
}

/// The kernel's ARP table as a whole (all namespaces share it): its
/// entries, and how often it was found full ("neighbor table overflow").
fn arp_table() -> Result<(u64, u64)> {
    let out = balancer_tests::cmd::run("ip", ["-s", "ntable", "show", "name", "arp_cache"])?;
    let field = |name: &str| -> Result<u64> {
        let mut words = out.split_whitespace();
        words
            .find(|w| *w == name)
            .and_then(|_| words.next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no `{name}` in:\n{out}"))
    };
    Ok((field("entries")?, field("table_fulls")?))
}

/// Entries of `ns`'s own ARP table on eth0.
fn neighbours(ns: &Netns) -> Result<usize> {
    Ok(ns
        .exec("ip", ["-4", "neigh", "show", "dev", "eth0"])?
        .lines()
        .count())
}

/// 2,000 backends on a directly connected network where nobody answers:
/// each stays unresolved. Probed every round (every 10 ms after a change),
/// they took 43 % of a core at idle and overflowed the kernel's neighbour
/// table (1,024 entries by default). Paced, they cost a trickle of probes
/// and a few percent of a core, and the table never fills.
#[test]
fn two_thousand_unresolved_backends_are_probed_at_a_paced_rate() {
    netns_test("paced", Duration::from_secs(90), |lab| {
        let t = Topology::build(lab, 1)?;
        t.lb.ip(["route", "add", "10.99.0.0/16", "dev", "eth0"])?;
        let mut backends = plain(&t.backend_addresses(false));
        backends.extend((0..2000u32).map(|i| {
            let address = IpAddr::from([10, 99, (i / 250) as u8, (i % 250 + 1) as u8]);
            (address, "")
        }));
        let config = ConfigText::default()
            .vip("web", topology::VIP4.into(), 80, "tcp", NO_CHECK, &backends)
            .build();
        let (_, fulls_before) = arp_table()?;
        // The daemon makes the kernel resolve a backend by sending it a
        // datagram: the namespace's datagrams sent count the probes.
        let sent_before = t.lb.snmp("Udp", "OutDatagrams")?;
        let started = Instant::now();
        let daemon = start(lab, &t.lb, &config)?;
        let cpu_at_start = daemon.cpu_time()?;
        let ready = Instant::now();
        let mut most = (0, 0);
        while ready.elapsed() < Duration::from_secs(10) {
            let (entries, _) = arp_table()?;
            most = (most.0.max(neighbours(&t.lb)?), most.1.max(entries));
            std::thread::sleep(Duration::from_millis(250));
        }
        let cpu = (daemon.cpu_time()? - cpu_at_start).as_secs_f64() / ready.elapsed().as_secs_f64();
        let probes = t.lb.snmp("Udp", "OutDatagrams")? - sent_before;
        let seconds = started.elapsed().as_secs() + 1;
        let (_, fulls_after) = arp_table()?;
        eprintln!(
            "2,000 unresolved backends: {probes} probes in {seconds} s, {:.1} % of a core, \
             at most {} neighbour entries in the namespace and {} in the kernel's table",
            cpu * 100.0,
            most.0,
            most.1
        );
        // 200 reads of unresolved backends a second at most.
        ensure!(
            probes <= 200 * seconds,
            "{probes} probes in {seconds} s for 2,000 unresolved backends"
        );
        ensure!(
            fulls_after == fulls_before,
            "the kernel's neighbour table was found full {} times",
            fulls_after - fulls_before
        );
        ensure!(
            cpu < 0.15,
            "the daemon used {:.1} % of a core at idle",
            cpu * 100.0
        );
        Ok(())
    });
}

/// Starts the daemon on `config`, allowing for the time 2,000 backends
/// take.
fn start(lab: &Lab, ns: &Netns, config: &str) -> Result<Process> {
    let path = lab.write_file("balancer.toml", config)?;
    balancer_tests::daemon::start_within(
        lab,
        ns,
        ["--config".as_ref(), path.as_os_str()],
        Duration::from_secs(60),
    )
}
