//! A process in a pseudo-terminal, for tests of terminal views: what it
//! writes is kept as raw bytes and parsed as a terminal would show it
//! ([`vt100`]), keys are sent as bytes, and the terminal's modes can be
//! read back. The process runs inside a namespace of the lab (so the
//! lab's teardown ends it on a timeout) and is killed when dropped.

use std::{
    ffi::OsStr,
    io::{Read as _, Write},
    sync::{Arc, Mutex},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use nix::{
    sys::signal::{self, Signal},
    unistd::Pid,
};
use portable_pty::{Child, CommandBuilder, ExitStatus, MasterPty, PtySize, native_pty_system};

use crate::Netns;

/// A child process whose stdin, stdout and stderr are a pseudo-terminal.
pub struct PtyProcess {
    child: Box<dyn Child + Send + Sync>,
    master: Box<dyn MasterPty + Send>,
    keys: Box<dyn Write + Send>,
    seen: Arc<Mutex<Seen>>,
    reader: Option<JoinHandle<()>>,
    description: String,
}

/// Everything the process wrote, raw and as a screen.
struct Seen {
    raw: Vec<u8>,
    terminal: vt100::Parser,
}

impl PtyProcess {
    /// Starts `program args...` inside `ns` on a new terminal of `rows` by
    /// `columns` (TERM=xterm-256color).
    pub fn start<I, S>(
        ns: &Netns,
        program: &OsStr,
        args: I,
        rows: u16,
        columns: u16,
    ) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let pair = native_pty_system()
            .openpty(PtySize {
                rows,
                cols: columns,
                pixel_width: 0,
                pixel_height: 0,
            })
            .map_err(|e| anyhow!("cannot open a pseudo-terminal: {e:#}"))?;
        let mut command = CommandBuilder::new("ip");
        command.args([
            OsStr::new("netns"),
            OsStr::new("exec"),
            OsStr::new(ns.name()),
        ]);
        command.arg(program);
        command.args(args);
        command.env("TERM", "xterm-256color");
        command.cwd("/");
        let description = command
            .get_argv()
            .iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ");
        let child = pair
            .slave
            .spawn_command(command)
            .map_err(|e| anyhow!("cannot start `{description}`: {e:#}"))?;
        // Only the child holds the terminal's slave end now: reads see the
        // end of output once it exits.
        drop(pair.slave);
        let master = pair.master;
        let mut output = master
            .try_clone_reader()
            .map_err(|e| anyhow!("cannot read the pseudo-terminal: {e:#}"))?;
        let keys = master
            .take_writer()
            .map_err(|e| anyhow!("cannot write to the pseudo-terminal: {e:#}"))?;
        let size = |n: u16| std::num::NonZeroU16::new(n).context("an empty terminal");
        let seen = Arc::new(Mutex::new(Seen {
            raw: Vec::new(),
            terminal: vt100::Parser::new(size(rows)?, size(columns)?, 0),
        }));
        let sink = Arc::clone(&seen);
        let reader = thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Ends with an error (EIO) once the child and its terminal are
            // gone.
            while let Ok(n) = output.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut seen = lock(&sink);
                seen.raw.extend_from_slice(&buf[..n]);
                seen.terminal.process(&buf[..n]);
            }
        });
        Ok(PtyProcess {
            child,
            master,
            keys,
            seen,
            reader: Some(reader),
            description,
        })
    }

    /// The screen's text as a terminal shows it now, one line per row.
    pub fn contents(&self) -> String {
        self.with_screen(|screen| screen.contents())
    }

    /// Calls `f` on the screen as it is now.
    pub fn with_screen<R>(&self, f: impl FnOnce(&vt100::Screen) -> R) -> R {
        f(lock(&self.seen).terminal.screen())
    }

    /// Every byte the process wrote so far, escape sequences included.
    pub fn raw(&self) -> Vec<u8> {
        lock(&self.seen).raw.clone()
    }

    /// Polls the screen until `condition` holds or `timeout` passes; fails
    /// early if the process exits. The error shows the last screen.
    pub fn wait_for_screen(
        &mut self,
        timeout: Duration,
        condition: impl Fn(&vt100::Screen) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.with_screen(&condition) {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "`{}` exited ({status}) before the expected screen:\n{}",
                    self.description,
                    self.contents()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "`{}`: expected screen missing after {timeout:?}; it shows:\n{}",
                    self.description,
                    self.contents()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Types `bytes` on the terminal's keyboard (0x03 is Ctrl-C).
    pub fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.keys.write_all(bytes)?;
        self.keys
            .flush()
            .context("cannot type on the pseudo-terminal")
    }

    /// Whether the terminal is in canonical mode with echo, as a shell
    /// leaves it (not raw mode).
    pub fn is_cooked(&self) -> Result<bool> {
        let termios = self
            .master
            .get_termios()
            .context("cannot read the pseudo-terminal's modes")?;
        let wanted = nix::libc::ICANON | nix::libc::ECHO;
        Ok(termios.local_flags.bits() & wanted == wanted)
    }

    /// Waits up to `timeout` for the process to exit and returns its
    /// status, once its output has been read to the end.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                if let Some(reader) = self.reader.take() {
                    let _ = reader.join();
                }
                return Ok(status);
            }
            if Instant::now() >= deadline {
                bail!(
                    "`{}` still running after {timeout:?}; its screen:\n{}",
                    self.description,
                    self.contents()
                );
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for PtyProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if let Some(pid) = self.child.process_id() {
                let _ = signal::kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
            let _ = self.child.wait();
        }
    }
}

fn lock(seen: &Mutex<Seen>) -> std::sync::MutexGuard<'_, Seen> {
    seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
