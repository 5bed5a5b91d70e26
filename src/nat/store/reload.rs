//! A configuration reload reconciles the store with the new rules instead of clearing it.
//!
//! What a session needs in order to survive is the thing it was made through: its realm
//! (by stable id) and, for a dynamic mapping, its external address still in that realm's
//! pool (and not taken by a new port forward); for a static port forward the same forward;
//! for a 1:1 mapping the same pair; and its inside address still in the realm's prefixes.
//! Everything else about it (ports, timers, TCP state, counts) stays as it was.
//!
//! The port allocators are rebuilt per realm at once, by address: a realm whose pool did
//! not change keeps its allocator, one whose pool changed gets an allocator whose kept
//! addresses carry their bitmaps and holds over (`PortAllocator::remapped`), and static
//! reservations follow the added and removed forwards. Which forwards those are the
//! management thread has worked out when it compiled the rules (`rules::Delta`), so that a
//! reload at 100k forwards costs a worker the changes, not two passes over 100k forwards.
//!
//! Sessions of removed things are found by walking the session table, which at a million
//! sessions is tens of milliseconds: too long between two batches. So the walk is done in
//! chunks of `RECONCILE_PER_BATCH` slots at each batch boundary (and per idle tick). Until
//! it has passed every slot the rules and the table may disagree, and every lookup checks:
//! the fast path is off (it translates from the index slot alone) and the full path's
//! lookups remove a session that does not belong any more before using it (`stale`). A
//! reload that removes nothing (additions, timeouts, behaviour) walks nothing.

use super::Store;
use crate::nat::ports::{Partition, PortAllocator};
use crate::nat::rules::{AddrKey, ExtAddr, Rules, has_static, removes_anything};
use crate::nat::session::*;
use crate::nat::table::FlowTable;
use std::sync::Arc;

/// Session slots the reconciliation walk looks at per batch or idle tick: a chunk costs
/// about 40 µs (`reconcile_a_million_sessions_in_chunks`), so a million-slot table is
/// walked in 128 batches.
pub(crate) const RECONCILE_PER_BATCH: usize = 4096;

/// One realm's port allocator and the addresses it numbers (the rules' pool order).
pub(crate) struct RealmPorts {
    pub alloc: PortAllocator,
    /// Allocator index of each pool address.
    index: FlowTable<AddrKey>,
    range: (u16, u16),
    pool: Vec<u32>,
}

impl RealmPorts {
    pub(super) fn new(
        pool: &[u32],
        range: (u16, u16),
        partition: &dyn Partition,
        core: usize,
        hold_secs: u32,
        hold: usize,
    ) -> RealmPorts {
        let alloc = PortAllocator::new(
            pool.len().max(1),
            range.0,
            range.1,
            partition,
            core,
            hold_secs,
            hold,
        );
        RealmPorts {
            alloc,
            index: Self::index_of_pool(pool),
            range,
            pool: pool.to_vec(),
        }
    }

    fn index_of_pool(pool: &[u32]) -> FlowTable<AddrKey> {
        let mut t = FlowTable::with_capacity(pool.len().max(1));
        for (i, a) in pool.iter().enumerate() {
            let _ = t.insert(AddrKey(*a), i as u32);
        }
        t
    }

    /// The allocator index of external address `a`, if it is in the pool.
    #[inline]
    pub fn index(&self, a: u32) -> Option<usize> {
        self.index.get(&AddrKey(a)).map(|i| i as usize)
    }

    pub fn memory_bytes(&self) -> usize {
        self.alloc.memory_bytes() + self.index.memory_bytes() + self.pool.capacity() * 4
    }

    /// The same allocator for a changed pool: kept addresses keep their ports.
    fn repooled(self, pool: &[u32], hold: usize) -> RealmPorts {
        let from: Vec<Option<usize>> = pool.iter().map(|a| self.index(*a)).collect();
        RealmPorts {
            alloc: self.alloc.remapped(&from, hold),
            index: Self::index_of_pool(pool),
            range: self.range,
            pool: pool.to_vec(),
        }
    }
}

/// A reconciliation walk under way.
pub(crate) struct Recon {
    /// The rules the table is being brought in line with.
    rules: Arc<Rules>,
    /// The next session slot to look at.
    cursor: usize,
    /// Per realm id: its dynamic mappings all go (its port allocator was rebuilt empty,
    /// because its port range changed).
    drop_dynamic: Vec<bool>,
}

