//! Mounts, from /proc/PID/mountinfo: which filesystem a path is on, in
//! this process's mount namespace and in the host's (PID 1's).

use std::path::{Path, PathBuf};

use crate::doctor::checks::bpffs::{Facts, Host, Mount};

/// One line of mountinfo: the mount's id, its mount point, the root of
/// the mount within its filesystem, the filesystem type and its super
/// options.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Unique over every mount namespace: a new namespace's copies of its
    /// parent's mounts get new ids.
    pub id: u32,
    pub point: PathBuf,
    pub root: PathBuf,
    pub fstype: String,
    pub options: String,
}

/// A field of mountinfo with its octal escapes (`\040` for a space)
/// undone.
fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(out))
}

/// The entries of a mountinfo text: `ID PARENT MAJ:MIN ROOT POINT
/// OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS`.
pub fn parse(text: &str) -> Vec<Entry> {
    text.lines()
        .filter_map(|line| {
            let (head, tail) = line.split_once(" - ")?;
            let head: Vec<&str> = head.split(' ').collect();
            let mut tail = tail.split(' ');
            let fstype = tail.next()?.to_owned();
            let _source = tail.next();
            Some(Entry {
                id: head.first()?.parse().ok()?,
                root: unescape(head.get(3)?),
                point: unescape(head.get(4)?),
                fstype,
                options: tail.next().unwrap_or_default().to_owned(),
            })
        })
        .collect()
}

/// The mount `path` is on: the last mounted (the one on top) of those
/// whose mount point is the longest ancestor of `path`.
pub fn mount_of<'a>(entries: &'a [Entry], path: &Path) -> Option<&'a Entry> {
    let longest = entries
        .iter()
        .filter(|e| path.starts_with(&e.point))
        .map(|e| e.point.components().count())
        .max()?;
    entries
        .iter()
        .rev()
        .find(|e| path.starts_with(&e.point) && e.point.components().count() == longest)
}

/// Whether two mountinfo texts are of one mount namespace: their root
/// mounts are the same mount (a namespace's copy has an id of its own).
fn same_namespace(mine: &[Entry], theirs: &[Entry]) -> bool {
    let root = Path::new("/");
    match (mount_of(mine, root), mount_of(theirs, root)) {
        (Some(a), Some(b)) => a.id == b.id,
        _ => false,
    }
}

/// What the pin directory is on, here and in the host's mount namespace
/// (PID 1's). The namespaces are compared by /proc/PID/ns/mnt where it
/// can be read (it needs ptrace access to PID 1), else by their root
/// mounts' ids.
pub fn bpffs(pin_path: &Path) -> Facts {
    let mine = std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .map(|text| parse(&text));
    let here = mine.as_deref().and_then(|entries| {
        mount_of(entries, pin_path).map(|e| Mount {
            point: e.point.clone(),
            fstype: e.fstype.clone(),
        })
    });
    let host = match std::fs::read_to_string("/proc/1/mountinfo") {
        Err(e) => Host::Unknown(format!("/proc/1/mountinfo: {e}")),
        Ok(text) => {
            let init = parse(&text);
            let same = match (
                std::fs::read_link("/proc/self/ns/mnt"),
                std::fs::read_link("/proc/1/ns/mnt"),
            ) {
                (Ok(mine), Ok(theirs)) => mine == theirs,
                _ => mine
                    .as_deref()
                    .is_some_and(|mine| same_namespace(mine, &init)),
            };
            if same {
                Host::Same
            } else {
                Host::Other {
                    bpffs: mount_of(&init, pin_path).is_some_and(|e| e.fstype == "bpf"),
                }
            }
        }
    };
    Facts {
        pin_path: pin_path.to_path_buf(),
        here,
        host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda rw
23 22 0:22 / /sys rw,nosuid shared:2 - sysfs sysfs rw
24 23 0:23 / /sys/fs/bpf rw,relatime shared:3 - bpf bpf rw
25 23 0:24 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
26 25 0:25 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
27 25 0:26 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
28 22 0:27 / /tmp/with\\040space rw - tmpfs tmpfs rw
29 22 0:28 / /srv/bpf rw - tmpfs tmpfs rw
30 22 0:29 / /srv/bpf rw - bpf bpf rw
";

    #[test]
    fn a_path_is_on_its_longest_mount_point() {
        let entries = parse(MOUNTINFO);
        assert_eq!(entries.len(), 9);
        let on = |path: &str| {
            mount_of(&entries, Path::new(path))
                .map(|e| (e.point.display().to_string(), e.fstype.clone()))
        };
        assert_eq!(
            on("/sys/fs/bpf/balancer"),
            Some(("/sys/fs/bpf".into(), "bpf".into()))
        );
        assert_eq!(on("/sys/fs/bpfx"), Some(("/sys".into(), "sysfs".into())));
        assert_eq!(on("/run/balancer"), Some(("/".into(), "ext4".into())));
        assert_eq!(
            on("/tmp/with space/x"),
            Some(("/tmp/with space".into(), "tmpfs".into()))
        );
        // Two mounts on one point: the later one is on top.
        assert_eq!(
            on("/srv/bpf/balancer"),
            Some(("/srv/bpf".into(), "bpf".into()))
        );
        assert_eq!(entries[4].options, "rw,memory");
        assert_eq!(entries[4].id, 26);
        assert!(mount_of(&[], Path::new("/x")).is_none());
    }

    #[test]
    fn namespaces_are_told_apart_by_their_root_mounts() {
        let host = parse(MOUNTINFO);
        let copy = parse(&MOUNTINFO.replace("22 1 0:21 / /", "122 1 0:21 / /"));
        assert!(same_namespace(&host, &host));
        assert!(!same_namespace(&host, &copy));
        assert!(!same_namespace(&host, &[]));
    }

    #[test]
    fn this_process_sees_its_own_root_in_the_hosts_namespace() {
        // The unit tests run in the host's mount namespace.
        let facts = bpffs(Path::new("/"));
        assert_eq!(facts.here.map(|m| m.point), Some(PathBuf::from("/")));
        assert_eq!(facts.host, Host::Same);
    }
}
