//! Running the `balancer` binary in tests: the daemon inside a namespace,
//! and CLI commands, both on the lab's own control socket (tests run in
//! parallel, so none may use the default path). A lab with several
//! balancer hosts runs one [`Daemon`] per host, each on a control socket
//! and pin directory of its own.

use std::{
    ffi::{OsStr, OsString},
    path::{Path, PathBuf},
    process::Output,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use nix::sys::signal::Signal;

use crate::{Lab, Netns, Process, balancer_bin};

/// How long a daemon may take to serve its control socket after start.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Starts `balancer run ARGS` in `ns` on the lab's control socket and waits
/// until it serves it.
pub fn start<I, S>(lab: &Lab, ns: &Netns, args: I) -> Result<Process>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    start_within(lab, ns, args, START_TIMEOUT)
}

/// Writes `config` to the lab's balancer.toml and starts the daemon with
/// it ([`start`]): how most namespace tests begin.
pub fn start_with_config(lab: &Lab, ns: &Netns, config: &str) -> Result<Process> {
    let path = lab.write_file("balancer.toml", config)?;
    start(lab, ns, ["--config".as_ref(), path.as_os_str()])
}

/// [`start_with_config`] with scans of the connection table every second
/// (`--reconcile-interval 1s`), so that `vip show` has an interval of new
/// flows and active connections to report within a test.
pub fn start_scanning(lab: &Lab, ns: &Netns, config: &str) -> Result<Process> {
    let path = lab.write_file("balancer.toml", config)?;
    start(
        lab,
        ns,
        [
            "--config".as_ref(),
            path.as_os_str(),
            "--reconcile-interval".as_ref(),
            "1s".as_ref(),
        ],
    )
}

/// Waits until every backend of VIP `vip` has a resolved MAC: from then on
/// its ring holds them all (the daemon publishes rings in the same step as
/// it resolves).
pub fn wait_resolved(lab: &Lab, vip: &str) -> Result<()> {
    crate::poll(Duration::from_secs(5), Duration::from_millis(20), || {
        let rows = cli_json(lab, ["backend", "list", vip])?;
        let rows = rows.as_array().context("backend list is not an array")?;
        Ok(if rows.iter().all(|r| !r["mac"].is_null()) {
            Ok(())
        } else {
            Err(format!("backends of {vip} unresolved: {rows:?}"))
        })
    })
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
    run_command(ns, &lab.scratch("control.sock")?, &lab.pin_dir()?, args)
}

/// `balancer --socket SOCKET run --pin-path PINS ARGS` in `ns`.
fn run_command<I, S>(
    ns: &Netns,
    socket: &Path,
    pins: &Path,
    args: I,
) -> Result<std::process::Command>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut command = ns.command(balancer_bin()?);
    command
        .arg("--socket")
        .arg(socket)
        .arg("run")
        .arg("--pin-path")
        .arg(pins)
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
    cli_on(&lab.scratch("control.sock")?, args)
}

/// Runs `balancer --socket SOCKET ARGS` and returns its output, whatever
/// its exit status.
fn cli_on<I, S>(socket: &Path, args: I) -> Result<Output>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    std::process::Command::new(balancer_bin()?)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .context("cannot run the balancer CLI")
}

/// Runs `balancer ARGS` against the lab's daemon and fails with its output
/// unless it succeeds.
pub fn cli_ok<S: AsRef<OsStr> + std::fmt::Debug>(lab: &Lab, args: &[S]) -> Result<()> {
    ok(cli(lab, args)?, args)
}

/// Fails with the output of `balancer ARGS` unless it succeeded.
fn ok<S: std::fmt::Debug>(out: Output, args: &[S]) -> Result<()> {
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
    json(cli(lab, with_json(args))?)
}

/// `--json` and then `args`.
fn with_json<I, S>(args: I) -> impl Iterator<Item = OsString>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    std::iter::once(OsString::from("--json")).chain(args.into_iter().map(|a| a.as_ref().to_owned()))
}

