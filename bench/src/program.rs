//! One of the benchmarks' programs, loaded from its embedded object with
//! its configuration written: what the floor, the generator and the sink
//! have in common.

use aya::{
    Ebpf, Pod,
    maps::{Array, MapData, PerCpuArray, PerCpuValues},
    programs::{Xdp, xdp::XdpMode},
};
use balancer::datapath::{TestOutput, test_run_xdp};

use crate::BenchError;

/// A loaded object and the name of its XDP program. Dropping it detaches
/// the program wherever it was attached and frees it.
pub(crate) struct Program {
    ebpf: Ebpf,
    name: &'static str,
}

impl Program {
    /// Loads `object`, writes `config` at index 0 of its array map
    /// `config_map` and loads its XDP program `name` into the kernel.
    pub(crate) fn load<T: Pod>(
        object: &[u8],
        name: &'static str,
        config_map: &'static str,
        config: T,
    ) -> Result<Program, BenchError> {
        let ebpf = Ebpf::load(object).map_err(BenchError::failed(name, "load its object"))?;
        let mut program = Program { ebpf, name };
        let map = program
            .ebpf
            .map_mut(config_map)
            .ok_or(BenchError::Missing {
                program: name,
                name: config_map,
            })?;
        Array::<_, T>::try_from(map)
            .and_then(|mut array| array.set(0, config, 0))
            .map_err(BenchError::failed(name, &format!("write map {config_map}")))?;
        program
            .xdp()?
            .load()
            .map_err(BenchError::failed(name, "load"))?;
        Ok(program)
    }

    /// The XDP program.
    pub(crate) fn xdp(&mut self) -> Result<&mut Xdp, BenchError> {
        let name = self.name;
        self.ebpf
            .program_mut(name)
            .ok_or(BenchError::Missing {
                program: name,
                name,
            })?
            .try_into()
            .map_err(BenchError::failed(name, "look up the program"))
    }

    /// Attaches the program to `interface` (in the calling thread's
    /// network namespace) in native mode, until it is dropped.
    pub(crate) fn attach_native(&mut self, interface: &str) -> Result<(), BenchError> {
        let action = format!("attach to {interface} in native mode");
        self.xdp()?
            .attach(interface, XdpMode::Driver)
            .map_err(BenchError::failed(self.name, &action))?;
        Ok(())
    }

    /// Runs the program once on `packet` (BPF_PROG_TEST_RUN).
    pub(crate) fn test_run(&mut self, packet: &[u8]) -> Result<TestOutput, BenchError> {
        let name = self.name;
        test_run_xdp(self.xdp()?, packet, 0).map_err(BenchError::failed(name, "test-run"))
    }

    /// The file descriptor of the loaded program, for the test runs the
    /// generator issues itself.
    pub(crate) fn raw_fd(&mut self) -> Result<i32, BenchError> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        let name = self.name;
        let fd = self
            .xdp()?
            .fd()
            .map_err(BenchError::failed(name, "get the file descriptor"))?;
        Ok(fd.as_fd().as_raw_fd())
    }

    /// Element `index` of the per-CPU array `map`, one value per CPU.
    pub(crate) fn per_cpu<T: Pod>(
        &self,
        map: &'static str,
        index: u32,
    ) -> Result<PerCpuValues<T>, BenchError> {
        let data = self.ebpf.map(map).ok_or(BenchError::Missing {
            program: self.name,
            name: map,
        })?;
        PerCpuArray::<&MapData, T>::try_from(data)
            .and_then(|array| array.get(&index, 0))
            .map_err(BenchError::failed(self.name, &format!("read map {map}")))
    }
}
