//! `control`: how fast the control plane acts. Maglev build time by
//! backend count; writing one ring into the datapath; time from `balancer
//! backend add` to the first connection reaching the new backend; time to
//! apply a configuration of 1,000 VIPs with 10 backends each, and one
//! change with those in place; failover detection against its bound.
//! Everything but the first two runs the release daemon in namespaces.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::fd::AsFd as _,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};

use aya::maps::{Array, IterableMap as _, MapData};
use balancer::maglev::{self, Member};
use balancer_common::maps::{BPF_F_INNER_MAP, DEFAULT_RING_SIZE};
use balancer_tests::{
    Lab, Process,
    backend::ServerProcess,
    balancer_bin,
    daemon::{cli, start_with_config, start_within, wait_for_log},
    load::SteadyLoad,
    topology::{self, ConfigText, NO_CHECK, Server, Topology, plain},
};

use crate::{
    plot::{self, Bar},
    report::{self, Section, Table},
    stats::Summary,
};

/// Backend counts of the Maglev build times.
const MAGLEV_SIZES: [u32; 4] = [10, 100, 1_000, 5_000];
/// VIPs and backends per VIP of the large configuration.
const LARGE_VIPS: usize = 1_000;
const LARGE_BACKENDS: usize = 10;
/// Health checks of the failover measurement.
const INTERVAL_MS: u64 = 200;
const TIMEOUT_MS: u64 = 150;
const FALL: u64 = 2;

/// What the benchmark measured; every summary in ms.
pub struct Results {
    runs: usize,
    maglev: Vec<(u32, Summary)>,
    ring_mapped: Summary,
    ring_batch: Summary,
    ring_per_slot: Summary,
    add_cli: Summary,
    add_first: Summary,
    large_start: Summary,
    large_reload: Summary,
    large_change: Summary,
    failover: Summary,
}

