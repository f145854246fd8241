//! NAT's maps as the daemon writes and reads them: backends' ports, the
//! SNAT pools, every CPU's source ports, the routes toward clients, and
//! the connections.

use aya::maps::{
    Array, HashMap, MapData, PerCpuArray, PerCpuValues,
    lpm_trie::{Key, LpmTrie},
};
use balancer_common::{
    Addr,
    flow::FlowKey,
    maps::{self, MAX_BACKENDS},
    nat::{Hop, NatBackend, NatFlow, NatReply, PortRange, RouteKey, SnatPool},
};

use super::{Datapath, DatapathError, write::check_range};
use crate::config::PortSpan;

impl Datapath {
    /// Writes backend `id`'s NAT details (its port), read when a NAT
    /// connection opens to it: written before its entry.
    pub fn set_nat_backend(&mut self, id: u32, nat: &NatBackend) -> Result<(), DatapathError> {
        check_range("backend id", id, MAX_BACKENDS)?;
        let mut map: Array<_, NatBackend> = self.map_mut(maps::NAT_BACKENDS)?;
        map.set(id, nat, 0)
            .map_err(DatapathError::map("write", maps::NAT_BACKENDS))
    }

    /// Writes the SNAT pools (IPv4 first, then IPv6).
    pub fn set_snat_pools(&mut self, pools: &[SnatPool; 2]) -> Result<(), DatapathError> {
        let mut map: Array<_, SnatPool> = self.map_mut(maps::SNAT_POOL)?;
        for (index, pool) in pools.iter().enumerate() {
            map.set(index as u32, pool, 0)
                .map_err(DatapathError::map("write", maps::SNAT_POOL))?;
        }
        Ok(())
    }

    /// Splits `ports` evenly between the possible CPUs, each CPU's range in
    /// its slot of `snat_ports`. A CPU whose range stays keeps its cursor,
    /// so a restarted daemon does not walk the ports of connections in
    /// place again.
    pub fn set_snat_ports(&mut self, ports: PortSpan) -> Result<(), DatapathError> {
        let name = maps::SNAT_PORTS;
        let cpus = aya::util::nr_cpus()
            .map_err(|(_, err)| DatapathError::MapBatch { name, source: err })?;
        let ranges: Vec<PortRange> = PortRange::split(ports.first, ports.last, cpus as u32)
            .ok_or(DatapathError::OutOfRange {
                what: "CPUs sharing the SNAT ports",
                value: cpus as u32,
                max: ports.len(),
            })?
            .collect();
        let mut map: PerCpuArray<_, PortRange> = self.map_mut(maps::SNAT_PORTS)?;
        let held = map
            .get(&0, 0)
            .map_err(DatapathError::map("read", maps::SNAT_PORTS))?;
        let values: Vec<PortRange> = ranges
            .into_iter()
            .zip(held.iter())
            .map(|(mut range, old)| {
                if (old.first, old.count) == (range.first, range.count) {
                    range.next = old.next;
                }
                range
            })
            .collect();
        let values = PerCpuValues::try_from(values)
            .map_err(|err| DatapathError::MapBatch { name, source: err })?;
        map.set(0, values, 0)
            .map_err(DatapathError::map("write", maps::SNAT_PORTS))
    }

    /// Every CPU's source ports, as written.
    pub fn snat_ports(&self) -> Result<Vec<PortRange>, DatapathError> {
        let map = self.map(maps::SNAT_PORTS)?;
        let map: PerCpuArray<&MapData, PortRange> =
            PerCpuArray::try_from(map).map_err(DatapathError::map("open", maps::SNAT_PORTS))?;
        let values = map
            .get(&0, 0)
            .map_err(DatapathError::map("read", maps::SNAT_PORTS))?;
        Ok(values.iter().copied().collect())
    }

    /// Puts routes toward clients in `nat_routes` (new ones added,
    /// existing ones updated).
    pub fn set_nat_routes(&mut self, routes: &[(RouteKey, Hop)]) -> Result<(), DatapathError> {
        let mut trie: LpmTrie<&mut MapData, Addr, Hop> = self.map_mut(maps::NAT_ROUTES)?;
        for (key, hop) in routes {
            trie.insert(&Key::new(key.prefix_len, key.addr), hop, 0)
                .map_err(DatapathError::map("write", maps::NAT_ROUTES))?;
        }
        Ok(())
    }

