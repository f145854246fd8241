//! Builds the XDP program (balancer-ebpf) for bpfel-unknown-none with the
//! nightly toolchain, so that `cargo build -p balancer` yields one
//! self-contained binary with the object embedded: the default program in
//! `$OUT_DIR`, and the debug variant with decision logging (feature `log`)
//! in `$OUT_DIR/log`.

use balancer_ebpf_build::{Variant, build, in_workspace};

fn main() -> anyhow::Result<()> {
    // The object embeds balancer-common's map types too.
    build(
        "balancer-ebpf",
        &in_workspace("balancer-ebpf")?,
        &[in_workspace("balancer-common")?],
        &[
            Variant {
                out_subdir: "log",
                features: &["log"],
            },
            Variant::DEFAULT,
        ],
    )
}
