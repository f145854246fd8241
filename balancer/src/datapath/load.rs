//! The per-backend load the least-* schedulers compare
//! ([`BackendLoad`]): the daemon writes weights and latencies, reads the
//! connection counts the program keeps, and corrects them, all in place
//! through a mapping of `backend_load`.

use std::{
    mem::offset_of,
    os::fd::AsFd as _,
    sync::atomic::{AtomicU64, Ordering},
};

use balancer_common::{
    backend::BackendLoad,
    maps::{self, MAX_BACKENDS},
};

use super::{Datapath, DatapathError, mapped::MappedArray};

/// The mapping of `backend_load`.
pub(super) struct Loads(MappedArray);

impl Loads {
    /// Maps the `backend_load` array of a loaded program.
    pub(super) fn map(ebpf: &aya::Ebpf) -> Result<Loads, DatapathError> {
        let Some(aya::maps::Map::Array(data)) = ebpf.map(maps::BACKEND_LOAD) else {
            return Err(DatapathError::MissingMap {
                name: maps::BACKEND_LOAD,
            });
        };
        MappedArray::new(data.fd().as_fd(), MAX_BACKENDS, size_of::<BackendLoad>())
            .map(Loads)
            .map_err(|source| DatapathError::MapMemory {
                name: maps::BACKEND_LOAD,
                source,
            })
    }

    fn field<T>(&self, id: u32, offset: usize) -> Result<*mut T, DatapathError> {
        let element = self.0.element(id).ok_or(DatapathError::OutOfRange {
            what: "backend id",
            value: id,
            max: MAX_BACKENDS - 1,
        })?;
        // SAFETY: `offset` is a field's offset inside the element.
        Ok(unsafe { element.add(offset) }.cast())
    }

    /// Writes the u32 field at `offset` of element `id` (the program only
    /// reads those).
    fn write_u32(&self, id: u32, offset: usize, value: u32) -> Result<(), DatapathError> {
        let ptr = self.field::<u32>(id, offset)?;
        // SAFETY: an aligned u32 of the mapping.
        unsafe { ptr.write_volatile(value) };
        Ok(())
    }

    /// Reads the u32 field at `offset` of element `id`.
    fn read_u32(&self, id: u32, offset: usize) -> Result<u32, DatapathError> {
        let ptr = self.field::<u32>(id, offset)?;
        // SAFETY: an aligned u32 of the mapping.
        Ok(unsafe { ptr.read_volatile() })
    }

    fn conns(&self, id: u32) -> Result<&AtomicU64, DatapathError> {
        let ptr = self.field::<u64>(id, offset_of!(BackendLoad, conns))?;
        // SAFETY: 8-byte aligned (elements are 16 bytes apart from a page
        // boundary, the field is first), valid while the mapping lives,
        // and only accessed atomically by the program and by this daemon.
        Ok(unsafe { AtomicU64::from_ptr(ptr) })
    }
}

impl Datapath {
    /// Writes backend `id`'s weight as the schedulers see it (0: draining,
    /// no new flows and no persistence).
    pub fn set_backend_weight(&self, id: u32, weight: u32) -> Result<(), DatapathError> {
        self.loads
            .write_u32(id, offset_of!(BackendLoad, weight), weight)
    }

    /// Writes backend `id`'s smoothed health-check latency, in
    /// microseconds.
    pub fn set_backend_latency(&self, id: u32, latency_us: u32) -> Result<(), DatapathError> {
        self.loads
            .write_u32(id, offset_of!(BackendLoad, latency_us), latency_us)
    }

    /// Backend `id`'s load as the program sees it.
    pub fn backend_load(&self, id: u32) -> Result<BackendLoad, DatapathError> {
        Ok(BackendLoad {
            conns: self.loads.conns(id)?.load(Ordering::Relaxed),
            weight: self.loads.read_u32(id, offset_of!(BackendLoad, weight))?,
            latency_us: self
                .loads
                .read_u32(id, offset_of!(BackendLoad, latency_us))?,
        })
    }

    /// Adds `delta` to backend `id`'s connection count, atomically with
    /// the program's own adds: how the daemon corrects the count for flows
    /// that ended without a FIN or RST.
    pub fn correct_backend_conns(&self, id: u32, delta: i64) -> Result<(), DatapathError> {
        self.loads
            .conns(id)?
            .fetch_add(delta as u64, Ordering::Relaxed);
        Ok(())
    }
}
