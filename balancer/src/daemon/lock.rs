//! One daemon per pin directory and per control socket.
//!
//! Two daemons on the same pins would both adopt the maps, replace each
//! other's program and write different configurations; two on the same
//! socket would answer for each other, and the one that exits last would
//! delete the other's socket. So `balancer run` takes two locks before it
//! loads, pins, attaches or listens on anything, and holds them for its
//! whole life: flock(2) on the pin directory itself (bpffs holds no regular
//! files, but a directory's descriptor takes a flock, there as anywhere),
//! and on `<socket>.lock`, a file beside the control socket. `balancer
//! teardown` takes the pin directory's lock too, so it refuses while a
//! daemon runs.
//!
//! The locks are held by open descriptors: the kernel releases them when
//! the daemon exits, even by SIGKILL, so there is nothing stale to clean
//! up. A daemon refused names the holder's pid, read from /proc/locks (the
//! kernel's own record of who holds which inode's flock) rather than from a
//! pid file: a pid file cannot live in bpffs, and one left by a killed
//! daemon would name a pid that may since belong to another process.

use std::{
    fmt,
    fs::File,
    io,
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use nix::{
    errno::Errno,
    fcntl::{Flock, FlockArg},
};
use thiserror::Error;

use crate::datapath::pin;

/// How often a lock is tried again when its path was replaced between the
/// open and the lock (a teardown removing the directory, a daemon removing
/// its lock file on exit).
const ATTEMPTS: usize = 5;

/// What a lock guards, as its error names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guarded {
    /// The bpffs directory of the maps and links.
    PinDirectory,
    /// The control socket (locked through `<socket>.lock`).
    ControlSocket,
}

impl fmt::Display for Guarded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Guarded::PinDirectory => "pin directory",
            Guarded::ControlSocket => "control socket",
        })
    }
}

/// The pid of a lock's holder, when /proc/locks tells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Holder(pub Option<u32>);

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(pid) => write!(f, "pid {pid}"),
            None => f.write_str("pid unknown"),
        }
    }
}

/// Why a lock was not taken.
#[derive(Debug, Error)]
pub enum LockError {
    /// Another daemon runs on the same pins or socket.
    #[error("another balancer daemon ({holder}) holds the {guarded} {}; nothing was changed", path.display())]
    Held {
        holder: Holder,
        guarded: Guarded,
        path: PathBuf,
    },
    /// `balancer teardown` while a daemon runs on the pins.
    #[error(
        "a balancer daemon ({holder}) holds the pin directory {}; stop it before `balancer teardown`; nothing was changed",
        path.display()
    )]
    Running { holder: Holder, path: PathBuf },
    #[error("cannot lock {}: {reason}", path.display())]
    Failed { path: PathBuf, reason: String },
}

/// The locks of a running daemon: released when dropped, or when the
/// process ends however it ends.
#[must_use = "the locks are released when this is dropped"]
pub struct DaemonLock {
    // Dropped in this order: the socket's lock file is removed while its
    // lock is still held.
    _socket: SocketLock,
    _pins: Flock<File>,
}

/// Takes the lock of the control socket, then of the pin directory
/// (creating it, and mounting bpffs on /sys/fs/bpf if it is not, as the
/// load would); refuses if another process holds either.
///
/// The socket's first: a daemon refused there has created nothing, since
/// the holder made the socket's directory and lock file.
pub fn take(pin_dir: &Path, socket: &Path) -> Result<DaemonLock, LockError> {
    let socket = SocketLock::take(socket)?;
    let pins = lock_path(pin_dir, Guarded::PinDirectory, || {
        pin::prepare(pin_dir).map_err(|e| io::Error::other(e.to_string()))?;
        File::open(pin_dir)
    })?;
    Ok(DaemonLock {
        _socket: socket,
        _pins: pins,
    })
}

/// For `balancer teardown`: the pin directory's lock, held while it
/// removes the pins, or nothing when there is no directory to tear down.
pub fn for_teardown(pin_dir: &Path) -> Result<Option<Flock<File>>, LockError> {
    if !pin_dir.exists() {
        return Ok(None);
    }
    lock_path(pin_dir, Guarded::PinDirectory, || File::open(pin_dir))
        .map(Some)
        .map_err(|error| match error {
            LockError::Held { holder, path, .. } => LockError::Running { holder, path },
            other => other,
        })
}

