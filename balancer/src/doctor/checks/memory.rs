//! Whether the maps fit the memory the daemon may use.
//!
//! The kernel charges every map to the memory cgroup of the process that
//! creates it and allocates the large tables whole at start
//! (config/memory.rs), and then the verifier's working memory while it
//! checks the program; so a daemon whose cgroup (a unit's `MemoryMax`, a
//! container's limit) has less room than both fails to start with
//! "Cannot allocate memory" or is killed, and one with just enough is
//! killed later, when a ring rebuild briefly holds a VIP's old ring and
//! its new one.

use super::{Finding, mib};

/// The kernel memory the verifier takes for a moment while it checks the
/// program, beside the maps: a daemon's start measured here (Linux 6.18)
/// peaked at 136 MiB of kernel memory in its cgroup for 59 MiB of maps,
/// and doctor's own load of the program with small tables at 84 MiB.
pub const VERIFIER_MEMORY: u64 = 80 << 20;

/// The room doctor needs to load the program itself (the verifier, the
/// probe's small maps, doctor's own memory): with less, the load would get
/// doctor killed by the cgroup's OOM killer rather than tell anything.
pub const PROBE_MEMORY: u64 = VERIFIER_MEMORY + (32 << 20);

/// The memory the daemon itself takes beside its maps (its heap, the
/// runtime's threads, buffers of the control socket and of health
/// checks): 28 MiB resident and 36 MiB at its peak measured here (a debug
/// build, one VIP), given almost twice that for larger configurations.
pub const DAEMON_ALLOWANCE: u64 = 64 << 20;

/// One cgroup on the way from the process's cgroup to the root, with a
/// limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limit {
    /// Its path in the hierarchy (`/system.slice/balancer.service`).
    pub path: String,
    /// `memory.max` (v2) or `memory.limit_in_bytes` (v1).
    pub limit: u64,
    /// `memory.current` (v2) or `memory.usage_in_bytes` (v1).
    pub usage: u64,
}

/// The memory cgroup of this process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cgroup {
    /// 1 or 2.
    pub version: u8,
    /// This process's cgroup.
    pub path: String,
    /// Every cgroup from it up to the root that has a limit.
    pub limits: Vec<Limit>,
}

/// What doctor found about memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    /// The maps at start, the large tables and the small maps together.
    pub maps: u64,
    /// The rings among them: a rebuild holds a second copy for a moment.
    pub rings: u64,
    /// The cgroup, or why it could not be read.
    pub cgroup: Result<Cgroup, String>,
    /// `MemAvailable` of /proc/meminfo: the host's own bound.
    pub available: Option<u64>,
}

/// The room left under the tightest bound (a cgroup's limit on the way
/// up, or the host's available memory), its name and how it was read;
/// `None` when nothing bounds it or the cgroup cannot be read.
pub fn tightest(facts: &Facts) -> Option<(String, u64, String)> {
    let cgroup = facts.cgroup.as_ref().ok()?;
    let mut bounds: Vec<(String, u64, String)> = cgroup
        .limits
        .iter()
        .map(|l| {
            (
                format!("memory cgroup {} (v{})", l.path, cgroup.version),
                l.limit.saturating_sub(l.usage),
                format!("limit {}, {} in use", mib(l.limit), mib(l.usage)),
            )
        })
        .collect();
    if let Some(available) = facts.available {
        bounds.push((
            "the host".to_owned(),
            available,
            "MemAvailable of /proc/meminfo".to_owned(),
        ));
    }
    bounds.into_iter().min_by_key(|(_, room, _)| *room)
}