/// The parsed JSON answer of a CLI run with `--json`; fails if it failed.
fn json(out: Output) -> Result<serde_json::Value> {
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

/// One daemon of a lab that runs several, such as one per balancer host
/// ([`crate::ecmp`]): its configuration file, control socket and pin
/// directory are named after it (in the lab's scratch directory and
/// bpffs), so daemons of one lab share no lock, socket or map. The pin
/// directory is in the lab's own bpffs for the reason [`Lab::pin_dir`]
/// gives: `ip netns exec` runs each daemon in a private mount namespace.
/// Dropping it kills the daemon (its pinned datapath and its routes stay
/// until the lab goes).
#[derive(Debug)]
pub struct Daemon {
    name: String,
    ns: Netns,
    config: PathBuf,
    socket: PathBuf,
    pins: PathBuf,
    /// `balancer run`'s arguments beyond the files.
    args: Vec<String>,
    process: Option<Process>,
}

impl Daemon {
    /// Writes `config` to `NAME.toml` in the lab's scratch directory,
    /// starts `balancer run` on it in `ns`, on control socket `NAME.sock`
    /// and pin directory `NAME` of the lab's bpffs, and waits until it
    /// serves its socket. `name` must be unique in the lab.
    pub fn start_in(lab: &Lab, ns: &Netns, name: &str, config: &str) -> Result<Daemon> {
        Daemon::start_in_with(lab, ns, name, config, &[])
    }

    /// [`Daemon::start_in`], `balancer run` given `args` too (at every
    /// start), such as `--reconcile-interval 1s`.
    pub fn start_in_with(
        lab: &Lab,
        ns: &Netns,
        name: &str,
        config: &str,
        args: &[&str],
    ) -> Result<Daemon> {
        let mut daemon = Daemon {
            name: name.to_owned(),
            ns: ns.clone(),
            config: lab.write_file(&format!("{name}.toml"), config)?,
            socket: lab.scratch(&format!("{name}.sock"))?,
            pins: lab.pin_dir_named(name)?,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            process: None,
        };
        daemon.start()?;
        Ok(daemon)
    }

    /// Starts the daemon again on the same files (after [`Daemon::kill`]),
    /// and waits until it serves its socket.
    pub fn start(&mut self) -> Result<()> {
        if self.process.is_some() {
            bail!("daemon {} is already running", self.name);
        }
        let command = run_command(
            &self.ns,
            &self.socket,
            &self.pins,
            ["--config".as_ref(), self.config.as_os_str()]
                .into_iter()
                .chain(self.args.iter().map(OsStr::new)),
        )?;
        let mut process = Process::start(command)?;
        process
            .wait_for_output(START_TIMEOUT, |out| out.contains("control socket ready"))
            .with_context(|| format!("daemon {}", self.name))?;
        self.process = Some(process);
        Ok(())
    }

    /// Kills the daemon with SIGKILL, as a crash would, and waits until it
    /// has exited. Its pinned datapath goes on forwarding.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut process) = self.process.take() {
            process.signal(Signal::SIGKILL)?;
            process.wait_timeout(Duration::from_secs(5))?;
        }
        Ok(())
    }

    /// The name given at start.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its configuration file.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// Its control socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Its pin directory.
    pub fn pin_dir(&self) -> &Path {
        &self.pins
    }

    /// What the running daemon wrote so far (empty when it is not
    /// running).
    pub fn output(&self) -> String {
        self.process
            .as_ref()
            .map(Process::output)
            .unwrap_or_default()
    }

    /// Runs `balancer ARGS` against this daemon and returns its output,
    /// whatever its exit status.
    pub fn cli<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        cli_on(&self.socket, args)
    }

    /// Runs `balancer ARGS` against this daemon and fails with its output
    /// unless it succeeds.
    pub fn cli_ok<S: AsRef<OsStr> + std::fmt::Debug>(&self, args: &[S]) -> Result<()> {
        ok(self.cli(args)?, args).with_context(|| format!("daemon {}", self.name))
    }

    /// Runs `balancer --json ARGS` against this daemon and parses the
    /// answer; fails if the command fails.
    pub fn cli_json<I, S>(&self, args: I) -> Result<serde_json::Value>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        json(self.cli(with_json(args))?).with_context(|| format!("daemon {}", self.name))
    }
}
