//! BPF_MAP_UPDATE_BATCH and BPF_MAP_LOOKUP_BATCH, which aya 0.14 does not
//! wrap: many rings swapped into `rings` at once, the connection table
//! read in a few calls instead of two per entry, and the per-CPU counter
//! arrays read whole for a metrics scrape.
//!
//! Updates: many rings swapped into `rings` at once. Every update of a map of maps waits for an RCU
//! grace period (about 30 ms here) so that no program still runs on the
//! old inner map when the call returns, and a batch waits once: one VIP at
//! a time, 1,000 VIPs took 30 s to apply. Public for the benchmarks, which
//! compare it with the mmap write of a ring.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
};

/// `BPF_MAP_LOOKUP_BATCH` from the kernel's `enum bpf_cmd`.
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
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

/// Every entry of the hash map `map`, whose keys are `K` and values `V`,
/// read `chunk` entries per call. Entries written or removed during the
/// read may be missed or seen; every entry present throughout is seen
/// once.
pub fn lookup_all<K: aya::Pod + Default, V: aya::Pod + Default>(
    map: BorrowedFd<'_>,
    chunk: usize,
) -> io::Result<Vec<(K, V)>> {
    let mut chunk = chunk.max(1);
    let mut out = Vec::new();
    // The position token: a bucket index for hash maps, 8 bytes is room.
    let mut token = [0u8; 8];
    let mut first = true;
    loop {
        let mut keys: Vec<K> = vec![K::default(); chunk];
        let mut values: Vec<V> = vec![V::default(); chunk];
        let mut next = [0u8; 8];
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { token.as_mut_ptr() as u64 },
            out_batch: next.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: map.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: `keys` and `values` have room for `count` elements of
        // the map's key and value types, the tokens for a bucket index.
        let err = unsafe { lookup_batch(&mut attr) };
        match err.as_ref().and_then(io::Error::raw_os_error) {
            // A bucket holds more entries than `chunk`: retry larger.
            Some(libc::ENOSPC) => {
                chunk *= 2;
                continue;
            }
            Some(libc::ENOENT) | None => {}
            Some(_) => return Err(err.unwrap_or_else(io::Error::last_os_error)),
        }
        let n = attr.count as usize;
        out.extend(keys.into_iter().zip(values).take(n));
        if err.is_some() {
            return Ok(out);
        }
        token = next;
        first = false;
    }
}

/// The first `entries` elements of the per-CPU array `map`, each summed
/// over the possible CPUs with `merge`, read `chunk` elements per call.
pub fn sum_percpu_array<V: aya::Pod + Default>(
    map: BorrowedFd<'_>,
    entries: u32,
    chunk: u32,
    merge: fn(V, V) -> V,
) -> io::Result<Vec<V>> {
    let cpus = aya::util::nr_cpus().map_err(|(_, err)| err)?;
    // The kernel lays each element out as one 8-byte aligned slot per CPU.
    let stride = std::mem::size_of::<V>().next_multiple_of(8);
    let chunk = chunk.clamp(1, entries.max(1));
    let mut out = Vec::with_capacity(entries as usize);
    let mut token = 0u32;
    let mut first = true;
    while (out.len() as u32) < entries {
        let count = chunk.min(entries - out.len() as u32);
        let mut keys = vec![0u32; count as usize];
        let mut values = vec![0u8; count as usize * cpus * stride];
        let mut next = 0u32;
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                &mut token as *mut u32 as u64
            },
            out_batch: &mut next as *mut u32 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count,
            map_fd: map.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: `keys` has room for `count` 4-byte keys, `values` for
        // `count` elements of `cpus` slots of `stride` bytes (the value
        // size rounded up to 8, as the kernel copies per-CPU values), the
        // tokens for an array index.
        let err = unsafe { lookup_batch(&mut attr) };
        match err.as_ref().and_then(io::Error::raw_os_error) {
            Some(libc::ENOENT) | None => {}
            Some(_) => return Err(err.unwrap_or_else(io::Error::last_os_error)),
        }
        for element in values.chunks_exact(cpus * stride).take(attr.count as usize) {
            let total = element
                .chunks_exact(stride)
                .fold(V::default(), |acc, slot| {
                    // SAFETY: `slot` holds at least size_of::<V>() bytes the
                    // kernel wrote, and V is plain data (Pod).
                    let value = unsafe { std::ptr::read_unaligned(slot.as_ptr().cast::<V>()) };
                    merge(acc, value)
                });
            out.push(total);
        }
        if err.is_some() || attr.count == 0 {
            break;
        }
        token = next;
        first = false;
    }
    Ok(out)
}

/// One BPF_MAP_LOOKUP_BATCH call; the error, if it failed.
///
/// # Safety
///
/// The buffers `attr` points to (keys, values, tokens) must have room for
/// `attr.count` elements of the map's types and live through the call.
unsafe fn lookup_batch(attr: &mut BatchAttr) -> Option<io::Error> {
    // SAFETY: `attr` is a valid bpf_attr prefix for this command and lives
    // through the call; the caller vouches for the buffers.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_BATCH,
            attr as *mut BatchAttr,
            std::mem::size_of::<BatchAttr>() as libc::c_uint,
        )
    };
    (ret < 0).then(io::Error::last_os_error)
}