/// Runs the benchmark with `runs` counted runs of each measurement.
pub fn run(runs: usize) -> Result<Results> {
    eprintln!("control: Maglev builds");
    let maglev = MAGLEV_SIZES
        .iter()
        .map(|&n| Ok((n, maglev_ms(n, runs)?)))
        .collect::<Result<Vec<_>>>()?;
    eprintln!("control: ring writes");
    let [ring_mapped, ring_batch, ring_per_slot] = ring_write_ms(runs)?;
    eprintln!("control: backend add to first connection");
    let (add_cli, add_first) = backend_add(runs)?;
    eprintln!("control: {LARGE_VIPS} VIPs x {LARGE_BACKENDS} backends");
    let (large_start, large_reload, large_change) = large_config(runs.min(3))?;
    eprintln!("control: failover detection");
    let failover = failover(runs)?;
    Ok(Results {
        runs,
        maglev,
        ring_mapped,
        ring_batch,
        ring_per_slot,
        add_cli,
        add_first,
        large_start,
        large_reload,
        large_change,
        failover,
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Median time to build a ring of the default size for `backends` equal
/// backends, after one build thrown away.
fn maglev_ms(backends: u32, runs: usize) -> Result<Summary> {
    let members: Vec<Member> = (0..backends)
        .map(|i| Member {
            id: i,
            key: format!("10.{}.{}.{}:80", i >> 16, (i >> 8) & 0xff, i & 0xff).into_bytes(),
            weight: 100,
        })
        .collect();
    let mut times = Vec::new();
    for run in 0..=runs {
        let start = Instant::now();
        let ring = maglev::build(&members, DEFAULT_RING_SIZE)?;
        if run > 0 {
            times.push(ms(start.elapsed()));
        }
        ensure!(ring.len() == DEFAULT_RING_SIZE as usize);
    }
    Ok(Summary::of(&times))
}

/// Time to fill a fresh ring map of the default size: through a mapping
/// of its memory as the daemon does, in one batched system call, and slot
/// by slot.
fn ring_write_ms(runs: usize) -> Result<[Summary; 3]> {
    let members: Vec<Member> = (0..10)
        .map(|i| Member {
            id: i,
            key: format!("10.0.0.{i}:80").into_bytes(),
            weight: 100,
        })
        .collect();
    let ring = maglev::build(&members, DEFAULT_RING_SIZE)?;
    let slots: Vec<u32> = (0..DEFAULT_RING_SIZE).collect();
    let mut times = [Vec::new(), Vec::new(), Vec::new()];
    for run in 0..=runs {
        let start = Instant::now();
        balancer::datapath::ring_map(&ring)?;
        let mapped = ms(start.elapsed());
        let start = Instant::now();
        let map = Array::<MapData, u32>::create(DEFAULT_RING_SIZE, BPF_F_INNER_MAP)?;
        balancer::datapath::batch::update_u32(map.map().fd().as_fd(), &slots, &ring)?;
        let batched = ms(start.elapsed());
        let start = Instant::now();
        let mut map = Array::<MapData, u32>::create(DEFAULT_RING_SIZE, BPF_F_INNER_MAP)?;
        for (i, id) in ring.iter().enumerate() {
            map.set(i as u32, id, 0)?;
        }
        let slotted = ms(start.elapsed());
        if run > 0 {
            for (list, t) in times.iter_mut().zip([mapped, batched, slotted]) {
                list.push(t);
            }
        }
    }
    Ok(times.map(|t| Summary::of(&t)))
}

fn web() -> SocketAddr {
    SocketAddr::new(topology::VIP4.into(), 80)
}

/// Runs the CLI on the lab's daemon; fails with its output if it fails.
fn cli_ok(lab: &Lab, args: &[&str]) -> Result<()> {
    let out = cli(lab, args)?;
    if !out.status.success() {
        bail!(
            "`balancer {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// `balancer backend add` of a third backend while a client opens
/// connections back to back: the time until the CLI returned, and until
/// the first connection that reached the new backend was started.
fn backend_add(runs: usize) -> Result<(Summary, Summary)> {
    let lab = crate::new_lab("bench-add")?;
    let t = Topology::build(&lab, 3)?;
    t.serve(Server::TcpName, topology::VIP4.into(), 80)?;
    let addresses = t.backend_addresses(false);
    let config = topology::web_config(NO_CHECK, &plain(&addresses[..2]));
    let _daemon = start_with_config(&lab, &t.lb, &config)?;
    let new = addresses[2].to_string();
    let (mut returned, mut first) = (Vec::new(), Vec::new());
    for run in 0..=runs {
        let load = SteadyLoad::start(&t.client, web(), Duration::ZERO);
        std::thread::sleep(Duration::from_millis(200));
        let start = Instant::now();
        cli_ok(&lab, &["backend", "add", "web", &new])?;
        let done = start.elapsed();
        std::thread::sleep(Duration::from_millis(300));
        let attempts = load.stop()?;
        let reached = attempts
            .iter()
            .find(|a| a.started >= start && a.outcome.as_deref() == Ok("be2"))
            .with_context(|| {
                let after: Vec<_> = attempts
                    .iter()
                    .filter(|a| a.started >= start)
                    .map(|a| a.outcome.clone())
                    .take(5)
                    .collect();
                format!(
                    "none of {} connections reached the added backend within 300 ms: {after:?}",
                    attempts.len()
                )
            })?;
        let failed = attempts.iter().filter(|a| a.outcome.is_err()).count();
        ensure!(failed == 0, "{failed} connections failed during the add");
        if run > 0 {
            returned.push(ms(done));
            first.push(ms(reached.started - start));
        }
        cli_ok(&lab, &["backend", "remove", "web", &new])?;
    }
    Ok((Summary::of(&returned), Summary::of(&first)))
}

/// The configuration text of `vips` VIPs over the same ten backends,
/// without health checks (10,000 checks would measure the checker).
fn large_config_text(vips: usize, backends: &[IpAddr]) -> String {
    let mut config = ConfigText::default();
    for i in 0..vips {
        let address = IpAddr::V4(Ipv4Addr::new(198, 18, (i / 250) as u8, (i % 250) as u8 + 1));
        config = config.vip(
            &format!("vip{i}"),
            address,
            80,
            "tcp",
            NO_CHECK,
            &plain(backends),
        );
    }
    config.build()
}

/// Daemon start with 1,000 VIPs, reload from one VIP to 1,000, and one
/// weight change with the 1,000 in place (it rebuilds what changed).
fn large_config(runs: usize) -> Result<(Summary, Summary, Summary)> {
    let lab = crate::new_lab("bench-large")?;
    let t = Topology::build(&lab, LARGE_BACKENDS)?;
    let backends = t.backend_addresses(false);
    let large = large_config_text(LARGE_VIPS, &backends);
    let small = large_config_text(1, &backends);
    let path = lab.write_file("balancer.toml", &large)?;
    let (mut started, mut reloaded, mut changed) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..=runs {
        std::fs::write(&path, &large)?;
        let begin = Instant::now();
        let daemon = start_within(
            &lab,
            &t.lb,
            ["--config".as_ref(), path.as_os_str()],
            Duration::from_secs(300),
        )?;
        let start_ms = ms(begin.elapsed());
        let begin = Instant::now();
        cli_ok(
            &lab,
            &[
                "backend",
                "weight",
                "vip500",
                &backends[3].to_string(),
                "50",
            ],
        )?;
        let change_ms = ms(begin.elapsed());
        std::fs::write(&path, &small)?;
        cli_ok(&lab, &["reload"])?;
        std::fs::write(&path, &large)?;
        let begin = Instant::now();
        cli_ok(&lab, &["reload"])?;
        let reload_ms = ms(begin.elapsed());
        stop_and_teardown(&lab, &t, daemon)?;
        if run > 0 {
            started.push(start_ms);
            reloaded.push(reload_ms);
            changed.push(change_ms);
        }
    }
    Ok((
        Summary::of(&started),
        Summary::of(&reloaded),
        Summary::of(&changed),
    ))
}

/// Stops the daemon and removes its pinned state, so the next start is a
/// fresh one rather than a restart that adopts it.
fn stop_and_teardown(lab: &Lab, t: &Topology, daemon: Process) -> Result<()> {
    drop(daemon);
    let out =
        t.lb.command(balancer_bin()?)
            .arg("teardown")
            .arg("--pin-path")
            .arg(lab.pin_dir()?)
            .output()?;
    ensure!(
        out.status.success(),
        "teardown failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Kills one backend's servers and times until its VIP's ring is published
/// without it (the log line), then brings it back; TCP checks every
/// INTERVAL_MS, down after FALL failures.
fn failover(runs: usize) -> Result<Summary> {
    let lab = crate::new_lab("bench-failover")?;
    let t = Topology::build(&lab, 3)?;
    let mut servers = t
        .backends
        .iter()
        .enumerate()
        .map(|(i, ns)| {
            // Every address: the VIP's traffic and the health check.
            ServerProcess::start(
                ns,
                &format!("be{i}"),
                &[(Server::TcpName, "0.0.0.0:80".parse()?)],
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let check = format!(
        "[vip.health_check]\nkind = \"tcp\"\ninterval = \"{INTERVAL_MS}ms\"\ntimeout = \"{TIMEOUT_MS}ms\"\nrise = 2\nfall = {FALL}\n"
    );
    let config = topology::web_config(&check, &plain(&t.backend_addresses(false)));
    let mut daemon = start_with_config(&lab, &t.lb, &config)?;
    let mut times = Vec::new();
    for run in 0..=runs {
        // Between two checks at a random point, as a real failure is.
        std::thread::sleep(Duration::from_millis(300 + 37 * run as u64));
        let mark = daemon.output().len();
        let killed = Instant::now();
        servers[1].kill()?;
        wait_for_log(
            &mut daemon,
            mark,
            &["ring published", "backends=2"],
            Duration::from_secs(10),
        )?;
        let out = killed.elapsed();
        let mark = daemon.output().len();
        servers[1].restart()?;
        wait_for_log(
            &mut daemon,
            mark,
            &["ring published", "backends=3"],
            Duration::from_secs(10),
        )?;
        if run > 0 {
            times.push(ms(out));
        }
    }
    Ok(Summary::of(&times))
}

/// The table, for the terminal and the document.
pub fn table(r: &Results) -> Table {
    let mut table = Table::new(&["measurement", "median ms", "min", "max"]);
    let mut row = |what: String, s: &Summary| {
        let [median, min, max] = report::spread(s, 2);
        table.row(vec![what, median, min, max]);
    };
    for (n, s) in &r.maglev {
        row(
            format!(
                "Maglev ring build, {} backends",
                report::number(f64::from(*n), 0)
            ),
            s,
        );
    }
    row("ring map write, through mmap".into(), &r.ring_mapped);
    row("ring map write, one batched call".into(), &r.ring_batch);
    row("ring map write, one call per slot".into(), &r.ring_per_slot);
    row("`backend add`: CLI returned".into(), &r.add_cli);
    row(
        "`backend add`: first connection on the new backend".into(),
        &r.add_first,
    );
    row(
        format!(
            "daemon start with {} VIPs x {LARGE_BACKENDS} backends",
            report::number(LARGE_VIPS as f64, 0)
        ),
        &r.large_start,
    );
    row(
        format!(
            "`reload` from 1 VIP to {}",
            report::number(LARGE_VIPS as f64, 0)
        ),
        &r.large_reload,
    );
    row(
        format!(
            "`backend weight` on one VIP of {}",
            report::number(LARGE_VIPS as f64, 0)
        ),
        &r.large_change,
    );
    row(
        "failover: backend killed to ring without it".into(),
        &r.failover,
    );
    table
}

/// The document's section, with its plot written to `img`.
pub fn section(r: &Results, img: &Path) -> Result<Section> {
    let bars: Vec<Bar> = r
        .maglev
        .iter()
        .map(|(n, s)| Bar {
            label: format!("{} backends", report::number(f64::from(*n), 0)),
            value: *s,
        })
        .collect();
    plot::bars(
        &img.join("maglev.png"),
        &format!(
            "Maglev ring build ({} slots)",
            report::number(f64::from(DEFAULT_RING_SIZE), 0)
        ),
        "ms per build (median; whiskers: lowest and highest run)",
        &bars,
    )?;
    let bound = INTERVAL_MS * FALL + TIMEOUT_MS;
    let body = format!(
        "## Control plane

Measured on {machine}; every figure is the median of {runs} counted runs
after one thrown away ({large_runs} for the 1,000-VIP rows), with the lowest
and highest run.

- Maglev: building one ring of {ring} slots (the default `ring_size`) for N
  backends of equal weight, in the daemon's code, without I/O.
- Ring map write: filling a fresh ring map of {ring} slots, as the daemon
  does before swapping it in: through a mapping of its memory (the rings
  are `BPF_F_MMAPABLE`; what the daemon does now), in one
  `BPF_MAP_UPDATE_BATCH` call, and with one update call per slot (what it
  did before this benchmark showed the cost).
- `backend add`: a client in a namespace opens connections back to back
  (about one per ms) to a TCP VIP of two backends with health checks off;
  the clock starts when `balancer backend add` is run and stops when the
  CLI returns, and when the first connection that reaches the new backend
  was started (at most one connection's time after its first packet).
- 1,000 VIPs: a configuration of {vips} TCP VIPs with {backends} backends
  each (10,000 backend entries, health checks off): the daemon's start
  until its control socket serves (load, neighbour resolution, {vips} rings
  built and written, XDP attached), `balancer reload` from a one-VIP file to
  the {vips}-VIP one, and `balancer backend weight` on one VIP with the
  {vips} in place.
- Failover: three backends with TCP checks every {interval} ms, timeout
  {timeout} ms, fall {fall}; one backend's server process is killed and the
  clock stops when the daemon logs its VIP's ring published without it.
  The configured bound is interval x fall + timeout = {bound} ms (the last
  failing check may run up to a full interval after the kill, and waits
  for its timeout).

{table}
![maglev](img/maglev.png)
",
        machine = report::machine(),
        runs = r.runs,
        large_runs = r.runs.min(3),
        ring = report::number(f64::from(DEFAULT_RING_SIZE), 0),
        vips = report::number(LARGE_VIPS as f64, 0),
        backends = LARGE_BACKENDS,
        interval = INTERVAL_MS,
        timeout = TIMEOUT_MS,
        fall = FALL,
        table = table(r).markdown(),
    );
    Ok(Section {
        name: "control",
        body,
    })
}
