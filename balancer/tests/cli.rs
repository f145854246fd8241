//! The `balancer` executable's command line: wrong arguments are refused
//! with a clear message and the usage exit code, before anything is touched.

use std::process::{Command, Output};

use balancer_tests::privilege;

fn balancer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_balancer"))
        .args(args)
        .output()
        .expect("cannot run the balancer binary")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn help_lists_the_run_subcommand() {
    let out = balancer(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("run"), "help does not list `run`:\n{text}");
}

#[test]
fn run_without_an_interface_is_a_usage_error() {
    let out = balancer(&["run"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--interface"), "{}", stderr(&out));
}

#[test]
fn an_unknown_xdp_mode_is_a_usage_error() {
    let out = balancer(&["run", "-i", "lo", "--xdp-mode", "turbo"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("turbo"), "{}", stderr(&out));
}

#[test]
fn a_malformed_duration_is_a_usage_error() {
    let out = balancer(&["run", "-i", "lo", "--stats-interval", "soon"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("soon"), "{}", stderr(&out));
}

#[test]
fn a_missing_interface_fails_with_its_name() {
    if !privilege::check("cli_missing_interface") {
        return;
    }
    let out = balancer(&["run", "-i", "nosuchif0"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("nosuchif0"), "{}", stderr(&out));
}
