//! The README's first command runs the demo binary: this runs it as the
//! suite's last word on it, with short phases, and checks what it shows
//! (the per-backend table, the failover and the recovery) and that it
//! leaves nothing behind.

use std::process::Command;

use anyhow::{Context as _, Result, ensure};
use balancer_tests::{balancer_bin, leftover_namespaces, privilege};

#[test]
fn the_demo_shows_balancing_failover_and_recovery_and_cleans_up() -> Result<()> {
    if !privilege::check("demo") {
        return Ok(());
    }
    let out = Command::new(env!("CARGO_BIN_EXE_demo"))
        .args(["--seconds", "1"])
        .env("BALANCER_BIN", balancer_bin()?)
        .output()
        .context("cannot run the demo")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success(),
        "the demo failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    for expected in [
        "every backend up, over 1.00 s",
        "10.50.0.11 of VIP web: up -> down",
        "10.50.0.11 of VIP dns: up -> down",
        "out of both VIPs' rings",
        "backend1 down, over 1.00 s",
        "10.50.0.11 of VIP web: down -> up",
        "backend1 back, over 1.00 s",
        "edge: 20 of 20 connections answered (routed0 20), through the router",
        "metrics of docs/observability.md present",
        "detached from eth0 and unpinned",
    ] {
        ensure!(stdout.contains(expected), "{expected:?} missing:\n{stdout}");
    }
    // While backend1 is down its row shows no new connection or flow.
    let down = stdout
        .split("backend1 down, over")
        .nth(1)
        .and_then(|rest| {
            rest.lines()
                .find(|l| l.trim_start().starts_with("backend1 "))
        })
        .context("no backend1 row in the table of the down phase")?;
    let numbers: Vec<&str> = down.split_whitespace().collect();
    ensure!(
        numbers.iter().filter(|w| **w == "down").count() == 2
            && numbers.iter().filter(|w| **w == "0").count() >= 4,
        "backend1's row while down: {down}"
    );
    let mine: Vec<String> = leftover_namespaces()?
        .into_iter()
        .filter(|n| n.contains("-demo-"))
        .collect();
    ensure!(mine.is_empty(), "the demo left namespaces: {mine:?}");
    Ok(())
}
