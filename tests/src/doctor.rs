//! Running `balancer doctor` in tests and reading its findings: in a
//! namespace through `nsenter --net` (the host's mount namespace, as a
//! daemon under systemd has it), in a private mount namespace of its own
//! (`unshare -m`), or inside a memory cgroup made for the test.

use std::{
    ffi::OsStr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::{Netns, balancer_bin};

/// What one run of `balancer --json doctor` said.
pub struct Report {
    pub status: std::process::ExitStatus,
    pub success: bool,
    pub findings: Vec<Value>,
    pub stderr: String,
}

impl Report {
    /// The finding of `check` whose subject contains `subject`.
    pub fn find(&self, check: &str, subject: &str) -> Result<&Value> {
        self.findings
            .iter()
            .find(|f| {
                f["check"] == check && f["subject"].as_str().is_some_and(|s| s.contains(subject))
            })
            .with_context(|| format!("no {check} finding on {subject:?} in {:#?}", self.findings))
    }

    /// Checks that a finding of `check` on `subject` has `level` and a
    /// message containing `message`; returns its fix.
    pub fn expect(&self, check: &str, subject: &str, level: &str, message: &str) -> Result<String> {
        self.find(check, subject)?;
        let found = self.findings.iter().find(|f| {
            f["check"] == check
                && f["subject"].as_str().is_some_and(|s| s.contains(subject))
                && f["level"] == level
                && f["message"].as_str().is_some_and(|m| m.contains(message))
        });
        match found {
            Some(finding) => Ok(finding["fix"].as_str().unwrap_or_default().to_owned()),
            None => bail!(
                "no {level} {check} finding on {subject:?} saying {message:?}; there are: {:#?}",
                self.findings
                    .iter()
                    .filter(|f| f["check"] == check)
                    .collect::<Vec<_>>()
            ),
        }
    }

    /// The findings that are not ok.
    pub fn not_ok(&self) -> Vec<&Value> {
        self.findings
            .iter()
            .filter(|f| f["level"] != "ok")
            .collect()
    }
}

/// The checks `balancer doctor` makes of the host whatever the
/// configuration (interfaces and backends come on top).
pub const HOST_CHECKS: [&str; 7] = [
    "kernel",
    "btf",
    "map-types",
    "program",
    "bpffs",
    "memory",
    "control-socket",
];

/// Runs `command` (ending in `balancer --json doctor ...`) and reads its
/// report.
pub fn run(mut command: Command) -> Result<Report> {
    let out = command.output().context("cannot run balancer doctor")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let findings: Vec<Value> = serde_json::from_str(&stdout).with_context(|| {
        format!(
            "doctor printed no JSON array: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    Ok(Report {
        status: out.status,
        success: out.status.success(),
        findings,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// `nsenter --net=NS balancer --json doctor ARGS`: in `ns`'s network
/// namespace, the host's mount namespace.
pub fn nsenter(ns: &Netns) -> Result<Command> {
    let mut command = Command::new("nsenter");
    command
        .arg(format!("--net={}", ns.path().display()))
        .arg(balancer_bin()?);
    Ok(command)
}

pub fn doctor<S: AsRef<OsStr>>(ns: &Netns, args: &[S]) -> Result<Report> {
    let mut command = nsenter(ns)?;
    command.arg("--json").arg("doctor").args(args);
    run(command)
}

/// Doctor in `ns`, in a private mount namespace (`unshare -m`) after the
/// shell commands `setup` ran in it.
pub fn unshared(ns: &Netns, setup: &str, config: &Path) -> Result<Report> {
    let script = format!(
        "set -e; {setup}; exec nsenter --net={} {} --json doctor --config {}",
        ns.path().display(),
        balancer_bin()?.display(),
        config.display()
    );
    let mut command = Command::new("unshare");
    command.args(["-m", "--propagation", "private", "sh", "-c", &script]);
    run(command)
}

/// A memory cgroup of its own under the hierarchy that has this process's
/// memory controller (v1 or v2), removed when dropped.
pub struct MemoryCgroup {
    dir: PathBuf,
    /// The file that takes the limit.
    limit_file: &'static str,
}

impl MemoryCgroup {
    pub fn create(name: &str) -> Result<MemoryCgroup> {
        use balancer::doctor::facts::mounts;
        let own = std::fs::read_to_string("/proc/self/cgroup")?;
        let (version, _) = balancer::doctor::facts::cgroup::own_path(&own)
            .context("this process has no memory cgroup")?;
        let entries = mounts::parse(&std::fs::read_to_string("/proc/self/mountinfo")?);
        let mount = entries
            .iter()
            .find(|e| match version {
                1 => e.fstype == "cgroup" && e.options.split(',').any(|o| o == "memory"),
                _ => e.fstype == "cgroup2",
            })
            .context("no memory hierarchy mounted")?;
        let dir = mount.point.join(name);
        std::fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(MemoryCgroup {
            dir,
            limit_file: if version == 1 {
                "memory.limit_in_bytes"
            } else {
                "memory.max"
            },
        })
    }

    pub fn limit(&self, bytes: u64) -> Result<()> {
        std::fs::write(self.dir.join(self.limit_file), bytes.to_string())
            .with_context(|| format!("cannot limit {}", self.dir.display()))
    }

    /// Doctor in `ns`, run inside this cgroup.
    pub fn doctor(&self, ns: &Netns, config: &Path) -> Result<Report> {
        let script = format!(
            "echo $$ > {}/cgroup.procs && exec nsenter --net={} {} --json doctor --config {}",
            self.dir.display(),
            ns.path().display(),
            balancer_bin()?.display(),
            config.display()
        );
        let mut command = Command::new("sh");
        command.arg("-c").arg(script);
        run(command)
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // Its processes have exited; the kernel may take a moment to let
        // it go.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("warning: cannot remove {}", self.dir.display());
    }
}
