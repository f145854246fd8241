//! Writing an mmap-able array map through a mapping of its memory: a ring
//! of 65,537 slots is one copy of 512 KiB where element updates took
//! about 20 ms even batched.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
};

/// Copies `values` to the start of the array map `map`, which must be
/// created with `BPF_F_MMAPABLE`, 4-byte values and exactly
/// `values.len()` entries, through a [`MappedArray`]: the kernel lays
/// array elements out 8 bytes apart (the value size rounded up to 8), so
/// each value is written as the low half of an 8-byte slot.
pub fn write_u32_array(map: BorrowedFd<'_>, values: &[u32]) -> io::Result<()> {
    if values.is_empty() {
        return Ok(());
    }
    let mapped = MappedArray::new(map, values.len() as u32, 4)?;
    for (index, value) in (0u32..).zip(values) {
        if let Some(element) = mapped.element(index) {
            // SAFETY: an element of the mapping, 8-byte aligned; the map is
            // not yet visible to any program.
            unsafe { element.cast::<u32>().write(*value) };
        }
    }
    Ok(())
}

/// A shared mapping of a whole mmap-able array map, held for as long as
/// the datapath: the daemon reads and writes the elements of
/// `backend_load` in place, and adds to their counts atomically, as the
/// program does.
pub struct MappedArray {
    addr: std::ptr::NonNull<u8>,
    len: usize,
    stride: usize,
    entries: u32,
}

// SAFETY: the mapping is plain shared memory; every access goes through
// volatile or atomic operations on whole, aligned fields.
unsafe impl Send for MappedArray {}
// SAFETY: as above.
unsafe impl Sync for MappedArray {}

impl MappedArray {
    /// Maps all `entries` elements of `value_size` bytes of the array map
    /// `map` (created with `BPF_F_MMAPABLE`).
    pub fn new(map: BorrowedFd<'_>, entries: u32, value_size: usize) -> io::Result<MappedArray> {
        let stride = value_size.next_multiple_of(8);
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let len = (stride * entries as usize).div_ceil(page) * page;
        // SAFETY: a fresh shared mapping of the map's memory, no longer
        // than the kernel allocated (it rounds the array up to pages);
        // unmapped on drop.
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
        let addr = std::ptr::NonNull::new(addr.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned a null mapping"))?;
        Ok(MappedArray {
            addr,
            len,
            stride,
            entries,
        })
    }

    /// The element at `index`, `None` past the end.
    pub fn element(&self, index: u32) -> Option<*mut u8> {
        (index < self.entries)
            // SAFETY: within the mapping, as `index` < `entries`.
            .then(|| unsafe { self.addr.as_ptr().add(index as usize * self.stride) })
    }
}

impl Drop for MappedArray {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.addr.as_ptr().cast(), self.len) };
    }
}
