//! BPF_MAP_UPDATE_BATCH, which aya 0.14 does not wrap: many rings swapped
//! into `rings` at once. Every update of a map of maps waits for an RCU
//! grace period (about 30 ms here) so that no program still runs on the
//! old inner map when the call returns, and a batch waits once: one VIP at
//! a time, 1,000 VIPs took 30 s to apply. Public for the benchmarks, which
//! compare it with the mmap write of a ring.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
};

/// `BPF_MAP_UPDATE_BATCH` from the kernel's `enum bpf_cmd`.
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// The `batch` member of the kernel's `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Writes `values[i]` under `keys[i]` in `map` (4-byte keys and values:
/// an array, or a map of maps whose values are map descriptors), in one
/// call. The kernel stops at the first element it cannot write; that is
/// reported as an error.
pub fn update_u32(map: BorrowedFd<'_>, keys: &[u32], values: &[u32]) -> io::Result<()> {
    assert_eq!(keys.len(), values.len(), "one value per key");
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: values.len() as u32,
        map_fd: map.as_raw_fd() as u32,
        ..BatchAttr::default()
    };
    // SAFETY: `attr` is a valid bpf_attr prefix for this command and lives
    // through the call; `keys` and `values` hold `count` elements of the
    // map's key and value size (4 bytes each) and outlive the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_UPDATE_BATCH,
            &mut attr as *mut BatchAttr,
            std::mem::size_of::<BatchAttr>() as libc::c_uint,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    if attr.count as usize != values.len() {
        return Err(io::Error::other(format!(
            "the kernel wrote {} of {} elements",
            attr.count,
            values.len()
        )));
    }
    Ok(())
}
