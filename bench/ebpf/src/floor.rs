//! The benchmarks' floor program: parse the Ethernet header, read one
//! array map, rewrite both MACs and send the frame back out (XDP_TX). Any
//! XDP forwarder does at least this, so the balancer's cost is reported as
//! a multiple of it.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

mod runtime;

use aya_ebpf::{
    bindings::xdp_action,
    btf_maps::Array,
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use network_types::eth::EthHdr;

/// Destination and source MAC to write.
#[btf_map(name = "floor_macs")]
static MACS: Array<[u8; 12], 1> = Array::new();

#[xdp]
pub fn floor_xdp(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    if start + EthHdr::LEN > ctx.data_end() {
        return xdp_action::XDP_PASS;
    }
    let Some(macs) = MACS.get(0) else {
        return xdp_action::XDP_PASS;
    };
    let eth = start as *mut EthHdr;
    // SAFETY: the Ethernet header is inside the packet (checked above).
    unsafe {
        (*eth).dst_addr = [macs[0], macs[1], macs[2], macs[3], macs[4], macs[5]];
        (*eth).src_addr = [macs[6], macs[7], macs[8], macs[9], macs[10], macs[11]];
    }
    xdp_action::XDP_TX
}

#[cfg(not(target_arch = "bpf"))]
fn main() {}
