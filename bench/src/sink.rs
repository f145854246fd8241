//! The counting sink (see ebpf/src/sink.rs): attached to the receiving
//! end of a veth, it counts and drops what the benchmarks send, and lets
//! the veth take in redirected frames at all.

use balancer_bench_common::{SINK_CONFIG, SINK_COUNTS, SINK_PROGRAM, SinkConfig, SinkSlot};
use balancer_common::stats::PacketCount;

use crate::{BenchError, program::Program};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench-sink"));

/// The sink program attached to one interface. Dropping it detaches it.
pub struct Sink {
    program: Program,
}

impl Sink {
    /// Attaches the sink to `interface` in native mode: frames to TCP or
    /// UDP destination port `dst_port` are counted and dropped, every other
    /// frame passes (`None`: every frame is counted and dropped). The name
    /// is resolved in the calling thread's network namespace.
    pub fn attach(interface: &str, dst_port: Option<u16>) -> Result<Sink, BenchError> {
        let config = SinkConfig {
            dst_port: dst_port.unwrap_or(0).to_be(),
            ..SinkConfig::default()
        };
        let mut program = Program::load(OBJECT, SINK_PROGRAM, SINK_CONFIG, config)?;
        program.attach_native(interface)?;
        Ok(Sink { program })
    }

    /// Frames counted and dropped, summed over CPUs.
    pub fn count(&self) -> Result<PacketCount, BenchError> {
        self.slot(SinkSlot::MATCHED)
    }

    /// Frames that did not match and passed, summed over CPUs.
    pub fn passed(&self) -> Result<PacketCount, BenchError> {
        self.slot(SinkSlot::PASSED)
    }

    fn slot(&self, slot: SinkSlot) -> Result<PacketCount, BenchError> {
        let counts = self.program.per_cpu::<PacketCount>(SINK_COUNTS, slot.0)?;
        Ok(counts
            .iter()
            .fold(PacketCount::default(), |sum, c| sum.merged(*c)))
    }
}