    /// Takes routes out of `nat_routes`; one already gone is not an error.
    pub fn remove_nat_routes(&mut self, keys: &[RouteKey]) -> Result<(), DatapathError> {
        let mut trie: LpmTrie<&mut MapData, Addr, Hop> = self.map_mut(maps::NAT_ROUTES)?;
        for key in keys {
            super::removed(
                maps::NAT_ROUTES,
                trie.remove(&Key::new(key.prefix_len, key.addr)),
            )?;
        }
        Ok(())
    }

    /// Every route toward clients.
    pub fn nat_routes(&self) -> Result<Vec<(RouteKey, Hop)>, DatapathError> {
        let map = self.map(maps::NAT_ROUTES)?;
        let trie: LpmTrie<&MapData, Addr, Hop> =
            LpmTrie::try_from(map).map_err(DatapathError::map("open", maps::NAT_ROUTES))?;
        trie.iter()
            .map(|entry| {
                entry
                    .map(|(key, hop)| {
                        let key = RouteKey {
                            prefix_len: key.prefix_len(),
                            addr: key.data(),
                        };
                        (key, hop)
                    })
                    .map_err(DatapathError::map("read", maps::NAT_ROUTES))
            })
            .collect()
    }

    /// Every NAT connection's forward entry: in the main table, then in the
    /// open one (`true`).
    pub fn nat_flows(&self) -> Result<Vec<(FlowKey, NatFlow, bool)>, DatapathError> {
        let mut out = Vec::new();
        for (name, open) in [(maps::NAT_FLOWS, false), (maps::NAT_OPEN, true)] {
            let map: HashMap<&MapData, FlowKey, NatFlow> =
                HashMap::try_from(self.map(name)?).map_err(DatapathError::map("open", name))?;
            for entry in map.iter() {
                let (key, flow) = entry.map_err(DatapathError::map("read", name))?;
                out.push((key, flow, open));
            }
        }
        Ok(out)
    }

    /// Every NAT connection's reverse entry: in the main table, then in
    /// the open one (`true`).
    pub fn nat_replies(&self) -> Result<Vec<(FlowKey, NatReply, bool)>, DatapathError> {
        let mut out = Vec::new();
        for (name, open) in [(maps::NAT_BACK, false), (maps::NAT_OPEN_BACK, true)] {
            let map: HashMap<&MapData, FlowKey, NatReply> =
                HashMap::try_from(self.map(name)?).map_err(DatapathError::map("open", name))?;
            for entry in map.iter() {
                let (key, reply) = entry.map_err(DatapathError::map("read", name))?;
                out.push((key, reply, open));
            }
        }
        Ok(out)
    }

    /// Removes NAT entries idle past their timeout: forward entries of
    /// `flows` and reverse entries of `replies`, each with whether it is in
    /// an open table. One the datapath evicted or replaced since it was
    /// read is not an error.
    pub fn remove_nat_entries(
        &mut self,
        flows: &[(FlowKey, bool)],
        replies: &[(FlowKey, bool)],
    ) -> Result<(), DatapathError> {
        for (name, open) in [(maps::NAT_FLOWS, false), (maps::NAT_OPEN, true)] {
            let mut map: HashMap<_, FlowKey, NatFlow> = self.map_mut(name)?;
            for (key, _) in flows.iter().filter(|(_, o)| *o == open) {
                super::removed(name, map.remove(key))?;
            }
        }
        for (name, open) in [(maps::NAT_BACK, false), (maps::NAT_OPEN_BACK, true)] {
            let mut map: HashMap<_, FlowKey, NatReply> = self.map_mut(name)?;
            for (key, _) in replies.iter().filter(|(_, o)| *o == open) {
                super::removed(name, map.remove(key))?;
            }
        }
        Ok(())
    }

    /// Map `name`, to read.
    fn map(&self, name: &'static str) -> Result<&aya::maps::Map, DatapathError> {
        self.ebpf
            .map(name)
            .ok_or(DatapathError::MissingMap { name })
    }
}
