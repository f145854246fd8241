//! Running an XDP program once through BPF_PROG_TEST_RUN: how the
//! balancer's program is tested byte for byte and benchmarked
//! ([`super::Datapath::test_run`]), and how the benchmarks run their own
//! small programs the same way ([`test_run_xdp`]).

use aya::programs::{ProgramError, TestRun, TestRunOptions, Xdp};

/// What the program did with one packet under BPF_PROG_TEST_RUN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestOutput {
    /// The XDP action returned (`XDP_PASS` is 2, `XDP_TX` 3, ...).
    pub verdict: u32,
    /// The packet bytes after the program ran.
    pub packet: Vec<u8>,
    /// Run time the kernel measured for this call.
    pub duration: std::time::Duration,
}

/// XDP actions, as the program returns them.
pub mod action {
    pub const ABORTED: u32 = 0;
    pub const DROP: u32 = 1;
    pub const PASS: u32 = 2;
    pub const TX: u32 = 3;
    pub const REDIRECT: u32 = 4;
}

/// Runs the loaded XDP program `prog` once on `packet` through
/// BPF_PROG_TEST_RUN, as if it arrived on interface `ingress_ifindex` (0:
/// the kernel's choice, loopback), and returns the verdict, the packet as
/// the program left it (with room to grow by 256 bytes) and the run time
/// the kernel measured.
pub fn test_run_xdp(
    prog: &mut Xdp,
    packet: &[u8],
    ingress_ifindex: u32,
) -> Result<TestOutput, ProgramError> {
    // Room for the packet to grow (encapsulation) without truncation.
    let mut out = vec![0u8; packet.len() + 256];
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
    // rx_queue_index, egress_ifindex. The kernel wants data_end to be the
    // packet's length and data, data_meta 0.
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(packet.len() as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ingress_ifindex.to_ne_bytes());
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(packet);
    opts.data_out = Some(&mut out);
    if ingress_ifindex != 0 {
        opts.ctx_in = Some(&ctx);
    }
    let result = prog.test_run(opts)?;
    out.truncate(result.data_size_out as usize);
    Ok(TestOutput {
        verdict: result.return_value,
        packet: out,
        duration: result.duration,
    })
}
