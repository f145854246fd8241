//! One daemon per pin directory and per control socket: a second daemon on
//! either refuses, naming the first one's pid, and changes nothing (the
//! first keeps its socket, its program and its pins); `balancer teardown`
//! refuses while a daemon runs; a SIGKILL releases the locks.

use std::{
    path::{Path, PathBuf},
    process::Output,
    time::Duration,
};

use anyhow::{Result, ensure};
use balancer_tests::{
    Lab, Netns, Process, balancer_bin,
    daemon::{cli_json, start},
    netns_test,
};
use nix::sys::signal::Signal;

/// The daemon's arguments beyond its socket and pins: loopback, which
/// takes XDP in generic mode only, and no configuration file.
const ARGS: [&str; 4] = ["--interface", "lo", "--xdp-mode", "generic"];

/// The id of the XDP program attached to `lo` in `ns`, from
/// `ip -details link show` (`prog/xdp id 42 ...`).
fn program_id(ns: &Netns) -> Result<Option<String>> {
    let out = ns.ip(["-details", "link", "show", "dev", "lo"])?;
    let words: Vec<&str> = out.split_whitespace().collect();
    Ok(words
        .windows(3)
        .find(|w| w[0].starts_with("prog/xdp") && w[1] == "id")
        .map(|w| w[2].to_owned()))
}

/// `balancer run` on `socket` and `pins` in `ns`, run until it exits
/// (within 20 s); returns its output after checking it failed.
fn refused(ns: &Netns, socket: &Path, pins: &Path) -> Result<String> {
    let mut command = ns.command(balancer_bin()?);
    command
        .arg("--socket")
        .arg(socket)
        .arg("run")
        .arg("--pin-path")
        .arg(pins)
        .args(ARGS);
    let mut second = Process::start(command)?;
    let status = second.wait_timeout(Duration::from_secs(20))?;
    let out = second.output();
    ensure!(
        !status.success(),
        "a second daemon exited with {status}:\n{out}"
    );
    Ok(out)
}

/// `balancer teardown --pin-path PINS`.
fn teardown(pins: &Path) -> Result<Output> {
    Ok(std::process::Command::new(balancer_bin()?)
        .arg("teardown")
        .arg("--pin-path")
        .arg(pins)
        .output()?)
}

/// The names in the pin directory.
fn pinned(pins: &Path) -> Result<Vec<PathBuf>> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(pins)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    names.sort();
    Ok(names)
}

/// The first daemon still answers on its socket, with its program and its
/// pins unchanged.
fn first_untouched(
    lab: &Lab,
    ns: &Netns,
    program: &Option<String>,
    pins: &[PathBuf],
) -> Result<()> {
    let socket = lab.scratch("control.sock")?;
    ensure!(socket.exists(), "{} was removed", socket.display());
    cli_json(lab, ["status"])?;
    ensure!(
        program_id(ns)? == *program,
        "the program on lo was replaced: {program:?} then {:?}",
        program_id(ns)?
    );
    ensure!(pinned(&lab.pin_dir()?)? == pins, "the pins changed");
    Ok(())
}

/// A namespace with the first daemon running in it.
fn first_daemon(lab: &Lab) -> Result<(Netns, Process)> {
    let host = lab.netns("host")?;
    let first = start(lab, &host, ARGS)?;
    Ok((host, first))
}

#[test]
fn a_second_daemon_and_teardown_are_refused_while_one_runs() {
    netns_test("single_daemon", Duration::from_secs(120), |lab| {
        let (host, mut first) = first_daemon(lab)?;
        let pid = first.pid();
        let (socket, pins) = (lab.scratch("control.sock")?, lab.pin_dir()?);
        let program = program_id(&host)?;
        ensure!(program.is_some(), "nothing attached to lo");
        let pinned_before = pinned(&pins)?;

        // A second daemon on `socket` and `pins` is refused for holding
        // `what` at `named`, and neither makes `made` nor touches the first.
        let second = |socket: &Path, pins: &Path, what: &str, named: &Path, made: &Path| {
            let out = refused(&host, socket, pins)?;
            let expected = format!(
                "another balancer daemon (pid {pid}) holds the {what} {}; nothing was changed",
                named.display()
            );
            ensure!(out.contains(&expected), "{out}");
            ensure!(!made.exists(), "the second daemon made {}", made.display());
            first_untouched(lab, &host, &program, &pinned_before)
        };
        let other_socket = lab.scratch("second.sock")?;
        second(&other_socket, &pins, "pin directory", &pins, &other_socket)?;
        let other_pins = pins.with_file_name("second");
        second(&socket, &other_pins, "control socket", &socket, &other_pins)?;

        // Teardown under a running daemon.
        let out = teardown(&pins)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(!out.status.success(), "teardown ran under the daemon");
        let expected = format!(
            "a balancer daemon (pid {pid}) holds the pin directory {}; stop it before `balancer teardown`; nothing was changed",
            pins.display()
        );
        ensure!(stderr.contains(&expected), "{stderr}");
        first_untouched(lab, &host, &program, &pinned_before)?;

        // Once the daemon stops, teardown works.
        first.signal(Signal::SIGTERM)?;
        let status = first.wait_timeout(Duration::from_secs(10))?;
        ensure!(status.success(), "{status}:\n{}", first.output());
        let out = teardown(&pins)?;
        ensure!(
            out.status.success(),
            "teardown after the daemon stopped: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        ensure!(
            program_id(&host)?.is_none(),
            "still attached after teardown"
        );
        ensure!(!pins.exists(), "{} left by teardown", pins.display());
        Ok(())
    });
}

#[test]
fn a_daemon_killed_with_sigkill_leaves_no_lock_behind() {
    netns_test("single_daemon_kill", Duration::from_secs(120), |lab| {
        let (host, mut first) = first_daemon(lab)?;
        first.signal(Signal::SIGKILL)?;
        first.wait_timeout(Duration::from_secs(5))?;

        // Started on the same socket and pins, it takes both locks.
        let second = start(lab, &host, ARGS)?;
        ensure!(
            second.output().contains("adopted the pinned maps"),
            "{}",
            second.output()
        );
        cli_json(lab, ["status"])?;
        Ok(())
    });
}