impl Store {
    /// Brings the store in line with `new` (replacing `old`): port allocators at once, the
    /// sessions of removed things over the next batches (see the module comment). A walk
    /// still under way from an earlier reload is finished first, under the rules it was
    /// started for (this reload may give a removed realm's id to a new realm).
    pub fn reload(&mut self, old: &Rules, new: &Arc<Rules>) {
        if self.recon.is_some() {
            self.reconcile(usize::MAX);
        }
        let mut drop_dynamic = vec![false; new.realms.len()];
        let mut old_ports: Vec<Option<RealmPorts>> = std::mem::take(&mut self.ports)
            .into_iter()
            .map(Some)
            .collect();
        let mut ports = Vec::with_capacity(new.realms.len());
        let mut kept = vec![false; new.realms.len()];
        for r in &new.realms {
            let hold = Self::hold_capacity(r.pool.len(), new.cores);
            let range = (r.port_first, r.port_last);
            let same_realm = old
                .realms
                .get(r.id as usize)
                .is_some_and(|o| !o.retired && !r.retired && o.name == r.name);
            let prev = old_ports
                .get_mut(r.id as usize)
                .filter(|_| same_realm)
                .and_then(Option::take);
            let fresh = || {
                RealmPorts::new(
                    &r.pool,
                    range,
                    new.partition.as_ref(),
                    self.core,
                    super::PORT_HOLD_SECS,
                    hold,
                )
            };
            let (p, k) = match prev {
                Some(p) if p.range == range && p.pool == r.pool => (p, true),
                Some(p) if p.range == range => (p.repooled(&r.pool, hold), true),
                Some(_) => {
                    // Another port range: another bitmap layout. The realm's dynamic
                    // mappings cannot be carried over and go.
                    drop_dynamic[r.id as usize] = true;
                    (fresh(), false)
                }
                None => (fresh(), false),
            };
            kept[r.id as usize] = k;
            ports.push(p);
        }
        // Forwards removed from a kept allocator's realm give their ports back, added ones
        // (all of a new allocator's) take theirs, from a dynamic mapping too, which the
        // walk then removes. With the management thread's delta, O(changes); without (rules
        // not compiled against these), one pass over each list of forwards.
        let range_changed = drop_dynamic.iter().any(|d| *d);
        let delta = new
            .delta
            .as_ref()
            .filter(|d| d.from == old.serial && !range_changed);
        let removes = match delta {
            Some(d) => {
                self.reload_steps += d.static_changes() as u64;
                for s in &d.removed {
                    if kept.get(s.realm as usize) == Some(&true) {
                        let p = &mut ports[s.realm as usize];
                        if let Some(i) = p.index(s.ext_addr) {
                            p.alloc.unreserve(i, s.proto, s.ext_port);
                        }
                    }
                }
                // A realm without a kept allocator is new (its id free or retired in the
                // old rules, `realm_ids`): every forward of it is an added one.
                for &i in &d.added {
                    let s = &new.statics[i as usize];
                    if let Some(p) = ports.get_mut(s.realm as usize)
                        && let Some(i) = p.index(s.ext_addr)
                    {
                        p.alloc.reserve(i, s.proto, s.ext_port);
                    }
                }
                d.removes_anything
            }
            None => {
                self.reload_steps += 2 * (old.statics.len() + new.statics.len()) as u64;
                for s in &old.statics {
                    if kept.get(s.realm as usize) == Some(&true) && !has_static(new, s) {
                        let p = &mut ports[s.realm as usize];
                        if let Some(i) = p.index(s.ext_addr) {
                            p.alloc.unreserve(i, s.proto, s.ext_port);
                        }
                    }
                }
                for s in &new.statics {
                    let Some(p) = ports.get_mut(s.realm as usize) else {
                        continue;
                    };
                    if (!kept[s.realm as usize] || !has_static(old, s))
                        && let Some(i) = p.index(s.ext_addr)
                    {
                        p.alloc.reserve(i, s.proto, s.ext_port);
                    }
                }
                removes_anything(old, new)
            }
        };
        self.ports = ports;
        self.grow_inbound(new);
        if range_changed || removes {
            self.recon = Some(Recon {
                rules: Arc::clone(new),
                cursor: 0,
                drop_dynamic,
            });
        }
    }

    /// Whether a reconciliation walk is under way (the fast path is off meanwhile).
    #[inline(always)]
    pub fn reconciling(&self) -> bool {
        self.recon.is_some()
    }

    /// Makes the port choice repeatable (tests that compare two stores).
    #[cfg(test)]
    pub(crate) fn seed_rng(&mut self, seed: u64) {
        self.rng = crate::nat::rng::Rng::new(seed);
    }

