//! Benchmarks, run by `cargo xtask bench [NAME...]` as root: `datapath`
//! (cost per packet), `e2e` (against nftables, HAProxy and nginx),
//! `control` (control-plane timings) and `scale` (connection-table memory
//! and eviction). They print their tables, and write docs/benchmarks.md
//! and the plots in docs/img/. They assert nothing about speed.

mod control;
mod datapath;
mod e2e;
mod plot;
mod report;
mod scale;
mod stats;

use std::{
    path::PathBuf,
    process::ExitCode,
    sync::{Mutex, PoisonError},
};

use anyhow::{Context as _, Result, bail};
use balancer_tests::{Lab, lab::TeardownHandle};
use clap::Parser;

/// Runs the balancer's benchmarks (needs root for BPF).
#[derive(Parser)]
struct Args {
    /// Benchmarks to run (default: all): datapath, e2e, control, scale.
    names: Vec<String>,
    /// Print the datapath figures as one JSON object (one key per path)
    /// instead of tables.
    #[arg(long)]
    json: bool,
    /// Datapath: measured calls per path in each round.
    #[arg(long, default_value_t = 10_000)]
    calls: usize,
    /// Rounds (datapath) or counted runs (the others) behind each median.
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    /// Datapath: measure only these paths (default: all).
    #[arg(long = "path")]
    paths: Vec<String>,
    /// e2e: seconds of one run.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Where to write benchmarks.md and img/ (default: the repository's
    /// docs directory).
    #[arg(long)]
    docs: Option<PathBuf>,
    /// Print only; leave the documents alone.
    #[arg(long)]
    no_write: bool,
}

/// Pins the calling thread to one CPU until dropped, then lets it run on
/// every CPU again.
pub struct PinnedCpu(Option<nix::sched::CpuSet>);

impl PinnedCpu {
    /// Pins to `cpu` (nothing happens where that fails, for example on a
    /// machine with one CPU).
    pub fn to(cpu: usize) -> PinnedCpu {
        let this = nix::unistd::Pid::from_raw(0);
        let before = nix::sched::sched_getaffinity(this).ok();
        let mut one = nix::sched::CpuSet::new();
        if one.set(cpu).is_ok() {
            let _ = nix::sched::sched_setaffinity(this, &one);
        }
        PinnedCpu(before)
    }
}

impl Drop for PinnedCpu {
    fn drop(&mut self) {
        if let Some(before) = &self.0 {
            let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), before);
        }
    }
}

/// The numeric fields `names` (such as `memlock` or `run_cnt`) of what the
/// kernel says of BPF object `fd` in /proc/self/fdinfo.
pub fn fdinfo<const N: usize>(
    fd: std::os::fd::BorrowedFd<'_>,
    names: [&str; N],
) -> Result<[u64; N]> {
    use std::os::fd::AsRawFd as _;
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))?;
    let mut values = [0; N];
    for (value, name) in values.iter_mut().zip(names) {
        *value = text
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("no {name} in a BPF object's fdinfo"))?;
    }
    Ok(values)
}

/// The lab of the benchmark running now, torn down on Ctrl-C.
static CURRENT_LAB: Mutex<Option<TeardownHandle>> = Mutex::new(None);

/// A new lab for a benchmark; Ctrl-C removes it (namespaces, processes,
/// pins) before the bench exits.
pub fn new_lab(label: &str) -> Result<Lab> {
    let lab = Lab::new(label)?;
    *CURRENT_LAB.lock().unwrap_or_else(PoisonError::into_inner) = Some(lab.teardown_handle());
    Ok(lab)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let handler = || {
        if let Some(lab) = CURRENT_LAB
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            lab.run();
        }
        e2e::stats_off();
        eprintln!("\ninterrupted: the benchmark's namespaces and processes are removed");
        std::process::exit(130);
    };
    if let Err(err) = ctrlc::set_handler(handler) {
        eprintln!("warning: cannot handle Ctrl-C: {err}");
    }
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<()> {
    for name in &args.names {
        if !report::ORDER.contains(&name.as_str()) {
            bail!(
                "unknown benchmark {name:?}; known: {}",
                report::ORDER.join(", ")
            );
        }
    }
    let selected = |name: &str| args.names.is_empty() || args.names.iter().any(|n| n == name);
    let docs = args
        .docs
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs"));
    // The documents' sections (and their plots) are only made when they
    // are written: --no-write leaves the docs directory untouched.
    let img = (!args.no_write).then(|| docs.join("img"));
    if let Some(img) = &img {
        std::fs::create_dir_all(img)?;
    }
    let mut sections = Vec::new();
    if selected("datapath") {
        let options = datapath::Options {
            calls: args.calls,
            rounds: args.rounds,
            paths: args.paths.clone(),
        };
        let rows = datapath::run(&options)?;
        if args.json {
            println!("{}", datapath::json(&rows));
        } else {
            println!("{}", datapath::table(&rows).text());
        }
        if let Some(img) = &img {
            sections.push(datapath::section(&rows, &options, img)?);
        }
    }
    if selected("e2e") {
        let options = e2e::Options {
            runs: args.rounds,
            seconds: args.seconds,
        };
        let results = e2e::run(&options)?;
        let (tcp, udp) = e2e::tables(&results);
        println!("{}\n{}", tcp.text(), udp.text());
        if let Some((ours, sink)) = results.xdp_ns {
            println!(
                "XDP run time per packet (bpf_stats): balancer {ours:.0} ns, sink {sink:.0} ns\n"
            );
        }
        if let Some((nat, sink)) = results.nat_xdp_ns {
            println!(
                "XDP run time per packet (bpf_stats), NAT: balancer {nat:.0} ns, sink {sink:.0} ns\n"
            );
        }
        if let Some(img) = &img {
            sections.push(e2e::section(&results, img)?);
        }
    }
    if selected("control") {
        let results = control::run(args.rounds)?;
        println!("{}", control::table(&results).text());
        if let Some(img) = &img {
            sections.push(control::section(&results, img)?);
        }
    }
    if selected("scale") {
        let results = scale::run()?;
        let (memory, eviction) = scale::tables(&results);
        println!("{}\n{}", memory.text(), eviction.text());
        if let Some(img) = &img {
            sections.push(scale::section(&results, img)?);
        }
    }
    if !args.no_write {
        let path = docs.join("benchmarks.md");
        report::write(&path, &sections)?;
        eprintln!("wrote {}", path.canonicalize().unwrap_or(path).display());
    }
    Ok(())
}
