//! bpffs under the pin directory, in the host's mount namespace.
//!
//! The daemon pins its maps and links under `[daemon] pin_path` so that
//! the datapath outlives it and a new daemon adopts it. That needs bpffs
//! at that path, and a bpffs that outlives the daemon: one mounted in a
//! mount namespace of its own (what `ip netns exec` gives every command)
//! goes when the namespace's last process exits, and the pins with it,
//! which detaches the program.

use std::path::{Path, PathBuf};

use super::Finding;

/// Where the daemon mounts bpffs itself when nothing is mounted there.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";

/// A mount, as /proc/PID/mountinfo shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub point: PathBuf,
    pub fstype: String,
}

/// What the host's mount namespace (PID 1's) has at the pin directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    /// This process runs in the host's mount namespace.
    Same,
    /// This process has a mount namespace of its own; the host's has
    /// bpffs at the pin directory (`true`) or not.
    Other { bpffs: bool },
    /// The host's mount namespace cannot be read: why.
    Unknown(String),
}

/// What doctor found about the pin directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    pub pin_path: PathBuf,
    /// The mount the pin directory is (or would be) on, in this mount
    /// namespace; `None` when mountinfo cannot be read.
    pub here: Option<Mount>,
    pub host: Host,
}

/// Whether the pins would be made on bpffs that outlives the daemon.
pub fn decide(facts: &Facts) -> Finding {
    const CHECK: &str = "bpffs";
    let subject = facts.pin_path.display().to_string();
    let host_mount = format!("mount -t bpf bpf {BPFFS_ROOT} (in the host's mount namespace)");
    let private_fix = "run the daemon in the host's mount namespace: nsenter --net=/run/netns/NAME instead of ip netns exec, or mount bpffs on the host and keep it there";
    let Some(here) = &facts.here else {
        return Finding::warn(
            CHECK,
            subject,
            "cannot read /proc/self/mountinfo: the pin directory's filesystem could not be checked",
            host_mount,
        );
    };
    if here.fstype == "bpf" {
        let at = here.point.display();
        return match &facts.host {
            Host::Same => Finding::ok(CHECK, subject, format!("bpffs is mounted at {at}")),
            Host::Other { bpffs: true } => Finding::ok(
                CHECK,
                subject,
                format!(
                    "bpffs is mounted at {at}, in the host's mount namespace too (this process has one of its own)"
                ),
            ),
            Host::Other { bpffs: false } => Finding::warn(
                CHECK,
                subject,
                format!(
                    "bpffs at {at} is mounted only in this process's private mount namespace (as ip netns exec makes): the pins vanish with the daemon's last process, and the program is detached"
                ),
                private_fix,
            ),
            Host::Unknown(why) => Finding::warn(
                CHECK,
                subject,
                format!(
                    "bpffs is mounted at {at}, but whether the host's mount namespace has it could not be checked ({why})"
                ),
                host_mount,
            ),
        };
    }
    // Not bpffs: the daemon mounts it on /sys/fs/bpf when the pin
    // directory is under it and nothing is mounted there yet.
    let mountable = facts.pin_path.starts_with(BPFFS_ROOT) && here.point != Path::new(BPFFS_ROOT);
    if !mountable {
        return Finding::fail(
            CHECK,
            subject,
            format!(
                "the pin directory is on {} ({}), not bpffs: nothing can be pinned there",
                here.point.display(),
                here.fstype
            ),
            format!(
                "mount bpffs there (mount -t bpf bpf DIR) or set [daemon] pin_path under {BPFFS_ROOT}"
            ),
        );
    }
    match &facts.host {
        Host::Same => Finding::ok(
            CHECK,
            subject,
            format!("bpffs is not mounted yet: the daemon mounts it on {BPFFS_ROOT} at start"),
        ),
        Host::Other { .. } => Finding::warn(
            CHECK,
            subject,
            format!(
                "bpffs is not mounted on {BPFFS_ROOT} in this private mount namespace (as ip netns exec makes): the daemon would mount it here, where its pins vanish with its last process"
            ),
            private_fix,
        ),
        Host::Unknown(why) => Finding::warn(
            CHECK,
            subject,
            format!(
                "bpffs is not mounted yet (the daemon mounts it on {BPFFS_ROOT}), and whether this is the host's mount namespace could not be checked ({why})"
            ),
            host_mount,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::checks::{Level, table::expect};

    fn facts(pin: &str, point: &str, fstype: &str, host: Host) -> Facts {
        Facts {
            pin_path: PathBuf::from(pin),
            here: Some(Mount {
                point: PathBuf::from(point),
                fstype: fstype.to_owned(),
            }),
            host,
        }
    }

    #[test]
    fn pins_need_bpffs_that_outlives_the_daemon() {
        let pin = "/sys/fs/bpf/balancer";
        let unknown = || Host::Unknown("Permission denied".to_owned());
        let rows = [
            (
                "host bpffs",
                facts(pin, BPFFS_ROOT, "bpf", Host::Same),
                Level::Ok,
                "bpffs is mounted at /sys/fs/bpf",
                None,
            ),
            (
                "private namespace, host has it too",
                facts(pin, BPFFS_ROOT, "bpf", Host::Other { bpffs: true }),
                Level::Ok,
                "in the host's mount namespace too",
                None,
            ),
            (
                "bpffs only in a private namespace",
                facts(pin, BPFFS_ROOT, "bpf", Host::Other { bpffs: false }),
                Level::Warn,
                "only in this process's private mount namespace",
                Some("nsenter --net=/run/netns/NAME instead of ip netns exec"),
            ),
            (
                "host unknown",
                facts(pin, BPFFS_ROOT, "bpf", unknown()),
                Level::Warn,
                "could not be checked (Permission denied)",
                Some("mount -t bpf"),
            ),
            (
                "not mounted, host namespace",
                facts(pin, "/sys", "sysfs", Host::Same),
                Level::Ok,
                "the daemon mounts it on /sys/fs/bpf at start",
                None,
            ),
            (
                "not mounted, private namespace",
                facts(pin, "/sys", "sysfs", Host::Other { bpffs: true }),
                Level::Warn,
                "the daemon would mount it here, where its pins vanish",
                Some("nsenter --net"),
            ),
            (
                "not mounted, host unknown",
                facts(pin, "/sys", "sysfs", unknown()),
                Level::Warn,
                "could not be checked",
                Some("mount -t bpf"),
            ),
            (
                "another filesystem on /sys/fs/bpf",
                facts(pin, BPFFS_ROOT, "tmpfs", Host::Same),
                Level::Fail,
                "on /sys/fs/bpf (tmpfs), not bpffs",
                Some("set [daemon] pin_path under /sys/fs/bpf"),
            ),
            (
                "a pin path outside /sys/fs/bpf",
                facts("/var/lib/balancer/pins", "/", "ext4", Host::Same),
                Level::Fail,
                "on / (ext4), not bpffs",
                Some("mount bpffs there"),
            ),
            (
                "a bpffs of its own elsewhere",
                facts("/srv/bpf/balancer", "/srv/bpf", "bpf", Host::Same),
                Level::Ok,
                "mounted at /srv/bpf",
                None,
            ),
        ];
        for (case, facts, level, message, fix) in rows {
            expect(case, &decide(&facts), level, message, fix);
        }
        let unread = Facts {
            pin_path: PathBuf::from(pin),
            here: None,
            host: Host::Same,
        };
        expect(
            "no mountinfo",
            &decide(&unread),
            Level::Warn,
            "cannot read",
            Some("mount -t bpf"),
        );
    }
}
