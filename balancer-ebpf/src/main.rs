//! The balancer's XDP program.
//!
//! The entry point is a thin wrapper around [`try_balancer_xdp`], which
//! returns the verdict or an error; this one place decides what an error
//! means for the packet.
//!
//! The crate only means something for the bpfel-unknown-none target. On the
//! host it builds as an empty program, so that `cargo clippy --workspace`
//! and `cargo test --workspace` type-check and lint it with the rest.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

mod parse;
mod stats;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use balancer_common::stats::Stat;

use crate::parse::{Cursor, L3};

/// XDP entry point, attached to every interface the daemon serves.
#[xdp]
pub fn balancer_xdp(ctx: XdpContext) -> u32 {
    match try_balancer_xdp(&ctx) {
        Ok(verdict) => verdict,
        Err(parse::Malformed) => {
            stats::count(Stat::RX_MALFORMED, &ctx);
            xdp_action::XDP_PASS
        }
    }
}

/// Counts the frame by its network protocol and lets it through.
#[inline(always)]
fn try_balancer_xdp(ctx: &XdpContext) -> Result<u32, parse::Malformed> {
    stats::count(Stat::RX_TOTAL, ctx);
    let mut cursor = Cursor::new(ctx);
    let stat = match cursor.ethernet()? {
        L3::Ipv4 => Stat::RX_IPV4,
        L3::Ipv6 => Stat::RX_IPV6,
        L3::Other => Stat::RX_OTHER_L3,
    };
    stats::count(stat, ctx);
    Ok(xdp_action::XDP_PASS)
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: the verifier rejects any program that could reach a panic, so
    // this is never called in a loaded program.
    unsafe { core::hint::unreachable_unchecked() }
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}

/// The kernel only lets GPL-compatible programs call GPL helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
