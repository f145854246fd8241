//! The kernel's BPF, asked directly: one map of each kind and flags the
//! program uses, created and closed; the program itself, loaded and
//! unloaded; and the names of programs attached to interfaces.

use std::{
    os::fd::{FromRawFd as _, OwnedFd},
    path::Path,
};

use balancer_common::maps::{self, MapKind, MapSpec};

use crate::doctor::checks::kernel::{Btf, Load, MapProbe, ProbeError, VMLINUX_BTF};

/// `BPF_MAP_CREATE`.
const BPF_MAP_CREATE: libc::c_long = 0;

/// The leading fields of `union bpf_attr` that `BPF_MAP_CREATE` reads (the
/// kernel takes a shorter attribute and treats the rest as zero).
#[repr(C)]
#[derive(Default)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
    map_ifindex: u32,
    btf_fd: u32,
    btf_key_type_id: u32,
    btf_value_type_id: u32,
    btf_vmlinux_value_type_id: u32,
    map_extra: u64,
}

/// Creates a map of `spec`'s kind, key and value sizes and flags, with as
/// few entries as it may have (`inner`: the template of an array of
/// maps).
fn create(spec: &MapSpec, inner: Option<&OwnedFd>) -> Result<OwnedFd, std::io::Error> {
    use std::os::fd::AsRawFd as _;
    let max_entries = if spec.kind == MapKind::RINGBUF {
        // A ring buffer is a power of two of pages.
        // SAFETY: sysconf has no preconditions.
        (unsafe { libc::sysconf(libc::_SC_PAGESIZE) }) as u32
    } else {
        1
    };
    let attr = MapCreate {
        map_type: spec.kind.0,
        key_size: spec.key_size,
        value_size: spec.value_size,
        max_entries,
        map_flags: spec.flags,
        inner_map_fd: inner.map_or(0, |fd| fd.as_raw_fd() as u32),
        ..MapCreate::default()
    };
    // SAFETY: BPF_MAP_CREATE reads `size_of::<MapCreate>()` bytes of
    // `attr`, which lives across the call, and returns a new descriptor
    // or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            &attr as *const MapCreate,
            size_of::<MapCreate>() as u32,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor the kernel just returned, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn probe_error(error: &std::io::Error) -> ProbeError {
    ProbeError {
        message: error.to_string(),
        permission: error.raw_os_error() == Some(libc::EPERM),
    }
}

/// Creates one map of every kind and flags of [`maps::MAP_SPECS`] (and
/// the rings' template), then closes them.
pub fn map_probes() -> Vec<MapProbe> {
    let mut probes: Vec<(MapSpec, Vec<&'static str>)> = Vec::new();
    for spec in maps::MAP_SPECS.iter().chain([&maps::RING_TEMPLATE]) {
        match probes
            .iter_mut()
            .find(|(seen, _)| seen.kind == spec.kind && seen.flags == spec.flags)
        {
            Some((_, names)) => names.push(spec.name),
            None => probes.push((*spec, vec![spec.name])),
        }
    }
    probes
        .into_iter()
        .map(|(spec, names)| {
            let result = if spec.kind == MapKind::ARRAY_OF_MAPS {
                create(&maps::RING_TEMPLATE, None)
                    .and_then(|inner| create(&spec, Some(&inner)))
                    .map(drop)
            } else {
                create(&spec, None).map(drop)
            };
            MapProbe {
                kind: spec.kind,
                flags: spec.flags,
                maps: names,
                result: result.map_err(|e| probe_error(&e)),
            }
        })
        .collect()
}

/// Loads the program and frees it ([`crate::datapath::Datapath::probe_load`]).
pub fn program_load() -> Load {
    let result = crate::datapath::Datapath::probe_load().map_err(|error| {
        let mut permission = false;
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
        while let Some(err) = source {
            if let Some(io) = err.downcast_ref::<std::io::Error>() {
                permission |= io.raw_os_error() == Some(libc::EPERM);
            }
            source = err.source();
        }
        ProbeError {
            message: summarize(&crate::logging::error_chain(&error)),
            permission,
        }
    });
    match result {
        Ok(()) => Load::Loaded,
        Err(error) => Load::Refused(error),
    }
}

/// An error chain of at most a few lines: a verifier log runs to
/// thousands, and its last lines say what it refused.
fn summarize(chain: &str) -> String {
    let lines: Vec<&str> = chain.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.len() <= 6 {
        return lines.join(" / ");
    }
    format!(
        "{} / ... / {}",
        lines[..2].join(" / "),
        lines[lines.len() - 3..].join(" / ")
    )
}

/// Whether the kernel's BTF is there and parses.
pub fn btf() -> Btf {
    match aya::Btf::from_sys_fs() {
        Ok(_) => Btf::Present,
        Err(_) if !Path::new(VMLINUX_BTF).exists() => Btf::Missing("no such file".to_owned()),
        Err(error) => Btf::Missing(error.to_string()),
    }
}

/// The kernel's name of program `id`, when it can be read.
pub fn program_name(id: u32) -> Option<String> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|info| info.id() == id)
        .and_then(|info| info.name_as_str().map(str::to_owned))
}

/// The program of the link pinned at `path`, if a link is pinned there.
pub fn pinned_link_program(path: &Path) -> Option<u32> {
    let link = aya::programs::links::PinnedLink::from_pin(path).ok()?;
    let link: aya::programs::links::FdLink = link.into();
    link.info().ok().map(|info| info.program_id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_error_chains_keep_their_head_and_tail() {
        assert_eq!(summarize("a\nb"), "a / b");
        let log: String = (0..100).map(|i| format!("line {i}\n")).collect();
        assert_eq!(
            summarize(&format!("failed to load: {log}")),
            "failed to load: line 0 / line 1 / ... / line 97 / line 98 / line 99"
        );
    }

    #[test]
    fn the_map_create_attribute_has_the_kernels_layout() {
        // map_extra is the last field this reads, at byte 64 of bpf_attr.
        assert_eq!(std::mem::offset_of!(MapCreate, map_name), 28);
        assert_eq!(std::mem::offset_of!(MapCreate, map_extra), 64);
    }
}
