//! The floor program (see ebpf/src/floor.rs), loaded and run the same way
//! as the balancer's program.

use balancer::datapath::TestOutput;
use balancer_bench_common::{FLOOR_MACS, FLOOR_PROGRAM};

use crate::{BenchError, program::Program};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench-floor"));

/// The loaded floor program.
pub struct Floor {
    program: Program,
}

impl Floor {
    /// Loads the floor program; it writes `dst` and `src` as the MACs.
    pub fn load(dst: [u8; 6], src: [u8; 6]) -> Result<Floor, BenchError> {
        let mut macs = [0u8; 12];
        macs[..6].copy_from_slice(&dst);
        macs[6..].copy_from_slice(&src);
        let program = Program::load(OBJECT, FLOOR_PROGRAM, FLOOR_MACS, macs)?;
        Ok(Floor { program })
    }

    /// Attaches the program to `interface` (in the calling thread's
    /// namespace) in native mode, until the floor is dropped: every frame
    /// there goes back out to the MAC given at load, the cheapest XDP
    /// forwarder, as the end-to-end benchmark's reference.
    pub fn attach(&mut self, interface: &str) -> Result<(), BenchError> {
        self.program.attach_native(interface)
    }

    /// Runs the floor program once on `packet` (BPF_PROG_TEST_RUN).
    pub fn test_run(&mut self, packet: &[u8]) -> Result<TestOutput, BenchError> {
        self.program.test_run(packet)
    }
}
