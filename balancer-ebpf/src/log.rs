//! Decision logging for the debug variant (feature `log`): each macro
//! expands to an aya-log call in that variant and to nothing otherwise, so
//! the default program has no logging on the per-packet path.

/// Logs one datapath decision, under the program's name as its target
/// (`balancer_xdp`, whichever module of the crate decides).
#[cfg(feature = "log")]
macro_rules! decision {
    ($ctx:expr, $($arg:tt)+) => {
        aya_log_ebpf::info!($ctx, target: balancer_common::XDP_PROGRAM, $($arg)+)
    };
}

/// Logs one datapath decision (nothing: this is the default build).
#[cfg(not(feature = "log"))]
macro_rules! decision {
    ($ctx:expr, $($arg:tt)+) => {
        ()
    };
}

pub(crate) use decision;
