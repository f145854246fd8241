//! Writing an mmap-able array map through a mapping of its memory: a ring
//! of 65,537 slots is one copy of 512 KiB where element updates took
//! about 20 ms even batched.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
};

/// Copies `values` to the start of the array map `map`, which must be
/// created with `BPF_F_MMAPABLE`, 4-byte values and at least
/// `values.len()` entries. The kernel lays array elements out 8 bytes
/// apart (the value size rounded up to 8), so each value is written as the
/// low half of an 8-byte slot.
pub fn write_u32_array(map: BorrowedFd<'_>, values: &[u32]) -> io::Result<()> {
    if values.is_empty() {
        return Ok(());
    }
    let slots: Vec<u64> = values
        .iter()
        .map(|v| {
            let mut slot = [0u8; 8];
            slot[..4].copy_from_slice(&v.to_ne_bytes());
            u64::from_ne_bytes(slot)
        })
        .collect();
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
    let bytes = std::mem::size_of_val(slots.as_slice());
    let len = bytes.div_ceil(page) * page;
    // SAFETY: a fresh shared mapping of the map's memory, `len` bytes, no
    // more than the kernel allocated for `values.len()` or more entries
    // (it rounds the array up to whole pages); it is unmapped below and no
    // reference to it escapes.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            map.as_raw_fd(),
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the mapping is at least `bytes` long and writable, and does
    // not overlap `slots`.
    unsafe {
        std::ptr::copy_nonoverlapping(slots.as_ptr().cast::<u8>(), addr.cast::<u8>(), bytes);
        libc::munmap(addr, len);
    }
    Ok(())
}
