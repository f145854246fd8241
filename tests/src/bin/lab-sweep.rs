//! Removes the namespaces and bpffs pins that test processes left behind
//! (they were killed before their labs could clean up) and lists them,
//! with any process of the suite still running (killed too). With
//! `--check`, exits with status 1 if there was anything, so `cargo xtask
//! test` fails on a leak.

use std::process::ExitCode;

use balancer_tests::{leftover_namespaces, leftover_pins, leftover_processes, sweep_stale};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

fn main() -> ExitCode {
    let check = std::env::args().any(|a| a == "--check");
    let mut leak = false;

    // target/<profile>/lab-sweep -> target
    let target = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.to_path_buf()));
    let processes = target.map(|t| leftover_processes(&t)).unwrap_or_default();
    if processes.is_empty() {
        eprintln!("no process of the test suite left running");
    } else {
        leak = true;
        eprintln!("processes of the test suite left running (killing them):");
        for (pid, cmdline) in &processes {
            eprintln!("  {pid}: {cmdline}");
            let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
        }
    }

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
    } else {
        leak = true;
        match sweep_stale() {
            Ok(removed) => {
                eprintln!("test namespaces or pins left behind: {left:?}; removed: {removed:?}")
            }
            Err(err) => eprintln!(
                "test namespaces or pins left behind: {left:?}; cannot remove them: {err:#}"
            ),
        }
    }
    if check && leak {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