    /// Entries reloads have looked at so far (see `Store::reload_steps`).
    pub fn reload_steps(&self) -> u64 {
        self.reload_steps
    }

    /// Makes the inbound counts' table large enough for the new rules' mappings. It only
    /// grows (room for the counts of removed mappings until the walk has removed them), in
    /// powers of two (`inbound_table`), so a reload that adds a few mappings, removes some
    /// or changes none keeps it as it is; a growth copies the counts (O(its slots)).
    fn grow_inbound(&mut self, new: &Rules) {
        if Self::inbound_capacity(new) <= self.inbound.capacity() {
            return;
        }
        let mut t = Self::inbound_table(new);
        self.reload_steps += self.inbound.capacity() as u64;
        for (k, v) in self.inbound.iter() {
            let _ = t.insert(k, v);
        }
        self.inbound = t;
    }

    /// Advances the reconciliation walk by up to `budget` slots, removing (and counting)
    /// every session that does not belong under the new rules.
    pub(super) fn reconcile(&mut self, budget: usize) {
        let Some(mut rc) = self.recon.take() else {
            return;
        };
        let n = self.sessions.len();
        let end = rc.cursor.saturating_add(budget).min(n);
        for i in rc.cursor..end {
            let s = self.sessions[i];
            if s.proto != FREE && !self.belongs(&rc, &s) {
                self.delete_session(i as u32);
                self.counters.sessions_removed_by_reload.inc();
            }
        }
        rc.cursor = end;
        if end < n {
            self.recon = Some(rc);
        }
    }

    /// During a walk: whether session `si` no longer belongs (it is then removed and
    /// counted). Lookups call this before they use a session.
    #[inline]
    pub(super) fn stale(&mut self, si: u32) -> bool {
        let Some(rc) = &self.recon else {
            return false;
        };
        let s = self.sessions[si as usize];
        if self.belongs(rc, &s) {
            return false;
        }
        self.delete_session(si);
        self.counters.sessions_removed_by_reload.inc();
        true
    }

    /// During a walk: whether mapping `mi` no longer belongs. It is then detached: out of
    /// both indexes, so no new session uses it and a new mapping can take its key, while
    /// its sessions still hold it until the walk (or a lookup) removes them.
    pub(super) fn stale_mapping(&mut self, mi: u32) -> bool {
        let Some(rc) = &self.recon else {
            return false;
        };
        let mp = self.maps[mi as usize];
        if self.mapping_belongs(rc, &mp) {
            return false;
        }
        self.detach_mapping(mi);
        true
    }

    /// Whether mapping `mi` still belongs (always, with no walk under way).
    pub(super) fn mapping_still_belongs(&self, mi: u32) -> bool {
        self.recon
            .as_ref()
            .is_none_or(|rc| self.mapping_belongs(rc, &self.maps[mi as usize]))
    }

    /// Whether a session means the same under the walk's rules (see the module comment).
    fn belongs(&self, rc: &Recon, s: &Session) -> bool {
        let r = &rc.rules;
        let Some(realm) = r.realms.get(s.realm as usize).filter(|x| !x.retired) else {
            return false;
        };
        if !realm.contains(s.in_addr) {
            return false;
        }
        if s.map != NONE {
            return self.mapping_belongs(rc, &self.maps[s.map as usize]);
        }
        if let Some(st) = r.static_by_ext(s.proto, s.ext_addr, s.ext_port)
            && (st.realm, st.in_addr, st.in_port) == (s.realm, s.in_addr, s.in_port)
        {
            return true;
        }
        r.one_to_one_by_in(s.realm, s.in_addr)
            .is_some_and(|o| o.ext_addr == s.ext_addr)
    }

    /// Whether a dynamic mapping means the same under the walk's rules: its realm, its
    /// inside address in the realm, its external address in the realm's pool, its port not
    /// a port forward's, and its realm's allocator kept.
    fn mapping_belongs(&self, rc: &Recon, mp: &MappingSlot) -> bool {
        let r = &rc.rules;
        let realm = mp.key.realm;
        if rc.drop_dynamic.get(realm as usize).copied().unwrap_or(true) {
            return false;
        }
        let Some(rr) = r.realms.get(realm as usize).filter(|x| !x.retired) else {
            return false;
        };
        rr.contains(mp.key.in_addr)
            && matches!(r.ext_addr(mp.ext_addr), Some(ExtAddr::Pool { realm: x, .. }) if x == realm)
            && r.static_by_ext(mp.proto, mp.ext_addr, mp.ext_port)
                .is_none()
    }
}
