//! Pinned state for hitless restarts: every map, and the XDP link of every
//! interface, live under a bpffs directory, so the datapath goes on
//! forwarding with its connection table and counters while no daemon runs,
//! and a new daemon (or a new binary) adopts them.

use std::{
    collections::BTreeSet,
    ffi::OsString,
    path::{Path, PathBuf},
};

use aya::maps::MapInfo;
use balancer_common::maps::{self, MAP_SPECS, Sizes};

use super::DatapathError;

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

/// Refuses to adopt pinned maps whose layout differs from this binary's
/// ([`MAP_SPECS`], with the tables of `sizes`).
pub(super) fn check_compatible(dir: &Path, sizes: Sizes) -> Result<bool, DatapathError> {
    let mut found = false;
    for spec in &MAP_SPECS {
        let path = dir.join(spec.name);
        if !path.exists() {
            continue;
        }
        found = true;
        let info = MapInfo::from_pin(&path).map_err(|e| DatapathError::Pin {
            path: path.clone(),
            reason: format!("cannot read the pinned map: {e}"),
        })?;
        let (key, value) = (spec.key_size, spec.value_size);
        let entries = spec.max_entries(sizes);
        let ok =
            info.key_size() == key && info.value_size() == value && info.max_entries() == entries;
        if !ok {
            return Err(DatapathError::Pin {
                path,
                reason: format!(
                    "the pinned map has key {} / value {} / {} entries, this binary needs {key} / {value} / {entries}; \
                     run `balancer teardown` to remove the old state (established flows are lost) and start again",
                    info.key_size(),
                    info.value_size(),
                    info.max_entries(),
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
pub fn link_path(dir: &Path, interface: &str) -> PathBuf {
    dir.join(format!("link_{interface}"))
}

/// Detaches every pinned link under `dir` and removes every pin and the
/// directory: what `balancer teardown` does. Returns the interfaces that
/// were detached.
pub fn teardown(dir: &Path) -> Result<Vec<String>, DatapathError> {
    Ok(remove_except(dir, &BTreeSet::new(), true)?.detached)
}

/// What [`remove_except`] removed.
#[derive(Debug, Default)]
pub struct Removed {
    /// The names of the pins removed, links included.
    pub pins: Vec<String>,
    /// The interfaces whose link was unpinned, which detached the program.
    pub detached: Vec<String>,
}

/// The names of the pins under `dir`; none when it does not exist.
pub fn names(dir: &Path) -> Result<BTreeSet<OsString>, DatapathError> {
    Ok(entries(dir)?
        .map(|entries| entries.into_iter().map(|(name, _)| name).collect())
        .unwrap_or_default())
}

/// Removes the pins under `dir` not named in `kept`, detaching the links
/// among them (a link's pin is named `link_<interface>`), and then `dir`
/// itself if `remove_dir`; nothing to do when `dir` does not exist.
pub fn remove_except(
    dir: &Path,
    kept: &BTreeSet<OsString>,
    remove_dir: bool,
) -> Result<Removed, DatapathError> {
    let Some(entries) = entries(dir)? else {
        return Ok(Removed::default());
    };
    let mut removed = Removed::default();
    for (name, path) in entries.into_iter().filter(|(name, _)| !kept.contains(name)) {
        let name = name.to_string_lossy().into_owned();
        if let Some(interface) = name.strip_prefix("link_") {
            // Unpinning still detaches it, a moment later.
            if let Err(err) = detach_link(&path) {
                tracing::warn!(interface, error = %err, "cannot detach the link at once");
            }
            let link = aya::programs::links::PinnedLink::from_pin(&path).map_err(|e| {
                DatapathError::Pin {
                    path: path.clone(),
                    reason: format!("cannot open the pinned link: {e}"),
                }
            })?;
            // Detached above; unpinned and closed: the link goes.
            drop(link.unpin().map_err(|e| DatapathError::Pin {
                path: path.clone(),
                reason: format!("cannot unpin: {e}"),
            })?);
            removed.detached.push(interface.to_owned());
        } else {
            std::fs::remove_file(&path).map_err(|e| DatapathError::Pin {
                path: path.clone(),
                reason: format!("cannot unpin: {e}"),
            })?;
        }
        removed.pins.push(name);
    }
    if remove_dir {
        std::fs::remove_dir(dir).map_err(|e| DatapathError::Pin {
            path: dir.to_path_buf(),
            reason: format!("cannot remove: {e}"),
        })?;
    }
    Ok(removed)
}

/// Detaches the link pinned at `path` from its hook now
/// (`BPF_LINK_DETACH`), before its pin goes: removing the pin alone lets
/// the link go only once bpffs frees the inode, after an RCU grace period,
/// and packets meet the program meanwhile.
pub fn detach_link(path: &Path) -> Result<(), DatapathError> {
    use std::os::{
        fd::{AsRawFd as _, FromRawFd as _},
        unix::ffi::OsStrExt as _,
    };
    /// `bpf(2)` commands.
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_LINK_DETACH: libc::c_long = 34;
    /// Room for `union bpf_attr`; the kernel wants what it does not know
    /// zeroed.
    const ATTR: usize = 128;
    let error = |what: &str, e: std::io::Error| DatapathError::Pin {
        path: path.to_path_buf(),
        reason: format!("cannot {what} the pinned link: {e}"),
    };
    let name = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| error("name", std::io::Error::other(e)))?;
    let mut attr = [0u8; ATTR];
    attr[..8].copy_from_slice(&(name.as_ptr() as u64).to_ne_bytes());
    // SAFETY: `attr` is a zeroed bpf_attr with `pathname` set to a valid
    // C string that outlives the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET, attr.as_ptr(), ATTR) };
    if fd < 0 {
        return Err(error("open", std::io::Error::last_os_error()));
    }
    // SAFETY: a descriptor the kernel just gave us, closed once below.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
    let mut attr = [0u8; ATTR];
    attr[..4].copy_from_slice(&(fd.as_raw_fd() as u32).to_ne_bytes());
    // SAFETY: a zeroed bpf_attr with `link_fd` set to an open link.
    let done = unsafe { libc::syscall(libc::SYS_bpf, BPF_LINK_DETACH, attr.as_ptr(), ATTR) };
    if done < 0 {
        return Err(error("detach", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// The entries of `dir` as (name, path); `None` when it does not exist.
fn entries(dir: &Path) -> Result<Option<Vec<(OsString, PathBuf)>>, DatapathError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(DatapathError::Pin {
                path: dir.to_path_buf(),
                reason: format!("cannot list: {e}"),
            });
        }
    };
    let entries = entries
        .map(|entry| entry.map(|entry| (entry.file_name(), entry.path())))
        .collect::<Result<_, _>>()
        .map_err(|e| DatapathError::Pin {
            path: dir.to_path_buf(),
            reason: format!("cannot list: {e}"),
        })?;
    Ok(Some(entries))
}

#[cfg(test)]
mod tests {
    use balancer_common::maps::{MapKind, RING_TEMPLATE, RINGS, Sizes};

    use super::*;

    /// The maps aya-log adds to the debug variant: not the datapath's.
    const LOG_MAPS: &[&str] = &["AYA_LOGS", "AYA_LOG_BUF"];

    /// Every map `object` declares in its `.maps` section, as
    /// (name, kind, key size, value size, entries, flags).
    fn declared(object: &[u8]) -> Vec<(String, u32, u32, u32, u32, u32)> {
        let object = aya_obj::Object::parse(object).expect("the embedded object parses");
        let mut maps: Vec<_> = object
            .maps
            .iter()
            .filter(|(_, map)| matches!(map, aya_obj::Map::Btf(_)))
            .filter(|(name, _)| !LOG_MAPS.contains(&name.as_str()))
            .map(|(name, map)| {
                let inner = map.inner().map(|inner| {
                    (
                        inner.map_type(),
                        inner.key_size(),
                        inner.value_size(),
                        inner.max_entries(),
                        inner.map_flags(),
                    )
                });
                if name == RINGS {
                    let t = RING_TEMPLATE;
                    let want = (
                        t.kind.0,
                        t.key_size,
                        t.value_size,
                        t.max_entries(Sizes::DEFAULT),
                        t.flags,
                    );
                    assert_eq!(inner, Some(want), "the template of {RINGS}");
                } else {
                    assert_eq!(inner, None, "{name} has an inner map");
                }
                (
                    name.clone(),
                    map.map_type(),
                    map.key_size(),
                    map.value_size(),
                    map.max_entries(),
                    map.map_flags(),
                )
            })
            .collect();
        maps.sort();
        maps
    }

    /// What [`MAP_SPECS`] says the object declares.
    fn specified() -> Vec<(String, u32, u32, u32, u32, u32)> {
        let mut maps: Vec<_> = MAP_SPECS
            .iter()
            .map(|spec| {
                (
                    spec.name.to_owned(),
                    spec.kind.0,
                    spec.key_size,
                    spec.value_size,
                    spec.max_entries(Sizes::DEFAULT),
                    spec.flags,
                )
            })
            .collect();
        maps.sort();
        maps
    }

    #[test]
    fn the_map_specs_are_the_maps_the_program_declares() {
        for object in [super::super::OBJECT, super::super::OBJECT_LOG] {
            assert_eq!(declared(object), specified());
        }
        assert!(MAP_SPECS.iter().any(|s| s.kind == MapKind::ARRAY_OF_MAPS));
    }
}
