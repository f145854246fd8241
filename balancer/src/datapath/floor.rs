//! The benchmarks' floor program (see balancer-ebpf/src/floor.rs), loaded
//! and run the same way as the balancer's program.

use aya::Ebpf;

use super::{DatapathError, TestOutput, attach_native, load_configured, test_run, xdp_program};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/balancer-floor"));

const PROGRAM: &str = "floor_xdp";
const MACS: &str = "floor_macs";

/// The loaded floor program.
pub struct Floor {
    ebpf: Ebpf,
}

impl Floor {
    /// Loads the floor program; it writes `dst` and `src` as the MACs.
    pub fn load(dst: [u8; 6], src: [u8; 6]) -> Result<Floor, DatapathError> {
        let mut macs = [0u8; 12];
        macs[..6].copy_from_slice(&dst);
        macs[6..].copy_from_slice(&src);
        let ebpf = load_configured(OBJECT, MACS, macs, PROGRAM)?;
        Ok(Floor { ebpf })
    }

    /// Attaches the program to `interface` (in the calling thread's
    /// namespace) in native mode, until the floor is dropped: every frame
    /// there goes back out to the MAC given at load, the cheapest XDP
    /// forwarder, as the end-to-end benchmark's reference.
    pub fn attach(&mut self, interface: &str) -> Result<(), DatapathError> {
        attach_native(&mut self.ebpf, PROGRAM, interface)
    }

    /// Runs the floor program once on `packet` (BPF_PROG_TEST_RUN).
    pub fn test_run(&mut self, packet: &[u8]) -> Result<TestOutput, DatapathError> {
        test_run(xdp_program(&mut self.ebpf, PROGRAM)?, packet, 0)
    }
}
