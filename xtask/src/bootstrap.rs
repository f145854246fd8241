//! Installs what a freshly installed machine lacks, idempotently: rust-src
//! for the nightly toolchain, bpf-linker built against the nightly's own
//! libLLVM, and the Debian packages the tests use. When everything is
//! present it only looks, which takes well under a second.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use nix::unistd::Uid;

use crate::{apt, shell};

/// bpf-linker release built here; 0.13 supports LLVM 22, the nightly's.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages the tests and the demo run: `ip`, `ethtool`, BIRD 2
/// (`bird`, `birdc`) for the BGP tests of several balancer hosts behind a
/// router (tests/src/ecmp.rs), and for the test of the Debian package
/// (tests/tests/package.rs) `man` and `systemd-analyze`.
const PACKAGES: &[(&str, &str)] = &[
    ("iproute2", "ip"),
    ("ethtool", "ethtool"),
    ("bird2", "bird"),
    ("man-db", "man"),
    ("systemd", "systemd-analyze"),
];

/// Debian packages `cargo xtask package` runs beside dpkg-deb (in dpkg,
/// always there): dpkg-shlibdeps for Depends, strip for the binary.
const PACKAGE_TOOLS: &[(&str, &str)] = &[("dpkg-dev", "dpkg-shlibdeps"), ("binutils", "strip")];

/// Debian packages the benchmarks add: the alternatives they compare
/// against (nftables, HAProxy, nginx with its stream module) and the font
/// of the plots.
const BENCH_PACKAGES: &[(&str, &str)] = &[
    ("nftables", "nft"),
    ("haproxy", "haproxy"),
    ("nginx", "nginx"),
    ("libnginx-mod-stream", "nginx"),
    ("fonts-dejavu-core", "fc-list"),
];

/// What a task needs installed.
#[derive(Clone, Copy)]
pub struct Needs {
    /// The nightly toolchain's rust-src and bpf-linker, to build the XDP
    /// program.
    pub build: bool,
    /// The Debian packages of the namespace tests and the demo.
    pub packages: bool,
    /// The Debian packages of the benchmarks.
    pub bench: bool,
    /// The tools that build the Debian package.
    pub package: bool,
}

impl Needs {
    pub const BUILD: Needs = Needs {
        build: true,
        packages: false,
        bench: false,
        package: false,
    };
    pub const ALL: Needs = Needs {
        build: true,
        packages: true,
        bench: false,
        package: true,
    };
    pub const BENCH: Needs = Needs {
        build: true,
        packages: true,
        bench: true,
        package: false,
    };
    pub const PACKAGE: Needs = Needs {
        build: true,
        packages: false,
        bench: false,
        package: true,
    };
}

/// Installs what `needs` lists and is missing. Also puts cargo's bin
/// directory on this process's `PATH`, so the commands it runs next find
/// bpf-linker.
pub fn run(needs: Needs) -> Result<()> {
    if needs.build {
        let cargo_home = cargo_home()?;
        add_to_path(&cargo_home.join("bin"));
        let nightly = Nightly::probe()?;
        ensure_rust_src(&nightly)?;
        ensure_bpf_linker(&nightly, &cargo_home)?;
    }
    if needs.packages {
        let installed = ensure_packages(PACKAGES)?;
        // The tests start their own BIRDs in their namespaces; the service
        // the package brings must not run a BGP daemon on the host.
        if installed.contains(&"bird2") && on_path("systemctl") {
            let _ = shell::probe("systemctl", ["disable", "--now", "bird"]);
        }
    }
    if needs.package {
        ensure_packages(PACKAGE_TOOLS)?;
    }
    if needs.bench {
        let installed = ensure_packages(BENCH_PACKAGES)?;
        // The benchmarks start HAProxy and nginx in namespaces of their own;
        // a package that came with them must not leave a service running
        // (or starting at boot) on the host.
        for service in ["haproxy", "nginx"] {
            if installed.contains(&service) && on_path("systemctl") {
                let _ = shell::probe("systemctl", ["disable", "--now", service]);
            }
        }
    }
    Ok(())
}

/// Facts about the installed nightly toolchain.
struct Nightly {
    sysroot: PathBuf,
    /// LLVM major version, for bpf-linker's `llvm-N` feature.
    llvm_major: String,
}

impl Nightly {
    fn probe() -> Result<Nightly> {
        let fix = "install it with `rustup toolchain install nightly --profile minimal`";
        let Some(out) = shell::probe("rustup", ["run", "nightly", "rustc", "-vV"]) else {
            bail!(
                "rustup is not installed: the XDP program is built with a nightly toolchain through rustup; install rustup from https://rustup.rs"
            );
        };
        if !out.status.success() {
            bail!(
                "there is no usable nightly toolchain ({}); {fix}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let info = String::from_utf8_lossy(&out.stdout);
        let llvm = info
            .lines()
            .find_map(|l| l.strip_prefix("LLVM version: "))
            .context("`rustc -vV` of the nightly toolchain names no LLVM version")?;
        let llvm_major = llvm.split('.').next().unwrap_or_default().to_owned();
        let sysroot = shell::probe("rustup", ["run", "nightly", "rustc", "--print", "sysroot"])
            .filter(|o| o.status.success())
            .context("cannot ask the nightly toolchain for its sysroot")?;
        Ok(Nightly {
            sysroot: PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim()),
            llvm_major,
        })
    }

    /// The toolchain's own shared libLLVM (`libLLVM.so.22.1-rust-...`).
    fn libllvm(&self) -> Result<PathBuf> {
        let lib = self.sysroot.join("lib");
        let entries =
            fs::read_dir(&lib).with_context(|| format!("cannot list {}", lib.display()))?;
        entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("libLLVM.so.") || (n.starts_with("libLLVM-") && n.ends_with(".so")))
            })
            .with_context(|| format!("the nightly toolchain ships no shared libLLVM in {}: bpf-linker cannot be built against it", lib.display()))
    }
}

