//! Running the `balancer` binary in tests: the daemon inside a namespace,
//! and CLI commands, both on the lab's own control socket (tests run in
//! parallel, so none may use the default path).

use std::{ffi::OsStr, process::Output, time::Duration};

use anyhow::{Context as _, Result, bail};

use crate::{Lab, Netns, Process, balancer_bin};

/// Starts `balancer run ARGS` in `ns` on the lab's control socket and waits
/// until it serves it.
pub fn start<I, S>(lab: &Lab, ns: &Netns, args: I) -> Result<Process>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    start_within(lab, ns, args, Duration::from_secs(30))
}

/// Writes `config` to the lab's balancer.toml and starts the daemon with
/// it ([`start`]): how most namespace tests begin.
pub fn start_with_config(lab: &Lab, ns: &Netns, config: &str) -> Result<Process> {
    let path = lab.write_file("balancer.toml", config)?;
    start(lab, ns, ["--config".as_ref(), path.as_os_str()])
}

/// [`start`], waiting up to `timeout` (a large configuration takes longer
/// than the tests' small ones).
pub fn start_within<I, S>(lab: &Lab, ns: &Netns, args: I, timeout: Duration) -> Result<Process>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut daemon = Process::start(command(lab, ns, args)?)?;
    daemon.wait_for_output(timeout, |out| out.contains("control socket ready"))?;
    Ok(daemon)
}

/// The command `balancer run ARGS` in `ns`, on the lab's control socket
/// and pin directory, not started: for tests that expect it to fail.
pub fn command<I, S>(lab: &Lab, ns: &Netns, args: I) -> Result<std::process::Command>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut command = ns.command(balancer_bin()?);
    command
        .arg("--socket")
        .arg(lab.scratch("control.sock")?)
        .arg("run")
        .arg("--pin-path")
        .arg(lab.pin_dir()?)
        .args(args);
    Ok(command)
}

/// Runs `balancer ARGS` against the lab's daemon and returns its output,
/// whatever its exit status.
pub fn cli<I, S>(lab: &Lab, args: I) -> Result<Output>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    std::process::Command::new(balancer_bin()?)
        .arg("--socket")
        .arg(lab.scratch("control.sock")?)
        .args(args)
        .output()
        .context("cannot run the balancer CLI")
}

/// Runs `balancer ARGS` against the lab's daemon and fails with its output
/// unless it succeeds.
pub fn cli_ok<S: AsRef<OsStr> + std::fmt::Debug>(lab: &Lab, args: &[S]) -> Result<()> {
    let out = cli(lab, args)?;
    anyhow::ensure!(
        out.status.success(),
        "balancer {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Runs `balancer ARGS` on a control socket no daemon serves (a fresh
/// path named after `label` and this process), for the CLI's errors.
pub fn cli_without_daemon(label: &str, args: &[&str]) -> Result<Output> {
    let socket = std::env::temp_dir().join(format!("balancer-{label}-{}.sock", std::process::id()));
    std::process::Command::new(balancer_bin()?)
        .arg("--socket")
        .arg(&socket)
        .args(args)
        .output()
        .context("cannot run the CLI")
}

/// Runs `balancer --json ARGS` and parses the answer; fails if the command
/// fails.
pub fn cli_json<I, S>(lab: &Lab, args: I) -> Result<serde_json::Value>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let out = cli(
        lab,
        std::iter::once(OsStr::new("--json").to_owned())
            .chain(args.into_iter().map(|a| a.as_ref().to_owned())),
    )?;
    if !out.status.success() {
        bail!(
            "balancer failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).context("the CLI's JSON output does not parse")
}

/// Waits up to `timeout` for a line of the daemon's output, written after
/// byte `from` (take `daemon.output().len()` before the action), that
/// holds every one of `parts`, such as `["ring published", "web",
/// "backends=2"]`.
pub fn wait_for_log(
    daemon: &mut Process,
    from: usize,
    parts: &[&str],
    timeout: Duration,
) -> Result<()> {
    daemon.wait_for_output(timeout, |out| {
        out.get(from..)
            .unwrap_or_default()
            .lines()
            .any(|line| parts.iter().all(|p| line.contains(p)))
    })
}
