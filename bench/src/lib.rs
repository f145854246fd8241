//! The benchmarks' XDP programs (crate balancer-bench-ebpf, embedded by
//! this crate's build script), loaded and driven from userspace: the
//! benchmarks and the tests use them beside the balancer, which ships
//! none of them.
//!
//! - [`Floor`]: the least an XDP forwarder does (rewrite both MACs,
//!   XDP_TX), the reference the balancer's cost is measured against;
//! - [`Generator`]: a frame generator run by BPF_PROG_TEST_RUN in
//!   live-frames mode, since these kernels have no pktgen module;
//! - [`Sink`]: counts and drops the frames to one port arriving on an
//!   interface.

mod error;
mod floor;
mod generator;
mod program;
mod sink;
mod template;

pub use error::BenchError;
pub use floor::Floor;
pub use generator::{Generator, MAX_BATCH, Sent};
pub use sink::Sink;
