//! A background process started inside a namespace, with its output kept
//! for assertions and killed when dropped.

use std::{
    io::Read,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use nix::{
    sys::signal::{self, Signal},
    unistd::Pid,
};

use crate::cmd;

/// A running child process. Its stdout and stderr are collected in the
/// background (see [`Process::output`]); dropping it kills it.
#[derive(Debug)]
pub struct Process {
    child: Child,
    description: String,
    output: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

impl Process {
    /// Spawns `command` (typically from [`crate::Netns::command`]) with its
    /// stdout and stderr captured together.
    pub fn start(mut command: Command) -> Result<Process> {
        let description = cmd::describe(&command);
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start `{description}`"))?;
        let output = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        let streams: [Option<Box<dyn Read + Send>>; 2] = [
            child.stdout.take().map(|s| Box::new(s) as _),
            child.stderr.take().map(|s| Box::new(s) as _),
        ];
        for mut stream in streams.into_iter().flatten() {
            let sink = Arc::clone(&output);
            readers.push(thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    lock(&sink).extend_from_slice(&buf[..n]);
                }
            }));
        }
        Ok(Process {
            child,
            description,
            output,
            readers,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The CPU time the process has used so far, user and system, all its
    /// threads (from /proc/PID/stat).
    pub fn cpu_time(&self) -> Result<Duration> {
        let path = format!("/proc/{}/stat", self.pid());
        let stat = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        // The fields after the command's name, which is in parentheses and
        // may hold spaces: state is field 3, utime 14 and stime 15.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let ticks = |i: usize| -> Result<u64> {
            fields
                .get(i - 3)
                .and_then(|f| f.parse().ok())
                .with_context(|| format!("field {i} of {path}: {stat}"))
        };
        let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .unwrap_or(100)
            .max(1) as u64;
        let total = ticks(14)? + ticks(15)?;
        Ok(Duration::from_millis(total * 1000 / hz))
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Everything the process wrote to stdout and stderr so far.
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&lock(&self.output)).into_owned()
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: Signal) -> Result<()> {
        signal::kill(Pid::from_raw(self.pid() as i32), signal)
            .with_context(|| format!("cannot send {signal} to `{}`", self.description))
    }

    /// Waits up to `timeout` for the process to exit and returns its status.
    /// When it exits, the output readers are drained first, so
    /// [`Process::output`] then holds everything it wrote.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                for reader in self.readers.drain(..) {
                    let _ = reader.join();
                }
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!(
                    "`{}` still running after {timeout:?}; output so far:\n{}",
                    self.description,
                    self.output()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Polls `condition` on the output until it holds or `timeout` passes;
    /// fails early if the process exits.
    pub fn wait_for_output(
        &mut self,
        timeout: Duration,
        condition: impl Fn(&str) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if condition(&self.output()) {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                for reader in self.readers.drain(..) {
                    let _ = reader.join();
                }
                bail!(
                    "`{}` exited ({status}) before the expected output:\n{}",
                    self.description,
                    self.output()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "`{}`: expected output missing after {timeout:?}:\n{}",
                    self.description,
                    self.output()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn lock(buffer: &Mutex<Vec<u8>>) -> std::sync::MutexGuard<'_, Vec<u8>> {
    buffer
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A duration for `sleep`, about 31 s, that no other process uses: this
/// process's id and `tag` in its digits. A command that sleeps for it marks
/// its processes, so a test can count what the command left running
/// ([`count_marked`]).
pub fn sleep_marker(tag: u8) -> String {
    format!("31.4159{:010}{tag:03}", std::process::id())
}

/// How many live processes carry `marker` in their command line (a zombie,
/// whose command line is empty, does not count).
pub fn count_marked(marker: &str) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok())
        .filter(|cmdline| {
            cmdline
                .windows(marker.len())
                .any(|window| window == marker.as_bytes())
        })
        .count()
}

/// Waits up to `timeout` for every process carrying `marker` to be gone (a
/// killed process takes a moment to exit) and returns how many are left.
pub fn wait_marked_gone(marker: &str, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        let left = count_marked(marker);
        if left == 0 || Instant::now() >= deadline {
            return left;
        }
        thread::sleep(Duration::from_millis(20));
    }
}
