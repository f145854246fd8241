//! The process group of an `exec` check's command. The shell runs as the
//! leader of a group of its own, so that everything the command starts
//! (pipelines, background jobs, the children of a script) can be killed
//! together: killing only the shell would leave them running, one more set
//! per check round, outliving the check and the daemon.

use nix::{
    sys::signal::{Signal, killpg},
    unistd::Pid,
};
use tokio::process::Child;

/// Kills the process group of a command when dropped, whichever way its
/// check ends: the command exited (what it left in the background goes
/// too), the check timed out (`timeout` drops the check's future), or the
/// check task was aborted (a reload or the daemon's exit drops the task's
/// future).
#[derive(Debug)]
pub struct GroupKill {
    group: Pid,
}

impl GroupKill {
    /// The guard of the group `child` leads (a child spawned with
    /// `process_group(0)`, so its group id is its pid); `None` if it has
    /// been reaped already.
    ///
    /// Declare it after the `Child` so that it is dropped first: the group
    /// is then killed while the unreaped shell still holds its id, so the id
    /// cannot name another group.
    pub fn of(child: &Child) -> Option<GroupKill> {
        let pid = i32::try_from(child.id()?).ok()?;
        // Never 0 or 1: killpg(0) would kill the daemon's own group.
        (pid > 1).then(|| GroupKill {
            group: Pid::from_raw(pid),
        })
    }
}

impl Drop for GroupKill {
    fn drop(&mut self) {
        // ESRCH: the group has no process left, nothing to do. After a
        // command that exited, the shell is reaped, but the id stays taken
        // as long as anything of its group runs.
        let _ = killpg(self.group, Signal::SIGKILL);
    }
}
