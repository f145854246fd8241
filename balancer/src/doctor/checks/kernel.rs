//! The kernel: its version, its BTF, the map types the program uses and
//! the program itself.
//!
//! The version is only a hint (distributions backport BPF features into
//! older version numbers): what decides is what the kernel does when
//! asked, so each map type is created for real and the program itself is
//! loaded through the verifier. The version and BTF findings are made
//! milder when the program loads all the same.

use balancer_common::maps::{self, MapKind};

use super::Finding;

/// The oldest kernel that has everything the program uses; the newest of
/// [`FEATURES`].
pub const MIN_KERNEL: (u32, u32) = (5, 11);

/// The kernel the project is tested on.
pub const TESTED_KERNEL: &str = "6.18";

/// What the program needs from the kernel, newest first, with the release
/// that brought it: a kernel below [`MIN_KERNEL`] is told what it lacks.
pub const FEATURES: [((u32, u32), &str); 6] = [
    ((5, 11), "bpf_ktime_get_coarse_ns, the flows' clock"),
    (
        (5, 10),
        "inner maps of any size (BPF_F_INNER_MAP), the rings of different sizes",
    ),
    ((5, 8), "BPF ring buffers, the flows shared with peers"),
    ((5, 5), "mmap-able arrays, the rings and backend loads"),
    ((5, 4), "devmap hash, the redirect targets"),
    ((4, 10), "per-CPU LRU hash maps and bpf_xdp_adjust_head"),
];

/// `major.minor` of a release string such as `6.18.44-fc-v1272`.
pub fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The kernel's release against [`MIN_KERNEL`]; `program_loads` is the
/// outcome of the real load ([`program`]; `None` when it was not tried),
/// which decides between a warning (features backported) and a failure.
pub fn version(release: &str, program_loads: Option<bool>) -> Finding {
    const CHECK: &str = "kernel";
    let (min_major, min_minor) = MIN_KERNEL;
    let upgrade = format!("run Linux {min_major}.{min_minor} or later (tested on {TESTED_KERNEL})");
    let Some(found) = parse_release(release) else {
        return Finding::warn(
            CHECK,
            release,
            "cannot read a version from the release: the probes below decide",
            upgrade,
        );
    };
    if found >= MIN_KERNEL {
        return Finding::ok(
            CHECK,
            release,
            format!(
                "Linux {}.{}: {min_major}.{min_minor} or later, as the program needs (tested on {TESTED_KERNEL})",
                found.0, found.1
            ),
        );
    }
    let lacks: Vec<&str> = FEATURES
        .iter()
        .filter(|(since, _)| *since > found)
        .map(|(_, what)| *what)
        .collect();
    let message = format!(
        "Linux {}.{} is older than {min_major}.{min_minor}, which brought {}",
        found.0,
        found.1,
        lacks.join("; ")
    );
    if program_loads == Some(true) {
        Finding::warn(
            CHECK,
            release,
            format!("{message}; the program loads here all the same (backported?), untested"),
            upgrade,
        )
    } else {
        Finding::fail(CHECK, release, message, upgrade)
    }
}

/// Where the kernel's own BTF is.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// What is at [`VMLINUX_BTF`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Btf {
    /// Present and parsed.
    Present,
    /// Absent, or unreadable: why.
    Missing(String),
}

/// The kernel's BTF, which the loader uses to relocate the program to the
/// running kernel's types. The program loads without it where it needs no
/// such relocation, so a missing BTF fails only together with the load
/// (`program_loads`, `None` when it was not tried).
pub fn btf(state: &Btf, program_loads: Option<bool>) -> Finding {
    const CHECK: &str = "btf";
    const FIX: &str = "run a kernel built with CONFIG_DEBUG_INFO_BTF=y";
    match state {
        Btf::Present => Finding::ok(CHECK, VMLINUX_BTF, "the kernel's BTF is there"),
        Btf::Missing(why) if program_loads == Some(true) => Finding::warn(
            CHECK,
            VMLINUX_BTF,
            format!(
                "no kernel BTF ({why}): the program loads without it here, but kernels without BTF are not tested"
            ),
            FIX,
        ),
        Btf::Missing(why) if program_loads.is_none() => Finding::warn(
            CHECK,
            VMLINUX_BTF,
            format!(
                "no kernel BTF ({why}), and the program was not loaded to see whether it needs it"
            ),
            FIX,
        ),
        Btf::Missing(why) => Finding::fail(
            CHECK,
            VMLINUX_BTF,
            format!("no kernel BTF ({why}), and the program does not load"),
            FIX,
        ),
    }
}

