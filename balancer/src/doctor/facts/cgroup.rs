//! The memory cgroup of this process and the limits above it, in cgroup
//! v2 (`memory.max`, `memory.current`) or v1's memory hierarchy
//! (`memory.limit_in_bytes`, `memory.usage_in_bytes`), found through
//! /proc/self/cgroup and the cgroup mounts of /proc/self/mountinfo.

use std::path::{Path, PathBuf};

use super::mounts::{self, Entry};
use crate::doctor::checks::memory::{Cgroup, Limit};

/// Limits at or above this are "no limit" (v1 writes one as
/// 9223372036854771712, the largest multiple of the page size).
const UNLIMITED: u64 = 1 << 62;

/// The cgroup of this process in the memory controller's hierarchy, from
/// the text of /proc/self/cgroup: v1's line naming `memory` when there is
/// one (a v1 memory hierarchy takes the controller), else v2's `0::`
/// line. Returns the version and the path.
pub fn own_path(proc_cgroup: &str) -> Option<(u8, String)> {
    let mut v2 = None;
    for line in proc_cgroup.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
            v2 = Some((2, path.to_owned()));
        } else if controllers.split(',').any(|c| c == "memory") {
            return Some((1, path.to_owned()));
        }
    }
    v2
}

/// The directory of cgroup `path` (as /proc/self/cgroup names it) under
/// the hierarchy mounted by `mount`, whose root within the hierarchy is
/// `mount.root`.
fn directory(mount: &Entry, path: &str) -> Option<PathBuf> {
    let relative = Path::new(path).strip_prefix(&mount.root).ok()?;
    Some(mount.point.join(relative))
}

/// The mount of the memory hierarchy of cgroup `version`.
fn hierarchy(entries: &[Entry], version: u8) -> Option<&Entry> {
    entries.iter().find(|e| match version {
        1 => e.fstype == "cgroup" && e.options.split(',').any(|o| o == "memory"),
        _ => e.fstype == "cgroup2",
    })
}

fn read_u64(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    match text.trim() {
        "max" => Some(u64::MAX),
        n => n.parse().ok(),
    }
}

/// The limits from the cgroup at `dir` up to `top` (the hierarchy's
/// mount point), each with its path in the hierarchy.
pub fn limits(version: u8, top: &Path, dir: &Path, root: &str) -> Vec<Limit> {
    let (limit_file, usage_file) = match version {
        1 => ("memory.limit_in_bytes", "memory.usage_in_bytes"),
        _ => ("memory.max", "memory.current"),
    };
    let mut out = Vec::new();
    let mut at = Some(dir);
    while let Some(dir) = at {
        if !dir.starts_with(top) {
            break;
        }
        if let (Some(limit), Some(usage)) = (
            read_u64(&dir.join(limit_file)),
            read_u64(&dir.join(usage_file)),
        ) && limit < UNLIMITED
        {
            let inside = dir.strip_prefix(top).unwrap_or(dir);
            out.push(Limit {
                path: Path::new(root).join(inside).display().to_string(),
                limit,
                usage,
            });
        }
        at = dir.parent();
    }
    out
}

/// This process's memory cgroup and every limit above it.
pub fn memory() -> Result<Cgroup, String> {
    let proc_cgroup = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("/proc/self/cgroup: {e}"))?;
    let (version, path) =
        own_path(&proc_cgroup).ok_or_else(|| "no memory cgroup in /proc/self/cgroup".to_owned())?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("/proc/self/mountinfo: {e}"))?;
    let entries = mounts::parse(&mountinfo);
    let mount = hierarchy(&entries, version)
        .ok_or_else(|| format!("the cgroup v{version} memory hierarchy is not mounted"))?;
    let dir = directory(mount, &path)
        .ok_or_else(|| format!("cgroup {path} is outside the mounted hierarchy"))?;
    Ok(Cgroup {
        version,
        limits: limits(
            version,
            &mount.point,
            &dir,
            &mount.root.display().to_string(),
        ),
        path,
    })
}

/// `MemAvailable` of /proc/meminfo, in bytes.
pub fn available() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_controllers_cgroup_is_found_in_either_version() {
        let hybrid = "9:name=systemd:/\n4:memory:/process_api/abc\n1:cpu:/\n0::/\n";
        assert_eq!(own_path(hybrid), Some((1, "/process_api/abc".to_owned())));
        let unified = "0::/system.slice/balancer.service\n";
        assert_eq!(
            own_path(unified),
            Some((2, "/system.slice/balancer.service".to_owned()))
        );
        let joined = "5:cpu,memory,blkio:/x\n";
        assert_eq!(own_path(joined), Some((1, "/x".to_owned())));
        assert_eq!(own_path("1:cpu:/\n"), None);
    }

    #[test]
    fn limits_are_read_up_the_tree_to_the_mount() {
        let top =
            std::env::temp_dir().join(format!("balancer-doctor-cgroup-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&top);
        let service = top.join("system.slice/balancer.service");
        std::fs::create_dir_all(&service).unwrap();
        let write = |dir: &Path, max: &str, current: &str| {
            std::fs::write(dir.join("memory.max"), max).unwrap();
            std::fs::write(dir.join("memory.current"), current).unwrap();
        };
        write(&service, "104857600\n", "1048576\n");
        write(&top.join("system.slice"), "max\n", "5000\n");
        // The root of a v2 hierarchy has no memory.max: nothing is read.
        let found = limits(2, &top, &service, "/");
        assert_eq!(
            found,
            vec![Limit {
                path: "/system.slice/balancer.service".to_owned(),
                limit: 104_857_600,
                usage: 1_048_576,
            }]
        );
        // v1 writes "no limit" as a huge number.
        std::fs::write(
            service.join("memory.limit_in_bytes"),
            "9223372036854771712\n",
        )
        .unwrap();
        std::fs::write(service.join("memory.usage_in_bytes"), "4096\n").unwrap();
        assert!(limits(1, &top, &service, "/").is_empty());
        std::fs::remove_dir_all(&top).unwrap();
    }

    #[test]
    fn a_cgroup_path_is_joined_under_the_mounts_root() {
        let mount = Entry {
            id: 30,
            point: PathBuf::from("/sys/fs/cgroup"),
            root: PathBuf::from("/"),
            fstype: "cgroup2".to_owned(),
            options: String::new(),
        };
        assert_eq!(
            directory(&mount, "/system.slice/x.service"),
            Some(PathBuf::from("/sys/fs/cgroup/system.slice/x.service"))
        );
        let namespaced = Entry {
            root: PathBuf::from("/container"),
            ..mount
        };
        assert_eq!(
            directory(&namespaced, "/container/app"),
            Some(PathBuf::from("/sys/fs/cgroup/app"))
        );
        assert_eq!(directory(&namespaced, "/elsewhere"), None);
    }

    #[test]
    fn this_process_has_a_memory_cgroup() {
        let cgroup = memory().expect("the test machine has a memory cgroup");
        assert!(cgroup.path.starts_with('/'), "{cgroup:?}");
        assert!(available().is_some_and(|bytes| bytes > 0));
    }
}
