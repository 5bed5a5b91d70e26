//! The fast path's view of the store: index slots by position. The pipeline prefetches a
//! slot, finds its position one round later and translates from it the round after; a
//! position is trusted while the table's epoch has not moved (no insert, remove or clear).

use super::Store;
use crate::nat::rules::{HostKey, RealmRules};
use crate::nat::session::{InKey, InVal, OutKey, OutVal};
use crate::nat::table::Key;

impl Store {
    #[inline(always)]
    pub fn prefetch_in(&self, hash: u64) {
        self.in_tab.prefetch(hash)
    }

    #[inline(always)]
    pub fn prefetch_out(&self, hash: u64) {
        self.out_tab.prefetch(hash)
    }

    /// Where an inside key's slot is, and the table epoch that position is valid in.
    #[inline(always)]
    pub fn position_in(&self, k: &InKey, hash: u64) -> Option<(u32, u32)> {
        let pos = self.in_tab.find(k, hash)?;
        Some((pos as u32, self.in_tab.epoch()))
    }

    #[inline(always)]
    pub fn position_out(&self, k: &OutKey, hash: u64) -> Option<(u32, u32)> {
        let pos = self.out_tab.find(k, hash)?;
        Some((pos as u32, self.out_tab.epoch()))
    }

    /// The slot at `pos` if it still holds `k`: trusted without a key compare while the
    /// table's epoch is the one the position was found in (no insert, remove or clear since).
    /// With the slot, the external address its `ext_idx` names.
    #[inline(always)]
    pub fn slot_in(&mut self, pos: u32, epoch: u32, k: &InKey) -> Option<(&mut InVal, u32)> {
        let pos = pos as usize;
        if self.in_tab.epoch() != epoch && self.in_tab.key_at(pos) != k {
            return None;
        }
        let v = self.in_tab.val_at_mut(pos);
        let ext_addr = self.ext.addr(v.ext_idx);
        Some((v, ext_addr))
    }

    #[inline(always)]
    pub fn slot_out(&mut self, pos: u32, epoch: u32, k: &OutKey) -> Option<&mut OutVal> {
        let pos = pos as usize;
        if self.out_tab.epoch() != epoch && self.out_tab.key_at(pos) != k {
            return None;
        }
        Some(self.out_tab.val_at_mut(pos))
    }

    /// A new flow's set-up looks up its mapping and its host next: start both loads.
    #[inline(always)]
    pub fn prefetch_setup(&self, realm: &RealmRules, k: &InKey) {
        let mk = Self::map_key(realm, k.proto, k.in_addr, k.in_port, k.rem_addr, k.rem_port);
        self.map_in.prefetch(mk.hash());
        self.host_tab.prefetch(
            HostKey {
                realm: k.realm,
                addr: k.in_addr,
            }
            .hash(),
        );
    }
}