/// Why a probe of the kernel failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeError {
    /// What the kernel said.
    pub message: String,
    /// It said EPERM: doctor lacks the privileges, the kernel may be fine.
    pub permission: bool,
}

/// The outcome of creating one kind of map the program uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapProbe {
    pub kind: MapKind,
    /// The `map_flags` the program creates it with: probed too, since some
    /// came later than the type (mmap-able arrays).
    pub flags: u32,
    /// The program's maps of this kind and flags.
    pub maps: Vec<&'static str>,
    pub result: Result<(), ProbeError>,
}

/// A map kind and flags as a person names them, and the release that
/// brought the pair.
pub fn describe(kind: MapKind, flags: u32) -> (String, (u32, u32)) {
    let (name, since) = match kind {
        MapKind::HASH => ("hash", (3, 19)),
        MapKind::ARRAY if flags & maps::BPF_F_INNER_MAP != 0 => {
            ("array (inner map of any size, mmap-able)", (5, 10))
        }
        MapKind::ARRAY if flags & maps::BPF_F_MMAPABLE != 0 => ("array (mmap-able)", (5, 5)),
        MapKind::ARRAY => ("array", (3, 19)),
        MapKind::PERCPU_ARRAY => ("per-CPU array", (4, 6)),
        MapKind::PROG_ARRAY => ("program array", (4, 2)),
        MapKind::LRU_HASH if flags & maps::BPF_F_NO_COMMON_LRU != 0 => {
            ("LRU hash (per-CPU lists)", (4, 10))
        }
        MapKind::LRU_HASH => ("LRU hash", (4, 10)),
        MapKind::LPM_TRIE => ("LPM trie", (4, 11)),
        MapKind::ARRAY_OF_MAPS => ("array of maps", (4, 12)),
        MapKind::DEVMAP_HASH => ("devmap hash", (5, 4)),
        MapKind::RINGBUF => ("ring buffer", (5, 8)),
        MapKind(other) => return (format!("map type {other}"), MIN_KERNEL),
    };
    (name.to_owned(), since)
}

/// The map types (with their flags) the program creates: one finding for
/// all when the kernel created every one, else one failure per refused
/// kind.
pub fn map_types(probes: &[MapProbe]) -> Vec<Finding> {
    const CHECK: &str = "map-types";
    let refused: Vec<Finding> = probes
        .iter()
        .filter_map(|probe| {
            let error = probe.result.as_ref().err()?;
            let (name, (major, minor)) = describe(probe.kind, probe.flags);
            let fix = if error.permission {
                "run doctor as root (or with CAP_BPF and CAP_SYS_ADMIN)".to_owned()
            } else {
                format!("run Linux {major}.{minor} or later, with CONFIG_BPF_SYSCALL")
            };
            Some(Finding::fail(
                CHECK,
                name.clone(),
                format!(
                    "the kernel refuses to create a {name} map ({}), which the program's {} need",
                    error.message,
                    probe.maps.join(", ")
                ),
                fix,
            ))
        })
        .collect();
    if !refused.is_empty() {
        return refused;
    }
    let names: Vec<String> = probes.iter().map(|p| describe(p.kind, p.flags).0).collect();
    vec![Finding::ok(
        CHECK,
        format!("{} kinds", probes.len()),
        format!(
            "the kernel creates every kind of map the program uses: {}",
            names.join(", ")
        ),
    )]
}

