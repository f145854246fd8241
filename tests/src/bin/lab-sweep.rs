//! Removes the namespaces that test processes left behind (they were killed
//! before their labs could clean up) and lists them. With `--check`, exits
//! with status 1 if there were any, so `cargo xtask test` fails on a leak.

use std::process::ExitCode;

use balancer_tests::{leftover_namespaces, leftover_pins, sweep_stale};

fn main() -> ExitCode {
    let check = std::env::args().any(|a| a == "--check");
    let left = match leftover_namespaces() {
        Ok(mut left) => {
            left.extend(leftover_pins());
            left
        }
        Err(err) => {
            eprintln!("error: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    if left.is_empty() {
        eprintln!("no test namespace or bpffs pin left behind");
        return ExitCode::SUCCESS;
    }
    match sweep_stale() {
        Ok(removed) => {
            eprintln!("test namespaces or pins left behind: {left:?}; removed: {removed:?}")
        }
        Err(err) => {
            eprintln!("test namespaces or pins left behind: {left:?}; cannot remove them: {err:#}")
        }
    }
    if check {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
