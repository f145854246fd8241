//! Benchmarks, run by `cargo xtask bench [NAME...] [--json]`.
//!
//! `datapath`: the XDP program's cost per packet through BPF_PROG_TEST_RUN,
//! against a floor program measured the same way. Method: many calls with
//! repeat=1, each on a fresh copy of the packet (the kernel copies the
//! input on every call), taking the median, p10 and p90 of the durations
//! the kernel reports. repeat>1 would rerun the program on its own output,
//! which is only fair for idempotent rewrites. Every figure includes the
//! kernel's fixed cost per call (about 100 ns here), the same for every
//! program, which is why the floor is measured the same way.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Result, bail, ensure};
use balancer::{
    datapath::{LoadOptions, action, floor::Floor},
    maglev::{self, Member},
};
use balancer_common::{maps::DEFAULT_RING_SIZE, proto};
use balancer_tests::{
    fixture::{Backend, Fixture, Vip, backend_mac, default_settings},
    packet::{LB_MAC, Packet},
};
use clap::Parser;

/// Runs the balancer's benchmarks (needs root for BPF).
#[derive(Parser)]
struct Args {
    /// Benchmarks to run (default: all): datapath.
    names: Vec<String>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// Measured calls per path in each round.
    #[arg(long, default_value_t = 10_000)]
    calls: usize,
    /// Rounds: every path is measured once per round, in turn, and the
    /// figure reported is the median over rounds of each round's median,
    /// so a burst of noise from the rest of the machine moves one round,
    /// not the result.
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    /// Measure only these datapath paths (default: all).
    #[arg(long = "path")]
    paths: Vec<String>,
}

const VIP4: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 10));
const VIP6: IpAddr = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10));
/// Flows of the established-flow paths: the connection table's working set.
const ESTABLISHED_FLOWS: usize = 1_000;

fn main() -> ExitCode {
    let args = Args::parse();
    // One CPU for every measurement: BPF_PROG_TEST_RUN runs the program
    // on the calling CPU, and the two CPUs' caches differ.
    let mut one = nix::sched::CpuSet::new();
    if one.set(1).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &one);
    }
    let run = || -> Result<()> {
        let all = args.names.is_empty();
        for name in &args.names {
            if name != "datapath" {
                bail!("unknown benchmark {name:?}; known: datapath");
            }
        }
        if all || args.names.iter().any(|n| n == "datapath") {
            datapath(&args)?;
        }
        Ok(())
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Median, p10 and p90 of a path's per-call durations, in ns.
#[derive(Clone, Copy, Debug)]
struct Spread {
    median: f64,
    p10: f64,
    p90: f64,
}

fn spread(mut samples: Vec<Duration>) -> Spread {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize].as_nanos() as f64;
    Spread {
        median: at(0.5),
        p10: at(0.1),
        p90: at(0.9),
    }
}

/// Calls `run(i)` `warmup + calls` times and returns the last `calls`
/// durations.
fn measure(calls: usize, run: &mut dyn FnMut(usize) -> Result<Duration>) -> Result<Vec<Duration>> {
    let warmup = calls / 10;
    let mut samples = Vec::with_capacity(calls);
    for i in 0..warmup + calls {
        let d = run(i)?;
        if i >= warmup {
            samples.push(d);
        }
    }
    Ok(samples)
}

fn backends(first: u32, v6: bool) -> Vec<Backend> {
    (first..first + 10)
        .map(|id| {
            let addr = if v6 {
                IpAddr::V6(Ipv6Addr::new(0xfd00, 3, 0, 0, 0, 0, 0, id as u16 + 1))
            } else {
                IpAddr::V4(Ipv4Addr::new(10, 3, 0, id as u8 + 1))
            };
            Backend::new(id, addr)
        })
        .collect()
}

/// A client address and port for flow `i`, distinct for every `i`.
fn client(i: usize, v6: bool) -> (IpAddr, u16) {
    let n = i as u32;
    let addr = if v6 {
        IpAddr::V6(Ipv6Addr::new(
            0x2001,
            0xdb8,
            0xc,
            0,
            0,
            0,
            (n >> 16) as u16,
            n as u16,
        ))
    } else {
        IpAddr::V4(Ipv4Addr::from(0x6440_0000 | (n >> 8)))
    };
    (addr, 1024 + (n & 0xff) as u16)
}

/// A path under measurement: a name and one call of it.
struct Path<'a> {
    name: &'static str,
    run: Box<dyn FnMut(usize) -> Result<Duration> + 'a>,
    /// Median of each round.
    medians: Vec<f64>,
    /// Every sample, for p10 and p90.
    samples: Vec<Duration>,
}

