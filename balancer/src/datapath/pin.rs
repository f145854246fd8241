//! Pinned state for hitless restarts: every map, and the XDP link of every
//! interface, live under a bpffs directory, so the datapath goes on
//! forwarding with its connection table and counters while no daemon runs,
//! and a new daemon (or a new binary) adopts them.

use std::{
    mem::size_of,
    path::{Path, PathBuf},
};

use aya::maps::MapInfo;
use balancer_common::{
    backend::{BackendInfo, BackendLoad},
    flow::{FlowKey, FlowState},
    maps,
    persist::{PersistKey, PersistState},
    settings::Settings,
    stats::{FlowCounters, PacketCount, STATS_SLOTS},
    vip::{AddrInfo, AddrKey, VipInfo, VipKey, VipPolicy},
};

use super::DatapathError;

/// Every pinned map with the key size, value size and entries this binary
/// expects (`None`: set at load). A pinned map that differs is refused.
pub(super) fn layouts(flow_table_size: u32) -> [(&'static str, u32, u32, Option<u32>); 14] {
    let s = |n: usize| n as u32;
    [
        (
            maps::VIPS,
            s(size_of::<VipKey>()),
            s(size_of::<VipInfo>()),
            Some(maps::MAX_VIPS),
        ),
        (
            maps::VIP_ADDRS,
            s(size_of::<AddrKey>()),
            s(size_of::<AddrInfo>()),
            Some(maps::MAX_VIPS),
        ),
        (maps::RINGS, 4, 4, Some(maps::MAX_VIPS)),
        (
            maps::BACKENDS,
            4,
            s(size_of::<BackendInfo>()),
            Some(maps::MAX_BACKENDS),
        ),
        (
            maps::FLOWS,
            s(size_of::<FlowKey>()),
            s(size_of::<FlowState>()),
            Some(flow_table_size),
        ),
        (maps::EGRESS, 4, 8, Some(maps::MAX_EGRESS)),
        (maps::SETTINGS, 4, s(size_of::<Settings>()), Some(1)),
        (
            maps::STATS,
            4,
            s(size_of::<PacketCount>()),
            Some(STATS_SLOTS),
        ),
        (
            maps::VIP_STATS,
            4,
            s(size_of::<FlowCounters>()),
            Some(maps::MAX_VIPS),
        ),
        (
            maps::BACKEND_STATS,
            4,
            s(size_of::<FlowCounters>()),
            Some(maps::MAX_BACKENDS),
        ),
        (
            maps::VIP_POLICY,
            4,
            s(size_of::<VipPolicy>()),
            Some(maps::MAX_VIPS),
        ),
        (
            maps::BACKEND_LOAD,
            4,
            s(size_of::<BackendLoad>()),
            Some(maps::MAX_BACKENDS),
        ),
        (maps::RR_CURSOR, 4, 4, Some(maps::MAX_VIPS)),
        (
            maps::PERSIST,
            s(size_of::<PersistKey>()),
            s(size_of::<PersistState>()),
            Some(maps::PERSIST_ENTRIES),
        ),
    ]
}

/// Mounts bpffs on /sys/fs/bpf when it is not mounted yet, and creates
/// `dir` in it.
pub fn prepare(dir: &Path) -> Result<(), DatapathError> {
    let mounted = std::fs::read_to_string("/proc/self/mounts")
        .map(|m| {
            m.lines().any(|l| {
                l.split_whitespace().nth(1) == Some("/sys/fs/bpf")
                    && l.split_whitespace().nth(2) == Some("bpf")
            })
        })
        .unwrap_or(false);
    if !mounted && dir.starts_with("/sys/fs/bpf") {
        nix::mount::mount(
            Some("bpf"),
            "/sys/fs/bpf",
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|errno| DatapathError::Pin {
            path: PathBuf::from("/sys/fs/bpf"),
            reason: format!("cannot mount bpffs: {errno}"),
        })?;
        tracing::info!("mounted bpffs on /sys/fs/bpf");
    }
    std::fs::create_dir_all(dir).map_err(|e| DatapathError::Pin {
        path: dir.to_path_buf(),
        reason: format!("cannot create the pin directory: {e}"),
    })
}

/// Refuses to adopt pinned maps whose layout differs from this binary's.
pub(super) fn check_compatible(dir: &Path, flow_table_size: u32) -> Result<bool, DatapathError> {
    let mut found = false;
    for (name, key, value, entries) in layouts(flow_table_size) {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        found = true;
        let info = MapInfo::from_pin(&path).map_err(|e| DatapathError::Pin {
            path: path.clone(),
            reason: format!("cannot read the pinned map: {e}"),
        })?;
        let ok = info.key_size() == key
            && info.value_size() == value
            && entries.is_none_or(|n| info.max_entries() == n);
        if !ok {
            return Err(DatapathError::Pin {
                path,
                reason: format!(
                    "the pinned map has key {} / value {} / {} entries, this binary needs {key} / {value} / {}; \
                     run `balancer teardown` to remove the old state (established flows are lost) and start again",
                    info.key_size(),
                    info.value_size(),
                    info.max_entries(),
                    entries.map_or("any".to_owned(), |n| n.to_string())
                ),
            });
        }
    }
    Ok(found)
}

/// Unpins the maps of earlier layouts ([`maps::OBSOLETE_PINS`]) left in
/// `dir`, once this binary's maps are loaded: a program still attached
/// keeps the maps it uses until it is replaced, and the kernel frees them
/// then, instead of when the operator runs `balancer teardown`.
pub(super) fn remove_obsolete(dir: &Path) -> Result<(), DatapathError> {
    for name in maps::OBSOLETE_PINS {
        let path = dir.join(name);
        if path.exists() {
            std::fs::remove_file(&path).map_err(|e| DatapathError::Pin {
                path: path.clone(),
                reason: format!("cannot remove the pin of an earlier layout: {e}"),
            })?;
            tracing::info!(path = %path.display(), "removed the pin of an earlier layout");
        }
    }
    Ok(())
}

/// Where the XDP link of `interface` is pinned.
pub(super) fn link_path(dir: &Path, interface: &str) -> PathBuf {
    dir.join(format!("link_{interface}"))
}

/// Detaches every pinned link under `dir` and removes every pin and the
/// directory: what `balancer teardown` does. Returns the interfaces that
/// were detached.
pub fn teardown(dir: &Path) -> Result<Vec<String>, DatapathError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(DatapathError::Pin {
                path: dir.to_path_buf(),
                reason: format!("cannot list: {e}"),
            });
        }
    };
    let mut detached = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(interface) = name.strip_prefix("link_") {
            let link = aya::programs::links::PinnedLink::from_pin(&path).map_err(|e| {
                DatapathError::Pin {
                    path: path.clone(),
                    reason: format!("cannot open the pinned link: {e}"),
                }
            })?;
            // Unpinned and closed: the kernel detaches the program.
            drop(link.unpin().map_err(|e| DatapathError::Pin {
                path: path.clone(),
                reason: format!("cannot unpin: {e}"),
            })?);
            detached.push(interface.to_owned());
        } else {
            std::fs::remove_file(&path).map_err(|e| DatapathError::Pin {
                path: path.clone(),
                reason: format!("cannot unpin: {e}"),
            })?;
        }
    }
    std::fs::remove_dir(dir).map_err(|e| DatapathError::Pin {
        path: dir.to_path_buf(),
        reason: format!("cannot remove: {e}"),
    })?;
    Ok(detached)
}
