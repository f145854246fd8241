//! Run-time settings of the datapath, in a one-entry array map.

/// What the daemon tells the datapath beyond VIPs and backends.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// Seed of every flow hash. Balancer hosts behind one ECMP group share
    /// it, so they pick the same backend for a new flow.
    pub hash_seed: u32,
    /// Number of slots of every Maglev ring.
    pub ring_size: u32,
    /// A TCP flow idle longer than this picks its backend anew.
    pub tcp_idle_ns: u64,
    /// A UDP flow idle longer than this picks its backend anew.
    pub udp_idle_ns: u64,
}

const _: () = assert!(core::mem::size_of::<Settings>() == 24);