fn datapath(args: &Args) -> Result<()> {
    let calls = args.calls;
    // Every new-flow call needs a 5-tuple never seen before.
    let new_flows = (calls + calls / 10) * args.rounds;
    // A table large enough that no round evicts: with per-CPU LRU lists
    // each CPU gets its share of the entries, and an evicted established
    // flow would be measured as a new one.
    let options = LoadOptions {
        flow_table_size: (2 * new_flows + 4 * ESTABLISHED_FLOWS).next_power_of_two() as u32 * 2,
        ..LoadOptions::default()
    };
    let f = std::cell::RefCell::new(Fixture::with_options(default_settings(0xbe9c), options)?);
    f.borrow_mut().put_vip(Vip {
        index: 0,
        addr: VIP4,
        port: 80,
        proto: proto::TCP,
        source_hash: false,
        backends: backends(0, false),
    })?;
    f.borrow_mut().put_vip(Vip {
        index: 1,
        addr: VIP6,
        port: 80,
        proto: proto::TCP,
        source_hash: false,
        backends: backends(10, true),
    })?;
    let mut floor = Floor::load(backend_mac(0), LB_MAC)?;

    let floor_packet = Packet::tcp(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 1000, VIP4, 80).build();
    let other = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9));
    let pass_packet = Packet::tcp(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 1000, other, 80)
        .established()
        .build();
    // New flows: SYNs of 5-tuples never seen before. Established flows: a
    // working set of ESTABLISHED_FLOWS flows, each seen once beforehand.
    let fresh = |v6: bool, vip: IpAddr| -> Vec<Vec<u8>> {
        (0..new_flows)
            .map(|i| {
                let (src, port) = client(ESTABLISHED_FLOWS + i, v6);
                Packet::tcp(src, port, vip, 80).build()
            })
            .collect()
    };
    let known = |v6: bool, vip: IpAddr| -> Vec<Vec<u8>> {
        (0..ESTABLISHED_FLOWS)
            .map(|i| {
                let (src, port) = client(i, v6);
                Packet::tcp(src, port, vip, 80).established().build()
            })
            .collect()
    };
    let (fresh4, fresh6, known4, known6) = (
        fresh(false, VIP4),
        fresh(true, VIP6),
        known(false, VIP4),
        known(true, VIP6),
    );
    for packet in known4.iter().chain(&known6) {
        f.borrow_mut().datapath.test_run(packet, 0)?;
    }
    let run = |packet: &[u8], want: u32| -> Result<Duration> {
        let out = f.borrow_mut().datapath.test_run(packet, 0)?;
        ensure!(
            out.verdict == want,
            "verdict {} instead of {want}",
            out.verdict
        );
        Ok(out.duration)
    };
    let mut next4 = 0;
    let mut next6 = 0;
    let mut paths: Vec<Path> = vec![
        Path::new(
            "floor",
            Box::new(|_| {
                let out = floor.test_run(&floor_packet)?;
                ensure!(out.verdict == action::TX, "floor verdict {}", out.verdict);
                Ok(out.duration)
            }),
        ),
        Path::new("pass_v4", Box::new(|_| run(&pass_packet, action::PASS))),
        // Established before new in every round: a new-flow phase fills
        // the table and the caches with entries of its own.
        Path::new(
            "established_v4",
            Box::new(|i| run(&known4[i % known4.len()], action::TX)),
        ),
        Path::new(
            "established_v6",
            Box::new(|i| run(&known6[i % known6.len()], action::TX)),
        ),
        Path::new(
            "new_v4",
            Box::new(|_| {
                next4 += 1;
                run(&fresh4[next4 - 1], action::TX)
            }),
        ),
        Path::new(
            "new_v6",
            Box::new(|_| {
                next6 += 1;
                run(&fresh6[next6 - 1], action::TX)
            }),
        ),
    ];
    if !args.paths.is_empty() {
        paths.retain(|p| p.name == "floor" || args.paths.iter().any(|n| n == p.name));
    }
    for _ in 0..args.rounds {
        for path in &mut paths {
            let samples = measure(calls, &mut path.run)?;
            path.medians.push(spread(samples.clone()).median);
            path.samples.extend(samples);
        }
    }

    let maglev_ms = maglev_build_ms(1_000, DEFAULT_RING_SIZE)?;
    let rows: Vec<(&str, Vec<f64>, Spread)> = paths
        .into_iter()
        .map(|p| (p.name, p.medians, spread(p.samples)))
        .collect();
    if args.json {
        let mut object = serde_json::Map::new();
        for (name, rounds, _) in &rows {
            object.insert(
                format!("{name}_ns"),
                serde_json::json!(median(rounds.clone())),
            );
        }
        object.insert(
            "maglev_1000_backends_ms".into(),
            serde_json::json!(maglev_ms),
        );
        println!("{}", serde_json::Value::Object(object));
        return Ok(());
    }
    let floor = median(rows[0].1.clone());
    println!(
        "datapath: ns per packet through BPF_PROG_TEST_RUN, repeat=1, {} rounds of {calls} calls per path",
        args.rounds
    );
    println!(
        "(established: {ESTABLISHED_FLOWS} flows in the table; new: a never-seen 5-tuple on every call)"
    );
    println!(
        "median = median over rounds of each round's median, with the lowest and highest round;"
    );
    println!("p10/p90 over all calls");
    println!();
    println!(
        "{:<16} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "path", "median", "min", "max", "p10", "p90", "x floor"
    );
    for (name, rounds, s) in &rows {
        let m = median(rounds.clone());
        let lo = rounds.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = rounds.iter().copied().fold(0.0, f64::max);
        println!(
            "{name:<16} {m:>8.0} {lo:>8.0} {hi:>8.0} {:>8.0} {:>8.0} {:>8.2}",
            s.p10,
            s.p90,
            m / floor
        );
    }
    println!();
    println!(
        "Maglev ring of {DEFAULT_RING_SIZE} slots for 1,000 backends: built in {maglev_ms:.1} ms (median of 5)"
    );
    Ok(())
}

impl<'a> Path<'a> {
    fn new(name: &'static str, run: Box<dyn FnMut(usize) -> Result<Duration> + 'a>) -> Path<'a> {
        Path {
            name,
            run,
            medians: Vec::new(),
            samples: Vec::new(),
        }
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Median time to build a ring for `backends` equal backends.
fn maglev_build_ms(backends: u32, size: u32) -> Result<f64> {
    let members: Vec<Member> = (0..backends)
        .map(|i| Member {
            id: i,
            key: format!("10.{}.{}.{}:80", i >> 16, (i >> 8) & 0xff, i & 0xff).into_bytes(),
            weight: 100,
        })
        .collect();
    let mut times = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        let ring = maglev::build(&members, size)?;
        times.push(start.elapsed());
        ensure!(ring.len() == size as usize);
    }
    Ok(spread(times).median / 1e6)
}
