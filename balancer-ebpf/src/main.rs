//! The balancer's XDP program (object `balancer-xdp`): a thin entry point
//! over the datapath of this crate's library, [`balancer_ebpf::run`].
//!
//! On the host it builds as an empty program, so that `cargo clippy
//! --workspace` and `cargo test --workspace` type-check and lint it with
//! the rest.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

mod runtime;

use aya_ebpf::{macros::xdp, programs::XdpContext};

/// XDP entry point, attached to every interface the daemon serves.
#[xdp]
pub fn balancer_xdp(ctx: XdpContext) -> u32 {
    balancer_ebpf::run(&ctx)
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
