//! Builds an eBPF crate of this workspace from a build script: checks that
//! the nightly toolchain has what the BPF target needs (with the fix when
//! it does not), then has aya-build compile the crate's binaries for
//! bpfel-unknown-none and copy each object into `$OUT_DIR` under its binary
//! name, where `include_bytes_aligned!` embeds it.
//!
//! balancer's build script builds the XDP program with it, balancer-bench's
//! the benchmarks' programs.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use aya_build::{Package, Toolchain};

/// One build of the crate: the features it is built with, and the
/// subdirectory of `$OUT_DIR` its objects land in (`""`: `$OUT_DIR`
/// itself). A variant needs a directory of its own because aya-build names
/// the objects after their binaries only.
pub struct Variant<'a> {
    pub out_subdir: &'a str,
    pub features: &'a [&'a str],
}

impl Variant<'_> {
    /// The crate with its default features, into `$OUT_DIR`.
    pub const DEFAULT: Variant<'static> = Variant {
        out_subdir: "",
        features: &[],
    };
}

/// Builds every binary of eBPF package `package` (at `root_dir`) once per
/// variant. `watch` names more directories whose changes rebuild the
/// objects, such as the crates of map types they embed (aya-build only
/// watches `root_dir`).
pub fn build(
    package: &str,
    root_dir: &Path,
    watch: &[PathBuf],
    variants: &[Variant<'_>],
) -> anyhow::Result<()> {
    check_toolchain()?;
    for dir in watch {
        println!("cargo:rerun-if-changed={}", dir.display());
    }
    let root_dir = root_dir
        .to_str()
        .with_context(|| format!("the path of {package} is not UTF-8"))?;
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR is not set")?);
    for variant in variants {
        let dir = out_dir.join(variant.out_subdir);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        // SAFETY: build scripts are single-threaded; aya-build reads the
        // variable right after.
        unsafe { env::set_var("OUT_DIR", &dir) };
        aya_build::build_ebpf(
            [Package {
                name: package,
                root_dir,
                features: variant.features,
                ..Default::default()
            }],
            Toolchain::Nightly,
        )?;
    }
    // SAFETY: as above.
    unsafe { env::set_var("OUT_DIR", &out_dir) };
    Ok(())
}

/// `path` under the workspace's root, the parent directory of the calling
/// build script's package (every package of the workspace is one level
/// down).
pub fn in_workspace(path: &str) -> anyhow::Result<PathBuf> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    Ok(manifest_dir
        .parent()
        .context("the package's manifest directory has no parent")?
        .join(path))
}

/// Fails early, with the fix, when the nightly toolchain's rust-src or
/// bpf-linker is missing: the build of the eBPF objects would otherwise
/// fail deep inside cargo with a message that does not say what to do.
fn check_toolchain() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=PATH");
    let fix = "run `cargo xtask bootstrap` (it installs both), then build again";
    let sysroot = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output()
        .context("cannot run `rustup run nightly rustc`: rustup and a nightly toolchain are needed to build the XDP programs")?;
    if !sysroot.status.success() {
        bail!(
            "no usable nightly toolchain ({}): the XDP programs are built with nightly; {fix}",
            String::from_utf8_lossy(&sysroot.stderr).trim()
        );
    }
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    if !sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        bail!(
            "the nightly toolchain has no rust-src component (needed by -Z build-std=core); {fix}"
        );
    }
    let linker = Command::new("rustup")
        .args(["run", "nightly", "bpf-linker", "--version"])
        .output();
    match linker {
        Ok(out) if out.status.success() => Ok(()),
        _ => bail!("bpf-linker is not installed or does not run; {fix}"),
    }
}
