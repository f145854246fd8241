//! Formatting and clippy over every crate, for the host and for BPF.

use std::process::Command;

use anyhow::Result;

use crate::shell;

/// `cargo fmt --check`, clippy on the workspace for the host (the eBPF
/// crates included, as host programs), and clippy on the eBPF crates (the
/// balancer's and the benchmarks') for their real target with the nightly
/// toolchain. Warnings are errors.
pub fn run() -> Result<()> {
    shell::run(shell::cargo().args(["fmt", "--all", "--", "--check"]))?;
    shell::run(shell::cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    shell::run(
        Command::new("rustup")
            .current_dir(shell::workspace_root())
            .args([
                "run",
                "nightly",
                "cargo",
                "clippy",
                "--package",
                "balancer-ebpf",
                "--package",
                "balancer-bench-ebpf",
            ])
            .args([
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--release",
            ])
            .args(["--", "-D", "warnings"]),
    )
}
