//! apt-get for the bootstrap, waiting (a bounded time, saying so) while
//! another package manager holds apt's or dpkg's locks instead of failing
//! at once. On a freshly booted Debian machine unattended-upgrades and
//! apt-daily often hold them for minutes.
//!
//! apt-get's `-o DPkg::Lock::Timeout=SECONDS` (apt 1.9 and later) makes
//! it wait for the dpkg locks itself, but not for the lock of
//! `/var/lib/apt/lists` that `apt-get update` takes (seen with apt 2.6.1:
//! it fails at once, "Could not get lock /var/lib/apt/lists/lock"), nor
//! for the archive cache's. So before each run this module waits until the
//! locks that run takes are free, naming their holder while it waits,
//! passes the time left as DPkg::Lock::Timeout for the moment between its
//! look and apt's own lock, and runs again when apt failed while a lock
//! was taken meanwhile. apt and dpkg take their locks with fcntl(2)
//! record locks, which flock(1) does not see: it takes flock(2) locks.

use std::{
    fs::File,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use nix::{
    fcntl::{FcntlArg, fcntl},
    libc,
};

use crate::shell;

/// How long the bootstrap waits for the locks, over one apt-get run and
/// its retries: unattended-upgrades at boot usually finishes well within.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(600);

/// How often the wait says again that it is waiting.
const REPORT_EVERY: Duration = Duration::from_secs(30);

/// The lock `apt-get update` takes.
const LISTS_LOCK: &str = "/var/lib/apt/lists/lock";

/// The locks `apt-get install` takes: dpkg's frontend lock (every apt
/// front end, unattended-upgrades included), dpkg's own, and the archive
/// cache's (packages being downloaded).
const INSTALL_LOCKS: [&str; 3] = [
    "/var/lib/dpkg/lock-frontend",
    "/var/lib/dpkg/lock",
    "/var/cache/apt/archives/lock",
];

/// `apt-get update`, after waiting for the lists' lock.
pub fn update() -> Result<()> {
    run_waiting(&["update", "-q"], &[LISTS_LOCK])
}

/// `apt-get install` of `packages`, after waiting for dpkg's locks.
pub fn install(packages: &[&str]) -> Result<()> {
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(packages);
    run_waiting(&args, &INSTALL_LOCKS)
}

/// Runs `apt-get ARGS` once `locks` are free, within [`LOCK_TIMEOUT`] in
/// all; runs it again when it failed while one of them was held.
fn run_waiting(args: &[&str], locks: &[&str]) -> Result<()> {
    let deadline = Instant::now() + LOCK_TIMEOUT;
    loop {
        wait_for(locks, deadline)?;
        let left = deadline.saturating_duration_since(Instant::now());
        let failure = match shell::run(&mut apt_get(args, left)) {
            Ok(()) => return Ok(()),
            Err(err) => err,
        };
        match held(locks)? {
            Some((lock, holder)) if Instant::now() < deadline => eprintln!(
                "bootstrap: apt-get failed while {lock} was held by {holder}: waiting for it and trying again"
            ),
            _ => return Err(failure),
        }
    }
}

/// The command `apt-get -o DPkg::Lock::Timeout=SECONDS ARGS`, run without
/// questions.
fn apt_get(args: &[&str], lock_timeout: Duration) -> Command {
    let mut command = Command::new("apt-get");
    command
        .arg("-o")
        .arg(format!("DPkg::Lock::Timeout={}", lock_timeout.as_secs()))
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive");
    command
}

/// Waits until no process holds any of `locks`, saying what it waits for
/// at once and every [`REPORT_EVERY`]; fails at `deadline` naming the
/// holder.
fn wait_for(locks: &[&str], deadline: Instant) -> Result<()> {
    let started = Instant::now();
    let mut reported: Option<Instant> = None;
    loop {
        let Some((lock, holder)) = held(locks)? else {
            if reported.is_some() {
                eprintln!(
                    "bootstrap: the package manager's locks are free after {}s",
                    started.elapsed().as_secs()
                );
            }
            return Ok(());
        };
        let now = Instant::now();
        if now >= deadline {
            bail!(
                "{lock} is still held by {holder} after {}s: another package manager (often unattended-upgrades, just after boot) is still at work; wait for it to finish (`systemctl status unattended-upgrades apt-daily apt-daily-upgrade`) and run this again",
                started.elapsed().as_secs()
            );
        }
        if reported.is_none_or(|at| now.duration_since(at) >= REPORT_EVERY) {
            eprintln!(
                "bootstrap: waiting for {lock}, held by {holder}: another package manager is at work (on a new machine, often unattended-upgrades); giving up in {}s",
                deadline.duration_since(now).as_secs()
            );
            reported = Some(now);
        }
        std::thread::sleep(Duration::from_millis(500).min(deadline.duration_since(now)));
    }
}

/// The first of `locks` that a process holds, with who holds it.
fn held<'a>(locks: &[&'a str]) -> Result<Option<(&'a str, String)>> {
    for lock in locks {
        if let Some(holder) = holder(Path::new(lock))? {
            return Ok(Some((lock, holder)));
        }
    }
    Ok(None)
}

