//! Builds the XDP program (balancer-ebpf) for bpfel-unknown-none with the
//! nightly toolchain, so that `cargo build -p balancer` yields one
//! self-contained binary with the object embedded: the default program in
//! `$OUT_DIR`, and the debug variant with decision logging (feature `log`)
//! in `$OUT_DIR/log`. Every binary of balancer-ebpf is built, so the
//! benchmarks' floor, load generator and sink land beside it
//! (`$OUT_DIR/balancer-floor`, `balancer-gen`, `balancer-sink`).

use std::{env, path::PathBuf, process::Command};

use anyhow::{Context as _, bail};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest_dir
        .parent()
        .context("balancer's manifest directory has no parent")?
        .join("balancer-ebpf");
    check_toolchain()?;
    // The object embeds balancer-common's map types too; aya-build only
    // watches the eBPF crate's own directory.
    let common_dir = manifest_dir
        .parent()
        .context("balancer's manifest directory has no parent")?
        .join("balancer-common");
    println!("cargo:rerun-if-changed={}", common_dir.display());
    let root_dir = ebpf_dir
        .to_str()
        .context("the path of balancer-ebpf is not UTF-8")?;
    // aya-build copies the objects into $OUT_DIR under their binary names,
    // so the variant is built with $OUT_DIR pointing at a subdirectory.
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR is not set")?);
    let log_dir = out_dir.join("log");
    std::fs::create_dir_all(&log_dir).context("cannot create $OUT_DIR/log")?;
    for (dir, features) in [(&log_dir, &["log"][..]), (&out_dir, &[][..])] {
        // SAFETY: build scripts are single-threaded; aya-build reads the
        // variable right after.
        unsafe { env::set_var("OUT_DIR", dir) };
        aya_build::build_ebpf(
            [Package {
                name: "balancer-ebpf",
                root_dir,
                features,
                ..Default::default()
            }],
            Toolchain::Nightly,
        )?;
    }
    Ok(())
}

/// Fails early, with the fix, when the nightly toolchain's rust-src or
/// bpf-linker is missing: the build of the eBPF object would otherwise fail
/// deep inside cargo with a message that does not say what to do.
fn check_toolchain() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=PATH");
    let fix = "run `cargo xtask bootstrap` (it installs both), then build again";
    let sysroot = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output()
        .context("cannot run `rustup run nightly rustc`: rustup and a nightly toolchain are needed to build the XDP program")?;
    if !sysroot.status.success() {
        bail!(
            "no usable nightly toolchain ({}): the XDP program is built with nightly; {fix}",
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
