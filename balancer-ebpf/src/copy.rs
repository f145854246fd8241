//! Copies out of map memory that stay plain loads. LLVM turns a copy of an
//! address or an entry into a call to memmove, and a comparison of two
//! into memcmp: byte loops on BPF, which the verifier refuses over map
//! memory. A volatile read, and a comparison word by word, keep loads.

use balancer_common::{Addr, flow::FlowKey};

/// A copy of `value`, read with one volatile load.
#[inline(always)]
pub fn read<T: Copy>(value: &T) -> T {
    // SAFETY: a reference is valid for reads of a `T`.
    unsafe { core::ptr::read_volatile(value) }
}

/// Whether two flows are the same, compared field by field.
#[inline(always)]
pub fn same_flow(a: &FlowKey, b: &FlowKey) -> bool {
    let (x, y) = (read(a), read(b));
    x.src[0] == y.src[0]
        && x.src[1] == y.src[1]
        && x.src[2] == y.src[2]
        && x.src[3] == y.src[3]
        && x.dst[0] == y.dst[0]
        && x.dst[1] == y.dst[1]
        && x.dst[2] == y.dst[2]
        && x.dst[3] == y.dst[3]
        && x.src_port == y.src_port
        && x.dst_port == y.dst_port
        && x.proto == y.proto
}

/// Whether two addresses are the same, compared word by word.
#[inline(always)]
pub fn same_addr(a: &Addr, b: &Addr) -> bool {
    a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3]
}
