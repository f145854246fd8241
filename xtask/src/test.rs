//! `cargo xtask test`: the one command that runs every check and test.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use nix::unistd::Uid;

use crate::{bootstrap, lint, package, shell};

/// Options of `cargo xtask test`.
#[derive(Args)]
pub struct TestArgs {
    /// Skip formatting and clippy.
    #[arg(long)]
    no_lint: bool,
    /// Arguments passed on to `cargo test` (after `--`), for example a test
    /// name filter.
    #[arg(last = true)]
    cargo_test_args: Vec<String>,
}

/// Bootstraps, lints, builds the balancer and (for a privileged run) its
/// Debian package, runs every test of the workspace against them, and
/// fails if a test left a namespace or a veth behind.
pub fn run(args: &TestArgs) -> Result<()> {
    let privileged = Uid::effective().is_root();
    let needs = if privileged || shell::in_ci() {
        bootstrap::Needs::ALL
    } else {
        eprintln!(
            "not root: privileged tests will be skipped (each says why); run `sudo -E cargo xtask test` to include them"
        );
        bootstrap::Needs::BUILD
    };
    bootstrap::run(needs)?;
    if !args.no_lint {
        lint::run()?;
    }
    let balancer = build_balancer()?;
    // The package test (tests/tests/package.rs) installs it with dpkg, as
    // root: an unprivileged run skips that test, so it needs no package.
    let deb = if privileged || shell::in_ci() {
        Some(package::build()?)
    } else {
        None
    };
    let veths_before = if privileged {
        root_veths()?
    } else {
        Vec::new()
    };
    let default_pins = std::path::Path::new("/sys/fs/bpf/balancer");
    let pins_before = default_pins.exists();
    let mut cargo_test = shell::cargo();
    cargo_test
        .args(["test", "--workspace"])
        .args(&args.cargo_test_args)
        .env("BALANCER_BIN", &balancer);
    if let Some(deb) = &deb {
        cargo_test.env("BALANCER_DEB", deb);
    }
    let outcome = shell::run(&mut cargo_test);
    if privileged {
        check_leftovers(&veths_before)?;
        if default_pins.exists() && !pins_before {
            bail!(
                "the tests pinned state at {} (tests must use their lab's pin directory)",
                default_pins.display()
            );
        }
    }
    outcome
}

/// Builds the `balancer` binary and returns its path.
pub fn build_balancer() -> Result<PathBuf> {
    shell::run(shell::cargo().args(["build", "--package", "balancer"]))?;
    let binary = shell::target_dir().join("debug").join("balancer");
    if !binary.is_file() {
        bail!(
            "the build succeeded but {} does not exist",
            binary.display()
        );
    }
    Ok(binary)
}

/// Fails if the suite left harness namespaces, bpffs pins or processes
/// (removing them) or added veth interfaces to the root namespace.
fn check_leftovers(veths_before: &[String]) -> Result<()> {
    shell::run(shell::cargo().args([
        "run",
        "--quiet",
        "--package",
        "balancer-tests",
        "--bin",
        "lab-sweep",
        "--",
        "--check",
    ]))
    .context("the tests left namespaces, bpffs pins or processes behind")?;
    let new_veths: Vec<String> = root_veths()?
        .into_iter()
        .filter(|v| !veths_before.contains(v))
        .collect();
    if !new_veths.is_empty() {
        bail!("the tests left veth interfaces in the root namespace: {new_veths:?}");
    }
    eprintln!("no veth left behind in the root namespace");
    Ok(())
}

/// Names of the veth interfaces in the root namespace.
fn root_veths() -> Result<Vec<String>> {
    let out = Command::new("ip")
        .args(["-o", "link", "show", "type", "veth"])
        .output()
        .context("cannot run `ip link`")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_owned())
        .collect())
}
