//! Builds the benchmarks' XDP programs (balancer-bench-ebpf, in `ebpf/`)
//! for bpfel-unknown-none with the nightly toolchain, into `$OUT_DIR`
//! (`bench-floor`, `bench-gen`, `bench-sink`), where the crate embeds them.

use balancer_ebpf_build::{Variant, build, in_workspace};

fn main() -> anyhow::Result<()> {
    // The objects embed the map types of both common crates.
    build(
        "balancer-bench-ebpf",
        &in_workspace("bench/ebpf")?,
        &[
            in_workspace("bench/common")?,
            in_workspace("balancer-common")?,
        ],
        &[Variant::DEFAULT],
    )
}
