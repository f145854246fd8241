//! Developer and CI tasks, run as `cargo xtask <task>`.
//!
//! `test` and `demo` are the README's two commands: each first installs
//! whatever the machine lacks ([`bootstrap`]), so both work on a freshly
//! installed machine.

mod apt;
mod bootstrap;
mod lint;
mod package;
mod shell;
mod test;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Developer and CI tasks of the balancer")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need: rust-src for the nightly
    /// toolchain, bpf-linker, and the Debian packages the tests use.
    Bootstrap,
    /// Check formatting and run clippy on every crate (host and BPF).
    Lint,
    /// Everything CI runs: bootstrap, lint, every test, and a check that
    /// nothing was left behind.
    Test(test::TestArgs),
    /// Build the balancer and run it on a small demo topology in network
    /// namespaces, with live traffic (needs root).
    Demo(DemoArgs),
    /// Build the Debian package (release binary, systemd unit, default
    /// configuration, man pages, completions, docs) and print the path of
    /// the .deb, target/debian/balancer_VERSION_ARCH.deb, on stdout.
    Package,
    /// Run benchmarks (needs root) and write docs/benchmarks.md and its
    /// plots: `cargo xtask bench [datapath|e2e|control|scale]... [--json]`;
    /// arguments go to the bench binary (`cargo xtask bench -- --help`).
    Bench(BenchArgs),
}

/// Options of `cargo xtask demo`.
#[derive(clap::Args)]
struct DemoArgs {
    /// How long each phase of the demo sends traffic, in seconds.
    #[arg(long, default_value_t = 3)]
    seconds: u64,
}

/// Bootstraps, builds the balancer and the demo, and replaces this process
/// with the demo (so Ctrl-C reaches the demo alone, which then removes
/// everything it made).
fn demo(args: &DemoArgs) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt as _;
    if !nix::unistd::Uid::effective().is_root() {
        anyhow::bail!(
            "the demo creates network namespaces and attaches XDP: run it as root (`sudo -E cargo xtask demo`)"
        );
    }
    bootstrap::run(bootstrap::Needs::ALL)?;
    let balancer = test::build_balancer()?;
    shell::run(shell::cargo().args(["build", "--quiet", "--package", "balancer-tests", "--bins"]))?;
    let demo = balancer.with_file_name("demo");
    let err = std::process::Command::new(&demo)
        .arg("--seconds")
        .arg(args.seconds.to_string())
        .env("BALANCER_BIN", &balancer)
        .exec();
    Err(anyhow::Error::new(err).context(format!("cannot run {}", demo.display())))
}

/// Options of `cargo xtask bench`.
#[derive(clap::Args)]
struct BenchArgs {
    /// Benchmark names and options, passed on to the bench binary.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

/// Bootstraps (with the packages of the alternatives the benchmarks compare
/// against), builds the balancer and the bench binary optimised, and runs
/// the bench with that balancer.
fn bench(args: &BenchArgs) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt as _;
    if !nix::unistd::Uid::effective().is_root() {
        anyhow::bail!(
            "the benchmarks load BPF programs: run them as root (`sudo -E cargo xtask bench`)"
        );
    }
    bootstrap::run(bootstrap::Needs::BENCH)?;
    shell::run(shell::cargo().args([
        "build",
        "--quiet",
        "--release",
        "--package",
        "balancer",
        "--package",
        "balancer-tests",
        "--bins",
    ]))?;
    let release = shell::target_dir().join("release");
    let err = std::process::Command::new(release.join("bench"))
        .args(&args.args)
        .env("BALANCER_BIN", release.join("balancer"))
        .exec();
    Err(anyhow::Error::new(err).context("cannot run the bench binary"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Bootstrap => bootstrap::run(bootstrap::Needs::ALL).map(drop),
        Task::Lint => bootstrap::run(bootstrap::Needs::BUILD).and_then(|_| lint::run()),
        Task::Test(args) => test::run(&args),
        Task::Package => package::run(),
        Task::Demo(args) => demo(&args),
        Task::Bench(args) => bench(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
