//! The benchmarks' frame generator, run through BPF_PROG_TEST_RUN in
//! live-frames mode (there is no pktgen module on these kernels): on every
//! run it writes the template's headers over the frame, gives it the next
//! flow's source port with the transport checksum adjusted, and sends it
//! out with XDP_TX, which live-frames mode turns into a redirect out of the
//! ingress interface.
//!
//! The kernel recycles the frames' pages, and they keep what the receiving
//! side wrote into them, so nothing of a previous run is trusted: the whole
//! header area is written each time. The payload after it stays as the
//! test run's input left it.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

mod runtime;

use aya_ebpf::{
    bindings::xdp_action,
    btf_maps::{Array, PerCpuArray},
    helpers::generated::bpf_xdp_store_bytes,
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use balancer_bench_common::{CHECK_UDP, GenCursor, TEMPLATE_LEN, Template, adjust_checksum};
use network_types::eth::EthHdr;

/// The frame's headers and how its flows vary (map `gen_template`).
#[btf_map(name = "gen_template")]
static TEMPLATE: Array<Template, 1> = Array::new();

/// Each CPU's position in the flow cycle (map `gen_cursor`).
#[btf_map(name = "gen_cursor")]
static CURSOR: PerCpuArray<GenCursor, 1> = PerCpuArray::new();

#[xdp]
pub fn gen_xdp(ctx: XdpContext) -> u32 {
    match generate(&ctx) {
        Some(()) => xdp_action::XDP_TX,
        None => xdp_action::XDP_ABORTED,
    }
}

/// Rewrites the frame as the next flow's. `None`: no template, or a
/// template or frame the program cannot use (the run aborts, which
/// `bpftool prog` and the xdp:xdp_exception tracepoint show).
#[inline(always)]
fn generate(ctx: &XdpContext) -> Option<()> {
    let template = TEMPLATE.get(0)?;
    let cursor = CURSOR.get_ptr_mut(0)?;
    let len = template.len;
    if len < EthHdr::LEN as u32 || len > TEMPLATE_LEN as u32 {
        return None;
    }
    // SAFETY: the helper copies `len` bytes from the map value, which
    // holds at least that many (checked above), into the frame, and fails
    // rather than write past its end.
    let stored = unsafe { bpf_xdp_store_bytes(ctx.ctx, 0, template.bytes.as_ptr() as *mut _, len) };
    if stored != 0 {
        return None;
    }
    // SAFETY: the pointer comes from a successful lookup and stays valid
    // for the whole run; only this CPU writes its slot.
    let flow = unsafe {
        let flow = (*cursor).flow;
        let next = flow + 1;
        (*cursor).flow = if next >= template.flows { 0 } else { next };
        flow
    };
    let port = (u16::from_be(template.base_port).wrapping_add(flow as u16)).to_be();
    let port_field = field(ctx, template.port_offset)?;
    // SAFETY: `field` checked that both bytes are inside the frame.
    unsafe { port_field.write_unaligned(port) };
    if template.check_offset != 0 {
        let check_field = field(ctx, template.check_offset)?;
        // SAFETY: as above.
        unsafe {
            let check = adjust_checksum(check_field.read_unaligned(), template.base_port, port);
            let check = if check == 0 && template.check_kind == CHECK_UDP {
                0xffff
            } else {
                check
            };
            check_field.write_unaligned(check);
        }
    }
    // SAFETY: as for the flow above.
    unsafe { (*cursor).frames += 1 };
    Some(())
}

/// A pointer to the 16-bit field at `offset` in the frame, or `None` when
/// the field is not inside the template's headers or the frame.
#[inline(always)]
fn field(ctx: &XdpContext, offset: u16) -> Option<*mut u16> {
    let offset = offset as usize;
    if offset > TEMPLATE_LEN - 2 {
        return None;
    }
    let start = ctx.data() + offset;
    if start + 2 > ctx.data_end() {
        return None;
    }
    Some(start as *mut u16)
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