fn ensure_rust_src(nightly: &Nightly) -> Result<()> {
    if nightly
        .sysroot
        .join("lib/rustlib/src/rust/library/core")
        .is_dir()
    {
        return Ok(());
    }
    eprintln!(
        "bootstrap: installing rust-src for the nightly toolchain (needed by -Z build-std=core)"
    );
    shell::run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
        .context("cannot install rust-src; try `rustup component add rust-src --toolchain nightly` by hand (it needs network access to static.rust-lang.org)")
}

/// bpf-linker links through the nightly's libLLVM, found through an rpath
/// to a directory (the "prefix") that holds links to that library. The
/// prefix is named after the library file, so a new nightly gets a new
/// prefix and a rebuild, and a stamp in it records a finished install.
fn ensure_bpf_linker(nightly: &Nightly, cargo_home: &Path) -> Result<()> {
    let libllvm = nightly.libllvm()?;
    let lib_name = libllvm
        .file_name()
        .and_then(|n| n.to_str())
        .context("libLLVM has a non-UTF-8 name")?;
    let prefix = cargo_home.join("balancer-bpf-linker").join(lib_name);
    let stamp = prefix.join("installed");
    let linker = cargo_home.join("bin").join("bpf-linker");
    let runs = shell::probe(&linker, ["--version"]).is_some_and(|o| o.status.success());
    let stamped = fs::read_to_string(&stamp).is_ok_and(|v| v.trim() == BPF_LINKER_VERSION);
    if runs && stamped {
        return Ok(());
    }
    eprintln!(
        "bootstrap: building bpf-linker {BPF_LINKER_VERSION} against the nightly's {lib_name} (about a minute)"
    );
    let lib_dir = prefix.join("lib");
    fs::create_dir_all(&lib_dir).with_context(|| format!("cannot create {}", lib_dir.display()))?;
    // The build looks for libLLVM.so; the binary asks for the soname.
    for link in ["libLLVM.so", lib_name] {
        let path = lib_dir.join(link);
        let _ = fs::remove_file(&path);
        std::os::unix::fs::symlink(&libllvm, &path)
            .with_context(|| format!("cannot link {} to {}", path.display(), libllvm.display()))?;
    }
    let mut install = shell::cargo();
    install
        .args([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--force",
        ])
        .args([
            "--no-default-features",
            "--features",
            &format!("llvm-{}", nightly.llvm_major),
        ])
        .env("LLVM_PREFIX", &prefix);
    shell::run(&mut install).context(
        "cannot build bpf-linker; it needs crates.io, gcc and the nightly toolchain's libLLVM (see the output above)",
    )?;
    let check = shell::probe(&linker, ["--version"]);
    if !check.is_some_and(|o| o.status.success()) {
        bail!(
            "bpf-linker was built but does not run: {} --version fails",
            linker.display()
        );
    }
    fs::write(&stamp, BPF_LINKER_VERSION)
        .with_context(|| format!("cannot write {}", stamp.display()))
}

/// Installs the packages of `packages` that are missing; returns those it
/// installed.
fn ensure_packages<'a>(packages: &[(&'a str, &str)]) -> Result<Vec<&'a str>> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(package, command)| !package_installed(package, command))
        .map(|(package, _)| *package)
        .collect();
    if missing.is_empty() {
        return Ok(missing);
    }
    if !Uid::effective().is_root() {
        bail!(
            "missing Debian packages {missing:?}; install them as root: `sudo apt-get install {}` (or run this task with sudo -E)",
            missing.join(" ")
        );
    }
    eprintln!("bootstrap: installing Debian packages {missing:?}");
    apt::update().context("`apt-get update` failed: are the Debian mirrors reachable?")?;
    apt::install(&missing).with_context(|| format!("cannot install {missing:?} with apt-get"))?;
    Ok(missing)
}

/// Whether a Debian package is installed; on a system without dpkg, whether
/// the command it provides is on `PATH`.
fn package_installed(package: &str, command: &str) -> bool {
    match shell::probe("dpkg-query", ["-W", "-f=${db:Status-Abbrev}", package]) {
        Some(out) => out.status.success() && String::from_utf8_lossy(&out.stdout).starts_with("ii"),
        None => on_path(command),
    }
}

fn on_path(command: &str) -> bool {
    env::var_os("PATH")
        .is_some_and(|path| env::split_paths(&path).any(|dir| dir.join(command).is_file()))
}

fn cargo_home() -> Result<PathBuf> {
    if let Some(home) = env::var_os("CARGO_HOME") {
        return Ok(PathBuf::from(home));
    }
    let home = env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cargo"))
}

fn add_to_path(dir: &Path) {
    let path = env::var_os("PATH").unwrap_or_default();
    if env::split_paths(&path).any(|p| p == dir) {
        return;
    }
    let joined = env::join_paths(std::iter::once(dir.to_path_buf()).chain(env::split_paths(&path)))
        .expect("cargo's bin directory contains no path separator");
    // SAFETY: called from `main` before any other thread is started.
    unsafe { env::set_var("PATH", joined) };
}
