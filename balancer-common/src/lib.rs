//! Types and constants shared by the XDP program and the userspace daemon.
//!
//! Everything a BPF map stores or is keyed by lives here, so that both sides
//! agree on the layout byte for byte. Rules for every type in this crate:
//! `#[repr(C)]`, explicit padding fields, a compile-time size assertion, no
//! `bool`, `enum` or `Option` inside a map value, and keys in network byte
//! order. Kernel object names are cut to 15 bytes, so every name here is at
//! most that long.
#![cfg_attr(not(test), no_std)]

pub mod stats;

/// Name of the XDP program in the object file (and in `bpftool prog`).
pub const XDP_PROGRAM: &str = "balancer_xdp";

/// Asserts at compile time that a kernel object name fits the kernel's
/// 15-byte limit (BPF_OBJ_NAME_LEN - 1).
macro_rules! assert_name_len {
    ($($name:expr),* $(,)?) => {
        $(const _: () = assert!($name.len() <= 15);)*
    };
}

assert_name_len!(XDP_PROGRAM, stats::STATS_MAP);