/// The lock file of the control socket `socket`: `<socket>.lock`.
fn socket_lock_file(socket: &Path) -> PathBuf {
    let mut name = socket.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// The pid of the daemon holding the control socket `socket`, read from
/// /proc/locks without taking the lock, so that a daemon starting
/// meanwhile is never refused because of whoever asked (`balancer
/// doctor`).
pub fn socket_holder(socket: &Path) -> Option<u32> {
    let metadata = std::fs::metadata(socket_lock_file(socket)).ok()?;
    holder(metadata.dev(), metadata.ino()).0
}

/// `<socket>.lock`, locked, and removed when dropped.
struct SocketLock {
    path: PathBuf,
    _lock: Flock<File>,
}

impl SocketLock {
    fn take(socket: &Path) -> Result<SocketLock, LockError> {
        let path = socket_lock_file(socket);
        let lock = lock_path(&path, Guarded::ControlSocket, || {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(&path)
        })
        .map_err(|error| match error {
            // Name the socket, which the operator chose, not its lock file.
            LockError::Held {
                holder, guarded, ..
            } => LockError::Held {
                holder,
                guarded,
                path: socket.to_path_buf(),
            },
            other => other,
        })?;
        Ok(SocketLock { path, _lock: lock })
    }
}

impl Drop for SocketLock {
    fn drop(&mut self) {
        // Still locked: a daemon that opened the file meanwhile finds it
        // gone once it gets the lock, and opens a new one.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Opens `path` with `open` and takes an exclusive flock on it without
/// waiting; tries again if `path` no longer names the locked inode (it was
/// removed or replaced meanwhile), so a lock is never held on a file that
/// others can no longer reach.
fn lock_path(
    path: &Path,
    guarded: Guarded,
    open: impl Fn() -> io::Result<File>,
) -> Result<Flock<File>, LockError> {
    let failed = |reason: String| LockError::Failed {
        path: path.to_path_buf(),
        reason,
    };
    for _ in 0..ATTEMPTS {
        let file = open().map_err(|e| failed(e.to_string()))?;
        let locked = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => locked,
            Err((file, Errno::EWOULDBLOCK)) => {
                let metadata = file.metadata().map_err(|e| failed(e.to_string()))?;
                return Err(LockError::Held {
                    holder: holder(metadata.dev(), metadata.ino()),
                    guarded,
                    path: path.to_path_buf(),
                });
            }
            Err((_, errno)) => return Err(failed(errno.desc().to_owned())),
        };
        let held = locked.metadata().map_err(|e| failed(e.to_string()))?;
        match std::fs::metadata(path) {
            Ok(now) if (now.dev(), now.ino()) == (held.dev(), held.ino()) => return Ok(locked),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(failed(e.to_string())),
        }
    }
    Err(failed(format!(
        "it was replaced {ATTEMPTS} times while being locked"
    )))
}

/// The pid holding a flock on the inode `ino` of device `dev`, from
/// /proc/locks.
fn holder(dev: u64, ino: u64) -> Holder {
    let locks = std::fs::read_to_string("/proc/locks").unwrap_or_default();
    Holder(flock_holder(&locks, dev, ino))
}

/// The pid of the FLOCK entry for `dev`:`ino` in `locks`, the text of
/// /proc/locks, whose lines read
/// `1: FLOCK  ADVISORY  WRITE 1234 00:2d:5678 0 EOF` (the device as hex
/// major:minor, the inode in decimal; waiters' lines have a `->` after the
/// number). A pid of 0 (a holder outside this pid namespace) is unknown.
fn flock_holder(locks: &str, dev: u64, ino: u64) -> Option<u32> {
    let wanted = format!(
        "{:02x}:{:02x}:{ino}",
        nix::sys::stat::major(dev),
        nix::sys::stat::minor(dev)
    );
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            [_, "FLOCK", _, _, pid, inode, ..] if *inode == wanted => {
                pid.parse().ok().filter(|&pid| pid > 0)
            }
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory under the system's temporary one.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("balancer-lock-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        dir
    }

    #[test]
    fn the_holder_is_read_from_proc_locks_by_device_and_inode() {
        let locks = "1: POSIX  ADVISORY  WRITE 77 08:01:12 0 EOF\n\
                     2: FLOCK  ADVISORY  WRITE 4321 00:2d:5678 0 EOF\n\
                     2: -> FLOCK  ADVISORY  WRITE 99 00:2d:5678 0 EOF\n\
                     3: FLOCK  ADVISORY  WRITE 0 00:2e:9 0 EOF\n";
        let dev = nix::sys::stat::makedev(0, 0x2d);
        assert_eq!(flock_holder(locks, dev, 5678), Some(4321));
        assert_eq!(flock_holder(locks, dev, 12), None);
        assert_eq!(flock_holder(locks, nix::sys::stat::makedev(8, 1), 12), None);
        assert_eq!(
            flock_holder(locks, nix::sys::stat::makedev(0, 0x2e), 9),
            None
        );
    }

    #[test]
    fn a_second_lock_on_the_same_pins_or_socket_is_refused_naming_the_holder() {
        let dir = scratch("second");
        let (pins, socket) = (dir.join("pins"), dir.join("run/control.sock"));
        let first = take(&pins, &socket).expect("the first lock");
        assert!(dir.join("run/control.sock.lock").exists());
        let pid = std::process::id();
        assert_eq!(socket_holder(&socket), Some(pid), "read without locking");

        // Refused with the message an operator sees, leaving `created`
        // uncreated.
        let refused = |pins: &Path, socket: &Path, guarded: Guarded, created: &Path| {
            let err = take(pins, socket).err().expect("refused");
            let path = if guarded == Guarded::PinDirectory {
                pins
            } else {
                socket
            };
            assert_eq!(
                err.to_string(),
                format!(
                    "another balancer daemon (pid {pid}) holds the {guarded} {}; nothing was changed",
                    path.display()
                )
            );
            assert!(!created.exists(), "a refused daemon created {created:?}");
        };
        let other_socket = dir.join("other.sock");
        let other_lock = dir.join("other.sock.lock");
        refused(&pins, &other_socket, Guarded::PinDirectory, &other_lock);
        let other_pins = dir.join("other-pins");
        refused(&other_pins, &socket, Guarded::ControlSocket, &other_pins);
        let err = for_teardown(&pins).expect_err("refused");
        assert!(
            err.to_string().contains(&format!("(pid {pid})"))
                && err.to_string().contains("before `balancer teardown`"),
            "{err}"
        );

        drop(first);
        assert!(!dir.join("run/control.sock.lock").exists());
        assert_eq!(socket_holder(&socket), None);
        let again = take(&pins, &socket).expect("free once the first is gone");
        drop(again);
        assert!(for_teardown(&pins).expect("free").is_some());
        assert!(for_teardown(&dir.join("none")).expect("nothing").is_none());
        std::fs::remove_dir_all(&dir).expect("cleaned up");
    }
}
