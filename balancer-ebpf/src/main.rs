//! The balancer's XDP programs (object `balancer-xdp`): thin entry points
//! over the datapath of this crate's library, [`balancer_ebpf::run`] and
//! the NAT program it tail-calls, [`balancer_ebpf::run_nat`].
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

/// The NAT program, which the XDP program tail-calls for NAT's packets
/// (slot `PROGRAM_NAT` of `programs`); never attached itself.
#[xdp]
pub fn balancer_nat(ctx: XdpContext) -> u32 {
    balancer_ebpf::run_nat(&ctx)
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
