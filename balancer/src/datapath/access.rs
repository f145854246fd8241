//! The `access` trie (allow and deny lists) as the daemon writes and reads
//! it, through aya's LPM trie type.

use aya::maps::{
    MapData,
    lpm_trie::{Key, LpmTrie},
};
use balancer_common::{
    access::{AccessData, AccessKey},
    maps,
};

use super::{Datapath, DatapathError};

impl Datapath {
    /// Puts `entries` in the trie (new ones added, existing ones updated).
    pub fn set_access(&mut self, entries: &[(AccessKey, u32)]) -> Result<(), DatapathError> {
        let mut trie = self.access_trie_mut()?;
        for (key, kind) in entries {
            trie.insert(&Key::new(key.prefix_len, key.data), kind, 0)
                .map_err(DatapathError::map("write", maps::ACCESS))?;
        }
        Ok(())
    }

    /// Takes `keys` out of the trie; a key already gone is not an error.
    pub fn remove_access(&mut self, keys: &[AccessKey]) -> Result<(), DatapathError> {
        let mut trie = self.access_trie_mut()?;
        for key in keys {
            super::removed(
                maps::ACCESS,
                trie.remove(&Key::new(key.prefix_len, key.data)),
            )?;
        }
        Ok(())
    }

    /// Every entry of the trie.
    pub fn access_entries(&self) -> Result<Vec<(AccessKey, u32)>, DatapathError> {
        let map = self
            .ebpf
            .map(maps::ACCESS)
            .ok_or(DatapathError::MissingMap { name: maps::ACCESS })?;
        let trie: LpmTrie<&MapData, AccessData, u32> =
            LpmTrie::try_from(map).map_err(DatapathError::map("open", maps::ACCESS))?;
        trie.iter()
            .map(|entry| {
                entry
                    .map(|(key, kind)| {
                        let key = AccessKey {
                            prefix_len: key.prefix_len(),
                            data: key.data(),
                        };
                        (key, kind)
                    })
                    .map_err(DatapathError::map("read", maps::ACCESS))
            })
            .collect()
    }

    fn access_trie_mut(&mut self) -> Result<LpmTrie<&mut MapData, AccessData, u32>, DatapathError> {
        self.map_mut(maps::ACCESS)
    }
}
