//! Userspace side of the balancer: the control daemon, the CLI, and the
//! typed layer over the XDP program and its maps.
//!
//! The binary is a thin wrapper around [`cli::main`]; tests and benchmarks
//! call the library directly.

pub mod admission;
pub mod availability;
pub mod cli;
pub mod client_routes;
pub mod command;
pub mod config;
pub mod control;
pub mod daemon;
pub mod datapath;
pub mod decap;
pub mod doctor;
pub mod edit;
pub mod health;
pub mod logging;
pub mod maglev;
pub mod metrics;
pub mod neighbour;
pub mod plan;
pub mod preview;
pub mod routes;
pub mod schedule;
pub mod stats;
pub mod sync;

/// The crate's version: what `balancer --version` and `status` report, and
/// the Debian package's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