/// Who holds a write lock on `path` (`unattended-upgr (pid 1234)`), or
/// None when it is free or does not exist. Asks with an open file
/// description lock query (F_OFD_GETLK), which sees the record locks of
/// every process, this one's included.
fn holder(path: &Path) -> Result<Option<String>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => bail!("cannot open {} to look at its lock: {err}", path.display()),
    };
    // SAFETY: flock is a plain C struct, for which all zeroes is valid.
    let mut query: libc::flock = unsafe { std::mem::zeroed() };
    query.l_type = libc::F_WRLCK as libc::c_short;
    query.l_whence = libc::SEEK_SET as libc::c_short;
    fcntl(&file, FcntlArg::F_OFD_GETLK(&mut query))
        .map_err(|err| anyhow::anyhow!("cannot query the lock of {}: {err}", path.display()))?;
    if query.l_type == libc::F_UNLCK as libc::c_short {
        return Ok(None);
    }
    let holder = match query.l_pid {
        pid if pid > 0 => {
            let name = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|n| n.trim().to_owned())
                .unwrap_or_else(|_| "a process".to_owned());
            format!("{name} (pid {pid})")
        }
        _ => "a process (pid unknown)".to_owned(),
    };
    Ok(Some(holder))
}

#[cfg(test)]
mod tests {
    use std::{
        os::fd::{AsRawFd as _, OwnedFd},
        path::PathBuf,
    };

    use nix::{
        sys::wait::waitpid,
        unistd::{ForkResult, Pid, fork, pipe},
    };

    use super::*;

    #[test]
    fn apt_get_waits_for_the_dpkg_lock_itself_and_asks_nothing() {
        let command = apt_get(&["install", "-y", "iproute2"], Duration::from_secs(593));
        assert_eq!(
            shell::describe(&command),
            "apt-get -o DPkg::Lock::Timeout=593 install -y iproute2"
        );
        assert!(
            command
                .get_envs()
                .any(|(k, v)| k == "DEBIAN_FRONTEND" && v == Some("noninteractive".as_ref()))
        );
        assert!(INSTALL_LOCKS.contains(&"/var/lib/dpkg/lock-frontend"));
    }

    /// A file of its own, removed on drop.
    struct Scratch(PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// A child process that holds a record lock on a file, as apt and
    /// dpkg do, until dropped. (A lock of this process would not do: it
    /// goes away when any descriptor of the file closes, the look of
    /// [`holder`] included.)
    struct LockHolder {
        pid: Pid,
        release: Option<OwnedFd>,
    }

    impl LockHolder {
        fn start(file: &File) -> LockHolder {
            let (ready_read, ready_write) = pipe().unwrap();
            let (release_read, release_write) = pipe().unwrap();
            // SAFETY: the child only makes async-signal-safe calls on
            // descriptors opened before the fork, then exits.
            match unsafe { fork() }.unwrap() {
                ForkResult::Child => unsafe {
                    libc::close(release_write.as_raw_fd());
                    let mut request: libc::flock = std::mem::zeroed();
                    request.l_type = libc::F_WRLCK as libc::c_short;
                    request.l_whence = libc::SEEK_SET as libc::c_short;
                    let locked = libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &request) == 0;
                    let byte = [u8::from(locked)];
                    libc::write(ready_write.as_raw_fd(), byte.as_ptr().cast(), 1);
                    let mut buf = [0u8; 1];
                    libc::read(release_read.as_raw_fd(), buf.as_mut_ptr().cast(), 1);
                    libc::_exit(0);
                },
                ForkResult::Parent { child } => {
                    drop((ready_write, release_read));
                    let mut byte = [0u8; 1];
                    nix::unistd::read(&ready_read, &mut byte).unwrap();
                    assert_eq!(byte, [1], "the child could not take the lock");
                    LockHolder {
                        pid: child,
                        release: Some(release_write),
                    }
                }
            }
        }
    }

    impl Drop for LockHolder {
        fn drop(&mut self) {
            drop(self.release.take());
            let _ = waitpid(self.pid, None);
        }
    }

    #[test]
    fn the_wait_names_the_holder_gives_up_at_the_deadline_and_ends_when_freed() {
        let scratch =
            Scratch(std::env::temp_dir().join(format!("xtask-apt-lock-{}", std::process::id())));
        let path = scratch.0.to_str().unwrap();
        let file = File::create(&scratch.0).unwrap();
        assert_eq!(holder(&scratch.0).unwrap(), None);
        assert_eq!(held(&["/nonexistent/lock", path]).unwrap(), None);

        let child = LockHolder::start(&file);
        let pid = format!("(pid {})", child.pid);
        let named = holder(&scratch.0).unwrap().unwrap();
        assert!(named.ends_with(&pid), "{named}");
        let (lock, who) = held(&["/nonexistent/lock", path]).unwrap().unwrap();
        assert_eq!((lock, who.as_str()), (path, named.as_str()));
        let started = Instant::now();
        let err = wait_for(&[path], started + Duration::from_millis(700))
            .unwrap_err()
            .to_string();
        assert!(started.elapsed() >= Duration::from_millis(700));
        assert!(err.contains(path) && err.contains(&pid), "{err}");

        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(800));
            drop(child);
        });
        let started = Instant::now();
        wait_for(&[path], started + Duration::from_secs(10)).unwrap();
        assert!(started.elapsed() >= Duration::from_millis(700));
        release.join().unwrap();
        assert_eq!(holder(&scratch.0).unwrap(), None);
    }
}
