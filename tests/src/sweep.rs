//! Finding and removing namespaces that tests left behind.

use std::{path::Path, sync::Once, thread, time::Duration};

use anyhow::Result;
use nix::{sys::signal, unistd::Pid};

use crate::cmd;

/// Every namespace the harness creates is named
/// `PREFIX<pid>-<seq>-<label>-<role>`, where `<pid>` is the process that
/// made it.
pub const NAME_PREFIX: &str = "lbt";

/// bpffs mounts of the harness (one per lab that pinned state) that exist
/// now, live or stale: their mount points.
pub fn leftover_pins() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let point = fields.nth(1)?;
            (fields.next() == Some("bpf") && lab_of(point).is_some()).then(|| point.to_owned())
        })
        .collect()
}

/// The lab name in a path of the harness's scratch directories.
fn lab_of(path: &str) -> Option<&str> {
    Path::new(path)
        .components()
        .filter_map(|c| c.as_os_str().to_str())
        .find(|c| owner_pid(c).is_some())
}

/// Unmounts a lab's bpffs (lazily: the kernel frees it once unused).
pub(crate) fn unmount(point: &Path) {
    let _ = nix::mount::umount2(point, nix::mount::MntFlags::MNT_DETACH);
}

/// Processes of the suite still running: any process (other than this one
/// and its ancestors, such as `cargo xtask`) that runs a binary from the
/// build's target directory `target` (the balancer, test servers, test
/// executables), or whose command line names a harness lab. Returns pid
/// and command line.
pub fn leftover_processes(target: &Path) -> Vec<(i32, String)> {
    let ancestors = ancestors();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| !ancestors.contains(pid))
        .filter_map(|pid| {
            let proc = Path::new("/proc").join(pid.to_string());
            let cmdline = std::fs::read(proc.join("cmdline")).ok()?;
            // Kernel threads and zombies have no command line.
            if cmdline.is_empty() {
                return None;
            }
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let from_target =
                std::fs::read_link(proc.join("exe")).is_ok_and(|exe| exe.starts_with(target));
            let names_a_lab = args.iter().any(|a| lab_of(a).is_some());
            (from_target || names_a_lab).then(|| (pid, args.join(" ")))
        })
        .collect()
}

/// This process and its ancestors.
fn ancestors() -> Vec<i32> {
    let mut pids = Vec::new();
    let mut pid = std::process::id() as i32;
    while pid > 0 && !pids.contains(&pid) {
        pids.push(pid);
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The command name (field 2) may hold spaces: fields restart after ')'.
        pid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0);
    }
    pids
}

/// Namespaces of the harness that exist now, live or stale.
pub fn leftover_namespaces() -> Result<Vec<String>> {
    let out = cmd::run("ip", ["netns", "list"])?;
    Ok(out
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| owner_pid(name).is_some())
        .map(str::to_owned)
        .collect())
}

/// Removes every harness namespace whose creating process has exited (a
/// test killed by a signal cannot run its destructors). Returns the names
/// it removed.
pub fn sweep_stale() -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for name in leftover_namespaces()? {
        let Some(pid) = owner_pid(&name) else {
            continue;
        };
        if Path::new("/proc").join(pid.to_string()).exists() {
            continue;
        }
        remove_namespace(&name)?;
        removed.push(name);
    }
    for point in leftover_pins() {
        let Some(pid) = lab_of(&point).and_then(owner_pid) else {
            continue;
        };
        if Path::new("/proc").join(pid.to_string()).exists() {
            continue;
        }
        unmount(Path::new(&point));
        removed.push(point);
    }
    Ok(removed)
}

/// [`sweep_stale`] once per process, before its first lab.
pub(crate) fn sweep_stale_once() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| match sweep_stale() {
        Ok(removed) if !removed.is_empty() => {
            eprintln!("removed namespaces left by dead test processes: {removed:?}")
        }
        Ok(_) => {}
        Err(err) => eprintln!("warning: cannot sweep stale namespaces: {err:#}"),
    });
}

/// Kills every process inside namespace `name` (never this one) and
/// deletes the namespace.
pub(crate) fn remove_namespace(name: &str) -> Result<()> {
    let own = std::process::id() as i32;
    for _ in 0..50 {
        let Ok(out) = cmd::run("ip", ["netns", "pids", name]) else {
            break;
        };
        let pids: Vec<i32> = out
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .filter(|&p| p != own)
            .collect();
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            let _ = signal::kill(Pid::from_raw(pid), signal::Signal::SIGKILL);
        }
        thread::sleep(Duration::from_millis(20));
    }
    if Path::new("/run/netns").join(name).exists() {
        cmd::run("ip", ["netns", "delete", name])?;
    }
    Ok(())
}

/// The pid in a harness namespace name, or `None` for other namespaces.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NAME_PREFIX)?;
    let (pid, _) = rest.split_once('-')?;
    pid.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::owner_pid;

    #[test]
    fn owner_pid_reads_only_harness_names() {
        assert_eq!(owner_pid("lbt1234-0-xdp-lb"), Some(1234));
        assert_eq!(owner_pid("lbt-0-xdp"), None);
        assert_eq!(owner_pid("blue"), None);
        assert_eq!(owner_pid("lbtx-1"), None);
    }
}
