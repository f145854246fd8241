//! The typed layer over the XDP program: loading the embedded object,
//! attaching it to interfaces, writing its maps ([`write`]) and reading its
//! counters ([`counters`]), and running it on a packet through
//! BPF_PROG_TEST_RUN ([`test_run_xdp`], which the benchmarks' own programs
//! use too).
//!
//! Nothing else in the daemon touches the BPF object or its maps.

mod access;
pub mod batch;
mod counters;
mod flows;
mod limits;
mod load;
mod mapped;
mod nat;
pub mod pin;
mod shared;
mod test_run;
mod write;
mod writes;

use std::{collections::BTreeMap, fmt};

use aya::{
    Ebpf, EbpfLoader,
    maps::ProgramArray,
    programs::{
        ProgramError, Xdp,
        xdp::{XdpLinkId, XdpMode as AyaXdpMode},
    },
};
use balancer_common::{NAT_PROGRAM, XDP_PROGRAM, maps};
use thiserror::Error;

pub use counters::{AllCounters, Pinned, Reasons};
pub use flows::now_ns;
pub use shared::{FlowEvents, Inserted};
pub use test_run::{TestOutput, action, test_run_xdp};
pub use write::{RINGS_PER_BATCH, VipSlot, ring_map};
pub use writes::{Write, Writer};

/// The XDP object built by build.rs from balancer-ebpf.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/balancer-xdp"));
/// The debug variant, which logs every decision through aya-log.
static OBJECT_LOG: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/log/balancer-xdp"));

/// How the operator asks for the program to be attached: `[datapath]
/// xdp_mode` in the file, `--xdp-mode` on the command line, by the same
/// names (auto, native, generic).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum XdpMode {
    /// Native (driver) mode, and generic mode if the driver refuses.
    #[default]
    Auto,
    /// Native (driver) mode only: fail if the driver has no XDP support.
    Native,
    /// Generic (skb) mode: works on every device, slower.
    Generic,
}

/// The mode a program was actually attached in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachedMode {
    /// Run by the driver, before any socket buffer exists.
    Native,
    /// Run by the kernel's network stack on socket buffers.
    Generic,
    /// A pinned link of a previous daemon, whose program was replaced in
    /// place: the mode it was created in holds.
    Adopted,
}

/// How the program holds an interface.
enum Link {
    /// A link the program owns: dropping the program detaches it.
    Owned(XdpLinkId),
    /// A link pinned under the pin directory: it stays attached when the
    /// daemon exits, until `balancer teardown`.
    Pinned(aya::programs::links::FdLink),
}

impl fmt::Display for AttachedMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttachedMode::Native => "native",
            AttachedMode::Generic => "generic",
            AttachedMode::Adopted => "adopted",
        })
    }
}