/// The outcome of loading the program to see whether the kernel takes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Load {
    Loaded,
    Refused(ProbeError),
    /// Not tried: why.
    NotTried(String),
}

impl Load {
    /// Whether the program loaded; `None` when it was not tried.
    pub fn loads(&self) -> Option<bool> {
        match self {
            Load::Loaded => Some(true),
            Load::Refused(_) => Some(false),
            Load::NotTried(_) => None,
        }
    }
}

/// The program through the kernel's verifier, loaded and unloaded without
/// being attached: the one probe that covers every helper and map flag it
/// uses on this very kernel.
pub fn program(load: &Load) -> Finding {
    const CHECK: &str = "program";
    let subject = balancer_common::XDP_PROGRAM;
    match load {
        Load::Loaded => Finding::ok(
            CHECK,
            subject,
            "the kernel loads the XDP program (verified, then unloaded; nothing attached)",
        ),
        Load::NotTried(why) => Finding::warn(
            CHECK,
            subject,
            format!("the XDP program was not loaded: {why}"),
            "run doctor where it has the memory the daemon would have (see the memory check)",
        ),
        Load::Refused(error) if error.permission => Finding::fail(
            CHECK,
            subject,
            format!("cannot load the XDP program: {}", error.message),
            "run doctor as root (or with CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN)",
        ),
        Load::Refused(error) => Finding::fail(
            CHECK,
            subject,
            format!("the kernel refuses the XDP program: {}", error.message),
            format!(
                "run Linux {}.{} or later with BPF, BTF and XDP; the kernel's words above name what it lacks",
                MIN_KERNEL.0, MIN_KERNEL.1
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::checks::{Level, table::expect};

    #[test]
    fn releases_are_read_to_major_and_minor() {
        for (release, expected) in [
            ("6.18.44-fc-v1272", Some((6, 18))),
            ("5.11.0", Some((5, 11))),
            ("4.18.0-553.el8_10.x86_64", Some((4, 18))),
            ("6.1", Some((6, 1))),
            ("6", None),
            ("linux", None),
            ("", None),
        ] {
            assert_eq!(parse_release(release), expected, "{release}");
        }
    }

    #[test]
    fn the_version_decides_with_the_load() {
        let rows = [
            (
                "6.18.44-fc-v1272",
                Some(true),
                Level::Ok,
                "Linux 6.18: 5.11 or later",
                None,
            ),
            ("5.11.0", None, Level::Ok, "5.11 or later", None),
            // Only the time helper is missing from 5.10.
            (
                "5.10.0",
                Some(false),
                Level::Fail,
                "5.10 is older than 5.11, which brought bpf_ktime_get_coarse_ns, the flows' clock",
                Some("Linux 5.11 or later"),
            ),
            (
                "5.4.0",
                Some(false),
                Level::Fail,
                "BPF ring buffers",
                Some("5.11"),
            ),
            // Not tried: nothing vouches for the old kernel.
            ("5.4.0", None, Level::Fail, "BPF ring buffers", Some("5.11")),
            // A distribution kernel with the features backported.
            (
                "4.18.0-553.el8_10.x86_64",
                Some(true),
                Level::Warn,
                "the program loads here all the same",
                Some("5.11"),
            ),
            (
                "weird",
                Some(true),
                Level::Warn,
                "cannot read a version",
                Some("5.11"),
            ),
            (
                "weird",
                Some(false),
                Level::Warn,
                "the probes below decide",
                Some("5.11"),
            ),
        ];
        for (release, loads, level, message, fix) in rows {
            expect(release, &version(release, loads), level, message, fix);
        }
        let old = version("5.4.0", Some(false)).message;
        assert!(
            !old.contains("devmap hash") && old.contains("mmap-able arrays"),
            "5.4 has the devmap hash, not mmap-able arrays: {old}"
        );
    }

    #[test]
    fn missing_btf_fails_only_with_the_load() {
        let missing = Btf::Missing("No such file or directory".to_owned());
        let rows = [
            (&Btf::Present, Some(true), Level::Ok, "BTF is there", None),
            (
                &missing,
                Some(true),
                Level::Warn,
                "no kernel BTF (No such file or directory): the program loads without it",
                Some("CONFIG_DEBUG_INFO_BTF=y"),
            ),
            (
                &missing,
                Some(false),
                Level::Fail,
                "the program does not load",
                Some("CONFIG_DEBUG_INFO_BTF=y"),
            ),
            (
                &missing,
                None,
                Level::Warn,
                "the program was not loaded",
                Some("CONFIG_DEBUG_INFO_BTF=y"),
            ),
        ];
        for (state, loads, level, message, fix) in rows {
            expect(
                &format!("{state:?} {loads:?}"),
                &btf(state, loads),
                level,
                message,
                fix,
            );
        }
    }

    fn probe(kind: MapKind, flags: u32, result: Result<(), ProbeError>) -> MapProbe {
        MapProbe {
            kind,
            flags,
            maps: vec!["flows", "handshakes"],
            result,
        }
    }

    #[test]
    fn a_refused_map_kind_fails_naming_its_maps_and_release() {
        let refused = |permission| {
            Err(ProbeError {
                message: "Invalid argument".to_owned(),
                permission,
            })
        };
        let lru = maps::BPF_F_NO_COMMON_LRU;
        let all_ok = map_types(&[
            probe(MapKind::HASH, 0, Ok(())),
            probe(MapKind::LRU_HASH, lru, Ok(())),
        ]);
        assert_eq!(all_ok.len(), 1);
        expect(
            "all created",
            &all_ok[0],
            Level::Ok,
            "every kind of map the program uses: hash, LRU hash (per-CPU lists)",
            None,
        );
        let one_refused = map_types(&[
            probe(MapKind::HASH, 0, Ok(())),
            probe(MapKind::RINGBUF, 0, refused(false)),
        ]);
        assert_eq!(one_refused.len(), 1, "{one_refused:?}");
        expect(
            "ring buffer refused",
            &one_refused[0],
            Level::Fail,
            "refuses to create a ring buffer map (Invalid argument), which the program's flows, handshakes need",
            Some("Linux 5.8 or later"),
        );
        let denied = map_types(&[probe(MapKind::ARRAY, maps::RING_FLAGS, refused(true))]);
        expect(
            "no privilege",
            &denied[0],
            Level::Fail,
            "array (inner map of any size, mmap-able)",
            Some("run doctor as root"),
        );
    }

    #[test]
    fn every_map_kind_of_the_program_has_a_name_and_release() {
        for spec in maps::MAP_SPECS.iter().chain([&maps::RING_TEMPLATE]) {
            let (name, since) = describe(spec.kind, spec.flags);
            assert!(!name.starts_with("map type"), "{}: {name}", spec.name);
            assert!(
                since <= MIN_KERNEL,
                "{}: {since:?} is newer than MIN_KERNEL",
                spec.name
            );
        }
    }

    #[test]
    fn the_program_load_decides_the_program_check() {
        let error = |permission| ProbeError {
            message: "invalid argument: R1 invalid mem access".to_owned(),
            permission,
        };
        let rows = [
            (
                Load::Loaded,
                Level::Ok,
                "the kernel loads the XDP program",
                None,
            ),
            (
                Load::NotTried("the memory cgroup has 50.0 MiB left".to_owned()),
                Level::Warn,
                "was not loaded: the memory cgroup has 50.0 MiB left",
                Some("see the memory check"),
            ),
            (
                Load::Refused(error(false)),
                Level::Fail,
                "refuses the XDP program: invalid argument: R1 invalid mem access",
                Some("Linux 5.11 or later"),
            ),
            (
                Load::Refused(error(true)),
                Level::Fail,
                "cannot load the XDP program",
                Some("run doctor as root"),
            ),
        ];
        for (result, level, message, fix) in rows {
            expect(
                &format!("{result:?}"),
                &program(&result),
                level,
                message,
                fix,
            );
        }
    }
}