/// The maps and the verifier against the tightest bound: fail when they
/// do not fit at start, warn when the daemon's peak (its start or a ring
/// rebuild, and its own memory) does not.
pub fn decide(facts: &Facts) -> Finding {
    const CHECK: &str = "memory";
    let start = facts.maps + VERIFIER_MEMORY;
    let peak = start.max(facts.maps + facts.rings) + DAEMON_ALLOWANCE;
    let cgroup = match &facts.cgroup {
        Ok(cgroup) => cgroup,
        Err(why) => {
            return Finding::warn(
                CHECK,
                "cgroup",
                format!(
                    "the memory cgroup could not be read ({why}): the maps' {} could not be compared with its limit",
                    mib(facts.maps)
                ),
                format!("give the daemon's unit MemoryMax= above {}", mib(peak)),
            );
        }
    };
    let subject = format!("cgroup {} (v{})", cgroup.path, cgroup.version);
    let Some((bound, room, detail)) = tightest(facts) else {
        return Finding::ok(
            CHECK,
            subject,
            format!("the maps take {}; no memory limit applies", mib(facts.maps)),
        );
    };
    let fix = format!(
        "give the daemon more than {} of memory (MemoryMax= of its unit, or the limit of {bound}), or lower [datapath] flow_table_size",
        mib(peak)
    );
    if facts.maps > room {
        Finding::fail(
            CHECK,
            subject,
            format!(
                "the maps take {} at start, but {bound} has {} left ({detail}): the start fails with \"Cannot allocate memory\"",
                mib(facts.maps),
                mib(room)
            ),
            fix,
        )
    } else if start > room {
        Finding::fail(
            CHECK,
            subject,
            format!(
                "the maps take {} and verifying the program about {} more at start, but {bound} has {} left ({detail}): the start fails",
                mib(facts.maps),
                mib(VERIFIER_MEMORY),
                mib(room)
            ),
            fix,
        )
    } else if peak > room {
        Finding::warn(
            CHECK,
            subject,
            format!(
                "the maps take {} and the daemon's peak is about {} (its start, its own memory), but {bound} has {} left ({detail})",
                mib(facts.maps),
                mib(peak),
                mib(room)
            ),
            fix,
        )
    } else {
        Finding::ok(
            CHECK,
            subject,
            format!(
                "the maps take {} (the daemon's peak about {}); {bound} has {} left",
                mib(facts.maps),
                mib(peak),
                mib(room)
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::checks::{Level, table::expect};

    const MIB: u64 = 1 << 20;

    fn facts(limits: &[(u64, u64)], available: Option<u64>) -> Facts {
        Facts {
            maps: 60 * MIB,
            rings: MIB,
            cgroup: Ok(Cgroup {
                version: 2,
                path: "/system.slice/balancer.service".to_owned(),
                limits: limits
                    .iter()
                    .enumerate()
                    .map(|(i, &(limit, usage))| Limit {
                        path: format!("/level{i}"),
                        limit,
                        usage,
                    })
                    .collect(),
            }),
            available,
        }
    }

    #[test]
    fn the_maps_and_the_verifier_must_fit_the_tightest_limit() {
        // 60 MiB of maps: 140 at start with the verifier, a peak of 204
        // with the daemon's own memory.
        let rows = [
            (
                "no limit",
                facts(&[], None),
                Level::Ok,
                "no memory limit applies",
                None,
            ),
            (
                "roomy",
                facts(&[(1024 * MIB, 100 * MIB)], Some(8192 * MIB)),
                Level::Ok,
                "the daemon's peak about 204.0 MiB); memory cgroup /level0 (v2) has 924.0 MiB left",
                None,
            ),
            (
                "maps too large",
                facts(&[(64 * MIB, 10 * MIB)], None),
                Level::Fail,
                "the maps take 60.0 MiB at start, but memory cgroup /level0 (v2) has 54.0 MiB left (limit 64.0 MiB, 10.0 MiB in use)",
                Some("more than 204.0 MiB"),
            ),
            (
                "no room to verify",
                facts(&[(128 * MIB, 0)], None),
                Level::Fail,
                "the maps take 60.0 MiB and verifying the program about 80.0 MiB more at start, but memory cgroup /level0 (v2) has 128.0 MiB left",
                Some("MemoryMax="),
            ),
            (
                "tight",
                facts(&[(200 * MIB, 0)], None),
                Level::Warn,
                "the daemon's peak is about 204.0 MiB",
                Some("MemoryMax="),
            ),
            (
                "a parent is tighter",
                facts(&[(4096 * MIB, 0), (50 * MIB, 0)], None),
                Level::Fail,
                "memory cgroup /level1 (v2) has 50.0 MiB left",
                Some("the limit of memory cgroup /level1"),
            ),
            (
                "the host is tighter",
                facts(&[(4096 * MIB, 0)], Some(30 * MIB)),
                Level::Fail,
                "the host has 30.0 MiB left (MemAvailable",
                Some("flow_table_size"),
            ),
            (
                "unreadable",
                Facts {
                    cgroup: Err("no memory controller".to_owned()),
                    ..facts(&[], None)
                },
                Level::Warn,
                "could not be read (no memory controller)",
                Some("MemoryMax="),
            ),
        ];
        for (case, facts, level, message, fix) in rows {
            expect(case, &decide(&facts), level, message, fix);
        }
    }

    #[test]
    fn the_tightest_bound_is_the_least_room() {
        assert_eq!(tightest(&facts(&[], None)), None);
        let (bound, room, _) = tightest(&facts(
            &[(300 * MIB, 100 * MIB), (250 * MIB, 0)],
            Some(190 * MIB),
        ))
        .unwrap();
        assert_eq!((bound.as_str(), room), ("the host", 190 * MIB));
        let (bound, room, _) =
            tightest(&facts(&[(300 * MIB, 200 * MIB)], Some(190 * MIB))).unwrap();
        assert_eq!(
            (bound.as_str(), room),
            ("memory cgroup /level0 (v2)", 100 * MIB)
        );
    }
}