/// An error of the datapath layer, naming the object it concerns.
#[derive(Debug, Error)]
pub enum DatapathError {
    #[error("failed to load the embedded XDP object")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("failed to read the decision log of the XDP program")]
    Log(#[source] Box<aya_log::Error>),
    #[error("the XDP object has no program named {name}")]
    MissingProgram { name: &'static str },
    #[error("the XDP object has no map named {name}")]
    MissingMap { name: &'static str },
    #[error("failed to {action} the XDP program")]
    Program {
        action: &'static str,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("failed to attach the XDP program to {interface} in {mode} mode")]
    Attach {
        interface: String,
        mode: AttachedMode,
        #[source]
        source: Box<ProgramError>,
    },
    #[error(
        "failed to attach the XDP program to {interface}: native mode failed ({native}), then generic mode failed"
    )]
    AttachAuto {
        interface: String,
        native: String,
        #[source]
        generic: Box<ProgramError>,
    },
    #[error("the XDP program is already attached to {interface}")]
    AlreadyAttached { interface: String },
    #[error("the XDP program is not attached to {interface}")]
    NotAttached { interface: String },
    #[error("failed to {action} map {name}")]
    Map {
        action: &'static str,
        name: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("failed to let the XDP program redirect to interface {ifindex}")]
    Egress {
        ifindex: u32,
        #[source]
        source: Box<aya::maps::xdp::XdpMapError>,
    },
    #[error("pinned state at {path}: {reason}")]
    Pin {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("failed to swap the rings of {vips} VIPs into the rings map")]
    RingSwap {
        vips: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to fill a ring map of {slots} slots")]
    RingFill {
        slots: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("ring of {len} slots does not match the configured ring size {expected}")]
    RingSize { len: usize, expected: u32 },
    #[error("list of {len} slots is not one length slot and 1 to {max} entries")]
    ListSize { len: usize, max: u32 },
    #[error("failed to map the memory of map {name}")]
    MapMemory {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to read map {name} in batches")]
    MapBatch {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {value} is out of range (at most {max})")]
    OutOfRange {
        what: &'static str,
        value: u32,
        max: u32,
    },
}

impl DatapathError {
    pub(crate) fn map(
        action: &'static str,
        name: &'static str,
    ) -> impl FnOnce(aya::maps::MapError) -> DatapathError {
        move |source| DatapathError::Map {
            action,
            name,
            source: Box::new(source),
        }
    }
}

/// The outcome of removing a key from map `name` whose entry the datapath
/// may have taken out meanwhile (evicted, or replaced): a key already gone
/// is not an error. aya reports it as the syscall's ENOENT, not as
/// `MapError::KeyNotFound`.
fn removed(
    name: &'static str,
    result: Result<(), aya::maps::MapError>,
) -> Result<(), DatapathError> {
    match result {
        Err(aya::maps::MapError::SyscallError(e))
            if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        other => other.map_err(DatapathError::map("remove from", name)),
    }
}

/// Entries of each preallocated hash table when the program is only
/// loaded to see whether the kernel takes it ([`Datapath::probe_load`]).
pub const PROBE_TABLE_ENTRIES: u32 = 1024;

/// What is fixed when the program is loaded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadOptions {
    /// Entries of the connection table.
    pub flow_table_size: u32,
    /// Entries of each main NAT table.
    pub nat_table_size: u32,
    /// Load the debug variant, which logs every decision through aya-log
    /// (see [`Datapath::take_logger`]). Slower: for troubleshooting only.
    pub decision_log: bool,
    /// Pin every map and link under this bpffs directory, adopting what a
    /// previous daemon pinned there (see [`pin`]).
    pub pin_dir: Option<std::path::PathBuf>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            flow_table_size: maps::DEFAULT_FLOWS,
            nat_table_size: maps::DEFAULT_NAT_ENTRIES,
            decision_log: false,
            pin_dir: None,
        }
    }
}

/// Reads the debug variant's log records and passes them to the `log`
/// crate (which `tracing` picks up). Drive it with [`DecisionLog::flush`]
/// whenever its file descriptor is readable.
pub type DecisionLog = aya_log::EbpfLogger<&'static dyn log::Log>;

/// The loaded XDP program and its maps. Dropping it detaches the program
/// from every interface it was attached to and frees it.
pub struct Datapath {
    ebpf: Ebpf,
    /// Where links are pinned (and maps), if anywhere.
    pin_dir: Option<std::path::PathBuf>,
    logger: Option<DecisionLog>,
    links: BTreeMap<String, (Link, AttachedMode)>,
    /// Ring size of the settings last written; every ring must have it.
    ring_size: u32,
    /// The mapping of `backend_load`.
    loads: load::Loads,
}

impl Datapath {
    /// Loads the embedded object with default sizes.
    pub fn load() -> Result<Self, DatapathError> {
        Self::load_with(LoadOptions::default())
    }

    /// Loads the embedded object into the kernel (verifier included), ready
    /// to be configured and attached.
    pub fn load_with(options: LoadOptions) -> Result<Self, DatapathError> {
        let object = if options.decision_log {
            OBJECT_LOG
        } else {
            OBJECT
        };
        let mut loader = EbpfLoader::new();
        let sizes = maps::Sizes {
            flows: options.flow_table_size,
            nat: options.nat_table_size,
        };
        loader.map_max_entries(maps::FLOWS, sizes.flows);
        loader.map_max_entries(maps::NAT_FLOWS, sizes.nat);
        loader.map_max_entries(maps::NAT_BACK, sizes.nat);
        let mut adopted = false;
        let pin_paths: Vec<(&'static str, std::path::PathBuf)> = match &options.pin_dir {
            Some(dir) => {
                pin::prepare(dir)?;
                adopted = pin::check_compatible(dir, sizes)?;
                maps::MAP_SPECS
                    .iter()
                    .map(|spec| (spec.name, dir.join(spec.name)))
                    .collect()
            }
            None => Vec::new(),
        };
        for (name, path) in &pin_paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader
            .load(object)
            .map_err(|err| DatapathError::Load(Box::new(err)))?;
        if adopted {
            tracing::info!("adopted the pinned maps: established flows and counters carry on");
        }
        if let Some(dir) = &options.pin_dir {
            pin::remove_obsolete(dir)?;
        }
        let logger = if options.decision_log {
            Some(DecisionLog::init(&mut ebpf).map_err(|err| DatapathError::Log(Box::new(err)))?)
        } else {
            None
        };
        load_programs(&mut ebpf)?;
        let loads = load::Loads::map(&ebpf)?;
        Ok(Datapath {
            ebpf,
            pin_dir: options.pin_dir.clone(),
            logger,
            links: BTreeMap::new(),
            ring_size: 0,
            loads,
        })
    }

    /// Loads the embedded program into the kernel, verifier included, and
    /// frees it at once: whether this kernel takes every map, flag and
    /// helper the program uses (`balancer doctor`). The preallocated hash
    /// tables are shrunk to [`PROBE_TABLE_ENTRIES`] entries, which the
    /// verifier does not see, so the probe costs a few MiB for a moment;
    /// nothing is pinned or attached.
    pub fn probe_load() -> Result<(), DatapathError> {
        let mut loader = EbpfLoader::new();
        for name in [
            maps::FLOWS,
            maps::HANDSHAKES,
            maps::PERSIST,
            maps::FRAGMENTS,
            maps::NAT_FLOWS,
            maps::NAT_BACK,
            maps::NAT_OPEN,
            maps::NAT_OPEN_BACK,
        ] {
            loader.map_max_entries(name, PROBE_TABLE_ENTRIES);
        }
        let mut ebpf = loader
            .load(OBJECT)
            .map_err(|err| DatapathError::Load(Box::new(err)))?;
        load_programs(&mut ebpf)
    }

    /// Attaches the program to `interface` in the requested mode and returns
    /// the mode it runs in. With [`XdpMode::Auto`], native mode is tried
    /// first and generic mode is used if the driver refuses.
    pub fn attach(
        &mut self,
        interface: &str,
        mode: XdpMode,
    ) -> Result<AttachedMode, DatapathError> {
        if self.links.contains_key(interface) {
            return Err(DatapathError::AlreadyAttached {
                interface: interface.to_owned(),
            });
        }
        let pin = self
            .pin_dir
            .as_ref()
            .map(|dir| pin::link_path(dir, interface));
        if let Some(path) = pin.as_ref().filter(|p| p.exists()) {
            return self.adopt(interface, path);
        }
        let prog = program(&mut self.ebpf)?;
        let attach = |prog: &mut Xdp, mode: AttachedMode| {
            let flags = match mode {
                AttachedMode::Native => AyaXdpMode::Driver,
                AttachedMode::Generic | AttachedMode::Adopted => AyaXdpMode::Skb,
            };
            prog.attach(interface, flags)
        };
        let (link, attached) = match mode {
            XdpMode::Native | XdpMode::Generic => {
                let wanted = if mode == XdpMode::Native {
                    AttachedMode::Native
                } else {
                    AttachedMode::Generic
                };
                let link = attach(prog, wanted).map_err(|source| DatapathError::Attach {
                    interface: interface.to_owned(),
                    mode: wanted,
                    source: Box::new(source),
                })?;
                (link, wanted)
            }
            XdpMode::Auto => match attach(prog, AttachedMode::Native) {
                Ok(link) => (link, AttachedMode::Native),
                Err(native) => {
                    tracing::warn!(
                        interface,
                        error = crate::logging::error_chain(&native),
                        "native XDP refused, trying generic mode"
                    );
                    let link = attach(prog, AttachedMode::Generic).map_err(|generic| {
                        DatapathError::AttachAuto {
                            interface: interface.to_owned(),
                            native: crate::logging::error_chain(&native),
                            generic: Box::new(generic),
                        }
                    })?;
                    (link, AttachedMode::Generic)
                }
            },
        };
        let link = match pin {
            None => Link::Owned(link),
            Some(path) => {
                let prog = program(&mut self.ebpf)?;
                let owned = prog
                    .take_link(link)
                    .map_err(|source| DatapathError::Program {
                        action: "take the link of",
                        source: Box::new(source),
                    })?;
                let fd_link = aya::programs::links::FdLink::try_from(owned).map_err(|e| {
                    DatapathError::Pin {
                        path: path.clone(),
                        reason: format!("the link of {interface} cannot be pinned: {e}"),
                    }
                })?;
                let pinned = fd_link.pin(&path).map_err(|e| DatapathError::Pin {
                    path: path.clone(),
                    reason: format!("cannot pin the link of {interface}: {e}"),
                })?;
                Link::Pinned(pinned.into())
            }
        };
        self.links.insert(interface.to_owned(), (link, attached));
        Ok(attached)
    }

    /// Takes over the link a previous daemon pinned for `interface`: the
    /// new program replaces the old one in place (one atomic update), and
    /// the link stays pinned.
    fn adopt(
        &mut self,
        interface: &str,
        path: &std::path::Path,
    ) -> Result<AttachedMode, DatapathError> {
        let pin_error = |reason: String| DatapathError::Pin {
            path: path.to_path_buf(),
            reason,
        };
        let pinned = aya::programs::links::PinnedLink::from_pin(path)
            .map_err(|e| pin_error(format!("cannot open the pinned link of {interface}: {e}")))?;
        let fd_link: aya::programs::links::FdLink = pinned.into();
        let xdp_link = aya::programs::xdp::XdpLink::try_from(fd_link).map_err(|e| {
            pin_error(format!(
                "the pinned link of {interface} is not an XDP link: {e}"
            ))
        })?;
        let prog = program(&mut self.ebpf)?;
        let id = prog
            .attach_to_link(xdp_link)
            .map_err(|source| DatapathError::Program {
                action: "replace in place",
                source: Box::new(source),
            })?;
        let owned = prog
            .take_link(id)
            .map_err(|source| DatapathError::Program {
                action: "take the link of",
                source: Box::new(source),
            })?;
        let fd_link = aya::programs::links::FdLink::try_from(owned)
            .map_err(|e| pin_error(format!("the link of {interface}: {e}")))?;
        self.links.insert(
            interface.to_owned(),
            (Link::Pinned(fd_link), AttachedMode::Adopted),
        );
        Ok(AttachedMode::Adopted)
    }

    /// Whether the program's links are pinned (they outlive the daemon).
    pub fn is_pinned(&self) -> bool {
        self.pin_dir.is_some()
    }

    /// The decision log of the debug variant (once; `None` for the default
    /// program).
    pub fn take_logger(&mut self) -> Option<DecisionLog> {
        self.logger.take()
    }

    /// Detaches the program from `interface`.
    pub fn detach(&mut self, interface: &str) -> Result<(), DatapathError> {
        let (link, _) = self
            .links
            .remove(interface)
            .ok_or_else(|| DatapathError::NotAttached {
                interface: interface.to_owned(),
            })?;
        match link {
            Link::Owned(id) => {
                program(&mut self.ebpf)?
                    .detach(id)
                    .map_err(|source| DatapathError::Program {
                        action: "detach",
                        source: Box::new(source),
                    })
            }
            Link::Pinned(fd_link) => {
                // Unpinned and closed, the link goes and the program with it.
                if let Some(dir) = &self.pin_dir {
                    let _ = std::fs::remove_file(pin::link_path(dir, interface));
                }
                drop(fd_link);
                Ok(())
            }
        }
    }

    /// The loaded program's tag: the kernel's hash of its instructions,
    /// as `bpftool prog` shows it, which tells which build is running.
    pub fn program_tag(&self) -> Result<u64, DatapathError> {
        let program = self
            .ebpf
            .program(XDP_PROGRAM)
            .ok_or(DatapathError::MissingProgram { name: XDP_PROGRAM })?;
        let info = program.info().map_err(|source| DatapathError::Program {
            action: "describe",
            source: Box::new(source),
        })?;
        Ok(info.tag())
    }

    /// The interfaces the program is attached to, with their modes.
    pub fn attachments(&self) -> impl Iterator<Item = (&str, AttachedMode)> {
        self.links
            .iter()
            .map(|(interface, (_, mode))| (interface.as_str(), *mode))
    }

    /// Runs the program once on `packet` through BPF_PROG_TEST_RUN, as if
    /// it arrived on interface `ingress_ifindex` (0: the kernel's choice,
    /// loopback), and returns the verdict, the packet as the program left
    /// it, and the run time the kernel measured. This is how the datapath's
    /// behaviour is tested byte for byte, and how it is benchmarked.
    pub fn test_run(
        &mut self,
        packet: &[u8],
        ingress_ifindex: u32,
    ) -> Result<TestOutput, DatapathError> {
        test_run_xdp(program(&mut self.ebpf)?, packet, ingress_ifindex).map_err(|source| {
            DatapathError::Program {
                action: "test-run",
                source: Box::new(source),
            }
        })
    }
}

/// The balancer's XDP program in a loaded object.
fn program(ebpf: &mut Ebpf) -> Result<&mut Xdp, DatapathError> {
    named(ebpf, XDP_PROGRAM)
}

/// The XDP program `name` of the object.
fn named<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp, DatapathError> {
    ebpf.program_mut(name)
        .ok_or(DatapathError::MissingProgram { name })?
        .try_into()
        .map_err(|source| DatapathError::Program {
            action: "look up",
            source: Box::new(source),
        })
}

/// Loads the object's programs, verifier included: the NAT program first,
/// put in its slot of `programs` (a pinned array keeps the slot, so a
/// running datapath takes a new daemon's NAT program at once), then the
/// main one.
fn load_programs(ebpf: &mut Ebpf) -> Result<(), DatapathError> {
    let load = |source| DatapathError::Program {
        action: "load",
        source: Box::new(source),
    };
    let nat = named(ebpf, NAT_PROGRAM)?;
    nat.load().map_err(load)?;
    let fd = nat
        .fd()
        .map_err(load)?
        .try_clone()
        .map_err(|err| load(err.into()))?;
    let map = |action, source| DatapathError::Map {
        action,
        name: maps::PROGRAMS,
        source: Box::new(source),
    };
    let mut programs: ProgramArray<_> = ebpf
        .map_mut(maps::PROGRAMS)
        .ok_or(DatapathError::MissingMap {
            name: maps::PROGRAMS,
        })?
        .try_into()
        .map_err(|err| map("open", err))?;
    programs
        .set(maps::PROGRAM_NAT, &fd, 0)
        .map_err(|err| map("write", err))?;
    program(ebpf)?.load().map_err(load)
}
